"""Training on Ray Train: the config, the per-worker loop and the driver that runs it.

- :class:`~raytune_st.train.config.TrainConfig`: the `raytune-st train` config.
- :func:`~raytune_st.train.loop.run_worker`: the loop every worker runs, in any
  :class:`~raytune_st.train.world.World`; :func:`~raytune_st.train.ray_world.train_loop_per_worker`
  runs it on a Ray Train worker.
- :func:`~raytune_st.train.job.build_trainer`: the TorchTrainer for a checked config.
- :func:`~raytune_st.train.job.train`: check, fit, write the outputs.

Imports are lazy so that `from raytune_st.train import TrainConfig` stays light.
"""

__all__ = ["TrainConfig", "build_trainer", "planned_steps", "preflight", "train", "train_loop_per_worker", "working_dir_kept"]


def __getattr__(name):
    if name == "TrainConfig":
        from raytune_st.train.config import TrainConfig

        return TrainConfig
    if name in ("planned_steps", "preflight"):
        from raytune_st.train import plan

        return getattr(plan, name)
    if name in ("build_trainer", "train", "working_dir_kept"):
        from raytune_st.train import job

        return getattr(job, name)
    if name == "train_loop_per_worker":
        from raytune_st.train.ray_world import train_loop_per_worker

        return train_loop_per_worker
    raise AttributeError(name)

import sys as _sys

from raytune_st import JobPackage

# `raytune_st.train(config)` runs the train job (see raytune_st.JobPackage).
_sys.modules[__name__].__class__ = JobPackage
