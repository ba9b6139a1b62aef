"""Files of a job, local or at a URI: one filesystem helper, one atomic write, and clean-up.

A job stages its small files (metrics, resolved config, plots) and writes them only at the
end, so a failed run leaves no half-written output behind. Large streamed outputs
(Parquet parts) are written under the same directory through pyarrow's filesystems, with
:func:`write_atomic` too. :func:`removed_on_failure` takes back the directories a failed
run created, so that it leaves no empty output directory behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import uuid
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Optional, Union

from raytune_st.errors import DataError

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.fs


def is_uri(path: str) -> bool:
    return "://" in path


def credentials_problem(uri: str) -> Optional[str]:
    """Why `uri` must be refused when it carries a user or password (``s3://KEY:SECRET@bucket/...``),
    which would end up in logs and saved configs; None when it carries none. The message never
    repeats them."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return None
    return (
        f"the URI {parts.scheme}://...@{parts.hostname or ''}/... carries credentials, which would end up in logs "
        "and saved configs; remove them from the URI and set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or "
        "GOOGLE_APPLICATION_CREDENTIALS) in the environment instead"
    )


def filesystem(path: str) -> tuple["pyarrow.fs.FileSystem", str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://, file://, ...)."""
    import pyarrow.fs

    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    problem = credentials_problem(path)
    if problem:
        raise DataError(problem)
    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad or unsupported URIs
        raise DataError(f"cannot open {path!r}: {exc}; check the URI scheme and your credentials") from None


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_uri(base) else os.path.join(base, *parts)


def is_inside(path: str, directory: str) -> bool:
    """Whether `path` lies below `directory` (both local paths, or both URIs)."""
    if is_uri(path) != is_uri(directory):
        return False
    if not is_uri(path):
        path, directory = (os.path.abspath(os.path.expanduser(p)) for p in (path, directory))
    separator = "/" if is_uri(directory) else os.sep
    return path.rstrip(separator).startswith(directory.rstrip(separator) + separator)


def write_atomic(fs: "pyarrow.fs.FileSystem", target: str, data: bytes) -> None:
    """Write `data` to `target` through a temporary name, so that readers never see half a file.

    A local rename is atomic; on object stores the temporary object is copied, and a reader
    still sees either nothing or the whole file. Temporary names contain ``.tmp-``.
    """
    fs.create_dir(posixpath.dirname(target), recursive=True)
    tmp = f"{target}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open_output_stream(tmp) as handle:
            handle.write(data)
        fs.move(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            fs.delete_file(tmp)  # a full disk must not keep half a file under a temporary name
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(
                f"no space left to write {target!r} ({len(data):,} bytes); free some space or choose another "
                "output directory, then rerun: what was written whole is kept"
            ) from None
        raise


PART_ROWS = 200_000


def write_parts(tables: Iterable["pyarrow.Table"], fs: "pyarrow.fs.FileSystem", root: str, part_rows: int = PART_ROWS) -> int:
    """Write the tables' rows in their order as part-00000.parquet, part-00001.parquet, ... under
    `root` (a new part once one holds `part_rows` rows); returns the number of rows. A table whose
    schema differs only in type width (string / large_string) is cast to the first one's."""
    import pyarrow.parquet as pq

    rows = in_part = part = 0
    sink = writer = None
    try:
        for table in tables:
            if table.num_rows == 0 and writer is not None:
                continue  # no empty part after a full one; the first table makes a part even when empty
            if writer is None or in_part >= part_rows:
                if writer is not None:
                    writer.close()
                    sink.close()
                sink = fs.open_output_stream(f"{root}/part-{part:05d}.parquet")
                writer = pq.ParquetWriter(sink, table.schema)
                part, in_part = part + 1, 0
            writer.write_table(table if table.schema == writer.schema else table.cast(writer.schema))
            rows += table.num_rows
            in_part += table.num_rows
    finally:
        if writer is not None:
            writer.close()
            sink.close()
    return rows


@contextlib.contextmanager
def removed_on_failure(path: str, worth_keeping: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Run the body; when it raises, remove the directory `path` if the body created it.

    Only `path` itself goes, never a parent the run created on the way: other outputs of the
    same run (an embedding cache beside it) or of other jobs may live there. `worth_keeping()`
    is asked first: a run that already holds results a rerun would reuse (mined parts, cached
    embeddings) keeps them. A directory that existed before stays, and so does a bucket.
    """
    import pyarrow.fs

    fs, root = filesystem(path)
    root = root.rstrip("/")
    try:
        created = fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound and not (is_uri(path) and "/" not in root)
    except OSError:  # e.g. a path below a regular file: the body will say so
        created = False
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(Exception):  # clean-up must not hide the error
                if not worth_keeping():
                    fs.delete_dir(root)
        raise


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
        """Write one file atomically (see :func:`write_atomic`); returns its path inside the filesystem."""
        target = posixpath.join(self.root, name)
        write_atomic(self.fs, target, data.encode() if isinstance(data, str) else data)
        return target

    def exists(self, name: str) -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(posixpath.join(self.root, name)).type != pyarrow.fs.FileType.NotFound

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(posixpath.join(self.root, name)) as handle:
            return handle.read()

    def delete(self, *names: str) -> None:
        """Remove these files where they exist."""
        import pyarrow.fs

        for name in names:
            target = posixpath.join(self.root, name)
            if self.fs.get_file_info(target).type == pyarrow.fs.FileType.File:
                self.fs.delete_file(target)
