"""RayTrainer: sentence-transformers' trainer constructor on Ray Train.

Without Ray: TrainingArguments to the job's args, loss objects to names or pickles, the bad
inputs refused before any worker. With a local Ray (one session): the seed guides' scripts,
trainer class swapped, against the equivalent YAML config."""

from __future__ import annotations

import os
import runpy
import threading

import pytest

from raytune_st.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def tiny_model(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_bert_dir, device="cpu")


@pytest.fixture
def pairs():
    from datasets import Dataset

    return Dataset.from_dict({"anchor": [f"q{i}" for i in range(16)], "positive": [f"p{i}" for i in range(16)]})


def st_args(tmp_path, **kwargs):
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), **kwargs)


def test_training_arguments_map_to_the_jobs_args_with_their_values(tmp_path):
    from sentence_transformers.training_args import BatchSamplers

    from raytune_st.config.core import build
    from raytune_st.train.config import TrainingArgs
    from raytune_st.trainer import args_section

    args = st_args(
        tmp_path, learning_rate=3e-5, max_steps=10, batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="steps",
        eval_steps=5, lr_scheduler_type="cosine", warmup_ratio=0.1, seed=7, report_to="none",
        adam_beta1=0.8, adam_beta2=0.98, adam_epsilon=1e-6,
    )
    section = args_section(args)
    built = build(TrainingArgs, section)
    assert (built.learning_rate, built.max_steps, built.batch_sampler, built.eval_strategy, built.eval_steps) == (3e-5, 10, "no_duplicates", "steps", 5)
    assert (built.lr_scheduler_type, built.warmup_ratio, built.seed, built.output_dir) == ("cosine", 0.1, 7, str(tmp_path / "out"))
    assert built.report_to == "none"
    assert (built.adam_beta1, built.adam_beta2, built.adam_epsilon) == (0.8, 0.98, 1e-6)


def test_training_arguments_the_job_does_not_support_are_listed_not_ignored(tmp_path):
    from raytune_st.trainer import args_section

    with pytest.raises(ConfigError, match=r"SentenceTransformerTrainingArguments sets options raytune_st's trainer does not support: ") as refused:
        args_section(st_args(tmp_path, torch_compile=True, gradient_checkpointing_kwargs={"use_reentrant": False}))
    assert "torch_compile=True" in str(refused.value) and "gradient_checkpointing_kwargs={'use_reentrant': False}" in str(refused.value)


def test_a_sentence_transformers_loss_becomes_its_name_and_settings(tiny_model):
    from sentence_transformers.sentence_transformer.losses import (
        CoSENTLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
        SoftmaxLoss,
    )

    from raytune_st.trainer import loss_by_name

    assert loss_by_name(MultipleNegativesRankingLoss(tiny_model, scale=10), tiny_model, "bi_encoder") == ("MultipleNegativesRankingLoss", {"scale": 10})
    assert loss_by_name(CoSENTLoss(tiny_model), tiny_model, "bi_encoder") == ("CoSENTLoss", {})
    wrapped = MatryoshkaLoss(tiny_model, MultipleNegativesRankingLoss(tiny_model, scale=5), [32, 8])
    assert loss_by_name(wrapped, tiny_model, "bi_encoder") == (
        "MatryoshkaLoss", {"loss": {"name": "MultipleNegativesRankingLoss", "scale": 5}, "matryoshka_dims": [32, 8], "matryoshka_weights": [1, 1]}
    )
    # Weights of its own (the classifier): the object itself goes to the workers.
    assert loss_by_name(SoftmaxLoss(tiny_model, tiny_model.get_embedding_dimension(), 3), tiny_model, "bi_encoder") is None


def test_a_pickled_loss_gets_the_workers_model_back(tmp_path, tiny_model, tiny_bert_dir):
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss

    from raytune_st import objects
    from raytune_st.trainer import dump_without_model, staged_loss

    loss = SoftmaxLoss(tiny_model, tiny_model.get_embedding_dimension(), 3)
    pickled = dump_without_model(loss, tiny_model, what="loss")
    # The model's weights are not in the pickle: it is much smaller than the model.
    assert len(pickled) < sum(p.numel() for p in tiny_model.parameters()) * 4 / 2
    worker_model = SentenceTransformer(tiny_bert_dir, device="cpu")
    name = objects.register_blob(pickled)
    rebuilt = staged_loss(worker_model, name)
    objects.release([name])
    assert rebuilt.model is worker_model
    assert torch.equal(rebuilt.classifier.weight, loss.classifier.weight)


def test_what_cannot_reach_the_workers_is_refused_before_any_worker(tmp_path, tiny_model, pairs):
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from raytune_st.trainer import RayTrainer

    loss = MultipleNegativesRankingLoss(tiny_model)
    with pytest.raises(ConfigError, match=r"loss: a loss factory must be a function at the top level of an importable module .*<lambda>"):
        RayTrainer(model=tiny_model, args=st_args(tmp_path), train_dataset=pairs, loss=lambda m: loss)

    class Locked(SentenceEvaluator):
        def __init__(self):
            super().__init__()
            self.lock = threading.Lock()

    with pytest.raises(ConfigError, match=r"evaluator 0 \(Locked\) cannot be pickled to go to the workers: .*lock"):
        RayTrainer(model=tiny_model, args=st_args(tmp_path), train_dataset=pairs, loss=loss, evaluator=Locked())
    with pytest.raises(ConfigError, match="loss: other name no train data set; the sets are train"):
        RayTrainer(model=tiny_model, args=st_args(tmp_path), train_dataset=pairs, loss={"other": loss})
    with pytest.raises(ConfigError, match="eval_dataset 'train' has no loss in the loss dict; pass eval_dataset as a dict named like the train sets \\(nli\\)"):
        RayTrainer(model=tiny_model, args=st_args(tmp_path), train_dataset={"nli": pairs}, eval_dataset=pairs, loss={"nli": loss})
    with pytest.raises(ConfigError, match="does not support: torch_compile=True"):
        RayTrainer(model=tiny_model, args=st_args(tmp_path, torch_compile=True), train_dataset=pairs, loss=loss)
    with pytest.raises(ConfigError, match="train_dataset 'train': expected a datasets.Dataset, a ray.data.Dataset or a source path, got list"):
        RayTrainer(model=tiny_model, args=st_args(tmp_path), train_dataset=[1, 2], loss=loss)
    with pytest.raises(ConfigError, match="RayTrainer needs train_dataset"):
        RayTrainer(model=tiny_model, loss=loss)


def test_the_constructor_names_its_objects_in_the_train_jobs_config(tmp_path, tiny_model, pairs):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MultipleNegativesRankingLoss

    from raytune_st.data.sources import inspect_source
    from raytune_st.models import resolve_model
    from raytune_st.trainer import RayTrainer

    trainer = RayTrainer(
        model=tiny_model,
        args=st_args(tmp_path, max_steps=3),
        train_dataset={"pairs": pairs, "more": pairs.select(range(5))},
        loss={"pairs": MultipleNegativesRankingLoss(tiny_model), "more": CoSENTLoss(tiny_model)},
        scaling={"num_workers": 2},
    )
    config = trainer.config
    # The model and the in-memory sets are objects for Ray's object store, named where paths would be.
    assert config.model.name.startswith("ray-object://model/") and config.model.type == "bi_encoder"
    copy = SentenceTransformer(resolve_model(config.model.name), device="cpu")
    assert copy.encode("a query").tolist() == tiny_model.encode("a query").tolist()
    assert {name: entry.loss for name, entry in config.train_datasets.items()} == {"pairs": "MultipleNegativesRankingLoss", "more": "CoSENTLoss"}
    paths = {name: entry.data.path for name, entry in config.train_datasets.items()}
    assert all(path.startswith("ray-object://data/") for path in paths.values()) and paths["pairs"] != paths["more"]
    # A selection reads as the rows it selects.
    assert inspect_source(config.train_datasets["more"].data).num_rows == 5
    assert inspect_source(config.train_datasets["pairs"].data).columns == pairs.column_names
    assert config.scaling.num_workers == 2 and config.args.max_steps == 3
    # Each train() trains afresh, as SentenceTransformerTrainer.train() does.
    assert config.run.overwrite is True


# --- through Ray -----------------------------------------------------------------------------------


def debian_triplets(root) -> dict[str, str]:
    """The guide's (anchor, positive, negative) columns from the Debian samples: each row's
    negative is the next row's passage."""
    import pandas as pd

    files = {}
    for split, name in (("train", "debian-train-sample"), ("dev", "debian-dev-sample"), ("test", "debian-dev-sample")):
        frame = pd.read_parquet(os.path.join(REPO, "examples", "data", f"{name}.parquet")).head(256 if split == "train" else 60)
        triplets = pd.DataFrame({"anchor": frame["query"], "positive": frame["passage"], "negative": frame["passage"].shift(-1).fillna(frame["passage"].iloc[0])})
        files[split] = str(root / f"{split}.parquet")
        triplets.to_parquet(files[split], index=False)
    return files


SCRIPTS = {
    # script: (its data, the equivalent YAML config, the evaluator metric compared)
    "training_overview_mnrl.py": (
        lambda root: debian_triplets(root),
        lambda data, out: {
            "model": {"name": MINILM, "max_seq_length": 64},
            "train_datasets": {"train": {"data": {"path": data["train"], "limit": 256}}},
            "eval_datasets": {"train": data["dev"]},
            "loss": "MultipleNegativesRankingLoss",
            "evaluators": [{"type": "TripletEvaluator", "name": "debian-dev", "data": data["dev"]}],
            "args": {"output_dir": out, "max_steps": 6, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 16,
                     "learning_rate": 2e-5, "warmup_ratio": 0.1, "batch_sampler": "no_duplicates", "eval_strategy": "steps",
                     "eval_steps": 3, "save_steps": 3, "save_total_limit": 2, "logging_steps": 3, "report_to": "none"},
            "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        },
        "eval_debian-dev_cosine_accuracy",
    ),
    "sts_cosent.py": (
        lambda root: {"train": os.path.join(SHARED_DATA, "stsb-en-train.parquet"), "dev": os.path.join(SHARED_DATA, "stsb-en-dev.parquet")},
        lambda data, out: {
            "model": {"name": MINILM, "max_seq_length": 64},
            "train_datasets": {"train": {"data": {"path": data["train"], "limit": 256}}},
            "eval_datasets": {"train": {"data": {"path": data["dev"], "limit": 200}}},
            "loss": "CoSENTLoss",
            "evaluators": [{"type": "EmbeddingSimilarityEvaluator", "name": "sts-dev", "main_similarity": "cosine",
                            "data": {"path": data["dev"], "limit": 200}}],
            "args": {"output_dir": out, "max_steps": 6, "per_device_train_batch_size": 16, "learning_rate": 2e-5,
                     "warmup_ratio": 0.1, "eval_strategy": "steps", "eval_steps": 3, "save_steps": 3, "logging_steps": 3,
                     "seed": 12, "report_to": "none"},
            "scaling": {"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
        },
        "eval_sts-dev_spearman_cosine",
    ),
}


@pytest.mark.ray
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_a_seed_guide_script_with_the_trainer_swapped_trains_like_its_yaml_config(ray_local, tmp_path, script):
    import raytune_st

    from raytune_st.models.loading import resolve_model

    make_data, yaml_config, metric = SCRIPTS[script]
    data = make_data(tmp_path)
    minilm = resolve_model(MINILM)  # the offline copy's directory: a script loads it as it is
    ran = runpy.run_path(
        os.path.join(HERE, "seed_scripts", script),
        init_globals={"MODEL": minilm, "DATA": data, "OUTPUT_DIR": str(tmp_path / "script")},
    )
    model, metrics = ran["model"], ran["metrics"]
    # The trained weights are back in the caller's model object, as with SentenceTransformerTrainer.
    from sentence_transformers import SentenceTransformer

    final = SentenceTransformer(str(tmp_path / "script" / "final"), device="cpu")
    probe = ["apt: command-line package manager"]
    assert (abs(model.encode(probe) - final.encode(probe)).max()) < 1e-5
    base = SentenceTransformer(minilm, device="cpu")
    assert abs(model.encode(probe) - base.encode(probe)).max() > 1e-4

    from_yaml = raytune_st.train(yaml_config(data, str(tmp_path / "yaml")))
    assert metrics["step"] == from_yaml["step"] == 6
    assert abs(metrics[metric] - from_yaml[metric]) < 0.02, (metrics[metric], from_yaml[metric])
    assert abs(metrics["eval_loss"] - from_yaml["eval_loss"]) < 0.05 * abs(from_yaml["eval_loss"]) + 1e-3


def test_a_cross_encoder_with_its_training_arguments_becomes_a_cross_encoder_run(tmp_path):
    from datasets import Dataset
    from sentence_transformers import CrossEncoder, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    from raytune_st.testing import save_tiny_cross_encoder
    from raytune_st.trainer import RayTrainer

    model = CrossEncoder(save_tiny_cross_encoder(str(tmp_path / "ce")), device="cpu")
    pairs = Dataset.from_dict({"query": ["q1", "q2"] * 8, "passage": ["p1", "p2"] * 8, "label": [1.0, 0.0] * 8})
    args = CrossEncoderTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, learning_rate=1e-4)
    config = RayTrainer(model=model, args=args, train_dataset=pairs, loss=BinaryCrossEntropyLoss(model, reduction="sum")).config
    assert (config.model.type, config.model.num_labels, config.args.learning_rate) == ("cross_encoder", 1, 1e-4)
    # BinaryCrossEntropyLoss takes **kwargs (reduction) that its config dict does not show: it travels as itself.
    assert config.loss == "raytune_st.trainer:staged_loss"


def test_a_pickled_loss_gets_the_workers_modules_and_parameters_back_and_one_without_the_model_is_refused(tmp_path, tiny_model, tiny_bert_dir):
    import torch
    from sentence_transformers import SentenceTransformer

    from raytune_st.trainer import dump_without_model, staged_loss

    class HoldsParts(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.encoder = model[0]
            self.bias = model[0].auto_model.embeddings.word_embeddings.weight

        def forward(self, features, labels):
            return self.encoder(features[0])["token_embeddings"].mean()

    (tmp_path / "parts.pkl").write_bytes(dump_without_model(HoldsParts(tiny_model), tiny_model, what="loss", require_model=True))
    worker_model = SentenceTransformer(tiny_bert_dir, device="cpu")
    rebuilt = staged_loss(worker_model, str(tmp_path / "parts.pkl"))
    assert rebuilt.encoder is worker_model[0]
    assert rebuilt.bias is worker_model[0].auto_model.embeddings.word_embeddings.weight

    with pytest.raises(ConfigError, match=r"loss \(Linear\) holds no part of the model passed to RayTrainer"):
        dump_without_model(torch.nn.Linear(2, 2), tiny_model, what="loss", require_model=True)


def test_a_loss_object_needs_the_model_object_it_was_built_on(tmp_path, tiny_model, tiny_bert_dir, pairs):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from raytune_st.trainer import RayTrainer

    with pytest.raises(ConfigError, match="a loss object holds its own model, not the workers'"):
        RayTrainer(model=tiny_bert_dir, args=st_args(tmp_path), train_dataset=pairs, loss=MultipleNegativesRankingLoss(tiny_model))
    config = RayTrainer(model=tiny_bert_dir, args=st_args(tmp_path), train_dataset=pairs, loss="MultipleNegativesRankingLoss").config
    assert config.model.name == tiny_bert_dir and config.loss == "MultipleNegativesRankingLoss"


def test_report_to_all_step_ratios_eval_steps_and_scaling_fields_are_read_as_sentence_transformers_means_them(tmp_path):
    import ray.train

    from raytune_st.trainer import _scaling_section, args_section

    assert args_section(st_args(tmp_path, report_to="all"))["report_to"] == "all"  # transformers expands it
    assert args_section(st_args(tmp_path, report_to=[]))["report_to"] == "none"
    assert args_section(st_args(tmp_path, eval_steps=100))["eval_steps"] is None  # no evaluation: ignored, as there
    with pytest.raises(ConfigError, match="eval_steps=0.1 is a ratio of the total steps, which raytune_st does not take"):
        args_section(st_args(tmp_path, eval_strategy="steps", eval_steps=0.1))
    assert _scaling_section(ray.train.ScalingConfig(num_workers=3)) == {"num_workers": 3, "use_gpu": False}
    with pytest.raises(ConfigError, match="scaling: raytune_st takes num_workers, use_gpu and resources_per_worker; unsupported: placement_strategy='SPREAD'"):
        _scaling_section(ray.train.ScalingConfig(num_workers=2, placement_strategy="SPREAD"))


def test_a_staged_evaluator_reports_its_evaluators_primary_metric_as_it_is_when_asked(tmp_path):
    import pickle

    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    from raytune_st.trainer import StagedEvaluator

    path = tmp_path / "evaluator.pkl"
    path.write_bytes(pickle.dumps(PrefixesOnCall(name="dev")))
    staged = StagedEvaluator(str(path), name="dev")
    assert isinstance(staged, SentenceEvaluator) and staged.primary_metric == "score"
    assert staged(None) == {"dev_score": 1.0} and staged.primary_metric == "dev_score"


def _evaluator_base():
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    return SentenceEvaluator


class PrefixesOnCall(_evaluator_base()):
    """Like CrossEncoderCorrelationEvaluator: primary_metric gets its name prefix on the first call."""

    def __init__(self, name):
        super().__init__()
        self.name, self.primary_metric = name, "score"

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.primary_metric = f"{self.name}_score"
        return {self.primary_metric: 1.0}


@pytest.mark.ray
def test_the_same_objects_sweep_with_tune_and_a_trainer_runs_once(ray_local, tmp_path, tiny_model):
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from raytune_st.trainer import RayTrainer

    pairs = Dataset.from_dict({"anchor": [f"question {i}" for i in range(32)], "positive": [f"answer {i}" for i in range(32)]})
    trainer = RayTrainer(
        model=tiny_model,
        args=st_args(tmp_path, max_steps=2, per_device_train_batch_size=8, logging_steps=1, report_to="none"),
        train_dataset=pairs,
        loss=MultipleNegativesRankingLoss(tiny_model),
        scaling={"num_workers": 1, "resources_per_worker": {"CPU": 0.5}},
    )
    result = trainer.tune({"space": {"args.learning_rate": {"choice": [1e-4, 1e-3]}}, "search_alg": "grid", "metric": "loss", "mode": "min"})
    assert sorted(row["args.learning_rate"] for row in result["trials"]) == [1e-4, 1e-3]
    assert all(row["steps"] == 2 and row["loss"] > 0 for row in result["trials"])
    assert result["best"]["loss"] == min(row["loss"] for row in result["trials"])
    with pytest.raises(ConfigError, match="this RayTrainer has run"):
        trainer.train()


@pytest.mark.ray
def test_a_cross_encoder_trains_on_two_workers_with_a_pointwise_and_a_listwise_loss(ray_local, tmp_path):
    """sentence-transformers' reranker recipe with the trainer swapped, on two workers: one data set
    of labeled pairs (BinaryCrossEntropyLoss), one of candidate lists (LambdaLoss)."""
    import numpy as np
    from datasets import Dataset, DatasetDict
    from sentence_transformers import CrossEncoder, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss

    from raytune_st.testing import save_tiny_cross_encoder
    from raytune_st.trainer import RayTrainer

    model = CrossEncoder(save_tiny_cross_encoder(str(tmp_path / "ce")), device="cpu")
    before = model.predict([("apt", "package manager")])
    queries = [f"package {i}" for i in range(32)]
    train = DatasetDict(
        {
            "pairs": Dataset.from_dict({"query": queries, "passage": [f"tool {i}" for i in range(32)], "label": [1.0, 0.0] * 16}),
            "lists": Dataset.from_dict(
                {"query": queries, "docs": [[f"tool {i}", f"tool {i + 1}", f"tool {i + 2}"] for i in range(32)], "labels": [[1, 0, 0]] * 32}
            ),
        }
    )
    args = CrossEncoderTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3, logging_steps=1
    )
    trainer = RayTrainer(
        model=model,
        args=args,
        train_dataset=train,
        loss={"pairs": BinaryCrossEntropyLoss(model), "lists": LambdaLoss(model)},
        scaling={"num_workers": 2, "resources_per_worker": {"CPU": 0.5}},
    )
    metrics = trainer.train()

    assert metrics["step"] == 4 and metrics["worker_steps_min"] == metrics["worker_steps_max"] == 4
    final = CrossEncoder(str(tmp_path / "out" / "final"), device="cpu")
    after = final.predict([("apt", "package manager")])
    # The trained weights are in out/final and back in the caller's model, and they moved.
    assert np.allclose(model.predict([("apt", "package manager")]), after, atol=1e-5)
    assert not np.allclose(before, after, atol=1e-6)
