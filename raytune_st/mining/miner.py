"""Mining one batch of unique queries on the cluster: read it, mine it, write its part.

:func:`mine_batch` runs as a Ray task per batch: it reads its queries, their embeddings and
positives, hands them to :func:`raytune_st.mining.batch.mine_queries` (the arithmetic) with
the ways to the IndexShard and cross-encoder actors, and writes the part. It holds only its
batch: the query embeddings, a ``[batch, range_max + max_positives + 1]`` candidate matrix and
the texts of the rows it writes. The output part and its statistics sidecar are written atomically, then a
manifest with their sizes and sha256 digests; a rerun skips a part only when its manifest
exists and both files still match it (see raytune_st.mining.resume).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from raytune_st.mining import store
from raytune_st.mining.batch import BatchSources, MineSettings, mine_queries
from raytune_st.mining.prepare import read_positives
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

    settings: MineSettings
    queries: store.Chunked
    query_embeddings: store.Chunked
    positives: store.Chunked
    batch_rows: int
    output_dir: str
    parts_dir: str

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


def shard_sources(shards: list, starts: Sequence[int], scorer: Optional[Any]) -> BatchSources:
    """A batch's ways to the IndexShard actors (and the CrossEncoderScorer actor)."""
    import ray

    def search(vectors: np.ndarray, k: int) -> list:
        shared = ray.put(vectors)  # one copy in the object store for all the shards
        return ray.get([shard.search.remote(shared, k) for shard in shards])

    return BatchSources(
        search=search,
        vectors_of=lambda ids: _fetch_vectors(shards, starts, ids),
        texts_of=lambda ids: _fetch_texts(shards, starts, ids),
        rescore=(lambda groups: ray.get(scorer.predict.remote(groups))) if scorer is not None else None,
    )


def mine_batch(plan: MinePlan, batch: int, shards: list, scorer: Optional[Any]) -> dict:
    """Mine batch `batch` of unique queries and write its part; returns its counters (a Ray task)."""
    start, end = plan.batch_range(batch)
    positives, self_ids = read_positives(plan.positives, start, end)
    mined = mine_queries(
        plan.settings,
        batch,
        store.read_texts(plan.queries, start, end),
        store.read_vectors(plan.query_embeddings, start, end),
        positives,
        self_ids,
        shard_sources(shards, plan.settings.shard_starts, scorer),
    )
    rows = mined.rows
    write_part(
        plan.output_dir,
        plan.parts_dir,
        batch,
        mined.table(plan.settings),
        mined.counters,
        positive=rows.positive_scores,
        negative=rows.negative_scores,
        difference=rows.difference_scores,
    )
    return mined.counters


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
