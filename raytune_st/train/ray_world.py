"""The training loop's world on Ray Train: what TorchTrainer runs on every worker.

:func:`train_loop_per_worker` is the function the train job's TorchTrainer (and so every
Ray Tune trial) runs. It hands :func:`~raytune_st.train.loop.run_worker` a :class:`RayWorld`:
Ray Train's rank and device, its dataset shards, the checkpoint Ray restores after a
failure, and ``ray.train.report``. The only module of train/ that the workers' Ray calls go
through.
"""

from __future__ import annotations

from typing import Any, Optional

from raytune_st.train.loop import run_worker
from raytune_st.train.world import LoopPlan

PLAN_KEY = "plan"  # the LoopPlan's key in TorchTrainer's train_loop_config


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """TorchTrainer's `train_loop_per_worker`: `loop_config` is ``{"plan": LoopPlan}``."""
    plan: LoopPlan = loop_config[PLAN_KEY]
    run_worker(plan, RayWorld())


class RayWorld:
    """This Ray Train worker's rank, device, shards, restored checkpoint and reports."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.local_rank = context.get_local_rank()
        self.device = ray.train.torch.get_device()

    def shard(self, name: str) -> Any:
        import ray.train

        return ray.train.get_dataset_shard(name)

    def restored_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str] = None, checkpoint_name: Optional[str] = None) -> None:
        import ray.train

        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir is not None else None,
            checkpoint_dir_name=checkpoint_name,
            # The loop wrote it to a temporary directory for this report alone.
            delete_local_checkpoint_after_upload=checkpoint_dir is not None,
        )
