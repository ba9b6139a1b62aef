"""Data sources: one way to name a data set in every config, read as a streaming Ray Dataset.

A source is written ``{path, format, columns, rename, limit}``; a bare string is the path.
Paths are local files or directories, or any URI pyarrow's filesystems understand
(``s3://``, ``gs://``, ``hdfs://``). A ``ray-object://data/...`` path is an in-memory data set
that ``RayTrainer`` put into Ray's object store (format ``ray_object``, :mod:`raytune_st.objects`).

Three entry points:

* :func:`inspect_source` reads only metadata (Parquet footers, JSONL first lines, CSV
  headers, a datasets ``dataset_info.json``) and gives the final column names and, where the
  format stores it, the row count. A directory is checked file by file: every file must
  hold the columns read, of one type, and its first bytes must fit the format. Jobs call
  it to validate a config before any heavy work.
* :func:`read_source` returns a lazy ``ray.data.Dataset``: nothing is read in the driver.
* :func:`iter_texts` streams text columns in file order in one process (the mine job's
  prepare task), checking that every value is text and valid UTF-8.

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
from typing import TYPE_CHECKING, Any, Iterator, Literal, Optional

from raytune_st.config.core import option
from raytune_st.errors import ConfigError, DataError
from raytune_st.outputs import filesystem, is_uri

if TYPE_CHECKING:
    import pyarrow.fs
    import ray.data

Format = Literal["parquet", "jsonl", "csv", "hf_disk", "ray_object"]

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
        None, help="parquet | jsonl | csv | hf_disk; inferred from the path when omitted (ray_object: an object RayTrainer put in Ray's object store)"
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
    from raytune_st.objects import is_object

    if is_object(path):
        return "ray_object"
    fmt = _suffix_format(path)
    if fmt is not None:
        return fmt
    if not is_uri(path) and os.path.isdir(os.path.expanduser(path)):
        return _infer_directory_format(path, os.listdir(os.path.expanduser(path)))
    if is_uri(path):
        entries = _uri_directory_entries(path)
        if entries:
            return _infer_directory_format(path, entries)
    raise ConfigError(
        f"cannot tell the format of {path!r} from its name; add format: parquet | jsonl | csv | hf_disk"
    )


def _uri_directory_entries(path: str) -> list[str]:
    """The names directly inside the directory `path` in object storage ([] when it is none or cannot be listed)."""
    import pyarrow.fs

    try:
        fs, root = filesystem(path)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root.rstrip("/"), recursive=False, allow_not_found=True))
    except (OSError, ValueError, DataError):  # unreachable or unknown: the caller asks for the format
        return []
    return [posixpath.basename(i.path.rstrip("/")) for i in infos]


def _infer_directory_format(path: str, entries: list[str]) -> Format:
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


def source_files(source: Source) -> tuple["pyarrow.fs.FileSystem", list[str]]:
    """The files a file-based source reads, checking that they exist."""
    import pyarrow.fs

    fs, base = filesystem(source.path)
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


def hf_disk_dir(source: Source) -> str:
    """The directory of a `datasets` save_to_disk source (one split), checked when it is local."""
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
    """Column -> type name of the data as stored, plus the row count when cheap to know.

    A directory is checked file by file, from metadata only (Parquet footers, the first line
    of each JSONL file, each CSV header): every file must hold the columns the source reads,
    with the same types as the first file.
    """
    if source.format == "ray_object":
        from raytune_st.objects import table_info

        schema, num_rows = table_info(source.path)
        return {name: _arrow_type_name(schema.field(name).type) for name in schema.names}, num_rows
    if source.format == "hf_disk":
        path = hf_disk_dir(source)
        import datasets

        try:
            ds = datasets.load_from_disk(path)
        except Exception as exc:
            raise DataError(f"cannot load {source.path!r} as a datasets save_to_disk directory: {exc}") from None
        schema = ds.data.schema
        return {name: _arrow_type_name(schema.field(name).type) for name in schema.names}, ds.num_rows

    fs, files = source_files(source)
    reader = {"parquet": _parquet_schema, "jsonl": _jsonl_schema, "csv": _csv_schema}[source.format]
    names = [_shown(source, files, path) for path in files]
    if len(files) == 1:
        found = [reader(fs, files[0], names[0], source, True)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        # Footers and first lines are small reads; on object storage their latency dominates.
        with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
            found = list(pool.map(lambda i: reader(fs, files[i], names[i], source, i == 0), range(len(files))))
    _check_same_columns(source, names, [types for types, _ in found])
    counts = [rows for _, rows in found]
    return found[0][0], None if None in counts else sum(counts)


def _shown(source: Source, files: list[str], path: str) -> str:
    """How to name one file of a source in a message: the source's own path when it is that file."""
    if len(files) == 1:
        return source.path
    return f"{source.path.split('://', 1)[0]}://{path}" if is_uri(source.path) else path


UNTYPED = "?"  # a CSV file after the first: only its header is read, and CSV stores no types


def _compatible(a: str, b: str) -> bool:
    """Whether two files' types of one column read as one column (numbers widen; all-null columns fit any)."""
    return a == b or "null" in (a, b) or {a, b} <= {"int", "float"} or UNTYPED in (a, b)


def _check_same_columns(source: Source, names: list[str], schemas: list[dict[str, str]]) -> None:
    """Every file holds the columns the source reads (all of the first file's, or `columns`), of one type."""
    first, reference = names[0], schemas[0]
    needed = list(source.columns) if source.columns is not None else list(reference)
    for path, types in zip(names[1:], schemas[1:]):
        for column in needed:
            if column not in types:
                raise DataError(
                    f"data source {source.path!r}: file {path!r} has no column {column!r} (its columns: {list(types)}), "
                    f"but {first!r} has; give every file the same columns, or move {path!r} out of the source"
                )
            if column in reference and not _compatible(reference[column], types[column]):
                raise DataError(
                    f"data source {source.path!r}: column {column!r} holds {types[column]} in file {path!r} but "
                    f"{reference[column]} in {first!r}; write it as {reference[column]} in every file, "
                    f"or move {path!r} out of the source"
                )


_MAGIC: list[tuple[bytes, str]] = [
    (b"PAR1", "Parquet"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\x04\x22\x4d\x18", "lz4-compressed"),
    (b"PK\x03\x04", "a zip archive"),
]


def _sniff(head: bytes) -> Optional[str]:
    """What the first bytes of a file say it is ("Parquet", "gzip-compressed", ...), or None for text."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _check_content(source: Source, name: str, head: bytes) -> None:
    """Refuse a text file (JSONL/CSV) whose first bytes say it is something else."""
    kind = _sniff(head)
    if kind == "Parquet":
        raise DataError(f"{name!r} is a Parquet file, but the source's format is {source.format}; set format: parquet")
    if kind is not None:
        suffix = {"gzip-compressed": ".gz", "zstd-compressed": ".zst", "bzip2-compressed": ".bz2", "lz4-compressed": ".lz4"}.get(kind)
        fix = f"rename it to {name + suffix!r}, or decompress it" if suffix else "extract it"
        raise DataError(f"{name!r} is {kind}, but its name does not say so, so it cannot be read as {source.format}; {fix}")


def _parquet_schema(fs, path: str, name: str, source: Source, first: bool) -> tuple[dict[str, str], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(path) as handle:
            meta = pq.ParquetFile(handle).metadata
    except (pa.ArrowException, OSError) as exc:
        with fs.open_input_stream(path) as handle:
            head = handle.read(64).lstrip()
        hint = "set the source's format"
        if head[:1] in (b"{", b"["):
            hint = "it looks like JSON: set format: jsonl"
        elif _sniff(head):
            hint = f"it is {_sniff(head)}"
        raise DataError(f"cannot read {name!r} as Parquet ({exc}); check the file, or {hint}") from None
    schema = meta.schema.to_arrow_schema()
    return {f.name: _arrow_type_name(f.type) for f in schema}, meta.num_rows


def _read_head(fs, path: str, name: str, size: int, first_line: bool = False) -> bytes:
    """Up to `size` bytes of a file, decompressed when its name has a compression suffix;
    with `first_line`, stop once its first line is read."""
    pieces, read = [], 0
    try:
        with fs.open_input_stream(path, compression="detect") as handle:
            while read < size:
                piece = handle.read(min(1 << 16, size - read))
                if not piece:
                    break
                pieces.append(piece)
                read += len(piece)
                if first_line and b"\n" in piece:
                    break
    except OSError as exc:  # e.g. a .gz name on a file that is not gzip
        raise DataError(f"cannot read {name!r} ({exc}); check that its content matches its name") from None
    return b"".join(pieces)


def _jsonl_schema(fs, path: str, name: str, source: Source, first: bool) -> tuple[dict[str, str], None]:
    import pyarrow as pa

    head = _read_head(fs, path, name, 1 << 20, first_line=True)
    _check_content(source, name, head)
    if not head.strip():
        raise DataError(f"data source {name!r} is empty; it has no rows to read")
    text = _decoded(head.split(b"\n", 1)[0], name, "line 1")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name!r} is not JSON Lines (first line: {exc}); write one JSON object per line") from None
    if not isinstance(row, dict):
        raise DataError(f"{name!r}: each JSON line must be an object of column: value, got {type(row).__name__}")
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"{name!r} line 1 {_SURROGATE}") from None
    table = pa.Table.from_pylist([row])
    return {f.name: _arrow_type_name(f.type) for f in table.schema}, None


_SURROGATE = (
    "holds a lone surrogate (a \\ud800-\\udfff escape without its pair), which is no text; "
    "fix or drop the text with the broken escape"
)


def _decoded(data: bytes, name: str, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{name!r} {where} is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "re-encode the file as UTF-8, e.g. with iconv -f latin1 -t utf-8"
        ) from None


def _csv_schema(fs, path: str, name: str, source: Source, first: bool) -> tuple[dict[str, str], None]:
    import pyarrow as pa
    import pyarrow.csv

    # The first file's first MiB gives the types; the other files' headers give their names.
    head = _read_head(fs, path, name, 1 << 20, first_line=not first)
    _check_content(source, name, head)
    if not head.strip():
        raise DataError(f"data source {name!r} is empty; it has no rows to read")
    # Parse whole lines only: cut a truncated head at its last newline, and end the
    # last line of a small file that lacks one (pyarrow needs it to see the header).
    if (len(head) == 1 << 20 or not first) and b"\n" in head:
        head = head[: head.rindex(b"\n") + 1] if first else head[: head.index(b"\n") + 1]
    elif not head.endswith(b"\n"):
        head += b"\n"
    _decoded(head.split(b"\n", 1)[0], name, "header")
    try:
        table = pyarrow.csv.read_csv(pa.BufferReader(head), parse_options=csv_parse_options(path))
    except pa.ArrowInvalid as exc:
        raise DataError(f"cannot read {name!r} as CSV ({exc}); check the file or set the source's format") from None
    if not first:
        return {column: UNTYPED for column in table.column_names}, None
    if table.num_rows == 0:
        raise DataError(f"data source {name!r} has a header but no rows")
    return {f.name: _arrow_type_name(f.type) for f in table.schema}, None


def csv_parse_options(path: str):
    """pyarrow's CSV parse options for a file: tab-separated for .tsv (compressed or not), else comma-separated."""
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


def iter_texts(source: Source, columns: list[str], batch_rows: int = 8192, arrow: bool = False) -> Iterator[list[Any]]:
    """The values of the text `columns` (final names) of a source, batch by batch, in file order.

    Read with pyarrow in this process, one file after the other (a single sequential reader
    needs no Ray Data). Every batch is checked: each column holds text in every file, and
    the text is valid UTF-8; a DataError names the file and row otherwise. Missing cells
    come as None; with `arrow`, each column comes as a pyarrow string array (nulls for them).
    """
    raw_of = {new: old for old, new in source.rename.items()}
    raw = [raw_of.get(c, c) for c in columns]
    remaining = source.limit
    for name, batches in _file_batches(source, raw, batch_rows):
        row = 0
        for batch in batches:
            if remaining is not None:
                batch = batch.slice(0, remaining)
                remaining -= batch.num_rows
            yield [_texts(batch.column(c), name, c, row, arrow) for c in raw]
            row += batch.num_rows
            if remaining is not None and remaining <= 0:
                return


def _file_batches(source: Source, raw: list[str], batch_rows: int) -> Iterator[tuple[str, Iterator[Any]]]:
    """(file named for messages, its batches of the `raw` columns) for each file of the source."""
    if source.format == "ray_object":
        from raytune_st.objects import table_batches

        yield source.path, table_batches(source.path, raw, batch_rows)
        return
    if source.format == "hf_disk":
        import datasets

        ds = datasets.load_from_disk(hf_disk_dir(source)).select_columns(raw)
        yield source.path, iter(ds.with_format("arrow").iter(batch_size=batch_rows))
        return
    fs, files = source_files(source)
    for path in files:
        name = _shown(source, files, path)
        yield name, _checked_reads(name, source.format, _open_batches(fs, path, source, raw, batch_rows))


def _open_batches(fs, path: str, source: Source, raw: list[str], batch_rows: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet as pq

    if source.format == "parquet":
        with fs.open_input_file(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=raw, use_threads=False)
        return
    text_schema = pa.schema([(c, pa.string()) for c in raw])
    with fs.open_input_stream(path, compression="detect") as handle:
        if source.format == "jsonl":
            reader = pyarrow.json.open_json(
                handle,
                # Only the wanted columns, as text: other columns cannot fail the read.
                parse_options=pyarrow.json.ParseOptions(explicit_schema=text_schema, unexpected_field_behavior="ignore"),
            )
        else:
            reader = pyarrow.csv.open_csv(
                handle,
                parse_options=csv_parse_options(path),
                convert_options=pyarrow.csv.ConvertOptions(include_columns=raw, column_types=text_schema),
            )
        for batch in reader:
            for start in range(0, batch.num_rows, batch_rows):
                yield batch.slice(start, batch_rows).select(raw)


def _checked_reads(name: str, fmt: str, batches: Iterator[Any]) -> Iterator[Any]:
    """`batches`, with a reader's failure turned into a DataError naming the file."""
    import pyarrow as pa

    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:
        message = str(exc)
        if "surrogate" in message:
            raise DataError(f"{name!r} {_SURROGATE} ({message})") from None
        if "UTF8" in message or "UTF-8" in message:
            raise DataError(f"{name!r} holds text that is not valid UTF-8 ({message}); re-encode the file as UTF-8") from None
        raise DataError(f"cannot read {name!r} as {fmt} ({message}); check the file or set the source's format") from None


def _texts(column: Any, name: str, column_name: str, first_row: int, arrow: bool = False) -> Any:
    """A text column's values, after checking that it is text and valid UTF-8 (which Arrow does not on read)."""
    import re

    import pyarrow as pa

    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.string()) if arrow else [None] * len(column)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(
            f"column {column_name!r} of {name!r} holds {_arrow_type_name(column.type)}, expected text; "
            "write it as strings, or choose a text column"
        )
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    offset = first_row
    for chunk in chunks:
        try:
            chunk.validate(full=True)
        except pa.ArrowInvalid as exc:
            found = re.search(r"string index (\d+)", str(exc))
            where = f"row {offset + int(found.group(1))} (counting from 0)" if found else "a row"
            raise DataError(
                f"{name!r}: {where} of column {column_name!r} is not valid UTF-8 text; "
                "re-encode the file as UTF-8, or drop the row"
            ) from None
        offset += len(chunk)
    if arrow:
        combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        return combined.cast(pa.string()) if pa.types.is_large_string(combined.type) else combined
    return column.to_pylist()


def read_source(source: Source, **read_args: Any) -> "ray.data.Dataset":
    """A lazy Ray Dataset over the source, with columns selected, renamed and limited.

    `read_args` go to the Ray Data reader (e.g. ``override_num_blocks``).
    """
    import ray.data

    if source.format == "ray_object":
        from raytune_st.objects import ray_dataset

        ds = ray_dataset(source.path)  # the blocks where they lie in the object store
    elif source.format == "hf_disk":
        import datasets

        # load_from_disk memory-maps the Arrow files; from_huggingface wraps them without copying.
        ds = ray.data.from_huggingface(datasets.load_from_disk(hf_disk_dir(source)))
    else:
        fs, files = source_files(source)
        if source.format == "parquet":
            ds = ray.data.read_parquet(files, filesystem=fs, **read_args)
        elif source.format == "jsonl":
            # Arrow's JSON reader (lines=False) reads JSON Lines; Ray's lines=True path
            # refuses an explicit filesystem, which URIs and local paths both need here.
            ds = ray.data.read_json(files, filesystem=fs, file_extensions=None, **read_args)
        else:
            ds = ray.data.read_csv(
                files, filesystem=fs, file_extensions=None, parse_options=csv_parse_options(files[0]), **read_args
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
