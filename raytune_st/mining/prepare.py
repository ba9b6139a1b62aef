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
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from raytune_st.errors import DataError
from raytune_st.mining import store


class TextIds:
    """Ids for distinct strings, in order of first appearance."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, text: str) -> tuple[int, bool]:
        """(id of `text`, whether it is new)."""
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        found = self._ids.get(key)
        if found is not None:
            return found, False
        self._ids[key] = len(self._ids)
        return self._ids[key], True

    def find_all(self, other: "TextIds") -> np.ndarray:
        """For each text of `other`, in its id order: its id here, or -1 when this set lacks it."""
        return np.fromiter((self._ids.get(key, -1) for key in other._ids), np.int64, len(other._ids))


def text_weight(text: str) -> int:
    """A text's embedding cost, roughly: its characters up to what a 512-token model reads, plus a
    constant for the special tokens. Balances units of work between actors (passages cost
    several times what queries do)."""
    return min(len(text), 2048) + 8


class ChunkWriter:
    """Collect texts and write them as `<prefix>-00000.texts`, ... of `chunk_rows` texts each (Parquet)."""

    def __init__(self, directory: Optional[str], prefix: str, chunk_rows: int):
        self.directory, self.prefix, self.chunk_rows = directory, prefix, chunk_rows
        self.buffer: list[str] = []
        self.paths: list[str] = []
        self.digests: list[str] = []
        self.weights: list[int] = []  # per chunk: the sum of its texts' text_weight
        self.num_rows = 0
        self.in_memory: list[str] = []  # the texts, only when there is no directory (tests, small runs)

    def add(self, text: str) -> None:
        self.buffer.append(text)
        self.num_rows += 1
        if len(self.buffer) == self.chunk_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        self.digests.append(store.text_digest(*self.buffer))
        self.weights.append(sum(text_weight(t) for t in self.buffer))
        if self.directory is not None:
            import pyarrow as pa

            # Parquet inside, but not named .parquet: whoever reads the output directory as a
            # data set must not pick the work files up.
            path = store.join(self.directory, f"{self.prefix}-{len(self.paths):05d}.texts")
            store.write_parquet(path, pa.table({"text": pa.array(self.buffer, pa.string())}))
            self.paths.append(path)
        else:
            self.paths.append(f"<memory>-{len(self.paths)}")
            self.in_memory.extend(self.buffer)
        self.buffer = []

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
    positives: list[list[int]] = field(default_factory=list)  # per query: distinct corpus ids, in order
    raw_counts: list[int] = field(default_factory=list)  # per query: its input rows (duplicates included)
    num_rows: int = 0
    self_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # per query, set by finish()

    def __post_init__(self) -> None:
        self.corpus = ChunkWriter(self.directory, "corpus", self.chunk_rows)
        self.queries = ChunkWriter(self.directory, "queries", self.chunk_rows)

    def add_corpus(self, texts: Iterable[Optional[str]]) -> None:
        """Extra corpus passages (before any pair: sentence-transformers puts them first)."""
        for text in texts:
            if text is None:
                continue  # an empty cell is no passage
            doc, new = self.corpus_ids.add(text)
            if new:
                self.corpus.add(text)

    def add_pairs(self, anchors: Iterable[Optional[str]], positives: Iterable[Optional[str]]) -> None:
        for anchor, positive in zip(anchors, positives):
            if anchor is None or positive is None:
                raise DataError(
                    f"dataset row {self.num_rows} has an empty {'anchor' if anchor is None else 'positive'}; "
                    "drop rows with missing text before mining"
                )
            query, new_query = self.query_ids.add(anchor)
            if new_query:
                self.queries.add(anchor)
                self.positives.append([])
                self.raw_counts.append(0)
            doc, new_doc = self.corpus_ids.add(positive)
            if new_doc:
                self.corpus.add(positive)
            if doc not in self.positives[query]:
                self.positives[query].append(doc)
            self.raw_counts[query] += 1
            self.num_rows += 1

    def finish(self) -> "PrepareSummary":
        """Flush the chunks, write the positives (and own-text ids) per query chunk; return the run's summary."""
        if self.num_rows == 0:
            raise DataError("the dataset is empty; give mining a source with at least one (anchor, positive) row")
        self.corpus.flush()
        self.queries.flush()
        # Only now: a query's text may enter the corpus as a later row's positive.
        self.self_ids = self.corpus_ids.find_all(self.query_ids)
        positive_paths = []
        for i in range(len(self.queries.paths)):
            lo, hi = i * self.chunk_rows, min((i + 1) * self.chunk_rows, len(self.positives))
            offsets, ids = positive_offsets(self.positives[lo:hi])
            if self.directory is not None:
                path = store.join(self.directory, f"positives-{i:05d}.npz")
                store.write_npz(path, offsets=offsets, ids=ids, self_ids=self.self_ids[lo:hi])
                positive_paths.append(path)
        counts = np.asarray(self.raw_counts)
        digest = store.text_digest(
            self.corpus.digests, self.queries.digests, [p for ps in self.positives for p in (*ps, -1)], counts.tolist()
        )
        return PrepareSummary(
            num_rows=self.num_rows,
            num_queries=len(self.query_ids),
            num_pairs=int(sum(len(p) for p in self.positives)),
            corpus_size=len(self.corpus_ids),
            max_positives=int(counts.max()),
            mean_positives=float(np.mean(counts)),
            corpus=self.corpus.chunked(),
            queries=self.queries.chunked(),
            corpus_digests=tuple(self.corpus.digests),
            query_digests=tuple(self.queries.digests),
            corpus_weights=tuple(self.corpus.weights),
            query_weights=tuple(self.queries.weights),
            positives=store.Chunked(tuple(positive_paths), self.chunk_rows, len(self.positives)),
            digest=digest,
        )


def positive_offsets(positives: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """CSR form of per-query id lists: (offsets [n+1], flat ids)."""
    lengths = np.fromiter((len(p) for p in positives), dtype=np.int64, count=len(positives))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.fromiter((i for p in positives for i in p), dtype=np.int64, count=int(offsets[-1]))
    return offsets, ids


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
        for (texts,) in iter_texts(corpus, [corpus_column]):
            prepared.add_corpus(texts)
    for anchors, positives in iter_texts(dataset, [anchor, positive]):
        prepared.add_pairs(anchors, positives)
    return prepared.finish()
