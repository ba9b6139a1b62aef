"""Merging the top-k of several index shards into one exact top-k (tevatron's sharded search).

Every shard answers a query batch with its own best k (scores, local ids). Adding each
shard's first global id and keeping the k best of the concatenation gives exactly what one
index over the whole corpus would return: a document in the global top-k is necessarily in
its own shard's top-k.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

# FAISS pads a result with id -1 (and score -FLT_MAX for inner product) when it finds fewer
# than k neighbours; sentence-transformers pads the same way and then scores them -inf.
MISSING_ID = -1


def merge_topk(
    results: Sequence[tuple[np.ndarray, np.ndarray]],
    k: int,
    offsets: Optional[Sequence[int]] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-shard top-k results into the global top-k.

    Args:
        results: one ``(scores, ids)`` pair per shard, both shaped ``[batch, k_shard]``
            (``k_shard`` may differ between shards); id ``-1`` marks padding.
        k: how many neighbours to keep per query.
        offsets: the global id of each shard's first document, added to its ids
            (``None``: the ids are global already).

    Returns:
        ``(scores, ids)`` shaped ``[batch, k]``, best first: scores float32, ids int64. Where
        fewer than k documents exist, the tail is padded with id -1 and score -inf. Equal
        scores are ordered by ascending global id, so the result does not depend on sharding.
    """
    if not results:
        raise ValueError("merge_topk needs the result of at least one shard")
    if offsets is not None and len(offsets) != len(results):
        raise ValueError(f"got {len(results)} shard results but {len(offsets)} offsets")
    all_scores, all_ids = [], []
    for shard, (scores, ids) in enumerate(results):
        scores = np.asarray(scores, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if scores.shape != ids.shape or scores.ndim != 2:
            raise ValueError(f"shard {shard}: scores {scores.shape} and ids {ids.shape} must be the same [batch, k] shape")
        missing = ids == MISSING_ID
        if offsets is not None:
            ids = np.where(missing, MISSING_ID, ids + offsets[shard])
        all_scores.append(np.where(missing, -np.inf, scores).astype(np.float32))
        all_ids.append(ids)
    scores = np.concatenate(all_scores, axis=1)
    ids = np.concatenate(all_ids, axis=1)
    batch = scores.shape[0]
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.concatenate([scores, np.full((batch, pad), -np.inf, dtype=np.float32)], axis=1)
        ids = np.concatenate([ids, np.full((batch, pad), MISSING_ID, dtype=np.int64)], axis=1)
    # Sort by score descending, then by id ascending; padding (-1, -inf) goes last.
    tie_ids = np.where(ids == MISSING_ID, np.iinfo(np.int64).max, ids)
    order = np.lexsort((tie_ids, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
