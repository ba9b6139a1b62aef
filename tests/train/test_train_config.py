"""TrainConfig: names, defaults, and every bad input refused before a worker starts. No Ray."""

from __future__ import annotations

import glob
import os

import pytest

from train_fixtures import DEBIAN_TRAIN, REPO, STSB_TRAIN
from raytune_st.config.core import build, load_config
from raytune_st.errors import ConfigError, DataError
from raytune_st.train.config import TrainConfig, preflight, total_optimizer_steps


def make(**sections):
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
        "loss": "MultipleNegativesRankingLoss",
        "args": {"output_dir": "out"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return build(TrainConfig, data)


def test_defaults_are_sentence_transformers_training_arguments_defaults():
    from sentence_transformers import SentenceTransformerTrainingArguments

    ours = make().args
    theirs = SentenceTransformerTrainingArguments(output_dir="out")
    for name in (
        "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
        "gradient_accumulation_steps", "learning_rate", "weight_decay", "max_grad_norm", "fp16", "bf16",
        "save_steps", "logging_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
        "seed",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.lr_scheduler_type == str(theirs.lr_scheduler_type.value)
    assert ours.batch_sampler == theirs.batch_sampler.value
    assert ours.multi_dataset_batch_sampler == theirs.multi_dataset_batch_sampler.value
    assert ours.eval_strategy == theirs.eval_strategy.value
    assert ours.save_strategy == theirs.save_strategy.value


def test_shorthands_and_top_level_loss():
    config = make(train_datasets={"a": DEBIAN_TRAIN}, loss_kwargs={"scale": 30})
    assert config.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.model.type == "bi_encoder"
    assert config.train_datasets["a"].data.path == DEBIAN_TRAIN
    spec = config.loss_for("train_datasets", "a")
    assert (spec.name, spec.kwargs) == ("MultipleNegativesRankingLoss", {"scale": 30})


def test_a_set_with_its_own_loss_does_not_take_the_top_level_kwargs():
    config = make(train_datasets={"sts": {"data": STSB_TRAIN, "loss": "CoSENTLoss"}}, loss_kwargs={"scale": 30})
    assert config.loss_for("train_datasets", "sts").kwargs == {}


def test_eval_set_defaults_to_the_train_set_loss_of_the_same_name():
    config = make(
        train_datasets={"sts": {"data": STSB_TRAIN, "loss": "CoSENTLoss", "loss_kwargs": {"scale": 10}}},
        eval_datasets={"sts": STSB_TRAIN},
    )
    spec = config.loss_for("eval_datasets", "sts")
    assert (spec.name, spec.kwargs) == ("CoSENTLoss", {"scale": 10})


def test_unknown_loss_lists_close_names():
    with pytest.raises(ConfigError, match="MultipleNegativesRankingLoss"):
        make(loss="MultipleNegativeRankingLoss")


def test_unknown_loss_argument_lists_the_arguments():
    with pytest.raises(ConfigError, match="'scal' is not an argument of MultipleNegativesRankingLoss.*'scale'"):
        make(loss_kwargs={"scal": 20})


def test_no_loss_anywhere_is_an_error():
    with pytest.raises(ConfigError, match="no loss"):
        make(loss=None)


def test_unknown_args_key_suggests_the_name():
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        make(args={"output_dir": "o", "per_device_batch_size": 8})


def test_eval_strategy_without_an_eval_target():
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        make(args={"output_dir": "o", "eval_strategy": "steps"})


def test_eval_steps_without_an_eval_target():
    with pytest.raises(ConfigError, match="eval_steps is set but there is nothing to evaluate"):
        make(args={"output_dir": "o", "eval_steps": 10})


def test_load_best_model_needs_aligned_saves():
    with pytest.raises(ConfigError, match="multiple of"):
        make(
            eval_datasets={"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
            args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 30, "save_steps": 50, "load_best_model_at_end": True},
        )


def test_metric_for_best_model_that_no_evaluator_produces():
    evaluator = {"type": "EmbeddingSimilarityEvaluator", "name": "sts-dev", "data": STSB_TRAIN}
    good = make(evaluators=[evaluator], args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 10,
                                              "metric_for_best_model": "sts-dev_spearman_cosine"})
    assert good.args.best_metric == "eval_sts-dev_spearman_cosine"
    assert good.args.higher_is_better
    with pytest.raises(ConfigError, match="not produced by any evaluation.*eval_sts-dev_"):
        make(evaluators=[evaluator], args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 10,
                                           "metric_for_best_model": "stsdev_spearman_cosine"})


def test_eval_loss_ranks_lower_is_better():
    config = make(
        eval_datasets={"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
        args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 10, "save_steps": 10, "load_best_model_at_end": True},
    )
    assert config.args.best_metric == "eval_loss"
    assert not config.args.higher_is_better


def test_evaluator_for_the_other_model_type():
    with pytest.raises(ConfigError, match="is for a cross_encoder"):
        make(evaluators=[{"type": "CrossEncoderCorrelationEvaluator", "name": "x", "data": STSB_TRAIN}])


def test_fp16_and_bf16_together():
    with pytest.raises(ConfigError, match="choose one"):
        make(args={"output_dir": "o", "fp16": True, "bf16": True})


def test_wrapper_needs_an_inner_loss_and_checks_its_kwargs():
    with pytest.raises(ConfigError, match="wraps another loss"):
        make(loss="MatryoshkaLoss", loss_kwargs={"matryoshka_dims": [32]})
    with pytest.raises(ConfigError, match="'scal' is not an argument of MultipleNegativesRankingLoss"):
        make(loss="MatryoshkaLoss", loss_kwargs={"loss": {"name": "MultipleNegativesRankingLoss", "scal": 1}, "matryoshka_dims": [32]})
    with pytest.raises(ConfigError, match="cannot wrap CachedMultipleNegativesRankingLoss"):
        make(loss="AdaptiveLayerLoss", loss_kwargs={"loss": "CachedMultipleNegativesRankingLoss"})


# --- pre-flight: data against loss, batch against shard ------------------------------------


def test_preflight_counts_rows_and_columns():
    plan = preflight(make())
    assert plan.train["pairs"].columns == ["query", "passage"]
    assert plan.train_rows() == {"pairs": 2000}


def test_preflight_refuses_columns_that_do_not_fit_the_loss():
    config = make(train_datasets={"pairs": {"data": DEBIAN_TRAIN, "loss": "CoSENTLoss"}})
    with pytest.raises(DataError, match="train 'pairs'.*CoSENTLoss needs"):
        preflight(config)


def test_preflight_refuses_num_labels_that_do_not_fit_the_loss():
    config = make(
        model={"name": "sentence-transformers/all-MiniLM-L6-v2", "type": "cross_encoder", "num_labels": 3},
        train_datasets={"pairs": {"data": {"path": STSB_TRAIN, "rename": {"score": "label"}}}},
        loss="BinaryCrossEntropyLoss",
    )
    with pytest.raises(ConfigError, match="num_labels == 1"):
        preflight(config)


def test_softmax_needs_num_labels():
    with pytest.raises(ConfigError, match="SoftmaxLoss needs num_labels"):
        make(train_datasets={"pairs": {"data": STSB_TRAIN, "loss": "SoftmaxLoss"}})


def test_preflight_refuses_a_batch_larger_than_a_worker_shard():
    config = make(
        train_datasets={"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"], "limit": 100}}},
        scaling={"num_workers": 4},
        args={"output_dir": "o", "per_device_train_batch_size": 32},
    )
    with pytest.raises(DataError, match="25 per worker with 4 workers, fewer than per_device_train_batch_size=32"):
        preflight(config)


def test_preflight_reports_a_missing_source():
    config = make(train_datasets={"pairs": "/nonexistent/data.parquet"})
    with pytest.raises(DataError, match="does not exist"):
        preflight(config)


def test_total_steps_from_epochs_and_accumulation():
    args = make(args={"output_dir": "o", "num_train_epochs": 1.5, "gradient_accumulation_steps": 4}).args
    assert total_optimizer_steps(args, micro_batches_per_epoch=10) == 5  # 3 steps per epoch x 1.5, rounded up
    args = make(args={"output_dir": "o", "max_steps": 7}).args
    assert total_optimizer_steps(args, micro_batches_per_epoch=10) == 7


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "examples", "configs", "train-*.yaml"))), ids=os.path.basename)
def test_every_shipped_train_config_loads(path):
    config = load_config(TrainConfig, path)
    assert config.args.output_dir
    for name in config.train_datasets:
        config.loss_for("train_datasets", name)
