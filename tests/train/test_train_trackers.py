"""args.report_to: which trackers, their pre-flight, the parameters they get, and a real offline
W&B run written through the driver's console (no Ray: the console is fed reports directly)."""

from __future__ import annotations

import glob
import queue

import pytest

from raytune_st.config.core import build
from raytune_st.errors import ConfigError
from harness import read_wandb_offline_run
from raytune_st.train import trackers
from raytune_st.train.config import TrainConfig
from raytune_st.train.progress import TrainConsole, tracking_start
from raytune_st.train.trackers import check_trackers, params_of, resolve_report_to
from train_fixtures import DEBIAN_TRAIN


class LocalQueue(queue.Queue):
    """ray.util.queue.Queue's get / put / shutdown, in this process."""

    def shutdown(self) -> None:
        pass


def test_report_to_takes_sentence_transformers_names_one_or_several():
    assert resolve_report_to("tensorboard") == ["tensorboard"]
    assert resolve_report_to(["wandb", "tensorboard", "wandb"]) == ["wandb", "tensorboard"]
    assert resolve_report_to("none") == [] and resolve_report_to([]) == []
    assert resolve_report_to("all", installed={"tensorboard"}) == ["tensorboard"]  # every installed tracker
    assert resolve_report_to(["all"], installed={"tensorboard", "wandb"}) == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord'; valid: tensorboard, mlflow, wandb, trackio, codecarbon, all, none"):
        resolve_report_to(["tensorbord"])
    with pytest.raises(ConfigError, match="'none' cannot be combined"):
        resolve_report_to(["none", "wandb"])


def make(**args) -> TrainConfig:
    return build(
        TrainConfig,
        {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": "s3://AKIAFAKE:very-secret@bucket/run", **args},
        },
    )


def test_the_config_refuses_an_unknown_tracker_and_keeps_tensorboard_by_default():
    assert make().args.report_to == ["tensorboard"]
    with pytest.raises(ConfigError, match="args.report_to: unknown tracker 'mlfow'"):
        make(report_to="mlfow")


def test_preflight_names_the_missing_library_and_wandb_online_without_credentials(monkeypatch, tmp_path):
    monkeypatch.setattr(trackers, "_installed", lambda module: module != "wandb")
    with pytest.raises(ConfigError, match=r"wandb is not installed; pip install 'raytune_st\[wandb\]'"):
        check_trackers(["wandb"])
    monkeypatch.setattr(trackers, "_installed", lambda module: True)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    with pytest.raises(ConfigError, match="wandb is online but has no credentials; run `wandb login`.*WANDB_MODE=offline"):
        check_trackers(["wandb"], env={})
    check_trackers(["wandb"], env={"WANDB_MODE": "offline"})
    check_trackers(["wandb"], env={"WANDB_API_KEY": "x"})


def test_parameters_are_the_dotted_config_with_uri_credentials_masked():
    params = params_of(make(learning_rate=3e-5))
    assert params["args.learning_rate"] == "3e-05" and params["model.name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert params["args.output_dir"] == "s3://***@bucket/run"
    assert not any("very-secret" in v or "AKIAFAKE" in v for v in params.values())


def test_an_offline_wandb_run_gets_every_report_at_its_step_the_params_and_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_API_KEY", "fake-wandb-token-1234")
    model = tmp_path / "final"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with TrainConsole(bar=False, queue=LocalQueue(), trackers=["wandb"]) as console:
        # What a sweep's trial and its Train callback put on the queue.
        console.queue.put(tracking_start("t1", "trial-one", {"args.learning_rate": "2e-05"}, group="sweep-a"))
        console.queue.put({"tag": "t1", "total_steps": 2, "record": {"step": 1, "loss": 1.5, "learning_rate": 2e-5}, "saved": False})
        console.queue.put({"tag": "t1", "total_steps": 2, "record": {"step": 2, "loss": 1.25, "eval_ndcg@10": 0.5}, "saved": True})
        console.finish("t1", {"loss": 1.25, "step": 2}, str(model))

    (run_dir,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    run = read_wandb_offline_run(run_dir)
    assert (run["name"], run["group"], run["exit_code"]) == ("trial-one", "sweep-a", 0)
    assert run["config"] == {"args.learning_rate": "2e-05"}
    assert run["history"] == {1: {"loss": 1.5, "learning_rate": 2e-5}, 2: {"loss": 1.25, "eval_ndcg@10": 0.5}}
    assert run["artifacts"] == [(f"model-{run_dir.rsplit('-', 1)[1]}", "model", ["config.json"])]
    for path in glob.glob(str(tmp_path / "wandb" / "**" / "*"), recursive=True):
        if path.endswith((".wandb", ".log", ".json", ".yaml", ".txt")):
            assert "fake-wandb-token-1234" not in open(path, errors="replace").read(), path


def test_a_run_logged_to_a_real_mlflow_server_reads_back_with_its_metrics_params_and_model(tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from harness import MlflowTestServer

    model = tmp_path / "final"
    model.mkdir()
    (model / "config.json").write_text('{"hidden_size": 32}')
    with MlflowTestServer(str(tmp_path / "mlflow")) as server:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "fake-mlflow-token-9876")  # sent as a header, never logged
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "raytune-st-test")
        check_trackers(["mlflow"])  # the server answers its health check
        with TrainConsole(bar=False, queue=LocalQueue(), trackers=["mlflow"]) as console:
            params = {"args.learning_rate": "2e-05", "args.output_dir": "s3://***@bucket/run"}
            console.queue.put(tracking_start("t1", "trial-one", params, group="sweep-a"))
            console.queue.put({"tag": "t1", "total_steps": 2, "record": {"step": 1, "loss": 1.5, "learning_rate": 2e-5}, "saved": False})
            console.queue.put({"tag": "t1", "total_steps": 2, "record": {"step": 2, "loss": 1.25, "eval_dev_ndcg@10": 0.5}, "saved": True})
            console.finish("t1", {"loss": 1.25, "eval_dev_ndcg@10": 0.5, "step": 2}, str(model))

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("raytune-st-test")
        (run,) = client.search_runs([experiment.experiment_id])
        run_id = run.info.run_id
        assert (run.info.run_name, run.info.status, run.data.tags["raytune_st.group"]) == ("trial-one", "FINISHED", "sweep-a")
        assert run.data.params == params
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(1, 1.5), (2, 1.25)]
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "learning_rate")] == [(1, 2e-5)]
        # MLflow allows no '@' in a metric name.
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval_dev_ndcg_10")] == [(2, 0.5)]
        assert (run.data.metrics["final/loss"], run.data.metrics["final/eval_dev_ndcg_10"]) == (1.25, 0.5)
        assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/config.json"]
        downloaded = client.download_artifacts(run_id, "model/config.json", str(tmp_path / "down"))
        assert open(downloaded).read() == '{"hidden_size": 32}'
        assert not any("fake-mlflow-token" in str(v) for v in [*run.data.params.values(), *run.data.tags.values()])
    assert "fake-mlflow-token" not in capsys.readouterr().out


TRACKIO_RUN = """
import json, os, queue, sys
from raytune_st.train.progress import TrainConsole, tracking_start


class LocalQueue(queue.Queue):
    def shutdown(self):
        pass


model = sys.argv[1]
with TrainConsole(bar=False, queue=LocalQueue(), trackers=["trackio"]) as console:
    console.queue.put(tracking_start("t1", "trial-one", {"args.learning_rate": "2e-05"}, group="sweep-a"))
    console.queue.put({"tag": "t1", "total_steps": 2, "record": {"step": 1, "loss": 1.5}, "saved": False})
    console.queue.put({"tag": "t1", "total_steps": 2, "record": {"step": 2, "loss": 1.25, "eval_dev_ndcg@10": 0.5}, "saved": True})
    console.finish("t1", {"loss": 1.25, "step": 2}, model)

from trackio.sqlite_storage import SQLiteStorage  # reads TRACKIO_DIR, as the run did
print("RESULT " + json.dumps({
    "runs": SQLiteStorage.get_runs("rt-test"),
    "config": SQLiteStorage.get_run_config("rt-test", "trial-one"),
    "logs": [{k: v for k, v in row.items() if k != "timestamp"} for row in SQLiteStorage.get_logs("rt-test", "trial-one")],
    "artifacts": [(a["name"], a["type"], a["size_bytes"]) for a in SQLiteStorage.get_artifacts("rt-test")],
}))
"""


def test_a_trackio_run_in_its_local_store_reads_back_with_its_metrics_params_group_and_model(tmp_path):
    import json
    import os
    import subprocess
    import sys

    model = tmp_path / "final"
    model.mkdir()
    (model / "config.json").write_text("{}")
    # A process of its own: trackio fixes its store directory (TRACKIO_DIR) when it is imported.
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "TRACKIO_PROJECT": "rt-test"}
    out = subprocess.run([sys.executable, "-c", TRACKIO_RUN, str(model)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    run = json.loads(line.removeprefix("RESULT "))
    assert run["runs"] == ["trial-one"]
    assert run["config"]["args.learning_rate"] == "2e-05" and run["config"]["_Group"] == "sweep-a"
    assert run["logs"] == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": 1.25, "eval_dev_ndcg@10": 0.5}, {"step": 2, "final/loss": 1.25}]
    assert run["artifacts"] == [["model-trial-one", "model", 2]]


def test_preflight_refuses_an_mlflow_server_that_does_not_answer_without_showing_its_credentials():
    from raytune_st.runtime import free_port

    uri = f"http://alice:s3cr3t-pass@127.0.0.1:{free_port('127.0.0.1')}"
    with pytest.raises(ConfigError, match=r"the MLflow tracking server at MLFLOW_TRACKING_URI=http://\*\*\*@127.0.0.1:\d+ does not answer") as refused:
        check_trackers(["mlflow"], env={"MLFLOW_TRACKING_URI": uri})
    assert "s3cr3t" not in str(refused.value)
    check_trackers(["mlflow"], env={"MLFLOW_TRACKING_URI": "sqlite:///runs.db"})  # a local store: nothing to reach


class FailingTracker:
    """A tracker whose service refuses it: logging or finishing raises."""

    def __init__(self, fail_on: str):
        self.fail_on, self.logged, self.finished = fail_on, [], None

    def log(self, metrics, step):
        if self.fail_on == "log" and step == 1:
            raise ConnectionError("refused")
        self.logged.append(step)

    def finish(self, metrics, model_dir, *, failed=False):
        if self.fail_on == "finish":
            raise ConnectionError("upload refused")
        self.finished = (metrics, failed)


def test_a_failing_tracker_costs_a_warning_never_the_run_or_the_other_trackers(monkeypatch, capsys):
    broken_log, broken_finish, healthy = FailingTracker("log"), FailingTracker("finish"), FailingTracker("nothing")
    monkeypatch.setattr(trackers, "open_trackers", lambda *args: [broken_log, broken_finish, healthy])
    with pytest.warns(UserWarning) as caught:
        with TrainConsole(bar=False, queue=LocalQueue(), trackers=["wandb"]) as console:
            console.queue.put(tracking_start(None, "run", {}))
            for step in (1, 2):
                console.queue.put({"tag": None, "total_steps": 2, "record": {"step": step, "loss": 1.0}, "saved": False})
            console.finish(None, {"loss": 1.0}, None)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("logging to the FailingTracker run failed (ConnectionError: refused)") for m in messages)
    assert any(m.startswith("finishing the FailingTracker run failed (ConnectionError: upload refused)") for m in messages)
    # Every report was still shown and reached the other trackers; the healthy tracker finished.
    out = capsys.readouterr().out
    assert "[train] step 1/2 (50%)" in out and "[train] step 2/2 (100%)" in out
    assert broken_finish.logged == [1, 2] and healthy.finished == ({"loss": 1.0}, False)
