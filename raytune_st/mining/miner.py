"""Mining one batch of unique queries: search every shard, merge, rescore, filter, sample, write.

:func:`mine_batch` runs as a Ray task per batch. It holds only its batch: the query
embeddings, a ``[batch, range_max + max_positives]`` candidate matrix and the texts of the
rows it writes. The output part and its statistics sidecar are written atomically, then a
manifest with their sizes and sha256 digests; a rerun skips a part only when its manifest
exists and both files still match it (see raytune_st.mining.resume).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from raytune_st.mining import store
from raytune_st.mining.prepare import read_positives
from raytune_st.mining.rows import arrow_schema, build_rows, output_columns
from raytune_st.mining.select import FilterParams, filter_candidates, select_negatives
from raytune_st.mining.topk import merge_topk
from raytune_st.models.config import ModelConfig


def part_name(batch: int) -> str:
    return f"part-{batch:05d}.parquet"


def sidecar_name(batch: int) -> str:
    return f"part-{batch:05d}.npz"


def manifest_name(batch: int) -> str:
    return f"part-{batch:05d}.json"


@dataclass(frozen=True)
class MinePlan:
    """Everything a mining task needs besides the actor handles (small; sent with every task)."""

    filters: FilterParams
    range_min: int
    range_max: int
    k: int  # candidates retrieved per query: range_max + max_positives
    num_negatives: int
    sampling_strategy: str
    seed: int
    output_format: str
    output_scores: bool
    anchor_column: str
    positive_column: str
    queries: store.Chunked
    query_embeddings: store.Chunked
    positives: store.Chunked
    shard_starts: tuple[int, ...]
    batch_rows: int
    output_dir: str
    parts_dir: str
    rescore: bool
    batch_size: int

    def batch_range(self, batch: int) -> tuple[int, int]:
        return batch * self.batch_rows, min((batch + 1) * self.batch_rows, self.queries.num_rows)

    @property
    def num_batches(self) -> int:
        return -(-self.queries.num_rows // self.batch_rows)


class CrossEncoderScorer:
    """Ray actor: a cross-encoder that scores (query, passage) pairs."""

    def __init__(self, model: ModelConfig, batch_size: int):
        import torch

        from raytune_st.mining.embed import quiet_model_loading

        quiet_model_loading()

        self.model = model.load(device="cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size

    def predict(self, groups: list[list[tuple[str, str]]]) -> list[np.ndarray]:
        """Scores of each group of (query, passage) pairs, one predict call per group.

        sentence-transformers calls predict once per query (then once for all positives);
        keeping its grouping keeps its length-sorted batches, hence its exact scores.
        """
        out = []
        for pairs in groups:
            if not pairs:
                out.append(np.zeros(0, dtype=np.float32))
                continue
            scores = self.model.predict(pairs, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
            out.append(np.asarray(scores, dtype=np.float32).reshape(len(pairs)))
        return out


def _by_shard(ids: np.ndarray, starts: Sequence[int]) -> dict[int, np.ndarray]:
    owner = np.searchsorted(np.asarray(starts), ids, side="right") - 1
    return {int(s): ids[owner == s] for s in np.unique(owner)}


def _fetch_texts(shards: list, starts: Sequence[int], ids: np.ndarray) -> dict[int, str]:
    import ray

    ids = np.unique(ids[ids >= 0])
    groups = _by_shard(ids, starts)
    replies = ray.get([shards[s].texts_of.remote(group.tolist()) for s, group in groups.items()])
    return {int(i): t for group, texts in zip(groups.values(), replies) for i, t in zip(group, texts)}


def _fetch_vectors(shards: list, starts: Sequence[int], ids: np.ndarray) -> np.ndarray:
    import ray

    unique, inverse = np.unique(ids, return_inverse=True)
    groups = _by_shard(unique, starts)
    replies = ray.get([shards[s].vectors_of.remote(group.tolist()) for s, group in groups.items()])
    vectors = np.concatenate(replies)  # groups come in ascending id order, as `unique` is sorted
    return vectors[inverse]


def mine_batch(plan: MinePlan, batch: int, shards: list, scorer: Optional[Any]) -> dict:
    """Mine batch `batch` of unique queries and write its part; returns its counters."""
    import pyarrow as pa
    import ray

    start, end = plan.batch_range(batch)
    queries = store.read_texts(plan.queries, start, end)
    query_vectors = store.read_vectors(plan.query_embeddings, start, end)
    positive_ids = read_positives(plan.positives, start, end)

    # 1. Search every shard and merge their top-k (exact for Flat).
    shared = ray.put(query_vectors)  # one copy in the object store for all the shards
    results = ray.get([shard.search.remote(shared, plan.k) for shard in shards])
    scores, ids = merge_topk(results, plan.k, offsets=plan.shard_starts)

    # 2. Score each (query, positive) pair with the same embeddings.
    pair_query = np.repeat(np.arange(len(queries)), [len(p) for p in positive_ids])
    flat_positives = np.asarray([i for p in positive_ids for i in p], dtype=np.int64)
    positive_vectors = _fetch_vectors(shards, plan.shard_starts, flat_positives)
    positive_scores = np.einsum("ij,ij->i", query_vectors[pair_query], positive_vectors).astype(np.float32)

    texts: dict[int, str] = {}
    if plan.rescore:
        # 3. sentence-transformers rescores every candidate and every positive with the cross-encoder.
        texts = _fetch_texts(shards, plan.shard_starts, np.concatenate([ids.ravel(), flat_positives]))
        groups = [[(query, texts[int(i)]) for i in row[row >= 0]] for query, row in zip(queries, ids)]
        groups.append([(queries[q], texts[int(p)]) for q, p in zip(pair_query, flat_positives)])
        rescored = ray.get(scorer.predict.remote(groups))
        scores = np.full_like(scores, -np.inf)  # padding (id -1) stays -inf
        for row, row_scores in enumerate(rescored[:-1]):
            scores[row, : len(row_scores)] = row_scores  # valid ids come first: padding is at the tail
        positive_scores = rescored[-1]

    # 4. Filter and pick the negatives.
    filtered, skipped = filter_candidates(scores, ids, positive_ids, positive_scores, plan.filters)
    negative_ids, negative_scores = select_negatives(
        filtered,
        ids,
        range_min=plan.range_min,
        range_max=plan.range_max,
        num_negatives=plan.num_negatives,
        sampling_strategy=plan.sampling_strategy,
        # Seeded per batch: a rerun of a batch samples the same negatives.
        rng=random.Random(f"{plan.seed}:{batch}"),
    )

    # 5. Build the rows and write the part with its statistics.
    missing = np.setdiff1d(np.concatenate([negative_ids.ravel(), flat_positives]), np.fromiter(texts, np.int64, len(texts)))
    texts.update(_fetch_texts(shards, plan.shard_starts, missing))
    built = build_rows(
        output_format=plan.output_format,
        output_scores=plan.output_scores,
        anchor_column=plan.anchor_column,
        positive_column=plan.positive_column,
        queries=queries,
        positive_ids=positive_ids,
        positive_scores=positive_scores,
        negative_ids=negative_ids,
        negative_scores=negative_scores,
        texts=texts,
    )
    schema = arrow_schema(
        output_columns(plan.output_format, plan.output_scores, plan.anchor_column, plan.positive_column, plan.num_negatives)
    )
    table = pa.table({name: pa.array(built.columns[name], type=schema.field(name).type) for name in schema.names}, schema=schema)
    counters = {
        "queries": end - start,
        "rows": built.num_rows,
        "max_possible": built.max_possible,
        "num_candidates": int(scores.size),
        **{f"skipped_{name}": count for name, count in skipped.items()},
    }
    write_part(
        plan.output_dir,
        plan.parts_dir,
        batch,
        table,
        counters,
        positive=built.positive_scores,
        negative=built.negative_scores,
        difference=built.difference_scores,
    )
    return counters


def write_part(output_dir: str, parts_dir: str, batch: int, table, counters: dict[str, int], **scores: np.ndarray) -> None:
    """Write batch `batch`'s part, its scores and counters, then the manifest of both.

    In that order: a part counts as written only when its manifest exists and both files
    still match the sizes and sha256 digests in it (resume.part_damage checks).
    """
    sidecar = store.write_npz(
        store.join(parts_dir, sidecar_name(batch)),
        **scores,
        counters=np.asarray([counters[name] for name in sorted(counters)], dtype=np.int64),
        counter_names=np.asarray(sorted(counters)),
    )
    part = store.write_parquet(store.join(output_dir, part_name(batch)), table)
    store.write_text(
        store.join(parts_dir, manifest_name(batch)),
        json.dumps({"part": part.to_dict(), "sidecar": sidecar.to_dict(), "rows": table.num_rows}) + "\n",
    )


def read_counters(sidecar: dict[str, np.ndarray]) -> dict[str, int]:
    return {str(name): int(value) for name, value in zip(sidecar["counter_names"], sidecar["counters"])}
