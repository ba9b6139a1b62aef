"""Exact-string deduplication: sentence-transformers' corpus and query order, several positives per query."""

from __future__ import annotations

import pytest

from raytune_st.errors import DataError
from raytune_st.mining.prepare import Prepared, read_positives, text_weight


def test_corpus_first_then_positives_in_order_of_first_appearance():
    prepared = Prepared(chunk_rows=2)
    prepared.add_corpus(["c1", "p2", "c1", None])
    prepared.add_pairs(["q1", "q2", "q1", "q1", "q3"], ["p1", "p2", "p3", "p1", "c1"])
    info = prepared.finish()
    # dict.fromkeys(corpus + positives)
    assert prepared.corpus.in_memory == ["c1", "p2", "p1", "p3"]
    assert prepared.queries.in_memory == ["q1", "q2", "q3"]
    # distinct positives per query, in order; duplicate rows still count for max_positives
    assert prepared.positives == [[2, 3], [1], [0]]
    assert (info.num_rows, info.num_queries, info.num_pairs, info.corpus_size) == (5, 3, 4, 4)
    assert info.max_positives == 3 and info.mean_positives == pytest.approx(5 / 3)
    assert info.corpus.num_rows == 4 and len(info.corpus.paths) == 2


def test_digest_changes_with_the_data():
    def digest(positives):
        prepared = Prepared(chunk_rows=8)
        prepared.add_pairs(["q1", "q2"], positives)
        return prepared.finish().digest

    assert digest(["a", "b"]) == digest(["a", "b"])
    assert digest(["a", "b"]) != digest(["b", "a"])


def test_empty_dataset_and_missing_text_are_refused():
    with pytest.raises(DataError, match="empty"):
        Prepared(chunk_rows=2).finish()
    with pytest.raises(DataError, match="row 1 has an empty positive"):
        Prepared(chunk_rows=2).add_pairs(["q1", "q2"], ["p1", None])


def test_chunks_round_trip_through_the_work_directory(tmp_path):
    from raytune_st.mining import store

    prepared = Prepared(chunk_rows=2, directory=str(tmp_path))
    prepared.add_pairs(["q1", "q2", "q3", "q1", "q4"], ["p1", "p2", "p3", "p2", "p1"])
    info = prepared.finish()
    assert store.read_texts(info.queries, 1, 4) == ["q2", "q3", "q4"]
    assert store.read_texts(info.corpus, 0, 3) == ["p1", "p2", "p3"]
    positives, self_ids = read_positives(info.positives, 0, 4)
    assert positives == [[0, 1], [1], [2], [0]] and self_ids.tolist() == [-1, -1, -1, -1]
    assert read_positives(info.positives, 3, 4)[0] == [[0]]


def test_each_query_knows_the_passage_with_its_own_text(tmp_path):
    prepared = Prepared(chunk_rows=2, directory=str(tmp_path))
    prepared.add_corpus(["q3"])
    # q2's text becomes a passage only in a later row
    prepared.add_pairs(["q1", "q2", "q3", "q4"], ["p1", "p2", "q2", "q4"])
    info = prepared.finish()
    assert prepared.self_ids.tolist() == [-1, 3, 0, 4]
    assert read_positives(info.positives, 1, 4)[1].tolist() == [3, 0, 4]


def test_each_chunk_carries_its_embedding_cost():
    prepared = Prepared(chunk_rows=2)
    long = "x" * 5000  # read only up to a 512-token model's length
    prepared.add_pairs(["q1", "q2", "q3"], ["ab", long, "abcd"])
    info = prepared.finish()
    assert info.corpus_weights == (text_weight("ab") + text_weight(long), text_weight("abcd"))
    assert info.query_weights == (2 * text_weight("q1"), text_weight("q3"))
    assert text_weight(long) == text_weight("y" * 2048) > text_weight("y" * 2047) > text_weight("ab")


def test_positives_survive_folding_across_batches(monkeypatch):
    from raytune_st.mining.prepare import PositivePairs

    monkeypatch.setattr(PositivePairs, "FOLD_AT", 2)  # fold after nearly every batch
    prepared = Prepared(chunk_rows=3)
    batches = [(["q1", "q2", "q1"], ["p1", "p2", "p1"]), (["q3", "q1", "q2"], ["p3", "p2", "p2"]), (["q1", "q3", "q1"], ["p3", "p1", "p1"])]
    for anchors, positives in batches:
        prepared.add_pairs(anchors, positives)
    assert prepared.positives == [[0, 1, 2], [1], [2, 0]]
    info = prepared.finish()
    assert prepared.pairs.counts.tolist() == [5, 2, 2]
    assert (info.num_rows, info.num_pairs, info.max_positives) == (9, 6, 5)
    assert prepared.corpus.in_memory == ["p1", "p2", "p3"] and prepared.queries.in_memory == ["q1", "q2", "q3"]

    unfolded = Prepared(chunk_rows=3)
    unfolded.add_pairs(*(sum(column, []) for column in zip(*batches)))  # one batch: one fold, at the end
    assert unfolded.finish().digest == info.digest


def test_a_chunk_digest_depends_on_its_texts_only():
    import pyarrow as pa

    from raytune_st.mining.prepare import texts_digest

    texts = ["a query", "", "ünïcode ✓", "x" * 3000]
    whole = texts_digest(pa.array(texts))
    # the same texts from a slice of a larger batch, or pieced together, are the same cache key
    assert texts_digest(pa.array(["before"] + texts + ["after"]).slice(1, 4)) == whole
    assert texts_digest(pa.concat_arrays([pa.array(texts[:2]), pa.array(texts[2:])])) == whole
    assert texts_digest(pa.array(["ab", "c"])) != texts_digest(pa.array(["a", "bc"]))  # the lengths count
    assert texts_digest(pa.array(texts[::-1])) != whole
    assert texts_digest(pa.array([], pa.string())) != texts_digest(pa.array([""]))


def test_arrow_batches_and_python_lists_prepare_the_same():
    import pyarrow as pa

    anchors, positives = ["q1", "q2", "q1", "q3"], ["a", "b", "c", "a"]
    from_lists, from_arrow = Prepared(chunk_rows=3), Prepared(chunk_rows=3)
    from_lists.add_pairs(anchors, positives)
    from_arrow.add_pairs(pa.array(["x"] + anchors).slice(1), pa.chunked_array([positives[:1], positives[1:]]))
    assert from_lists.finish() == from_arrow.finish()
    assert from_arrow.positives == [[0, 2], [1], [0]]


def test_ids_follow_first_appearance_across_batches_with_repeats():
    import random

    import pyarrow as pa

    from raytune_st.mining.prepare import TextIds

    rng = random.Random(7)
    vocabulary = ["", "ä", "a b", "x" * 300] + [f"text {i}" for i in range(60)]
    texts = [rng.choice(vocabulary) for _ in range(2000)]  # repeats inside a batch and across batches
    ids, added, start = TextIds(), [], 0
    while start < len(texts):
        end = start + rng.randint(1, 90)
        batch_ids, new = ids.add_all(pa.array(["before"] + texts[start:end]).slice(1))
        first = dict.fromkeys(texts[:end])  # sentence-transformers' ids: order of first appearance
        assert batch_ids.tolist() == [list(first).index(text) for text in texts[start:end]]
        added += new.to_pylist()
        start = end
    assert added == list(dict.fromkeys(texts)) and len(ids) == len(added)
