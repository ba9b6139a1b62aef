"""Writing job outputs to a local directory or a URI, all-or-nothing.

A job stages its small files (metrics, resolved config, plots) and writes them only at the
end, so a failed run leaves no half-written output behind. Large streamed outputs
(Parquet parts) are written under the same directory through pyarrow's filesystems.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import TYPE_CHECKING, Union

from raytune_st.errors import DataError

if TYPE_CHECKING:
    import pyarrow.fs


def filesystem(path: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if "://" in base else os.path.join(base, *parts)


class OutputDir:
    """An output directory (local or URI) that a job writes its results into."""

    def __init__(self, path: str):
        self.path = path
        self.fs, self.root = filesystem(path)

    def check_writable(self, key: str = "output.path") -> None:
        """Create the directory and prove it is writable now, not after hours of work.

        `key` is the config key that names this directory, for the error message.
        """
        probe = posixpath.join(self.root, f".write-check-{uuid.uuid4().hex}")
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as handle:
                handle.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise DataError(f"cannot write to directory {self.path!r} ({exc}); choose a writable {key}") from None

    def write(self, name: str, data: Union[str, bytes]) -> str:
        """Write one file atomically where the filesystem allows (local: temp file + rename)."""
        if isinstance(data, str):
            data = data.encode()
        target = posixpath.join(self.root, name)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        tmp = target + f".tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as handle:
            handle.write(data)
        self.fs.move(tmp, target)
        return target

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(posixpath.join(self.root, name)).type != pyarrow.fs.FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(posixpath.join(self.root, name)) as handle:
            return handle.read()
