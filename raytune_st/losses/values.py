"""Which values a loss can train on: texts in every input cell, labels it can take.

:mod:`raytune_st.losses.formats` checks a data set's columns and their types; this module
checks the values, one Arrow array at a time, so that a bad row is named before training
rather than failing deep inside a loss hours in (``IndexError: Target 3 is out of bounds``)
or silently turning every loss into NaN.

What is refused, from the losses' docstrings and forward code in sentence-transformers 6.2:

- a null input cell (the collator raises "Unsupported input type: NoneType");
- a NaN or infinite number in any numeric label, or in a list label (it makes the loss NaN);
- a class id outside ``[0, num_labels)`` (SoftmaxLoss, the cross-encoder CrossEntropyLoss);
- a binary label other than 0 or 1 (ContrastiveLoss, OnlineContrastiveLoss);
- a score outside ``[0, 1]`` where the loss is a regression or cross-entropy onto that
  range: CosineSimilarityLoss with its default transformation and MSE ("Input pairs with
  corresponding similarity scores in range [0, 1]"), and BinaryCrossEntropyLoss.

CoSENTLoss and AnglELoss only compare labels with each other (they sort them), so any
finite scale is valid (STS-B's 0-5 trains the same as 0-1); only NaN and infinity are refused.

Example::

    1. rule = label_rule(get_format("SoftmaxLoss", "bi_encoder"), {"num_labels": 3}, num_labels=3)
    2. first_bad_label(pa.array([0, 2, 3]), rule) -> (2, "3, outside [0, 3)")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from raytune_st.losses.formats import LossFormat

# Losses whose label is a regression (or cross-entropy) target in [0, 1], with the keyword
# arguments that change what the label is compared with.
_UNIT_RANGE = {
    ("bi_encoder", "CosineSimilarityLoss"): ("cos_score_transformation", "loss_fct"),
    ("cross_encoder", "BinaryCrossEntropyLoss"): ("activation_fn",),
}


@dataclass(frozen=True)
class LabelRule:
    """What every value of a label column must be."""

    classes: Optional[int] = None  # integer class ids in [0, classes)
    low: Optional[float] = None  # scores within [low, high]
    high: Optional[float] = None
    binary: bool = False  # exactly 0 or 1
    expected: str = "a finite number"  # how to say it in a message


def label_rule(fmt: LossFormat, kwargs: dict[str, Any], num_labels: Optional[int]) -> LabelRule:
    """The rule for `fmt`'s label, given the loss's kwargs and its (or the model's) num_labels."""
    if fmt.label_kind in ("class", "class_or_probs") and num_labels is not None and (
        fmt.needs_num_labels or fmt.model_type == "cross_encoder"
    ):
        return LabelRule(classes=num_labels, expected=f"an integer class id in [0, {num_labels})")
    if fmt.label_kind == "binary":
        return LabelRule(binary=True, expected="0 or 1")
    settings = _UNIT_RANGE.get((fmt.model_type, fmt.name))
    if settings is not None and not any(kwargs.get(key) is not None for key in settings):
        return LabelRule(low=0.0, high=1.0, expected="a score in [0, 1]")
    return LabelRule()


def first_null(array: Any) -> Optional[int]:
    """The index of the first null in an Arrow array, or None."""
    import pyarrow.compute as pc

    if array.null_count == 0:
        return None
    return int(pc.index(pc.is_null(array), True).as_py())


def first_bad_label(array: Any, rule: LabelRule) -> Optional[tuple[int, str]]:
    """(index, what is wrong) of the first label in `array` that breaks `rule`, or None.

    List labels (teacher scores, embeddings) are checked element by element for NaN and
    infinity; a null label counts as bad.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    null = first_null(array)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        values = pc.list_flatten(array)
        if pa.types.is_floating(values.type):
            bad = pc.invert(pc.is_finite(values))
            if pc.any(bad).as_py():
                position = pc.index(bad, True).as_py()
                row = int(pc.list_parent_indices(array)[position].as_py())
                if null is None or row < null:
                    return row, f"a list holding {values[position].as_py()}"
        return (null, "null") if null is not None else None
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        return (null, "null") if null is not None else None
    numbers = array.cast(pa.float64())
    checks = [pc.invert(pc.is_finite(numbers))]
    if rule.classes is not None:
        checks += [pc.less(numbers, 0), pc.greater_equal(numbers, rule.classes), pc.not_equal(numbers, pc.floor(numbers))]
    if rule.binary:
        checks.append(pc.and_(pc.not_equal(numbers, 0), pc.not_equal(numbers, 1)))
    if rule.low is not None:
        checks += [pc.less(numbers, rule.low), pc.greater(numbers, rule.high)]
    bad = checks[0]
    for check in checks[1:]:
        bad = pc.or_(bad, check)
    bad = pc.fill_null(bad, True)  # a null label is bad too
    if not pc.any(bad).as_py():
        return None
    row = int(pc.index(bad, True).as_py())
    value = array[row].as_py()
    if value is None:
        return row, "null"
    if isinstance(value, float) and not math.isfinite(value):
        return row, str(value)  # nan, inf, -inf
    if isinstance(value, float) and value.is_integer() and (rule.classes is not None or rule.binary):
        value = int(value)  # a class id read from CSV or JSON as a float
    if rule.classes is not None:
        return row, f"{value!r}, outside [0, {rule.classes})"
    if rule.low is not None:
        return row, f"{value!r}, outside [{rule.low:g}, {rule.high:g}]"
    return row, repr(value)
