"""The mining arithmetic in one process, against sentence-transformers' mine_hard_negatives.

No Ray here: deduplication (Prepared), two Flat index shards in memory, and per batch the
job's own :func:`~raytune_st.mining.batch.mine_queries` (merge, positive scores, filters,
sampling, rows); the rows and the printed statistics must reproduce what
``mine_hard_negatives`` returns and prints for the same pairs, on a tiny random model.
The Ray task (raytune_st.mining.miner) calls the same function; test_mine_ray.py checks it
end to end.
"""

from __future__ import annotations

import datasets
import numpy as np
import pandas as pd
import pytest

from mining_fixtures import DEV_SAMPLE, make_tiny_cross_encoder, sample_pairs
from raytune_st.mining.batch import BatchSources, MineSettings, mine_queries
from raytune_st.mining.index import build_faiss_index, shard_bounds
from raytune_st.mining.prepare import Prepared
from raytune_st.mining.select import FILTERS, FilterParams, candidates_per_query, resolve_range_max
from raytune_st.mining.stats import summarize

BATCH_ROWS = 37  # several batches, so per-batch results must add up to the global ones


def mine_in_process(pairs: pd.DataFrame, model, corpus=None, cross_encoder=None, **params):
    """Chain the pure pieces like the Ray job does; returns (rows DataFrame, printed lines).

    `cross_encoder`: the job's CrossEncoderScorer, here in this process instead of an actor.
    """
    p = dict(range_min=0, range_max=None, num_negatives=3, sampling_strategy="top", include_positives=False,
             output_format="triplet", output_scores=False, absolute_margin=None, relative_margin=None,
             max_score=None, min_score=None, seed=0)
    p.update(params)
    output_format = "n-tuple" if p["include_positives"] else p["output_format"]
    filters = FilterParams(**{k: p[k] for k in ("include_positives", *FILTERS)})

    prepared = Prepared(chunk_rows=64)
    if corpus is not None:
        prepared.add_corpus(corpus)
    prepared.add_pairs(pairs.iloc[:, 0].tolist(), pairs.iloc[:, 1].tolist())
    info = prepared.finish()
    corpus_texts, queries = prepared.corpus.in_memory, prepared.queries.in_memory
    corpus_vectors = model.encode_document(corpus_texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    query_vectors = model.encode_query(queries, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    range_max, lines = resolve_range_max(
        p["range_max"], range_min=p["range_min"], num_negatives=p["num_negatives"], max_positives=info.max_positives,
        params=filters, has_cross_encoder=cross_encoder is not None,
    )
    bounds = shard_bounds(len(corpus_texts), 2)
    shards = [build_faiss_index(corpus_vectors[lo:hi], "Flat", train_sample_size=1) for lo, hi in bounds]
    settings = MineSettings(
        filters=filters, range_min=p["range_min"], range_max=range_max, k=candidates_per_query(range_max, info.max_positives),
        num_negatives=p["num_negatives"], sampling_strategy=p["sampling_strategy"], seed=p["seed"],
        output_format=output_format, output_scores=p["output_scores"], anchor_column=pairs.columns[0],
        positive_column=pairs.columns[1], shard_starts=tuple(lo for lo, _ in bounds), rescore=cross_encoder is not None,
    )
    # The shards in memory where the job has IndexShard actors; the rest is the job's own function.
    sources = BatchSources(
        search=lambda vectors, k: [shard.search(vectors, min(k, shard.ntotal)) for shard in shards],
        vectors_of=lambda ids: corpus_vectors[ids],
        texts_of=lambda ids: {int(i): corpus_texts[i] for i in ids},
        rescore=cross_encoder.predict if cross_encoder is not None else None,
    )

    frames, positive, negative, difference = [], [], [], []
    totals: dict[str, int] = {}
    for batch, start in enumerate(range(0, len(queries), BATCH_ROWS)):
        end = min(start + BATCH_ROWS, len(queries))
        mined = mine_queries(
            settings, batch, queries[start:end], query_vectors[start:end], prepared.positives[start:end], prepared.self_ids[start:end], sources
        )
        frames.append(mined.table(settings).to_pandas())
        positive.append(mined.rows.positive_scores)
        negative.append(mined.rows.negative_scores)
        difference.append(mined.rows.difference_scores)
        for name, count in mined.counters.items():
            totals[name] = totals.get(name, 0) + count
    rows = pd.concat(frames, ignore_index=True)
    summary = summarize(
        totals, tuple(np.concatenate(x) for x in (positive, negative, difference)), output_format=output_format,
        range_min=p["range_min"], duplicate_rows=info.num_rows - info.num_pairs, filter_values={name: p[name] for name in FILTERS},
    )
    assert summary.rows == len(rows)
    return rows, lines + summary.lines


def printed_summary(text: str) -> list[str]:
    """The lines of mine_hard_negatives' output that the job reproduces."""
    keep = ("Setting range_max", "Metric", "Count", "Mean", "Median", "Std", "Min", "25%", "50%", "75%", "Max", "Skipped", "Could not")
    return [line for line in text.splitlines() if line.startswith(keep)]


@pytest.fixture(scope="module")
def model(tiny_model):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def pairs():
    return sample_pairs(n=150, extra_positives=12, duplicates=4)


CASES = {
    "triplet": dict(),
    "triplet-scores-relative-margin": dict(output_scores=True, relative_margin=0.002),
    "triplet-range-min": dict(range_min=3, range_max=12),
    "n-tuple-absolute-margin": dict(output_format="n-tuple", absolute_margin=0.001, num_negatives=4),
    "n-tuple-scores-max-score": dict(output_format="n-tuple", output_scores=True, max_score=0.97),
    "n-tuple-include-positives": dict(include_positives=True),
    "labeled-pair": dict(output_format="labeled-pair", min_score=0.9),
    "labeled-pair-scores": dict(output_format="labeled-pair", output_scores=True, max_score=0.975, min_score=0.95),
    "labeled-list": dict(output_format="labeled-list", relative_margin=0.001, range_min=2),
    "labeled-list-scores": dict(output_format="labeled-list", output_scores=True, absolute_margin=0.0, max_score=0.99),
}


def assert_matches(pairs: pd.DataFrame, model, capsys, *, scorer=None, cross_encoder=None, **params) -> pd.DataFrame:
    """mine_in_process's rows and printed statistics equal mine_hard_negatives' for the same
    arguments (`scorer`: the job's CrossEncoderScorer for sentence-transformers' `cross_encoder`)."""
    from sentence_transformers.util import mine_hard_negatives

    rows, lines = mine_in_process(pairs, model, cross_encoder=scorer, **params)
    capsys.readouterr()
    expected = mine_hard_negatives(
        datasets.Dataset.from_pandas(pairs, preserve_index=False), model, cross_encoder=cross_encoder, use_faiss=True, batch_size=32, **params
    ).to_pandas()
    printed = printed_summary(capsys.readouterr().out)
    assert list(rows.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
    assert lines == printed
    return rows


@pytest.mark.parametrize("case", CASES)
def test_matches_mine_hard_negatives(case, model, pairs, capsys):
    assert_matches(pairs, model, capsys, **CASES[case])


def test_extra_corpus_matches(model, pairs, capsys):
    extra = pd.read_parquet(DEV_SAMPLE, columns=["passage"])["passage"].iloc[:80].tolist() + pairs["passage"].iloc[:5].tolist()
    assert_matches(pairs, model, capsys, corpus=extra, output_format="labeled-list")


@pytest.fixture(scope="module")
def pairs_with_own_texts(pairs):
    """Queries whose text is also a passage: another row's positive, and their own positive."""
    passages = pairs["passage"]
    own = pd.DataFrame({"query": [passages[3], passages[40], passages[90]], "passage": [passages[60], passages[40], passages[7]]})
    return pd.concat([pairs, own], ignore_index=True)


@pytest.mark.parametrize("params", [dict(), dict(include_positives=True), dict(output_format="labeled-list", range_min=1)], ids=str)
def test_a_query_is_never_its_own_negative(params, model, pairs_with_own_texts, capsys):
    rows = assert_matches(pairs_with_own_texts, model, capsys, **params)
    if "negative" in rows:
        assert not (rows["query"] == rows["negative"]).any()


@pytest.mark.parametrize("filters", [dict(), dict(relative_margin=0.0)], ids=["no-filter", "relative-margin"])
def test_cross_encoder_rescoring_matches(filters, model, pairs, tmp_path, capsys):
    from sentence_transformers.cross_encoder import CrossEncoder

    from raytune_st.mining.miner import CrossEncoderScorer
    from raytune_st.models.config import ModelConfig

    path = make_tiny_cross_encoder(tmp_path)
    scorer = CrossEncoderScorer(ModelConfig(name=path, type="cross_encoder"), 32)
    rows = assert_matches(
        pairs.iloc[:60], model, capsys, scorer=scorer, cross_encoder=CrossEncoder(path, device="cpu"),
        output_format="labeled-pair", output_scores=True, num_negatives=2, **filters,
    )
    # the cross-encoder's scores, not cosine similarities
    similarities = model.similarity_pairwise(model.encode(rows["query"].tolist()), model.encode(rows["passage"].tolist())).numpy()
    assert not np.allclose(rows["score"].to_numpy(), similarities, atol=1e-3)
