"""Tests for raytune_st.data.sources without Ray: the Source config, format inference and inspect_source."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config import build
from raytune_st.data.sources import Source, infer_format, inspect_source
from raytune_st.errors import ConfigError, DataError

TABLE = pa.table({"query": ["q1", "q2", "q3"], "passage": ["p1", "p2", "p3"], "score": [0.5, 1.0, 0.0]})


@pytest.fixture
def files(tmp_path):
    """The same three rows as parquet, jsonl, csv, tsv and a datasets save_to_disk directory."""
    import datasets

    rows = TABLE.to_pylist()
    pq.write_table(TABLE, tmp_path / "d.parquet")
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.csv").write_text("query,passage,score\n" + "".join(f"{r['query']},{r['passage']},{r['score']}\n" for r in rows))
    (tmp_path / "d.tsv").write_text("query\tpassage\tscore\n" + "".join(f"{r['query']}\t{r['passage']}\t{r['score']}\n" for r in rows))
    datasets.Dataset(TABLE).save_to_disk(str(tmp_path / "hf"))
    return tmp_path


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("a.parquet", "parquet"),
        ("s3://bucket/x/a.PQ", "parquet"),
        ("a.jsonl", "jsonl"),
        ("a.jsonl.gz", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.json", "jsonl"),
        ("a.csv", "csv"),
        ("a.tsv.zst", "csv"),
    ],
)
def test_infer_format_from_suffix(path, fmt):
    assert infer_format(path) == fmt


def test_infer_format_of_directories(files, tmp_path):
    assert infer_format(str(files / "hf")) == "hf_disk"
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(TABLE, parts / "p0.parquet")
    (parts / "README.md").write_text("about")
    (parts / "_SUCCESS").write_text("")
    assert infer_format(str(parts)) == "parquet"
    (parts / "extra.csv").write_text("a\n1\n")
    with pytest.raises(ConfigError, match=r"cannot tell the format of directory .*\['csv', 'parquet'\]"):
        infer_format(str(parts))


def test_source_config_checks():
    assert build(Source, "x.csv") == Source(path="x.csv", format="csv")
    assert Source(path="weird.bin", format="jsonl").format == "jsonl"  # explicit format wins
    with pytest.raises(ConfigError, match="non-empty path"):
        Source(path="")
    with pytest.raises(ConfigError, match="limit: must be a positive"):
        Source(path="x.csv", limit=-1)
    with pytest.raises(ConfigError, match="names a column twice"):
        Source(path="x.csv", columns=["a", "a"])
    with pytest.raises(ConfigError, match="empty list selects nothing"):
        Source(path="x.csv", columns=[])
    with pytest.raises(ConfigError, match="format: 'xml' is not a valid choice"):
        build(Source, {"path": "x.xml", "format": "xml"})


@pytest.mark.parametrize("name", ["d.parquet", "d.jsonl", "d.csv", "d.tsv", "hf"])
def test_inspect_source_every_format(files, name):
    info = inspect_source(Source(path=str(files / name)))
    assert info.columns == ["query", "passage", "score"]
    assert info.types == {"query": "string", "passage": "string", "score": "float"}
    # Parquet and datasets store the row count; JSONL and CSV are not read to count.
    assert info.num_rows == (3 if name in ("d.parquet", "hf") else None)


@pytest.mark.parametrize("name", ["d.parquet", "d.jsonl", "d.tsv", "hf"])
def test_inspect_source_select_order_rename_limit(files, name):
    source = Source(path=str(files / name), columns=["score", "query"], rename={"score": "label"}, limit=2)
    info = inspect_source(source)
    assert info.columns == ["label", "query"]
    assert info.types == {"label": "float", "query": "string"}
    if info.num_rows is not None:
        assert info.num_rows == 2


def test_inspect_source_file_uri_and_compressed_jsonl(files, tmp_path):
    assert inspect_source(Source(path=f"file://{files / 'd.parquet'}")).num_rows == 3
    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as handle:
        handle.write('{"a": "x", "b": [1, 2]}\n')
    assert inspect_source(Source(path=str(tmp_path / "z.jsonl.gz"))).types == {"a": "string", "b": "list<int>"}


def test_inspect_source_directory_skips_non_data_files(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(TABLE.slice(0, 2), parts / "p0.parquet")
    pq.write_table(TABLE.slice(2), parts / "p1.parquet")
    (parts / "README.md").write_text("not data")
    (parts / "_SUCCESS").write_text("")
    assert inspect_source(Source(path=str(parts))).num_rows == 3


def test_inspect_source_directory_of_tsv_files_splits_on_tabs(tmp_path):
    parts = tmp_path / "tsvs"
    parts.mkdir()
    (parts / "a.tsv").write_text("x\ty\n1\tz\n")
    assert inspect_source(Source(path=str(parts))).columns == ["x", "y"]


def test_inspect_source_small_csv_without_final_newline(tmp_path):
    (tmp_path / "one.csv").write_text("a,b\n1,x")
    assert inspect_source(Source(path=str(tmp_path / "one.csv"))).columns == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.jsonl", "", "is empty"),
        ("e.csv", "", "is empty"),
        ("h.csv", "a,b\n", "has a header but no rows"),
        ("h2.csv", "a,b", "has a header but no rows"),
        ("bad.jsonl", "not json\n", "is not JSON Lines"),
        ("arr.jsonl", "[1, 2]\n", "must be an object"),
        ("bad.parquet", "not parquet", "cannot read .* as Parquet"),
    ],
)
def test_inspect_source_bad_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message):
        inspect_source(Source(path=str(tmp_path / name)))


def test_inspect_source_empty_parquet(tmp_path):
    pq.write_table(TABLE.slice(0, 0), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="is empty"):
        inspect_source(Source(path=str(tmp_path / "e.parquet")))


def test_inspect_source_missing_paths(tmp_path):
    with pytest.raises(DataError, match="does not exist; check the path"):
        inspect_source(Source(path=str(tmp_path / "nope.parquet")))
    with pytest.raises(DataError, match="does not exist; hf_disk expects a directory"):
        inspect_source(Source(path=str(tmp_path / "nope"), format="hf_disk"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is an empty directory"):
        inspect_source(Source(path=str(tmp_path / "empty"), format="parquet"))


def test_inspect_source_dataset_dict_asks_for_a_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset(TABLE)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"holds a DatasetDict.*dd/train"):
        inspect_source(Source(path=str(tmp_path / "dd")))


def test_inspect_source_missing_columns_and_rename_collisions(files):
    path = str(files / "d.parquet")
    with pytest.raises(DataError, match=r"has no column 'label'; it has \['query', 'passage', 'score'\]"):
        inspect_source(Source(path=path, columns=["query", "label"]))
    with pytest.raises(DataError, match=r"rename: .* has no column 'passage' to rename \(columns after selection: \['query'\]\)"):
        inspect_source(Source(path=path, columns=["query"], rename={"passage": "p"}))
    with pytest.raises(DataError, match="two columns of the same name"):
        inspect_source(Source(path=path, rename={"query": "passage"}))
    # Swapping two names is not a collision.
    assert inspect_source(Source(path=path, rename={"query": "passage", "passage": "query"})).columns == ["passage", "query", "score"]


def test_iter_texts_reads_files_in_order_with_rename_and_limit(tmp_path):
    from raytune_st.data.sources import iter_texts

    directory = tmp_path / "pairs"
    directory.mkdir()
    pq.write_table(pa.table({"a": ["q0", "q1", "q2"], "b": ["p0", "p1", "p2"]}), directory / "0.parquet")
    pq.write_table(pa.table({"a": ["q3", "q4"], "b": ["p3", None]}), directory / "1.parquet")
    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), directory / "_ignored.parquet")
    source = Source(path=str(directory), rename={"a": "query"}, limit=4)
    batches = list(iter_texts(source, ["query", "b"], batch_rows=2))
    assert [q for anchors, _ in batches for q in anchors] == ["q0", "q1", "q2", "q3"]
    assert [p for _, positives in batches for p in positives] == ["p0", "p1", "p2", "p3"]
    assert [q for (q,) in iter_texts(Source(path=str(directory)), ["b"])] == [["p0", "p1", "p2"], ["p3", None]]


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv", "d.tsv", "hf"])
def test_iter_texts_every_format(files, name):
    from raytune_st.data.sources import iter_texts

    batches = list(iter_texts(Source(path=str(files / name)), ["passage", "query"], batch_rows=2))
    assert [p for passages, _ in batches for p in passages] == ["p1", "p2", "p3"]
    assert [q for _, queries in batches for q in queries] == ["q1", "q2", "q3"]


def test_iter_texts_names_the_file_and_row_of_text_that_is_not_utf8(tmp_path):
    from raytune_st.data.sources import iter_texts

    # Arrow does not check UTF-8 when it reads Parquet: pyarrow's to_pylist would raise UnicodeDecodeError.
    data = pa.py_buffer(b"okok\xff\xfeyes")
    offsets = pa.py_buffer(np.asarray([0, 2, 4, 6, 9], np.int32).tobytes())
    queries = pa.Array.from_buffers(pa.string(), 4, [None, offsets, data])
    pq.write_table(pa.table({"query": queries, "passage": ["a", "b", "c", "d"]}), tmp_path / "bad.parquet")
    source = Source(path=str(tmp_path / "bad.parquet"))
    with pytest.raises(DataError, match=r"bad.parquet': row 2 \(counting from 0\) of column 'query' is not valid UTF-8 text; re-encode"):
        list(iter_texts(source, ["query", "passage"], batch_rows=8))
    with pytest.raises(DataError, match=r"row 2 \(counting from 0\)"):
        list(iter_texts(source, ["query", "passage"], batch_rows=1))  # counted across batches
    (tmp_path / "bad.csv").write_bytes(b"query,passage\nok,a\ncaf\xe9,b\n")
    with pytest.raises(DataError, match="bad.csv' holds text that is not valid UTF-8"):
        list(iter_texts(Source(path=str(tmp_path / "bad.csv")), ["query", "passage"]))


def test_iter_texts_refuses_a_lone_surrogate_past_the_first_line(tmp_path):
    from raytune_st.data.sources import iter_texts

    path = tmp_path / "s.jsonl"
    path.write_text('{"query": "a", "passage": "b"}\n{"query": "c\\udc00", "passage": "d"}\n')
    inspect_source(Source(path=str(path)))  # the first line is fine
    with pytest.raises(DataError, match=r"s.jsonl' holds a lone surrogate .*fix or drop the text"):
        list(iter_texts(Source(path=str(path)), ["query", "passage"]))


def test_iter_texts_refuses_a_column_that_is_not_text_in_some_file(tmp_path):
    from raytune_st.data.sources import iter_texts

    path = tmp_path / "n.jsonl"
    path.write_text('{"query": "a", "passage": "b"}\n{"query": 5, "passage": "d"}\n')
    with pytest.raises(DataError, match=r"cannot read .*n.jsonl' as jsonl .*string"):
        list(iter_texts(Source(path=str(path)), ["query", "passage"]))
    pq.write_table(pa.table({"query": [1], "passage": ["p"]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match="column 'query' of .*n.parquet' holds int, expected text"):
        list(iter_texts(Source(path=str(tmp_path / "n.parquet")), ["query", "passage"]))


def directory_of(tmp_path, name: str, files: dict) -> str:
    directory = tmp_path / name
    directory.mkdir()
    for file, content in files.items():
        if isinstance(content, pa.Table):
            pq.write_table(content, directory / file)
        else:
            (directory / file).write_text(content)
    return str(directory)


def test_every_parquet_file_of_a_directory_is_checked_from_its_footer(tmp_path):
    good = pa.table({"query": ["a"], "passage": ["b"], "score": [1]})
    widened = pa.table({"query": [None], "passage": ["c"], "score": [0.5], "extra": [1]})  # null and int -> float fit
    path = directory_of(tmp_path, "ok", {"a.parquet": good, "b.parquet": widened})
    assert inspect_source(Source(path=path)).num_rows == 2
    ints = directory_of(tmp_path, "ints", {"a.parquet": good, "b.parquet": pa.table({"query": [1], "passage": ["c"], "score": [1]})})
    with pytest.raises(DataError, match=r"column 'query' holds int in file '.*ints/b.parquet' but string in '.*ints/a.parquet'; write it as string in every file"):
        inspect_source(Source(path=ints))
    lacking = directory_of(tmp_path, "lacking", {"a.parquet": good, "b.parquet": pa.table({"query": ["x"], "score": [1]})})
    with pytest.raises(DataError, match=r"file '.*lacking/b.parquet' has no column 'passage' \(its columns: \['query', 'score'\]\), but '.*a.parquet' has"):
        inspect_source(Source(path=lacking))
    # Only the selected columns must be in every file.
    assert inspect_source(Source(path=lacking, columns=["query", "score"])).columns == ["query", "score"]


def test_every_jsonl_and_csv_file_of_a_directory_is_checked_from_its_first_line(tmp_path):
    jsonl = directory_of(tmp_path, "j", {"a.jsonl": '{"query": "a", "passage": "b"}\n', "b.jsonl": '{"query": 3, "passage": "b"}\n'})
    with pytest.raises(DataError, match=r"column 'query' holds int in file '.*j/b.jsonl'"):
        inspect_source(Source(path=jsonl))
    broken = directory_of(tmp_path, "k", {"a.jsonl": '{"query": "a", "passage": "b"}\n', "b.jsonl": "query,passage\n"})
    with pytest.raises(DataError, match=r"'.*k/b.jsonl' is not JSON Lines"):
        inspect_source(Source(path=broken))
    csv = directory_of(tmp_path, "c", {"a.csv": "query,passage\na,b\n", "b.csv": "query,text\n1,2\n"})
    with pytest.raises(DataError, match=r"file '.*c/b.csv' has no column 'passage' \(its columns: \['query', 'text'\]\)"):
        inspect_source(Source(path=csv))
    # CSV stores no types: a later file whose texts look like numbers is still text.
    numeric = directory_of(tmp_path, "n", {"a.csv": "query,passage\na,b\n", "b.csv": "query,passage\n1,2\n"})
    assert inspect_source(Source(path=numeric)).types == {"query": "string", "passage": "string"}


@pytest.mark.parametrize(
    ("name", "fmt", "content", "message"),
    [
        ("p.jsonl", "jsonl", None, r"is a Parquet file, but the source's format is jsonl; set format: parquet"),
        ("p.csv", "csv", None, r"is a Parquet file, but the source's format is csv; set format: parquet"),
        ("z.jsonl", "jsonl", gzip.compress(b'{"a": "b"}\n'), r"is gzip-compressed, but its name does not say so, so it cannot be read as jsonl; rename it to '.*z.jsonl.gz'"),
        ("j.parquet", "parquet", b'{"a": "b"}\n', r"cannot read .* as Parquet .*it looks like JSON: set format: jsonl"),
        ("fake.jsonl.gz", "jsonl", b'{"a": "b"}\n', r"cannot read .*fake.jsonl.gz' .*check that its content matches its name"),
        ("l.jsonl", "jsonl", b'{"a": "caf\xe9"}\n', r"line 1 is not valid UTF-8 \(byte 0xe9 at offset 10\)"),
        ("l.csv", "csv", b"caf\xe9,b\n1,2\n", r"header is not valid UTF-8"),
        ("s.jsonl", "jsonl", b'{"a": "\\ud800"}\n', r"line 1 holds a lone surrogate"),
    ],
)
def test_content_that_does_not_fit_the_format_is_refused_from_its_first_bytes(tmp_path, name, fmt, content, message):
    path = tmp_path / name
    if content is None:
        pq.write_table(TABLE, path)
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        inspect_source(Source(path=str(path), format=fmt))


def test_every_file_in_a_bucket_is_checked_and_read_in_order(bucket):
    from raytune_st.data.sources import iter_texts
    from raytune_st.outputs import filesystem

    fs, name = filesystem(bucket)
    pq.write_table(pa.table({"query": ["q0", "q1"], "passage": ["p0", "p1"]}), f"{name}/pairs/a.parquet", filesystem=fs)
    pq.write_table(pa.table({"query": ["q2"], "passage": ["p2"]}), f"{name}/pairs/b.parquet", filesystem=fs)
    source = Source(path=f"{bucket}/pairs", format="parquet")
    assert inspect_source(source).num_rows == 3
    assert [q for queries, _ in iter_texts(source, ["query", "passage"]) for q in queries] == ["q0", "q1", "q2"]
    pq.write_table(pa.table({"query": [3], "passage": ["p3"]}), f"{name}/pairs/c.parquet", filesystem=fs)
    with pytest.raises(DataError, match=rf"column 'query' holds int in file '{bucket}/pairs/c.parquet' but string in '{bucket}/pairs/a.parquet'"):
        inspect_source(source)


def test_the_format_of_a_directory_in_a_bucket_is_read_from_its_files(bucket):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytune_st.outputs import filesystem

    fs, root = filesystem(f"{bucket}/pairs")
    pq.write_table(pa.table({"query": ["q"], "passage": ["p"]}), f"{root}/part-0.parquet", filesystem=fs)
    with fs.open_output_stream(f"{root}/stats.json") as handle:
        handle.write(b"{}")
    assert Source(path=f"{bucket}/pairs").format == "parquet"
    # A URI that names no directory of data files: the format must be given.
    with pytest.raises(ConfigError, match="cannot tell the format of .*/missing.*add format: parquet"):
        Source(path=f"{bucket}/missing")
