"""Tests for raytune_st.mining.index without Ray: what an index factory needs, checked before embedding."""

from __future__ import annotations

import numpy as np
import pytest

from raytune_st.errors import ConfigError
from raytune_st.mining.index import build_faiss_index, check_index_fits, min_training_vectors, search_threads, shard_bounds


@pytest.mark.parametrize(
    ("factory", "needed"),
    [("Flat", 0), ("HNSW32", 0), ("IVF4096,Flat", 4096), ("IVF16,PQ8x10", 1024), ("PQ16", 256), ("OPQ16,IVF64,PQ16x4", 64), ("PCA64,IVF128,SQ8", 128)],
)
def test_min_training_vectors(factory, needed):
    assert min_training_vectors(factory) == needed


def test_too_many_ivf_cells_for_the_corpus_are_refused_before_embedding():
    with pytest.raises(ConfigError, match=r"'IVF4096,Flat' needs at least 4,096 training vectors per shard .* "
                                          r"the smallest of 1 shard\(s\) holds 300 passages; use fewer cells \(e.g. IVF7,Flat\)"):
        check_index_fits("IVF4096,Flat", [300], train_sample_size=100_000)
    with pytest.raises(ConfigError, match="index.train_sample_size is 100"):
        check_index_fits("IVF256,Flat", [5000, 5000], train_sample_size=100)
    sizes = [hi - lo for lo, hi in shard_bounds(1000, 3)]
    with pytest.raises(ConfigError, match=r"smallest of 3 shard\(s\) holds 333 passages"):
        check_index_fits("IVF512,Flat", sizes, train_sample_size=100_000)
    check_index_fits("IVF16,Flat", sizes, train_sample_size=100_000)
    check_index_fits("Flat", [1], train_sample_size=1)


def test_a_factory_that_fits_builds_and_one_that_does_not_would_fail_in_faiss():
    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    check_index_fits("IVF8,Flat", [300], train_sample_size=300)
    assert build_faiss_index(vectors, "IVF8,Flat", train_sample_size=300).ntotal == 300
    # What the check spares the user: the same failure after every text is embedded.
    with pytest.raises(ConfigError, match=r"faiss could not train 'IVF512,Flat' on 300 vectors of dimension 8: .*"):
        build_faiss_index(vectors, "IVF512,Flat", train_sample_size=300)


@pytest.mark.parametrize(
    "num_cpus, shards, lent, threads, expected",
    [
        (1.0, 1, 2 * 0.5, None, 2),  # the defaults on one machine: both cores search while the tasks wait
        (0.5, 2, 2 * 0.5, None, 1),  # two half-CPU shards: one thread each, both cores in all
        (8.0, 4, 2 * 0.5, None, 8),  # a shard per node: its own CPUs (the lent quarter rounds down)
        (0.25, 4, 0.5, None, 1),  # never fewer than one
        (1.0, 1, 1.0, 3, 3),  # index.threads wins
    ],
)
def test_search_threads(num_cpus, shards, lent, threads, expected):
    assert search_threads(num_cpus, shards, lent, threads) == expected


def test_flat_search_finds_the_same_neighbours_with_any_thread_count():
    import faiss

    rng = np.random.default_rng(1)
    corpus, queries = rng.standard_normal((5000, 16)).astype(np.float32), rng.standard_normal((300, 16)).astype(np.float32)
    index = build_faiss_index(corpus, "Flat", train_sample_size=1)
    found, before = [], faiss.omp_get_max_threads()
    try:
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            found.append(index.search(queries, 20))
    finally:
        faiss.omp_set_num_threads(before)
    np.testing.assert_array_equal(found[0][1], found[1][1])
    np.testing.assert_array_equal(found[0][0], found[1][0])
