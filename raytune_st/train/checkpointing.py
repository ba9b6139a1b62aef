"""What a training checkpoint holds, and reading it back. Plain files, no Ray.

A checkpoint directory is::

    model/               the sentence-transformers model (SentenceTransformer / CrossEncoder .save)
    training_state.pt    optimizer, scheduler, grad scaler, loss-owned weights, step counters
    data_position.json   per worker: rows read from each data set this epoch and rows still buffered
    history.jsonl        every metrics record of the run so far
    config.yaml          the resolved TrainConfig
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

MODEL_DIR = "model"
STATE_FILE = "training_state.pt"
POSITION_FILE = "data_position.json"
HISTORY_FILE = "history.jsonl"
CONFIG_FILE = "config.yaml"


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
    best_metric: Optional[float] = None
    history: list[dict[str, Any]] = field(default_factory=list)
    position: DataPosition = field(default_factory=DataPosition)


def write_checkpoint(path: str, model: Any, state: TrainingState, config_yaml: str) -> None:
    """Write a checkpoint directory at `path` (created)."""
    import torch

    os.makedirs(path, exist_ok=True)
    model.save(os.path.join(path, MODEL_DIR), create_model_card=False)
    torch.save(
        {
            "step": state.step,
            "micro_batches": state.micro_batches,
            "optimizer": state.optimizer,
            "scheduler": state.scheduler,
            "scaler": state.scaler,
            "losses": state.losses,
            "best_metric": state.best_metric,
        },
        os.path.join(path, STATE_FILE),
    )
    with open(os.path.join(path, POSITION_FILE), "w") as handle:
        json.dump({"epoch": state.position.epoch, "workers": state.position.workers}, handle)
    write_history(os.path.join(path, HISTORY_FILE), state.history)
    with open(os.path.join(path, CONFIG_FILE), "w") as handle:
        handle.write(config_yaml)


def read_checkpoint(path: str) -> TrainingState:
    """The training state of a checkpoint directory (the model is loaded from path/model separately)."""
    import torch

    raw = torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=False)
    with open(os.path.join(path, POSITION_FILE)) as handle:
        position = json.load(handle)
    return TrainingState(
        step=raw["step"],
        micro_batches=raw["micro_batches"],
        optimizer=raw["optimizer"],
        scheduler=raw["scheduler"],
        scaler=raw["scaler"],
        losses=raw["losses"],
        best_metric=raw["best_metric"],
        history=read_history(os.path.join(path, HISTORY_FILE)),
        position=DataPosition(epoch=position["epoch"], workers=position["workers"]),
    )


def write_history(path: str, history: list[dict[str, Any]]) -> None:
    with open(path, "w") as handle:
        for record in history:
            handle.write(json.dumps(record) + "\n")


def read_history(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]
