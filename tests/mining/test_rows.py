"""Output rows of the four formats, on one hand-made batch (two queries, one with two positives)."""

from __future__ import annotations

import numpy as np
import pytest

from raytune_st.mining.rows import build_rows, output_columns

NEG = -np.inf
TEXTS = {0: "p0", 1: "p1", 2: "p2", 5: "n5", 6: "n6", 7: "n7"}


def rows(output_format, output_scores=False):
    return build_rows(
        output_format=output_format,
        output_scores=output_scores,
        anchor_column="query",
        positive_column="passage",
        queries=["qa", "qb"],
        positive_ids=[[0, 1], [2]],
        positive_scores=np.array([0.9, 0.8, 0.7], np.float32),
        negative_ids=np.array([[5, 6], [7, -1]]),
        negative_scores=np.array([[0.5, 0.4], [0.3, NEG]], np.float32),
        texts=TEXTS,
    )


def test_triplet_one_row_per_positive_and_found_negative():
    built = rows("triplet", output_scores=True)
    assert built.columns["query"] == ["qa", "qa", "qa", "qa", "qb"]
    assert built.columns["passage"] == ["p0", "p0", "p1", "p1", "p2"]
    assert built.columns["negative"] == ["n5", "n6", "n5", "n6", "n7"]
    assert built.columns["scores"][0] == pytest.approx([0.9, 0.5])
    assert built.max_possible == 6
    assert built.difference_scores.tolist() == pytest.approx([0.4, 0.5, 0.3, 0.4, 0.4])


def test_n_tuple_drops_rows_without_enough_negatives():
    built = rows("n-tuple", output_scores=True)
    assert list(built.columns) == ["query", "passage", "negative_1", "negative_2", "scores"]
    assert built.columns["passage"] == ["p0", "p1"] and built.columns["negative_2"] == ["n6", "n6"]
    assert built.columns["scores"][1] == pytest.approx([0.8, 0.5, 0.4])
    assert built.max_possible == 3 and built.num_rows == 2


def test_labeled_pair_lists_positives_then_negatives_once_per_query():
    built = rows("labeled-pair")
    assert built.columns["passage"] == ["p0", "p1", "n5", "n6", "p2", "n7"]
    assert built.columns["label"] == [1, 1, 0, 0, 1, 0]
    # the statistics repeat the negatives for each positive, like sentence-transformers
    assert built.negative_scores.tolist() == pytest.approx([0.5, 0.4, 0.5, 0.4, 0.3])
    assert built.max_possible == 2 * 2 + 3
    assert rows("labeled-pair", output_scores=True).columns["score"] == pytest.approx([0.9, 0.8, 0.5, 0.4, 0.7, 0.3])


def test_labeled_list_one_row_per_positive_with_its_found_negatives():
    built = rows("labeled-list")
    assert built.columns["passage"] == [["p0", "n5", "n6"], ["p1", "n5", "n6"], ["p2", "n7"]]
    assert built.columns["labels"] == [[1, 0, 0], [1, 0, 0], [1, 0]]
    assert rows("labeled-list", output_scores=True).columns["scores"][2] == pytest.approx([0.7, 0.3])


@pytest.mark.parametrize(
    "output_format, output_scores, names",
    [
        ("triplet", False, ["q", "p", "negative"]),
        ("triplet", True, ["q", "p", "negative", "scores"]),
        ("n-tuple", False, ["q", "p", "negative_1", "negative_2"]),
        ("labeled-pair", False, ["q", "p", "label"]),
        ("labeled-pair", True, ["q", "p", "score"]),
        ("labeled-list", False, ["q", "p", "labels"]),
        ("labeled-list", True, ["q", "p", "scores"]),
    ],
)
def test_columns_are_sentence_transformers_columns(output_format, output_scores, names):
    assert [n for n, _ in output_columns(output_format, output_scores, "q", "p", 2)] == names
