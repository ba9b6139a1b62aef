"""Tests for raytune_st.losses.formats: the loss column table and the data-set check."""

from __future__ import annotations

import inspect
import warnings

import pytest

from raytune_st.errors import ConfigError, DataError
from raytune_st.losses import (
    LABEL_COLUMNS,
    LOSS_FORMATS,
    check_dataset_for_loss,
    is_in_batch_negatives_loss,
    resolve_format,
    resolve_loss_class,
    split_columns,
)

# nn.Module subclasses exported next to the losses that are parts of a loss, not losses.
HELPER_MODULES = {
    "cross_encoder": {
        "NoWeightingScheme",
        "NDCGLoss1Scheme",
        "NDCGLoss2Scheme",
        "LambdaRankScheme",
        "NDCGLoss2PPScheme",
        "PListMLELambdaWeight",
    },
    "bi_encoder": set(),
}


def _installed_losses(model_type: str) -> set[str]:
    from torch import nn

    if model_type == "bi_encoder":
        from sentence_transformers.sentence_transformer import losses
    else:
        from sentence_transformers.cross_encoder import losses
    return {
        name
        for name in losses.__all__
        if inspect.isclass(getattr(losses, name)) and issubclass(getattr(losses, name), nn.Module)
    }


# --- the table covers the installed sentence-transformers -----------------------------------


@pytest.mark.parametrize("model_type", ["bi_encoder", "cross_encoder"])
def test_every_installed_loss_has_a_format(model_type):
    installed = _installed_losses(model_type) - HELPER_MODULES[model_type]
    in_table = {name for (mt, name) in LOSS_FORMATS if mt == model_type}
    assert installed - in_table == set(), "new sentence-transformers losses: add them to LOSS_FORMATS"
    assert in_table - installed == set(), "LOSS_FORMATS names losses sentence-transformers no longer has"


@pytest.mark.parametrize("model_type", ["bi_encoder", "cross_encoder"])
def test_helper_modules_are_not_losses(model_type):
    # If one of these disappears the HELPER_MODULES list is stale; if it became a loss, it needs a format.
    assert HELPER_MODULES[model_type] <= _installed_losses(model_type)


@pytest.mark.parametrize("key", sorted(LOSS_FORMATS))
def test_resolve_loss_class_returns_the_installed_class(key):
    model_type, name = key
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cls = resolve_loss_class(name, model_type)
    assert cls.__name__ == name


def test_label_columns_match_the_collator():
    from sentence_transformers.base.data_collator import DEFAULT_LABEL_COLUMNS

    assert LABEL_COLUMNS["bi_encoder"] == DEFAULT_LABEL_COLUMNS
    assert LABEL_COLUMNS["cross_encoder"] == DEFAULT_LABEL_COLUMNS


# --- label-column detection --------------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "model_type", "inputs", "label"),
    [
        (["anchor", "positive"], "bi_encoder", ["anchor", "positive"], None),
        (["s1", "s2", "score"], "bi_encoder", ["s1", "s2"], "score"),
        (["label", "s1", "s2"], "bi_encoder", ["s1", "s2"], "label"),
        (["query", "docs", "labels"], "cross_encoder", ["query", "docs"], "labels"),
        (["q", "p", "scores"], "cross_encoder", ["q", "p"], "scores"),
        (["q", "p", "dataset_name"], "bi_encoder", ["q", "p"], None),
        # Only the exact names count: 'Label' and 'gold_score' are text inputs to the collator.
        (["q", "Label", "gold_score"], "bi_encoder", ["q", "Label", "gold_score"], None),
    ],
)
def test_split_columns(columns, model_type, inputs, label):
    assert split_columns(columns, model_type) == (inputs, label)


def test_split_columns_refuses_two_label_columns():
    with pytest.raises(DataError) as err:
        split_columns(["q", "p", "score", "label"], "bi_encoder")
    message = str(err.value)
    assert "['score', 'label']" in message
    assert "would take 'label' as the label" in message  # the collator's order, not the column order
    assert "`columns:`" in message


def test_split_columns_refuses_an_unknown_model_type():
    with pytest.raises(ConfigError, match="did you mean 'bi_encoder'"):
        split_columns(["q"], "bi-encoder")


# --- valid and invalid column sets, one representative loss of every kind ----------------

S, F, I, LS, LF = "string", "float", "int", "list<string>", "list<float>"

VALID = [
    # in-batch negatives: pairs, triplets, n-tuples, no label
    ("bi_encoder", "MultipleNegativesRankingLoss", ["anchor", "positive"], {}, {}),
    ("bi_encoder", "MultipleNegativesRankingLoss", ["anchor", "positive", "negative"], {}, {}),
    ("bi_encoder", "MultipleNegativesRankingLoss", ["a", "p", "n1", "n2", "n3"], {}, {}),
    ("bi_encoder", "GISTEmbedLoss", ["a", "p", "n"], {}, {}),
    ("bi_encoder", "MegaBatchMarginLoss", ["a", "p"], {}, {}),
    # float similarity score
    ("bi_encoder", "CoSENTLoss", ["s1", "s2", "score"], {"s1": S, "s2": S, "score": F}, {}),
    ("bi_encoder", "CoSENTLoss", ["s1", "s2", "score"], {"score": "int64"}, {}),
    ("bi_encoder", "AnglELoss", ["s1", "s2", "label"], {"label": "float32"}, {}),
    ("bi_encoder", "AnglELoss", ["a", "p", "n"], {}, {}),  # n-tuples need no score
    ("bi_encoder", "CosineSimilarityLoss", ["s1", "s2", "score"], {"score": "double"}, {}),
    # classes
    ("bi_encoder", "SoftmaxLoss", ["premise", "hypothesis", "label"], {"label": I}, {"num_labels": 3}),
    ("bi_encoder", "SoftmaxLoss", ["premise", "hypothesis", "label"], {"label": LF}, {"num_labels": 3}),
    ("bi_encoder", "BatchAllTripletLoss", ["text", "label"], {"text": S, "label": I}, {}),
    # binary label
    ("bi_encoder", "ContrastiveLoss", ["s1", "s2", "label"], {"label": I}, {}),
    ("bi_encoder", "OnlineContrastiveLoss", ["s1", "s2", "label"], {"label": "bool"}, {}),
    # exactly three
    ("bi_encoder", "TripletLoss", ["anchor", "positive", "negative"], {}, {}),
    # distillation
    ("bi_encoder", "MSELoss", ["english", "label"], {"label": LF}, {}),
    ("bi_encoder", "MSELoss", ["en", "de", "fr", "label"], {"label": "list<list<float32>>"}, {}),
    ("bi_encoder", "MarginMSELoss", ["q", "pos", "neg", "score"], {"score": F}, {}),
    ("bi_encoder", "MarginMSELoss", ["q", "pos", "n1", "n2", "scores"], {"scores": LF}, {}),
    ("bi_encoder", "DistillKLDivLoss", ["q", "pos", "neg", "label"], {"label": LF}, {}),
    # unsupervised
    ("bi_encoder", "DenoisingAutoEncoderLoss", ["damaged", "original"], {}, {}),
    ("bi_encoder", "ContrastiveTensionLossInBatchNegatives", ["text"], {}, {}),
    ("bi_encoder", "ContrastiveTensionLoss", ["s1", "s2"], {}, {}),
    # cross-encoders
    ("cross_encoder", "BinaryCrossEntropyLoss", ["q", "p", "label"], {"label": I}, {"num_labels": 1}),
    ("cross_encoder", "BinaryCrossEntropyLoss", ["q", "p", "score"], {"score": F}, {}),
    ("cross_encoder", "CrossEntropyLoss", ["s1", "s2", "label"], {"label": I}, {"num_labels": 3}),
    ("cross_encoder", "MSELoss", ["q", "p", "score"], {"score": F}, {"num_labels": 1}),
    ("cross_encoder", "MarginMSELoss", ["q", "p", "n", "score"], {"score": F}, {}),
    ("cross_encoder", "LambdaLoss", ["query", "docs", "labels"], {"query": S, "docs": LS, "labels": LF}, {}),
    ("cross_encoder", "ListNetLoss", ["query", "docs", "labels"], {"labels": "list<int64>"}, {"num_labels": 1}),
    ("cross_encoder", "MultipleNegativesRankingLoss", ["q", "p"], {}, {"num_labels": 1}),
    ("cross_encoder", "MultipleNegativesRankingLoss", ["q", "p", "n1", "n2"], {}, {}),
    # wrappers take their inner loss's columns
    ("bi_encoder", "MatryoshkaLoss", ["a", "p"], {}, {"inner_loss": "MultipleNegativesRankingLoss"}),
    ("bi_encoder", "MatryoshkaLoss", ["s1", "s2", "score"], {"score": F}, {"inner_loss": "CoSENTLoss"}),
    ("bi_encoder", "AdaptiveLayerLoss", ["a", "p", "n"], {}, {"inner_loss": "TripletLoss"}),
]


@pytest.mark.parametrize(("model_type", "loss", "columns", "types", "kwargs"), VALID)
def test_valid_columns_pass(model_type, loss, columns, types, kwargs):
    from raytune_st.losses.formats import resolve_format, split_columns

    assert check_dataset_for_loss(columns, loss, model_type, column_types=types or None, **kwargs) is None
    # What was accepted: the inputs fit the resolved format's count, and a label only where it takes one.
    fmt = resolve_format(loss, model_type, kwargs.get("inner_loss"))
    inputs, label = split_columns(columns, model_type)
    assert fmt.min_inputs <= len(inputs) <= (fmt.max_inputs or len(inputs))
    assert (label is None) if fmt.label == "none" else (label is not None or fmt.label == "optional")


INVALID = [
    # (model_type, loss, columns, types, kwargs, text the message must contain)
    ("bi_encoder", "MultipleNegativesRankingLoss", ["text"], {}, {}, "at least 2 expected"),
    ("bi_encoder", "MultipleNegativesRankingLoss", ["a", "p", "score"], {}, {}, "'score', which"),
    ("bi_encoder", "MultipleNegativesRankingLoss", ["a", "p"], {"p": I}, {}, "'p' holds int values, not text"),
    ("bi_encoder", "MultipleNegativesRankingLoss", ["a", "p"], {"a": "null"}, {}, "only null values"),
    ("bi_encoder", "GISTEmbedLoss", ["a", "p", "n1", "n2"], {}, {}, "2 to 3 expected"),
    ("bi_encoder", "MegaBatchMarginLoss", ["a", "p", "n"], {}, {}, "exactly 2 expected"),
    ("bi_encoder", "CoSENTLoss", ["s1", "s2"], {}, {}, "no label column"),
    ("bi_encoder", "CoSENTLoss", ["s1", "s2", "label"], {"label": S}, {}, "holds string values, not a float"),
    ("bi_encoder", "CoSENTLoss", ["a", "p", "n", "score"], {}, {}, "exactly 2 expected"),
    ("bi_encoder", "AnglELoss", ["s1", "s2"], {}, {}, "no label column"),
    ("bi_encoder", "CosineSimilarityLoss", ["s1", "s2", "score"], {"score": LF}, {}, "not a float score in [0, 1]"),
    ("bi_encoder", "SoftmaxLoss", ["p", "h", "label"], {"label": F}, {"num_labels": 3}, "not an integer class id"),
    ("bi_encoder", "SoftmaxLoss", ["p", "h"], {}, {"num_labels": 3}, "no label column"),
    ("bi_encoder", "ContrastiveLoss", ["s1", "s2", "label"], {"label": F}, {}, "not an integer 1 for a positive"),
    ("bi_encoder", "ContrastiveLoss", ["s1", "s2"], {}, {}, "no label column"),
    ("bi_encoder", "TripletLoss", ["a", "p"], {}, {}, "exactly 3 expected"),
    ("bi_encoder", "TripletLoss", ["a", "p", "n1", "n2"], {}, {}, "exactly 3 expected"),
    ("bi_encoder", "TripletLoss", ["a", "p", "n", "label"], {}, {}, "does not use"),
    ("bi_encoder", "BatchHardTripletLoss", ["text", "label"], {"label": F}, {}, "not an integer class id"),
    ("bi_encoder", "BatchHardTripletLoss", ["a", "b", "label"], {}, {}, "exactly 1 expected"),
    ("bi_encoder", "MSELoss", ["text"], {}, {}, "no label column"),
    ("bi_encoder", "MSELoss", ["text", "label"], {"label": F}, {}, "not the teacher's embedding"),
    ("bi_encoder", "MarginMSELoss", ["q", "p", "label"], {}, {}, "at least 3 expected"),
    ("bi_encoder", "MarginMSELoss", ["q", "p", "n1", "n2", "label"], {"label": F}, {}, "needs a list"),
    ("bi_encoder", "DistillKLDivLoss", ["q", "p", "n", "label"], {"label": F}, {}, "not a list of teacher scores"),
    ("bi_encoder", "DenoisingAutoEncoderLoss", ["text"], {}, {}, "noise transform"),
    ("cross_encoder", "BinaryCrossEntropyLoss", ["q", "p"], {}, {}, "no label column"),
    ("cross_encoder", "BinaryCrossEntropyLoss", ["q", "p", "n", "label"], {}, {}, "exactly 2 expected"),
    (
        "cross_encoder",
        "BinaryCrossEntropyLoss",
        ["q", "docs", "labels"],
        {"docs": LS, "labels": LF},
        {},
        "listwise loss such as LambdaLoss",
    ),
    ("cross_encoder", "CrossEntropyLoss", ["s1", "s2", "label"], {"label": F}, {}, "not an integer class id"),
    ("cross_encoder", "LambdaLoss", ["q", "d1", "d2", "labels"], {}, {}, "exactly 2 expected"),
    ("cross_encoder", "LambdaLoss", ["q", "doc", "label"], {"doc": S, "label": F}, {}, "not lists of texts"),
    ("cross_encoder", "ListNetLoss", ["q", "docs", "label"], {"docs": LS, "label": F}, {}, "not a list of relevance"),
    ("cross_encoder", "ListNetLoss", ["q", "docs"], {}, {}, "no label column"),
    ("cross_encoder", "MultipleNegativesRankingLoss", ["q", "p", "label"], {}, {}, "does not use"),
    ("cross_encoder", "MultipleNegativesRankingLoss", ["q"], {}, {}, "at least 2 expected"),
    (
        "bi_encoder",
        "MatryoshkaLoss",
        ["s1", "s2", "score"],
        {},
        {"inner_loss": "MultipleNegativesRankingLoss"},
        "MatryoshkaLoss(MultipleNegativesRankingLoss) needs",
    ),
    ("bi_encoder", "Matryoshka2dLoss", ["a", "p", "n", "x"], {}, {"inner_loss": "TripletLoss"}, "exactly 3"),
]


@pytest.mark.parametrize(("model_type", "loss", "columns", "types", "kwargs", "expected"), INVALID)
def test_invalid_columns_raise_one_actionable_message(model_type, loss, columns, types, kwargs, expected):
    with pytest.raises(DataError) as err:
        check_dataset_for_loss(columns, loss, model_type, column_types=types or None, **kwargs)
    message = str(err.value)
    assert expected in message
    assert str(columns) in message  # what was found
    assert " needs " in message  # what was expected
    assert "`columns:`" in message  # how to fix it


def test_message_names_columns_needs_and_fix():
    with pytest.raises(DataError) as err:
        check_dataset_for_loss(
            ["premise", "hypothesis", "label"],
            "MultipleNegativesRankingLoss",
            "bi_encoder",
            column_types={"premise": S, "hypothesis": S, "label": I},
            dataset="train 'nli'",
        )
    message = str(err.value)
    assert message.startswith("The train 'nli' data set has columns ['premise', 'hypothesis', 'label']")
    assert (
        "MultipleNegativesRankingLoss needs (anchor, positive) or (anchor, positive, negative_1, ..., negative_n) "
        "text columns and no label column"
    ) in message
    assert "leaving out the label column" in message
    # It points to losses the columns fit as they are: an int label on pairs fits ContrastiveLoss.
    assert "ContrastiveLoss" in message.split("as they are:")[1]


def test_message_lists_every_problem_at_once():
    with pytest.raises(DataError) as err:
        check_dataset_for_loss(["a", "b", "c"], "CoSENTLoss", "bi_encoder", column_types={"c": I})
    message = str(err.value)
    assert "exactly 2 expected" in message
    assert "no label column" in message
    assert "'c' holds int values, not text" in message
    assert "`rename:` to name the label column 'label'" in message


def test_listwise_losses_are_only_suggested_for_known_document_lists():
    with pytest.raises(DataError) as err:
        check_dataset_for_loss(["q", "p", "label"], "MultipleNegativesRankingLoss", "cross_encoder")
    suggested = str(err.value).split("as they are:")[1]
    assert "BinaryCrossEntropyLoss" in suggested
    assert "LambdaLoss" not in suggested


# --- num_labels --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "num_labels", "expected"),
    [
        ("BinaryCrossEntropyLoss", 2, "num_labels == 1"),
        ("LambdaLoss", 3, "num_labels == 1"),
        ("MultipleNegativesRankingLoss", 2, "num_labels == 1"),
        ("CrossEntropyLoss", 1, "num_labels >= 2"),
    ],
)
def test_cross_encoder_num_labels_is_checked(loss, num_labels, expected):
    columns = {"LambdaLoss": ["q", "docs", "labels"], "MultipleNegativesRankingLoss": ["q", "p"]}.get(
        loss, ["q", "p", "label"]
    )
    with pytest.raises(ConfigError, match=expected) as err:
        check_dataset_for_loss(columns, loss, "cross_encoder", num_labels=num_labels)
    assert f"num_labels is {num_labels}" in str(err.value)


def test_softmax_loss_needs_num_labels():
    with pytest.raises(ConfigError, match="SoftmaxLoss needs num_labels"):
        check_dataset_for_loss(["p", "h", "label"], "SoftmaxLoss", "bi_encoder")


# --- wrappers ----------------------------------------------------------------------------


def test_wrapper_format_is_the_inner_loss_format():
    inner = resolve_format("MatryoshkaLoss", "bi_encoder", "CoSENTLoss")
    assert inner is LOSS_FORMATS[("bi_encoder", "CoSENTLoss")]


@pytest.mark.parametrize(
    ("loss", "inner", "expected"),
    [
        ("MatryoshkaLoss", None, "name it with inner_loss"),
        ("CoSENTLoss", "TripletLoss", "does not wrap another loss"),
        ("MatryoshkaLoss", "AdaptiveLayerLoss", "itself a wrapper"),
        ("Matryoshka2dLoss", "CachedMultipleNegativesRankingLoss", "cannot wrap"),
        ("AdaptiveLayerLoss", "MegaBatchMarginLoss", "cannot wrap"),
        ("MatryoshkaLoss", "MultipleNegativeRankingLoss", "did you mean 'MultipleNegativesRankingLoss'"),
    ],
)
def test_wrapper_misuse_is_a_config_error(loss, inner, expected):
    with pytest.raises(ConfigError, match=expected):
        check_dataset_for_loss(["a", "p"], loss, "bi_encoder", inner_loss=inner)


def test_matryoshka_may_wrap_cached_losses():
    from raytune_st.losses.formats import resolve_format

    # MatryoshkaLoss decorates the cached losses itself; only the layer-dropping wrappers refuse them.
    check_dataset_for_loss(["a", "p"], "MatryoshkaLoss", "bi_encoder", inner_loss="CachedMultipleNegativesRankingLoss")
    assert resolve_format("MatryoshkaLoss", "bi_encoder", "CachedMultipleNegativesRankingLoss").name == "CachedMultipleNegativesRankingLoss"
    with pytest.raises(ConfigError):
        resolve_format("AdaptiveLayerLoss", "bi_encoder", "CachedMultipleNegativesRankingLoss")


# --- in-batch negatives --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "model_type", "inner", "expected"),
    [
        ("MultipleNegativesRankingLoss", "bi_encoder", None, True),
        ("CachedMultipleNegativesSymmetricRankingLoss", "bi_encoder", None, True),
        ("CachedGISTEmbedLoss", "bi_encoder", None, True),
        ("MegaBatchMarginLoss", "bi_encoder", None, True),
        ("MultipleNegativesRankingLoss", "cross_encoder", None, True),
        ("CoSENTLoss", "bi_encoder", None, False),
        ("TripletLoss", "bi_encoder", None, False),
        ("BinaryCrossEntropyLoss", "cross_encoder", None, False),
        ("MatryoshkaLoss", "bi_encoder", "GISTEmbedLoss", True),
        ("MatryoshkaLoss", "bi_encoder", "CoSENTLoss", False),
    ],
)
def test_is_in_batch_negatives_loss(name, model_type, inner, expected):
    assert is_in_batch_negatives_loss(name, model_type, inner_loss=inner) is expected


# --- unknown names -------------------------------------------------------------------------


def test_unknown_loss_suggests_close_names_and_where_to_look():
    with pytest.raises(ConfigError) as err:
        resolve_loss_class("MultipleNegativeRankingLoss", "bi_encoder")
    message = str(err.value)
    assert "did you mean 'MultipleNegativesRankingLoss'" in message
    assert "LOSS_FORMATS" in message
    assert "https://sbert.net/docs/sentence_transformer/loss_overview.html" in message


def test_loss_of_the_other_model_type_says_so():
    with pytest.raises(ConfigError, match="It is a cross-encoder loss; check the model type"):
        check_dataset_for_loss(["q", "docs", "labels"], "LambdaLoss", "bi_encoder")


def test_checking_imports_neither_torch_nor_sentence_transformers():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from raytune_st.losses import check_dataset_for_loss\n"
        "check_dataset_for_loss(['a', 'p'], 'MultipleNegativesRankingLoss', 'bi_encoder')\n"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
