"""merge_topk: merging per-shard top-k equals one index over everything."""

from __future__ import annotations

import numpy as np
import pytest

from raytune_st.mining.index import build_faiss_index, shard_bounds
from raytune_st.mining.topk import merge_topk


def _normalised(rng, n, d=16):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("shards", [1, 2, 3, 7])
@pytest.mark.parametrize("k", [1, 10, 60])
def test_sharded_flat_search_equals_one_flat_index(shards, k):
    rng = np.random.default_rng(shards * 100 + k)
    corpus, queries = _normalised(rng, 50), _normalised(rng, 9)
    whole = build_faiss_index(corpus, "Flat", train_sample_size=10)
    expected_scores, expected_ids = whole.search(queries, min(k, len(corpus)))

    results, offsets = [], []
    for lo, hi in shard_bounds(len(corpus), shards):
        index = build_faiss_index(corpus[lo:hi], "Flat", train_sample_size=10)
        results.append(index.search(queries, min(k, hi - lo)))
        offsets.append(lo)
    scores, ids = merge_topk(results, k, offsets=offsets)

    assert scores.shape == ids.shape == (len(queries), k)
    n = min(k, len(corpus))
    np.testing.assert_array_equal(ids[:, :n], expected_ids)
    np.testing.assert_array_equal(scores[:, :n], expected_scores)
    # asking for more than the corpus holds pads like sentence-transformers: id -1, score -inf
    assert (ids[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()


def test_padding_from_faiss_becomes_minus_inf_and_keeps_its_id():
    shard_a = (np.array([[0.9, -3.4e38]], np.float32), np.array([[0, -1]]))
    shard_b = (np.array([[0.5, 0.4]], np.float32), np.array([[1, 0]]))
    scores, ids = merge_topk([shard_a, shard_b], 4, offsets=[0, 10])
    assert ids.tolist() == [[0, 11, 10, -1]]
    assert scores[0, :3].tolist() == pytest.approx([0.9, 0.5, 0.4])
    assert np.isneginf(scores[0, 3])


def test_ties_are_ordered_by_global_id_whatever_the_shard_order():
    a = (np.array([[0.5, 0.5]], np.float32), np.array([[1, 0]]))
    b = (np.array([[0.5]], np.float32), np.array([[0]]))
    _, ids = merge_topk([b, a], 3, offsets=[5, 0])
    assert ids.tolist() == [[0, 1, 5]]


def test_global_ids_without_offsets_and_shape_errors():
    scores, ids = merge_topk([(np.array([[0.1]]), np.array([[7]])), (np.array([[0.2]]), np.array([[3]]))], 2)
    assert ids.tolist() == [[3, 7]]
    with pytest.raises(ValueError, match="same"):
        merge_topk([(np.zeros((2, 3)), np.zeros((2, 2), int))], 2)
    with pytest.raises(ValueError, match="offsets"):
        merge_topk([(np.zeros((1, 1)), np.zeros((1, 1), int))], 1, offsets=[0, 1])


def test_shard_bounds_cover_the_corpus_without_empty_shards():
    assert shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shard_bounds(2, 5) == [(0, 1), (1, 2)]


@pytest.mark.parametrize("factory, params", [("IVF4,Flat", dict(nprobe=4)), ("HNSW8", dict(search_params="efSearch=64")), ("IVF2,PQ4x4", dict(nprobe=2))])
def test_approximate_factories_train_on_a_sample_and_search(factory, params):
    rng = np.random.default_rng(0)
    corpus = _normalised(rng, 400)
    index = build_faiss_index(corpus, factory, train_sample_size=300, **params)
    scores, ids = index.search(corpus[:5], 3)
    assert ids.shape == (5, 3) and (ids >= 0).all()
    if "PQ" not in factory:  # exact vectors: each finds itself first (all IVF cells are probed)
        assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_bad_search_parameters_are_config_errors():
    from raytune_st.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot apply"):
        build_faiss_index(_normalised(np.random.default_rng(0), 20), "Flat", train_sample_size=10, search_params="bogus=3")
