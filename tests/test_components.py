"""A user's own losses, evaluators and model factories named by import path: every check made
before a worker starts, and the objects built from them. No Ray; the user's module is
tests/user_project/my_project."""

from __future__ import annotations

import os
import warnings

import pytest

from raytune_st.components import (
    build_custom_evaluator,
    build_custom_loss,
    check_loss,
    import_object,
    is_import_path,
)
from raytune_st.config.core import build
from raytune_st.errors import ConfigError, DataError, RaytuneWarning

PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_project")
DEBIAN_TRAIN = os.path.join(os.path.dirname(PROJECT), "..", "examples", "data", "debian-train-sample.parquet")


@pytest.fixture(autouse=True)
def user_project(monkeypatch):
    monkeypatch.syspath_prepend(PROJECT)


def train_config(**sections):
    from raytune_st.train.config import TrainConfig

    data = {
        "model": "some/model",
        "train_datasets": {"pairs": DEBIAN_TRAIN},
        "args": {"output_dir": "out"},
        "loss": "MultipleNegativesRankingLoss",
        **sections,
    }
    return build(TrainConfig, data)


def test_import_paths_are_module_colon_name():
    assert is_import_path("my_project.losses:MarginLoss")
    assert is_import_path("pkg:Outer.Inner")
    for value in ("MarginLoss", "my_project.losses.MarginLoss", "a:b:c", ":X", "x:", None, 3):
        assert not is_import_path(value)


def test_an_import_path_that_does_not_import_or_names_nothing_says_which():
    with pytest.raises(ConfigError, match=r"loss 'my_projekt.losses:MarginLoss': module 'my_projekt.losses' does not import.*--working-dir"):
        import_object("my_projekt.losses:MarginLoss", what="loss")
    with pytest.raises(ConfigError, match=r"my_project.losses has no 'MarginLos' \(did you mean 'MarginLoss'.*; check the name after ':'"):
        import_object("my_project.losses:MarginLos", what="loss")


def test_a_module_in_the_working_directory_imports(tmp_path, monkeypatch):
    import sys

    (tmp_path / "cwd_project_ab12.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert import_object("cwd_project_ab12:VALUE", what="x") == 7


def test_a_loss_class_or_factory_is_checked_against_its_signature():
    assert check_loss("my_project.losses:MarginLoss", {"margin": 0.5}, where="loss").__name__ == "MarginLoss"
    assert callable(check_loss("my_project.losses:margin_loss", {}, where="loss"))
    with pytest.raises(ConfigError, match=r"loss: loss 'my_project.losses:MarginLoss': 'margn' is not an argument of MarginLoss \(did you mean 'margin'\?\); it takes margin"):
        check_loss("my_project.losses:MarginLoss", {"margn": 0.5}, where="loss")
    with pytest.raises(ConfigError, match="'scale' is not an argument of margin_loss; it takes margin"):
        check_loss("my_project.losses:margin_loss", {"scale": 2}, where="loss")


@pytest.mark.parametrize(
    "path, message",
    [
        ("my_project.losses:NotAModule", "is a class but not a torch.nn.Module"),
        ("my_project.losses:ForwardTakesOne", r"its forward takes 1 argument\(s\); the training loop calls loss\(features, labels\)"),
        ("my_project.evaluation:MeanPairSimilarity.__doc__", "names a NoneType, not a loss class or a function model -> loss"),
    ],
)
def test_what_is_not_a_loss_is_refused_by_its_shape(path, message):
    with pytest.raises(ConfigError, match=message):
        check_loss(path, {}, where="loss")


def test_a_factory_that_returns_no_loss_is_refused_when_built(tiny_bert_dir):
    from raytune_st.models.config import ModelConfig

    model = ModelConfig(name=tiny_bert_dir).load(device="cpu")
    with pytest.raises(ConfigError, match=r"loss 'my_project.losses:not_a_loss' returned a str, not a loss"):
        build_custom_loss("my_project.losses:not_a_loss", {}, model)
    loss = build_custom_loss("my_project.losses:margin_loss", {"margin": 0.3}, model)
    assert loss.margin == 0.3 and loss.model is model


def test_the_train_job_calls_loss_factories_before_any_worker(tiny_bert_dir):
    from raytune_st.train.job import check_loss_factories

    check_loss_factories(train_config(model=tiny_bert_dir, loss="my_project.losses:margin_loss"))
    with pytest.raises(ConfigError, match="returned a str, not a loss"):
        check_loss_factories(train_config(model=tiny_bert_dir, loss="my_project.losses:not_a_loss"))


def test_a_custom_loss_in_the_train_config_is_checked_when_the_config_is_built():
    config = train_config(loss="my_project.losses:MarginLoss", loss_kwargs={"margin": 0.1})
    assert config.loss_for("train_datasets", "pairs").name == "my_project.losses:MarginLoss"
    with pytest.raises(ConfigError, match=r"train_datasets.pairs: loss 'my_project.losses:MarginLoss': 'scale' is not an argument of MarginLoss"):
        train_config(loss="my_project.losses:MarginLoss", loss_kwargs={"scale": 20})
    with pytest.raises(ConfigError, match="module 'nowhere' does not import"):
        train_config(loss="nowhere:Loss")


def test_a_wrapper_takes_a_custom_inner_loss_with_its_declared_columns(tiny_bert_dir):
    import torch
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    from raytune_st.losses.build import build_loss
    from raytune_st.losses.formats import resolve_format
    from raytune_st.models.config import ModelConfig
    from my_project.losses import MarginLoss

    wrapped = {"loss": {"name": "my_project.losses:MarginLoss", "margin": 0.3}, "matryoshka_dims": [32, 16]}
    config = train_config(loss="MatryoshkaLoss", loss_kwargs=wrapped)
    spec = config.loss_for("train_datasets", "pairs")
    assert resolve_format(spec.name, "bi_encoder", spec.inner_name).name == "MultipleNegativesRankingLoss"
    assert resolve_format("MatryoshkaLoss", "bi_encoder", "my_project.losses:UndeclaredMarginLoss") is None
    with pytest.raises(ConfigError, match="AdaptiveLayerLoss cannot wrap my_project.losses:CachedStyleLoss, which declares the inputs of CachedMultipleNegativesRankingLoss"):
        resolve_format("AdaptiveLayerLoss", "bi_encoder", "my_project.losses:CachedStyleLoss")
    model = ModelConfig(name=tiny_bert_dir).load(device="cpu")
    loss = build_loss("MatryoshkaLoss", wrapped, model)
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.loss, MarginLoss) and loss.loss.margin == 0.3
    features = [model.tokenize([f"text {i}" for i in range(4)]) for _ in range(2)]
    value = loss(features, torch.tensor([]))
    assert value.ndim == 0 and torch.isfinite(value)
    with pytest.raises(ConfigError, match="'scale' is not an argument of MarginLoss"):
        train_config(loss="MatryoshkaLoss", loss_kwargs={"loss": {"name": "my_project.losses:MarginLoss", "scale": 2}, "matryoshka_dims": [16]})


def test_a_declared_loss_format_checks_the_columns_and_an_undeclared_one_says_once_it_cannot(tmp_path):
    import pandas as pd

    from raytune_st.train.plan import check_dataset

    one_column = tmp_path / "one.parquet"
    pd.DataFrame({"query": ["a", "b"]}).to_parquet(one_column)
    declared = train_config(loss="my_project.losses:MarginLoss", train_datasets={"pairs": str(one_column)})
    with pytest.raises(DataError, match="MultipleNegativesRankingLoss needs"):
        check_dataset(declared, "train_datasets", "pairs")

    undeclared = train_config(loss="my_project.losses:UndeclaredMarginLoss", train_datasets={"pairs": str(one_column)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_dataset(undeclared, "train_datasets", "pairs")
        check_dataset(undeclared, "train_datasets", "pairs")
    said = [str(w.message) for w in caught if issubclass(w.category, RaytuneWarning)]
    assert len(said) == 1
    assert "train 'pairs': the columns ['query'] were not checked against loss 'my_project.losses:UndeclaredMarginLoss'" in said[0]
    assert "loss_format" in said[0]


def test_a_loss_format_that_names_no_builtin_loss_is_refused(monkeypatch):
    import my_project.losses

    monkeypatch.setattr(my_project.losses.MarginLoss, "loss_format", "MarginRankingLoss")
    with pytest.raises(ConfigError, match="'MarginRankingLoss' is not a sentence-transformers bi-encoder loss"):
        train_config(loss="my_project.losses:MarginLoss")


def test_a_custom_evaluator_is_checked_against_its_constructor_and_gets_its_data_as_keyword_arguments(tmp_path):
    import pandas as pd

    from raytune_st.evaluation.config import EvaluatorSpec

    pairs = tmp_path / "pairs.parquet"
    pd.DataFrame({"query": ["q1", "q2"], "passage": ["p1", "p2"]}).to_parquet(pairs)
    extra = tmp_path / "extra.parquet"
    pd.DataFrame({"query": ["q1"], "passage": ["p1"], "package": ["x"]}).to_parquet(extra)
    path = "my_project.evaluation:MeanPairSimilarity"

    spec = build(EvaluatorSpec, {"type": path, "name": "dev", "data": str(pairs), "batch_size": 4})
    assert spec.custom and spec.model_type is None and spec.kwargs == {"batch_size": 4}
    spec.check_data()
    with pytest.raises(ConfigError, match=r"evaluator 'my_project.evaluation:MeanPairSimilarity': 'package' is not an argument of MeanPairSimilarity"):
        build(EvaluatorSpec, {"type": path, "data": str(extra)}).check_data()
    with pytest.raises(ConfigError, match="it needs query, passage"):
        build(EvaluatorSpec, {"type": path}).check_data()
    with pytest.raises(ConfigError, match="'top_k' is not an argument of MeanPairSimilarity"):
        build(EvaluatorSpec, {"type": path, "data": str(pairs), "top_k": 3})
    with pytest.raises(ConfigError, match="not a sentence-transformers evaluator class; subclass"):
        build(EvaluatorSpec, {"type": "my_project.evaluation:NotAnEvaluator"})
    with pytest.raises(ConfigError, match="corpus, queries and qrels are for InformationRetrievalEvaluator"):
        build(EvaluatorSpec, {"type": path, "data": str(pairs), "corpus": [str(pairs)]})

    evaluator = build_custom_evaluator(path, "dev", {"query": ["q"], "passage": ["p"]}, {"batch_size": 2})
    assert (evaluator.name, evaluator.query, evaluator.passage, evaluator.batch_size) == ("dev", ["q"], ["p"], 2)


def test_metric_for_best_model_may_name_a_custom_evaluators_metric_by_its_prefix(tmp_path):
    evaluator = {"type": "my_project.evaluation:MeanPairSimilarity", "name": "dev", "data": DEBIAN_TRAIN}
    args = {"output_dir": "out", "eval_strategy": "steps", "eval_steps": 5, "save_steps": 5, "load_best_model_at_end": True}
    config = train_config(evaluators=[evaluator], args={**args, "metric_for_best_model": "dev_mean_similarity"})
    assert config.open_metric_prefixes() == ["eval_dev_"]
    with pytest.raises(ConfigError, match="'other_mean_similarity' is not reported"):
        train_config(evaluators=[evaluator], args={**args, "metric_for_best_model": "other_mean_similarity"})


def test_the_loop_refuses_a_best_metric_the_first_evaluation_did_not_report():
    from raytune_st.train.steps import check_metric_reported

    check_metric_reported("eval_dev_mean_similarity", {"eval_dev_mean_similarity": 0.5, "loss": 1.0})
    with pytest.raises(ConfigError, match="args.metric_for_best_model 'eval_dev_recall' was not reported by the evaluation, which reported eval_dev_mean_similarity"):
        check_metric_reported("eval_dev_recall", {"eval_dev_mean_similarity": 0.5, "loss": 1.0})
    with pytest.raises(ConfigError, match="search.metric 'eval_dev_recall' was not reported .*; set search.metric to one of them"):
        check_metric_reported("eval_dev_recall", {"eval_dev_mean_similarity": 0.5}, key="search.metric")


def test_a_model_factory_builds_the_model_with_its_keyword_arguments(tiny_bert_dir):
    from raytune_st.models.config import ModelConfig

    config = build(ModelConfig, {"factory": "my_project.models:with_dense", "kwargs": {"base": tiny_bert_dir, "dim": 16}, "max_seq_length": 24})
    model = config.load(device="cpu")
    assert model.get_embedding_dimension() == 16 and model.max_seq_length == 24
    # The factory adds a randomly initialised Dense layer: every process that builds it gets the same one.
    again = config.load(device="cpu")
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert config.identity.startswith(f"my_project.models:with_dense({{\"base\": \"{tiny_bert_dir}\", \"dim\": 16}})#")


@pytest.mark.parametrize(
    "section, message",
    [
        ({}, "set name .* or factory .*, one of them"),
        ({"name": "m", "factory": "my_project.models:with_dense"}, "not both"),
        ({"name": "m", "kwargs": {"dim": 3}}, "model.kwargs are the factory's arguments; set model.factory"),
        ({"factory": "my_project.models.with_dense"}, "expected module.path:function"),
        ({"factory": "my_project.models:with_dense", "kwargs": {"dims": 3}}, "'dims' is not an argument of with_dense \\(did you mean 'dim'\\?\\); it takes base, dim"),
        ({"factory": "my_project.models:with_dense"}, "it needs base"),
        ({"factory": "my_project.evaluation:MeanPairSimilarity"}, "is not a function"),
    ],
)
def test_a_model_section_with_a_bad_factory_is_refused(section, message):
    from raytune_st.models.config import ModelConfig

    with pytest.raises(ConfigError, match=message):
        build(ModelConfig, section)


def test_a_factory_that_returns_no_model_is_refused(tiny_bert_dir):
    from raytune_st.models.config import ModelConfig

    config = build(ModelConfig, {"factory": "my_project.models:not_a_model", "kwargs": {"base": tiny_bert_dir}})
    with pytest.raises(ConfigError, match="returned a str; model.type bi_encoder needs a SentenceTransformer"):
        config.load(device="cpu")
