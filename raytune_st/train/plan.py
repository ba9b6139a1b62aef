"""Planning a training run before any worker starts: what the data holds, how many steps, whether it fits.

1. :func:`preflight` reads each data set's metadata (columns, row counts), checks them against
   its loss and the batch size against each worker's shard, and returns a :class:`Plan`;
2. :func:`total_optimizer_steps` / :func:`planned_steps` turn rows into the optimizer steps
   every worker will run (the same number on each);
3. :func:`cluster_fit` checks workers against a cluster's resource totals, Ray Data's reads
   included (Ray supplies the numbers; nothing here imports Ray).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Optional

from raytune_st.config.resources import check_custom_resources_exist
from raytune_st.data.sources import inspect_source
from raytune_st.errors import ClusterError, DataError, RaytuneWarning
from raytune_st.outputs import join
from raytune_st.train.batching import Schedule, batches_per_epoch
from raytune_st.train.config import LossSpec, TrainConfig, TrainingArgs
from raytune_st.train.steps import completes_epoch, step_actions


@dataclass
class DatasetPlan:
    """What pre-flight learnt about one data set: its columns and row count."""

    name: str
    columns: list[str]
    num_rows: Optional[int]


@dataclass
class Plan:
    """The data sets as checked before any worker starts."""

    train: dict[str, DatasetPlan] = dataclasses.field(default_factory=dict)
    eval: dict[str, DatasetPlan] = dataclasses.field(default_factory=dict)
    # Each data set's files with sizes and digests (train/rerun.py's data_files), once the train
    # job's pre-flight has read them: the starvation check and the workers' plan share one read.
    files: Optional[dict[str, Any]] = None

    def train_rows(self) -> dict[str, int]:
        return {name: plan.num_rows for name, plan in self.train.items()}


def loss_num_labels(config: TrainConfig, spec: LossSpec) -> Optional[int]:
    """The num_labels the loss checker must see: SoftmaxLoss's own, else the cross-encoder's."""
    if "num_labels" in spec.kwargs:
        return spec.kwargs["num_labels"]
    inner = spec.kwargs.get("loss")
    if isinstance(inner, dict) and "num_labels" in inner:
        return inner["num_labels"]
    if config.model.type == "cross_encoder":
        return config.model.num_labels if config.model.num_labels is not None else 1
    return None


_UNCHECKED: set[tuple[str, str]] = set()


def _say_unchecked(loss: str, dataset: str, columns: list[str]) -> None:
    """Once per (loss, data set) and process: a custom loss without loss_format cannot have its columns checked."""
    if (loss, dataset) in _UNCHECKED:
        return
    _UNCHECKED.add((loss, dataset))
    if loss == "raytune_st.trainer:staged_loss":
        what, fix = "the loss object given to RayTrainer", "pass a sentence-transformers loss by name to have them checked"
    else:
        what = f"loss {loss!r}, which declares no loss_format"
        fix = 'set loss_format on it to the built-in loss whose inputs it takes (e.g. loss_format = "TripletLoss") to check them'
    warnings.warn(f"{dataset}: the columns {columns} were not checked against {what}; {fix}", RaytuneWarning, stacklevel=3)


def check_dataset(config: TrainConfig, section: str, name: str, count_rows: Any = None) -> DatasetPlan:
    """Inspect one data set and check its columns against its loss; reads metadata only.

    `count_rows(source)` counts rows of formats that do not store the count (JSONL, CSV);
    without it such data sets keep ``num_rows=None``.
    """
    from raytune_st.losses.formats import check_dataset_for_loss, resolve_format

    entry = (config.train_datasets if section == "train_datasets" else config.eval_datasets)[name]
    spec = config.loss_for(section, name)
    info = inspect_source(entry.data)
    if resolve_format(spec.name, spec.model_type, spec.inner_name) is None:
        _say_unchecked(spec.name, f"{section.split('_')[0]} {name!r}", info.columns)
    check_dataset_for_loss(
        info.columns,
        spec.name,
        spec.model_type,
        inner_loss=spec.inner_name,
        num_labels=loss_num_labels(config, spec),
        column_types=info.types,
        dataset=f"{section.split('_')[0]} {name!r} ({entry.data.describe()})",
    )
    num_rows = info.num_rows
    if num_rows is None and count_rows is not None:
        num_rows = count_rows(entry.data)
    return DatasetPlan(name=name, columns=info.columns, num_rows=num_rows)


def preflight(config: TrainConfig, count_rows: Any = None) -> Plan:
    """Every check that needs the data's metadata but no worker: columns vs loss, batch size vs shard.

    Raises DataError / ConfigError with the data set's name and the fix.
    """
    plan = Plan()
    for name in config.train_datasets:
        plan.train[name] = check_dataset(config, "train_datasets", name, count_rows)
    for name in config.eval_datasets:
        plan.eval[name] = check_dataset(config, "eval_datasets", name, count_rows)
    for spec in config.evaluators:
        spec.check_data()

    workers = config.scaling.num_workers
    batch = config.args.per_device_train_batch_size
    for name, dataset in plan.train.items():
        if dataset.num_rows is None:
            raise DataError(
                f"train {name!r}: the number of rows of {config.train_datasets[name].data.path!r} is unknown; "
                "it is needed to plan the same number of steps on every worker"
            )
        shard = dataset.num_rows // workers
        if shard < batch:
            raise DataError(
                f"train {name!r} has {dataset.num_rows} rows, {shard} per worker with {workers} workers, fewer than "
                f"per_device_train_batch_size={batch}; lower the batch size or num_workers, or add data"
            )
    return plan


def total_optimizer_steps(args: TrainingArgs, micro_batches_per_epoch: int) -> int:
    """Optimizer steps of the whole run: max_steps, else epochs x steps per epoch (rounded up)."""
    if args.max_steps > 0:
        return args.max_steps
    steps_per_epoch = max(math.ceil(micro_batches_per_epoch / args.gradient_accumulation_steps), 1)
    return max(math.ceil(args.num_train_epochs * steps_per_epoch), 1)


def planned_steps(config: TrainConfig, train_rows: dict[str, int]) -> int:
    """Optimizer steps the run will take, as every worker computes them (e.g. for Tune's schedulers)."""
    args = config.args
    per_epoch = batches_per_epoch(train_rows, args.per_device_train_batch_size, config.scaling.num_workers)
    return total_optimizer_steps(args, Schedule(per_epoch, args.multi_dataset_batch_sampler, args.seed).epoch_length)


def materialized_datasets(config: TrainConfig, train_rows: dict[str, int], files: dict[str, list[list[Any]]]) -> set[str]:
    """The data sets ("train_datasets.<name>", "eval_datasets.<name>") read once into Ray's object store.

    Ray Data runs a data set's whole read again on every pass: list the files, start a footer
    reader actor and read tasks (each a Python process of its own to start). A training set
    trained on for more than one epoch, and an eval set evaluated more than once, pay that every
    time. Those whose files (`files`, from :func:`~raytune_st.train.rerun.data_files`) total at
    most ``stream.materialize_max_bytes`` are read once instead, before the workers start. Data
    sets read once anyway stream (the read overlaps the workers' start), and those already in the
    object store (``ray_object``) are not copied.
    """
    limit = config.stream.materialize_max_bytes

    def small(key: str, entry: Any) -> bool:
        return entry.data.format != "ray_object" and sum(f[1] for f in files.get(key, [])) <= limit

    if limit <= 0:
        return set()
    args = config.args
    per_epoch = batches_per_epoch(train_rows, args.per_device_train_batch_size, config.scaling.num_workers)
    epoch_length = Schedule(per_epoch, args.multi_dataset_batch_sampler, args.seed).epoch_length
    total = total_optimizer_steps(args, epoch_length)  # planned_steps, without building the schedule again
    chosen = set()
    if total * args.gradient_accumulation_steps > epoch_length:
        chosen |= {f"train_datasets.{name}" for name, entry in config.train_datasets.items() if small(f"train_datasets.{name}", entry)}
    if config.eval_datasets and evaluations(args, total, epoch_length, stop_at=2) >= 2:
        chosen |= {f"eval_datasets.{name}" for name, entry in config.eval_datasets.items() if small(f"eval_datasets.{name}", entry)}
    return chosen


def evaluations(args: TrainingArgs, total_steps: int, epoch_length: int, *, stop_at: int) -> int:
    """How many times a run evaluates (as :func:`~raytune_st.train.steps.step_actions` decides),
    counted up to `stop_at`."""
    count = 0
    for step in range(1, total_steps + 1):
        micro = step * args.gradient_accumulation_steps
        epoch_done = completes_epoch(micro - args.gradient_accumulation_steps, micro, epoch_length)
        count += step_actions(step, total_steps=total_steps, epoch_done=epoch_done, args=args, has_eval=True).evaluate
        if count >= stop_at:
            break
    return count


def streamed_datasets(config: TrainConfig, train_rows: dict[str, int], files: dict[str, list[list[Any]]]) -> list[str]:
    """The data sets Ray Data reads while the workers train ("train_datasets.<name>", ...): those
    not read into the object store before they start (see :func:`materialized_datasets`)."""
    materialized = materialized_datasets(config, train_rows, files)
    keys = [f"train_datasets.{name}" for name in config.train_datasets]
    if config.eval_datasets and config.args.eval_strategy != "no":
        keys += [f"eval_datasets.{name}" for name in config.eval_datasets]
    return [key for key in keys if key not in materialized]


def cluster_fit(
    config: TrainConfig,
    cluster: dict[str, float],
    *,
    may_autoscale: bool,
    streamed: tuple[str, ...] = (),
    runs: int = 1,
    runs_key: str = "",
) -> Optional[str]:
    """Refuse workers that `cluster` (Ray's resource totals) could never hold or serve; returns a warning or None.

    `runs` runs of `config` at once (a sweep's concurrent trials, `runs_key` the setting that
    says so). Ray Data's read tasks need a CPU of their own: when the workers of all runs take
    every CPU while data sets in `streamed` are still read (:func:`streamed_datasets`), the
    workers would wait for their first batch forever, so that is refused, naming the numbers and
    the fix. With `may_autoscale` (a remote cluster) nodes may still come: a missing custom
    resource is not refused, and the CPUs left are a warning.
    """
    scaling = config.scaling
    gpus = cluster.get("GPU", 0)
    if scaling.use_gpu and gpus < scaling.num_workers:
        raise ClusterError(
            f"scaling.use_gpu asks for {scaling.num_workers} GPU workers but the cluster has {gpus:g} GPUs; "
            "lower num_workers, add GPU nodes, or set use_gpu: false"
        )
    if not may_autoscale:
        check_custom_resources_exist("scaling.resources_per_worker", scaling.resources_per_worker, cluster)
    cpus_per_worker = scaling.resources_per_worker.get("CPU", 0 if scaling.use_gpu else 1)
    cpus = cluster.get("CPU", 0)
    if not streamed or cpus - runs * scaling.num_workers * cpus_per_worker >= 1:
        return None
    runs_part, fewer = (f"{runs_key} {runs} x ", f"{runs_key}, ") if runs > 1 else ("", "")
    problem = (
        f"{runs_part}{scaling.num_workers} workers x {cpus_per_worker:g} CPU leave less than one of the cluster's "
        f"{cpus:g} CPUs for Ray Data, which reads {', '.join(streamed)} while they train"
    )
    fix = f"lower {fewer}scaling.resources_per_worker.CPU (e.g. 0.5) or scaling.num_workers, or add CPUs"
    if may_autoscale:
        return f"{problem}; unless the cluster adds a node, the workers wait for data forever: {fix}"
    raise ClusterError(f"{problem}: the workers would wait for data forever; {fix}")


def default_storage_path(config: TrainConfig) -> str:
    """Where Ray Train keeps checkpoints: run.storage_path, else <output_dir>/ray."""
    if config.run.storage_path:
        return config.run.storage_path
    if "://" in config.args.output_dir:
        return join(config.args.output_dir, "ray")
    return os.path.abspath(os.path.join(os.path.expanduser(config.args.output_dir), "ray"))
