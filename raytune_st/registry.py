"""The jobs: each a typed config class and the function that runs it, imported when asked for.

The CLI (:mod:`raytune_st.cli`) and the Python API (``raytune_st.mine(config)``, ...) both
take their jobs from :data:`JOBS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence


@dataclass(frozen=True)
class Job:
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function(config)"

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        def resolve(spec: str) -> Any:
            module, _, name = spec.partition(":")
            return getattr(importlib.import_module(module), name)

        return resolve(self.config), resolve(self.run)


JOBS: dict[str, Job] = {
    "mine": Job(
        help="add hard negatives to (anchor, positive) pairs, like sentence-transformers' mine_hard_negatives",
        config="raytune_st.mining.config:MineConfig",
        run="raytune_st.mining.job:mine",
    ),
    "evaluate": Job(
        help="run sentence-transformers evaluators on a model, on a Ray worker",
        config="raytune_st.evaluation.config:EvaluateConfig",
        run="raytune_st.evaluation.job:evaluate",
    ),
    "train": Job(
        help="fine-tune a bi-encoder or cross-encoder with sentence-transformers losses on Ray Train",
        config="raytune_st.train.config:TrainConfig",
        run="raytune_st.train.job:train",
    ),
    "pipeline": Job(
        help="the retriever flywheel as one resumable job: rounds of mine, teacher-score, denoise, train and evaluate",
        config="raytune_st.flywheel.config:PipelineConfig",
        run="raytune_st.flywheel.job:pipeline",
    ),
    "score": Job(
        help="score (query, passage, ...) rows with a cross-encoder or a bi-encoder, e.g. teacher labels for distillation",
        config="raytune_st.scoring.config:ScoreConfig",
        run="raytune_st.scoring.job:score",
    ),
    "tune": Job(
        help="sweep losses and hyperparameters with Ray Tune; every trial is a whole Ray Train run",
        config="raytune_st.tune.config:TuneConfig",
        run="raytune_st.tune.job:tune",
    ),
}


def load_job_config(job: str, config_path: Optional[str], overrides: Sequence[str] = ()) -> Any:
    """The typed, validated config of `job` from a YAML file plus overrides."""
    from raytune_st.config import load_config

    config_cls, _ = JOBS[job].load()
    return load_config(config_cls, config_path, overrides)
