"""raytune_st.objects: a driver's objects named in configs, read back without Ray and from Ray workers."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from raytune_st import objects
from raytune_st.data.sources import Source, inspect_source, iter_texts
from raytune_st.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTUNE_ST_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tiny_model(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_bert_dir, device="cpu")


def test_a_model_is_named_by_the_digest_of_its_saved_files(cache, tiny_model):
    import torch

    name = objects.register_model(tiny_model)
    assert name.startswith("ray-object://model/")
    # The same weights are the same object (the embedding cache reuses it); changed weights are another.
    assert objects.register_model(tiny_model) == name
    copy = objects.model_dir(name)
    assert os.path.dirname(copy) == str(cache) and os.path.isfile(os.path.join(copy, "modules.json"))
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    assert objects.register_model(tiny_model) != name
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # no staging directory left behind


def test_a_table_reads_as_a_source_without_ray():
    table = pa.table({"anchor": [f"q{i}" for i in range(10)], "positive": [f"p{i}" for i in range(10)], "n": list(range(10))})
    name = objects.register_table(table, fingerprint="abc")
    try:
        source = Source(path=name, columns=["positive", "anchor"], limit=7)
        assert source.format == "ray_object"
        info = inspect_source(source)
        assert info.columns == ["positive", "anchor"] and info.num_rows == 7 and info.types["anchor"] == "string"
        texts = [row for batch in iter_texts(source, ["anchor"], batch_rows=3) for row in zip(*batch)]
        assert texts == [(f"q{i}",) for i in range(7)]
        # The same data set (fingerprint) under the same name; another one gets its own.
        assert objects.register_table(table, fingerprint="abc") == name
        assert objects.register_table(table, fingerprint="abd") != name
    finally:
        objects.release([name])


def test_one_object_registered_twice_stays_until_both_users_release_it():
    table = pa.table({"anchor": ["a", "b"], "positive": ["c", "d"]})
    first = objects.register_table(table, fingerprint="shared")
    second = objects.register_table(table, fingerprint="shared")  # a second trainer on the same data set
    assert first == second
    objects.release([first])
    assert inspect_source(Source(path=second)).num_rows == 2
    objects.release([second])
    with pytest.raises(ConfigError, match="cannot reach it"):
        inspect_source(Source(path=second))


def test_a_name_nobody_shipped_is_one_error_that_says_what_to_pass():
    with pytest.raises(ConfigError, match=r"ray-object://data/feed names an object .* cannot reach it .* pass the object again, or save it and pass its path"):
        inspect_source(Source(path="ray-object://data/feed"))


# --- through Ray -----------------------------------------------------------------------------------


@pytest.mark.ray
def test_shipped_objects_reach_a_process_with_a_cache_of_its_own(ray_local, tmp_path, tiny_model):
    import ray

    from raytune_st.data.sources import read_source

    model = objects.register_model(tiny_model)
    table = pa.table({"anchor": [f"q{i}" for i in range(1000)], "positive": [f"p{i}" for i in range(1000)]})
    data = objects.register_table(table, fingerprint="rows-1000")
    pickled = objects.register_blob(b"a pickled loss")
    objects.ship([model, data, pickled])
    objects.ship([model, data, pickled])  # once per session: nothing is put twice

    other_node_cache = str(tmp_path / "other-node")

    @ray.remote(num_cpus=0, runtime_env={"env_vars": {"RAYTUNE_ST_MODEL_CACHE": other_node_cache}})
    def on_another_node(model_name, data_name, blob_name):
        # A process that registered nothing: it finds the objects through the holder.
        from sentence_transformers import SentenceTransformer

        from raytune_st.data.sources import Source, inspect_source, iter_texts

        loaded = SentenceTransformer(objects.model_dir(model_name), device="cpu")
        info = inspect_source(Source(path=data_name))
        first = next(iter_texts(Source(path=data_name), ["anchor"], batch_rows=4))
        return objects.model_dir(model_name), loaded.encode("hello").tolist(), info.num_rows, first, objects.blob(blob_name)

    copy, vector, rows, first, blob = ray.get(on_another_node.remote(model, data, pickled))
    assert os.path.dirname(copy) == other_node_cache
    assert sorted(os.listdir(copy)) == sorted(os.listdir(objects.model_dir(model)))
    assert vector == pytest.approx(tiny_model.encode("hello").tolist(), abs=1e-6)
    assert (rows, first, blob) == (1000, [["q0", "q1", "q2", "q3"]], b"a pickled loss")
    # Ray Data reads the blocks where they lie.
    assert sorted(r["anchor"] for r in read_source(Source(path=data)).take_all()) == sorted(table.column("anchor").to_pylist())
    # Released in a session that goes on (the caller's own ray.init): the holder lets them go.
    objects.release([model, data, pickled])

    @ray.remote(num_cpus=0)
    def look_up(name):
        try:
            return objects.blob(name)
        except ConfigError as error:
            return str(error)

    assert "cannot reach it" in ray.get(look_up.remote(pickled))
