"""The results of a sweep: one row per trial from Tune's ResultGrid, the best one, a table, CSV and a plot.

Pure functions of the rows (:func:`best_row`, :func:`format_table`, :func:`results_csv`) are
tested without Ray; :func:`collect_rows` reads Tune's results and each trial's own log.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Optional

from raytune_st.outputs import OutputDir
from raytune_st.plots import figure, png_bytes
from raytune_st.train.checkpointing import parse_history
from raytune_st.tune.config import TuneConfig
from raytune_st.tune.trial import TRIALS_DIR


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]  # searched key -> value as a person reads it
    metric: Optional[float]  # last reported value of the sweep's metric
    steps: Optional[int]  # optimizer steps run
    stop_reason: str
    history: list[tuple[int, float]]  # (step, metric) over the run

    def flat(self, metric_name: Optional[str]) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            **self.params,
            (metric_name or "metric"): self.metric,
            "steps": self.steps,
            "stop_reason": self.stop_reason,
        }


def collect_rows(config: TuneConfig, grid: Any, output: OutputDir) -> list[TrialRow]:
    """One row per trial from Tune's ResultGrid."""
    search = config.search
    rows = []
    for result in grid:
        trial_id = posixpath.basename(result.path.rstrip("/"))
        # A trial that failed before its first report (e.g. its process could not start) has
        # neither a config nor metrics.
        trial_config, reported = result.config or {}, result.metrics or {}
        params = {d.key: d.label(trial_config[d.key]) for d in search.domains if d.key in trial_config}
        history: list[tuple[int, float]] = []
        frame = result.metrics_dataframe
        if search.metric and frame is not None and search.metric in frame and "step" in frame:
            # One value per step: a resumed trial reports its evaluations again (trial.py).
            history = sorted({int(s): float(m) for s, m in zip(frame["step"], frame[search.metric]) if m == m}.items())
        metric = reported.get(search.metric) if search.metric else None
        steps = reported.get("step")
        trial_dir = posixpath.join(TRIALS_DIR, trial_id)
        if result.error is not None:
            reason = f"error: {type(result.error).__name__}"
        elif output.exists(posixpath.join(trial_dir, "final")):
            reason = "completed"
            # The trial's own log is complete even when Tune's record of it lags (a trial
            # interrupted after its last step and finished on resume reports nothing new).
            logged = parse_history(output.read(posixpath.join(trial_dir, "metrics.jsonl")).decode())
            steps = logged[-1]["step"]
            if search.metric:
                history = [(r["step"], r[search.metric]) for r in logged if search.metric in r]
                metric = history[-1][1] if history else None
        elif search.scheduler.type == "asha":
            reason = "stopped early by asha"
        else:
            reason = "stopped by the time budget"
        rows.append(TrialRow(trial_id, params, metric, steps, reason, history))
    return sorted(rows, key=lambda r: r.trial_id)


def best_row(rows: list[TrialRow], mode: Optional[str]) -> Optional[TrialRow]:
    """The completed trial with the best last metric (the only ones with a final model)."""
    done = [r for r in rows if r.stop_reason == "completed" and r.metric is not None]
    if not done:
        return None
    return (max if mode == "max" else min)(done, key=lambda r: r.metric)


def format_table(rows: list[TrialRow], metric: Optional[str]) -> str:
    flat = [r.flat(metric) for r in rows]
    if not flat:
        return "no trials ran"
    columns = list(flat[0])
    cells = [[("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.values()] for row in flat]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def results_csv(rows: list[TrialRow], metric: Optional[str]) -> str:
    import csv
    import io

    flat = [r.flat(metric) for r in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["trial_id"])
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def metric_plot(rows: list[TrialRow], metric: str) -> bytes:
    """A PNG of `metric` over the optimizer steps, one line per trial."""
    fig, (ax,) = figure((7, 4))
    for row in rows:
        if row.history:
            steps, values = zip(*row.history)
            ax.plot(steps, values, marker="o", label=f"{row.trial_id} ({row.stop_reason})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title("metric per trial")
    ax.legend(fontsize="small")
    return png_bytes(fig)
