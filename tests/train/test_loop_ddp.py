"""Every loss the train job offers by name trains on two DDP workers, without Ray.

Two processes in a gloo group (raytune_st.train.world.run_group) each run the real loop
(run_worker) in an in-process world, for every loss in turn: two optimizer steps of two
micro-batches each (so every step runs one micro-batch under DDP's no_sync), with
gather_across_devices on for the losses that have it (the loss builder's default on several
workers). Both ranks must end with the same weights, and different ones from the start.
"""

from __future__ import annotations

import functools
import hashlib
import os

import pytest

from raytune_st.losses.formats import LOSS_FORMATS, LossFormat

STEPS, ACCUMULATION, BATCH, WORLD = 2, 2, 4, 2
ROWS = STEPS * ACCUMULATION * BATCH * WORLD  # one epoch of exactly the steps trained

# What each wrapper wraps, and the arguments a loss cannot train without.
KWARGS = {
    ("bi_encoder", "SoftmaxLoss"): {"num_labels": 3},
    ("bi_encoder", "MatryoshkaLoss"): {"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [32, 16]},
    ("bi_encoder", "Matryoshka2dLoss"): {"loss": "CoSENTLoss", "matryoshka_dims": [32, 16]},
    ("bi_encoder", "AdaptiveLayerLoss"): {"loss": "MultipleNegativesRankingLoss"},
    ("bi_encoder", "CachedMultipleNegativesRankingLoss"): {"mini_batch_size": 2},
    ("bi_encoder", "CachedMultipleNegativesSymmetricRankingLoss"): {"mini_batch_size": 2},
    ("bi_encoder", "CachedGISTEmbedLoss"): {"mini_batch_size": 2},
    ("cross_encoder", "CachedMultipleNegativesRankingLoss"): {"mini_batch_size": 2},
}
GUIDED = {"GISTEmbedLoss", "CachedGISTEmbedLoss"}
# DenoisingAutoEncoderLoss builds its decoder from the encoder's hub name, which a model saved
# to a directory does not carry (see tests/losses/test_build.py); it cannot train offline.
OFFLINE_UNTRAINABLE = {("bi_encoder", "DenoisingAutoEncoderLoss")}
CASES = sorted(key for key in LOSS_FORMATS if key not in OFFLINE_UNTRAINABLE)


def loss_format(model_type: str, name: str) -> LossFormat:
    """The format of a loss's data: a wrapper's is that of the loss it wraps."""
    fmt = LOSS_FORMATS[(model_type, name)]
    if fmt.wrapper:
        return LOSS_FORMATS[(model_type, KWARGS[(model_type, name)]["loss"])]
    return fmt


def label_values(fmt: LossFormat, inputs: int) -> list | None:
    """A label column of the kind the loss reads, one value per row (None: no label column)."""
    wants = fmt.label == "required" or (fmt.label_required_for_pairs and inputs == 2)
    if not wants:
        return None
    kind = fmt.label_kind
    # Rank r reads rows r, r + WORLD, ...: labels alternate along each rank's rows, so that every
    # batch holds both classes (a batch of one class gives the triplet and ranking losses nothing to learn).
    alternating = [(i // WORLD) % 2 for i in range(ROWS)]
    if kind == "score_list":
        return [[1.0, 0.0, 0.0] for _ in range(ROWS)]
    if kind == "teacher_scores":
        return [[0.9] + [0.1] * (inputs - 2) for _ in range(ROWS)]
    if kind == "teacher_embedding":
        return [[((i + j) % 7) / 7 for j in range(32)] for i in range(ROWS)]  # the tiny model's dimension
    if kind in ("binary", "class", "class_or_probs"):
        return alternating
    return [float(label) for label in alternating]  # score, unit_score, margin


def loss_table(model_type: str, name: str, texts: dict[str, list[str]]):
    """Rows that fit the loss: its inputs in column order, then its label."""
    import pyarrow as pa

    fmt = loss_format(model_type, name)
    if fmt.listwise:
        columns = {"query": texts["query"], "docs": [[p, n, q] for q, p, n in zip(texts["query"], texts["passage"], texts["negative"])]}
    else:
        # Triplets wherever the loss takes them (hard negatives), else as many texts as it takes.
        inputs = max(fmt.min_inputs, min(3, fmt.max_inputs or 3))
        columns = {column: texts[column] for column in ["query", "passage", "negative"][:inputs]}
    labels = label_values(fmt, len(columns))
    if labels is not None:
        columns["label"] = labels
    return pa.table(columns)


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_every_loss(rank: int, world_size: int, plans: dict, storage: str) -> dict:
    """One rank of the group: each loss's run in turn; per loss its final weights' digest and last
    report, or the error it raised (a DDP error is raised on both ranks alike, so the next loss
    still runs in step)."""
    import traceback

    from raytune_st.train.loop import run_worker
    from raytune_st.train.world import LocalWorld

    results = {}
    for key, (plan, tables) in plans.items():
        world = LocalWorld(tables, storage=os.path.join(storage, "-".join(key)), rank=rank, world_size=world_size)
        try:
            model = run_worker(plan, world)
        except Exception:
            results[key] = {"error": traceback.format_exc(limit=-3)}
            continue
        results[key] = {"digest": weights_digest(model), "last": world.reports[-1]}
    return results


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import pandas as pd
    import pyarrow.parquet as pq

    from raytune_st.config.core import build
    from raytune_st.testing import save_tiny_bi_encoder, save_tiny_cross_encoder
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.plan import check_dataset
    from raytune_st.train.world import LoopPlan, run_group
    from train_fixtures import DEBIAN_TRAIN

    root = tmp_path_factory.mktemp("ddp-losses")
    models = {
        "bi_encoder": save_tiny_bi_encoder(str(root)),
        "cross_encoder": save_tiny_cross_encoder(str(root)),
        "cross_encoder_2": save_tiny_cross_encoder(str(root), num_labels=2),
    }
    frame = pd.read_parquet(DEBIAN_TRAIN).head(ROWS)
    texts = {
        "query": frame["query"].tolist(),
        "passage": frame["passage"].tolist(),
        "negative": frame["passage"].tolist()[1:] + frame["passage"].tolist()[:1],
    }
    plans, initial = {}, {}
    for model_type, name in CASES:
        table = loss_table(model_type, name, texts)
        path = str(root / f"{model_type}-{name}.parquet")
        pq.write_table(table, path)
        kwargs = dict(KWARGS.get((model_type, name), {}))
        if name in GUIDED:
            kwargs["guide"] = models["bi_encoder"]
        fmt = LOSS_FORMATS[(model_type, name)]
        classes = fmt.num_labels is not None and fmt.num_labels[0] > 1
        model = models["cross_encoder_2" if classes else model_type]
        config = build(
            TrainConfig,
            {
                "model": {"name": model, "type": model_type, **({"num_labels": 2} if classes else {})},
                "train_datasets": {"rows": {"data": {"path": path}, "loss": name, "loss_kwargs": kwargs}},
                "scaling": {"num_workers": WORLD},
                "args": {
                    "output_dir": str(root / "out"),
                    "max_steps": STEPS,
                    "per_device_train_batch_size": BATCH,
                    "gradient_accumulation_steps": ACCUMULATION,
                    "logging_steps": 1,
                    "learning_rate": 1e-3,
                },
            },
        )
        check_dataset(config, "train_datasets", "rows")  # the driver's check: the rows fit the loss
        plans[(model_type, name)] = (LoopPlan.of(config, {"train_rows": table}), {"train_rows": table})
        initial[model] = initial.get(model) or weights_digest(config.model.load(device="cpu"))
    ranks = run_group(functools.partial(train_every_loss, plans=plans, storage=str(root / "runs")), WORLD, timeout_s=120)
    return ranks, {key: initial[plan.config.model.name] for key, (plan, _) in plans.items()}


@pytest.mark.parametrize("model_type,name", CASES, ids=lambda v: str(v))
def test_a_loss_trains_on_two_workers_to_the_same_weights(trained, model_type, name):
    import math

    ranks, initial = trained
    key = (model_type, name)
    first, second = ranks[0][key], ranks[1][key]
    assert "error" not in first and "error" not in second, first.get("error") or second.get("error")
    assert first["digest"] == second["digest"], "the two workers ended with different weights"
    assert first["digest"] != initial[key], "two optimizer steps left the weights as they were"
    last = first["last"]
    assert last["step"] == STEPS and last["worker_steps_min"] == last["worker_steps_max"] == STEPS
    assert math.isfinite(last["loss"])



@pytest.mark.parametrize(
    "model_type,loss,expected",
    [
        # Mean pooling never reads BERT's pooler: DDP must look for unused parameters.
        ("bi_encoder", "MultipleNegativesRankingLoss", {"0.model.pooler.dense.weight", "0.model.pooler.dense.bias"}),
        # A reranker's classifier reads the pooler: every parameter is used, and DDP need not look.
        ("cross_encoder", "BinaryCrossEntropyLoss", set()),
    ],
)
def test_the_parameters_a_loss_leaves_unused_are_found_on_a_first_batch(tiny_models, model_type, loss, expected):
    import pandas as pd
    import torch

    from raytune_st.config.core import build
    from raytune_st.losses.build import build_loss
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.loop import WorkerContext, make_collator, unused_parameters
    from raytune_st.train.world import LocalWorld
    from train_fixtures import DEBIAN_TRAIN

    path = tiny_models[0] if model_type == "bi_encoder" else tiny_models[1]
    config = build(
        TrainConfig,
        {"model": {"name": path, "type": model_type}, "train_datasets": {"rows": {"data": {"path": DEBIAN_TRAIN}, "loss": loss}},
         "args": {"output_dir": "unused"}},
    )
    model = config.model.load(device="cpu")
    worker = WorkerContext.of(config, {"train_rows": ["query", "passage"]}, LocalWorld({}, storage=""))
    worker.collator = make_collator(model, None, model_type == "cross_encoder")
    rows = pd.read_parquet(DEBIAN_TRAIN).head(4)[["query", "passage"]].to_dict("records")
    if loss == "BinaryCrossEntropyLoss":
        rows = [dict(row, label=float(i % 2)) for i, row in enumerate(rows)]
    before = torch.random.get_rng_state()
    found = unused_parameters(model, {"rows": build_loss(loss, {}, model, model_type)}, {"rows": rows}, {"rows": ["query", "passage"]}, worker)
    assert set(found) == expected
    assert all(p.grad is None for p in model.parameters()), "the look left gradients behind"
    assert torch.equal(torch.random.get_rng_state(), before), "the look moved the random state"
