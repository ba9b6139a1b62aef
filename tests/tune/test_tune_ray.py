"""A real sweep through a local Ray: trials are whole Ray Train runs, ASHA stops poor ones,
the best config re-runs through `raytune-st train`, and an interrupted sweep resumes."""

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from harness import read_wandb_offline_run

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples/data/debian-train-sample.parquet"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    table = pq.read_table(SAMPLE, columns=["query", "passage"]).slice(0, 96)
    path = tmp_path_factory.mktemp("data") / "pairs.parquet"
    pq.write_table(table, path)
    return str(path)


def sweep_config(out: Path, model: str, pairs: str, **search) -> dict:
    return {
        "model": model,
        "train_datasets": {"pairs": {"data": pairs}},
        "eval_datasets": {"pairs": {"data": {"path": pairs, "limit": 32}}},
        "loss": "MultipleNegativesRankingLoss",
        "args": {
            "output_dir": str(out),
            "max_steps": 6,
            "per_device_train_batch_size": 8,
            "per_device_eval_batch_size": 16,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "logging_steps": 2,
            "save_steps": 2,
            "save_total_limit": 1,
        },
        "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
        "search": {
            # Grid order runs two sane learning rates first; the absurd ones then trail them
            # at the first ASHA rung and are stopped there.
            "space": {
                "args.learning_rate": {"choice": [5.0e-5, 1.0e-4, 50.0, 100.0]},
                "train_datasets.pairs.loss": {"choice": ["MultipleNegativesRankingLoss"]},
            },
            "search_alg": "grid",
            "metric": "eval_loss",
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
            "max_concurrent_trials": 2,
            "name": "sweep-test",
            **search,
        },
    }


def run_cli(*args: str, timeout: int = 600, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    """`raytune-st ARGS` in its own process group. Past `timeout` the whole group (the CLI and
    the local Ray it started) is killed, and the test fails with the run's output and the tails
    of Ray's logs, so that a hang can be diagnosed from the CI log alone."""
    env = {**os.environ, "RAY_ADDRESS": "", **(env or {})}
    command = [sys.executable, "-m", "raytune_st", *args]
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            stdout, stderr = proc.communicate()
            pytest.fail(f"`raytune-st {' '.join(args)}` ran past {timeout} s\n{stdout[-3000:]}\n{stderr[-3000:]}\n{ray_log_tails(stdout + stderr)}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def tune_errors(out: Path) -> str:
    """What Tune recorded of each failed trial under `out` (its error.txt files), for a failure's message."""
    return "\n".join(f"--- {path}\n{path.read_text()[-2000:]}" for path in sorted(out.glob("**/error.txt"))) or "(no trial failed)"


def ray_log_tails(output: str, lines: int = 15) -> str:
    """The last lines of each log file of the local Ray whose directory the run's output names."""
    import re

    found = re.search(r"Ray's own output is in ([^\s;]+)", output)
    if not found:
        return "(the output names no Ray log directory)"
    tails = []
    for path in sorted(Path(found.group(1)).glob("*")):
        if path.is_file() and path.stat().st_size and path.suffix in (".out", ".err", ".log"):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(tails)[-20000:]


def test_a_sweep_stops_poor_trials_keeps_the_best_and_resumes(tmp_path, tiny_bert_dir, pairs):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "sweep"
    config_path = tmp_path / "tune.yaml"
    config_path.write_text(yaml.safe_dump(sweep_config(out, tiny_bert_dir, pairs)))

    # 1. Start the sweep in its own process and kill it once the first trial has finished.
    proc = subprocess.Popen(
        [sys.executable, "-m", "raytune_st", "tune", "--config", str(config_path)],
        cwd=REPO, env={**os.environ, "RAY_ADDRESS": ""}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    trials = out / "trials"
    deadline = time.time() + 400
    while time.time() < deadline and not any(trials.glob("*/final/modules.json")):
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(2)
    os.killpg(proc.pid, 9)
    proc.wait()
    finished_first = {p.parent.parent.name for p in trials.glob("*/final/modules.json")}
    assert finished_first, "no trial finished within the deadline"
    assert not (out / "results.csv").exists()

    # 2. The same command resumes the sweep instead of starting a new one: the trial ids (a
    #    new sweep would draw new ones) are kept, and a trial's Train run resumes from its
    #    checkpoint, so no step is trained twice.
    done = run_cli("tune", "--config", str(config_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming sweep 'sweep-test'" in done.stdout
    rows = json.loads((out / "results.json").read_text())
    assert finished_first <= {r["trial_id"] for r in rows}
    for trial_id in finished_first:
        steps = [json.loads(line)["step"] for line in (trials / trial_id / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == 6, steps

    assert len(rows) == 4
    assert {r["args.learning_rate"] for r in rows} == {5.0e-5, 1.0e-4, 50.0, 100.0}
    assert all(r["train_datasets.pairs.loss"] == "MultipleNegativesRankingLoss" for r in rows)
    reasons = [r["stop_reason"] for r in rows]
    assert "completed" in reasons and "stopped early by asha" in reasons, reasons
    for row in rows:
        assert row["steps"] == 6 if row["stop_reason"] == "completed" else row["steps"] < 6, (row, tune_errors(out))
    assert (out / "results.csv").read_text().splitlines()[0].startswith("trial_id,args.learning_rate,")
    assert (out / "metric-per-trial.png").stat().st_size > 1000

    # A rerun with another config would resume this sweep with trials of two configs: refused
    # before Ray starts, naming the difference, and the finished sweep is left as it was.
    changed = run_cli("tune", "--config", str(config_path), "args.max_steps=8", timeout=120)
    assert changed.returncode == 2, changed.stderr[-3000:]
    error = changed.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "holds a sweep made with another config" in error and "args.max_steps: 6 -> 8" in error
    assert "resuming sweep" not in changed.stdout and json.loads((out / "results.json").read_text()) == rows

    # 3. The best trial's model is kept and loads; its config is a ready-to-run training config.
    best = min((r for r in rows if r["stop_reason"] == "completed"), key=lambda r: r["eval_loss"])
    model = SentenceTransformer(str(out / "best"), device="cpu")
    assert model.encode(["a query"]).shape == (1, 32)
    best_config = yaml.safe_load((out / "best-config.yaml").read_text())
    assert "search" not in best_config
    assert best_config["args"]["learning_rate"] == best["args.learning_rate"]

    rerun = run_cli("train", "--config", str(out / "best-config.yaml"), "args.max_steps=2", f"args.output_dir={tmp_path / 'rerun'}")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "rerun" / "final" / "modules.json").exists()


def test_bad_sweeps_fail_before_any_trial_starts(tmp_path, tiny_bert_dir, pairs):
    config = sweep_config(tmp_path / "out", tiny_bert_dir, pairs, metric="eval_ndcg")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("tune", "--config", str(path), timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: search.metric 'eval_ndcg' is not reported by the training runs")
    assert not (tmp_path / "out" / "ray").exists()


def test_pbt_clones_the_better_trial_into_the_poorer_one(tmp_path, tiny_bert_dir, pairs):
    """Two trials, PBT every 2 steps: at a perturbation the poorer trial continues from the
    better one's checkpoint (a new Train run named after it) with perturbed values, and both
    trials still run exactly their planned steps.

    PBT compares only trials that have reported and are still running, and a tiny model's step
    takes milliseconds while a Train run takes seconds to start: 40 steps keep both trials
    running together after their starts (8 steps ran in under half a second, and a CI run saw
    the first trial finish before the second's first report, with nothing to compare)."""
    config = sweep_config(
        tmp_path / "out",
        tiny_bert_dir,
        pairs,
        space={"args.learning_rate": {"grid": [5.0e-5, 1.0e-2]}},
        scheduler={"type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5, "resample_probability": 0.0},
        name="pbt-test",
    )
    steps = config["args"]["max_steps"] = 40
    path = tmp_path / "pbt.yaml"
    path.write_text(yaml.safe_dump(config))

    result = run_cli("tune", "--config", str(path))
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / "out"
    rows = json.loads((out / "results.json").read_text())
    assert len(rows) == 2 and all(r["stop_reason"] == "completed" and r["steps"] == steps for r in rows), rows
    resumed = {}
    for row in rows:
        records = [json.loads(line) for line in (out / "trials" / row["trial_id"] / "metrics.jsonl").read_text().splitlines()]
        logged = [r["step"] for r in records]
        assert logged == sorted(set(logged)) and logged[-1] == steps, logged  # a clone carries on, it does not retrain
        resumed[row["trial_id"]] = [r["resumed_from_step"] for r in records if "resumed_from_step" in r]
    # A clone is a new Train run, named after the checkpoint it was handed, that starts from its
    # own copy of the better trial's checkpoint: a perturbation step, or the better trial's last
    # step when Tune deleted that checkpoint before the clone's driver ran (the clone then ends at once).
    clones = [p for p in (out / "ray").iterdir() if "-from-" in p.name]
    assert clones, f"PBT cloned no trial: {sorted(p.name for p in (out / 'ray').iterdir())}"
    for run in clones:
        assert (run / "pbt-start" / ".copy-complete").exists() and (run / "pbt-start" / "model").is_dir()
    assert all(step % 2 == 0 for at in resumed.values() for step in at), resumed


def test_the_example_sweep_runs_at_small_size(tmp_path, tiny_bert_dir, pairs):
    """examples/configs/tune-debian.yaml (MNRL vs CachedMNRL vs GIST, and the learning rate) with
    the tiny model as model and guide, on triplets made from the sample, 4 steps per trial."""
    table = pq.read_table(pairs)
    passages = table.column("passage").to_pylist()
    triplets = table.append_column("negative", pa.array(passages[1:] + passages[:1]))
    pq.write_table(triplets, tmp_path / "mined.parquet")

    config = yaml.safe_load((REPO / "examples/configs/tune-debian.yaml").read_text())
    config["model"] = tiny_bert_dir
    config["train_datasets"]["mined"]["data"]["path"] = str(tmp_path / "mined.parquet")
    config["args"].update(output_dir=str(tmp_path / "sweep"), max_steps=4, eval_steps=2, logging_steps=2, save_steps=2)
    losses = config["search"]["space"]["train_datasets.mined.loss"]["choice"]
    assert [o if isinstance(o, str) else o["loss"] for o in losses] == [
        "MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "GISTEmbedLoss"
    ]
    losses[2]["loss_kwargs"]["guide"] = tiny_bert_dir
    config["search"].update(num_samples=3, scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2})
    config["args"]["report_to"] = ["wandb"]  # offline: each trial is a W&B run, grouped by the sweep
    path = tmp_path / "tune-debian.yaml"
    path.write_text(yaml.safe_dump(config))

    result = run_cli("tune", "--config", str(path), env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert len(rows) == 3
    # Every trial's lines carry its id; every trial is its own tracked run with its searched values.
    for row in rows:
        assert f"[train] [trial {row['trial_id']}] step 2/4 (50%)" in result.stdout, result.stdout[-3000:]
    tracked = {run["name"]: run for run in map(read_wandb_offline_run, glob.glob(str(tmp_path / "wandb" / "offline-run-*")))}
    assert sorted(tracked) == sorted(row["trial_id"] for row in rows)
    for row in rows:
        run = tracked[row["trial_id"]]
        assert run["group"] == "tune-debian" and 2 in run["history"] and run["exit_code"] == 0
        assert float(run["config"]["args.learning_rate"]) == row["args.learning_rate"]
    for row in rows:
        assert 1e-6 <= row["args.learning_rate"] <= 1e-4
        assert row["train_datasets.mined.loss"] in {"MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "GISTEmbedLoss"}
        assert row["stop_reason"] in ("completed", "stopped early by asha"), row
        assert 0 <= row["eval_debian-dev_cosine_ndcg@10"] <= 1
    assert (tmp_path / "sweep" / "best" / "modules.json").exists()


def test_a_sweep_whose_trials_take_every_cpu_is_refused_in_one_line_before_any_trial(tmp_path, tiny_bert_dir, pairs):
    """Two concurrent trials of one 1-CPU worker each on this 2-CPU machine, their data streamed:
    the sweep once waited for data forever; now it says why it cannot run, and what to change."""
    out = tmp_path / "sweep"
    config = sweep_config(out, tiny_bert_dir, pairs)
    config["scaling"] = {"num_workers": 1}  # one CPU each (the default), where the other tests take half
    config_path = tmp_path / "starved.yaml"
    config_path.write_text(yaml.safe_dump(config))

    started = time.monotonic()
    done = run_cli("tune", "--config", str(config_path), timeout=120)

    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "search.max_concurrent_trials 2 x 1 workers x 1 CPU leave less than one" in errors[0]
    assert "lower search.max_concurrent_trials" in errors[0]
    assert time.monotonic() - started < 60
    assert not (out / "trials").exists()
