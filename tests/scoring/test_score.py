"""The score job: its checks and its scorer without Ray, then one run on a local Ray."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config.core import build
from raytune_st.errors import ConfigError, DataError
from raytune_st.scoring.config import ScoreConfig
from raytune_st.scoring.job import Scorer


@pytest.fixture(scope="module")
def tiny_cross_encoder_dir(tmp_path_factory) -> str:
    from raytune_st.testing import save_tiny_cross_encoder

    # A wide initializer: the pairs score apart, so that order mistakes show.
    return save_tiny_cross_encoder(str(tmp_path_factory.mktemp("tiny-ce")), initializer_range=0.5)


def rows(path, n=40, negatives=2) -> str:
    table = {"query": [f"package {i} question" for i in range(n)], "positive": [f"package {i} does this" for i in range(n)]}
    for k in range(1, negatives + 1):
        table[f"negative_{k}"] = [f"package {(i + k) % n} does that" for i in range(n)]
    pq.write_table(pa.table(table), path)
    return str(path)


def config(tmp_path, model, data, **extra) -> ScoreConfig:
    return build(ScoreConfig, {"model": model, "data": data, "output": str(tmp_path / "scored"), **extra})


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_a_cross_encoder_scores_each_pair_as_sentence_transformers_predict_does(tmp_path, tiny_cross_encoder_dir, backend, monkeypatch):
    from sentence_transformers import CrossEncoder

    monkeypatch.setenv("RAYTUNE_ST_MODEL_CACHE", str(tmp_path / "cache"))
    table = pq.read_table(rows(tmp_path / "rows.parquet", n=6))
    model = config(tmp_path, {"name": tiny_cross_encoder_dir, "type": "cross_encoder", "backend": backend}, str(tmp_path / "rows.parquet")).model
    scored = Scorer(model, "query", ["positive", "negative_1", "negative_2"], "label", 4)(table)
    reference = CrossEncoder(tiny_cross_encoder_dir, device="cpu")
    for row in scored.to_pylist():
        expected = reference.predict([(row["query"], row[c]) for c in ("positive", "negative_1", "negative_2")])
        np.testing.assert_allclose(row["label"], expected, rtol=1e-5, atol=1e-6)
    assert len({round(v, 4) for row in scored.to_pylist() for v in row["label"]}) > 6  # the scores differ


def test_a_bi_encoder_scores_pairs_by_its_similarity_with_its_prompts(tmp_path, tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    # A model with query and document prompts: both sides are encoded as mining encodes them.
    prompted = SentenceTransformer(tiny_bert_dir, device="cpu", prompts={"query": "query: ", "document": "passage: "})
    prompted.save(str(tmp_path / "prompted"))
    table = pq.read_table(rows(tmp_path / "rows.parquet", n=5, negatives=0))
    model = config(tmp_path, {"name": str(tmp_path / "prompted"), "type": "bi_encoder"}, str(tmp_path / "rows.parquet")).model
    scored = Scorer(model, "query", ["positive"], "score", 2)(table)
    queries, passages = table.column("query").to_pylist(), table.column("positive").to_pylist()
    expected = prompted.similarity_pairwise(prompted.encode_query(queries), prompted.encode_document(passages))
    np.testing.assert_allclose(scored.column("score").to_numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)
    unprompted = prompted.similarity_pairwise(prompted.encode(queries), prompted.encode(passages))
    assert not np.allclose(scored.column("score").to_numpy(), unprompted.numpy(), atol=1e-4)


def test_data_that_cannot_be_scored_is_refused_before_any_work(tmp_path, tiny_bert_dir):
    model = {"name": tiny_bert_dir, "type": "bi_encoder"}
    pq.write_table(pa.table({"query": ["q"], "passage": ["p"], "label": [1.0]}), tmp_path / "labeled.parquet")
    with pytest.raises(DataError, match=r"already has a label column 'label'; .* select the text columns with data.columns"):
        config(tmp_path, model, str(tmp_path / "labeled.parquet")).roles()
    pq.write_table(pa.table({"query": ["q"], "id": [3]}), tmp_path / "ids.parquet")
    with pytest.raises(DataError, match="column 'id' holds int, not text"):
        config(tmp_path, model, str(tmp_path / "ids.parquet")).roles()
    with pytest.raises(DataError, match="has 1 column"):
        config(tmp_path, model, {"path": str(tmp_path / "ids.parquet"), "columns": ["query"]}).roles()
    with pytest.raises(ConfigError, match="need 1 <= actors_min <= actors_max"):
        config(tmp_path, model, str(tmp_path / "ids.parquet"), compute={"actors_min": 3, "actors_max": 2})
    assert config(tmp_path, {"name": tiny_bert_dir}, str(tmp_path / "ids.parquet")).model.type == "cross_encoder"


# --- on a local Ray ------------------------------------------------------------------------------


@pytest.mark.ray
def test_the_job_streams_every_row_in_order_with_its_scores(ray_local, tmp_path, tiny_cross_encoder_dir, capsys):
    from sentence_transformers import CrossEncoder

    import raytune_st

    data = rows(tmp_path / "rows.parquet", n=300)
    settings = {"model": {"name": tiny_cross_encoder_dir, "type": "cross_encoder"}, "data": data,
                "output": str(tmp_path / "scored"), "batch_size": 16, "compute": {"actors_min": 1, "actors_max": 2, "num_cpus": 0.5}}
    summary = raytune_st.score(settings)
    assert summary["rows"] == 300 and summary["passages"] == ["positive", "negative_1", "negative_2"]
    assert "[score] 300 rows scored" in capsys.readouterr().out
    written = sorted(os.listdir(tmp_path / "scored"))
    assert {"stats.json", "config.yaml"} <= set(written) and json.loads((tmp_path / "scored" / "stats.json").read_text())["rows"] == 300
    table = pq.read_table([str(tmp_path / "scored" / f) for f in written if f.endswith(".parquet")])
    assert table.column_names == ["query", "positive", "negative_1", "negative_2", "label"]
    assert table.column("query").to_pylist() == pq.read_table(data).column("query").to_pylist()  # in order
    reference = CrossEncoder(tiny_cross_encoder_dir, device="cpu")
    for row in table.to_pylist()[::50]:
        np.testing.assert_allclose(row["label"], reference.predict([(row["query"], row[c]) for c in ("positive", "negative_1", "negative_2")]), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="already holds .* set output.overwrite=true"):
        raytune_st.score(settings)
    settings["data"] = {"path": data, "limit": 10}
    assert raytune_st.score(settings, ["output.overwrite=true"])["rows"] == 10
    assert len(pq.read_table([str(tmp_path / "scored" / f) for f in os.listdir(tmp_path / "scored") if f.endswith(".parquet")])) == 10


@pytest.mark.ray
def test_the_readmes_command_scores_the_debian_pairs_with_minilm(ray_local, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from raytune_st.cli import main

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(["score", "--config", "examples/configs/score-debian.yaml", f"output.path={tmp_path / 'scored'}", "data.limit=64"]) == 0
    table = pq.read_table([str(p) for p in (tmp_path / "scored").glob("*.parquet")])
    assert table.column_names == ["query", "passage", "label"] and len(table) == 64
    # all-MiniLM-L6-v2 finds each Debian query close to its own package description.
    assert np.mean(table.column("label").to_numpy()) > 0.4
