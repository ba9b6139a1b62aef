"""What the training loop does after each optimizer step: log, evaluate, save. Pure logic, no Ray.

Every worker makes the same decisions from the same numbers (the step, the micro-batches
consumed, the shared schedule), so they all evaluate and checkpoint at the same steps.

Example (logging_steps=10, eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=100)::

    1. step_actions(10, ...)  -> StepActions(log=True, evaluate=False, save=False)
    2. step_actions(100, ...) -> StepActions(log=True, evaluate=True, save=True)
    3. the last step always logs, evaluates (when there is something to evaluate) and saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

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
