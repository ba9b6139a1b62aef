"""Exact-string deduplication of corpus and queries, streamed into text chunks.

sentence-transformers builds its corpus as ``dict.fromkeys(corpus + positives)`` and its
queries as ``dict.fromkeys(anchors)``: exact strings, ids in order of first appearance, the
extra corpus before the positives. :class:`Prepared` does the same over a stream of rows,
keeping only a 16-byte digest per distinct text plus each query's positive ids in memory,
and writing the texts to chunk files as soon as they are first seen. Like
sentence-transformers (6.3+), it also finds each query's own text in the corpus: that passage
is never the query's negative.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np

from raytune_st.errors import DataError
from raytune_st.mining import store

if TYPE_CHECKING:
    import pyarrow


# Query chunks per positives file: creating a file costs about a millisecond on some disks, and
# the mining tasks read a file's few hundred KiB for a batch.
POSITIVE_CHUNKS = 8


class TextIds:
    """Ids for distinct strings, in order of first appearance.

    Kept as a 16-byte key per distinct text, not the text: its 128-bit XXH3 digest, so that
    telling a billion texts apart by key is wrong with odds below 1e-20. XXH3 is no
    cryptographic hash: the odds hold for natural text, not for texts crafted to collide. Its
    seed is drawn anew in every process (ids never depend on the keys' values), so no fixed set
    of crafted texts is known in advance to collide.
    """

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add_all(self, texts: "pyarrow.StringArray") -> tuple[np.ndarray, "pyarrow.StringArray"]:
        """The id of each of `texts` (new ones numbered on, in order of first appearance), and the
        new texts in that order."""
        keys, before = _keys(texts), len(self._ids)
        # One pass of dict lookups in C: a text seen before gets its id; a new one is entered as
        # `before` + its first position in the batch, which its repeats in the batch then get too.
        ids = np.fromiter(map(self._ids.setdefault, keys, itertools.count(before)), np.int64, len(keys))
        firsts = np.flatnonzero(ids == np.arange(before, before + len(keys)))
        if len(firsts) and len(firsts) < len(keys):  # renumber the new texts 0, 1, 2, ... after `before`
            new = ids >= before
            ids[new] = before + np.searchsorted(firsts, ids[new] - before)
        if len(firsts):
            self._ids.update(zip(map(keys.__getitem__, firsts.tolist()), range(before, before + len(firsts))))
        return ids, texts.take(firsts)

    def find_all(self, other: "TextIds") -> np.ndarray:
        """For each text of `other`, in its id order: its id here, or -1 when this set lacks it."""
        return np.fromiter(map(self._ids.get, other._ids, itertools.repeat(-1)), np.int64, len(other._ids))


def _keys(texts: "pyarrow.StringArray") -> list[bytes]:
    """Each text's 16-byte key: XXH3-128 (this process's seed) over its UTF-8 bytes. Arrow
    hands them over as bytes objects (no decoding to str) and the hash runs in C: about a
    third of a microsecond a text, the bytes objects included."""
    import pyarrow as pa
    from xxhash import xxh3_128_digest

    values = texts.cast(pa.binary()).to_numpy(zero_copy_only=False)
    return list(map(xxh3_128_digest, values, itertools.repeat(_SEED)))


_SEED = int.from_bytes(os.urandom(8), "little")  # XXH3's 64-bit seed, drawn once per process


def _strings(texts: Any) -> "pyarrow.StringArray":
    """`texts` (an Arrow array, or any iterable of str / None) as an Arrow string array."""
    import pyarrow as pa

    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), pa.string())
    return texts.cast(pa.string()) if not pa.types.is_string(texts.type) else texts


def texts_digest(texts: "pyarrow.StringArray") -> str:
    """The digest of a chunk's texts, in order (the embedding cache's key): SHA-256 over their
    UTF-8 byte lengths (int64, little-endian) and then their bytes, read from Arrow's buffers."""
    import pyarrow.compute as pc

    lengths = pc.binary_length(texts).to_numpy(zero_copy_only=False).astype("<i8")
    offsets = np.frombuffer(texts.buffers()[1], np.int32)[texts.offset : texts.offset + len(texts) + 1]
    digest = hashlib.sha256(TEXTS_FORMAT.encode())
    digest.update(lengths.tobytes())
    if len(texts) and offsets[-1] > offsets[0]:
        digest.update(memoryview(texts.buffers()[2])[offsets[0] : offsets[-1]])
    return digest.hexdigest()


TEXTS_FORMAT = "utf8-lengths-then-bytes-1"  # the chunk digest's layout; part of mining's recorded settings


class PositivePairs:
    """Each query's distinct positive ids in order of first appearance, and its input rows.

    The (query, passage) ids of every batch are kept as arrays and folded to their first
    appearances whenever the unfolded ones outnumber them, so memory follows the distinct pairs.
    """

    FOLD_AT = 1 << 16  # fewest unfolded pairs worth a fold

    def __init__(self) -> None:
        self.queries: list[np.ndarray] = []
        self.docs: list[np.ndarray] = []
        self.counts = np.zeros(0, np.int64)  # per query: input rows, duplicates included
        self.distinct = 0  # pairs in the folded head of the lists
        self.pending = 0

    def add(self, queries: np.ndarray, docs: np.ndarray) -> None:
        counts = np.bincount(queries, minlength=len(self.counts))
        counts[: len(self.counts)] += self.counts
        self.counts = counts
        self.queries.append(queries)
        self.docs.append(docs)
        self.pending += len(queries)
        if self.pending > max(self.distinct, self.FOLD_AT):
            self._fold()

    def _fold(self) -> tuple[np.ndarray, np.ndarray]:
        queries = np.concatenate(self.queries) if self.queries else np.zeros(0, np.int64)
        docs = np.concatenate(self.docs) if self.docs else np.zeros(0, np.int64)
        order = np.lexsort((docs, queries))  # stable: equal pairs keep input order, the first leads
        q, d = queries[order], docs[order]
        leads = np.ones(len(order), bool)
        leads[1:] = (q[1:] != q[:-1]) | (d[1:] != d[:-1])
        keep = np.sort(order[leads])
        queries, docs = queries[keep], docs[keep]
        self.queries, self.docs, self.distinct, self.pending = [queries], [docs], len(keep), 0
        return queries, docs

    def grouped(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR form: (offsets [queries + 1], each query's distinct positive ids in order of first appearance)."""
        queries, docs = self._fold()
        order = np.argsort(queries, kind="stable")
        offsets = np.zeros(len(self.counts) + 1, np.int64)
        np.cumsum(np.bincount(queries, minlength=len(self.counts)), out=offsets[1:])
        return offsets, docs[order]


def text_weight(text: str) -> int:
    """A text's embedding cost, roughly: its characters up to what a 512-token model reads, plus a
    constant for the special tokens. Balances units of work between actors (passages cost
    several times what queries do)."""
    return min(len(text), _READ_CHARACTERS) + _SPECIAL_TOKENS


_READ_CHARACTERS, _SPECIAL_TOKENS = 2048, 8


class Writes:
    """Chunk files written by two threads while the caller reads on (creating a file costs about
    a millisecond here, and file I/O releases the GIL); at most `depth` writes wait at once."""

    def __init__(self, depth: int = 16) -> None:
        self.depth = depth
        self.pending: list = []
        self.pool = None

    def submit(self, write, *args, **kwargs) -> None:
        from concurrent.futures import ThreadPoolExecutor

        if self.pool is None:
            self.pool = ThreadPoolExecutor(2, thread_name_prefix="prepare-write")
        self.pending.append(self.pool.submit(write, *args, **kwargs))
        if len(self.pending) >= self.depth:
            self.pending.pop(0).result()  # raises the write's error (a full disk: DataError)

    def wait(self) -> None:
        """Every write done, or the first failure raised."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pending = []
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None


class ChunkWriter:
    """Collect texts and write them as `<prefix>-00000.texts`, ... of `chunk_rows` texts each (Parquet)."""

    def __init__(self, directory: Optional[str], prefix: str, chunk_rows: int, writes: Writes):
        self.directory, self.prefix, self.chunk_rows = directory, prefix, chunk_rows
        self.writes = writes  # the owner waits for them (Prepared.finish)
        self.buffer: list = []  # Arrow string arrays, together under chunk_rows texts
        self.buffered = 0
        self.paths: list[str] = []
        self.digests: list[str] = []
        self.weights: list[int] = []  # per chunk: the sum of its texts' text_weight
        self.num_rows = 0
        self.in_memory: list[str] = []  # the texts, only when there is no directory (tests, small runs)

    def add_all(self, texts: "pyarrow.StringArray") -> None:
        start = 0
        while start < len(texts):
            taken = texts.slice(start, self.chunk_rows - self.buffered)
            self.buffer.append(taken)
            self.buffered += len(taken)
            self.num_rows += len(taken)
            start += len(taken)
            if self.buffered == self.chunk_rows:
                self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        import pyarrow as pa
        import pyarrow.compute as pc

        texts = pa.concat_arrays(self.buffer)
        self.digests.append(texts_digest(texts))
        characters = pc.utf8_length(texts).to_numpy(zero_copy_only=False)
        self.weights.append(int(np.minimum(characters, _READ_CHARACTERS).sum()) + _SPECIAL_TOKENS * len(texts))  # text_weight, summed
        if self.directory is not None:
            # Parquet inside, but not named .parquet: whoever reads the output directory as a
            # data set must not pick the work files up.
            path = store.join(self.directory, f"{self.prefix}-{len(self.paths):05d}.texts")
            self.writes.submit(store.write_texts, path, texts)
            self.paths.append(path)
        else:
            self.paths.append(f"<memory>-{len(self.paths)}")
            self.in_memory.extend(texts.to_pylist())
        self.buffer, self.buffered = [], 0

    def chunked(self) -> store.Chunked:
        return store.Chunked(tuple(self.paths), self.chunk_rows, self.num_rows)


@dataclass(frozen=True)
class PrepareSummary:
    """What the prepare stage found and wrote: counts, the text chunks and the data's digest."""

    num_rows: int  # input (anchor, positive) rows
    num_queries: int  # unique queries
    num_pairs: int  # distinct (query, positive) pairs
    corpus_size: int  # unique passages: positives, then the extra corpus's new ones
    max_positives: int  # most input rows of one query (duplicates count, as in sentence-transformers)
    mean_positives: float
    corpus: store.Chunked  # the passages' text chunks
    queries: store.Chunked  # the queries' text chunks
    corpus_digests: tuple[str, ...]  # per corpus chunk: the embedding cache's key
    query_digests: tuple[str, ...]
    corpus_weights: tuple[int, ...]  # per corpus chunk: its embedding cost (text_weight)
    query_weights: tuple[int, ...]
    positives: store.Chunked  # per query, the corpus ids of its positives, and of its own text (-1: none)
    digest: str  # of everything above that decides the output (a rerun on other data is refused)


@dataclass
class Prepared:
    """The deduplicated inputs of a mining run (see the module docstring)."""

    chunk_rows: int
    directory: Optional[str] = None  # None: keep the texts in memory instead (unit tests)
    corpus_ids: TextIds = field(default_factory=TextIds)
    query_ids: TextIds = field(default_factory=TextIds)
    pairs: PositivePairs = field(default_factory=PositivePairs)
    num_rows: int = 0
    self_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per query, set by finish()

    def __post_init__(self) -> None:
        self.writes = Writes()
        self.corpus = ChunkWriter(self.directory, "corpus", self.chunk_rows, self.writes)
        self.queries = ChunkWriter(self.directory, "queries", self.chunk_rows, self.writes)

    def add_corpus(self, texts: Iterable[Optional[str]]) -> None:
        """Extra corpus passages (before any pair: sentence-transformers puts them first)."""
        texts = _strings(texts)
        _, new = self.corpus_ids.add_all(texts.drop_null())  # an empty cell is no passage
        self.corpus.add_all(new)

    def add_pairs(self, anchors: Iterable[Optional[str]], positives: Iterable[Optional[str]]) -> None:
        """Rows of (anchor, positive): Arrow string arrays, or iterables of str."""
        anchors, positives = _strings(anchors), _strings(positives)
        if len(anchors) != len(positives):
            raise ValueError(f"{len(anchors)} anchors but {len(positives)} positives")
        if anchors.null_count or positives.null_count:
            nulls = [column.is_null().to_numpy(zero_copy_only=False) for column in (anchors, positives)]
            row = int(np.flatnonzero(nulls[0] | nulls[1])[0])
            raise DataError(
                f"dataset row {self.num_rows + row} has an empty {'anchor' if not anchors[row].is_valid else 'positive'}; "
                "drop rows with missing text before mining"
            )
        queries, new_queries = self.query_ids.add_all(anchors)
        self.queries.add_all(new_queries)
        docs, new_docs = self.corpus_ids.add_all(positives)
        self.corpus.add_all(new_docs)
        self.pairs.add(queries, docs)
        self.num_rows += len(anchors)

    @property
    def positives(self) -> list[list[int]]:
        """Per query, its distinct positive corpus ids in order of first appearance."""
        offsets, ids = self.pairs.grouped()
        return [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]

    def finish(self) -> "PrepareSummary":
        """Flush the chunks, write the positives (and own-text ids) per query chunk; return the run's summary."""
        if self.num_rows == 0:
            raise DataError("the dataset is empty; give mining a source with at least one (anchor, positive) row")
        self.corpus.flush()
        self.queries.flush()
        # Only now: a query's text may enter the corpus as a later row's positive.
        self.self_ids = self.corpus_ids.find_all(self.query_ids)
        offsets, ids = self.pairs.grouped()
        positive_paths = []
        per_file = self.chunk_rows * POSITIVE_CHUNKS
        for i in range(-(-(len(offsets) - 1) // per_file)):
            lo, hi = i * per_file, min((i + 1) * per_file, len(offsets) - 1)
            if self.directory is not None:
                path = store.join(self.directory, f"positives-{i:05d}.npz")
                chunk_offsets, chunk_ids = offsets[lo : hi + 1] - offsets[lo], ids[offsets[lo] : offsets[hi]]
                self.writes.submit(store.write_npz, path, offsets=chunk_offsets, ids=chunk_ids, self_ids=self.self_ids[lo:hi])
                positive_paths.append(path)
        self.writes.wait()
        counts = self.pairs.counts
        arrays = (np.array([len(offsets), len(ids)]), offsets, ids, counts)  # the sizes first: one way to read the bytes
        pairs = hashlib.sha256(b"".join(array.astype("<i8").tobytes() for array in arrays)).hexdigest()
        digest = store.text_digest(self.corpus.digests, self.queries.digests, pairs)
        return PrepareSummary(
            num_rows=self.num_rows,
            num_queries=len(self.query_ids),
            num_pairs=len(ids),
            corpus_size=len(self.corpus_ids),
            max_positives=int(counts.max()),
            mean_positives=float(np.mean(counts)),
            corpus=self.corpus.chunked(),
            queries=self.queries.chunked(),
            corpus_digests=tuple(self.corpus.digests),
            query_digests=tuple(self.queries.digests),
            corpus_weights=tuple(self.corpus.weights),
            query_weights=tuple(self.queries.weights),
            positives=store.Chunked(tuple(positive_paths), per_file, len(counts)),
            digest=digest,
        )


def read_positives(chunks: store.Chunked, start: int, end: int) -> tuple[list[list[int]], np.ndarray]:
    """Per query in [start, end): its distinct positive corpus ids, and the corpus id of its own
    text (-1 when the corpus lacks it)."""

    def load(path: str) -> list[tuple[list[int], int]]:
        data = store.read_npz(path)
        offsets, ids, self_ids = data["offsets"], data["ids"], data["self_ids"]
        return [(ids[offsets[i] : offsets[i + 1]].tolist(), int(self_ids[i])) for i in range(len(offsets) - 1)]

    rows = [row for piece in chunks.read_rows(start, end, load) for row in piece]
    return [positives for positives, _ in rows], np.fromiter((own for _, own in rows), np.int64, len(rows))


def prepare_inputs(
    dataset, anchor: str, positive: str, corpus, corpus_column: Optional[str], directory: str, chunk_rows: int
) -> PrepareSummary:
    """Read the sources (in order, streaming) into deduplicated chunks under `directory`.

    Runs inside a Ray task: the texts pass through it once and are not all kept. They are
    read in file order (ids in order of first appearance, as sentence-transformers gives
    them) and checked on the way: text that is not valid UTF-8 is a DataError naming the
    file and row.
    """
    from raytune_st.data.sources import iter_texts

    prepared = Prepared(chunk_rows=chunk_rows, directory=directory)
    if corpus is not None:
        for (texts,) in iter_texts(corpus, [corpus_column], arrow=True):
            prepared.add_corpus(texts)
    for anchors, positives in iter_texts(dataset, [anchor, positive], arrow=True):
        prepared.add_pairs(anchors, positives)
    return prepared.finish()
