"""The embedding stage's work plan and actor body, without Ray."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from raytune_st.mining import embed, store
from raytune_st.mining.embed import ChunkEmbedder, ChunkJob, EmbedSpec, EmbedUnit, length_order, pending_chunks, plan_units, sorts_by_tokens
from raytune_st.models.config import ModelConfig

CORPUS = EmbedSpec("corpus", None, None)
QUERY = EmbedSpec("query", "query", None)


def chunks(weights: list[int], rows: int = 512) -> list[ChunkJob]:
    return [ChunkJob(f"t{i}", f"o{i}", i * rows, rows, w) for i, w in enumerate(weights)]


def test_units_keep_each_kind_apart_cover_every_chunk_once_in_order_and_come_heaviest_first():
    corpus, queries = chunks([400] * 12), chunks([60] * 12)
    units = plan_units([(CORPUS, corpus), (QUERY, queries)], actors=2, max_rows=6000)  # 6,144 passages: too many for one unit
    assert all(len({c.out for c in u.chunks}) == len(u.chunks) for u in units)
    for spec, given in ((CORPUS, corpus), (QUERY, queries)):
        mine = sorted((u for u in units if u.spec == spec), key=lambda u: u.chunks[0].first_id)
        assert [c for u in mine for c in u.chunks] == given
    assert [u.weight for u in units] == sorted((u.weight for u in units), reverse=True)
    # total 5,520 over 4 units per actor x 2 actors: 690 per unit, so passages go in ones and queries in elevens
    assert [len(u.chunks) for u in units if u.spec == CORPUS] == [1] * 12
    assert sorted(len(u.chunks) for u in units if u.spec == QUERY) == [1, 11]


def test_units_grow_with_the_work_up_to_a_bound_on_their_texts():
    corpus = chunks([400] * 400)  # 204,800 texts
    units = plan_units([(CORPUS, corpus)], actors=2, max_rows=8192)
    assert {len(u.chunks) for u in units} == {16} and len(units) == 25
    one_actor = plan_units([(CORPUS, chunks([400] * 8))], actors=1, max_rows=2048)
    assert [len(u.chunks) for u in one_actor] == [2, 2, 2, 2]


def test_a_chunk_heavier_than_the_target_is_a_unit_of_its_own():
    units = plan_units([(CORPUS, chunks([10, 10_000, 10]))], actors=1, max_rows=1024)
    assert [[c.first_id for c in u.chunks] for u in units] == [[512], [0], [1024]]
    assert plan_units([(CORPUS, [])], actors=2) == []


def test_a_job_whose_every_kind_fits_one_unit_sorts_each_kind_whole_in_a_part_per_actor():
    corpus, queries = chunks([400] * 6), chunks([60] * 6)
    units = plan_units([(QUERY, queries), (CORPUS, corpus)], actors=2)
    assert units == [EmbedUnit(CORPUS, tuple(corpus), parts=2), EmbedUnit(QUERY, tuple(queries), parts=2)]
    assert [u.parts for u in plan_units([(QUERY, queries), (CORPUS, corpus)], actors=1)] == [1, 1]
    # One kind too large for a unit: both kinds are grouped as usual, one part each.
    grouped = plan_units([(QUERY, queries), (CORPUS, chunks([400] * 17))], actors=2)
    assert len(grouped) > 2 and {u.parts for u in grouped} == {1}


def test_only_chunks_without_a_whole_cache_file_are_pending(tmp_path):
    whole, cut, missing = (str(tmp_path / f"{name}.npz") for name in ("whole", "cut", "missing"))
    payload = store.sealed_npz_bytes(ids=np.arange(3), embeddings=np.ones((3, 2), np.float32))
    store.put(whole, payload)
    store.put(cut, payload[: len(payload) // 2])
    chunked = store.Chunked(("a", "b", "c"), 3, 8)
    pending = pending_chunks(chunked, [whole, cut, missing], (30, 31, 20))
    assert pending == [ChunkJob("b", cut, 3, 3, 31), ChunkJob("c", missing, 6, 2, 20)]


@pytest.mark.parametrize("backend", ["torch", "onnx", "openvino"])
def test_an_actor_embeds_a_unit_of_chunks_as_each_text_alone(tmp_path, tiny_bert_dir, backend, monkeypatch):
    """One encode over several chunks (one length sort) gives every chunk's file its own rows and
    ids, under each model.backend the torch model's vectors."""
    monkeypatch.setenv("RAYTUNE_ST_MODEL_CACHE", str(tmp_path / "cache"))
    texts = [["short", "a much longer text about debian packages and their maintainers"], ["mid length text", "x"], ["last"]]
    jobs = []
    first = 0
    for i, chunk in enumerate(texts):
        path = str(tmp_path / f"t{i}.texts")
        store.write_parquet(path, pa.table({"text": chunk}))
        jobs.append(ChunkJob(path, str(tmp_path / f"o{i}.npz"), first, len(chunk), 1))
        first += len(chunk)
    model = ModelConfig(name=tiny_bert_dir, backend=backend)
    embedder = ChunkEmbedder(model, batch_size=2, dtype="float32")
    assert embedder.embed(EmbedUnit(QUERY, tuple(jobs))) == 5
    reference = ModelConfig(name=tiny_bert_dir).load(device="cpu")
    for job, chunk in zip(jobs, texts):
        data = store.get_sealed(job.out)
        assert data["ids"].tolist() == list(range(job.first_id, job.first_id + job.rows))
        expected = reference.encode_query(chunk, prompt_name="query", normalize_embeddings=True, convert_to_numpy=True)
        np.testing.assert_allclose(data["embeddings"], expected, atol=1e-5)


def test_the_parts_of_a_unit_written_together_equal_the_unit_embedded_whole(tmp_path, tiny_bert_dir):
    """Each part takes every n-th batch of the length-sorted texts; a part can get none."""
    texts = [[f"text {i} " + "word " * (i % 7) for i in range(5)], ["another chunk", "x"]]
    jobs, first = [], 0
    for i, chunk in enumerate(texts):
        path = str(tmp_path / f"t{i}.texts")
        store.write_parquet(path, pa.table({"text": chunk}))
        jobs.append(ChunkJob(path, str(tmp_path / f"whole{i}.npz"), first, len(chunk), 1))
        first += len(chunk)
    embedder = ChunkEmbedder(ModelConfig(name=tiny_bert_dir), batch_size=2, dtype="float32")
    assert embedder.embed(EmbedUnit(CORPUS, tuple(jobs))) == 7
    parted = tuple(ChunkJob(j.texts, j.out.replace("whole", "parted"), j.first_id, j.rows, 1) for j in jobs)
    unit = EmbedUnit(CORPUS, parted, parts=5)  # 4 batches of 2 texts over 5 parts: the last part has none
    results = [embedder.embed_part(unit, part) for part in range(5)]
    assert [count for count, _ in results] == [2, 2, 2, 1, 0]
    assert embedder.write(unit, *(vectors for _, vectors in reversed(results))) == 7
    for whole, part in zip(jobs, parted):
        a, b = store.get_sealed(whole.out), store.get_sealed(part.out)
        assert a["ids"].tolist() == b["ids"].tolist() == list(range(whole.first_id, whole.first_id + whole.rows))
        np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-6)


def test_writing_parts_that_miss_texts_fails_and_writes_nothing(tmp_path, tiny_bert_dir):
    path = str(tmp_path / "t.texts")
    store.write_parquet(path, pa.table({"text": ["a", "b b", "c c c"]}))
    unit = EmbedUnit(CORPUS, (ChunkJob(path, str(tmp_path / "o.npz"), 0, 3, 1),), parts=2)
    embedder = ChunkEmbedder(ModelConfig(name=tiny_bert_dir), batch_size=1, dtype="float32")
    with pytest.raises(RuntimeError, match="hold 2 of its 3 texts"):
        embedder.write(unit, embedder.embed_part(unit, 0)[1])
    assert not (tmp_path / "o.npz").exists()


def test_texts_are_ordered_by_tokens_longest_first_up_to_the_models_length(tiny_bert_dir):
    model = ModelConfig(name=tiny_bert_dir, max_seq_length=16).load(device="cpu")
    # Tokens (this vocabulary): 5, 8, 2, 30 and 20 cut to 16 (a tie, kept in order). By characters the first would lead.
    texts = ["the the the the the", "a a a a a a a a", "the cat", "a " * 30, "b " * 20]
    assert length_order(model, texts).tolist() == [3, 4, 1, 0, 2]
    assert length_order(model, []).tolist() == []
    # Where tokenizing costs more than padding (a GPU actor), by characters: 60, 40, 19, 15, 7.
    assert length_order(model, texts, by_tokens=False).tolist() == [3, 4, 0, 1, 2]


def test_an_actor_sorts_by_tokens_only_on_a_cpu(tiny_bert_dir):
    assert ChunkEmbedder(ModelConfig(name=tiny_bert_dir), batch_size=4, dtype="float32").sort_by_tokens
    assert not sorts_by_tokens(SimpleNamespace(device=torch.device("cuda", 0)))
    assert sorts_by_tokens(SimpleNamespace(device=torch.device("cpu")))


def test_a_model_without_a_text_tokenizer_is_ordered_by_characters_as_in_sentence_transformers():
    class NoTokenizer:
        max_seq_length = 8

    assert length_order(NoTokenizer(), ["bb", "a", "ccc", "dd"]).tolist() == [2, 0, 3, 1]


def test_the_cache_name_changes_with_the_weights_dtype_and_keeps_float32_names():
    full, half = ModelConfig(name="m", max_seq_length=64), ModelConfig(name="m", max_seq_length=64, dtype="float16")
    assert CORPUS.cache_name(full, "float32", "abc") != CORPUS.cache_name(half, "float32", "abc")
    # A float32 model keeps the key it had before model.dtype existed: its cache stays valid.
    key = store.text_digest(embed.CACHE_FORMAT, "m", 64, "corpus", None, None, "float32", "abc")
    assert CORPUS.cache_name(full, "float32", "abc") == f"corpus-{key[:32]}.npz"
    # Another runtime's vectors (equal to float rounding) are never mixed into torch's cache.
    onnx = ModelConfig(name="m", max_seq_length=64, backend="onnx")
    assert CORPUS.cache_name(onnx, "float32", "abc") not in (CORPUS.cache_name(full, "float32", "abc"), CORPUS.cache_name(half, "float32", "abc"))
