"""What a training checkpoint holds, and reading it back. Plain files, no Ray.

A checkpoint directory is::

    model/               the sentence-transformers model (SentenceTransformer / CrossEncoder .save)
    training_state.pt    optimizer, scheduler, grad scaler, loss-owned weights, step counters and
                         every worker's random-number generator states: tensors and plain values
                         only, read with ``torch.load(weights_only=True)``
    data_position.json   per worker: rows read from each data set this epoch and rows still buffered
    history.jsonl        every metrics record of the run so far
    config.yaml          the resolved TrainConfig
    data_files.json      the files of every data set with their sizes and content digests, as the run read them

Checkpoints live in shared or remote storage that others may write to, so nothing in them is
unpickled: a training_state.pt that holds any other object is refused (:class:`CheckpointError`),
never executed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from raytune_st.errors import RaytuneError

class CheckpointError(RaytuneError, ValueError):
    """A checkpoint that cannot be read safely: damaged, or holding more than tensors and plain values."""


MODEL_DIR = "model"
STATE_FILE = "training_state.pt"
POSITION_FILE = "data_position.json"
HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "config.yaml"
DATA_FILE = "data_files.json"


@dataclass
class DataPosition:
    """Where every worker is in the data: the epoch, and per worker and data set the rows read and buffered."""

    epoch: int = -1
    # workers[rank][dataset] = {"rows_read": int, "pending": [row, ...]}
    workers: list[dict[str, dict[str, Any]]] = field(default_factory=list)

    def for_rank(self, rank: int, world_size: int) -> dict[str, dict[str, Any]]:
        """This worker's position; a run resumed with another number of workers restarts the epoch."""
        if len(self.workers) != world_size:
            return {}
        return self.workers[rank]


@dataclass
class TrainingState:
    """Counters and optimizer state restored on resume."""

    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # micro-batches consumed (step x gradient_accumulation_steps)
    optimizer: Optional[dict] = None
    scheduler: Optional[dict] = None
    scaler: Optional[dict] = None
    losses: dict[str, dict] = field(default_factory=dict)  # loss-owned weights, e.g. SoftmaxLoss's classifier
    best_value: Optional[float] = None  # the best value so far of args.best_metric (save_strategy: best)
    history: list[dict[str, Any]] = field(default_factory=list)
    position: DataPosition = field(default_factory=DataPosition)
    rng: list[dict[str, Any]] = field(default_factory=list)  # per worker rank: see capture_rng_state


# --- random-number generators: dropout, shuffles and sampling continue where they were -------


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states (python random, numpy, torch CPU and every CUDA device),
    as tensors and plain values so that a checkpoint holding them loads with weights_only."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set this process's generators to a :func:`capture_rng_state` result."""
    import random

    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def plain_state(value: Any, where: str) -> Any:
    """`value` (a state_dict) with tuples kept and every leaf a tensor or plain value.

    torch.load(weights_only=True) reads exactly these; a scheduler's state may hold other
    objects (a callable's attributes), which are refused here, when the checkpoint is written,
    rather than when a resumed run cannot read it.
    """
    import torch

    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    if isinstance(value, dict):
        return {k: plain_state(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_state(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise TypeError(
        f"{where} holds a {type(value).__name__}, which a checkpoint cannot store safely (tensors and plain "
        "values only); choose another args.lr_scheduler_type"
    )


def write_checkpoint(
    path: str, model: Any, state: TrainingState, config_yaml: str, data_files: Optional[dict[str, Any]] = None
) -> None:
    """Write a checkpoint directory at `path` (created); `data_files` (see train/rerun.py) when known."""
    import torch

    os.makedirs(path, exist_ok=True)
    model.save(os.path.join(path, MODEL_DIR), create_model_card=False)
    raw = {
        "step": state.step,
        "micro_batches": state.micro_batches,
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "scaler": state.scaler,
        "losses": state.losses,
        "best_value": state.best_value,
        "rng": state.rng,
    }
    torch.save(plain_state(raw, "training state"), os.path.join(path, STATE_FILE))
    with open(os.path.join(path, POSITION_FILE), "w") as handle:
        json.dump({"epoch": state.position.epoch, "workers": state.position.workers}, handle)
    write_history(os.path.join(path, HISTORY_FILE), state.history)
    with open(os.path.join(path, CONFIG_FILE), "w") as handle:
        handle.write(config_yaml)
    if data_files is not None:
        with open(os.path.join(path, DATA_FILE), "w") as handle:
            json.dump(data_files, handle)


def read_checkpoint(path: str) -> TrainingState:
    """The training state of a checkpoint directory (the model is loaded from path/model separately)."""
    import torch

    import pickle

    state_file = os.path.join(path, STATE_FILE)
    try:
        raw = torch.load(state_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is long advice to pass weights_only=False; keep the line naming the object.
        lines = [line.strip() for line in str(exc).splitlines() if "unsupported" in line.lower()]
        reason = lines[0].rstrip(".") if lines else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {state_file!r} holds objects other than tensors and plain values ({reason}); "
            "raytune_st never writes those, and loading it would run code stored in the file, so it is refused. "
            "Delete this checkpoint directory (the run resumes from an earlier one) or start a new run "
            "(a new run.name or args.output_dir)"
        ) from None
    with open(os.path.join(path, POSITION_FILE)) as handle:
        position = json.load(handle)
    return TrainingState(
        step=raw["step"],
        micro_batches=raw["micro_batches"],
        optimizer=raw["optimizer"],
        scheduler=raw["scheduler"],
        scaler=raw["scaler"],
        losses=raw["losses"],
        best_value=raw.get("best_value", raw.get("best_metric")),  # "best_metric" in older checkpoints
        history=read_history(os.path.join(path, HISTORY_FILE)),
        position=DataPosition(epoch=position["epoch"], workers=position["workers"]),
        rng=raw.get("rng") or [],  # checkpoints written before RNG states were saved have none
    )


def write_history(path: str, history: list[dict[str, Any]]) -> None:
    """Metrics records as JSON lines (a checkpoint's history.jsonl, an output's metrics.jsonl)."""
    with open(path, "w") as handle:
        for record in history:
            handle.write(json.dumps(record) + "\n")


def read_history(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return parse_history(handle.read())


def parse_history(text: str) -> list[dict[str, Any]]:
    """The records of a history file's text (one JSON object a line)."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]
