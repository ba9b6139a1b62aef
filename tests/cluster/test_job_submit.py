"""`ray job submit --working-dir .` against a real local Ray cluster started with `ray start --head`.

One cluster for the module: a head with the dashboard (the job server) on free ports and its
own --temp-dir, stopped in the fixture's teardown even when a test fails. It is stopped by
signalling the `ray start --block` process this module started (and, failing that, the
processes under its temp dir): `ray stop` would stop every Ray on the machine.

Submissions use cluster/runtime-env.yaml without its `pip` list: this cluster already runs
in the project's environment, and pip would install torch & co. into a fresh virtualenv.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    address: str  # the job server, http://127.0.0.1:PORT
    temp_dir: Path
    env: dict
    runtime_env: Path  # cluster/runtime-env.yaml less pip

    def ray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, *entrypoint: str, submission_id: str) -> subprocess.CompletedProcess:
        """The README's command: blocks until the job ends, exit status 1 when it failed."""
        return self.ray(
            "job", "submit", "--address", self.address, "--submission-id", submission_id,
            "--working-dir", ".", "--runtime-env", str(self.runtime_env), "--", *entrypoint,
        )

    def status(self, submission_id: str) -> str:
        """`ray job status`'s verdict: 'succeeded', 'failed', or its status line."""
        out = self.ray("job", "status", "--address", self.address, submission_id, timeout=60)
        text = out.stdout + out.stderr
        for verdict in ("succeeded", "failed"):
            if f"Job '{submission_id}' {verdict}" in text:
                return verdict
        return text

    def logs(self, submission_id: str) -> str:
        return self.ray("job", "logs", "--address", self.address, submission_id, timeout=60).stdout


def _processes_under(temp_dir: Path) -> list[int]:
    """Ray processes of this module's cluster: their command lines name its temp dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(temp_dir).encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def cluster():
    # Short and unique: Ray puts unix sockets under it (at most 107 characters a path).
    temp_dir = Path(tempfile.mkdtemp(prefix="rtc-", dir="/tmp"))
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = dict(
        os.environ,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # Ray 2.60 turns token authentication on for a head that finds ~/.ray/auth_token; pin it
        # on, with this cluster's own token, for the head and every CLI call alike.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime-env.yaml").read_text())
    runtime_env.pop("pip")
    runtime_env_file = temp_dir / "runtime-env.yaml"
    runtime_env_file.write_text(yaml.safe_dump(runtime_env))

    dashboard = free_port()
    log = open(temp_dir / "ray-start.log", "w")
    head = subprocess.Popen(
        [
            RAY, "start", "--head", "--block", "--disable-usage-stats",
            "--port", str(free_port()), "--dashboard-port", str(dashboard), "--include-dashboard", "true",
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--num-cpus", "2", "--temp-dir", str(temp_dir),
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    c = Cluster(f"http://127.0.0.1:{dashboard}", temp_dir, env, runtime_env_file)
    try:
        deadline = time.monotonic() + 90
        while c.ray("job", "list", "--address", c.address, timeout=60).returncode != 0:
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the local Ray head did not come up:\n{(temp_dir / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(1)
        yield c
    finally:
        # `ray start --block` and every process it started share one new process group;
        # stop them all at once (one by one, Ray's own shutdown takes over 30 s).
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        leftover = set(_processes_under(temp_dir)) | ({head.pid} if head.poll() is None else set())
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait()
        log.close()
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
    assert f"wrote {tmp_path / 'evaluate'}/metrics.json" in cluster.logs(sid)


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


@pytest.mark.skipif(not (REPO / "jobs" / "mine.py").exists(), reason="jobs/mine.py is not written yet")
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


@pytest.mark.skipif(not (REPO / "jobs" / "train.py").exists(), reason="jobs/train.py is not written yet")
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
