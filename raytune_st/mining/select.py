"""Choosing hard negatives among the retrieved candidates, exactly as sentence-transformers does.

These functions mirror ``sentence_transformers.util.mine_hard_negatives`` (of
sentence-transformers 6.3, :data:`SEMANTICS`) step by step, on one batch of unique queries at
a time, in numpy (float32, with numpy 2's rule that a Python float compared to a float32 array
is taken as float32, like torch's):

1. :func:`resolve_range_max`: the default ``range_max`` rule and its checks.
2. :func:`filter_candidates`: the query's own text, positives, margins (against the query's
   lowest positive score), ``max_score``, ``min_score``; a removed candidate's score becomes
   ``-inf``.
3. :func:`select_negatives`: the best ``range_max`` survivors, the first ``range_min`` of
   them dropped (so range_min counts after filtering), then the top ``num_negatives`` or a
   random sample of them, sorted by score.

The skip counters are additive over batches; :func:`skip_ratios` turns their totals into the
percentages sentence-transformers prints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from raytune_st.errors import ConfigError

FAISS_GPU_MAX_K = 2048
# Recorded with every mining run: an output mined under other rules is refused, not extended.
SEMANTICS = "sentence-transformers 6.3 mine_hard_negatives"
FILTERS = ("absolute_margin", "relative_margin", "max_score", "min_score")


@dataclass(frozen=True)
class FilterParams:
    """The candidate filters of one mining run (sentence-transformers' parameter names)."""

    include_positives: bool = False
    absolute_margin: Optional[float] = None
    relative_margin: Optional[float] = None
    max_score: Optional[float] = None
    min_score: Optional[float] = None


def resolve_range_max(
    range_max: Optional[int],
    *,
    range_min: int,
    num_negatives: int,
    max_positives: int,
    params: FilterParams,
    has_cross_encoder: bool = False,
    gpu_index: bool = False,
) -> tuple[int, list[str]]:
    """The ``range_max`` to use and the lines sentence-transformers prints about it.

    Without an explicit ``range_max`` it is ``range_min + num_negatives + max_positives``,
    or ``range_min + 10 * num_negatives + max_positives`` when a margin or max_score (or a
    cross-encoder with min_score) may discard candidates. The search retrieves
    ``range_max + max_positives + 1`` candidates (:func:`candidates_per_query`); on a GPU index
    that is at most 2048.
    Raises ConfigError for a range that cannot hold ``num_negatives`` candidates.
    """
    problem = range_problem(range_min, None, num_negatives)
    if problem:
        raise ConfigError(f"mine.{problem}")
    lines: list[str] = []
    cap_note = ""
    if range_max is None:
        widen = (
            params.absolute_margin is not None
            or params.relative_margin is not None
            or params.max_score is not None
            or (has_cross_encoder and params.min_score is not None)
        )
        range_max = range_min + (num_negatives * 10 if widen else num_negatives) + max_positives
        if gpu_index and candidates_per_query(range_max, max_positives) > FAISS_GPU_MAX_K:
            range_max = FAISS_GPU_MAX_K - candidates_per_query(0, max_positives)
            cap_note = (
                f" range_max was capped to {range_max} because FAISS on GPU retrieves at most {FAISS_GPU_MAX_K} "
                "documents per query, some of which are reserved for excluded candidates; set index.use_gpu=false to lift the cap."
            )
            lines.append(
                "Using FAISS on GPU, we can only retrieve up to 2048 documents per query, some of which "
                f"are reserved for excluded candidates. Setting range_max to {range_max}."
            )
        lines.append(f"Setting range_max to {range_max} based on the provided parameters.")
    elif gpu_index and candidates_per_query(range_max, max_positives) > FAISS_GPU_MAX_K:
        raise ConfigError(
            f"mine.range_max={range_max} plus {max_positives} positive(s) per query and the query itself asks the GPU "
            f"index for {candidates_per_query(range_max, max_positives)} neighbours, but FAISS on GPU returns at most "
            f"{FAISS_GPU_MAX_K}; lower mine.range_max to {FAISS_GPU_MAX_K - candidates_per_query(0, max_positives)} "
            "or set index.use_gpu=false"
        )
    problem = range_problem(range_min, range_max, num_negatives)
    if problem:
        raise ConfigError(f"mine.{problem}.{cap_note}")
    return range_max, lines


def candidates_per_query(range_max: int, max_positives: int) -> int:
    """How many candidates the search retrieves per query: ``range_max`` plus room for the
    candidates excluded before ranking, the positives and the query's own text."""
    return range_max + max_positives + 1


def range_problem(range_min: int, range_max: Optional[int], num_negatives: int) -> Optional[str]:
    """Why `num_negatives` cannot be mined from ranks [range_min, range_max) (None: they can).

    The message names the keys of the `mine` section without its prefix.
    """
    if num_negatives < 1:
        return f"num_negatives: must be at least 1, got {num_negatives}"
    if range_min < 0:
        return f"range_min: must be non-negative, got {range_min}"
    if range_max is None:
        return None
    if range_min >= range_max:
        return f"range_min must be smaller than range_max, got range_min={range_min} and range_max={range_max}"
    if num_negatives > range_max - range_min:
        return (
            f"num_negatives: cannot mine {num_negatives} negatives per query from the {range_max - range_min} "
            f"candidates between range_min={range_min} and range_max={range_max}; lower num_negatives or range_min, "
            "or raise range_max"
        )
    return None


def lowest_positive_scores(positive_scores: np.ndarray, n_positives: Sequence[int]) -> np.ndarray:
    """Per query, the minimum of its positives' scores (the harder positive sets the margin)."""
    starts = np.concatenate([[0], np.cumsum(n_positives)[:-1]]).astype(np.int64)
    return np.minimum.reduceat(np.asarray(positive_scores, dtype=np.float32), starts) if len(starts) else np.zeros(0, np.float32)


def filter_candidates(
    scores: np.ndarray,
    ids: np.ndarray,
    positive_ids: Sequence[Sequence[int]],
    positive_scores: np.ndarray,
    self_ids: Sequence[int],
    params: FilterParams,
) -> tuple[np.ndarray, dict[str, int]]:
    """Disqualify candidates (score -> -inf) the way sentence-transformers does.

    Args:
        scores, ids: ``[queries, k]`` candidate scores and global corpus ids (-1 = padding).
        positive_ids: per query, the corpus ids of its (distinct) positives.
        positive_scores: the score of every (query, positive) pair, queries in order.
        self_ids: per query, the corpus id of its own text (-1: not in the corpus). That passage
            is no negative, unless it is one of the query's positives and positives are included.
        params: the filters.

    Returns:
        The filtered scores (a new array) and how many candidates each filter removed.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    ids = np.asarray(ids)
    scores[ids == -1] = -np.inf
    own = np.asarray(self_ids, dtype=np.int64)
    excluded = own >= 0
    if params.include_positives:
        excluded &= np.fromiter((o not in p for o, p in zip(own.tolist(), positive_ids)), bool, len(own))
    scores[(ids == own[:, None]) & excluded[:, None]] = -np.inf
    if not params.include_positives:
        for row, positives in enumerate(positive_ids):
            scores[row, np.isin(ids[row], np.asarray(positives, dtype=ids.dtype))] = -np.inf

    skipped = {name: 0 for name in FILTERS}
    if params.absolute_margin is not None or params.relative_margin is not None:
        lowest = lowest_positive_scores(positive_scores, [len(p) for p in positive_ids])[:, None]
        if params.absolute_margin is not None:
            removed = scores + params.absolute_margin > lowest
            scores[removed] = -np.inf
            skipped["absolute_margin"] = int(removed.sum())
        if params.relative_margin is not None:
            # Fixed in sentence-transformers (#3819): subtract |positive| * margin instead of
            # multiplying by (1 - margin), which raised the threshold for negative positive scores.
            threshold = lowest - np.abs(lowest) * params.relative_margin
            removed = scores > threshold
            scores[removed] = -np.inf
            skipped["relative_margin"] = int(removed.sum())
    if params.max_score is not None:
        removed = scores > params.max_score
        scores[removed] = -np.inf
        skipped["max_score"] = int(removed.sum())
    if params.min_score is not None:
        # Candidates already at -inf (padding, positives, earlier filters) are not counted again.
        removed = (scores < params.min_score) & (scores != -np.inf)
        scores[removed] = -np.inf
        skipped["min_score"] = int(removed.sum())
    return scores, skipped


def skip_ratios(skipped: dict[str, int], num_candidates: int) -> dict[str, tuple[int, float]]:
    """(skipped, ratio) per filter that removed something, with sentence-transformers' denominators.

    ``num_candidates`` is every retrieved slot (queries x :func:`candidates_per_query`); each
    margin filter's removals shrink the denominator of the filters after it, max_score's do not.
    """
    out: dict[str, tuple[int, float]] = {}
    remaining = num_candidates
    for name in FILTERS:
        count = skipped.get(name, 0)
        if count:
            out[name] = (count, count / remaining)
            if name in ("absolute_margin", "relative_margin"):
                remaining -= count
    return out


def select_negatives(
    scores: np.ndarray,
    ids: np.ndarray,
    *,
    range_min: int,
    range_max: int,
    num_negatives: int,
    sampling_strategy: Literal["top", "random"],
    rng: Optional[random.Random] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``[queries, num_negatives]`` negatives (ids, scores), best first; -inf marks a missing one.

    ``random`` samples among the surviving candidates of ranks ``[range_min, range_max)``,
    or among all of those ranks when fewer than ``num_negatives`` survive (the missing ones
    are then dropped by the output format), like sentence-transformers.
    """
    scores = np.asarray(scores, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    # Stable sort: among equal scores the retrieval order (ascending id) is kept.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :range_max][:, range_min:]
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    if sampling_strategy == "top":
        return ids[:, :num_negatives], scores[:, :num_negatives]
    if sampling_strategy != "random":
        raise ValueError(f"unknown sampling_strategy {sampling_strategy!r}")
    rng = rng or random.Random()
    options = np.maximum(scores.shape[1] - np.isinf(scores).sum(axis=1), num_negatives)
    picked = np.array([rng.sample(range(int(n)), k=num_negatives) for n in options], dtype=np.int64).reshape(
        len(options), num_negatives
    )
    scores = np.take_along_axis(scores, picked, axis=1)
    ids = np.take_along_axis(ids, picked, axis=1)
    resort = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(ids, resort, axis=1), np.take_along_axis(scores, resort, axis=1)
