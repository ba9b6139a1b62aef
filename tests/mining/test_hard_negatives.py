"""raytune_st.mine_hard_negatives against sentence-transformers' own function.

The signature, the deprecated parameters and their warnings are compared without Ray; the
seed guide's mining snippet runs with only its import changed on a local Ray (one session for
the module) and returns sentence-transformers' rows.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter

import pytest

from mining_fixtures import MINILM, sample_pairs
from raytune_st.mining.config import ST_LOGGER
from raytune_st.mining.hard_negatives import _embed_actors


def test_the_signature_is_sentence_transformers_own_then_the_cluster_keywords():
    from sentence_transformers.util import mine_hard_negatives as theirs

    from raytune_st import mine_hard_negatives as ours

    their_params = list(inspect.signature(theirs).parameters.values())
    our_params = list(inspect.signature(ours).parameters.values())
    assert [(p.name, p.default, p.kind) for p in our_params[: len(their_params)]] == [
        (p.name, p.default, p.kind) for p in their_params
    ]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in our_params[len(their_params) :])


def test_use_multi_process_becomes_embedding_actors():
    assert _embed_actors(False, None) == {}
    assert _embed_actors(["cuda:0", "cuda:1"], None) == {"embed_actors_max": 2, "embed_num_gpus": 1, "embed_actors_min": 1}
    assert _embed_actors(["cpu", "cpu", "cpu"], None)["embed_actors_max"] == 3
    assert _embed_actors(True, None)["embed_actors_max"] == (os.cpu_count() or 1)
    assert _embed_actors(True, 5)["embed_actors_max"] == 5  # the cluster keyword wins


def test_bad_inputs_fail_as_sentence_transformers_fails_before_ray(tmp_path):
    from datasets import Dataset

    from raytune_st import mine_hard_negatives

    with pytest.raises(ValueError, match="The dataset is empty"):
        mine_hard_negatives(Dataset.from_dict({"q": [], "p": []}), MINILM)
    with pytest.raises(ValueError, match="faiss_batch_size must be a positive integer"):
        mine_hard_negatives(Dataset.from_dict({"q": ["a"], "p": ["b"]}), MINILM, faiss_batch_size=0)
    with pytest.raises(TypeError, match="dataset must be a datasets.Dataset, got list"):
        mine_hard_negatives([("a", "b")], MINILM)


@pytest.mark.parametrize(
    "settings",
    [
        {"include_positives": True, "output_format": "n-tuple-scores", "range_max": 3},
        {"include_positives": True, "as_triplets": True, "margin": 0.1},
        {"include_positives": True, "output_format": "n-tuple", "output_scores": True},
        {"output_format": "n-tuple-scores", "as_triplets": False},
        {"include_positives": True, "sampling_strategy": "random", "output_format": "n-tuple"},
        {"include_positives": True, "output_format": "n-tuple"},
    ],
)
def test_include_positives_and_deprecated_formats_warn_and_shape_the_columns_as_sentence_transformers(settings, tiny_bert_dir, caplog):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as theirs

    from raytune_st import mine_hard_negatives
    from raytune_st.mining.hard_negatives import st_parameters
    from raytune_st.mining.rows import output_columns

    dataset = Dataset.from_dict({"query": [f"q{i}" for i in range(6)], "passage": [f"p{i}" for i in range(6)]})
    with caplog.at_level(logging.WARNING, logger=ST_LOGGER):
        their_columns = theirs(dataset, SentenceTransformer(tiny_bert_dir, device="cpu"), num_negatives=2, verbose=False, **settings).column_names
    their_warnings = [r.getMessage() for r in caplog.records if r.name == ST_LOGGER]
    caplog.clear()

    names = inspect.signature(st_parameters).parameters
    defaults = {n: p.default for n, p in inspect.signature(mine_hard_negatives).parameters.items() if n in names}
    with caplog.at_level(logging.WARNING, logger=ST_LOGGER):
        output_format, output_scores, _ = st_parameters(**{**defaults, **settings})
    assert [r.getMessage() for r in caplog.records if r.name == ST_LOGGER] == their_warnings
    assert [name for name, _ in output_columns(output_format, output_scores, "query", "passage", 2)] == their_columns


# --- on a local Ray ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster(ray_init_options):
    import ray

    ray.init(**ray_init_options, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


SEED_GUIDE = dict(
    num_negatives=5,
    range_min=10,
    range_max=100,
    max_score=0.8,
    absolute_margin=0.1,
    relative_margin=0.1,
    sampling_strategy="top",
    batch_size=4096,
    output_format="labeled-pair",
    use_faiss=True,
)


@pytest.mark.ray
def test_the_seed_guides_mining_snippet_returns_sentence_transformers_rows(ray_cluster):
    """The guide's call with only the import changed: the same columns and rows (ties apart)."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

    from raytune_st import mine_hard_negatives
    from raytune_st.models import load_bi_encoder

    train_dataset = Dataset.from_pandas(sample_pairs(n=300, extra_positives=0, duplicates=0), preserve_index=False)
    embedding_model = load_bi_encoder(MINILM, device="cpu")
    theirs = st_mine_hard_negatives(train_dataset, embedding_model, verbose=False, **SEED_GUIDE)
    ours = mine_hard_negatives(train_dataset, embedding_model, verbose=False, **SEED_GUIDE)

    assert type(ours) is type(theirs) and ours.column_names == theirs.column_names == ["query", "passage", "label"]
    assert len(ours) == len(theirs) > len(train_dataset)
    rows = lambda d: Counter(zip(d["query"], d["passage"], d["label"]))  # noqa: E731
    shared = sum((rows(ours) & rows(theirs)).values())
    assert shared / len(theirs) >= 0.99, f"{shared} of {len(theirs)} rows shared"


@pytest.mark.ray
def test_objects_a_corpus_the_cache_and_deprecated_parameters_work_as_in_sentence_transformers(
    ray_cluster, tiny_model, tmp_path, caplog
):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

    from raytune_st import mine_hard_negatives

    pairs = sample_pairs(n=60, extra_positives=0, duplicates=0)
    dataset = Dataset.from_pandas(pairs, preserve_index=False)
    corpus = [f"an extra passage about package {i}" for i in range(40)]
    model = SentenceTransformer(tiny_model, device="cpu")
    settings = dict(corpus=corpus, num_negatives=2, margin=0.0, as_triplets=False, output_scores=True, verbose=False)

    with caplog.at_level(logging.WARNING, logger=ST_LOGGER):
        theirs = st_mine_hard_negatives(dataset, model, **settings)
    their_warnings = [r.getMessage() for r in caplog.records if r.name == ST_LOGGER]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ST_LOGGER):
        ours = mine_hard_negatives(dataset, model, cache_folder=str(tmp_path / "cache"), output_path=str(tmp_path / "out"), **settings)
    assert [r.getMessage() for r in caplog.records if r.name == ST_LOGGER] == their_warnings
    assert any("`margin` parameter is deprecated" in w for w in their_warnings)

    # as_triplets=False is n-tuple; margin=0.0 is absolute_margin=0.0; the corpus lends negatives.
    assert ours.column_names == theirs.column_names == ["query", "passage", "negative_1", "negative_2", "scores"]
    assert len(ours) == len(theirs)
    assert set(ours["negative_1"]).union(ours["negative_2"]) & set(corpus)
    key = lambda d: sorted(zip(d["query"], d["negative_1"], d["negative_2"]))  # noqa: E731
    assert sum(a == b for a, b in zip(key(ours), key(theirs))) >= 0.95 * len(theirs)
    # The results stay at output_path; the embeddings in cache_folder serve the next call, which
    # knows the same model object by the digest of its weights: nothing is embedded again.
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet")) and any((tmp_path / "cache").iterdir())
    cached = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*") if p.is_file())
    again = mine_hard_negatives(dataset, model, cache_folder=str(tmp_path / "cache"), **settings)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "cache").rglob("*") if p.is_file()) == cached
    assert key(again) == key(ours)
