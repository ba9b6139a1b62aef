"""A training script as a user writes it, submitted with `ray job submit` (tests/cluster/test_multinode.py).

Every object lives in this driver's process: the model, an in-memory datasets.Dataset and a
loss class defined here. The training worker runs on another node with no disk in common
with this one. Prints one JSON line: the model's object name and whether `model` got the
trained weights back.

    python tests/cluster/trainer_script.py DATA_URI MODEL_URI OUTPUT_URI
"""

from __future__ import annotations

import json
import sys

import pyarrow.parquet as pq
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

from raytune_st import RayTrainer
from raytune_st.models import resolve_model
from raytune_st.outputs import filesystem


class ScaledPairLoss(torch.nn.Module):
    """In-batch negatives on scaled cosine similarity (defined in __main__: it travels by value)."""

    def __init__(self, model, scale: float = 20.0):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, features, labels):
        anchor, positive = (torch.nn.functional.normalize(self.model(f)["sentence_embedding"], dim=-1) for f in features)
        scores = self.scale * anchor @ positive.T
        return torch.nn.functional.cross_entropy(scores, torch.arange(len(scores), device=scores.device))


def main(data_uri: str, model_uri: str, output_uri: str) -> None:
    fs, path = filesystem(data_uri)
    pairs = Dataset(pq.read_table(path, filesystem=fs).rename_columns(["anchor", "positive"]))
    model = SentenceTransformer(resolve_model(model_uri), device="cpu")
    before = model[0].auto_model.embeddings.word_embeddings.weight.detach().clone()
    args = SentenceTransformerTrainingArguments(
        output_dir=output_uri, max_steps=4, per_device_train_batch_size=16, learning_rate=1e-3, logging_steps=2, report_to="none",
    )
    trainer = RayTrainer(
        model=model, args=args, train_dataset=pairs, loss=ScaledPairLoss(model),
        scaling={"num_workers": 1, "resources_per_worker": {"CPU": 1, "worker_node": 1}},
    )
    trainer.train()
    after = model[0].auto_model.embeddings.word_embeddings.weight
    print(json.dumps({
        "model": trainer.config.model.name, "data": trainer.config.train_datasets["train"].data.path,
        "trained_weights_back": not torch.equal(before, after)
    }))


if __name__ == "__main__":
    main(*sys.argv[1:4])
