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
