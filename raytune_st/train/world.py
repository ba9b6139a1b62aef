"""What the training loop needs from the world it runs in, and a world without Ray.

The loop (train/loop.py) never calls Ray. It is handed a :class:`World`: its rank and the
group's size, its device, its data shards, the checkpoint a restarted run resumes from, and
where its reports go. On a cluster that is :class:`~raytune_st.train.ray_world.RayWorld`
(Ray Train's context). Here it is :class:`LocalWorld`, which holds its data sets as Arrow
tables and keeps its reports and checkpoints in a directory; :func:`run_group` starts
`world_size` processes joined in a gloo group, so that DDP runs for real without Ray.

Example::

    1. tables = {"train_pairs": table}                           # shard name -> pyarrow.Table
       plan = LoopPlan.of(config, tables)
    2. world = LocalWorld(tables, storage=str(tmp_path))          # rank 0 of 1
    3. model = run_worker(plan, world)                            # train/loop.py
    4. world.reports -> [{"loss": ..., "step": 1}, ...]
       world.checkpoints -> [".../checkpoint-000002"]
    5. run_group(train_one_rank, world_size=2) -> [rank 0's result, rank 1's result]

No Ray here: the Ray world lives in train/ray_world.py, the only module of train/ that
imports Ray.
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_module
import shutil
import socket
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, ContextManager, Iterator, Optional, Protocol, TypeVar

from raytune_st.train.config import TrainConfig

T = TypeVar("T")
CHECKPOINT_PREFIX = "checkpoint-"


def shard_name(section: str, name: str) -> str:
    """The shard name of a train or eval set (no '/': Ray Data uses it in log file names)."""
    return f"{section}_{name}"


class Shard(Protocol):
    """A worker's part of one data set (Ray Train's DataIterator has this method)."""

    def iter_batches(
        self,
        *,
        batch_size: int,
        batch_format: str = "numpy",
        local_shuffle_buffer_size: Optional[int] = None,
        local_shuffle_seed: Optional[int] = None,
    ) -> Iterator[dict[str, Any]]: ...


class Checkpoint(Protocol):
    """A checkpoint the loop resumes from (ray.train.Checkpoint has this method)."""

    def as_directory(self) -> ContextManager[str]: ...


class World(Protocol):
    """Everything the loop asks of the processes it runs in."""

    rank: int
    world_size: int
    local_rank: int  # rank among this machine's workers (energy is measured once per machine)
    device: Any  # torch.device

    def shard(self, name: str) -> Shard:
        """This worker's shard of the data set named `name` (see :func:`shard_name`)."""
        ...

    def restored_checkpoint(self) -> Optional[Checkpoint]:
        """The run's own latest checkpoint when the run was restarted, else None."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str] = None, checkpoint_name: Optional[str] = None) -> None:
        """Every worker reports the same step's metrics; rank 0 alone passes the checkpoint it wrote
        (a local directory the world takes over), every worker the same `checkpoint_name`."""
        ...


@dataclass(frozen=True)
class LoopPlan:
    """What every worker is handed: the checked config and what pre-flight learnt about the data."""

    config: TrainConfig
    train_rows: dict[str, int]  # global row counts per training set
    columns: dict[str, list[str]]  # per shard name ("train_<name>", "eval_<name>")
    data_files: Optional[dict[str, Any]] = None  # kept in checkpoints (train/rerun.py)
    initial_checkpoint: Optional[Checkpoint] = None  # where a run without checkpoints starts (PBT)

    @classmethod
    def from_plan(cls, config: TrainConfig, plan: Any, data_files: Optional[dict[str, Any]] = None, initial_checkpoint: Any = None) -> "LoopPlan":
        """What the train job hands its workers: pre-flight's `plan` (train/plan.py) of `config`."""
        columns = {shard_name("train", name): p.columns for name, p in plan.train.items()}
        columns.update({shard_name("eval", name): p.columns for name, p in plan.eval.items()})
        return cls(config, plan.train_rows(), columns, data_files, initial_checkpoint)

    @classmethod
    def of(cls, config: TrainConfig, tables: dict[str, Any], **kwargs: Any) -> "LoopPlan":
        """The plan of an in-process run over Arrow tables keyed by shard name."""
        train_rows = {name: tables[shard_name("train", name)].num_rows for name in config.train_datasets}
        columns = {name: list(table.column_names) for name, table in tables.items()}
        return cls(config, train_rows, columns, **kwargs)


# --- the in-process world ------------------------------------------------------------------


@dataclass
class LocalShard:
    """Rows of an Arrow table in batches of numpy arrays, locally shuffled as Ray Data's iterator is."""

    table: Any  # pyarrow.Table

    def iter_batches(
        self,
        *,
        batch_size: int,
        batch_format: str = "numpy",
        local_shuffle_buffer_size: Optional[int] = None,
        local_shuffle_seed: Optional[int] = None,
    ) -> Iterator[dict[str, Any]]:
        import numpy as np

        if batch_format != "numpy":
            raise ValueError(f"LocalShard gives numpy batches, not {batch_format!r}")
        order = np.arange(self.table.num_rows)
        if local_shuffle_buffer_size:
            # Shuffled within windows of the buffer's size: bounded reach, like a shuffle buffer.
            rng = np.random.default_rng(local_shuffle_seed)
            for start in range(0, len(order), local_shuffle_buffer_size):
                window = order[start : start + local_shuffle_buffer_size]
                order[start : start + local_shuffle_buffer_size] = rng.permutation(window)
        for start in range(0, len(order), batch_size):
            part = self.table.take(order[start : start + batch_size])
            yield {name: _numpy_column(part.column(name)) for name in part.column_names}


def _numpy_column(column: Any) -> Any:
    import numpy as np

    values = column.to_pylist()
    if values and isinstance(values[0], (list, str, dict)):
        out = np.empty(len(values), dtype=object)
        out[:] = [np.array(v, dtype=object) if isinstance(v, list) else v for v in values]
        return out
    return np.array(values)


@dataclass
class LocalCheckpoint:
    path: str

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        yield self.path


@dataclass
class LocalWorld:
    """One worker of an in-process group: rank `rank` of `world_size`, data from `tables`.

    Each rank reads every `world_size`-th row of each table, starting at its rank. Checkpoints
    are kept in `storage` (shared by the ranks of a group); a world whose storage already holds
    one is a restarted run and resumes from the latest, as Ray Train restarts a run.
    """

    tables: dict[str, Any]  # shard name -> pyarrow.Table
    storage: str
    rank: int = 0
    world_size: int = 1
    device: Any = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    stop_after_step: Optional[int] = None  # raise WorkerStopped after reporting this step (a kill)

    def __post_init__(self) -> None:
        import torch

        self.device = self.device or torch.device("cpu")
        self.local_rank = self.rank

    def shard(self, name: str) -> LocalShard:
        table = self.tables[name]
        import numpy as np

        return LocalShard(table.take(np.arange(self.rank, table.num_rows, self.world_size)))

    def restored_checkpoint(self) -> Optional[LocalCheckpoint]:
        saved = existing_checkpoints(self.storage)
        return LocalCheckpoint(saved[-1]) if saved else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Optional[str] = None, checkpoint_name: Optional[str] = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None:
            target = os.path.join(self.storage, checkpoint_name or f"{CHECKPOINT_PREFIX}{metrics['step']:06d}")
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(checkpoint_dir, target)
            self.checkpoints.append(target)
        if self.stop_after_step is not None and metrics.get("step") == self.stop_after_step:
            raise WorkerStopped(self.stop_after_step)


class WorkerStopped(Exception):
    """Raised by a LocalWorld told to stop after a step, as a killed worker stops."""


def existing_checkpoints(storage: str) -> list[str]:
    """The checkpoint directories in `storage`, oldest first (their names carry the step)."""
    if not os.path.isdir(storage):
        return []
    names = sorted(n for n in os.listdir(storage) if n.startswith(CHECKPOINT_PREFIX))
    return [os.path.join(storage, n) for n in names]


# --- a group of processes: DDP for real, without Ray -------------------------------------


def run_group(target: Callable[[int, int], T], world_size: int, *, timeout_s: float = 300) -> list[T]:
    """`target(rank, world_size)` in `world_size` fresh processes joined in one gloo process group;
    returns each rank's result, in rank order. `target` must be picklable (a module-level function,
    or a functools.partial of one). A rank that raises fails the whole call with its traceback.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    address = f"tcp://127.0.0.1:{_free_port()}"
    processes = [
        context.Process(target=_group_member, args=(target, rank, world_size, address, timeout_s, queue), daemon=True)
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s + 60
    try:
        while len(results) < world_size:
            try:
                rank, ok, value = queue.get(timeout=1)
            except queue_module.Empty:
                dead = [r for r, p in enumerate(processes) if p.exitcode is not None and r not in results]
                if dead:
                    raise RuntimeError(f"rank {dead[0]} of {world_size} exited with code {processes[dead[0]].exitcode} before reporting") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the group of {world_size} did not finish within {timeout_s + 60:.0f} s") from None
                continue
            if not ok:
                # The other ranks wait for it in a collective: stop them rather than let them time out.
                raise RuntimeError(f"rank {rank} of {world_size} failed:\n{value}")
            results[rank] = value
    finally:
        for process in processes:
            process.join(timeout=0 if len(results) < world_size else 30)
            if process.is_alive():
                process.kill()
    return [results[rank] for rank in range(world_size)]


def _group_member(target: Callable[[int, int], Any], rank: int, world_size: int, address: str, timeout_s: float, queue: Any) -> None:
    import torch
    import torch.distributed as dist

    # One compute thread per rank: the ranks share this machine's cores.
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))
        try:
            queue.put((rank, True, target(rank, world_size)))
        finally:
            dist.destroy_process_group()
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
