"""The training loop in an in-process world (raytune_st.train.world.LocalWorld), no Ray: what it
reports and checkpoints, and a run stopped at a chosen step resuming exactly where it was."""

from __future__ import annotations

import os

import pytest

from train_fixtures import DEBIAN_TRAIN


@pytest.fixture(scope="module")
def triplets():
    import pandas as pd
    import pyarrow as pa

    frame = pd.read_parquet(DEBIAN_TRAIN).head(96)
    passages = frame["passage"].tolist()
    return pa.table({"query": frame["query"].tolist(), "passage": passages, "negative": passages[1:] + passages[:1]})


def make_plan(model: str, triplets, tmp_path, **args):
    import pyarrow.parquet as pq

    from raytune_st.config.core import build
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.world import LoopPlan

    path = str(tmp_path / "triplets.parquet")
    pq.write_table(triplets, path)
    config = build(
        TrainConfig,
        {
            "model": model,
            "train_datasets": {"mined": {"data": {"path": path}}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 4, "logging_steps": 1, **args},
        },
    )
    return LoopPlan.of(config, {"train_mined": triplets})


def test_adamw_takes_its_betas_and_epsilon_from_the_args(tiny_bi_encoder, triplets, tmp_path):
    from raytune_st.train.checkpointing import read_checkpoint
    from raytune_st.train.loop import run_worker
    from raytune_st.train.world import LocalWorld

    plan = make_plan(tiny_bi_encoder, triplets, tmp_path, max_steps=1, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6)
    world = LocalWorld({"train_mined": triplets}, storage=str(tmp_path / "ckpt"))
    run_worker(plan, world)

    group = read_checkpoint(world.checkpoints[-1]).optimizer["param_groups"][0]
    assert (tuple(group["betas"]), group["eps"]) == ((0.8, 0.95), 1e-6)


def test_a_run_stopped_after_a_step_resumes_from_its_last_checkpoint_with_the_same_losses(tiny_bi_encoder, triplets, tmp_path):
    """Dropout on (the tiny BERT's 0.1): batches, dropout masks and optimizer state all come back."""
    from raytune_st.train.loop import run_worker
    from raytune_st.train.world import LocalWorld, WorkerStopped

    plan = make_plan(tiny_bi_encoder, triplets, tmp_path, max_steps=10, save_steps=4, batch_sampler="no_duplicates")
    assert plan.config.model.load(device="cpu")[0].auto_model.config.hidden_dropout_prob > 0

    uninterrupted = LocalWorld({"train_mined": triplets}, storage=str(tmp_path / "a"))
    run_worker(plan, uninterrupted)

    # Stopped after step 6, past the step-4 checkpoint: a restarted worker retrains steps 5-6.
    storage = str(tmp_path / "b")
    stopped = LocalWorld({"train_mined": triplets}, storage=storage, stop_after_step=6)
    with pytest.raises(WorkerStopped):
        run_worker(plan, stopped)
    restarted = LocalWorld({"train_mined": triplets}, storage=storage)
    run_worker(plan, restarted)

    assert [r["step"] for r in stopped.reports] == list(range(1, 7))
    assert [r["step"] for r in restarted.reports] == list(range(5, 11))
    assert restarted.reports[0]["resumed_from_step"] == 4
    expected = {r["step"]: (r["loss"], r["grad_norm"]) for r in uninterrupted.reports}
    assert [(r["loss"], r["grad_norm"]) for r in stopped.reports] == [expected[s] for s in range(1, 7)]
    assert [(r["loss"], r["grad_norm"]) for r in restarted.reports] == [expected[s] for s in range(5, 11)]
    assert sorted(os.listdir(storage)) == ["checkpoint-000004", "checkpoint-000008", "checkpoint-000010"]


def test_a_run_restarted_after_its_last_step_reports_its_final_metrics_without_training(tiny_bi_encoder, triplets, tmp_path):
    """A Tune trial resumed after its Train run had finished (the sweep was killed before Tune
    recorded the trial's end) must end with a report of its metric: the run trains nothing and
    reports the finished run's final metrics once, without a checkpoint."""
    from raytune_st.train.artifacts import final_metrics
    from raytune_st.train.loop import run_worker
    from raytune_st.train.world import LocalWorld

    plan = make_plan(tiny_bi_encoder, triplets, tmp_path, max_steps=3)
    first = LocalWorld({"train_mined": triplets}, storage=str(tmp_path / "a"))
    run_worker(plan, first)
    again = LocalWorld({"train_mined": triplets}, storage=str(tmp_path / "a"))
    run_worker(plan, again)

    # One report of the finished run's metrics, and no new checkpoint (it restored its own).
    assert again.reports == [{**final_metrics(first.reports), "step": 3}]
    assert again.checkpoints == []
    assert sorted(os.listdir(tmp_path / "a")) == ["checkpoint-000003"]


def test_a_run_started_from_another_runs_checkpoint_continues_its_losses_and_a_rerun_checks_its_config(
    tiny_bi_encoder, triplets, tmp_path
):
    """How a PBT trial starts from a cloned checkpoint (LoopPlan.initial_checkpoint), and how the
    train job decides to resume a run directory: the same config resumes, another is refused."""
    import dataclasses
    import json

    from raytune_st.errors import ConfigError
    from raytune_st.train.loop import run_worker
    from raytune_st.train.rerun import check_rerun, data_files
    from raytune_st.train.world import LocalCheckpoint, LocalWorld

    plan = make_plan(tiny_bi_encoder, triplets, tmp_path, max_steps=10, save_steps=4)
    plan = dataclasses.replace(plan, data_files=data_files(plan.config))
    first = LocalWorld({"train_mined": triplets}, storage=str(tmp_path / "a"))
    run_worker(plan, first)

    run_dir = tmp_path / "a"
    assert json.loads((run_dir / "checkpoint-000004" / "data_files.json").read_text())["train_datasets.mined"]
    check_rerun(plan.config, str(run_dir))
    changed = dataclasses.replace(plan.config, args=dataclasses.replace(plan.config.args, learning_rate=1e-4))
    with pytest.raises(ConfigError, match=r"args.learning_rate: 5e-05 -> 0.0001"):
        check_rerun(changed, str(run_dir))

    started = dataclasses.replace(plan, initial_checkpoint=LocalCheckpoint(str(run_dir / "checkpoint-000004")))
    second = LocalWorld({"train_mined": triplets}, storage=str(tmp_path / "b"))
    run_worker(started, second)

    assert [r["step"] for r in second.reports] == list(range(5, 11))
    assert second.reports[0]["resumed_from_step"] == 4
    expected = {r["step"]: (r["loss"], r["grad_norm"]) for r in first.reports}
    assert [(r["loss"], r["grad_norm"]) for r in second.reports] == [expected[s] for s in range(5, 11)]
