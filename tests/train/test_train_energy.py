"""args.report_to: codecarbon: the energy tracker a worker runs, without Ray (one worker)."""

from __future__ import annotations

import time
import warnings

import pytest

from raytune_st.errors import RaytuneWarning
from raytune_st.train.energy import EnergyTracker


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(i * i for i in range(10_000))


def test_codecarbon_measures_where_asked_and_every_worker_reports_the_totals():
    import torch

    measured = EnergyTracker("run", measure=True)
    busy(1.5)
    figures = measured.finish(1, torch.device("cpu"))
    assert figures["energy_consumed_kwh"] > 0 and figures["emissions_kg"] > 0
    # Workers other than their node's local rank 0 measure nothing and add nothing to the sum.
    assert EnergyTracker("run", measure=False).finish(1, torch.device("cpu")) == {"energy_consumed_kwh": 0.0, "emissions_kg": 0.0}


def test_a_tracker_that_cannot_start_costs_a_warning_not_the_run(monkeypatch):
    import codecarbon
    import torch

    def refuse(*args, **kwargs):
        raise PermissionError("no access to the power counters")

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", refuse)
    with pytest.warns(RaytuneWarning, match="codecarbon could not start, so this node's energy counts as 0: no access"):
        tracker = EnergyTracker("run", measure=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracker.finish(1, torch.device("cpu")) == {"energy_consumed_kwh": 0.0, "emissions_kg": 0.0}
