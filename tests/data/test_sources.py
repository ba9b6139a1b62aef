"""Tests for raytune_st.data.sources without Ray: the Source config, format inference and inspect_source."""

from __future__ import annotations

import gzip
import json

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
    with pytest.raises(ConfigError, match="add format: parquet"):
        infer_format("s3://bucket/data")


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
