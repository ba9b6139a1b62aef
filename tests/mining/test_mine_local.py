"""The pure mining pieces, chained in one process, against sentence-transformers' mine_hard_negatives.

No Ray here: deduplication (Prepared), a 2-shard Flat search (merge_topk), filtering and
selection, the output rows and the printed statistics must reproduce what
``mine_hard_negatives`` returns and prints for the same pairs, on a tiny random model.
The same chain runs distributed in raytune_st.mining.miner; test_mine_ray.py checks that.
"""

from __future__ import annotations

import random

import datasets
import numpy as np
import pandas as pd
import pytest

from mining_fixtures import DEV_SAMPLE, sample_pairs
from raytune_st.mining.index import build_faiss_index, shard_bounds
from raytune_st.mining.prepare import Prepared
from raytune_st.mining.rows import build_rows
from raytune_st.mining.select import FILTERS, FilterParams, filter_candidates, resolve_range_max, select_negatives, skip_ratios
from raytune_st.mining.stats import missing_line, skipped_lines, stats_table
from raytune_st.mining.topk import merge_topk

BATCH_ROWS = 37  # several batches, so per-batch results must add up to the global ones


def mine_in_process(pairs: pd.DataFrame, model, corpus=None, cross_encoder=None, **params):
    """Chain the pure pieces like the Ray job does; returns (rows DataFrame, printed lines)."""
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
        p["range_max"], range_min=p["range_min"], num_negatives=p["num_negatives"], max_positives=info["max_positives"],
        params=filters, has_cross_encoder=cross_encoder is not None,
    )
    k = range_max + info["max_positives"]
    bounds = shard_bounds(len(corpus_texts), 2)
    shards = [build_faiss_index(corpus_vectors[lo:hi], "Flat", train_sample_size=1) for lo, hi in bounds]

    frames, positive, negative, difference = [], [], [], []
    skipped = {name: 0 for name in FILTERS}
    max_possible = num_candidates = 0
    for batch, start in enumerate(range(0, len(queries), BATCH_ROWS)):
        end = min(start + BATCH_ROWS, len(queries))
        vectors = query_vectors[start:end]
        results = [shard.search(vectors, min(k, shard.ntotal)) for shard in shards]
        scores, ids = merge_topk(results, k, offsets=[lo for lo, _ in bounds])
        positive_ids = prepared.positives[start:end]
        pair_query = np.repeat(np.arange(end - start), [len(x) for x in positive_ids])
        flat = [i for x in positive_ids for i in x]
        positive_scores = np.einsum("ij,ij->i", vectors[pair_query], corpus_vectors[flat]).astype(np.float32)
        filtered, counts = filter_candidates(scores, ids, positive_ids, positive_scores, filters)
        neg_ids, neg_scores = select_negatives(
            filtered, ids, range_min=p["range_min"], range_max=range_max, num_negatives=p["num_negatives"],
            sampling_strategy=p["sampling_strategy"], rng=random.Random(f"{p['seed']}:{batch}"),
        )
        built = build_rows(
            output_format=output_format, output_scores=p["output_scores"], anchor_column=pairs.columns[0],
            positive_column=pairs.columns[1], queries=queries[start:end], positive_ids=positive_ids,
            positive_scores=positive_scores, negative_ids=neg_ids, negative_scores=neg_scores,
            texts=dict(enumerate(corpus_texts)),
        )
        frames.append(pd.DataFrame(built.columns))
        positive.append(built.positive_scores)
        negative.append(built.negative_scores)
        difference.append(built.difference_scores)
        for name in FILTERS:
            skipped[name] += counts[name]
        max_possible += built.max_possible
        num_candidates += scores.size
    rows = pd.concat(frames, ignore_index=True)
    if output_format == "labeled-pair":
        max_possible += info["num_rows"] - info["num_pairs"]
    lines += stats_table(*(np.concatenate(x) for x in (positive, negative, difference)))
    lines += skipped_lines(skip_ratios(skipped, num_candidates), {name: p[name] for name in FILTERS})
    line = missing_line(max_possible - len(rows), max_possible, range_min=p["range_min"], absolute_margin=p["absolute_margin"],
                        relative_margin=p["relative_margin"], max_score=p["max_score"])
    return rows, lines + ([line] if line else [])


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


@pytest.mark.parametrize("case", CASES)
def test_matches_mine_hard_negatives(case, model, pairs, capsys):
    from sentence_transformers.util import mine_hard_negatives

    params = CASES[case]
    rows, lines = mine_in_process(pairs, model, **params)
    capsys.readouterr()
    expected = mine_hard_negatives(
        datasets.Dataset.from_pandas(pairs, preserve_index=False), model, use_faiss=True, batch_size=32, **params
    ).to_pandas()
    printed = printed_summary(capsys.readouterr().out)
    assert list(rows.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
    assert lines == printed


def test_extra_corpus_matches(model, pairs, capsys):
    from sentence_transformers.util import mine_hard_negatives

    extra = pd.read_parquet(DEV_SAMPLE, columns=["passage"])["passage"].iloc[:80].tolist() + pairs["passage"].iloc[:5].tolist()
    rows, lines = mine_in_process(pairs, model, corpus=extra, output_format="labeled-list")
    capsys.readouterr()
    expected = mine_hard_negatives(
        datasets.Dataset.from_pandas(pairs, preserve_index=False), model, corpus=extra, output_format="labeled-list", use_faiss=True
    ).to_pandas()
    printed = printed_summary(capsys.readouterr().out)
    pd.testing.assert_frame_equal(rows, expected, check_dtype=False)
    assert lines == printed
