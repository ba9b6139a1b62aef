"""Tests for raytune_st.mining.resume without Ray: which parts a rerun may reuse, and when it must refuse.

Parts are written with the miner's own write_part, as a mining task writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config import load_config
from raytune_st.errors import DataError
from raytune_st.mining import resume
from raytune_st.mining.config import MineConfig
from raytune_st.mining.miner import write_part

NUM_BATCHES = 3


def settings(tmp_path: Path, *overrides: str) -> dict:
    pairs = tmp_path / "pairs.parquet"
    if not pairs.exists():
        pq.write_table(pa.table({"q": ["a"], "p": ["b"]}), pairs)
    config = load_config(MineConfig, None, ["model=some/model", f"dataset.path={pairs}", f"output.path={tmp_path / 'out'}", *overrides])
    return resume.mining_settings(config)


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


def write_run(out: Path, mined_settings: dict, data: str = "data-1", range_max: int = 10, logs: list | None = None) -> list[int]:
    """A complete run, as the job does it: claim the output, write every pending part, then the summary."""
    pending = claim(out, mined_settings, data=data, range_max=range_max, logs=logs)
    for batch in pending:
        table = pa.table({"query": [f"q{batch}"] * 2, "negative": [f"n{batch}", f"m{batch}"]})
        write_part(str(out), str(out / "_work" / "parts"), batch, table, {"queries": 1, "rows": 2}, positive=np.ones(2, np.float32))
    for name in resume.RESULT_FILES:
        (out / name).write_text("summary of a complete run")
    return pending


def claim(out: Path, mined_settings: dict, *, data: str = "data-1", range_max: int = 10, overwrite: bool = False, logs=None):
    return resume.pending_batches(
        str(out), str(out / "_work" / "parts"), NUM_BATCHES,
        settings=mined_settings, data_digest=data, range_max=range_max, overwrite=overwrite,
        log=(logs.append if logs is not None else lambda line: None),
    )


def test_mining_settings_keep_what_changes_the_parts_and_drop_resources(tmp_path, out):
    base = settings(tmp_path)
    assert base["mine.num_negatives"] == 3 and base["compute.mine_batch_rows"] == 2048 and base["index.factory"] == "Flat"
    assert not any(key.startswith(("output.", "ray_address")) for key in base)
    assert "index.num_cpus" not in base and "compute.embed_actors_max" not in base
    # More actors or CPUs: the same parts. Other batching or negatives: other parts.
    assert settings(tmp_path, "compute.embed_actors_max=8", "index.num_cpus=0.5", "index.threads=1", f"output.path={tmp_path / 'x'}") == base
    assert settings(tmp_path, "compute.mine_batch_rows=64") != base
    assert resume.changed_settings(base, settings(tmp_path, "mine.num_negatives=5")) == "mine.num_negatives: 3 -> 5"


def test_fingerprint_depends_on_settings_data_and_range_max(tmp_path, out):
    base = settings(tmp_path)
    first = resume.fingerprint(base, "data-1", 10)
    assert first == resume.fingerprint(dict(base), "data-1", 10)
    assert len({first, resume.fingerprint(base, "data-2", 10), resume.fingerprint(base, "data-1", 11),
                resume.fingerprint(settings(tmp_path, "mine.seed=1"), "data-1", 10)}) == 4


def test_an_output_recorded_when_index_threads_still_counted_is_reused_and_checked(tmp_path, out):
    # Outputs mined before index.threads was declared placement recorded it in their settings and fingerprint.
    base = settings(tmp_path)
    older = {**base, "index.threads": None}
    write_run(out, older)
    resume.check_settings(str(out), base, overwrite=False)
    assert claim(out, base) == []  # the same parts: reused
    with pytest.raises(DataError, match="mine.num_negatives: 3 -> 5"):
        resume.check_settings(str(out), settings(tmp_path, "mine.num_negatives=5"), overwrite=False)


def test_a_fresh_output_mines_every_batch_and_records_the_run(tmp_path, out):
    base = settings(tmp_path)
    assert write_run(out, base) == [0, 1, 2]
    record = json.loads((out / "_work" / "run.json").read_text())
    assert record["fingerprint"] == resume.fingerprint(base, "data-1", 10) and record["settings"] == base


def test_a_complete_output_is_reused_and_keeps_its_summary(tmp_path, out):
    base = settings(tmp_path)
    write_run(out, base)
    logs: list[str] = []
    assert claim(out, base, logs=logs) == []
    assert logs == ["[mine] resuming: 3 of 3 part(s) already written"]
    assert all((out / name).exists() for name in resume.RESULT_FILES)


def test_a_truncated_part_is_mined_again_and_the_summary_withdrawn(tmp_path, out):
    base = settings(tmp_path)
    write_run(out, base)
    part = out / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-20])
    logs: list[str] = []
    assert claim(out, base, logs=logs) == [1]
    size = part.stat().st_size
    assert logs[0] == f"[mine] part-00001.parquet cannot be reused ({size:,} bytes where {size + 20:,} were written); mining it again"
    assert logs[1] == "[mine] resuming: 2 of 3 part(s) already written"
    # stats.json must not claim the old row count while the part is mined again.
    assert not any((out / name).exists() for name in resume.RESULT_FILES)


def test_a_part_changed_in_place_or_with_damaged_scores_is_mined_again(tmp_path, out):
    base = settings(tmp_path)
    write_run(out, base)
    part = out / "part-00000.parquet"
    data = bytearray(part.read_bytes())
    data[10] ^= 0xFF
    part.write_bytes(bytes(data))
    scores = out / "_work" / "parts" / "part-00002.npz"
    scores.write_bytes(scores.read_bytes()[:10])
    logs: list[str] = []
    assert claim(out, base, logs=logs) == [0, 2]
    assert "sha256 differs" in logs[0] and "its scores file" in logs[1]


def test_a_part_without_its_manifest_is_mined_again(tmp_path, out):
    # Interrupted between writing the part and its manifest.
    base = settings(tmp_path)
    write_run(out, base)
    (out / "_work" / "parts" / "part-00002.json").unlink()
    (out / "part-00001.parquet").unlink()
    (out / "part-00000.parquet.tmp-cafe").write_bytes(b"PAR1 half")
    logs: list[str] = []
    assert claim(out, base, logs=logs) == [1, 2]
    assert logs[:2] == [
        "[mine] part-00001.parquet cannot be reused (it is missing); mining it again",  # deleted after the run
        "[mine] part-00002.parquet cannot be reused (not recorded as complete); mining it again",
    ]
    assert not list(out.glob("*.tmp-*"))


def test_other_settings_are_refused_before_ray_with_the_difference_named(tmp_path, out):
    base = settings(tmp_path)
    write_run(out, base)
    changed = settings(tmp_path, "mine.num_negatives=5")
    with pytest.raises(DataError, match=r"already holds 3 part file\(s\) mined with other settings or data \(mine.num_negatives: 3 -> 5\); .*output.overwrite=true"):
        resume.check_settings(str(out), changed, overwrite=False)
    resume.check_settings(str(out), base, overwrite=False)  # the same settings pass
    resume.check_settings(str(out), changed, overwrite=True)  # replaced later, after prepare
    resume.check_settings(str(tmp_path / "empty"), changed, overwrite=False)


def test_an_output_mined_under_older_sentence_transformers_rules_is_refused(tmp_path, out):
    current = settings(tmp_path)
    older = {key: value for key, value in current.items() if key != "semantics"}  # as raytune_st recorded it before 6.3
    write_run(out, older)
    with pytest.raises(DataError, match=r"semantics: None -> 'sentence-transformers 6.3 mine_hard_negatives'"):
        resume.check_settings(str(out), current, overwrite=False)


def test_other_data_is_refused_after_prepare(tmp_path, out):
    base = settings(tmp_path)
    write_run(out, base)
    with pytest.raises(DataError, match=r"\(the data differs\)"):
        claim(out, base, data="data-2")
    (out / "_work" / "run.json").write_text('{"fingerprint": "of an older version"}\n')
    with pytest.raises(DataError, match="written by an earlier raytune_st, which recorded no digests"):
        claim(out, base)
    (out / "_work" / "run.json").unlink()
    with pytest.raises(DataError, match="no record of the run that wrote them"):
        claim(out, base)


def test_overwrite_removes_the_old_summary_before_any_new_part(tmp_path, out):
    base = settings(tmp_path)
    write_run(out, base)
    changed = settings(tmp_path, "mine.num_negatives=5")
    logs: list[str] = []
    assert claim(out, changed, overwrite=True, logs=logs) == [0, 1, 2]
    assert logs[0] == "[mine] output.overwrite: replacing 3 part(s) of an earlier run (mine.num_negatives: 3 -> 5)"
    # An interruption now leaves neither the old summary nor old parts beside the new ones.
    assert sorted(p.name for p in out.iterdir()) == ["_work"]
    assert list((out / "_work" / "parts").iterdir()) == []
    assert json.loads((out / "_work" / "run.json").read_text())["settings"] == changed


def test_a_truncated_part_in_object_storage_is_mined_again(tmp_path, bucket):
    from raytune_st.outputs import filesystem

    base = settings(tmp_path)
    root = f"{bucket}/mined"
    parts_dir = f"{root}/_work/parts"

    def pending():
        return resume.pending_batches(root, parts_dir, 2, settings=base, data_digest="d", range_max=5, overwrite=False, log=lambda line: None)

    assert pending() == [0, 1]
    for batch in (0, 1):
        write_part(root, parts_dir, batch, pa.table({"query": ["q"]}), {"rows": 1}, positive=np.ones(1, np.float32))
    fs, key = filesystem(f"{root}/part-00001.parquet")
    with fs.open_input_stream(key) as handle:
        data = handle.read()
    with fs.open_output_stream(key) as handle:
        handle.write(data[:-10])
    assert pending() == [1]


def test_an_edit_to_a_model_factorys_source_changes_the_mining_settings(tmp_path, monkeypatch):
    factory = tmp_path / "factory_for_resume_test.py"
    factory.write_text("def build(dim=3):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = ["model.name=null", "model.factory=factory_for_resume_test:build", "model.kwargs={dim: 4}"]
    before = settings(tmp_path, *overrides)
    assert before["model.identity"].startswith('factory_for_resume_test:build({"dim": 4})#')
    factory.write_text("def build(dim=3):\n    return None  # edited\n")
    assert resume.changed_settings(before, settings(tmp_path, *overrides)).startswith("model.identity:")


def test_an_output_prepared_with_older_chunk_digests_is_refused(tmp_path, out):
    current = settings(tmp_path)
    older = {key: value for key, value in current.items() if key != "prepare"}  # before the Arrow prepare
    write_run(out, older)
    with pytest.raises(DataError, match=r"prepare: None -> 'utf8-lengths-then-bytes-1'"):
        resume.check_settings(str(out), current, overwrite=False)


def test_the_model_backend_is_a_setting_only_when_it_is_not_torch(tmp_path):
    # Outputs recorded before model.backend existed stay resumable with torch; another runtime re-mines.
    assert not any(key.startswith("model.backend") for key in settings(tmp_path))
    onnx = settings(tmp_path, "model.backend=onnx")
    assert onnx["model.backend"] == "onnx" and onnx["model.backend_config"] == {}
