"""read_source through a real local Ray: every format gives the right rows, columns, order and limit."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.data.sources import Source, read_source

pytestmark = pytest.mark.ray

TABLE = pa.table({"query": ["q1", "q2", "q3", "q4"], "passage": ["p1", "p2", "p3", "p4"], "score": [0.1, 0.2, 0.3, 0.4]})
ROWS = TABLE.to_pylist()


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(ray_init_options):
    import ray
    from ray.data import DataContext

    ray.init(**ray_init_options, logging_level="WARNING", log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    import datasets

    d = tmp_path_factory.mktemp("sources")
    pq.write_table(TABLE, d / "d.parquet")
    (d / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (d / "d.csv").write_text("query,passage,score\n" + "".join(f"{r['query']},{r['passage']},{r['score']}\n" for r in ROWS))
    (d / "d.tsv").write_text("query\tpassage\tscore\n" + "".join(f"{r['query']}\t{r['passage']}\t{r['score']}\n" for r in ROWS))
    datasets.Dataset(TABLE).save_to_disk(str(d / "hf"))
    parts = d / "parts"
    parts.mkdir()
    pq.write_table(TABLE.slice(0, 2), parts / "p0.parquet")
    pq.write_table(TABLE.slice(2), parts / "p1.parquet")
    (parts / "README.md").write_text("not data")
    return d


def rows(ds) -> list[dict]:
    return sorted(ds.take_all(), key=lambda r: r[next(iter(r))])


@pytest.mark.parametrize("name", ["d.parquet", "d.jsonl", "d.csv", "d.tsv", "hf", "parts"])
def test_read_source_all_rows(data_dir, name):
    ds = read_source(Source(path=str(data_dir / name)))
    assert ds.schema().names == ["query", "passage", "score"]
    assert rows(ds) == ROWS


@pytest.mark.parametrize("name", ["d.parquet", "d.jsonl", "d.tsv", "hf"])
def test_read_source_select_order_rename_limit(data_dir, name):
    ds = read_source(Source(path=str(data_dir / name), columns=["score", "query"], rename={"score": "label"}, limit=2))
    got = ds.take_all()
    assert ds.schema().names == ["label", "query"]
    assert len(got) == 2
    assert all(list(r) == ["label", "query"] for r in got)
    score_of = {r["query"]: r["score"] for r in ROWS}
    assert all(g["label"] == score_of[g["query"]] for g in got)


def test_read_source_file_uri(data_dir):
    ds = read_source(Source(path=f"file://{data_dir / 'd.parquet'}", columns=["passage"]))
    assert sorted(r["passage"] for r in ds.take_all()) == ["p1", "p2", "p3", "p4"]


def test_read_source_swapped_rename(data_dir):
    ds = read_source(Source(path=str(data_dir / "d.jsonl"), columns=["query", "passage"], rename={"query": "passage", "passage": "query"}))
    assert {"passage": "q1", "query": "p1"} in ds.take_all()


def test_read_source_compressed_jsonl(tmp_path):
    import gzip

    with gzip.open(tmp_path / "z.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in ROWS))
    assert rows(read_source(Source(path=str(tmp_path / "z.jsonl.gz")))) == ROWS
