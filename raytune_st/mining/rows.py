"""Turning mined negatives into output rows, in sentence-transformers' four output formats.

One call handles a batch of unique queries, each with its distinct positives (in order of
first appearance) and its selected negatives (``-inf`` score = none found). The rows, their
order and their columns are those ``mine_hard_negatives`` returns for the same queries:

================  ==========================================================================
triplet           (anchor, positive, negative[, scores]): one row per positive and negative
n-tuple           (anchor, positive, negative_1..negative_n[, scores]): one row per positive,
                  only when all ``num_negatives`` were found
labeled-pair      (anchor, positive, label | score): each positive (1), then each negative (0)
labeled-list      (anchor, positive: [docs], labels | scores): one row per positive
================  ==========================================================================

Alongside the rows come the scores behind sentence-transformers' statistics table, so that
table can be computed from the batches without keeping the rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import numpy as np

OutputFormat = Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"]


def output_columns(
    output_format: OutputFormat, output_scores: bool, anchor: str, positive: str, num_negatives: int
) -> list[tuple[str, str]]:
    """(name, arrow type) of every output column, as sentence-transformers' Dataset has them."""
    if output_format == "triplet":
        cols = [(anchor, "string"), (positive, "string"), ("negative", "string")]
        return cols + ([("scores", "list<double>")] if output_scores else [])
    if output_format == "n-tuple":
        cols = [(anchor, "string"), (positive, "string")]
        cols += [(f"negative_{i}", "string") for i in range(1, num_negatives + 1)]
        return cols + ([("scores", "list<double>")] if output_scores else [])
    if output_format == "labeled-pair":
        return [(anchor, "string"), (positive, "string"), ("score", "double") if output_scores else ("label", "int64")]
    if output_format == "labeled-list":
        last = ("scores", "list<double>") if output_scores else ("labels", "list<int64>")
        return [(anchor, "string"), (positive, "list<string>"), last]
    raise ValueError(f"unknown output_format {output_format!r}")


def arrow_schema(columns: list[tuple[str, str]]):
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "double": pa.float64(),
        "int64": pa.int64(),
        "list<string>": pa.list_(pa.string()),
        "list<double>": pa.list_(pa.float64()),
        "list<int64>": pa.list_(pa.int64()),
    }
    return pa.schema([(name, types[tp]) for name, tp in columns])


@dataclass
class BatchRows:
    """The output rows of one batch plus the scores of sentence-transformers' statistics."""

    columns: dict[str, list]
    positive_scores: np.ndarray  # one per (query, positive) pair
    negative_scores: np.ndarray  # as in sentence-transformers' "Negative" column
    difference_scores: np.ndarray  # positive minus negative, aligned with negative_scores
    max_possible: int  # rows the batch would have if every negative were found

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0


def build_rows(
    *,
    output_format: OutputFormat,
    output_scores: bool,
    anchor_column: str,
    positive_column: str,
    queries: Sequence[str],
    positive_ids: Sequence[Sequence[int]],
    positive_scores: np.ndarray,
    negative_ids: np.ndarray,
    negative_scores: np.ndarray,
    texts: Mapping[int, str],
) -> BatchRows:
    """Output rows for a batch of unique queries.

    Args:
        queries: the batch's unique queries.
        positive_ids: per query, the corpus ids of its distinct positives.
        positive_scores: score of each (query, positive) pair, flattened in query order.
        negative_ids, negative_scores: ``[queries, num_negatives]`` from select_negatives.
        texts: corpus id -> text, for every positive and negative id.

    For labeled-pair, ``max_possible`` counts each distinct (query, positive) pair once;
    sentence-transformers counts every input row, so the caller adds the duplicate rows.
    """
    num_negatives = negative_ids.shape[1]
    pos_scores = np.asarray(positive_scores, dtype=np.float32)
    neg_scores = np.asarray(negative_scores, dtype=np.float32)
    names = [name for name, _ in output_columns(output_format, output_scores, anchor_column, positive_column, num_negatives)]
    cols: dict[str, list] = {name: [] for name in names}
    stats_neg: list[float] = []
    stats_diff: list[float] = []
    pair = 0  # index into pos_scores
    max_possible = 0

    for q, query in enumerate(queries):
        found = ~np.isinf(neg_scores[q])
        if output_format == "labeled-pair":
            for positive in positive_ids[q]:
                cols[anchor_column].append(query)
                cols[positive_column].append(texts[positive])
                cols[names[2]].append(float(pos_scores[pair]) if output_scores else 1)
                stats_neg.extend(neg_scores[q][found])
                stats_diff.extend(pos_scores[pair] - neg_scores[q][found])
                pair += 1
            for neg_id, neg_score in zip(negative_ids[q][found], neg_scores[q][found]):
                cols[anchor_column].append(query)
                cols[positive_column].append(texts[int(neg_id)])
                cols[names[2]].append(float(neg_score) if output_scores else 0)
            max_possible += num_negatives + len(positive_ids[q])
            continue

        for positive in positive_ids[q]:
            pos_score = pos_scores[pair]
            pair += 1
            if output_format == "triplet":
                max_possible += num_negatives
                for neg_id, neg_score in zip(negative_ids[q][found], neg_scores[q][found]):
                    cols[anchor_column].append(query)
                    cols[positive_column].append(texts[positive])
                    cols["negative"].append(texts[int(neg_id)])
                    if output_scores:
                        cols["scores"].append([float(pos_score), float(neg_score)])
                    stats_neg.append(neg_score)
                    stats_diff.append(pos_score - neg_score)
            elif output_format == "n-tuple":
                max_possible += 1
                if not found.all():
                    continue
                cols[anchor_column].append(query)
                cols[positive_column].append(texts[positive])
                for i, neg_id in enumerate(negative_ids[q], start=1):
                    cols[f"negative_{i}"].append(texts[int(neg_id)])
                if output_scores:
                    cols["scores"].append([float(pos_score), *map(float, neg_scores[q])])
                stats_neg.extend(neg_scores[q])
                stats_diff.extend(pos_score - neg_scores[q])
            elif output_format == "labeled-list":
                max_possible += 1
                if not found.any():
                    continue
                cols[anchor_column].append(query)
                cols[positive_column].append([texts[positive]] + [texts[int(i)] for i in negative_ids[q][found]])
                if output_scores:
                    cols["scores"].append([float(pos_score), *map(float, neg_scores[q][found])])
                else:
                    cols["labels"].append([1] + [0] * int(found.sum()))
                stats_neg.extend(neg_scores[q][found])
                stats_diff.extend(pos_score - neg_scores[q][found])
            else:
                raise ValueError(f"unknown output_format {output_format!r}")

    return BatchRows(
        columns=cols,
        positive_scores=pos_scores,
        negative_scores=np.asarray(stats_neg, dtype=np.float32),
        difference_scores=np.asarray(stats_diff, dtype=np.float32),
        max_possible=max_possible,
    )
