"""A rerun of a sweep resumes exactly the sweep it finds, or is refused, before Ray starts.

Tune restores an interrupted sweep from its experiment directory (``storage/search.name``)
with the search space, search algorithm and scheduler it was started with, while the
restored trials train with the rerun's config. A rerun with another config would therefore
mix two sweeps in one results table, silently. So a new sweep saves its config in the
experiment directory (:data:`SWEEP_CONFIG`) before Tune writes its state there, and a rerun
compares the two with the train job's rules (:mod:`raytune_st.train.rerun`), except that
evaluation settings always count: the sweep's metric comes from them.

Example::

    1. first run:  save_sweep_config(config, experiment)     # then Tune starts the sweep
    2. rerun:      check_sweep_rerun(changed, experiment)
       -> ConfigError: ... args.max_steps: 6 -> 8 ...; or, with run.overwrite, the old sweep is deleted
"""

from __future__ import annotations

import warnings
from typing import Any

import yaml

from raytune_st.config.core import dump_yaml
from raytune_st.errors import ConfigError
from raytune_st.outputs import OutputDir, filesystem
from raytune_st.train.rerun import RerunWarning, config_differences, describe, refused_differences, with_defaults

SWEEP_CONFIG = "raytune-st-sweep.yaml"


def sweep_exists(experiment: str) -> bool:
    """Whether `experiment` (a path or URI) holds the state of a sweep Tune can resume."""
    from ray.tune import Tuner  # Tune's own test of its state; starts no Ray

    return Tuner.can_restore(experiment)


def save_sweep_config(config: Any, experiment: str) -> None:
    """Record the config a new sweep starts with, before Tune writes any state of its own."""
    OutputDir(experiment).write(SWEEP_CONFIG, dump_yaml(config))


def sweep_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """The differences between two plain sweep configs that would change the sweep's results (pure).

    The train job's rules, plus two of its own: evaluation settings count (the sweep's metric
    comes from them), and so does `args.output_dir` (the finished trials' outputs are there).
    Where the sweep lives (search.storage_path, search.name) is the same place by construction
    when the rerun found it there.
    """
    from raytune_st.tune.config import TuneConfig

    differences = config_differences(old, new)
    refused = refused_differences(TuneConfig, differences, evaluation_picks_model=True)
    refused += [d for d in differences if d[0] == "args.output_dir"]
    return sorted(refused, key=lambda d: d[0])


def check_sweep_rerun(config: Any, experiment: str) -> None:
    """Refuse to resume the sweep in `experiment` with a config that would change its results.

    A sweep without a saved config was started by an earlier raytune_st and cannot be
    compared: it is refused too. With ``run.overwrite`` the old sweep's state is deleted
    instead and the sweep starts afresh.
    """
    if not sweep_exists(experiment):
        return
    output = OutputDir(experiment)
    if output.exists(SWEEP_CONFIG):
        old = with_defaults(type(config), yaml.safe_load(output.read(SWEEP_CONFIG).decode()) or {})
        refused = describe(sweep_differences(old, yaml.safe_load(dump_yaml(config))))
    else:
        refused = f"it holds no {SWEEP_CONFIG} (started by an earlier raytune_st), so its config cannot be compared"
    if not refused:
        return
    if config.run.overwrite:
        fs, root = filesystem(experiment)
        fs.delete_dir(root)
        warnings.warn(
            f"run.overwrite: deleted the earlier sweep in {experiment} ({refused}); the sweep starts afresh",
            RerunWarning,
            stacklevel=2,
        )
        return
    raise ConfigError(
        f"{experiment} holds a sweep made with another config, which this run would resume instead of running its "
        f"own: {refused}. Set a new search.name to run this config as a new sweep, restore the old values to "
        "resume the old one, or set run.overwrite=true to delete the old sweep and start afresh"
    )

