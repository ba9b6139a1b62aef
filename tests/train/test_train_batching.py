"""The pure batching logic: schedule, no_duplicates over a stream, padding, collation. No Ray."""

from __future__ import annotations

import itertools

import pytest

from raytune_st.errors import DataError
from raytune_st.train.batching import (
    Schedule,
    ShardBatcher,
    batches_per_epoch,
    collate,
    columns_to_rows,
    epoch_schedule,
    read_ahead,
    skip,
    wants_dataset_name,
)


def rows(n, start=0, prefix="t"):
    return [{"anchor": f"{prefix}{i}", "positive": f"{prefix}{i}-pos"} for i in range(start, start + n)]


# --- schedule ---------------------------------------------------------------------------


def test_batches_per_epoch_uses_global_rows_and_drops_the_remainder():
    assert batches_per_epoch({"a": 100, "b": 35}, batch_size=8, world_size=2) == {"a": 6, "b": 2}


def test_batches_per_epoch_refuses_a_set_smaller_than_one_global_batch():
    with pytest.raises(DataError, match="fewer than one global batch"):
        batches_per_epoch({"tiny": 10}, batch_size=8, world_size=2)


def test_proportional_schedule_counts_and_is_the_same_on_every_worker():
    per_epoch = {"a": 6, "b": 2, "c": 3}
    first = epoch_schedule(per_epoch, "proportional", seed=42, epoch=0)
    assert sorted(first) == ["a"] * 6 + ["b"] * 2 + ["c"] * 3
    # Another worker computes the same list from the same seed, whatever its shard holds.
    assert first == epoch_schedule(dict(per_epoch), "proportional", seed=42, epoch=0)
    # A new epoch reshuffles.
    others = [epoch_schedule(per_epoch, "proportional", seed=42, epoch=e) for e in range(1, 6)]
    assert any(o != first for o in others)


def test_round_robin_takes_sets_in_turn_until_the_smallest_runs_out():
    assert epoch_schedule({"a": 5, "b": 2, "c": 3}, "round_robin", seed=0, epoch=0) == ["a", "b", "c", "a", "b", "c"]


def test_single_dataset_schedule():
    assert epoch_schedule({"only": 3}, "proportional", seed=1, epoch=7) == ["only"] * 3


def test_schedule_index_spans_epochs():
    schedule = Schedule({"a": 2, "b": 1}, "proportional", seed=3)
    assert schedule.epoch_length == 3
    assert [schedule.epoch_of(i) for i in range(7)] == [0, 0, 0, 1, 1, 1, 2]
    epoch1 = [schedule.dataset_at(i) for i in range(3, 6)]
    assert epoch1 == epoch_schedule({"a": 2, "b": 1}, "proportional", 3, 1)


# --- batches from a stream ---------------------------------------------------------------


def test_plain_batches_keep_stream_order():
    batcher = ShardBatcher(rows(10), 4)
    assert [r["anchor"] for r in batcher.next_batch()] == ["t0", "t1", "t2", "t3"]
    assert [r["anchor"] for r in batcher.next_batch()] == ["t4", "t5", "t6", "t7"]
    assert batcher.rows_read == 8


def test_no_duplicates_never_repeats_a_text_within_a_batch():
    # Every anchor appears three times in a row: plain batching would repeat texts.
    stream = [{"anchor": f"q{i // 3}", "positive": f"p{i}"} for i in range(60)]
    batcher = ShardBatcher(stream, 5, no_duplicates=["anchor", "positive"], buffer_size=64)
    for _ in range(10):
        batch = batcher.next_batch()
        texts = [r["anchor"] for r in batch] + [r["positive"] for r in batch]
        assert len(batch) == 5
        assert len(set(texts)) == len(texts)


def test_no_duplicates_defers_rows_and_loses_none():
    stream = [{"anchor": f"q{i // 2}", "positive": f"p{i}"} for i in range(40)]
    batcher = ShardBatcher(stream, 4, no_duplicates=["anchor"], buffer_size=16)
    seen = []
    for _ in range(10):
        seen += [r["positive"] for r in batcher.next_batch()]
    assert sorted(seen) == sorted(r["positive"] for r in stream)
    assert batcher.pending() == []


def test_no_duplicates_buffer_is_bounded():
    # One text over and over: no duplicate-free batch exists; the buffer must not grow without bound.
    stream = ({"anchor": "same", "positive": f"p{i}"} for i in itertools.count())
    batcher = ShardBatcher(stream, 4, no_duplicates=["anchor"], buffer_size=8)
    for _ in range(5):
        assert len(batcher.next_batch()) == 4
        assert len(batcher.pending()) <= 8


def test_no_duplicates_counts_texts_inside_lists():
    stream = [{"query": "a", "docs": ["x", "y"]}, {"query": "b", "docs": ["y", "z"]}, {"query": "c", "docs": ["w"]}]
    batch = ShardBatcher(stream, 2, no_duplicates=["query", "docs"]).next_batch()
    assert [r["query"] for r in batch] == ["a", "c"]


def test_a_short_shard_pads_with_rows_of_the_epoch_so_every_worker_runs_the_same_steps():
    # Worker 0 holds 12 rows, worker 1 only 7; the shared schedule asks both for 3 batches of 4.
    long, short = ShardBatcher(rows(12), 4), ShardBatcher(rows(7, prefix="s"), 4)
    for _ in range(3):
        assert len(long.next_batch()) == 4
        assert len(short.next_batch()) == 4
    assert long.padded_batches == 0
    assert short.padded_batches == 2


def test_padding_keeps_no_duplicates():
    batcher = ShardBatcher(rows(6), 4, no_duplicates=["anchor", "positive"])
    batcher.next_batch()
    padded = batcher.next_batch()  # 2 rows left in the stream, 2 from the first batch
    assert len({r["anchor"] for r in padded}) == 4


def test_an_empty_shard_is_an_error_not_a_hang():
    with pytest.raises(DataError, match="empty"):
        ShardBatcher([], 4).next_batch()


def test_resume_skips_rows_read_and_restores_the_buffer():
    stream = [{"anchor": f"q{i // 2}", "positive": f"p{i}"} for i in range(40)]
    first = ShardBatcher(stream, 4, no_duplicates=["anchor"], buffer_size=16)
    before = [first.next_batch() for _ in range(3)]
    read, pending = first.rows_read, first.pending()
    after_uninterrupted = [first.next_batch() for _ in range(4)]

    resumed = ShardBatcher(skip(stream, read), 4, no_duplicates=["anchor"], buffer_size=16, pending=pending)
    assert [resumed.next_batch() for _ in range(4)] == after_uninterrupted
    assert before  # the resumed run did not see the first three batches again


def test_skip_reads_nothing_until_asked_and_stops_at_a_short_stream():
    taken = []

    def stream():
        for row in rows(5):
            taken.append(row["anchor"])
            yield row

    skipped = skip(stream(), 3)
    assert taken == []
    assert [r["anchor"] for r in skipped] == ["t3", "t4"]
    assert list(skip(rows(2), 5)) == []


def test_read_ahead_fetches_the_first_item_before_it_is_asked_for():
    import threading

    fetched = threading.Event()

    def slow_stream():
        fetched.set()
        yield from rows(3)

    items = read_ahead(slow_stream())
    assert fetched.wait(timeout=10)  # started in the background, nothing asked yet
    assert [r["anchor"] for r in items] == ["t0", "t1", "t2"]
    assert list(read_ahead(iter([]))) == []
    assert list(read_ahead([None, 0])) == [None, 0]  # items that look empty are items


def test_read_ahead_raises_a_read_error_where_the_item_is_asked_for():
    def broken():
        raise DataError("the file is gone")
        yield  # a generator

    items = read_ahead(broken())
    with pytest.raises(DataError, match="gone"):
        next(items)


def test_columns_to_rows_gives_python_values():
    import numpy as np

    out = columns_to_rows({"a": np.array(["x", "y"]), "score": np.array([0.5, 1.0], dtype=np.float64)})
    assert out == [{"a": "x", "score": 0.5}, {"a": "y", "score": 1.0}]
    assert type(out[0]["score"]) is float


def test_columns_to_rows_turns_list_cells_into_lists():
    # Teacher scores (MarginMSELoss / DistillKLDivLoss labels) as Ray Data hands them to a
    # worker: an object array of arrays. A checkpoint writes buffered rows as JSON.
    import json

    import pyarrow as pa
    from ray.data._internal.arrow_block import ArrowBlockAccessor

    table = pa.table({"query": ["a", "b"], "label": [[0.9, 0.1], [0.8, 0.3]]})
    rows = columns_to_rows(ArrowBlockAccessor(table).to_numpy())
    assert rows == [{"query": "a", "label": [0.9, 0.1]}, {"query": "b", "label": [0.8, 0.3]}]
    assert json.loads(json.dumps(rows)) == rows


# --- collation ----------------------------------------------------------------------------


def test_wants_dataset_name_only_for_per_dataset_prompts():
    assert wants_dataset_name({"nli": "query: "}, ["nli", "sts"])
    assert not wants_dataset_name({"anchor": "query: "}, ["nli"])
    assert not wants_dataset_name("query: ", ["nli"])
    assert not wants_dataset_name(None, ["nli"])


def test_collate_tokenises_each_column_separately_with_prompts(tiny_bi_encoder):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    model = SentenceTransformer(tiny_bi_encoder, device="cpu")
    collator = SentenceTransformerDataCollator(preprocess_fn=model.preprocess, prompts={"query": "query: "})
    batch_rows = [
        {"query": "apt", "query_title": "the apt tool", "score": 0.5},
        {"query": "dpkg", "query_title": "the dpkg tool", "score": 1.0},
    ]
    batch, features = collate(batch_rows, ["query", "query_title"], collator)
    assert len(features) == 2
    assert set(features[0]) >= {"input_ids", "attention_mask"}
    assert set(features[1]) >= {"input_ids", "attention_mask"}
    # The prompt went into the first column only.
    plain = model.preprocess(["apt", "dpkg"])["input_ids"]
    prompted = model.preprocess(["query: apt", "query: dpkg"])["input_ids"]
    assert features[0]["input_ids"].tolist() == prompted.tolist()
    assert features[0]["input_ids"].tolist() != plain.tolist()
    assert batch["label"].tolist() == [0.5, 1.0]


def test_collate_keeps_texts_for_cross_encoders(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator

    model = CrossEncoder(tiny_cross_encoder, device="cpu")
    collator = CrossEncoderDataCollator(preprocess_fn=model.preprocess)
    batch, features = collate([{"q": "a", "p": "b", "label": 1}, {"q": "c", "p": "d", "label": 0}], ["q", "p"], collator)
    assert features == [["a", "c"], ["b", "d"]]
    assert batch["label"].tolist() == [1, 0]
