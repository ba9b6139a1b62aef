"""The summary sentence-transformers prints after mining, reproduced line for line.

:func:`stats_table` is the Count/Mean/Median/Std/Min/25%/50%/75%/Max table of positive,
negative and difference scores (computed with torch, so medians, quantiles and the printed
rounding are the same), :func:`skipped_lines` the "Skipped ... due to the <filter> of ..."
lines and :func:`missing_line` the "Could not find enough negatives ..." line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from raytune_st.mining.select import FILTERS

_ROW = "{:<6} {:>14} {:>14} {:>14}"


def _format(value: Any) -> str:
    # sentence-transformers formats tensors with 4 decimals and plain numbers (counts, the
    # inf of an empty column) with thousands separators.
    import torch

    return f"{value.item():.4f}" if isinstance(value, torch.Tensor) else f"{value:,}"


def stats_metrics(positive: np.ndarray, negative: np.ndarray, difference: np.ndarray) -> dict[str, dict[str, Any]]:
    """metric -> {positive, negative, difference} values as sentence-transformers computes them."""
    import torch

    columns = {
        "positive": torch.as_tensor(np.asarray(positive, dtype=np.float32)),
        "negative": torch.as_tensor(np.asarray(negative, dtype=np.float32)),
        "difference": torch.as_tensor(np.asarray(difference, dtype=np.float32)),
    }
    functions = [
        ("mean", torch.mean),
        ("median", torch.median),
        ("std", torch.std),
        ("min", lambda s: torch.min(s) if s.numel() > 0 else float("inf")),
        ("25%", lambda s: torch.quantile(s.float(), q=0.25) if s.numel() > 0 else float("inf")),
        ("50%", lambda s: torch.quantile(s.float(), q=0.5) if s.numel() > 0 else float("inf")),
        ("75%", lambda s: torch.quantile(s.float(), q=0.75) if s.numel() > 0 else float("inf")),
        ("max", lambda s: torch.max(s) if s.numel() > 0 else float("-inf")),
    ]
    metrics: dict[str, dict[str, Any]] = {}
    import warnings

    for name, function in functions:
        metrics[name] = {}
        for column, scores in columns.items():
            if scores.numel() == 0 and name in ("mean", "median", "std"):
                # torch gives nan here too, but warns about the empty std
                metrics[name][column] = torch.tensor(float("nan"))
            else:
                with warnings.catch_warnings():  # the std of one value: nan, as printed by sentence-transformers
                    warnings.simplefilter("ignore", UserWarning)
                    metrics[name][column] = function(scores)
    return metrics


def stats_table(positive: np.ndarray, negative: np.ndarray, difference: np.ndarray) -> list[str]:
    """The statistics table lines, exactly as sentence-transformers prints them."""
    metrics = stats_metrics(positive, negative, difference)
    lines = [
        _ROW.format("Metric", "Positive", "Negative", "Difference"),
        _ROW.format("Count", _format(len(positive)), _format(len(negative)), ""),
    ]
    for name, values in metrics.items():
        lines.append(
            _ROW.format(
                name.capitalize(),
                _format(values["positive"]),
                _format(values["negative"]),
                _format(values["difference"]),
            )
        )
    return lines


def stats_json(positive: np.ndarray, negative: np.ndarray, difference: np.ndarray) -> dict[str, dict[str, Any]]:
    """The table as plain numbers, for stats.json."""
    out: dict[str, dict[str, Any]] = {"count": {"positive": len(positive), "negative": len(negative)}}
    for name, values in stats_metrics(positive, negative, difference).items():
        numbers = {k: float(v.item()) if hasattr(v, "item") else float(v) for k, v in values.items()}
        # JSON has no nan/inf: an empty column's statistic is null.
        out[name] = {k: v if np.isfinite(v) else None for k, v in numbers.items()}
    return out


def skipped_lines(ratios: dict[str, tuple[int, float]], params: dict[str, Optional[float]]) -> list[str]:
    """One line per filter that removed candidates; `ratios` as from select.skip_ratios."""
    return [
        f"Skipped {ratios[name][0]:,} potential negatives ({ratios[name][1]:.2%}) due to the {name} of {params[name]}."
        for name in FILTERS
        if name in ratios
    ]


def missing_line(
    missing: int,
    max_possible: int,
    *,
    range_min: int,
    absolute_margin: Optional[float],
    relative_margin: Optional[float],
    max_score: Optional[float],
) -> Optional[str]:
    """The 'Could not find enough negatives' line, or None when nothing is missing."""
    if missing <= 0:
        return None
    solutions = ["range_max"]
    if range_min > 0:
        solutions.append("range_min")
    if absolute_margin is not None:
        solutions.append("absolute_margin")
    if relative_margin is not None:
        solutions.append("relative_margin")
    if max_score is not None:
        solutions.append("max_score")
    considerations = ", ".join(solutions[:-1]) + " and " + solutions[-1] if len(solutions) > 1 else solutions[0]
    return (
        f"Could not find enough negatives for {missing} samples ({missing / max_possible:.2%})."
        f" Consider adjusting the {considerations} parameter{'s' if len(solutions) > 1 else ''} if you'd like to find more valid negatives."
    )


def score_histogram_png(positive: np.ndarray, negative: np.ndarray, title: str) -> bytes:
    """A PNG histogram of positive vs negative scores."""
    from raytune_st.plots import figure, png_bytes

    fig, (ax,) = figure((7, 4))
    values = [v for v in (positive, negative) if len(v)]
    low = min((float(np.min(v)) for v in values), default=0.0)
    high = max((float(np.max(v)) for v in values), default=1.0)
    bins = np.linspace(low, high if high > low else low + 1e-6, 51)
    if len(positive):
        ax.hist(positive, bins=bins, alpha=0.6, label=f"positive ({len(positive):,})", color="tab:green")
    if len(negative):
        ax.hist(negative, bins=bins, alpha=0.6, label=f"negative ({len(negative):,})", color="tab:red")
    ax.set_xlabel("score")
    ax.set_ylabel("count")
    ax.set_title(title)
    ax.legend()
    return png_bytes(fig)


@dataclass
class RunSummary:
    """What the whole run's parts add up to, as sentence-transformers reports it."""

    lines: list[str]  # its statistics table, skipped and could-not-find lines
    rows: int
    missing: int  # rows short of the most possible (0 or more)
    ratios: dict[str, tuple[int, float]]  # filter -> (candidates skipped, ratio)


def summarize(
    totals: dict[str, int],
    scores: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    output_format: str,
    range_min: int,
    duplicate_rows: int,
    filter_values: dict[str, Optional[float]],
) -> RunSummary:
    """The summary of a run from its batches' summed counters and concatenated (positive, negative, difference) scores.

    `duplicate_rows`: input rows that deduplication dropped (labeled-pair counts them as possible rows).
    """
    from raytune_st.mining.select import skip_ratios

    max_possible = totals.get("max_possible", 0)
    if output_format == "labeled-pair":
        # sentence-transformers counts every input row as a possible positive row, duplicates included.
        max_possible += duplicate_rows
    ratios = skip_ratios({name: totals.get(f"skipped_{name}", 0) for name in FILTERS}, totals.get("num_candidates", 0))
    rows = totals.get("rows", 0)
    lines = stats_table(*scores) + skipped_lines(ratios, filter_values)
    line = missing_line(
        max_possible - rows,
        max_possible,
        range_min=range_min,
        absolute_margin=filter_values["absolute_margin"],
        relative_margin=filter_values["relative_margin"],
        max_score=filter_values["max_score"],
    )
    return RunSummary(lines + ([line] if line else []), rows, max(max_possible - rows, 0), ratios)
