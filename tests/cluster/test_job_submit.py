"""`ray job submit --working-dir .` against a real local Ray cluster started with `ray start --head`.

One cluster for the module: a head (tests/harness.py: RayNode) with the dashboard (the job
server) on free ports and its own --temp-dir, stopped in the fixture's teardown even when a
test fails, by signalling the processes it started: `ray stop` would stop every Ray on the
machine.

Submissions use cluster/runtime-env.yaml without its `pip` list: this cluster already runs
in the project's environment, and pip would install torch & co. into a fresh virtualenv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cluster_fixtures import Cluster, submission_runtime_env
from raytune_st.runtime import free_port
from harness import RayNode, console_noise

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    # Short and unique: Ray puts unix sockets under it (at most 107 characters a path).
    temp_dir = Path(tempfile.mkdtemp(prefix="rtc-", dir="/tmp"))
    head = RayNode(str(temp_dir / "head"), num_cpus=2, env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    try:
        head.start()
        yield Cluster(head.dashboard, temp_dir, head.env, submission_runtime_env(temp_dir))
    finally:
        head.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def job_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_working_dir_is_what_the_driver_and_its_workers_import(cluster):
    probe = (
        "import ray, raytune_st\n"
        "print('driver', raytune_st.__file__)\n"
        "ray.init()\n"
        "print('worker', ray.get(ray.remote(lambda: __import__('raytune_st').__file__).remote()))\n"
    )
    out = cluster.submit("python", "-c", probe, submission_id=job_id("import"))
    assert out.returncode == 0, out.stdout + out.stderr
    paths = {line.split()[0]: line.split()[1] for line in out.stdout.splitlines() if line.startswith(("driver ", "worker "))}
    # Both import the uploaded copy of this checkout, not the editable install in .venv.
    for where in ("driver", "worker"):
        assert paths[where].startswith(str(cluster.temp_dir)) and "working_dir_files" in paths[where], paths


def test_evaluate_job_succeeds_and_writes_metrics(cluster, tmp_path):
    sid = job_id("evaluate")
    out = cluster.submit(
        "python", "jobs/evaluate.py", "--config", "examples/configs/evaluate-debian.yaml",
        "evaluators.0.data.limit=40", "evaluators.0.corpus.0.limit=60", f"output.path={tmp_path / 'evaluate'}",
        submission_id=sid,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert cluster.status(sid) == "succeeded"
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert metrics["debian-dev_cosine_ndcg@10"] > 0.7
    logs = cluster.logs(sid)
    assert f"wrote {tmp_path / 'evaluate'}/metrics.json" in logs
    # The job's log is as quiet as a local run's: its own progress, none of Ray's output.
    assert "[evaluate] InformationRetrievalEvaluator debian-dev: running" in logs
    assert console_noise(logs) == [], logs


def test_a_custom_evaluator_travels_with_py_modules_and_reports_beside_a_builtin_one(cluster, tmp_path):
    # The user's module goes to the driver and the worker through the runtime env's py_modules.
    runtime_env = submission_runtime_env(
        cluster.temp_dir, "runtime-env-custom.yaml", py_modules=[str(REPO / "tests" / "user_project" / "my_project")]
    )
    dev = REPO / "examples" / "data" / "debian-dev-sample.parquet"
    config = tmp_path / "evaluate.yaml"
    config.write_text(
        "model: sentence-transformers/all-MiniLM-L6-v2\n"
        "evaluators:\n"
        f"  - {{type: TripletEvaluator, name: sample, data: {{path: {dev}, columns: [query, passage, package], limit: 20}}}}\n"
        f"  - {{type: my_project.evaluation:MeanPairSimilarity, name: pairs, data: {{path: {dev}, columns: [query, passage], limit: 20}}}}\n"
        f"output: {tmp_path / 'evaluate'}\n"
    )
    sid = job_id("custom")
    out = cluster.submit("python", "jobs/evaluate.py", "--config", str(config), submission_id=sid, runtime_env=runtime_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    # MiniLM puts a package's synopsis close to its description.
    assert metrics["pairs_mean_similarity"] > 0.3 and "sample_cosine_accuracy" in metrics
    assert "[evaluate] MeanPairSimilarity pairs: running" in cluster.logs(sid)


def test_bad_config_fails_the_job_with_one_error_line(cluster, tmp_path):
    sid = job_id("bad-config")
    out = cluster.submit(
        "python", "jobs/evaluate.py", "--config", "examples/configs/evaluate-debian.yaml",
        "evaluators.0.type=InformationRetrievalEvaluatr", f"output.path={tmp_path / 'evaluate'}",
        submission_id=sid,
    )
    assert out.returncode == 1
    assert cluster.status(sid) == "failed"
    logs = cluster.logs(sid)
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "InformationRetrievalEvaluatr" in errors[0] and "InformationRetrievalEvaluator" in errors[0], logs
    assert "Traceback" not in logs
    assert not (tmp_path / "evaluate").exists()


def test_mine_job_succeeds_and_writes_triplets(cluster, tmp_path):
    sid = job_id("mine")
    out = cluster.submit(
        "python", "jobs/mine.py", "--config", "examples/configs/mine-debian.yaml",
        "dataset.limit=80", "mine.num_negatives=1", "compute.embed_chunk_rows=128", "compute.mine_batch_rows=128",
        "compute.embed_actors_max=1", f"output.path={tmp_path / 'mined'}",
        submission_id=sid,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = pq.read_table(sorted((tmp_path / "mined").glob("part-*.parquet")))
    assert table.column_names == ["query", "passage", "negative"]
    assert 0 < table.num_rows <= 80
    assert (tmp_path / "mined" / "stats.json").is_file()


def test_unreachable_ray_address_names_it_and_how_to_start_one(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, RAY_ADDRESS=address, HF_HUB_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "jobs/evaluate.py", "--config", "examples/configs/evaluate-debian.yaml", f"output.path={tmp_path / 'out'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and address in last and "ray start --head" in last, out.stderr[-2000:]
    # A user waits seconds, not the minutes Ray's own connection retries take.
    assert time.monotonic() - started < 60


def test_train_job_succeeds_and_writes_the_model(cluster, tmp_path):
    # The job runs in an uploaded copy of the checkout, where ../shared does not exist: absolute paths.
    stsb = REPO.parent / "shared" / "data"
    sid = job_id("train")
    out = cluster.submit(
        "python", "jobs/train.py", "--config", "examples/configs/train-cosent-stsb.yaml",
        f"train_datasets.stsb.data.path={stsb / 'stsb-en-train.parquet'}", "train_datasets.stsb.data.limit=64",
        f"eval_datasets.stsb.data.path={stsb / 'stsb-en-dev.parquet'}", "eval_datasets.stsb.data.limit=32",
        f"evaluators.0.data.path={stsb / 'stsb-en-dev.parquet'}", "evaluators.0.data.limit=32",
        "args.max_steps=2", "args.eval_steps=2", "args.save_steps=2", "args.logging_steps=1",
        f"args.output_dir={tmp_path / 'model'}", f"run.storage_path={tmp_path / 'ray'}",
        submission_id=sid,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (tmp_path / "model" / "final").is_dir()
    assert any((tmp_path / "ray").iterdir()), "no Ray Train state under run.storage_path"
    logs = cluster.logs(sid)
    for line in ("[train] step 1/2 (50%)", "[train] step 2/2 (100%)", "[train] eval at step 2: loss "):
        assert sum(entry.startswith(line) for entry in logs.splitlines()) == 1, logs
    assert console_noise(logs) == [], logs
