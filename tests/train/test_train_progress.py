"""Training progress on the driver: which lines rank 0's reports make, and when. No Ray."""

from __future__ import annotations

import pytest

from raytune_st.train.progress import TrainConsole, report_lines

LOGGED = {"step": 20, "epoch": 0.5, "loss": 1.23456, "learning_rate": 1.1111e-05, "grad_norm": 3.2104, "train_samples_per_second": 41.25}


def test_a_logging_step_is_one_line_with_step_of_total_figures_and_time_left():
    assert report_lines(LOGGED, 40, 25.4, saved=False, prefix="[train]") == [
        ("step", "[train] step 20/40 (50%)  epoch 0.50  loss 1.2346  lr 1.11e-05  grad_norm 3.210  41.2 samples/s  about 25 s left")
    ]
    # The last step says no time left; a record without a loss (an evaluation-only report) makes no step line.
    assert report_lines({**LOGGED, "step": 40}, 40, 0.0, saved=False, prefix="[train]")[0][1].endswith("41.2 samples/s")
    assert report_lines({"step": 20, "eval_loss": 0.5}, 40, None, saved=False, prefix="[train]") == [
        ("eval", "[train] eval at step 20: loss 0.5000")
    ]


def test_evaluation_checkpoint_and_resume_each_get_their_own_line():
    record = {**LOGGED, "eval_loss": 0.4321, "eval_debian-dev_cosine_ndcg@10": 0.88123, "resumed_from_step": 10}
    kinds = report_lines(record, 40, None, saved=True, prefix="[train] [trial a1_00000]")
    assert [kind for kind, _ in kinds] == ["resumed", "step", "eval", "checkpoint"]
    assert kinds[0][1] == "[train] [trial a1_00000] resumed from the checkpoint of step 10"
    assert kinds[2][1] == "[train] [trial a1_00000] eval at step 20: loss 0.4321, debian-dev_cosine_ndcg@10 0.8812"
    # An evaluator's many metrics share its name prefix, said once.
    many = {"eval_loss": 0.5, "eval_dev_cosine_accuracy@1": 0.86667, "eval_dev_cosine_ndcg@10": 0.925}
    assert report_lines({"step": 4, **many}, 8, None, saved=False, prefix="[train]")[0][1] == (
        "[train] eval at step 4: loss 0.5000, dev_cosine_ accuracy@1 0.8667, ndcg@10 0.9250"
    )
    assert kinds[3][1] == "[train] [trial a1_00000] checkpoint at step 20 saved"


def test_the_console_prints_lines_without_a_terminal_with_time_left_from_the_driver_clock(capsys, monkeypatch):
    now = [100.0]
    monkeypatch.setattr("raytune_st.train.progress.time.monotonic", lambda: now[0])
    console = TrainConsole(bar=False, queue=object())
    console.show(None, 40, {**LOGGED, "step": 10}, False)
    now[0] = 110.0
    console.show(None, 40, {**LOGGED, "step": 20}, True)
    console.show("t_00001", 8, {**LOGGED, "step": 4}, False)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[train] step 10/40 (25%)") and "left" not in out[0]  # no rate before a second report
    assert out[1].endswith("about 20 s left")  # 10 steps in 10 s, 20 to go
    assert out[2] == "[train] checkpoint at step 20 saved"
    assert out[3].startswith("[train] [trial t_00001] step 4/8 (50%)")


@pytest.mark.parametrize("saved", [False, True])
def test_on_a_terminal_the_bar_follows_the_steps_and_only_other_lines_are_written(saved, capsys):
    console = TrainConsole(bar=True, queue=object())
    console.show(None, 40, {**LOGGED, "step": 10}, False)
    console.show(None, 40, {**LOGGED, "step": 20, "eval_loss": 0.5}, saved)
    bar = console._bars[None]
    assert bar.n == 20 and bar.total == 40
    assert "loss 1.2346" in bar.postfix
    out = capsys.readouterr().out
    assert "[train] step" not in out and "[train] eval at step 20: loss 0.5000" in out
    assert ("checkpoint at step 20 saved" in out) is saved
    bar.close()
