"""The evaluate job through a real local Ray, with the real all-MiniLM-L6-v2."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.cli import load_job_config, main
from raytune_st.errors import DataError, ModelError
from raytune_st.evaluation.job import evaluate

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
STSB_DEV = REPO.parent / "shared" / "data" / "stsb-en-dev.parquet"


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(ray_init_options):
    import ray

    ray.init(**ray_init_options, logging_level="WARNING")
    yield
    ray.shutdown()


def config(tmp_path, *overrides):
    return load_job_config(
        "evaluate", str(REPO / "examples/configs/evaluate-stsb.yaml"), [f"output.path={tmp_path / 'out'}", *overrides]
    )


def test_sts_dev_spearman_is_the_evaluators_own_and_the_published_figure(tmp_path, minilm_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    cfg = config(tmp_path, f"evaluators.0.data={STSB_DEV}")
    metrics = evaluate(cfg)

    # all-MiniLM-L6-v2's published STS-benchmark dev figure.
    assert metrics["sts-dev_spearman_cosine"] == pytest.approx(0.8672, abs=5e-4)
    # ...and exactly what sentence-transformers' evaluator gives in this process.
    table = pq.read_table(STSB_DEV)
    reference = EmbeddingSimilarityEvaluator(
        table["sentence1"].to_pylist(), table["sentence2"].to_pylist(), table["score"].to_pylist(), name="sts-dev", write_csv=False
    )(SentenceTransformer(minilm_dir, device="cpu"))
    assert metrics == pytest.approx(reference, abs=1e-6)

    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == metrics
    saved = load_job_config("evaluate", str(out / "config.yaml"))
    assert saved == cfg


def test_several_evaluators_run_as_one_sequential_evaluator(tmp_path):
    """Information retrieval from the bundled Debian pairs plus a triplet evaluator, in one job."""
    sample = REPO / "examples/data/debian-dev-sample.parquet"
    table = pq.read_table(sample).slice(0, 60)
    triplets = tmp_path / "triplets.jsonl"
    rows = table.to_pylist()
    triplets.write_text(
        "".join(
            json.dumps({"anchor": r["query"], "positive": r["passage"], "negative": rows[(i + 1) % len(rows)]["passage"]}) + "\n"
            for i, r in enumerate(rows)
        )
    )
    cfg = load_job_config(
        "evaluate",
        str(REPO / "examples/configs/evaluate-debian.yaml"),
        [
            f"output.path={tmp_path / 'out'}",
            "evaluators.0.data.limit=60",
            "evaluators.0.corpus.0.limit=100",
        ],
    )
    from raytune_st.config import build
    from raytune_st.evaluation.config import EvaluatorSpec

    cfg.evaluators.append(build(EvaluatorSpec, {"type": "TripletEvaluator", "name": "triplets", "data": str(triplets)}))
    metrics = evaluate(cfg)
    assert metrics["debian-dev_cosine_ndcg@10"] > 0.7
    assert metrics["triplets_cosine_accuracy"] > 0.9
    assert "sequential_score" in metrics


def test_bad_values_fail_on_the_worker_with_one_clear_line_and_write_nothing(tmp_path, capsys):
    data = tmp_path / "sts.parquet"
    pq.write_table(pa.table({"s1": ["a", None], "s2": ["b", "c"], "score": [0.5, 1.0]}), data)
    code = main(["evaluate", "--config", str(REPO / "examples/configs/evaluate-stsb.yaml"),
                 f"evaluators.0.data={data}", f"output.path={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == "error: evaluator 'sts-dev': column 's1' (sentence1) row 1 is null, expected a string; drop or fix such rows in the data"
    # The failed run leaves no directory behind, not even an empty one.
    assert not (tmp_path / "out").exists()


def test_missing_inputs_fail_before_any_work(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        evaluate(config(tmp_path, f"evaluators.0.data={tmp_path / 'missing.parquet'}"))
    with pytest.raises(ModelError, match="model directory './no-such-model' does not exist"):
        evaluate(config(tmp_path, "model=./no-such-model", f"evaluators.0.data={STSB_DEV}"))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_rerun_killed_at_any_point_never_leaves_another_runs_metrics(tmp_path, tiny_bert_dir, kill_delay):
    """Evaluate model A, then rerun into the same directory with model B and SIGKILL the
    driver at a random moment: the directory holds B's results or none, never A's. A last
    rerun gives what an uninterrupted run of B gives."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    out = tmp_path / "out"
    first = config(tmp_path, f"evaluators.0.data={STSB_DEV}", "evaluators.0.data.limit=200")
    first_metrics = evaluate(first)
    assert (out / "metrics.json").is_file()

    second_args = [
        "evaluate", "--config", str(REPO / "examples/configs/evaluate-stsb.yaml"), f"output.path={out}",
        f"evaluators.0.data={STSB_DEV}", "evaluators.0.data.limit=200", f"model={tiny_bert_dir}",
    ]
    delay = kill_delay(0.5, 12.0)
    # The rerun joins this module's Ray as a driver of its own, and dies as a killed process does.
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "raytune_st", *second_args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # metrics.json and config.yaml always describe one run: A's (killed before its checks
    # passed), B's (it finished), or none (killed while it worked).
    if (out / "metrics.json").exists():
        saved = json.loads((out / "metrics.json").read_text())
        model = load_job_config("evaluate", str(out / "config.yaml")).model.name
        if model != tiny_bert_dir:
            assert model == first.model.name and saved == first_metrics, f"killed after {delay:.1f} s"
    else:
        assert not (out / "config.yaml").exists(), f"killed after {delay:.1f} s: A's config.yaml is left"

    assert main(second_args) == 0
    reference = evaluate(config(tmp_path / "reference", f"evaluators.0.data={STSB_DEV}", "evaluators.0.data.limit=200",
                                f"model={tiny_bert_dir}"))
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(reference, abs=1e-6)
