"""Building sentence-transformers losses by name from YAML kwargs, wrappers included. No Ray."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "train"))

from train_fixtures import make_tiny_models  # noqa: E402  (the train tests' tiny-model builder)
from raytune_st.errors import ConfigError  # noqa: E402
from raytune_st.losses.build import build_loss, check_loss_kwargs  # noqa: E402
from raytune_st.losses.formats import LOSS_FORMATS  # noqa: E402

# The least each loss needs besides the model (what a config must give).
MINIMAL = {
    ("bi_encoder", "SoftmaxLoss"): {"num_labels": 3},
    ("bi_encoder", "MatryoshkaLoss"): {"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [32, 16]},
    ("bi_encoder", "Matryoshka2dLoss"): {"loss": "CoSENTLoss", "matryoshka_dims": [32, 16]},
    ("bi_encoder", "AdaptiveLayerLoss"): {"loss": "MultipleNegativesRankingLoss"},
}
GUIDED = ("GISTEmbedLoss", "CachedGISTEmbedLoss")
# DenoisingAutoEncoderLoss builds a decoder from the encoder's checkpoint name, which a saved
# sentence-transformers directory does not carry; it is checked by name only.
NAME_ONLY = {("bi_encoder", "DenoisingAutoEncoderLoss")}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    bi_dir, ce_dir = make_tiny_models(str(tmp_path_factory.mktemp("loss-models")))
    return {
        "bi_encoder": SentenceTransformer(bi_dir, device="cpu"),
        "cross_encoder": CrossEncoder(ce_dir, device="cpu"),
        "bi_dir": bi_dir,
    }


@pytest.mark.parametrize("model_type,name", sorted(LOSS_FORMATS), ids=lambda v: str(v))
def test_every_loss_in_the_table_builds_by_name(models, model_type, name):
    kwargs = dict(MINIMAL.get((model_type, name), {}))
    if name in GUIDED:
        kwargs["guide"] = models["bi_dir"]
    if (model_type, name) in NAME_ONLY:
        check_loss_kwargs(name, kwargs, model_type)
        return
    loss = build_loss(name, kwargs, models[model_type], model_type)
    assert type(loss).__name__ == name


def test_wrapper_builds_its_inner_loss_with_kwargs(models):
    loss = build_loss(
        "MatryoshkaLoss",
        {"loss": {"name": "MultipleNegativesRankingLoss", "scale": 7}, "matryoshka_dims": [32, 16]},
        models["bi_encoder"],
    )
    assert type(loss.loss).__name__ == "MultipleNegativesRankingLoss"
    assert loss.loss.scale == 7
    assert list(loss.matryoshka_dims) == [32, 16]


def test_adaptive_layer_wraps_an_inner_loss(models):
    loss = build_loss("AdaptiveLayerLoss", {"loss": "CoSENTLoss", "n_layers_per_step": 1}, models["bi_encoder"])
    assert type(loss.loss).__name__ == "CoSENTLoss"


def test_cached_loss_takes_mini_batch_size(models):
    loss = build_loss("CachedMultipleNegativesRankingLoss", {"mini_batch_size": 4}, models["bi_encoder"])
    assert loss.mini_batch_size == 4
    ce = build_loss("CachedMultipleNegativesRankingLoss", {"mini_batch_size": 2, "num_negatives": 1}, models["cross_encoder"], "cross_encoder")
    assert ce.mini_batch_size == 2


def test_gist_loads_its_guide_model_frozen(models):
    loss = build_loss("GISTEmbedLoss", {"guide": models["bi_dir"]}, models["bi_encoder"])
    assert type(loss.guide).__name__ == "SentenceTransformer"
    assert not any(p.requires_grad for p in loss.guide.parameters())
    with pytest.raises(ConfigError, match="guide must be a model reference"):
        check_loss_kwargs("GISTEmbedLoss", {"guide": 3}, "bi_encoder")


def test_softmax_gets_the_embedding_dimension_from_the_model(models):
    loss = build_loss("SoftmaxLoss", {"num_labels": 3}, models["bi_encoder"])
    assert loss.classifier.in_features == 3 * 32  # u, v, |u - v|
    assert loss.classifier.out_features == 3


def test_bce_pos_weight_becomes_a_tensor(models):
    import torch

    loss = build_loss("BinaryCrossEntropyLoss", {"pos_weight": 5}, models["cross_encoder"], "cross_encoder")
    assert isinstance(loss.pos_weight, torch.Tensor)
    assert float(loss.pos_weight) == 5.0


def test_yaml_strings_become_functions_enums_and_modules(models):
    import torch
    from sentence_transformers import util
    from sentence_transformers.sentence_transformer.losses import SiameseDistanceMetric, TripletDistanceMetric

    mnrl = build_loss("MultipleNegativesRankingLoss", {"similarity_fct": "dot_score"}, models["bi_encoder"])
    assert mnrl.similarity_fct is util.dot_score
    assert build_loss("TripletLoss", {"distance_metric": "COSINE"}, models["bi_encoder"]).distance_metric == TripletDistanceMetric.COSINE
    contrastive = build_loss("ContrastiveLoss", {"distance_metric": "EUCLIDEAN"}, models["bi_encoder"])
    assert contrastive.distance_metric == SiameseDistanceMetric.EUCLIDEAN
    bce = build_loss("BinaryCrossEntropyLoss", {"activation_fn": "Sigmoid"}, models["cross_encoder"], "cross_encoder")
    assert isinstance(bce.activation_fn, torch.nn.Sigmoid)
    with pytest.raises(ConfigError, match="similarity_fct 'cosine' is not"):
        build_loss("MultipleNegativesRankingLoss", {"similarity_fct": "cosine"}, models["bi_encoder"])
    with pytest.raises(ConfigError, match="distance_metric 'MANHATTEN'"):
        build_loss("TripletLoss", {"distance_metric": "MANHATTEN"}, models["bi_encoder"])


@pytest.mark.parametrize(
    "name", ["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "GISTEmbedLoss", "CachedGISTEmbedLoss"]
)
def test_gather_across_devices_is_on_with_several_workers_and_switchable(models, name):
    extra = {"guide": models["bi_dir"]} if "GIST" in name else {}
    model = models["bi_encoder"]
    assert build_loss(name, dict(extra), model, world_size=2).gather_across_devices is True
    assert build_loss(name, dict(extra), model, world_size=1).gather_across_devices is False
    switched = build_loss(name, {**extra, "gather_across_devices": False}, model, world_size=2)
    assert switched.gather_across_devices is False


def test_gather_reaches_the_loss_inside_a_wrapper(models):
    loss = build_loss("MatryoshkaLoss", {"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [32]}, models["bi_encoder"], world_size=2)
    assert loss.loss.gather_across_devices is True


def test_losses_without_in_batch_negatives_get_no_gather(models):
    loss = build_loss("CoSENTLoss", {}, models["bi_encoder"], world_size=4)
    assert not hasattr(loss, "gather_across_devices")


def test_built_losses_compute_on_a_batch(models):
    import torch

    model = models["bi_encoder"]

    def features(texts):
        return model.preprocess(texts)

    anchors, positives = ["apt tool", "dpkg tool"], ["package manager", "low level package tool"]
    for name, kwargs in [
        ("MultipleNegativesRankingLoss", {}),
        ("CachedMultipleNegativesRankingLoss", {"mini_batch_size": 1}),
        ("MatryoshkaLoss", {"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [32, 16]}),
    ]:
        value = build_loss(name, kwargs, model)([features(anchors), features(positives)], None)
        assert torch.isfinite(value) and value.requires_grad, name
    softmax = build_loss("SoftmaxLoss", {"num_labels": 2}, model)
    value = softmax([features(anchors), features(positives)], torch.tensor([0, 1]))
    assert torch.isfinite(value)
    bce = build_loss("BinaryCrossEntropyLoss", {"pos_weight": 3}, models["cross_encoder"], "cross_encoder")
    assert torch.isfinite(bce([anchors, positives], torch.tensor([1.0, 0.0])))
