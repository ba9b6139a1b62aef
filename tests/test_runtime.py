"""Tests for raytune_st.runtime: which cluster to join, and failing fast when it is unreachable."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raytune_st.errors import ClusterError
from raytune_st.runtime import free_port, ray_address, ray_session


def test_ray_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) is None  # start a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ray_address(None) == "10.0.0.1:6379"
    assert ray_address("head:6379") == "head:6379"  # the config wins over the environment
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert ray_address(None) is None


@pytest.mark.parametrize("via_env", [False, True])
def test_unreachable_address_fails_fast_naming_it(monkeypatch, via_env):
    import ray

    assert not ray.is_initialized()
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address if via_env else "")
    start = time.monotonic()
    with pytest.raises(ClusterError) as exc:
        with ray_session(None if via_env else address):
            pass
    assert time.monotonic() - start < 30
    assert address in str(exc.value) and "ray start --head" in str(exc.value)
    assert not ray.is_initialized()


@pytest.mark.ray
def test_a_local_run_beside_a_users_own_ray_start_cluster(tmp_path, tiny_bert_dir):
    """A user's `ray start --head` on the same machine: raytune_st starts its own Ray, trains,
    and leaves the user's cluster as it was; Ray's own processes find the right cluster."""
    from harness import RayNode

    # RAY_TMPDIR stands in for /tmp: `ray start --head` without --temp-dir records its
    # address in <RAY_TMPDIR>/ray/ray_current_cluster, where ray.init() looks for one.
    tmpdir = tempfile.mkdtemp(prefix="rt2-", dir="/tmp")
    users = RayNode(os.path.join(tmpdir, "ray"), num_cpus=1).start()
    try:
        pairs = tmp_path / "pairs.parquet"
        sample = Path(__file__).resolve().parents[1] / "examples" / "data" / "debian-train-sample.parquet"
        pq.write_table(pq.read_table(sample, columns=["query", "passage"]).slice(0, 32), pairs)
        config = {
            "model": tiny_bert_dir,
            "train_datasets": {"pairs": {"data": str(pairs)}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "per_device_train_batch_size": 8, "save_steps": 2},
            "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
        }
        (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
        env["RAY_TMPDIR"] = tmpdir
        out = subprocess.run(
            [sys.executable, "-m", "raytune_st", "train", "--config", str(tmp_path / "train.yaml")],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "Found multiple active Ray instances" not in out.stdout + out.stderr
        assert (tmp_path / "out" / "final" / "modules.json").is_file()
        # The run had a Ray of its own: nothing ran on the user's cluster, which is still whole.
        assert users.list_state("jobs") == []
        (node,) = users.list_state("nodes")
        assert node["state"] == "ALIVE" and node["resources_total"]["CPU"] == 1
        (own,) = glob.glob(os.path.join(tmpdir, "rtst-*"))
        logs = [p for p in glob.glob(os.path.join(own, "ray", "session_*", "logs", "*")) if os.path.isfile(p)]
        assert logs, "the run's Ray kept no logs in its own temp dir"
        for path in logs:
            assert "Found multiple active Ray instances" not in open(path, errors="replace").read(), path
    finally:
        users.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_job_settings_of_ray_data_and_logging_last_only_while_the_job_runs():
    import logging

    from ray.data import DataContext

    from raytune_st.runtime import data_context, logger_level

    context = DataContext.get_current()
    before = (context.enable_progress_bars, context.print_on_execution_start)
    with data_context(enable_progress_bars=not before[0], print_on_execution_start=False) as inside:
        assert inside is context and context.enable_progress_bars is (not before[0])
    assert (context.enable_progress_bars, context.print_on_execution_start) == before
    level = logging.getLogger("ray.data").level
    with pytest.raises(RuntimeError):
        with logger_level("ray.data", logging.ERROR):
            assert logging.getLogger("ray.data").level == logging.ERROR
            raise RuntimeError("a failed stage")
    assert logging.getLogger("ray.data").level == level


def test_only_the_benign_raylet_notices_are_dropped_from_the_console():
    from raytune_st.runtime import _without_benign_notices

    printed = []
    printer = _without_benign_notices(lambda data, ignore_prefix: printed.append(data["lines"][0]))
    benign = "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 1.2.3.4, which is 4x ..."
    died = "A worker died or was killed while executing a task by an unexpected system error."
    printer({"lines": [benign], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    printer({"lines": [died], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    printer({"lines": [benign], "pid": 1234, "is_err": False}, ignore_prefix=False)  # a worker's own output is not Ray's notice
    assert printed == [died, benign]


def test_the_train_controller_poll_is_short_unless_the_user_set_one(monkeypatch):
    from raytune_st.runtime import TRAIN_POLL_ENV, worker_env

    monkeypatch.delenv(TRAIN_POLL_ENV, raising=False)
    assert worker_env()[TRAIN_POLL_ENV] == "0.1"
    monkeypatch.setenv(TRAIN_POLL_ENV, "5")
    assert worker_env()[TRAIN_POLL_ENV] == "5"


def test_a_local_ray_leaves_out_the_preemption_watcher_and_extra_footer_readers_unless_the_user_set_them(monkeypatch):
    from raytune_st.runtime import worker_env

    monkeypatch.delenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", raising=False)
    monkeypatch.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "8")
    local = worker_env(local=True)
    assert local["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] == "0"
    assert local["RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"] == "8"  # the user's setting wins
    # A cluster's nodes can be drained and its files can be many: Ray's defaults stay.
    assert "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER" not in worker_env()


def test_the_sessions_environment_settings_last_only_while_it_runs_and_never_replace_the_users(monkeypatch):
    from raytune_st.runtime import environ

    monkeypatch.delenv("RTST_TEST_NEW", raising=False)
    monkeypatch.setenv("RTST_TEST_USERS", "mine")
    with environ({"RTST_TEST_NEW": "1", "RTST_TEST_USERS": "2"}):
        assert os.environ["RTST_TEST_NEW"] == "1" and os.environ["RTST_TEST_USERS"] == "mine"
    assert "RTST_TEST_NEW" not in os.environ and os.environ["RTST_TEST_USERS"] == "mine"


@pytest.mark.ray
def test_reports_of_a_fast_loop_do_not_wait_for_the_train_controllers_default_poll(monkeypatch, tmp_path):
    """Ray Train takes one report a poll; at its default (every 2 s) ten reports of a loop that
    does nothing else took 20 s. The local Ray a job starts polls often enough that they don't."""
    import ray.train
    from ray.train.torch import TorchTrainer

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)

    timing = tmp_path / "seconds"

    def loop(_config) -> None:
        ray.train.report({"step": 0})  # the controller's first poll may come late: not timed
        began = time.perf_counter()
        for step in range(1, 11):
            ray.train.report({"step": step})
        timing.write_text(str(time.perf_counter() - began))

    with ray_session():
        TorchTrainer(
            loop,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray")),
        ).fit()
    assert float(timing.read_text()) < 5.0


@pytest.mark.ray
def test_a_killed_train_runs_cpus_come_back_in_a_local_ray_with_the_state_api(monkeypatch, tmp_path):
    """Train's placement group outlives a controller that was killed (a trial PBT restarts, one
    ASHA stops): Train's cleaner removes it once Ray's state API says the controller is dead.
    The local Ray a sweep starts serves that API, so the CPUs come back; without it a
    restarted PBT trial waited forever for a CPU to read its data."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from harness import wait_for

    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    started = tmp_path / "started"

    def loop(_config) -> None:
        started.touch()
        time.sleep(600)

    @ray.remote(num_cpus=0)
    class Trial:  # as a Tune trial's actor: it owns the Train run's controller
        def fit(self) -> None:
            TorchTrainer(
                loop,
                scaling_config=ray.train.ScalingConfig(num_workers=1),
                run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray")),
            ).fit()

    with ray_session(state_api=True):
        total = ray.cluster_resources()["CPU"]
        trial = Trial.remote()
        trial.fit.remote()
        wait_for(started.exists, 120, "the Train run to start")
        assert ray.available_resources().get("CPU", 0) == total - 1
        ray.kill(trial)
        wait_for(lambda: ray.available_resources().get("CPU", 0) == total, 60, "the killed run's CPU to be released")
