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
(:class:`Digest`); an embedding-cache file is one object sealed with the sha256 of its own
arrays (:func:`sealed_npz_bytes`), so a cache shared by several runs needs no second file.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from raytune_st.errors import DataError
from raytune_st.outputs import filesystem, is_uri, write_atomic
from raytune_st.outputs import join as join  # mining code joins its paths through the store

if TYPE_CHECKING:
    import pyarrow


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


# The member of a sealed .npz that holds the sha256 of all its other members.
_SEAL = "__sha256__"
_ZIP_END = b"PK\x05\x06"  # the zip end-of-central-directory record numpy writes last (22 bytes, no comment)


def _arrays_sha256(arrays: dict[str, np.ndarray]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        for part in (name.encode(), array.dtype.str.encode(), repr(array.shape).encode(), array.tobytes()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.digest()


def sealed_npz_bytes(**arrays: np.ndarray) -> bytes:
    """An .npz of `arrays` that carries the sha256 of its own contents: one object proves itself whole.

    One object, not a file plus a record beside it, so that two runs sharing an embedding cache
    can never pair one run's file with the other's record (and drop a good file).
    """
    if _SEAL in arrays:
        raise ValueError(f"{_SEAL!r} is reserved for the seal")
    return npz_bytes(**arrays, **{_SEAL: np.frombuffer(_arrays_sha256(arrays), np.uint8)})


def unseal(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of a :func:`sealed_npz_bytes` object; raises CorruptFile unless they are the sealed ones."""
    import zipfile
    import zlib

    try:
        arrays = load_npz(data)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as exc:
        reason = f"not the .npz that was written: {len(data):,} bytes, {exc}"
        raise CorruptFile(reason, reason) from None
    seal = arrays.pop(_SEAL, None)
    if seal is None:
        reason = "it carries no seal (written by an older raytune_st, or not by raytune_st)"
        raise CorruptFile(reason, reason)
    if seal.tobytes() != _arrays_sha256(arrays):
        reason = "its contents differ from the sha256 sealed in it when it was written"
        raise CorruptFile(reason, reason)
    return arrays


def looks_sealed(path: str) -> bool:
    """Cheap check of a sealed file, reading 22 bytes: it exists and ends where a whole zip ends.

    A write cut short loses the zip's closing record; damage that keeps it is caught by
    :func:`get_sealed`, which checks the seal.
    """
    import pyarrow.fs

    fs, target = filesystem(path)
    info = fs.get_file_info(target)
    if info.type != pyarrow.fs.FileType.File or (info.size or 0) < len(_ZIP_END) + 18:
        return False
    with fs.open_input_file(target) as handle:
        return handle.read_at(22, info.size - 22).startswith(_ZIP_END)


def get_sealed(path: str) -> dict[str, np.ndarray]:
    """The arrays of a sealed file, verified; CorruptFile (naming the path) otherwise.

    A damaged file is removed, so that a rerun computes it again.
    """
    try:
        return unseal(get(path))
    except FileNotFoundError:
        raise CorruptFile(f"{path!r} is missing", "it is missing") from None
    except CorruptFile as exc:
        try:
            delete(path)
        except OSError:
            pass  # another reader removed it first
        raise CorruptFile(f"{path!r} is damaged ({exc.reason})", exc.reason) from None


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


def parquet_bytes(table, **options: Any) -> bytes:
    """`table` as the bytes of a Parquet file; `options` go to ``pyarrow.parquet.write_table``."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
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


def write_texts(path: str, texts: "pyarrow.StringArray") -> None:
    """One chunk of texts as a Parquet file of one ``text`` column, written atomically.

    On a local disk it is written uncompressed and without a dictionary (the texts are distinct):
    snappy cost 1.1 ms of CPU per 2,048 debian texts, a quarter of the prepare task's CPU, to
    save 460 KiB of local disk. On object storage, where every byte crosses the network, snappy.
    No digest is taken: a chunk's texts are known by their own digest (``texts_digest``).
    """
    import pyarrow as pa

    compression = "snappy" if is_uri(path) else "none"
    fs, target = filesystem(path)
    write_atomic(fs, target, parquet_bytes(pa.table({"text": texts}), compression=compression, use_dictionary=False))


def load_texts(path: str) -> list[str]:
    return read_parquet(path).column("text").to_pylist()


def load_vectors(path: str) -> np.ndarray:
    """The vectors of one embedding-cache file, verified against the seal it was written with."""
    return get_sealed(path)["embeddings"]


def read_texts(chunks: Chunked, start: int, end: int) -> list[str]:
    return [t for piece in chunks.read_rows(start, end, load_texts) for t in piece]


def read_vectors(chunks: Chunked, start: int, end: int) -> np.ndarray:
    pieces = chunks.read_rows(start, end, load_vectors)
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros((0, 0), np.float32)
