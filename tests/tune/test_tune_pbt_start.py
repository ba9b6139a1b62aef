"""A PBT clone's copy of the checkpoint it starts from (no Ray cluster: local directories)."""

from __future__ import annotations

import pytest
import ray.train

from raytune_st.errors import RaytuneError
from raytune_st.tune.trial import pin_start_checkpoint


def make_trial_checkpoints(trial_dir, steps):
    for step in steps:
        directory = trial_dir / f"checkpoint_{step:06d}"
        (directory / "model").mkdir(parents=True)
        (directory / "training_state.pt").write_text(f"step {step}")
        (directory / "model" / "config.json").write_text("{}")


def test_the_clone_copies_the_checkpoint_it_was_handed(tmp_path):
    make_trial_checkpoints(tmp_path / "better", [1, 2])
    start = ray.train.Checkpoint(str(tmp_path / "better" / "checkpoint_000001"))

    pinned = pin_start_checkpoint(start, str(tmp_path / "run" / "pbt-start"))

    assert (tmp_path / "run" / "pbt-start" / "training_state.pt").read_text() == "step 1"
    assert (tmp_path / "run" / "pbt-start" / "model" / "config.json").exists()
    assert pinned.path == str(tmp_path / "run" / "pbt-start")
    # The copy is the clone's own: the better trial may now delete its checkpoint.
    (tmp_path / "better" / "checkpoint_000001" / "training_state.pt").unlink()
    assert (tmp_path / "run" / "pbt-start" / "training_state.pt").exists()


def test_a_deleted_checkpoint_falls_back_to_the_better_trials_newest(tmp_path):
    make_trial_checkpoints(tmp_path / "better", [3, 4])  # checkpoint_000001 was deleted by Tune
    start = ray.train.Checkpoint(str(tmp_path / "better" / "checkpoint_000001"))

    pin_start_checkpoint(start, str(tmp_path / "run" / "pbt-start"))

    assert (tmp_path / "run" / "pbt-start" / "training_state.pt").read_text() == "step 4"


def test_a_copy_made_before_is_reused_when_a_sweep_resumes(tmp_path):
    make_trial_checkpoints(tmp_path / "better", [1])
    start = ray.train.Checkpoint(str(tmp_path / "better" / "checkpoint_000001"))
    pin_start_checkpoint(start, str(tmp_path / "run" / "pbt-start"))
    (tmp_path / "run" / "pbt-start" / "training_state.pt").write_text("copied before")

    pin_start_checkpoint(start, str(tmp_path / "run" / "pbt-start"))

    assert (tmp_path / "run" / "pbt-start" / "training_state.pt").read_text() == "copied before"


def test_a_copy_cut_short_is_made_again(tmp_path):
    make_trial_checkpoints(tmp_path / "better", [1])
    start = ray.train.Checkpoint(str(tmp_path / "better" / "checkpoint_000001"))
    (tmp_path / "run" / "pbt-start").mkdir(parents=True)  # a driver died while copying

    pin_start_checkpoint(start, str(tmp_path / "run" / "pbt-start"))

    assert (tmp_path / "run" / "pbt-start" / "training_state.pt").read_text() == "step 1"


def test_no_checkpoint_left_to_copy_is_a_clear_error(tmp_path):
    (tmp_path / "better").mkdir()
    start = ray.train.Checkpoint(str(tmp_path / "better" / "checkpoint_000001"))
    with pytest.raises(RaytuneError, match="perturbation_interval"):
        pin_start_checkpoint(start, str(tmp_path / "run" / "pbt-start"))
    assert not (tmp_path / "run" / "pbt-start").exists()
