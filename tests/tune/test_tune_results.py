"""The sweep's results table from Tune's results (collect_rows, best_row): no Ray."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from raytune_st.config import build
from raytune_st.outputs import OutputDir
from raytune_st.tune.config import TuneConfig
from raytune_st.tune.results import best_row, collect_rows
from raytune_st.tune.trial import TRIALS_DIR


@pytest.fixture
def config(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["q0", "q1"], "positive": ["p0", "p1"]}), pairs)
    return build(TuneConfig, {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": str(pairs), "loss": "MultipleNegativesRankingLoss"}},
        "eval_datasets": {"pairs": {"data": str(pairs)}},
        "args": {"output_dir": str(tmp_path / "sweep"), "max_steps": 4, "eval_strategy": "steps", "eval_steps": 2},
        "search": {"space": {"args.learning_rate": {"choice": [1e-5, 1e-4, 1e-3]}}, "metric": "eval_loss", "mode": "min",
                   "scheduler": {"type": "asha", "grace_period": 2}},
    })


def result(trial_id, *, config=None, metrics=None, frame=None, error=None):
    return SimpleNamespace(path=f"/ray/sweep/{trial_id}", config=config, metrics=metrics,
                           metrics_dataframe=frame, error=error)


def test_rows_for_completed_stopped_and_failed_trials(config, tmp_path):
    output = OutputDir(config.args.output_dir)
    # The completed trial's own log is the truth, even where Tune's record lags behind it.
    log = [{"step": 2, "eval_loss": 0.9}, {"step": 4, "eval_loss": 0.5}]
    output.write(f"{TRIALS_DIR}/t1/final/modules.json", "[]")
    output.write(f"{TRIALS_DIR}/t1/metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    grid = [
        # A categorical domain hands trials the index of its option.
        result("t2", config={"args.learning_rate": 2}, metrics={"eval_loss": 2.0, "step": 2},
               # Step 2 twice: reported before the sweep was interrupted and again on resume.
               frame=pd.DataFrame({"step": [2, 2], "eval_loss": [2.0, 2.0]})),
        result("t1", config={"args.learning_rate": 0}, metrics={"eval_loss": 0.9, "step": 2}),
        result("t3", error=RuntimeError("The actor ImplicitFunc failed to import on the worker")),
    ]
    rows = collect_rows(config, grid, output)
    assert [(r.trial_id, r.stop_reason, r.steps, r.metric) for r in rows] == [
        ("t1", "completed", 4, 0.5),
        ("t2", "stopped early by asha", 2, 2.0),
        ("t3", "error: RuntimeError", None, None),
    ]
    assert rows[0].history == [(2, 0.9), (4, 0.5)] and rows[1].history == [(2, 2.0)]
    assert [r.params for r in rows] == [{"args.learning_rate": 1e-5}, {"args.learning_rate": 1e-3}, {}]
    assert best_row(rows, "min").trial_id == "t1"  # only completed trials have a final model
    assert best_row(rows[1:], "min") is None


def test_the_table_and_csv_show_one_row_per_trial_with_the_metric_named():
    from raytune_st.tune.results import TrialRow, format_table, results_csv

    rows = [
        TrialRow("t1", {"args.learning_rate": 1e-5}, 0.53125, 4, "completed", [(4, 0.53125)]),
        TrialRow("t2", {"args.learning_rate": 1e-3}, None, None, "error: RuntimeError", []),
    ]
    lines = format_table(rows, "eval_loss").splitlines()
    assert lines[0].split() == ["trial_id", "args.learning_rate", "eval_loss", "steps", "stop_reason"]
    assert lines[1].split() == ["t1", "1e-05", "0.5312", "4", "completed"]
    assert lines[2].split() == ["t2", "0.001", "error:", "RuntimeError"]  # empty cells for what it never reported
    assert results_csv(rows, "eval_loss").splitlines() == [
        "trial_id,args.learning_rate,eval_loss,steps,stop_reason",
        "t1,1e-05,0.53125,4,completed",
        "t2,0.001,,,error: RuntimeError",
    ]
    assert format_table([], "eval_loss") == "no trials ran"
