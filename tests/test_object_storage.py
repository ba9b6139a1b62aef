"""Every job with every path in object storage: a real S3 API (moto's server) and a real local Ray.

The README's chain, mine -> train on the mined triplets -> evaluate the trained model -> a
two-trial sweep, with the start model, the data, the embedding cache, the outputs, the
checkpoints and Tune's state all in one bucket. The process works in an empty directory,
which must stay empty: nothing goes to local disk but Ray's temp dir and the model cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq
import pytest

import raytune_st
from raytune_st.errors import DataError
from raytune_st.outputs import filesystem

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[1]
TRAIN_SAMPLE = REPO / "examples" / "data" / "debian-train-sample.parquet"
DEV_SAMPLE = REPO / "examples" / "data" / "debian-dev-sample.parquet"


@pytest.fixture(scope="module")
def store(s3_server, tmp_path_factory, tiny_bert_dir):
    """A bucket holding the start model and the data; the model cache is this module's own."""
    cache = tmp_path_factory.mktemp("model-cache")
    saved_cache = os.environ.get("RAYTUNE_ST_MODEL_CACHE")
    os.environ["RAYTUNE_ST_MODEL_CACHE"] = str(cache)
    bucket = s3_server.create_bucket("raytune-st-e2e")
    fs, _ = filesystem(bucket)
    local = pyarrow.fs.LocalFileSystem()
    pyarrow.fs.copy_files(tiny_bert_dir, "raytune-st-e2e/models/start", source_filesystem=local, destination_filesystem=fs)
    pq.write_table(pq.read_table(TRAIN_SAMPLE, columns=["query", "passage"]).slice(0, 120), "raytune-st-e2e/data/train/pairs.parquet", filesystem=fs)
    pq.write_table(pq.read_table(DEV_SAMPLE, columns=["query", "passage"]).slice(0, 40), "raytune-st-e2e/data/dev.parquet", filesystem=fs)
    yield {"bucket": bucket, "fs": fs, "cache": cache}
    if saved_cache is None:
        os.environ.pop("RAYTUNE_ST_MODEL_CACHE", None)
    else:
        os.environ["RAYTUNE_ST_MODEL_CACHE"] = saved_cache


@pytest.fixture(scope="module")
def ray_cluster(store, ray_init_options):
    # Started after the S3 server, so that every Ray worker inherits its endpoint and credentials.
    import ray

    ray.init(**ray_init_options, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def objects(store, prefix: str) -> dict[str, int]:
    """Relative path -> size of every object under bucket/prefix."""
    root = f"raytune-st-e2e/{prefix}"
    infos = store["fs"].get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1 :]: i.size for i in infos if i.type == pyarrow.fs.FileType.File}


def evaluator(b: str) -> dict:
    return {
        "type": "InformationRetrievalEvaluator",
        "name": "dev",
        "data": {"path": f"{b}/data/dev.parquet", "columns": ["query", "passage"]},
        "batch_size": 32,
        "ndcg_at_k": [10],
        "mrr_at_k": [10],
    }


def test_mine_train_evaluate_and_tune_with_every_path_in_a_bucket(store, ray_cluster, workdir):
    b = store["bucket"]

    # 1. Mine hard negatives: model, data, embedding cache and output in the bucket.
    mine_config = {
        "model": f"{b}/models/start",
        "dataset": {"path": f"{b}/data/train", "anchor_column_name": "query", "positive_column_name": "passage"},
        "mine": {"num_negatives": 1, "range_max": 10, "sampling_strategy": "top", "output_format": "triplet", "batch_size": 32},
        "compute": {"embed_actors_max": 1, "embed_chunk_rows": 64, "mine_batch_rows": 64},
        "output": {"path": f"{b}/mined", "embeddings_dir": f"{b}/embedding-cache"},
    }
    raytune_st.mine(mine_config)
    mined = objects(store, "mined")
    assert {"stats.json", "config.yaml"} <= set(mined) and any(n.startswith("part-") for n in mined), mined
    assert objects(store, "embedding-cache"), "no embedding cache in the bucket"
    parts = sorted(f"raytune-st-e2e/mined/{n}" for n in mined if n.startswith("part-"))
    triplets = pq.read_table(parts, filesystem=store["fs"])
    assert triplets.column_names == ["query", "passage", "negative"] and 0 < triplets.num_rows <= 120

    # 2. Train on the mined triplets: output_dir and checkpoints (run.storage_path) in the bucket.
    train_config = {
        "model": f"{b}/models/start",
        "train_datasets": {"mined": {"data": {"path": f"{b}/mined", "format": "parquet", "columns": ["query", "passage", "negative"]}}},
        "loss": "MultipleNegativesRankingLoss",
        "evaluators": [evaluator(b)],
        "args": {
            "output_dir": f"{b}/model", "max_steps": 4, "per_device_train_batch_size": 8, "eval_strategy": "steps",
            "eval_steps": 2, "save_steps": 2, "logging_steps": 2, "save_total_limit": 1,
        },
        "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
        "run": {"name": "e2e", "storage_path": f"{b}/ray"},
    }
    raytune_st.train(train_config)
    model_files = objects(store, "model")
    assert {"final/model.safetensors", "final/modules.json", "final/README.md", "metrics.jsonl", "config.yaml"} <= set(model_files)
    assert any(name.startswith("e2e/") for name in objects(store, "ray")), "no checkpoints under run.storage_path"

    # 3. Evaluate the trained model straight from the bucket.
    metrics = raytune_st.evaluate({"model": f"{b}/model/final", "evaluators": [evaluator(b)], "output": {"path": f"{b}/evaluate"}})
    saved = json.loads(store["fs"].open_input_stream("raytune-st-e2e/evaluate/metrics.json").read())
    assert saved == metrics and 0 <= metrics["dev_cosine_ndcg@10"] <= 1

    # 4. A two-trial sweep that starts from the trained model: trials, Tune state and best/ in the bucket.
    tune_config = {
        **train_config,
        "model": f"{b}/model/final",
        "args": {**train_config["args"], "output_dir": f"{b}/sweep"},
        "search": {
            "space": {"args.learning_rate": {"choice": [1.0e-5, 1.0e-4]}},
            "search_alg": "grid",
            "metric": "eval_dev_cosine_ndcg@10",
            "mode": "max",
            "max_concurrent_trials": 1,
            "storage_path": f"{b}/tune-state",
            "name": "e2e-sweep",
        },
    }
    tune_config.pop("run")
    raytune_st.tune(tune_config)
    sweep = objects(store, "sweep")
    assert "best/modules.json" in sweep and "best-config.yaml" in sweep, sorted(sweep)[:20]
    assert objects(store, "tune-state"), "no Tune state under search.storage_path"

    written = {prefix: sum(objects(store, prefix).values()) for prefix in ("mined", "embedding-cache", "model", "ray", "evaluate", "sweep", "tune-state")}
    print("bytes written to the bucket: " + ", ".join(f"{prefix} {size:,}" for prefix, size in written.items()))
    # Every byte went to the bucket: the working directory is as empty as it started.
    assert list(workdir.iterdir()) == []
    # The start model and the trained one were each downloaded once into this node's cache.
    copies = [p for p in store["cache"].iterdir() if p.is_dir()]
    assert len(copies) == 2, copies
    # No credential in anything written.
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for prefix in ("mined", "model", "evaluate", "sweep"):
        for name in objects(store, prefix):
            if name.endswith((".json", ".yaml", ".md", ".jsonl")):
                text = store["fs"].open_input_stream(f"raytune-st-e2e/{prefix}/{name}").read().decode()
                assert secret not in text, f"{prefix}/{name} holds the secret key"


def test_an_unreachable_bucket_as_output_is_one_clear_error(store, workdir):
    config = {
        "model": f"{store['bucket']}/models/start",
        "evaluators": [evaluator(store["bucket"])],
        "output": {"path": "s3://no-such-bucket-rtst/evaluate"},
    }
    with pytest.raises(DataError, match="cannot write to directory 's3://no-such-bucket-rtst/evaluate'"):
        raytune_st.evaluate(config)


def rows_in(store, prefix: str) -> list[dict]:
    names = sorted(n for n in objects(store, prefix) if n.startswith("part-"))
    return [row for name in names for row in pq.read_table(f"raytune-st-e2e/{prefix}/{name}", filesystem=store["fs"]).to_pylist()]


def test_mining_in_a_bucket_resumes_after_a_killed_driver_and_recomputes_damaged_objects(store, ray_cluster, workdir, capsys):
    """The resume tests of test_mine_ray.py with every path in the bucket: a driver SIGKILLed at
    a random moment, then a part and an embedding-cache object cut short after a finished run."""
    import random
    import signal
    import subprocess
    import sys
    import time

    import ray
    import yaml

    from raytune_st.mining import store as work_files

    b = store["bucket"]

    def config(out: str) -> dict:
        return {
            "model": f"{b}/models/start",
            "dataset": {"path": f"{b}/data/train", "anchor_column_name": "query", "positive_column_name": "passage"},
            "mine": {"num_negatives": 2, "range_max": 10, "output_format": "n-tuple", "batch_size": 32},
            "compute": {"embed_actors_max": 1, "embed_chunk_rows": 32, "mine_batch_rows": 24},
            "output": {"path": f"{b}/{out}", "embeddings_dir": f"{b}/{out}-cache"},
        }

    raytune_st.mine(config("resume-full"))
    full = rows_in(store, "resume-full")

    # 1. The driver SIGKILLed at a random moment, the same command again.
    (workdir / "mine.yaml").write_text(yaml.safe_dump(config("resume-killed")))
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "raytune_st", "mine", "--config", "mine.yaml"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed at a random moment after the first embeddings reached the bucket, while it embeds, indexes or mines.
    while not objects(store, "resume-killed-cache") and time.monotonic() - started < 120:
        assert proc.poll() is None, "the run ended before it wrote any embedding"
        time.sleep(0.1)
    time.sleep(random.Random().uniform(0.0, 1.5))
    assert proc.poll() is None, "the run ended before it could be killed"
    delay = time.monotonic() - started
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not objects(store, "resume-killed").get("stats.json")
    (workdir / "mine.yaml").unlink()
    began = time.monotonic()
    raytune_st.mine(config("resume-killed"))
    assert rows_in(store, "resume-killed") == full, f"killed after {delay:.1f} s"
    with capsys.disabled():
        print(f"bucket mining driver killed {delay:.1f} s in: the rerun took {time.monotonic() - began:.1f} s, "
              f"{len(full)} rows, 0 lost")
    assert not [n for n in objects(store, "resume-killed") if ".tmp-" in n]

    # 2. A part and a cached embedding cut short (an upload that stopped): found, computed again.
    fs = store["fs"]
    part = "raytune-st-e2e/resume-killed/part-00001.parquet"
    cache = sorted(n for n in objects(store, "resume-killed-cache") if n.startswith("corpus-"))[0]
    for key in (part, f"raytune-st-e2e/resume-killed-cache/{cache}"):
        data = fs.open_input_stream(key).read()
        with fs.open_output_stream(key) as handle:
            handle.write(data[: len(data) // 2])
    capsys.readouterr()
    began = time.monotonic()
    summary = raytune_st.mine(config("resume-killed"))
    took = time.monotonic() - began
    printed = capsys.readouterr().out
    with capsys.disabled():
        print(f"bucket part and cache object cut short: the rerun took {took:.1f} s")
    assert "[mine] part-00001.parquet cannot be reused (" in printed
    assert rows_in(store, "resume-killed") == full and summary["rows"] == len(full)
    assert work_files.load_vectors(f"{b}/resume-killed-cache/{cache}").shape[0] > 0  # embedded again, whole
    assert list(workdir.iterdir()) == []


def test_a_training_run_resumed_from_a_checkpoint_in_a_bucket_repeats_the_losses(store, ray_cluster, workdir):
    """The RNG test of test_train_ray.py with the checkpoints in the bucket: the run resumed from
    the step-4 checkpoint trains every later step exactly as the uninterrupted run did."""
    import ray.train

    from raytune_st.config import build
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.job import fit_and_write, plan_run

    b = store["bucket"]

    def config(out: str) -> TrainConfig:
        return build(TrainConfig, {
            "model": f"{b}/models/start",
            "train_datasets": {"pairs": {"data": f"{b}/data/train"}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": f"{b}/{out}", "max_steps": 8, "per_device_train_batch_size": 4, "logging_steps": 1,
                     "save_steps": 4},
            "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
            "run": {"name": "rng", "storage_path": f"{b}/{out}-ray"},
        })

    def history(out: str) -> list[dict]:
        text = store["fs"].open_input_stream(f"raytune-st-e2e/{out}/metrics.jsonl").read().decode()
        return [json.loads(line) for line in text.splitlines()]

    raytune_st.train(config("rng-a"))
    checkpoint = ray.train.Checkpoint(f"{b}/rng-a-ray/rng/checkpoint-000004")
    resumed = config("rng-b")
    fit_and_write(resumed, plan_run(resumed), initial_checkpoint=checkpoint)
    uninterrupted, again = history("rng-a"), history("rng-b")
    assert [r["step"] for r in again] == [r["step"] for r in uninterrupted] == list(range(1, 9))
    assert again[4].get("resumed_from_step") == 4
    assert [(r["loss"], r["grad_norm"]) for r in again] == [(r["loss"], r["grad_norm"]) for r in uninterrupted]
    assert list(workdir.iterdir()) == []
