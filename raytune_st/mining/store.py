"""Files of a mining run: the work directory layout and atomic reads/writes (local or URI).

``<output>/`` holds the result (``part-00000.parquet`` ..., stats.json, config.yaml,
scores.png); ``<output>/_work/`` what a rerun reuses:

* ``prep/``: the deduplicated corpus and queries as text chunks, and each query's positives.
* ``embeddings/``: one ``.npz`` (ids + vectors) per text chunk, named by a hash of
  (model, prompts, texts), so a rerun or another run on the same texts reuses it.
* ``parts/``: per output part, the scores and counters behind the statistics.
* ``run.json``: the fingerprint of the settings and data the parts were mined with.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import uuid
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from raytune_st.outputs import filesystem


def _put(path: str, data: bytes) -> None:
    """Write `data` to `path` (local or URI) through a temporary name, so readers never see half a file."""
    fs, target = filesystem(path)
    fs.create_dir(posixpath.dirname(target), recursive=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    with fs.open_output_stream(tmp) as handle:
        handle.write(data)
    fs.move(tmp, target)


def _get(path: str) -> bytes:
    fs, target = filesystem(path)
    with fs.open_input_stream(target) as handle:
        return handle.read()


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


def write_parquet(path: str, table) -> None:
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _put(path, buffer.getvalue())


def read_parquet(path: str):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(_get(path)))


def write_npz(path: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _put(path, buffer.getvalue())


def read_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(_get(path)), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def write_text(path: str, text: str) -> None:
    _put(path, text.encode())


def read_text(path: str) -> str:
    return _get(path).decode()


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
    return read_npz(path)["embeddings"]


def read_texts(chunks: Chunked, start: int, end: int) -> list[str]:
    return [t for piece in chunks.read_rows(start, end, load_texts) for t in piece]


def read_vectors(chunks: Chunked, start: int, end: int) -> np.ndarray:
    pieces = chunks.read_rows(start, end, load_vectors)
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros((0, 0), np.float32)


def join(base: str, *parts: str) -> str:
    from raytune_st.outputs import join as output_join

    return output_join(base, *parts)
