"""A rerun resumes only the run its config made: the checkpoint's config against this one. No Ray."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest

from raytune_st.config.core import build, dump_yaml
from raytune_st.errors import ConfigError
from raytune_st.train.checkpointing import CONFIG_FILE, DATA_FILE
from raytune_st.train.config import TrainConfig
from raytune_st.train.rerun import RerunWarning, check_rerun, config_differences, data_files, refused_differences
from train_fixtures import DEBIAN_TRAIN, STSB_TRAIN


def config_with(tmp_path, model: str = "sentence-transformers/all-MiniLM-L6-v2", **args) -> TrainConfig:
    return build(
        TrainConfig,
        {
            "model": model,
            "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": str(tmp_path / "out"), "learning_rate": 2e-5, "max_steps": 4, **args},
        },
    )


def checkpointed(run_dir, config: TrainConfig, step: int = 4) -> None:
    """A run directory as Ray Train leaves it: a checkpoint holding the config and data files that wrote it."""
    path = os.path.join(run_dir, f"checkpoint-{step:06d}")
    os.makedirs(path)
    with open(os.path.join(path, CONFIG_FILE), "w") as handle:
        handle.write(dump_yaml(config))
    with open(os.path.join(path, DATA_FILE), "w") as handle:
        json.dump(data_files(config), handle)


def test_differences_are_dotted_keys_with_both_values():
    old = {"args": {"learning_rate": 2e-5, "seed": 42}, "loss": "A", "run": {"max_failures": 0}}
    new = {"args": {"learning_rate": 5e-5, "seed": 42}, "loss": "A", "run": {"max_failures": 2}, "extra": 1}
    differences = config_differences(old, new)
    assert differences == [("args.learning_rate", 2e-5, 5e-5), ("extra", "(not set)", 1), ("run.max_failures", 0, 2)]
    assert refused_differences(TrainConfig, differences, evaluation_picks_model=False) == differences[:2]


def test_evaluation_changes_are_refused_only_when_evaluation_picks_the_final_model():
    differences = [("evaluators", [], [{"type": "X"}]), ("args.eval_steps", 10, 20)]
    assert refused_differences(TrainConfig, differences, evaluation_picks_model=False) == []
    assert refused_differences(TrainConfig, differences, evaluation_picks_model=True) == differences


def test_a_rerun_with_another_learning_rate_and_data_is_refused_with_the_differences(tmp_path):
    run_dir = tmp_path / "out" / "ray" / "train"
    checkpointed(run_dir, config_with(tmp_path))
    changed = config_with(tmp_path, learning_rate=5e-5)
    changed.train_datasets["pairs"].data.path = STSB_TRAIN
    with pytest.raises(ConfigError) as caught:
        check_rerun(changed, str(run_dir))
    message = str(caught.value)
    assert "args.learning_rate: 2e-05 -> 5e-05" in message
    assert f"train_datasets.pairs.data.path: {DEBIAN_TRAIN} -> {STSB_TRAIN}" in message
    assert "new run.name" in message and "run.overwrite=true" in message
    assert os.path.isdir(run_dir / "checkpoint-000004")  # nothing deleted


@pytest.mark.parametrize("key,value", [("seed", 7), ("per_device_train_batch_size", 16), ("max_steps", 8)])
def test_every_result_shaping_key_is_refused(tmp_path, key, value):
    run_dir = tmp_path / "run"
    checkpointed(run_dir, config_with(tmp_path))
    with pytest.raises(ConfigError, match=rf"args.{key}: "):
        check_rerun(config_with(tmp_path, **{key: value}), str(run_dir))


def test_a_rerun_with_the_same_config_or_other_logging_resumes(tmp_path):
    run_dir = tmp_path / "run"
    checkpointed(run_dir, config_with(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_rerun(config_with(tmp_path), str(run_dir))
        check_rerun(config_with(tmp_path, logging_steps=1, save_steps=2, save_total_limit=1), str(run_dir))
    check_rerun(config_with(tmp_path), str(tmp_path / "no-such-run"))  # nothing to resume


def test_keys_added_since_the_checkpoint_was_written_are_no_difference_at_their_defaults(tmp_path):
    """A checkpoint of an older version lacks model.dtype and args.report_to: still the same run."""
    import yaml

    run_dir = tmp_path / "run"
    checkpointed(run_dir, config_with(tmp_path))
    path = run_dir / "checkpoint-000004" / CONFIG_FILE
    old = yaml.safe_load(path.read_text())
    del old["model"]["dtype"], old["args"]["report_to"], old["args"]["run_name"]
    path.write_text(yaml.safe_dump(old))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_rerun(config_with(tmp_path), str(run_dir))
        check_rerun(config_with(tmp_path, report_to="none", run_name="again"), str(run_dir))  # tracking is no difference
    with pytest.raises(ConfigError, match=r"args.learning_rate"):
        check_rerun(config_with(tmp_path, learning_rate=5e-5), str(run_dir))


def test_another_number_of_workers_resumes_with_a_warning(tmp_path):
    run_dir = tmp_path / "run"
    checkpointed(run_dir, config_with(tmp_path))
    fewer = config_with(tmp_path)
    fewer.scaling.num_workers = 2
    with pytest.warns(RerunWarning, match=r"scaling.num_workers: 1 -> 2: the global batch"):
        check_rerun(fewer, str(run_dir))


def test_overwrite_deletes_the_old_run_instead_of_refusing(tmp_path):
    run_dir = tmp_path / "run"
    checkpointed(run_dir, config_with(tmp_path))
    changed = config_with(tmp_path, learning_rate=5e-5)
    changed.run.overwrite = True
    with pytest.warns(RerunWarning, match=r"deleted the checkpoints .*args.learning_rate: 2e-05 -> 5e-05"):
        check_rerun(changed, str(run_dir))
    assert not run_dir.exists()


def test_the_train_job_refuses_a_changed_rerun_before_ray_starts(tmp_path, tiny_bi_encoder):
    import ray

    from raytune_st.train.job import train

    checkpointed(tmp_path / "out" / "ray" / "train", config_with(tmp_path, model=tiny_bi_encoder))
    with pytest.raises(ConfigError, match=r"args.learning_rate: 2e-05 -> 5e-05"):
        train(config_with(tmp_path, model=tiny_bi_encoder, learning_rate=5e-5))
    assert not ray.is_initialized()


def test_data_rewritten_in_place_under_the_same_path_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = tmp_path / "mined"
    parts.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"query": [f"q{i}"] * 8, "passage": [f"p{i}"] * 8}), parts / f"part-{i}.parquet")

    def config():
        made = config_with(tmp_path)
        made.train_datasets["pairs"].data = build(type(made.train_datasets["pairs"].data), {"path": str(parts)})
        return made

    run_dir = tmp_path / "run"
    checkpointed(run_dir, config())
    check_rerun(config(), str(run_dir))  # the same files: resumes
    recorded = data_files(config())["train_datasets.pairs"]
    assert [entry[:2] for entry in recorded] == [["part-0.parquet", (parts / "part-0.parquet").stat().st_size],
                                                 ["part-1.parquet", (parts / "part-1.parquet").stat().st_size]]
    assert recorded[0][2] != recorded[1][2]  # the footers' digests tell the two parts apart
    shutil.copy(parts / "part-1.parquet", parts / "part-2.parquet")
    pq.write_table(pa.table({"query": ["another"] * 9, "passage": ["text"] * 9}), parts / "part-0.parquet")
    with pytest.raises(ConfigError, match=r"train_datasets.pairs.data files: 2 file\(s\) -> 1 of another size \(part-0.parquet\); "
                                          r"1 added \(part-2.parquet\)"):
        check_rerun(config(), str(run_dir))


def test_data_rewritten_at_the_same_size_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"query": ["q1", "q2"], "passage": ["p1", "p2"]}), data)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text('{"query": "q1", "passage": "p1"}\n')

    def config():
        made = config_with(tmp_path)
        made.train_datasets["pairs"].data = build(type(made.train_datasets["pairs"].data), {"path": str(data)})
        made.train_datasets["text"] = build(type(made.train_datasets["pairs"]), {"data": str(jsonl)})
        return made

    run_dir = tmp_path / "run"
    checkpointed(run_dir, config())
    size = data.stat().st_size
    pq.write_table(pa.table({"query": ["q3", "q2"], "passage": ["p1", "p2"]}), data)  # one text changed
    assert data.stat().st_size == size
    jsonl.write_text('{"query": "q2", "passage": "p1"}\n')
    with pytest.raises(ConfigError, match=r"train_datasets.pairs.data files: 1 file\(s\) -> 1 rewritten at the same size "
                                          r"\(pairs.parquet\).*train_datasets.text.data files: .* rewritten at the same size \(pairs.jsonl\)"):
        check_rerun(config(), str(run_dir))


def test_records_of_an_older_version_are_compared_by_size():
    from raytune_st.train.rerun import file_differences

    old = {"train_datasets.pairs": [["a.parquet", 10], ["b.parquet", 20]]}
    new = {"train_datasets.pairs": [["a.parquet", 10, "d1"], ["b.parquet", 21, "d2"]]}
    assert file_differences(old, new, []) == [("train_datasets.pairs.data files", "2 file(s)", "1 of another size (b.parquet)")]
    assert file_differences(old, {"train_datasets.pairs": [["a.parquet", 10, "x"], ["b.parquet", 20, "y"]]}, []) == []


def test_a_text_file_is_digested_by_its_ends_and_a_parquet_file_by_its_footer(tmp_path):
    import pyarrow.fs

    from raytune_st.train.rerun import EDGE_BYTES, content_digest

    fs = pyarrow.fs.LocalFileSystem()
    path = tmp_path / "big.jsonl"

    def digest(data: bytes) -> str:
        path.write_bytes(data)
        return content_digest(fs, str(path), len(data))

    body = bytearray(b"x" * (3 * EDGE_BYTES))
    first = digest(bytes(body))
    body[-1:] = b"y"
    assert digest(bytes(body)) != first  # the last bytes changed
    body[EDGE_BYTES + 10] = ord("z")
    changed_inside = digest(bytes(body))
    body[EDGE_BYTES + 10] = ord("x")
    assert changed_inside == digest(bytes(body))  # the middle of a large text file is not read: the limit, stated
    # A Parquet tail with an impossible footer length: digested as bytes, not an error.
    assert digest(b"PAR1\xff\xff\xff\x7fPAR1") != digest(b"PAR2\xff\xff\xff\x7fPAR1")


def test_a_custom_loss_whose_code_changed_is_refused(tmp_path, monkeypatch):
    """The config names the same import path; its source file is what changed."""
    code = tmp_path / "code"
    code.mkdir()
    module = code / "rerun_edited_losses.py"
    module.write_text(
        "from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss\n\n\n"
        "class MyLoss(MultipleNegativesRankingLoss):\n    loss_format = 'MultipleNegativesRankingLoss'\n"
    )
    monkeypatch.syspath_prepend(str(code))

    def config():
        made = config_with(tmp_path)
        made.loss = "rerun_edited_losses:MyLoss"
        return made

    run_dir = tmp_path / "run"
    checkpointed(run_dir, config())
    assert data_files(config())["code rerun_edited_losses:MyLoss"][0][:2] == ["rerun_edited_losses.py", module.stat().st_size]
    check_rerun(config(), str(run_dir))  # the same code: resumes
    module.write_text(module.read_text().replace("MultipleNegativesRankingLoss'", "MultipleNegativesRankingLoss'  # scale 30"))
    with pytest.raises(ConfigError, match=r"rerun_edited_losses:MyLoss \(its source file\): 1 file\(s\) -> 1 of another size \(rerun_edited_losses.py\)"):
        check_rerun(config(), str(run_dir))


def test_the_history_of_the_newest_complete_checkpoint_is_read(tmp_path):
    from raytune_st.train.checkpointing import HISTORY_FILE, write_history
    from raytune_st.train.rerun import latest_checkpoint_history

    run_dir = str(tmp_path / "run")
    config = config_with(tmp_path)
    assert latest_checkpoint_history(run_dir) == []  # no run yet
    history = [{"step": 2, "loss": 1.5, "eval_loss": 1.2}, {"step": 4, "loss": 1.1}]
    for step in (2, 4):
        checkpointed(run_dir, config, step)
        write_history(os.path.join(run_dir, f"checkpoint-{step:06d}", HISTORY_FILE), history[: step // 2])
    os.makedirs(os.path.join(run_dir, "checkpoint-000006"))  # cut short while written: no config
    assert latest_checkpoint_history(run_dir) == history
