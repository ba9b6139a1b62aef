"""raytune_st.console: the verbosity switch and the progress line of long stages (no Ray), and
what a real run prints with and without --verbose (a local Ray, in a subprocess)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from raytune_st.console import Progress, format_seconds, ray_console_options, time_left, verbose
from harness import console_noise, read_wandb_offline_run


def test_progress_prints_at_most_every_interval_with_rate_and_time_left(capsys):
    now = [0.0]
    progress = Progress("[mine] embed", 1000, "texts", every_s=15, clock=lambda: now[0])
    now[0] = 10
    assert progress.advance(100) is None  # too soon
    now[0] = 20
    assert progress.advance(100) == "[mine] embed: 200 of 1,000 texts (20%), 10.0 texts/s, about 1 min 20 s left"
    now[0] = 30
    assert progress.advance(100) is None  # 10 s after the last line
    for _ in range(7):
        now[0] += 100
        progress.advance(100)
    # 200, then 400 to 900; none for the last step (the stage's result line follows it)
    assert progress.done == 1000 and capsys.readouterr().out.count("[mine] embed:") == 7


def test_durations_and_time_left_read_as_a_person_says_them():
    assert (format_seconds(42.4), format_seconds(59.6), format_seconds(3725)) == ("42 s", "1 min 00 s", "1 h 02 min")
    assert time_left(25, 100, 10.0) == 30.0
    assert time_left(0, 100, 10.0) is None


@pytest.mark.parametrize("value,expected", [("", False), ("0", False), ("1", True), ("true", True), ("YES", True)])
def test_verbose_comes_from_the_environment_and_opens_ray_output(monkeypatch, value, expected):
    monkeypatch.setenv("RAYTUNE_ST_VERBOSE", value)
    assert verbose() is expected
    assert ray_console_options()["log_to_driver"] is expected


@pytest.mark.ray
def test_a_tiny_training_run_prints_its_own_progress_once_and_no_ray_noise_unless_verbose(tmp_path, tiny_bert_dir):
    """Two workers, a live console: every step, the evaluation and the checkpoint once (not per rank),
    nothing from the known noise set; `--verbose` brings Ray's output back."""
    pairs = tmp_path / "pairs.parquet"
    sample = Path(__file__).resolve().parents[1] / "examples" / "data" / "debian-train-sample.parquet"
    pq.write_table(pq.read_table(sample, columns=["query", "passage"]).slice(0, 96), pairs)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYTUNE_ST_VERBOSE")}
    # Tracked offline by W&B; credentials in the environment must reach no log, config or tracker.
    secrets = {"WANDB_API_KEY": "fake-wandb-key-5f3a", "HF_TOKEN": "hf_fakeTokenForTheTest", "AWS_SECRET_ACCESS_KEY": "fakeAwsSecret9"}
    env.update(secrets, WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true")

    def run(out: str, *flags: str, report_to: object = ("tensorboard", "wandb")) -> list[str]:
        """The run's console lines (stdout and stderr)."""
        config = {
            "model": tiny_bert_dir,
            "train_datasets": {"pairs": {"data": str(pairs)}},
            "eval_datasets": {"pairs": {"data": {"path": str(pairs), "limit": 16}}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": str(tmp_path / out), "max_steps": 4, "per_device_train_batch_size": 8,
                     "logging_steps": 1, "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2,
                     "report_to": list(report_to), "run_name": f"console-{out}"},
            "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        }
        (tmp_path / f"{out}.yaml").write_text(yaml.safe_dump(config))
        proc = subprocess.run(
            [sys.executable, "-m", "raytune_st", "train", "--config", str(tmp_path / f"{out}.yaml"), *flags],
            env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return (proc.stdout + proc.stderr).splitlines()

    quiet = run("quiet")
    noise = console_noise("\n".join(quiet))
    assert noise == [], "\n".join(noise[:20])
    for step in range(1, 5):
        assert sum(line.startswith(f"[train] step {step}/4 (") for line in quiet) == 1, "\n".join(quiet)
    assert sum(line.startswith("[train] eval at step 2: loss ") for line in quiet) == 1
    assert sum(line == "[train] checkpoint at step 2 saved" for line in quiet) == 1
    assert sum(line.startswith("[ray] Ray's own output is in ") for line in quiet) == 1

    # The driver tracked the run once: every step's metrics, the config as parameters, the model.
    (run_dir,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    tracked = read_wandb_offline_run(run_dir)
    assert tracked["name"] == "console-quiet" and tracked["exit_code"] == 0
    assert sorted(tracked["history"]) == [1, 2, 3, 4] and all("loss" in tracked["history"][s] for s in (1, 2, 3, 4))
    assert "eval_loss" in tracked["history"][2] and tracked["config"]["args.max_steps"] == "4"
    assert [kind for _, kind, _ in tracked["artifacts"]] == ["model"]
    assert list((tmp_path / "quiet" / "runs").iterdir())  # tensorboard
    written = [*glob.glob(str(tmp_path / "wandb" / "**" / "*.*"), recursive=True), str(tmp_path / "quiet" / "config.yaml")]
    for path in written:
        text = open(path, errors="replace").read() if os.path.isfile(path) else ""
        assert not any(secret in text for secret in secrets.values()), path
    assert not any(secret in line for line in quiet for secret in secrets.values())

    loud = run("verbose", "--verbose", report_to=["none"])
    assert not (tmp_path / "verbose" / "runs").exists()
    assert any("(RayTrainWorker pid=" in line for line in loud), "\n".join(loud[-40:])
    assert not any(line.startswith("[ray] Ray's own output") for line in loud)
    assert sum(line.startswith("[train] step 4/4 (") for line in loud) == 1
