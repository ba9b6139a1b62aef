"""Candidate filtering, range_max and sampling: sentence-transformers' rules on small matrices."""

from __future__ import annotations

import random

import numpy as np
import pytest

from raytune_st.errors import ConfigError
from raytune_st.mining.select import (
    FilterParams,
    candidates_per_query,
    filter_candidates,
    resolve_range_max,
    select_negatives,
    skip_ratios,
)

NONE = FilterParams()


# --- range_max --------------------------------------------------------------------------------


def test_default_range_max_is_range_min_plus_negatives_plus_positives():
    assert resolve_range_max(None, range_min=2, num_negatives=3, max_positives=2, params=NONE) == (
        7,
        ["Setting range_max to 7 based on the provided parameters."],
    )


@pytest.mark.parametrize(
    "params, cross_encoder",
    [
        (FilterParams(absolute_margin=0.1), False),
        (FilterParams(relative_margin=0.05), False),
        (FilterParams(max_score=0.9), False),
        (FilterParams(min_score=0.1), True),
    ],
)
def test_filters_widen_the_default_range_tenfold(params, cross_encoder):
    range_max, _ = resolve_range_max(None, range_min=0, num_negatives=3, max_positives=1, params=params, has_cross_encoder=cross_encoder)
    assert range_max == 31


def test_min_score_alone_does_not_widen_the_range_without_a_cross_encoder():
    assert resolve_range_max(None, range_min=0, num_negatives=3, max_positives=1, params=FilterParams(min_score=0.1))[0] == 4


def test_explicit_range_max_prints_nothing():
    assert resolve_range_max(9, range_min=0, num_negatives=3, max_positives=5, params=NONE) == (9, [])


def test_the_search_leaves_room_for_the_positives_and_the_query_itself():
    assert candidates_per_query(7, 2) == 10


def test_gpu_index_caps_the_default_and_refuses_an_explicit_range_over_2048():
    range_max, lines = resolve_range_max(
        None, range_min=0, num_negatives=300, max_positives=2, params=FilterParams(max_score=0.9), gpu_index=True
    )
    assert range_max == 2045 and "Setting range_max to 2045" in lines[0]
    assert resolve_range_max(2045, range_min=0, num_negatives=3, max_positives=2, params=NONE, gpu_index=True)[0] == 2045
    with pytest.raises(ConfigError, match="lower mine.range_max to 2045"):
        resolve_range_max(2046, range_min=0, num_negatives=3, max_positives=2, params=NONE, gpu_index=True)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(range_max=5, range_min=5, num_negatives=1), "range_min must be smaller"),
        (dict(range_max=6, range_min=4, num_negatives=3), "cannot mine 3 negatives"),
        (dict(range_max=None, range_min=-1, num_negatives=3), "non-negative"),
        (dict(range_max=None, range_min=0, num_negatives=0), "at least 1"),
    ],
)
def test_impossible_ranges_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        resolve_range_max(kwargs.pop("range_max"), max_positives=1, params=NONE, **kwargs)


# --- filters ------------------------------------------------------------------------------------

SCORES = np.array([[0.9, 0.8, 0.7, 0.6, 0.5], [0.95, 0.4, 0.3, 0.2, 0.1]], np.float32)
IDS = np.array([[10, 11, 12, 13, -1], [20, 21, 22, 23, 24]])
NO_OWN = [-1, -1]  # neither query's text is in the corpus


def test_positives_and_padding_are_removed_unless_positives_are_included():
    scores, skipped = filter_candidates(SCORES, IDS, [[11], [20, 23]], np.array([0.8, 0.95, 0.2], np.float32), NO_OWN, NONE)
    assert np.isneginf(scores[0, [1, 4]]).all() and np.isneginf(scores[1, [0, 3]]).all()
    assert np.isfinite(scores[0, [0, 2, 3]]).all()
    assert skipped == {"absolute_margin": 0, "relative_margin": 0, "max_score": 0, "min_score": 0}
    kept, _ = filter_candidates(
        SCORES, IDS, [[11], [20, 23]], np.array([0.8, 0.95, 0.2], np.float32), NO_OWN, FilterParams(include_positives=True)
    )
    assert np.isfinite(kept[1]).all() and np.isneginf(kept[0, 4])


def test_the_passage_with_the_query_own_text_is_removed_unless_it_is_an_included_positive():
    positives = np.array([0.8, 0.95, 0.2], np.float32)
    # query 0's text is passage 12; query 1's is passage 23, also its positive
    scores, _ = filter_candidates(SCORES, IDS, [[11], [20, 23]], positives, [12, 23], NONE)
    assert np.isneginf(scores[0, 2]) and np.isfinite(scores[0, [0, 3]]).all()
    kept, _ = filter_candidates(SCORES, IDS, [[11], [20, 23]], positives, [12, 23], FilterParams(include_positives=True))
    assert np.isneginf(kept[0, 2]) and np.isfinite(kept[1]).all()


def test_margins_use_the_lowest_positive_score_of_the_query():
    # query 1 has positives scoring 0.95 and 0.25: the margin is measured from 0.25
    positives = np.array([0.85, 0.95, 0.25], np.float32)
    scores, skipped = filter_candidates(SCORES, IDS, [[11], [20, 23]], positives, NO_OWN, FilterParams(absolute_margin=0.1))
    # query 0: keep score <= 0.75 -> 0.9 removed (0.8 is the positive); query 1: keep <= 0.15 -> 0.4, 0.3 removed
    assert np.isneginf(scores[0, 0]) and np.isfinite(scores[0, 2])
    assert np.isneginf(scores[1, [1, 2]]).all() and np.isfinite(scores[1, 4])
    assert skipped["absolute_margin"] == 3


def test_relative_margin_is_sign_safe():
    # a negative positive score: the threshold is -0.5 - 0.5 * 0.1 = -0.55 (lower), not -0.45
    scores = np.array([[-0.5, -0.52, -0.56]], np.float32)
    ids = np.array([[0, 1, 2]])
    out, skipped = filter_candidates(scores, ids, [[0]], np.array([-0.5], np.float32), [-1], FilterParams(relative_margin=0.1))
    assert np.isneginf(out[0, 1]) and np.isfinite(out[0, 2]) and skipped["relative_margin"] == 1


def test_min_score_counts_only_candidates_it_removes():
    out, skipped = filter_candidates(
        SCORES, IDS, [[11], [20, 23]], np.array([0.8, 0.95, 0.2], np.float32), NO_OWN, FilterParams(max_score=0.85, min_score=0.35)
    )
    assert skipped["max_score"] == 1  # 0.9 (0.95 is a positive, already -inf)
    # below 0.35: 0.3 and 0.1; the -inf slots (positives, padding, the max_score removal) are not counted again
    assert skipped["min_score"] == 2
    assert np.isfinite(out).sum() == 3


def test_skip_ratios_shrink_the_denominator_after_each_margin_but_not_after_max_score():
    ratios = skip_ratios({"absolute_margin": 10, "relative_margin": 9, "max_score": 8, "min_score": 1}, 100)
    assert ratios == {
        "absolute_margin": (10, 0.1),
        "relative_margin": (9, 0.1),
        "max_score": (8, 8 / 81),
        "min_score": (1, 1 / 81),
    }
    assert skip_ratios({"absolute_margin": 0, "max_score": 0}, 10) == {}


# --- selection ----------------------------------------------------------------------------------


def test_range_min_is_counted_after_filtering():
    scores = np.array([[0.9, -np.inf, 0.7, 0.6, 0.5, 0.4]], np.float32)
    ids = np.array([[1, 2, 3, 4, 5, 6]])
    neg_ids, neg_scores = select_negatives(scores, ids, range_min=1, range_max=5, num_negatives=2, sampling_strategy="top")
    # the -inf candidate sinks; skipping one leaves 0.7, 0.6
    assert neg_ids.tolist() == [[3, 4]] and neg_scores[0].tolist() == pytest.approx([0.7, 0.6])


def test_top_keeps_missing_negatives_as_minus_inf():
    scores = np.array([[0.9, -np.inf, -np.inf]], np.float32)
    neg_ids, neg_scores = select_negatives(scores, np.array([[1, 2, 3]]), range_min=0, range_max=3, num_negatives=2, sampling_strategy="top")
    assert neg_ids[0, 0] == 1 and np.isneginf(neg_scores[0, 1])


def test_random_samples_only_surviving_candidates_sorted_and_seeded():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, -np.inf, -np.inf, 0.1]], np.float32)
    ids = np.arange(7)[None]
    seen = set()
    for seed in range(40):
        neg_ids, neg_scores = select_negatives(
            scores, ids, range_min=1, range_max=7, num_negatives=2, sampling_strategy="random", rng=random.Random(seed)
        )
        assert set(neg_ids[0]) <= {1, 2, 3, 6}  # rank 0 skipped by range_min, -inf never drawn
        assert list(neg_scores[0]) == sorted(neg_scores[0], reverse=True)
        seen.update(neg_ids[0].tolist())
    assert seen == {1, 2, 3, 6}
    again = [select_negatives(scores, ids, range_min=1, range_max=7, num_negatives=2, sampling_strategy="random", rng=random.Random(3)) for _ in range(2)]
    np.testing.assert_array_equal(again[0][0], again[1][0])


def test_random_with_too_few_survivors_draws_missing_ones_like_sentence_transformers():
    scores = np.array([[0.9, -np.inf, -np.inf]], np.float32)
    neg_ids, neg_scores = select_negatives(
        scores, np.array([[1, 2, 3]]), range_min=0, range_max=3, num_negatives=2, sampling_strategy="random", rng=random.Random(0)
    )
    assert neg_ids[0, 0] == 1 and np.isneginf(neg_scores[0, 1])
