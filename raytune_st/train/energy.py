"""CodeCarbon's estimate of a training run's energy and emissions (``args.report_to: codecarbon``).

As transformers' CodeCarbonCallback does on each node's local main process, the worker with
local rank 0 measures its whole machine (CPU, RAM and GPU power, or CodeCarbon's estimates where
the hardware reports none). At the last step every worker takes part in one sum, and the final
report carries the run's totals over all nodes: ``energy_consumed_kwh`` and ``emissions_kg``
(CO2-equivalent). CodeCarbon runs offline: the carbon intensity is the country's in
``CODECARBON_COUNTRY_ISO_CODE`` (e.g. FRA), else the world average. A run resumed from a
checkpoint counts from where it resumed. A tracker that fails costs a warning, never the run.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

from raytune_st.errors import RaytuneWarning


class EnergyTracker:
    """CodeCarbon on this worker when `measure` (its node's local rank 0); :meth:`finish` on every worker."""

    def __init__(self, run_name: str, measure: bool):
        self._tracker: Optional[Any] = None
        if not measure:
            return
        try:
            from codecarbon import OfflineEmissionsTracker

            self._tracker = OfflineEmissionsTracker(
                project_name=run_name, save_to_file=False, log_level="error", tracking_mode="machine"
            )
            self._tracker.start()
        except Exception as error:  # noqa: BLE001 - an estimate must never stop training
            warnings.warn(f"codecarbon could not start, so this node's energy counts as 0: {error}", RaytuneWarning, stacklevel=2)
            self._tracker = None

    def finish(self, world_size: int, device: Any) -> dict[str, float]:
        """Stop measuring; the totals over every worker (a collective: every worker calls it)."""
        import torch
        import torch.distributed as dist

        energy = emissions = 0.0
        if self._tracker is not None:
            try:
                emissions = float(self._tracker.stop() or 0.0)
                energy = float(self._tracker.final_emissions_data.energy_consumed)
            except Exception as error:  # noqa: BLE001
                warnings.warn(f"codecarbon could not finish, so this node's energy counts as 0: {error}", RaytuneWarning, stacklevel=2)
            self._tracker = None
        totals = torch.tensor([energy, emissions], dtype=torch.float64, device=device)
        if world_size > 1:
            dist.all_reduce(totals)
        return {"energy_consumed_kwh": float(totals[0]), "emissions_kg": float(totals[1])}
