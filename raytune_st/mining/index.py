"""One shard of the sharded FAISS index: a Ray actor over a contiguous slice of the corpus.

The shard reads only its own rows from the embedding cache, builds its index (training it
on a sample of its own vectors when the factory needs training), and answers three calls
from the mining tasks: ``search`` (its local top-k), ``vectors_of`` (exact embeddings, for
the positive scores) and ``texts_of`` (the passages, for the output rows).
:func:`check_index_fits` refuses, before anything is embedded, a factory that needs more
training vectors than a shard will hold.
"""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import numpy as np

from raytune_st.errors import ConfigError
from raytune_st.mining import store


def shard_bounds(num_rows: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) id ranges of `shards` nearly equal slices (none empty)."""
    shards = max(1, min(shards, num_rows))
    edges = [round(i * num_rows / shards) for i in range(shards + 1)]
    return [(edges[i], edges[i + 1]) for i in range(shards)]


def min_training_vectors(factory: str) -> int:
    """The fewest vectors `factory` can be trained on: its IVF cells or PQ centroids (0: no training).

    None of this depends on the dimension, so it is read off an empty index built for any.
    """
    import faiss

    index = faiss.index_factory(_ANY_DIM, factory, faiss.METRIC_INNER_PRODUCT)
    if index.is_trained:
        return 0
    needed = 1
    try:
        ivf = faiss.extract_index_ivf(index)
        needed = ivf.nlist
        inner = faiss.downcast_index(ivf)
    except RuntimeError:  # not an IVF index
        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexPreTransform):
            inner = faiss.downcast_index(inner.index)
    pq = getattr(inner, "pq", None)
    return max(needed, pq.ksub) if pq is not None else needed


_ANY_DIM = 960  # divisible by the usual PQ sub-quantizer counts (as config.check_factory uses)


def check_index_fits(factory: str, shard_rows: Sequence[int], train_sample_size: int) -> None:
    """Refuse a factory whose training needs more vectors than a shard will have (before embedding).

    Each shard trains on min(its rows, train_sample_size) of its own vectors.
    """
    try:
        needed = min_training_vectors(factory)
    except ImportError:  # a CPU head node without faiss: the shard actors find out
        return
    smallest = min(min(shard_rows), train_sample_size)
    if needed > smallest:
        cause = (
            f"index.train_sample_size is {train_sample_size:,}"
            if train_sample_size < min(shard_rows)
            else f"the smallest of {len(shard_rows)} shard(s) holds {min(shard_rows):,} passages"
        )
        raise ConfigError(
            f"index.factory {factory!r} needs at least {needed:,} training vectors per shard (its IVF cells or PQ "
            f"centroids), but {cause}; use fewer cells (e.g. IVF{max(1, smallest // 39)},Flat), fewer index.shards, "
            "a larger index.train_sample_size, or Flat"
        )


def build_faiss_index(
    vectors: np.ndarray,
    factory: str,
    *,
    train_sample_size: int,
    nprobe: Optional[int] = None,
    search_params: Optional[str] = None,
    seed: int = 0,
):
    """An inner-product FAISS index over `vectors` (float32, normalised), trained if it needs it."""
    import faiss

    dim = vectors.shape[1]
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:  # faiss reports a string it cannot parse or build this way
        raise ConfigError(f"index.factory: faiss cannot build {factory!r} for {dim}-dimensional embeddings ({exc})") from None
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors if len(vectors) <= train_sample_size else vectors[rng.choice(len(vectors), train_sample_size, replace=False)]
        try:
            index.train(np.ascontiguousarray(sample))
        except RuntimeError as exc:  # faiss's own error; running out of memory is not a config problem
            raise ConfigError(
                f"index.factory: faiss could not train {factory!r} on {len(sample):,} vectors of dimension {dim}: {exc}"
            ) from None
    index.add(np.ascontiguousarray(vectors))
    settings = ([f"nprobe={nprobe}"] if nprobe is not None else []) + ([search_params] if search_params else [])
    if settings:
        try:
            faiss.ParameterSpace().set_index_parameters(index, ",".join(settings))
        except RuntimeError as exc:  # a parameter this index does not have, or a bad value
            raise ConfigError(f"index: faiss cannot apply {','.join(settings)!r} to {factory!r} ({exc})") from None
    return index


def search_threads(index_num_cpus: float, shards: int, mine_cpus_in_flight: float, threads: Optional[int] = None) -> int:
    """FAISS threads of each shard: `threads` when given, else the CPUs the shard reserved plus
    its share of the CPUs the mining tasks in flight reserved (they wait on the shards' search
    for most of their time), rounded down. A Flat search gives the same neighbours with any
    number of threads (they split the queries, not the corpus)."""
    if threads is not None:
        return threads
    return max(1, math.floor(index_num_cpus + mine_cpus_in_flight / shards + 1e-9))


class IndexShard:
    """Ray actor holding the index, vectors and texts of corpus ids [start, end)."""

    def __init__(
        self,
        start: int,
        end: int,
        embeddings: store.Chunked,
        texts: store.Chunked,
        factory: str,
        train_sample_size: int,
        nprobe: Optional[int],
        search_params: Optional[str],
        use_gpu: Optional[bool],
        threads: int,
    ):
        self.start, self.end = start, end
        self.args = (embeddings, texts, factory, train_sample_size, nprobe, search_params, use_gpu)
        self.threads = threads
        self.index = None

    def build(self) -> dict:
        """Load this shard's rows and build its index; returns its size and build time."""
        import faiss

        embeddings, texts, factory, train_sample_size, nprobe, search_params, use_gpu = self.args
        faiss.omp_set_num_threads(self.threads)
        began = time.perf_counter()
        vectors = store.read_vectors(embeddings, self.start, self.end)
        self.texts = store.read_texts(texts, self.start, self.end)
        index = build_faiss_index(
            vectors, factory, train_sample_size=train_sample_size, nprobe=nprobe, search_params=search_params, seed=self.start
        )
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if use_gpu and gpus == 0:
            raise ConfigError(
                "index.use_gpu is true but faiss in the index actors has no GPU support; install faiss-gpu-cu12 "
                "(pip install 'raytune_st[gpu]') or set index.use_gpu=false"
            )
        if use_gpu or (use_gpu is None and gpus > 0):
            self.resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self.resources, 0, index)
        if isinstance(index, faiss.IndexFlat):
            # A flat index stores the vectors itself: read them from it rather than keep a copy.
            vectors = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)
        self.vectors = vectors
        self.index = index
        return {"rows": self.end - self.start, "seconds": time.perf_counter() - began}

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Local top-k (scores, local ids) of a query batch; ids are relative to `start`."""
        # Asking for no more than the shard holds keeps the padding (and, on GPU, k) small;
        # merge_topk pads the merged result back to k.
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, self.index.ntotal))

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """Exact embeddings of global ids owned by this shard."""
        return np.asarray(self.vectors[np.asarray(ids, dtype=np.int64) - self.start], dtype=np.float32)

    def texts_of(self, ids: Sequence[int]) -> list[str]:
        """Passages of global ids owned by this shard."""
        return [self.texts[i - self.start] for i in ids]
