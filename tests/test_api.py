"""The Python API: raytune_st.<job>(config) whatever was imported before it."""

from __future__ import annotations

import pytest

import raytune_st
from raytune_st.errors import ConfigError


@pytest.mark.parametrize("job", ["train", "tune"])
def test_the_job_functions_survive_imports_of_their_subpackages(job, tmp_path):
    import importlib

    importlib.import_module(f"raytune_st.{job}.job")  # rebinds raytune_st.<job> to the subpackage
    run = getattr(raytune_st, job)
    config = {
        "model": str(tmp_path / "no-such-model"),
        "train_datasets": {"pairs": {"data": str(tmp_path / "pairs.parquet")}},
        "args": {"output_dir": str(tmp_path / "out")},
    }
    if job == "tune":
        config["search"] = {"space": {"args.learning_rate": {"choice": [1e-5, 2e-5]}}}
    # The job ran: its config check refuses the missing loss (a module would raise TypeError).
    with pytest.raises(ConfigError, match="train_datasets.pairs: no loss"):
        run(config)
    assert raytune_st.train.TrainConfig is importlib.import_module("raytune_st.train.config").TrainConfig
