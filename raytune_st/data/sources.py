"""Data sources: one way to name a data set in every config, read as a streaming Ray Dataset.

A source is written ``{path, format, columns, rename, limit}``; a bare string is the path.
Paths are local files or directories, or any URI pyarrow's filesystems understand
(``s3://``, ``gs://``, ``hdfs://``).

Two entry points:

* :func:`inspect_source` reads only metadata (a Parquet footer, a JSONL line, a CSV header,
  a datasets ``dataset_info.json``) and gives the final column names and, where the
  format stores it, the row count. Jobs call it to validate a config before any heavy work.
* :func:`read_source` returns a lazy ``ray.data.Dataset``: nothing is read in the driver.

``columns`` selects and orders columns by their names in the file; ``rename`` then maps
old names to new ones (sentence-transformers decides roles by column order, and the
label by the names ``label``/``score``, so these two are all a user needs to fit a file to
a loss or an evaluator).
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

from raytune_st.config.core import option
from raytune_st.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pyarrow.fs
    import ray.data

Format = Literal["parquet", "jsonl", "csv", "hf_disk"]

_SUFFIXES: list[tuple[str, Format]] = [
    (".parquet", "parquet"),
    (".pq", "parquet"),
    (".jsonl", "jsonl"),
    (".ndjson", "jsonl"),
    (".json", "jsonl"),
    (".csv", "csv"),
    (".tsv", "csv"),
]
_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4", ".br")


@dataclass
class Source:
    """Where a data set lives and how to fit its columns."""

    path: str = option(help="local path or URI (s3://, gs://) of a file or a directory of files")
    format: Optional[Format] = option(
        None, help="parquet | jsonl | csv | hf_disk; inferred from the path when omitted"
    )
    columns: Optional[list[str]] = option(
        None, help="select and order these columns (names as in the file); default: all, in file order"
    )
    rename: dict[str, str] = option(default_factory=dict, help="rename columns {old: new}, after selection")
    limit: Optional[int] = option(None, help="read at most this many rows")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("path: a data source needs a non-empty path")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit: must be a positive number of rows, got {self.limit}")
        if self.columns is not None and not self.columns:
            raise ConfigError("columns: an empty list selects nothing; name the columns to read, or omit columns to read all")
        if self.columns is not None and len(set(self.columns)) != len(self.columns):
            raise ConfigError(f"columns: {self.columns} names a column twice")
        if self.format is None:
            self.format = infer_format(self.path)

    def describe(self) -> str:
        return self.path if self.limit is None else f"{self.path} (first {self.limit} rows)"


def is_uri(path: str) -> bool:
    return "://" in path


def _filesystem(path: str) -> tuple["pyarrow.fs.FileSystem", str]:
    import pyarrow.fs

    if not is_uri(path):
        return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    try:
        return pyarrow.fs.FileSystem.from_uri(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad or unsupported URIs
        raise DataError(f"cannot open {path!r}: {exc}; check the URI scheme and your credentials") from None


def _suffix_format(path: str) -> Optional[Format]:
    """The format a file name's suffix names (compression suffixes skipped), or None."""
    name = path.rstrip("/").lower()
    for ext in _COMPRESSION:
        name = name.removesuffix(ext)
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    return None


def infer_format(path: str) -> Format:
    """The format named by a path's suffix, or by a directory's contents."""
    fmt = _suffix_format(path)
    if fmt is not None:
        return fmt
    if not is_uri(path) and os.path.isdir(os.path.expanduser(path)):
        return _infer_directory_format(os.path.expanduser(path))
    raise ConfigError(
        f"cannot tell the format of {path!r} from its name; add format: parquet | jsonl | csv | hf_disk"
    )


def _infer_directory_format(path: str) -> Format:
    entries = os.listdir(path)
    if "dataset_info.json" in entries or "state.json" in entries or "dataset_dict.json" in entries:
        return "hf_disk"
    # A `.json` file beside data files is metadata (the stats.json of a mining run), not data.
    data_entries = [e for e in entries if not e.lower().endswith(".json")] or entries
    found = {fmt for fmt in map(_suffix_format, data_entries) if fmt is not None}
    if len(found) == 1:
        return found.pop()
    raise ConfigError(
        f"cannot tell the format of directory {path!r} (found {sorted(found) or 'no data files'}); "
        "add format: parquet | jsonl | csv | hf_disk"
    )


def _hidden(relative: str) -> bool:
    """Hidden or private entries (`.git`, `_SUCCESS`, a job's `_work/` directory) are not data."""
    return any(part.startswith((".", "_")) for part in relative.split("/"))


def _data_files(source: Source) -> tuple["pyarrow.fs.FileSystem", list[str]]:
    """The files a file-based source reads, checking that they exist."""
    import pyarrow.fs

    fs, base = _filesystem(source.path)
    try:
        info = fs.get_file_info(base)
    except Exception as exc:
        raise DataError(f"cannot read {source.path!r}: {exc}") from None
    if info.type == pyarrow.fs.FileType.NotFound:
        raise DataError(f"data source {source.path!r} does not exist; check the path (relative paths are read from {os.getcwd()})")
    if info.type == pyarrow.fs.FileType.File:
        return fs, [base]
    selector = pyarrow.fs.FileSelector(base, recursive=True)
    files = sorted(
        f.path
        for f in fs.get_file_info(selector)
        if f.type == pyarrow.fs.FileType.File and not _hidden(posixpath.relpath(f.path, base))
    )
    # A directory may hold a README or a manifest beside its data files: when some files
    # carry the format's suffix, read only those (files without any suffix are read as is).
    matching = [f for f in files if _suffix_format(f) == source.format]
    files = matching or files
    if not files:
        raise DataError(f"data source {source.path!r} is an empty directory; point it at a data file or a directory of them")
    return fs, files


def _hf_disk_dir(source: Source) -> str:
    path = os.path.expanduser(source.path)
    if is_uri(path):
        return path
    if not os.path.isdir(path):
        raise DataError(f"data source {source.path!r} does not exist; hf_disk expects a directory written by datasets' save_to_disk")
    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        raise DataError(
            f"{source.path!r} holds a DatasetDict (several splits); point path at one split, e.g. {os.path.join(source.path, 'train')}"
        )
    return path


@dataclass
class SourceInfo:
    """What :func:`inspect_source` learns without reading the data."""

    columns: list[str]
    num_rows: Optional[int]  # None when the format does not store it (JSONL, CSV)
    types: dict[str, str]  # column -> "string", "float", "int", "list<string>", ...


def _arrow_type_name(tp: Any) -> str:
    import pyarrow as pa

    if pa.types.is_string(tp) or pa.types.is_large_string(tp):
        return "string"
    if pa.types.is_floating(tp):
        return "float"
    if pa.types.is_integer(tp):
        return "int"
    if pa.types.is_boolean(tp):
        return "bool"
    if pa.types.is_list(tp) or pa.types.is_large_list(tp):
        return f"list<{_arrow_type_name(tp.value_type)}>"
    if pa.types.is_null(tp):
        return "null"
    return str(tp)


def _raw_schema(source: Source) -> tuple[dict[str, str], Optional[int]]:
    """Column -> type name of the data as stored, plus the row count when cheap to know."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    if source.format == "hf_disk":
        path = _hf_disk_dir(source)
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except Exception as exc:
            raise DataError(f"cannot load {source.path!r} as a datasets save_to_disk directory: {exc}") from None
        schema = ds.data.schema
        return {name: _arrow_type_name(schema.field(name).type) for name in schema.names}, ds.num_rows

    fs, files = _data_files(source)
    if source.format == "parquet":
        num_rows = 0
        schema = None
        for path in files:
            try:
                with fs.open_input_file(path) as handle:
                    meta = pq.ParquetFile(handle).metadata
            except (pa.ArrowException, OSError) as exc:
                raise DataError(f"cannot read {path!r} as Parquet ({exc}); check the file or set the source's format") from None
            num_rows += meta.num_rows
            schema = schema or meta.schema.to_arrow_schema()
        return {f.name: _arrow_type_name(f.type) for f in schema}, num_rows

    # JSONL and CSV store no row count; read a little of the first file for the schema.
    with fs.open_input_stream(files[0], compression="detect") as handle:
        head = handle.read(1 << 20)
    if not head.strip():
        raise DataError(f"data source {source.path!r} is empty; it has no rows to read")
    if source.format == "jsonl":
        first = head.split(b"\n", 1)[0]
        try:
            row = json.loads(first)
        except json.JSONDecodeError as exc:
            raise DataError(f"{source.path!r} is not JSON Lines (first line: {exc}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{source.path!r}: each JSON line must be an object of column: value, got {type(row).__name__}")
        table = pa.Table.from_pylist([row])
    else:
        # Parse whole lines only: cut a truncated head at its last newline, and end the
        # last line of a small file that lacks one (pyarrow needs it to see the header).
        if len(head) == 1 << 20 and b"\n" in head:
            head = head[: head.rindex(b"\n") + 1]
        elif not head.endswith(b"\n"):
            head += b"\n"
        try:
            table = pyarrow.csv.read_csv(pa.BufferReader(head), parse_options=_csv_parse_options(files[0]))
        except pa.ArrowInvalid as exc:
            raise DataError(f"cannot read {source.path!r} as CSV ({exc}); check the file or set the source's format") from None
        if table.num_rows == 0:
            raise DataError(f"data source {source.path!r} has a header but no rows")
    return {f.name: _arrow_type_name(f.type) for f in table.schema}, None


def _csv_parse_options(path: str):
    import pyarrow.csv

    name = path.lower()
    for ext in _COMPRESSION:
        name = name.removesuffix(ext)
    return pyarrow.csv.ParseOptions(delimiter="\t" if name.endswith(".tsv") else ",")


def _fit_columns(source: Source, available: list[str]) -> list[str]:
    """The final column names after `columns` and `rename`, checking every name exists."""
    names = list(available)
    if source.columns is not None:
        missing = [c for c in source.columns if c not in available]
        if missing:
            raise DataError(
                f"{source.path!r} has no column {missing[0]!r}; it has {available}. "
                "Fix `columns` to name columns of the file."
            )
        names = list(source.columns)
    unknown = [old for old in source.rename if old not in names]
    if unknown:
        raise DataError(
            f"rename: {source.path!r} has no column {unknown[0]!r} to rename (columns after selection: {names})"
        )
    renamed = [source.rename.get(c, c) for c in names]
    if len(set(renamed)) != len(renamed):
        raise DataError(f"rename: {source.path!r} would have two columns of the same name: {renamed}")
    return renamed


def inspect_source(source: Source) -> SourceInfo:
    """Check that a source exists and is non-empty, and give its final columns; reads metadata only."""
    raw_types, num_rows = _raw_schema(source)
    columns = _fit_columns(source, list(raw_types))
    inverse = {source.rename.get(c, c): c for c in (source.columns or list(raw_types))}
    types = {c: raw_types[inverse[c]] for c in columns}
    if num_rows is not None and source.limit is not None:
        num_rows = min(num_rows, source.limit)
    if num_rows == 0:
        raise DataError(f"data source {source.path!r} is empty; it has no rows to read")
    return SourceInfo(columns=columns, num_rows=num_rows, types=types)


def read_source(source: Source, **read_args: Any) -> "ray.data.Dataset":
    """A lazy Ray Dataset over the source, with columns selected, renamed and limited.

    `read_args` go to the Ray Data reader (e.g. ``override_num_blocks``).
    """
    import ray.data

    if source.format == "hf_disk":
        import datasets

        # load_from_disk memory-maps the Arrow files; from_huggingface wraps them without copying.
        ds = ray.data.from_huggingface(datasets.load_from_disk(_hf_disk_dir(source)))
    else:
        fs, files = _data_files(source)
        if source.format == "parquet":
            ds = ray.data.read_parquet(files, filesystem=fs, **read_args)
        elif source.format == "jsonl":
            # Arrow's JSON reader (lines=False) reads JSON Lines; Ray's lines=True path
            # refuses an explicit filesystem, which URIs and local paths both need here.
            ds = ray.data.read_json(files, filesystem=fs, file_extensions=None, **read_args)
        else:
            ds = ray.data.read_csv(
                files, filesystem=fs, file_extensions=None, parse_options=_csv_parse_options(files[0]), **read_args
            )
    if source.columns is not None:
        # Ray pushes select_columns down into the file reader, which keeps the file's column
        # order; the order decides the columns' roles, so restore the configured order.
        columns = list(source.columns)
        ds = ds.select_columns(columns).map_batches(
            lambda table: table.select(columns), batch_format="pyarrow", batch_size=None, zero_copy_batch=True
        )
    if source.rename:
        ds = ds.rename_columns(source.rename)
    if source.limit is not None:
        ds = ds.limit(source.limit)
    return ds
