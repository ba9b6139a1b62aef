"""Everything train/ asks of Ray: the only module of train/ that imports it.

On the workers, :func:`train_loop_per_worker` (what TorchTrainer runs, for the train job and for
every Ray Tune trial) hands :func:`~raytune_st.train.loop.run_worker` a :class:`RayWorld`: Ray
Train's rank and device, its dataset shards, the checkpoint Ray restores after a failure, and
``ray.train.report``. On the driver, :func:`torch_trainer` and :func:`make_run_config` build Ray
Train's objects from a checked config, :func:`console_callback` and :func:`progress_queue` carry
rank 0's reports to the console, and :func:`cluster_resources` gives pre-flight the cluster's
totals. The logic they serve (the loop, the plan, the console) takes plain values and never
imports Ray.
"""

from __future__ import annotations

from typing import Any, Optional

from raytune_st.train.config import TrainConfig
from raytune_st.train.plan import default_storage_path
from raytune_st.train.steps import ranks_checkpoints
from raytune_st.train.world import LoopPlan

PLAN_KEY = "plan"  # the LoopPlan's key in TorchTrainer's train_loop_config


# --- on the workers ----------------------------------------------------------------------------


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """TorchTrainer's `train_loop_per_worker`: `loop_config` is ``{"plan": LoopPlan}``."""
    from raytune_st.train.loop import run_worker

    run_worker(loop_config[PLAN_KEY], RayWorld())


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


# --- on the driver -----------------------------------------------------------------------------


def torch_trainer(
    config: TrainConfig, plan: LoopPlan, datasets: dict[str, Any], *, dataset_config: Any = None, run_config: Any
) -> Any:
    """The TorchTrainer that runs `plan` on `config.scaling`'s workers over `datasets` (Ray datasets
    by shard name); `dataset_config` (a ray.train.DataConfig) replaces the default."""
    import ray.train
    from ray.train.torch import TorchTrainer

    scaling = ray.train.ScalingConfig(
        num_workers=config.scaling.num_workers,
        use_gpu=config.scaling.use_gpu,
        resources_per_worker=config.scaling.resources_per_worker or None,
    )
    if dataset_config is None:
        options = ray.train.DataConfig.default_ingest_options()
        # A resumed run skips the rows it had read, so they must arrive in the same order again
        # (exactly so with one worker; with several, Ray hands blocks to whichever asks first).
        options.preserve_order = True
        # One worker reads whole data sets: a streaming split would add a coordinator actor
        # (another process to start, seconds before the first batch) and split nothing.
        split = "all" if config.scaling.num_workers > 1 else []
        dataset_config = ray.train.DataConfig(datasets_to_split=split, execution_options=options)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={PLAN_KEY: plan},
        scaling_config=scaling,
        run_config=run_config,
        datasets=datasets,
        dataset_config=dataset_config,
    )


def make_run_config(
    config: TrainConfig,
    *,
    name: Optional[str] = None,
    storage_path: Optional[str] = None,
    callbacks: Optional[list[Any]] = None,
) -> Any:
    """Ray Train's RunConfig: run name, checkpoint storage, failures to survive, checkpoints to keep.

    `name` and `storage_path` default to the config's run section; a Tune trial passes its own.
    """
    import ray.train

    args = config.args
    scored = ranks_checkpoints(args, config.has_eval)
    return ray.train.RunConfig(
        name=name or config.run.name,
        storage_path=storage_path or default_storage_path(config),
        failure_config=ray.train.FailureConfig(max_failures=config.run.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=args.save_total_limit,
            checkpoint_score_attribute=args.best_metric if scored else None,
            checkpoint_score_order="max" if args.higher_is_better else "min",
        ),
        callbacks=callbacks,
    )


def cluster_resources() -> dict[str, float]:
    """The connected cluster's resource totals ({"CPU": 8.0, "GPU": 2.0, ...})."""
    import ray

    return ray.cluster_resources()


def progress_queue() -> Any:
    """A queue the run's callbacks (in Ray Train's controller) put reports on for the driver."""
    from ray.util.queue import Queue

    return Queue(actor_options={"num_cpus": 0})


def queue_gone(error: BaseException) -> bool:
    """Whether `error` says the progress queue's actor is gone (the Ray session ended)."""
    from ray.exceptions import RayActorError

    return isinstance(error, RayActorError)


def console_callback(queue: Any, total_steps: int, tag: Optional[str] = None) -> Any:
    """A Ray Train UserCallback that puts each report of rank 0 on `queue` (see train/progress.py)."""
    from ray.train.v2.api.callback import UserCallback

    class ConsoleCallback(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            # Ray Train lets a callback's error fail the run: progress is never worth that.
            try:
                queue.put({"tag": tag, "total_steps": total_steps, "record": dict(metrics[0]), "saved": checkpoint is not None})
            except Exception:  # the driver's queue is gone (the driver was interrupted, its node lost)
                pass

    return ConsoleCallback()
