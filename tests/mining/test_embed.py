"""The embedding stage's work plan and actor body, without Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from raytune_st.mining import embed, store
from raytune_st.mining.embed import ChunkEmbedder, ChunkJob, EmbedSpec, EmbedUnit, pending_chunks, plan_units
from raytune_st.models.config import ModelConfig

CORPUS = EmbedSpec("corpus", None, None)
QUERY = EmbedSpec("query", "query", None)


def chunks(weights: list[int], rows: int = 512) -> list[ChunkJob]:
    return [ChunkJob(f"t{i}", f"o{i}", i * rows, rows, w) for i, w in enumerate(weights)]


def test_units_keep_each_kind_apart_cover_every_chunk_once_in_order_and_come_heaviest_first():
    corpus, queries = chunks([400] * 12), chunks([60] * 12)
    units = plan_units([(CORPUS, corpus), (QUERY, queries)], actors=2)
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
    one_actor = plan_units([(CORPUS, chunks([400] * 8))], actors=1)
    assert [len(u.chunks) for u in one_actor] == [2, 2, 2, 2]


def test_a_chunk_heavier_than_the_target_is_a_unit_of_its_own():
    units = plan_units([(CORPUS, chunks([10, 10_000, 10]))], actors=1)
    assert [[c.first_id for c in u.chunks] for u in units] == [[512], [0], [1024]]
    assert plan_units([(CORPUS, [])], actors=2) == []


def test_only_chunks_without_a_whole_cache_file_are_pending(tmp_path):
    whole, cut, missing = (str(tmp_path / f"{name}.npz") for name in ("whole", "cut", "missing"))
    payload = store.sealed_npz_bytes(ids=np.arange(3), embeddings=np.ones((3, 2), np.float32))
    store.put(whole, payload)
    store.put(cut, payload[: len(payload) // 2])
    chunked = store.Chunked(("a", "b", "c"), 3, 8)
    pending = pending_chunks(chunked, [whole, cut, missing], (30, 31, 20))
    assert pending == [ChunkJob("b", cut, 3, 3, 31), ChunkJob("c", missing, 6, 2, 20)]


def test_an_actor_embeds_a_unit_of_chunks_as_each_text_alone(tmp_path, tiny_bert_dir):
    """One encode over several chunks (one length sort) gives every chunk's file its own rows and ids."""
    texts = [["short", "a much longer text about debian packages and their maintainers"], ["mid length text", "x"], ["last"]]
    jobs = []
    first = 0
    for i, chunk in enumerate(texts):
        path = str(tmp_path / f"t{i}.texts")
        store.write_parquet(path, pa.table({"text": chunk}))
        jobs.append(ChunkJob(path, str(tmp_path / f"o{i}.npz"), first, len(chunk), 1))
        first += len(chunk)
    model = ModelConfig(name=tiny_bert_dir)
    embedder = ChunkEmbedder(model, batch_size=2, dtype="float32")
    assert embedder.embed(EmbedUnit(QUERY, tuple(jobs))) == 5
    reference = model.load(device="cpu")
    for job, chunk in zip(jobs, texts):
        data = store.get_sealed(job.out)
        assert data["ids"].tolist() == list(range(job.first_id, job.first_id + job.rows))
        expected = reference.encode_query(chunk, prompt_name="query", normalize_embeddings=True, convert_to_numpy=True)
        np.testing.assert_allclose(data["embeddings"], expected, atol=1e-5)


def test_the_cache_name_changes_with_the_weights_dtype_and_keeps_float32_names():
    full, half = ModelConfig(name="m", max_seq_length=64), ModelConfig(name="m", max_seq_length=64, dtype="float16")
    assert CORPUS.cache_name(full, "float32", "abc") != CORPUS.cache_name(half, "float32", "abc")
    # A float32 model keeps the key it had before model.dtype existed: its cache stays valid.
    key = store.text_digest(embed.CACHE_FORMAT, "m", 64, "corpus", None, None, "float32", "abc")
    assert CORPUS.cache_name(full, "float32", "abc") == f"corpus-{key[:32]}.npz"
