"""One batch of unique queries mined, as plain arithmetic. No Ray.

:func:`mine_queries` is the whole of a batch, in sentence-transformers' order:

1. search every index shard and merge their top-k (exact for Flat: :func:`merge_topk`);
2. score each (query, positive) pair with the same embeddings;
3. with a cross-encoder, rescore every candidate and every positive, in its grouping;
4. filter the candidates (the query's own text, positives, margins, scores) and pick the
   negatives (top or seeded random);
5. build the output rows and the counters behind the statistics.

How the batch reaches the index, the corpus texts and the cross-encoder is handed in as
:class:`BatchSources`: Ray actor calls in the mining task (raytune_st.mining.miner), arrays in
memory in the fast parity test, so that both run this same function.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from raytune_st.mining.rows import BatchRows, arrow_schema, build_rows, output_columns
from raytune_st.mining.select import FilterParams, filter_candidates, select_negatives
from raytune_st.mining.topk import merge_topk

# (scores, local ids) of one shard's top-k for each query, as FAISS returns them.
ShardResult = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class MineSettings:
    """What decides a batch's rows: sentence-transformers' parameters, resolved for this run."""

    filters: FilterParams
    range_min: int
    range_max: int
    k: int  # candidates retrieved per query: select.candidates_per_query(range_max, max_positives)
    num_negatives: int
    sampling_strategy: str
    seed: int
    output_format: str
    output_scores: bool
    anchor_column: str
    positive_column: str
    shard_starts: tuple[int, ...]  # global corpus id of each shard's first passage
    rescore: bool  # rescore every candidate and positive with the cross-encoder (one is given)

    def columns(self) -> list[tuple[str, str]]:
        """The output's (column, kind) pairs, exactly sentence-transformers' columns."""
        return output_columns(self.output_format, self.output_scores, self.anchor_column, self.positive_column, self.num_negatives)


@dataclass(frozen=True)
class BatchSources:
    """How a batch reaches the index shards, the corpus and the cross-encoder."""

    search: Callable[[np.ndarray, int], list[ShardResult]]  # (query vectors, k) -> every shard's top-k
    vectors_of: Callable[[np.ndarray], np.ndarray]  # global corpus ids -> their embeddings, in that order
    texts_of: Callable[[np.ndarray], dict[int, str]]  # unique global corpus ids -> their passages
    rescore: Optional[Callable[[list[list[tuple[str, str]]]], list[np.ndarray]]] = None  # groups of pairs -> scores


@dataclass
class MinedBatch:
    rows: BatchRows
    counters: dict[str, int]  # queries, rows, max_possible, num_candidates, skipped_<filter>

    def table(self, settings: MineSettings) -> Any:
        """The rows as a pyarrow table with the output schema."""
        import pyarrow as pa

        schema = arrow_schema(settings.columns())
        return pa.table({name: pa.array(self.rows.columns[name], type=schema.field(name).type) for name in schema.names}, schema=schema)


def mine_queries(
    settings: MineSettings,
    batch: int,
    queries: Sequence[str],
    query_vectors: np.ndarray,
    positive_ids: Sequence[Sequence[int]],
    self_ids: Sequence[int],
    sources: BatchSources,
) -> MinedBatch:
    """Mine the negatives of one batch of unique queries (batch number `batch`, which seeds the sampling).

    `positive_ids` and `self_ids` are, per query, the corpus ids of its positives and of its own
    text (-1: none), as prepare.read_positives gives them.
    """
    # 1. Search every shard and merge their top-k.
    scores, ids = merge_topk(sources.search(query_vectors, settings.k), settings.k, offsets=settings.shard_starts)

    # 2. Score each (query, positive) pair with the same embeddings.
    pair_query = np.repeat(np.arange(len(queries)), [len(p) for p in positive_ids])
    flat_positives = np.asarray([i for p in positive_ids for i in p], dtype=np.int64)
    positive_vectors = sources.vectors_of(flat_positives)
    positive_scores = np.einsum("ij,ij->i", query_vectors[pair_query], positive_vectors).astype(np.float32)

    texts: dict[int, str] = {}
    if settings.rescore:
        # 3. sentence-transformers rescores every candidate and every positive with the cross-encoder.
        if sources.rescore is None:
            raise ValueError("settings.rescore is set but the sources have no cross-encoder")
        texts = sources.texts_of(_valid_unique(np.concatenate([ids.ravel(), flat_positives])))
        groups = [[(query, texts[int(i)]) for i in row[row >= 0]] for query, row in zip(queries, ids)]
        groups.append([(queries[q], texts[int(p)]) for q, p in zip(pair_query, flat_positives)])
        rescored = sources.rescore(groups)
        scores = np.full_like(scores, -np.inf)  # padding (id -1) stays -inf
        for row, row_scores in enumerate(rescored[:-1]):
            scores[row, : len(row_scores)] = row_scores  # valid ids come first: padding is at the tail
        positive_scores = np.asarray(rescored[-1], dtype=np.float32)

    # 4. Filter and pick the negatives.
    filtered, skipped = filter_candidates(scores, ids, positive_ids, positive_scores, self_ids, settings.filters)
    negative_ids, negative_scores = select_negatives(
        filtered,
        ids,
        range_min=settings.range_min,
        range_max=settings.range_max,
        num_negatives=settings.num_negatives,
        sampling_strategy=settings.sampling_strategy,
        # Seeded per batch: a rerun of a batch samples the same negatives.
        rng=random.Random(f"{settings.seed}:{batch}"),
    )

    # 5. The rows, with the texts not fetched yet.
    missing = np.setdiff1d(_valid_unique(np.concatenate([negative_ids.ravel(), flat_positives])), np.fromiter(texts, np.int64, len(texts)))
    texts.update(sources.texts_of(missing))
    built = build_rows(
        output_format=settings.output_format,
        output_scores=settings.output_scores,
        anchor_column=settings.anchor_column,
        positive_column=settings.positive_column,
        queries=queries,
        positive_ids=positive_ids,
        positive_scores=positive_scores,
        negative_ids=negative_ids,
        negative_scores=negative_scores,
        texts=texts,
    )
    counters = {
        "queries": len(queries),
        "rows": built.num_rows,
        "max_possible": built.max_possible,
        "num_candidates": int(scores.size),
        **{f"skipped_{name}": count for name, count in skipped.items()},
    }
    return MinedBatch(built, counters)


def _valid_unique(ids: np.ndarray) -> np.ndarray:
    """The distinct real corpus ids among `ids` (FAISS pads missing neighbours with -1)."""
    return np.unique(ids[ids >= 0])
