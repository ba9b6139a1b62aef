"""What the training loop does after each optimizer step: log, evaluate, save. Pure logic, no Ray.

Every worker makes the same decisions from the same numbers (the step, the micro-batches
consumed, the shared schedule), so they all evaluate and checkpoint at the same steps.

Example (logging_steps=10, eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=100)::

    1. step_actions(10, ...)  -> StepActions(log=True, evaluate=False, save=False)
    2. step_actions(100, ...) -> StepActions(log=True, evaluate=True, save=True)
    3. the last step always logs, evaluates (when there is something to evaluate) and saves.

A record of logging alone reaches the driver at most every REPORT_EVERY_S seconds
(:class:`ReportPacer`); the ones in between travel with the next report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from raytune_st.errors import ConfigError


@dataclass(frozen=True)
class StepActions:
    log: bool
    evaluate: bool
    save: bool


def completes_epoch(micro_before: int, micro_after: int, epoch_length: int) -> bool:
    """Whether the micro-batches [micro_before, micro_after) of one optimizer step include the last of an epoch."""
    return micro_after // epoch_length > micro_before // epoch_length


def step_actions(step: int, *, total_steps: int, epoch_done: bool, args: Any, has_eval: bool) -> StepActions:
    """What to do after optimizer step `step` (1-based) of `total_steps`, under the training arguments `args`.

    `epoch_done`: this step consumed the last micro-batch of an epoch (:func:`completes_epoch`).
    `has_eval`: there is an eval data set or an evaluator. A checkpoint ranked by a metric
    (load_best_model_at_end, metric_for_best_model) is always saved with a fresh evaluation.
    """
    final = step == total_steps
    log = step % args.logging_steps == 0 or final
    evaluate = has_eval and args.eval_strategy != "no" and (
        (args.eval_strategy == "steps" and step % args.steps_between_evals == 0)
        or (args.eval_strategy == "epoch" and epoch_done)
        or final
    )
    save = final or (args.save_strategy == "steps" and step % args.save_steps == 0) or (
        args.save_strategy == "epoch" and epoch_done
    )
    if ranks_checkpoints(args, has_eval) and save and not evaluate and args.eval_strategy != "no":
        evaluate = True  # a checkpoint ranked by a metric needs that metric
    return StepActions(log=log, evaluate=evaluate, save=save)


def ranks_checkpoints(args: Any, has_eval: bool) -> bool:
    """Whether checkpoints are ranked by a metric (load_best_model_at_end or metric_for_best_model)."""
    return has_eval and (args.load_best_model_at_end or args.metric_for_best_model is not None)


def improves(value: float, best: Optional[float], higher_is_better: bool) -> bool:
    """Whether a metric `value` beats the best so far (None: nothing to beat yet)."""
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def check_metric_reported(metric: str, metrics: dict[str, Any], *, key: str = "args.metric_for_best_model") -> None:
    """Refuse an evaluation's report that lacks the metric `key` names (metric_for_best_model, search.metric).

    Pre-flight knows every built-in evaluator's metric names; a custom evaluator's are known
    only now, at the first evaluation.
    """
    if metric not in metrics:
        reported = sorted(name for name in metrics if name.startswith("eval_"))
        raise ConfigError(
            f"{key} {metric!r} was not reported by the evaluation, which reported "
            + (", ".join(reported) or "nothing")
            + f"; set {key} to one of them"
        )


# Ray Train's controller takes a worker's report only when it polls (every 0.1 s in the runs
# raytune_st starts), and ray.train.report waits until the previous report was taken. Steps of
# milliseconds that each logged therefore ran one step per poll: on an H200, all-MiniLM-L6-v2
# with logging_steps=1 stepped at 0.48x SentenceTransformerTrainer's rate. Records of logging
# alone now go out at most this often; the ones held meanwhile ride in the next report.
REPORT_EVERY_S = 0.5
EARLIER_RECORDS = "earlier_records"  # the report's key for the records held before it, oldest first


class ReportPacer:
    """Whether a record of logging alone is reported now, and the records held until one is.

    A record with an evaluation or a checkpoint, or the last step's, is always reported (with
    the held ones, :meth:`release`). The loop makes the decision the same on every worker
    (Ray Train expects the same reports from each).
    """

    def __init__(self, every_s: float = REPORT_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self.last_sent: Optional[float] = None
        self.held: list[dict[str, Any]] = []

    def due(self) -> bool:
        """Whether REPORT_EVERY_S has passed since the last report (the first one is always due)."""
        return self.last_sent is None or self.clock() - self.last_sent >= self.every_s

    def hold(self, record: dict[str, Any]) -> None:
        self.held.append(record)

    def release(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` to report, carrying the held records (EARLIER_RECORDS) when there are any."""
        out = {**record, EARLIER_RECORDS: self.held} if self.held else record
        self.held = []
        return out

    def sent(self) -> None:
        """Called once the report went out (ray.train.report returned)."""
        self.last_sent = self.clock()


def unpack_report(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The records one report carries, oldest first: those held before it, then its own (the last)."""
    record = dict(metrics)
    return [*record.pop(EARLIER_RECORDS, []), record]

