"""Checkpoint files, run outputs and the loop's loss plumbing, on a tiny model without Ray."""

from __future__ import annotations

import json

import pytest

from raytune_st.config.core import build
from raytune_st.train.artifacts import card_section, final_metrics, write_run_outputs
from raytune_st.train.checkpointing import DataPosition, TrainingState, read_checkpoint, write_checkpoint
from raytune_st.train.config import TrainConfig
from train_fixtures import DEBIAN_TRAIN

HISTORY = [
    {"loss": 2.0, "learning_rate": 1e-5, "step": 1},
    {"loss": 1.5, "eval_loss": 1.7, "eval_dev_cosine_ndcg@10": 0.3, "step": 2},
    {"loss": 1.2, "step": 3},
]


def config_for(model_dir: str, output_dir: str) -> TrainConfig:
    return build(
        TrainConfig,
        {
            "model": {"name": model_dir, "card": {"language": "en", "license": "apache-2.0", "model_name": "tiny"}},
            "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
            "loss": "MultipleNegativesRankingLoss",
            "args": {"output_dir": output_dir},
        },
    )


def test_final_metrics_keep_the_last_value_of_each_metric():
    assert final_metrics(HISTORY) == {"loss": 1.2, "learning_rate": 1e-5, "step": 3, "eval_loss": 1.7, "eval_dev_cosine_ndcg@10": 0.3}


def test_checkpoint_round_trip(tmp_path, tiny_bi_encoder):
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(tiny_bi_encoder, device="cpu")
    state = TrainingState(
        step=4,
        micro_batches=8,
        optimizer={"state": {}, "param_groups": []},
        scheduler={"last_epoch": 4},
        scaler={},
        losses={"nli": {"classifier.weight": torch.ones(2, 3)}},
        best_value=0.5,
        history=HISTORY,
        position=DataPosition(epoch=1, workers=[{"pairs": {"rows_read": 40, "pending": [{"query": "a", "passage": "b"}]}}]),
    )
    write_checkpoint(str(tmp_path / "ckpt"), model, state, "args: {}\n")
    back = read_checkpoint(str(tmp_path / "ckpt"))
    assert (back.step, back.micro_batches, back.best_value, back.history) == (4, 8, 0.5, HISTORY)
    assert torch.equal(back.losses["nli"]["classifier.weight"], torch.ones(2, 3))
    assert back.position.for_rank(0, 1) == {"pairs": {"rows_read": 40, "pending": [{"query": "a", "passage": "b"}]}}
    assert back.position.for_rank(0, 2) == {}  # another number of workers restarts the epoch
    assert SentenceTransformer(str(tmp_path / "ckpt" / "model"), device="cpu").encode(["x"]).shape == (1, 32)


def test_run_outputs(tmp_path, tiny_bi_encoder):
    from sentence_transformers import SentenceTransformer

    config = config_for(tiny_bi_encoder, str(tmp_path / "out"))
    write_run_outputs(str(tmp_path / "out"), config=config, model_dir=tiny_bi_encoder, history=HISTORY, metrics=final_metrics(HISTORY), best_step=2)
    out = tmp_path / "out"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # report_to: tensorboard: every metric at its step, read back as TensorBoard reads it.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "runs"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.5), (3, pytest.approx(1.2))]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("eval/dev_cosine_ndcg@10")] == [(2, 0.3)]
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "MultipleNegativesRankingLoss" in (out / "config.yaml").read_text()
    card = (out / "final" / "README.md").read_text()
    assert "best checkpoint (step 2)" in card and "eval_dev_cosine_ndcg@10" in card and "license: apache-2.0" in card
    assert SentenceTransformer(str(out / "final"), device="cpu").encode(["apt"]).shape == (1, 32)


def test_card_section_lists_metrics_and_config(tmp_path, tiny_bi_encoder):
    text = card_section(config_for(tiny_bi_encoder, "out"), {"eval_loss": 0.25, "step": 3}, None)
    assert "| eval_loss | 0.25 |" in text and "```yaml" in text and "best checkpoint" not in text


def test_loss_is_pointed_at_the_wrapped_model_and_back_for_evaluation(tiny_bi_encoder):
    import torch
    from sentence_transformers import SentenceTransformer

    from raytune_st.losses.build import build_loss
    from raytune_st.train.loop import _evaluation_view, _point_loss_at

    model = SentenceTransformer(tiny_bi_encoder, device="cpu")

    class Wrapper(torch.nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    wrapped = Wrapper(model)
    loss = build_loss("MatryoshkaLoss", {"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [32, 16]}, model, world_size=2)
    _point_loss_at(loss, wrapped, model)
    assert loss.model is wrapped and loss.loss.model is wrapped
    assert wrapped.get_embedding_dimension() == 32  # bound for the losses that call it
    with _evaluation_view(loss, model):
        assert loss.model is model and loss.loss.model is model
        assert loss.loss.gather_across_devices is False
    assert loss.model is wrapped and loss.loss.gather_across_devices is True


def test_a_checkpoint_keeps_every_random_generator_state(tmp_path, tiny_bi_encoder):
    import random

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from raytune_st.train.checkpointing import capture_rng_state, restore_rng_state

    model = SentenceTransformer(tiny_bi_encoder, device="cpu")
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    write_checkpoint(str(tmp_path / "ckpt"), model, TrainingState(step=1, rng=[capture_rng_state()]), "args: {}\n")
    expected = (random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.nn.functional.dropout(torch.ones(8), 0.5).tolist())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(read_checkpoint(str(tmp_path / "ckpt")).rng[0])
    again = (random.random(), float(np.random.rand()), torch.rand(3).tolist(), torch.nn.functional.dropout(torch.ones(8), 0.5).tolist())
    assert again == expected


def test_a_checkpoint_carrying_a_pickled_payload_is_refused(tmp_path, tiny_bi_encoder):
    import torch
    from sentence_transformers import SentenceTransformer

    from raytune_st.train.checkpointing import STATE_FILE, CheckpointError

    model = SentenceTransformer(tiny_bi_encoder, device="cpu")
    ckpt = tmp_path / "ckpt"
    write_checkpoint(str(ckpt), model, TrainingState(step=2, scheduler={"last_epoch": 2}), "args: {}\n")
    assert read_checkpoint(str(ckpt)).step == 2  # what raytune_st writes loads safely
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    torch.save({"step": 2, "micro_batches": 2, "optimizer": Payload()}, ckpt / STATE_FILE)
    with pytest.raises(CheckpointError, match=r"holds objects other than tensors and plain values .*exec.*refused"):
        read_checkpoint(str(ckpt))
    assert not marker.exists()
    torch.load(ckpt / STATE_FILE, weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.read_text() == "pwned"


def test_a_scheduler_state_holding_an_object_is_refused_when_written():
    from raytune_st.train.checkpointing import plain_state

    assert plain_state({"base_lrs": [1e-5], "lr_lambdas": [{}], "betas": (0.9, 0.999)}, "s") == {
        "base_lrs": [1e-5], "lr_lambdas": [{}], "betas": (0.9, 0.999)
    }
    with pytest.raises(TypeError, match=r"s.lr_lambdas\[0\].fn holds a function"):
        plain_state({"lr_lambdas": [{"fn": lambda step: 1.0}]}, "s")


def test_weight_decay_skips_biases_and_norms_as_transformers_trainer_does(tiny_bi_encoder):
    import torch
    from sentence_transformers import SentenceTransformer

    from raytune_st.train.loop import _decay_groups

    model = SentenceTransformer(tiny_bi_encoder, device="cpu")
    classifier = torch.nn.Linear(4, 3)  # a loss's own weights (e.g. SoftmaxLoss): its matrix decays, its bias not
    decay, no_decay = _decay_groups(model, list(classifier.parameters()), weight_decay=0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names.get(id(p), "classifier") for p in decay["params"]}
    spared = {names.get(id(p), "classifier") for p in no_decay["params"]}
    assert any(n.endswith("attention.self.query.weight") for n in decayed) and "classifier" in decayed
    assert all(n.endswith("bias") or "LayerNorm" in n for n in spared - {"classifier"}) and "classifier" in spared
    assert any("LayerNorm" in n for n in spared) and any(n.endswith("bias") for n in spared)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters())) + 2
