"""args.report_to: which trackers, their pre-flight, the parameters they get, and a real offline
W&B run written through the driver's console (no Ray: the console is fed reports directly)."""

from __future__ import annotations

import glob
import queue

import pytest

from raytune_st.config.core import build
from raytune_st.errors import ConfigError
from raytune_st.testing import read_wandb_offline_run
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
    with pytest.raises(ConfigError, match=r"unknown tracker 'tensorbord'; valid: tensorboard, wandb, all, none"):
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
