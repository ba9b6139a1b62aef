"""The training loop's per-step decisions (raytune_st.train.steps): pure logic, no Ray."""

from __future__ import annotations

import pytest

from raytune_st.config.core import build
from raytune_st.train.config import TrainingArgs
from raytune_st.train.steps import StepActions, completes_epoch, improves, step_actions


def args(**values) -> TrainingArgs:
    return build(TrainingArgs, {"output_dir": "out", **values})


def run(total: int, per_epoch: int, accumulation: int = 1, has_eval: bool = True, **values) -> dict[int, StepActions]:
    """The actions of every step of a run, as the loop computes them (micro-batches counted the same way)."""
    a = args(gradient_accumulation_steps=accumulation, **values)
    actions, micro = {}, 0
    for step in range(1, total + 1):
        before, micro = micro, micro + accumulation
        actions[step] = step_actions(step, total_steps=total, epoch_done=completes_epoch(before, micro, per_epoch), args=a, has_eval=has_eval)
    return actions


def test_an_epoch_ends_once_at_the_step_that_takes_its_last_micro_batch():
    assert [completes_epoch(m, m + 1, 4) for m in range(8)] == [False, False, False, True] * 2
    # Accumulation over an epoch boundary: the step that crosses it completes the epoch.
    assert [completes_epoch(m, m + 3, 4) for m in (0, 3, 6, 9)] == [False, True, True, True]
    assert not completes_epoch(4, 7, 4)


def test_epoch_strategies_save_and_evaluate_once_per_epoch():
    actions = run(total=10, per_epoch=4, eval_strategy="epoch", save_strategy="epoch", logging_steps=100)
    assert [s for s, a in actions.items() if a.save] == [4, 8, 10]  # each epoch's end, and the final step
    assert [s for s, a in actions.items() if a.evaluate] == [4, 8, 10]
    assert [s for s, a in actions.items() if a.log] == [10]


def test_steps_strategies_and_the_final_step():
    actions = run(total=7, per_epoch=100, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=4, logging_steps=3)
    assert [s for s, a in actions.items() if a.log] == [3, 6, 7]
    assert [s for s, a in actions.items() if a.evaluate] == [2, 4, 6, 7]
    assert [s for s, a in actions.items() if a.save] == [4, 7]


def test_nothing_to_evaluate_means_no_evaluation():
    actions = run(total=4, per_epoch=2, has_eval=False, eval_strategy="no", save_strategy="epoch")
    assert not any(a.evaluate for a in actions.values())
    assert [s for s, a in actions.items() if a.save] == [2, 4]


def test_a_checkpoint_ranked_by_a_metric_gets_an_evaluation():
    # eval_steps 3, save_steps 2: a checkpoint ranked by eval_loss at step 2 evaluates there too.
    actions = run(total=6, per_epoch=100, eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=2,
                  metric_for_best_model="eval_loss")
    assert [s for s, a in actions.items() if a.evaluate] == [2, 3, 4, 6]


@pytest.mark.parametrize("value,best,higher,expected", [(0.5, None, True, True), (0.6, 0.5, True, True), (0.5, 0.5, True, False),
                                                        (0.4, 0.5, False, True), (0.6, 0.5, False, False)])
def test_improves(value, best, higher, expected):
    assert improves(value, best, higher) is expected
