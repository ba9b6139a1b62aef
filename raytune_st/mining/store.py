"""Files of a mining run: the work directory layout and atomic reads/writes (local or URI).

``<output>/`` holds the result (``part-00000.parquet`` ..., stats.json, config.yaml,
scores.png); ``<output>/_work/`` what a rerun reuses:

* ``prep/``: the deduplicated corpus and queries as text chunks, and each query's positives.
* ``embeddings/``: one ``.npz`` (ids + vectors) per text chunk, named by a hash of
  (model, prompts, texts), so a rerun or another run on the same texts reuses it.
* ``parts/``: per output part, the scores and counters behind the statistics (``.npz``)
  and its manifest (``.json``): the size and sha256 of the part and of the scores, written
  last, so that a part counts as done only when it is whole.
* ``run.json``: the fingerprint of the settings and data the parts were mined with.

Every file is written through a temporary name. Files a rerun reuses are trusted only
after their bytes are checked against the digest recorded when they were written
(:class:`Digest`): an embedding-cache file carries its own ``.sha256.json`` record.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from raytune_st.errors import DataError
from raytune_st.outputs import filesystem, write_atomic
from raytune_st.outputs import join as join  # mining code joins its paths through the store


@dataclass(frozen=True)
class Digest:
    """Size and sha256 of a file's bytes, recorded when it is written and checked before it is trusted."""

    size: int
    sha256: str

    @classmethod
    def of(cls, data: bytes) -> "Digest":
        return cls(len(data), hashlib.sha256(data).hexdigest())

    def to_dict(self) -> dict:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, value: dict) -> "Digest":
        return cls(int(value["size"]), str(value["sha256"]))

    def mismatch(self, data: bytes) -> Optional[str]:
        """Why `data` is not the recorded file (None when it is)."""
        if len(data) != self.size:
            return f"{len(data):,} bytes where {self.size:,} were written"
        if hashlib.sha256(data).hexdigest() != self.sha256:
            return "its sha256 differs from the one recorded when it was written"
        return None


class CorruptFile(DataError):
    """A work file whose bytes are not the ones written (truncated, overwritten, half copied)."""

    def __init__(self, message: str, reason: Optional[str] = None):
        super().__init__(message)
        self.reason = reason  # what differs, without the path (not kept when Ray pickles the error)


def put(path: str, data: bytes) -> Digest:
    """Write `data` to `path` (local or URI) atomically; returns its digest."""
    fs, target = filesystem(path)
    write_atomic(fs, target, data)
    return Digest.of(data)


def get(path: str, expected: Optional[Digest] = None) -> bytes:
    """The bytes of `path`; with `expected`, raises CorruptFile unless they are the recorded ones."""
    fs, target = filesystem(path)
    reason = None
    if expected is not None:
        size = fs.get_file_info(target).size or 0
        if size != expected.size:  # cheap first: a truncated file is known without reading it
            reason = f"{size:,} bytes where {expected.size:,} were written"
    if reason is None:
        with fs.open_input_stream(target) as handle:
            data = handle.read()
        reason = expected.mismatch(data) if expected is not None else None
    if reason is not None:
        raise CorruptFile(f"{path!r} is damaged ({reason})", reason)
    return data


def intact(path: str, expected: Digest) -> Optional[str]:
    """None when `path` holds exactly the recorded bytes, else why not (missing, truncated, changed)."""
    if not exists(path):
        return "it is missing"
    try:
        get(path, expected)
    except CorruptFile as exc:
        return exc.reason
    return None


def _digest_path(path: str) -> str:
    return f"{path}.sha256.json"


def put_checked(path: str, data: bytes) -> Digest:
    """Write `path`, then its digest beside it (``<path>.sha256.json``): the record is the proof it is whole."""
    digest = put(path, data)
    put(_digest_path(path), (json.dumps(digest.to_dict()) + "\n").encode())
    return digest


def recorded(path: str) -> Optional[Digest]:
    """The digest :func:`put_checked` recorded for `path`, or None (never written whole, or unreadable record)."""
    try:
        return Digest.from_dict(json.loads(get(_digest_path(path))))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def looks_complete(path: str) -> bool:
    """Cheap check of a :func:`put_checked` file: its record exists and its size matches (no read)."""
    digest = recorded(path)
    if digest is None:
        return False
    fs, target = filesystem(path)
    return fs.get_file_info(target).size == digest.size


def get_checked(path: str) -> bytes:
    """The bytes of a :func:`put_checked` file, verified against its record; CorruptFile otherwise.

    A damaged file is removed with its record, so that a rerun computes it again.
    """
    digest = recorded(path)
    try:
        if digest is None:
            raise CorruptFile(f"{path!r} has no record of a complete write")
        return get(path, digest)
    except CorruptFile:
        for name in (path, _digest_path(path)):
            try:
                delete(name)
            except OSError:
                pass  # another reader removed it first
        raise


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, target = filesystem(path)
    return fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound


def list_names(directory: str) -> list[str]:
    """Base names of the files directly inside `directory` ([] when it does not exist)."""
    import pyarrow.fs

    fs, root = filesystem(directory)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pyarrow.fs.FileType.File)


def delete(path: str) -> None:
    fs, target = filesystem(path)
    fs.delete_file(target)


def parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_parquet(path: str, table) -> Digest:
    return put(path, parquet_bytes(table))


def read_parquet(path: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(get(path)))


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        return {name: loaded[name] for name in loaded.files}


def write_npz(path: str, **arrays: np.ndarray) -> Digest:
    return put(path, npz_bytes(**arrays))


def read_npz(path: str, expected: Optional[Digest] = None) -> dict[str, np.ndarray]:
    return load_npz(get(path, expected))


def write_text(path: str, text: str) -> None:
    put(path, text.encode())


def read_text(path: str) -> str:
    return get(path).decode()


def text_digest(*parts: object) -> str:
    """A stable hex digest of strings/reprs (the cache key of an embedding shard)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else repr(part).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@dataclass(frozen=True)
class Chunked:
    """A sequence of rows stored as consecutive chunk files of `chunk_rows` rows (the last may be shorter)."""

    paths: tuple[str, ...]
    chunk_rows: int
    num_rows: int

    def chunk_range(self, i: int) -> tuple[int, int]:
        return i * self.chunk_rows, min((i + 1) * self.chunk_rows, self.num_rows)

    def read_rows(self, start: int, end: int, load: Callable[[str], Sequence]) -> list:
        """Rows [start, end) as a list of the per-chunk slices `load(path)[a:b]`."""
        pieces = []
        for i in range(start // self.chunk_rows, (max(end, start + 1) - 1) // self.chunk_rows + 1):
            lo, hi = self.chunk_range(i)
            if hi <= start or lo >= end:
                continue
            rows = load(self.paths[i])
            pieces.append(rows[max(start, lo) - lo : min(end, hi) - lo])
        return pieces


def load_texts(path: str) -> list[str]:
    return read_parquet(path).column("text").to_pylist()


def load_vectors(path: str) -> np.ndarray:
    """The vectors of one embedding-cache file, verified against the digest recorded when it was written."""
    return load_npz(get_checked(path))["embeddings"]


def read_texts(chunks: Chunked, start: int, end: int) -> list[str]:
    return [t for piece in chunks.read_rows(start, end, load_texts) for t in piece]


def read_vectors(chunks: Chunked, start: int, end: int) -> np.ndarray:
    pieces = chunks.read_rows(start, end, load_vectors)
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros((0, 0), np.float32)
