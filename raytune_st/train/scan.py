"""Pre-flight of a training set's values: one pyarrow pass over the columns its loss reads.

The column check (:func:`~raytune_st.train.config.check_dataset`) reads metadata only; a
null text, a NaN score or a class id the loss has no output for still passes it and fails
the run minutes in, on a worker, as a raw traceback. :func:`check_values` reads the
columns the loss takes, and only those, with pyarrow in the driver (Parquet column chunks
whose statistics say they hold no nulls are not read at all), and refuses the first bad
cell with its file, row and column. The rules are the loss's
(:mod:`raytune_st.losses.values`); the reading is here.

Example::

    1. check_values(config, "train_datasets", "stsb")
       -> DataError: train 'stsb' (stsb.parquet): column 'score' row 17 is nan; CoSENTLoss needs
          a finite number in every row of its label column; drop or fix such rows
"""

from __future__ import annotations

from typing import Any, Iterator

from raytune_st.errors import DataError

BATCH_ROWS = 65_536


def check_values(config: Any, section: str, name: str) -> None:
    """Refuse a data set with a null input text or a label its loss cannot take (see module docstring)."""
    from raytune_st.data.sources import inspect_source
    from raytune_st.losses.formats import resolve_format, split_columns
    from raytune_st.losses.values import first_bad_label, first_null, label_rule
    from raytune_st.train.plan import loss_num_labels

    entry = (config.train_datasets if section == "train_datasets" else config.eval_datasets)[name]
    spec = config.loss_for(section, name)
    fmt = resolve_format(spec.name, spec.model_type, spec.inner_name)
    if fmt is None:
        return  # a custom loss that declares no format: nothing to check its values against
    inner = spec.kwargs.get("loss")
    kwargs = inner if isinstance(inner, dict) else spec.kwargs
    rule = label_rule(fmt, kwargs, loss_num_labels(config, spec))
    source = entry.data
    info = inspect_source(source)
    inputs, label = split_columns(info.columns, spec.model_type)
    raw_of = {new: old for old, new in source.rename.items()}
    wanted = {raw_of.get(c, c): c for c in [*inputs, *([label] if label else [])]}
    types = {raw: info.types[column] for raw, column in wanted.items()}
    where = f"{section.split('_')[0]} {name!r}"
    shown = f"{fmt.name}" if not spec.inner_name else f"{spec.name}({fmt.name})"

    for file_name, first_row, batch in _batches(source, types):
        for raw, column in wanted.items():
            if raw not in batch.column_names:
                continue  # this file's statistics say the column holds no nulls, and it is text
            values = batch.column(raw)
            if column == label:
                bad = first_bad_label(values, rule)
                if bad is not None:
                    row, what = bad
                    raise DataError(
                        f"{where} ({file_name}): column {column!r} row {first_row + row} (counting from 0) is {what}; "
                        f"{shown} needs {rule.expected} in every row of its label column; drop or fix such rows"
                    )
                continue
            row = first_null(values)
            if row is not None:
                raise DataError(
                    f"{where} ({file_name}): column {column!r} row {first_row + row} (counting from 0) is null; "
                    f"{shown} needs text in every row of its input columns; drop such rows or fill them in"
                )


def _batches(source: Any, types: dict[str, str]) -> Iterator[tuple[str, int, Any]]:
    """(file as named in messages, row of the batch's first row in that file, batch of the columns
    `types` names by their names in the file), in the order Ray Data reads the source, up to its `limit`."""
    import pyarrow as pa

    remaining = source.limit
    for file_name, batches in _file_batches(source, types):
        row = 0
        try:
            for batch in batches:
                if remaining is not None:
                    if remaining <= 0:
                        return
                    batch = batch.slice(0, remaining)
                    remaining -= batch.num_rows
                yield file_name, row, batch
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise DataError(
                f"cannot read {file_name!r} as {source.format} after row {row} ({exc}); check the file, or set the "
                "source's format"
            ) from None


def _file_batches(source: Any, types: dict[str, str]) -> Iterator[tuple[str, Iterator[Any]]]:
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.json

    from raytune_st.data.sources import csv_parse_options, hf_disk_dir, source_files

    raw = list(types)
    if source.format == "ray_object":
        from raytune_st.objects import table_batches

        yield source.path, table_batches(source.path, raw, BATCH_ROWS)
        return
    if source.format == "hf_disk":
        import datasets

        table = datasets.load_from_disk(hf_disk_dir(source)).data.table.select(raw)
        yield source.path, iter(table.to_batches(max_chunksize=BATCH_ROWS))
        return
    # Streaming text readers infer a column's type from their first block; a label column of
    # integers that turns to floats later would fail the read. Ray Data reads it whole, so
    # the types are fixed here to what the column holds.
    arrow_types = _arrow_types()
    schema = pa.schema([(c, arrow_types[t]) for c, t in types.items() if t in arrow_types])
    fs, files = source_files(source)
    for path in files:
        shown = path if len(files) > 1 else source.path
        if source.format == "parquet":
            # With a limit, every file's rows are counted, so that none is checked past the limit.
            yield shown, _parquet_batches(fs, path, raw, use_statistics=source.limit is None)
            continue
        with fs.open_input_stream(path, compression="detect") as stream:
            if source.format == "jsonl":
                reader = pyarrow.json.open_json(
                    stream, parse_options=pyarrow.json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer")
                )
                yield shown, (batch.select(raw) for batch in reader)
            else:
                reader = pyarrow.csv.open_csv(
                    stream, parse_options=csv_parse_options(path),
                    convert_options=pyarrow.csv.ConvertOptions(include_columns=raw, column_types=schema),
                )
                yield shown, iter(reader)


def _arrow_types() -> dict[str, Any]:
    """The Arrow type a text-format column is read as, by its inspected type (numbers as floats:
    a column whose first rows are integers may hold fractions further on)."""
    import pyarrow as pa

    return {"string": pa.string(), "int": pa.float64(), "float": pa.float64(), "list<float>": pa.list_(pa.float64()),
            "list<int>": pa.list_(pa.float64()), "list<string>": pa.list_(pa.string())}


def _parquet_batches(fs: Any, path: str, raw: list[str], use_statistics: bool) -> Iterator[Any]:
    """Batches of the `raw` columns of one Parquet file, leaving out the text columns that its
    statistics show hold no nulls (for text, nulls are all there is to check)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        schema = parquet.schema_arrow
        needed = [
            c for c in raw
            if not (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type))
            or not (use_statistics and _no_nulls(parquet.metadata, c))
        ]
        if needed:
            yield from parquet.iter_batches(batch_size=BATCH_ROWS, columns=needed, use_threads=False)


def _no_nulls(metadata: Any, column: str) -> bool:
    """Whether every row group's statistics say the (flat) `column` holds no nulls; False when they do not say."""
    leaves = [i for i in range(metadata.num_columns) if metadata.schema.column(i).path == column]
    if len(leaves) != 1:
        return False
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(leaves[0]).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            return False
    return True
