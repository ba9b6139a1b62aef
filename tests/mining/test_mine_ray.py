"""The mine job on a real local Ray against sentence-transformers' mine_hard_negatives.

Real data (a few hundred debian pairs, with extra positives and duplicate rows) and the
real all-MiniLM-L6-v2. sentence-transformers' embeddings are cached (cache_folder) and
ours are shared between runs (output.embeddings_dir), so each model embeds the texts once.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from mining_fixtures import DEV_SAMPLE, MINILM, make_tiny_cross_encoder, sample_pairs
from raytune_st.config import load_config
from raytune_st.errors import DataError
from raytune_st.mining.config import MineConfig
from raytune_st.mining.job import mine

pytestmark = pytest.mark.ray

CORPUS_ROWS = 60


@pytest.fixture(scope="module")
def ray_cluster(ray_init_options):
    import ray

    ray.init(**ray_init_options, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mine-ray")


@pytest.fixture(scope="module")
def pairs_path(work) -> Path:
    path = work / "pairs.parquet"
    sample_pairs(n=200, extra_positives=15, duplicates=4).to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def st_model():
    from raytune_st.models import load_bi_encoder

    return load_bi_encoder(MINILM, device="cpu")


def reference(st_model, pairs_path, work, capsys, corpus=False, cross_encoder=None, **params):
    """sentence-transformers' rows (as dicts) and its printed summary lines."""
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    capsys.readouterr()
    extra = pd.read_parquet(DEV_SAMPLE, columns=["passage"])["passage"].iloc[:CORPUS_ROWS].tolist() if corpus else None
    result = mine_hard_negatives(
        datasets.Dataset.from_parquet(str(pairs_path)), st_model, corpus=extra, cross_encoder=cross_encoder,
        cache_folder=str(work / "st-cache"), **params,
    )
    return result.to_list(), summary_lines(capsys.readouterr().out)


def summary_lines(text: str) -> list[str]:
    keep = ("Setting range_max", "Metric", "Count", "Mean", "Median", "Std", "Min", "25%", "50%", "75%", "Max", "Skipped", "Could not")
    return [line for line in text.splitlines() if line.startswith(keep)]


def job_args(work, pairs_path, name, *overrides, corpus=False, **params) -> list[str]:
    """The job's overrides: MiniLM on the pairs, output to work/name, embeddings shared between runs."""
    args = [
        f"model={MINILM}", f"dataset.path={pairs_path}", f"output.path={work / name}",
        f"output.embeddings_dir={work / 'embeddings'}", *[f"mine.{k}={v}" for k, v in params.items()], *overrides,
    ]
    if corpus:
        args += [f"corpus.path={DEV_SAMPLE}", "corpus.column=passage", f"corpus.limit={CORPUS_ROWS}"]
    return args


def run(work, pairs_path, name, *overrides, corpus=False, **params):
    """Our job: returns (rows as dicts, in part order, summary)."""
    summary = mine(load_config(MineConfig, None, job_args(work, pairs_path, name, *overrides, corpus=corpus, **params)))
    return read_rows(work / name), summary


def read_rows(directory: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return [row for part in sorted(glob.glob(str(directory / "part-*.parquet"))) for row in pq.read_table(part).to_pylist()]


def assert_same_summary(ours: list[str], printed: list[str]) -> None:
    """Line for line; a printed score may differ by one in its last digit (or print 0.0000 as -0.0000).

    sentence-transformers scores the candidates and the positives with two different float
    computations (a matrix product and a pairwise one), so a negative equal to its positive
    can differ from it by 1e-8; ours scores both the same way.
    """
    assert len(ours) == len(printed)
    for a, b in zip(ours, printed):
        if a != b:
            assert a.split()[0] == b.split()[0], (a, b)
            assert [float(x) for x in a.split()[1:]] == pytest.approx([float(x) for x in b.split()[1:]], abs=1.5e-4), (a, b)


def assert_same_rows(ours: list[dict], expected: list[dict]) -> None:
    assert len(ours) == len(expected)
    for i, (a, b) in enumerate(zip(ours, expected)):
        assert list(a) == list(b), f"row {i}: columns differ"
        for key in a:
            if isinstance(b[key], float) or (isinstance(b[key], list) and b[key] and isinstance(b[key][0], float)):
                assert a[key] == pytest.approx(b[key], abs=1e-5), f"row {i}, {key}"
            else:
                assert a[key] == b[key], f"row {i}, {key}"


CASES = {
    "triplet-corpus": dict(corpus=True),
    "triplet-scores-range": dict(output_scores=True, range_min=2, range_max=15),
    "n-tuple-relative-margin": dict(output_format="n-tuple", relative_margin=0.05, num_negatives=4),
    "n-tuple-include-positives": dict(include_positives=True, output_scores=True),
    "labeled-pair-max-min-score": dict(output_format="labeled-pair", max_score=0.6, min_score=0.35),
    "labeled-pair-scores-absolute-margin": dict(output_format="labeled-pair", output_scores=True, absolute_margin=0.1),
    "labeled-list-relative-margin": dict(output_format="labeled-list", relative_margin=0.05, range_min=1),
    "labeled-list-scores-max-score": dict(output_format="labeled-list", output_scores=True, max_score=0.7),
}


@pytest.mark.parametrize("case", CASES)
def test_parity_with_mine_hard_negatives(case, ray_cluster, st_model, pairs_path, work, capsys):
    params = dict(CASES[case])
    corpus = params.pop("corpus", False)
    expected, printed = reference(st_model, pairs_path, work, capsys, corpus=corpus, **params)
    ours, summary = run(work, pairs_path, case, corpus=corpus, **params)
    assert_same_rows(ours, expected)
    assert_same_summary(summary["printed"], printed)
    assert summary["rows"] == len(expected)
    out = work / case
    assert json.loads((out / "stats.json").read_text())["rows"] == len(expected)
    assert (out / "scores.png").read_bytes().startswith(b"\x89PNG")
    assert "output_format" in (out / "config.yaml").read_text()


def test_sharded_index_equals_one_shard(ray_cluster, pairs_path, work):
    params = CASES["triplet-scores-range"]
    single, _ = run(work, pairs_path, "shards-1", **params)
    sharded, summary = run(
        work, pairs_path, "shards-3", "index.shards=3", "index.num_cpus=0.25", "compute.mine_batch_rows=64", **params
    )
    assert len(summary["parts"]) == 4
    assert sharded == single


def test_random_sampling_draws_from_the_same_candidates(ray_cluster, st_model, pairs_path, work, capsys):
    # sentence-transformers' full candidate set: every valid candidate of ranks [2, 12)
    window, _ = reference(st_model, pairs_path, work, capsys, range_min=2, range_max=12, num_negatives=10, max_score=0.6)
    candidates: dict[tuple, list] = {}  # best first, as sentence-transformers writes them
    for row in window:
        candidates.setdefault((row["query"], row["passage"]), []).append(row["negative"])
    params = dict(range_min=2, range_max=12, num_negatives=3, max_score=0.6, sampling_strategy="random")
    ours, _ = run(work, pairs_path, "random-a", **params)
    again, _ = run(work, pairs_path, "random-b", **params)
    other_seed, _ = run(work, pairs_path, "random-c", "mine.seed=1", **params)
    assert ours == again and ours != other_seed
    drawn: dict[tuple, list] = {}
    for row in ours:
        drawn.setdefault((row["query"], row["passage"]), []).append(row["negative"])
    assert set(drawn) <= set(candidates)
    for key, negatives in drawn.items():
        assert set(negatives) <= set(candidates[key]) and len(negatives) == len(set(negatives))
        assert len(negatives) == min(3, len(candidates[key]))
    # a sample, not the top: many queries get other negatives than their best three
    differs = sum(set(negatives) != set(candidates[key][:3]) for key, negatives in drawn.items())
    assert differs > len(drawn) // 2


def test_interrupted_run_resumes_to_the_complete_output(ray_cluster, pairs_path, work):
    params = dict(output_format="n-tuple", num_negatives=2)
    full, _ = run(work, pairs_path, "complete", "compute.mine_batch_rows=40", **params)
    out = work / "resumed"
    run(work, pairs_path, "resumed", "compute.mine_batch_rows=40", **params)
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 5  # 200 unique queries, 40 per part
    # An interruption: two parts never written, one half-written temporary file, no summary yet.
    for lost in (parts[1], parts[3]):
        lost.unlink()
    (out / "part-00002.parquet.tmp-deadbeef").write_bytes(b"PAR1 half a file")
    (out / "stats.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in parts if p.exists()}
    resumed, summary = run(work, pairs_path, "resumed", "compute.mine_batch_rows=40", **params)
    assert resumed == full
    assert {p.name: p.stat().st_mtime_ns for p in parts if p.name in kept} == kept  # not rewritten
    assert summary["rows"] == len(full) and (out / "stats.json").exists()
    assert not list(out.glob("*.tmp-*"))
    # A rerun of a complete output embeds and mines nothing, and reports the same statistics.
    again, rerun = run(work, pairs_path, "resumed", "compute.mine_batch_rows=40", **params)
    assert again == full and "embed" not in rerun["seconds"] and rerun["printed"] == summary["printed"]


def test_a_driver_killed_at_a_random_point_resumes_to_the_same_rows(ray_cluster, pairs_path, work, kill_delay):
    """SIGKILL the driver of a run (its own process, a driver on this module's Ray) at a random
    moment of its embedding or mining, then rerun the same command: the same rows as an
    uninterrupted run, none twice."""
    import signal
    import subprocess
    import sys
    import time

    import ray

    params = dict(output_format="n-tuple", num_negatives=2)
    full, _ = run(work, pairs_path, "complete", "compute.mine_batch_rows=40", **params)
    # Embeddings of its own, so that the killed run has real embedding work to be killed in.
    args = job_args(work, pairs_path, "killed", "compute.mine_batch_rows=40", f"output.embeddings_dir={work / 'killed-cache'}", **params)
    delay = kill_delay(2.0, 25.0)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "raytune_st", "mine", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    summary = mine(load_config(MineConfig, None, args))
    resumed = read_rows(work / "killed")
    assert resumed == full, f"killed after {delay:.1f} s"
    assert summary["rows"] == len(full)
    assert not list((work / "killed").glob("*.tmp-*"))


def test_other_settings_do_not_reuse_or_mix_parts(ray_cluster, pairs_path, work):
    run(work, pairs_path, "settings", num_negatives=2)
    with pytest.raises(DataError, match="output.overwrite=true"):
        run(work, pairs_path, "settings", num_negatives=1)
    rows, _ = run(work, pairs_path, "settings", "output.overwrite=true", num_negatives=1)
    assert len(glob.glob(str(work / "settings" / "part-*.parquet"))) == 1
    assert len(rows) == len(read_rows(work / "settings"))


def test_cross_encoder_rescoring_matches(ray_cluster, st_model, pairs_path, work, capsys):
    from sentence_transformers.cross_encoder import CrossEncoder

    path = make_tiny_cross_encoder(work)
    # No score filter: since sentence-transformers 6.3 a cross-encoder rescores regardless.
    params = dict(output_format="labeled-list", output_scores=True, num_negatives=2)
    expected, printed = reference(st_model, pairs_path, work, capsys, cross_encoder=CrossEncoder(path, device="cpu"), **params)
    ours, summary = run(
        work, pairs_path, "cross-encoder", f"cross_encoder={path}", "compute.cross_encoder_num_cpus=0.5", **params
    )
    assert_same_rows(ours, expected)
    assert_same_summary(summary["printed"], printed)


def test_a_truncated_part_after_a_finished_run_is_mined_again(ray_cluster, pairs_path, work, capsys):
    params = dict(output_format="n-tuple", num_negatives=2)
    full, first = run(work, pairs_path, "truncated", "compute.mine_batch_rows=40", **params)
    part = work / "truncated" / "part-00002.parquet"
    part.write_bytes(part.read_bytes()[:-100])  # unreadable: Parquet's footer is gone
    capsys.readouterr()
    rows, summary = run(work, pairs_path, "truncated", "compute.mine_batch_rows=40", **params)
    printed = capsys.readouterr().out
    assert "[mine] part-00002.parquet cannot be reused (" in printed and "resuming: 4 of 5 part(s)" in printed
    assert rows == full  # nothing lost, nothing doubled
    assert summary["rows"] == first["rows"] == len(full) and summary["printed"] == first["printed"]
    assert json.loads((work / "truncated" / "stats.json").read_text())["rows"] == len(full)


def test_a_damaged_embedding_cache_file_is_embedded_again(ray_cluster, pairs_path, work, capsys, tiny_model):
    from raytune_st.mining import store

    cache = work / "damaged-cache"
    overrides = (f"model={tiny_model}", f"output.embeddings_dir={cache}", "compute.embed_chunk_rows=64")
    expected, _ = run(work, pairs_path, "cache-a", *overrides, num_negatives=2)
    corpus = sorted(cache.glob("corpus-*.npz"))
    assert len(corpus) >= 3
    truncated, flipped = corpus[0], corpus[1]
    truncated.write_bytes(truncated.read_bytes()[:200])  # numpy alone: BadZipFile in IndexShard.build
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size: found only when read
    flipped.write_bytes(bytes(data))
    capsys.readouterr()
    rows, summary = run(work, pairs_path, "cache-b", *overrides, num_negatives=2)
    printed = capsys.readouterr().out
    assert rows == expected
    assert f"'{flipped}' is damaged (" in printed and "embedding it again" in printed
    for path in corpus:
        assert store.looks_sealed(str(path)) and store.load_vectors(str(path)).shape[0] > 0


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of a chosen size (mount needs root); yields a function (size in bytes) -> mount point."""
    import subprocess

    point = tmp_path / "disk"
    point.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        options = f"size={size}" if not mounted else f"remount,size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); this test needs root")
        mounted.append(size)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_full_disk_fails_with_one_error_and_a_rerun_with_space_resumes(ray_cluster, pairs_path, work, capsys, tiny_model, small_disk):
    import shutil
    import subprocess
    import time

    from raytune_st.cli import main

    overrides = (f"model={tiny_model}", "compute.mine_batch_rows=20", "compute.embed_chunk_rows=64")
    expected, _ = run(work, pairs_path, "disk-reference", *overrides, num_negatives=3)
    needed = int(subprocess.run(["du", "-sb", str(work / "disk-reference")], capture_output=True, text=True).stdout.split()[0])
    # Half the space the output takes (embeddings go elsewhere): the disk fills up while parts are written.
    disk = small_disk(needed // 2)
    args = ["mine", *job_args(work, pairs_path, "x", *overrides, num_negatives=3)]
    args = [a.replace(f"output.path={work / 'x'}", f"output.path={disk / 'out'}") for a in args]
    args = [a.replace(f"output.embeddings_dir={work / 'embeddings'}", f"output.embeddings_dir={work / 'disk-cache'}") for a in args]
    capsys.readouterr()
    began = time.monotonic()
    assert main(args) == 2
    failed_after = time.monotonic() - began
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and re.match(r"error: no space left to write '.*/out/.*' \(.* bytes\); free some space", errors[0]), errors
    assert not list((disk / "out").rglob("*.tmp-*")) and not (disk / "out" / "stats.json").exists()
    from raytune_st.mining import resume

    batches = len(list((work / "disk-reference").glob("part-*.parquet")))
    damage = [resume.part_damage(str(disk / "out"), str(disk / "out" / "_work" / "parts"), b) for b in range(batches)]
    whole = damage.count(None)
    assert 0 < whole < batches, damage  # it failed part way through the parts
    time.sleep(3)  # the failed job's other tasks were stopped before it returned: nothing more is written
    assert [resume.part_damage(str(disk / "out"), str(disk / "out" / "_work" / "parts"), b) for b in range(batches)] == damage

    small_disk(needed * 4)  # space freed: the same command again
    began = time.monotonic()
    assert main(args) == 0
    rerun = time.monotonic() - began
    printed = capsys.readouterr().out
    with capsys.disabled():
        print(f"tmpfs full after {whole} of {batches} parts ({failed_after:.1f} s); the rerun took {rerun:.1f} s")
    assert f"resuming: {whole} of {batches} part(s)" in printed
    for batch, reason in enumerate(damage):  # a part written without its manifest is not trusted
        assert (f"part-{batch:05d}.parquet cannot be reused" in printed) == (reason == "not recorded as complete")
    assert read_rows(disk / "out") == expected  # nothing lost, nothing doubled, nothing half-written trusted
    assert json.loads((disk / "out" / "stats.json").read_text())["rows"] == len(expected)
    shutil.rmtree(work / "disk-cache", ignore_errors=True)


def test_ivf_cells_beyond_the_corpus_fail_before_embedding_and_leave_no_output(ray_cluster, pairs_path, work):
    from raytune_st.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'IVF4096,Flat' needs at least 4,096 training vectors per shard"):
        run(work, pairs_path, "ivf", "index.factory=IVF4096,Flat", f"output.embeddings_dir={work / 'ivf' / 'cache'}")
    assert not (work / "ivf").exists()  # nothing embedded, and the directory this run created is gone


def test_text_that_is_not_utf8_fails_in_prepare_naming_the_row(ray_cluster, work):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = pa.py_buffer(np.asarray([0, 2, 4, 6], np.int32).tobytes())
    queries = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"q0q1\xff\xfe")])
    path = work / "latin.parquet"
    pq.write_table(pa.table({"query": queries, "passage": ["p0", "p1", "p2"]}), path)
    with pytest.raises(DataError, match=r"row 2 \(counting from 0\) of column 'query' is not valid UTF-8 text"):
        run(work, path, "not-utf8")
    assert not (work / "not-utf8").exists()
