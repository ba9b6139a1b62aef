"""Label and text values against a loss's rules, on Arrow arrays. No Ray."""

import math

import pyarrow as pa
import pytest

from raytune_st.losses.formats import get_format
from raytune_st.losses.values import LabelRule, first_bad_label, first_null, label_rule


def test_first_null_is_the_row_of_the_first_missing_text():
    assert first_null(pa.array(["a", "b"])) is None
    assert first_null(pa.array(["a", None, "c", None])) == 1


@pytest.mark.parametrize(
    "loss,model_type,kwargs,num_labels,expected",
    [
        ("SoftmaxLoss", "bi_encoder", {"num_labels": 3}, 3, LabelRule(classes=3, expected="an integer class id in [0, 3)")),
        ("CrossEntropyLoss", "cross_encoder", {}, 4, LabelRule(classes=4, expected="an integer class id in [0, 4)")),
        ("ContrastiveLoss", "bi_encoder", {}, None, LabelRule(binary=True, expected="0 or 1")),
        ("CosineSimilarityLoss", "bi_encoder", {}, None, LabelRule(low=0.0, high=1.0, expected="a score in [0, 1]")),
        ("CosineSimilarityLoss", "bi_encoder", {"cos_score_transformation": "Tanh"}, None, LabelRule()),
        ("BinaryCrossEntropyLoss", "cross_encoder", {}, 1, LabelRule(low=0.0, high=1.0, expected="a score in [0, 1]")),
        # CoSENT and AnglE compare labels with each other only: any finite scale trains the same.
        ("CoSENTLoss", "bi_encoder", {}, None, LabelRule()),
        ("AnglELoss", "bi_encoder", {}, None, LabelRule()),
        ("BatchHardTripletLoss", "bi_encoder", {}, None, LabelRule()),
    ],
)
def test_label_rules_follow_the_loss(loss, model_type, kwargs, num_labels, expected):
    assert label_rule(get_format(loss, model_type), kwargs, num_labels) == expected


def test_class_ids_outside_the_loss_outputs_are_found():
    rule = LabelRule(classes=3)
    assert first_bad_label(pa.array([0, 1, 2, 2]), rule) is None
    assert first_bad_label(pa.array([0, 2, 3, -1]), rule) == (2, "3, outside [0, 3)")
    assert first_bad_label(pa.array([0, -1]), rule) == (1, "-1, outside [0, 3)")


def test_scores_that_are_nan_infinite_or_out_of_range_are_found():
    assert first_bad_label(pa.array([0.5, math.nan]), LabelRule()) == (1, "nan")
    assert first_bad_label(pa.array([0.5, 2.0, -math.inf]), LabelRule()) == (2, "-inf")
    assert first_bad_label(pa.array([0.5, 1.5]), LabelRule(low=0.0, high=1.0)) == (1, "1.5, outside [0, 1]")
    assert first_bad_label(pa.array([0.5, None]), LabelRule()) == (1, "null")
    assert first_bad_label(pa.array([1, 0, 2]), LabelRule(binary=True)) == (2, "2")
    assert first_bad_label(pa.array([4.5, -3.0]), LabelRule()) is None


def test_list_labels_are_checked_element_by_element():
    assert first_bad_label(pa.array([[0.1, 0.2], [0.3]]), LabelRule()) is None
    assert first_bad_label(pa.array([[0.1, 0.2], [0.3, math.nan]]), LabelRule()) == (1, "a list holding nan")
