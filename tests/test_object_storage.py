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
def ray_cluster(store):
    # Started after the S3 server, so that every Ray worker inherits its endpoint and credentials.
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
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
