"""A trial's report callbacks: pure checks, no Ray."""

from __future__ import annotations

import pytest

from raytune_st.errors import ConfigError


def test_an_evaluation_without_the_sweeps_eval_metric_stops_the_trial():
    from raytune_st.tune.trial import _check_evaluated

    _check_evaluated("eval_dev_x", {"loss": 1.0, "step": 2})  # a logging step: nothing evaluated yet
    _check_evaluated("loss", {"eval_dev_y": 1.0, "step": 2})  # the training loss: not an evaluation's
    _check_evaluated("eval_dev_x", {"eval_dev_x": 1.0, "step": 2})
    with pytest.raises(ConfigError, match="search.metric 'eval_dev_x' was not reported by the evaluation, which reported eval_dev_y"):
        _check_evaluated("eval_dev_x", {"eval_dev_y": 0.5, "step": 2})


def test_a_resumed_trial_reports_its_evaluations_again_so_asha_judges_it_on_the_rungs_it_reached(tmp_path):
    """Tune starts ASHA's rungs empty on resume. Trial b had passed the step-4 rung and was
    resumed from its step-4 checkpoint; judged at that rung by its step-6 value instead, it
    would be stopped at its last step."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.tune.schedulers import TrialScheduler

    from raytune_st.config import build
    from raytune_st.tune.config import TuneConfig
    from raytune_st.tune.job import _scheduler
    from raytune_st.tune.trial import evaluations_to_replay

    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["q0", "q1"], "positive": ["p0", "p1"]}), pairs)
    config = build(TuneConfig, {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": str(pairs), "loss": "MultipleNegativesRankingLoss"}},
        "eval_datasets": {"pairs": {"data": str(pairs)}},
        "args": {"output_dir": str(tmp_path / "sweep"), "max_steps": 6, "eval_strategy": "steps", "eval_steps": 2},
        "search": {"space": {"args.learning_rate": {"choice": [1e-5, 1e-4]}}, "metric": "eval_loss", "mode": "min",
                   "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2}},
    })
    # b's log up to its checkpoint: logging steps and evaluations.
    b_history = [{"step": 1, "loss": 3.1}, {"step": 2, "loss": 2.9, "eval_loss": 2.50},
                 {"step": 3, "loss": 2.8}, {"step": 4, "loss": 2.7, "eval_loss": 2.49}]
    replay = evaluations_to_replay(b_history, "eval_loss")
    assert replay == [b_history[1], b_history[3]]
    assert evaluations_to_replay(b_history, None) == []

    def resumed_sweep(b_reports):
        asha = _scheduler(config, max_t=6)
        asha.set_search_properties("eval_loss", "min")
        a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
        asha.on_trial_add(None, a)
        asha.on_trial_add(None, b)
        # a resumed from its step-2 checkpoint and reported step 4 first.
        for record in [{"step": 2, "eval_loss": 2.53}, {"step": 4, "eval_loss": 2.505}]:
            assert asha.on_trial_result(None, a, record) == TrialScheduler.CONTINUE
        return [asha.on_trial_result(None, b, record) for record in b_reports]

    last = {"step": 6, "eval_loss": 2.52}
    assert resumed_sweep([last]) == [TrialScheduler.STOP]  # what happened without the replay
    assert resumed_sweep([*replay, last]) == [TrialScheduler.CONTINUE] * 3
