"""Batches on a worker: which data set each step reads, and how rows become batches and tensors.

Pure logic, no Ray: the training loop feeds it rows from its dataset shard.

DDP needs every worker to run the same number of steps; a worker that stops early leaves
the others waiting in an all-reduce forever. So the plan never looks at a worker's own
shard. Every worker computes the same schedule from the seed and the *global* row
counts (:func:`epoch_schedule`), and :class:`ShardBatcher` hands out as many batches as
the schedule asks for, whatever its shard holds: when the shard runs out early it pads
with rows it already gave out this epoch, as torch's DistributedSampler pads with
repeated indices and sentence-transformers' NoDuplicatesBatchSampler redraws rows.

Example::

    1. per_epoch = batches_per_epoch({"nli": 1000, "sts": 300}, batch_size=16, world_size=2)
       -> {"nli": 31, "sts": 9}
    2. epoch_schedule(per_epoch, "proportional", seed=42, epoch=0)
       -> ["nli", "nli", "sts", "nli", ...]  (40 names, the same on every worker)
    3. batcher = ShardBatcher(rows, 16, no_duplicates=["anchor", "positive"], buffer_size=4096)
       batcher.next_batch() -> 16 rows, no text twice
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any, Callable, Optional, TypeVar

from raytune_st.errors import DataError

Row = dict[str, Any]
T = TypeVar("T")
_END = object()  # the end of a stream (a stream may hold None)


# --- the schedule: which data set every micro-batch comes from ----------------------------


def batches_per_epoch(num_rows: dict[str, int], batch_size: int, world_size: int) -> dict[str, int]:
    """Full batches each worker takes from each data set in one epoch (the remainder is dropped).

    A global batch is `batch_size` rows on each of `world_size` workers.
    """
    out = {}
    for name, rows in num_rows.items():
        count = rows // (batch_size * world_size)
        if count < 1:
            raise DataError(
                f"train {name!r} has {rows} rows, fewer than one global batch "
                f"({world_size} workers x per_device_train_batch_size {batch_size}); "
                "lower the batch size or num_workers, or add data"
            )
        out[name] = count
    return out


def epoch_schedule(per_epoch: dict[str, int], sampler: str, seed: int, epoch: int) -> list[str]:
    """The data set of every micro-batch of one epoch, identical on every worker.

    proportional: each data set appears as often as it has batches, in a seeded random order
    (sentence-transformers' ProportionalBatchSampler). round_robin: the data sets in turn,
    stopping when the smallest runs out (RoundRobinBatchSampler).
    """
    names = list(per_epoch)
    if len(names) == 1:
        return names * per_epoch[names[0]]
    if sampler == "round_robin":
        return names * min(per_epoch.values())
    if sampler != "proportional":
        raise ValueError(f"unknown multi_dataset_batch_sampler {sampler!r}")
    schedule = [name for name in names for _ in range(per_epoch[name])]
    random.Random(seed + epoch).shuffle(schedule)
    return schedule


class Schedule:
    """The flat sequence of micro-batches over all epochs: index -> (epoch, data set)."""

    def __init__(self, per_epoch: dict[str, int], sampler: str, seed: int):
        self.per_epoch = per_epoch
        self.sampler = sampler
        self.seed = seed
        self.epoch_length = len(epoch_schedule(per_epoch, sampler, seed, 0))
        self._cache: tuple[int, list[str]] = (-1, [])

    def epoch_of(self, index: int) -> int:
        return index // self.epoch_length

    def dataset_at(self, index: int) -> str:
        epoch, position = divmod(index, self.epoch_length)
        if self._cache[0] != epoch:
            self._cache = (epoch, epoch_schedule(self.per_epoch, self.sampler, self.seed, epoch))
        return self._cache[1][position]


# --- rows -> batches ----------------------------------------------------------------------


def _texts(row: Row, columns: Sequence[str]) -> set[str]:
    """The texts of a row in the given columns (lists of texts count each text)."""
    out = set()
    for column in columns:
        value = row[column]
        if isinstance(value, (list, tuple)):
            out.update(str(v) for v in value)
        else:
            out.add(str(value))
    return out


class ShardBatcher:
    """Batches of `batch_size` rows from one worker's stream of one data set, for one epoch.

    `no_duplicates`: the columns whose texts may not repeat within a batch (None: plain
    batches in stream order). Rows that would repeat a text wait in a buffer of at most
    `buffer_size` rows for a later batch; when the buffer is full the oldest waiting row is
    taken anyway, so memory stays bounded.

    :meth:`next_batch` never runs dry: past the end of the stream it pads from the rows of
    the epoch's first batch. `rows_read` counts the rows taken from the stream (what a
    resumed run skips); :meth:`pending` gives the buffered rows not yet in a batch (what a
    checkpoint keeps, so that no row is lost on resume).
    """

    def __init__(
        self,
        rows: Iterable[Row],
        batch_size: int,
        *,
        no_duplicates: Optional[Sequence[str]] = None,
        buffer_size: int = 4096,
        pending: Sequence[Row] = (),
    ):
        self._rows: Iterator[Row] = iter(rows)
        self.batch_size = batch_size
        self.no_duplicates = list(no_duplicates) if no_duplicates else None
        self.buffer_size = max(buffer_size, batch_size)
        self._buffer: list[Row] = list(pending)
        self._exhausted = False
        self._first_batch: list[Row] = []
        self._peeked: Optional[list[Row]] = None
        self.rows_read = 0
        self.padded_batches = 0

    def pending(self) -> list[Row]:
        """Rows read from the stream but not yet handed out, in the order they would be."""
        return list(self._peeked or []) + list(self._buffer)

    def peek(self) -> list[Row]:
        """The batch that :meth:`next_batch` returns next, without handing it out."""
        if self._peeked is None:
            self._peeked = self.next_batch()
        return self._peeked

    def _pull(self) -> bool:
        """Move one row from the stream into the buffer; False at the end of the stream."""
        if self._exhausted:
            return False
        try:
            row = next(self._rows)
        except StopIteration:
            self._exhausted = True
            return False
        self.rows_read += 1
        self._buffer.append(row)
        return True

    def _fill_plain(self) -> list[Row]:
        while len(self._buffer) < self.batch_size and self._pull():
            pass
        batch, self._buffer = self._buffer[: self.batch_size], self._buffer[self.batch_size :]
        return batch

    def _fill_unique(self) -> list[Row]:
        batch: list[Row] = []
        seen: set[str] = set()
        taken: set[int] = set()
        position = 0
        while len(batch) < self.batch_size:
            if position == len(self._buffer):
                # Every buffered row collides: read more, or when the buffer is full (or the stream
                # is over) give up on uniqueness for the oldest waiting row to keep memory bounded.
                if len(self._buffer) - len(taken) < self.buffer_size and self._pull():
                    continue
                leftover = [i for i in range(len(self._buffer)) if i not in taken]
                if not leftover:
                    break
                taken.add(leftover[0])
                batch.append(self._buffer[leftover[0]])
                continue
            row = self._buffer[position]
            texts = _texts(row, self.no_duplicates)
            if not texts & seen:
                seen |= texts
                taken.add(position)
                batch.append(row)
            position += 1
        self._buffer = [row for i, row in enumerate(self._buffer) if i not in taken]
        return batch

    def next_batch(self) -> list[Row]:
        """The next batch of exactly `batch_size` rows."""
        if self._peeked is not None:
            batch, self._peeked = self._peeked, None
            return batch
        batch = self._fill_unique() if self.no_duplicates else self._fill_plain()
        if len(batch) < self.batch_size:
            batch = self._pad(batch)
        if not self._first_batch:
            self._first_batch = list(batch)
        return batch

    def _pad(self, batch: list[Row]) -> list[Row]:
        """Complete a short batch at the end of the stream with rows of the epoch's first batch."""
        reserve = self._first_batch or list(batch)
        if not reserve:
            raise DataError(
                "a worker's shard of a training set is empty; use fewer workers or more data"
            )
        self.padded_batches += 1
        seen = _texts_of(batch, self.no_duplicates)
        fill = [row for row in reserve if not (self.no_duplicates and _texts(row, self.no_duplicates) & seen)]
        fill += [row for row in reserve if row not in fill]
        while len(batch) + len(fill) < self.batch_size:
            fill += reserve
        return batch + fill[: self.batch_size - len(batch)]


def _texts_of(rows: Sequence[Row], columns: Optional[Sequence[str]]) -> set[str]:
    if not columns:
        return set()
    out: set[str] = set()
    for row in rows:
        out |= _texts(row, columns)
    return out


def skip(rows: Iterable[Row], count: int) -> Iterator[Row]:
    """The stream without its first `count` rows (already trained on before a restart).

    Lazy: nothing is read until the first row is asked for.
    """
    iterator = iter(rows)
    for _ in range(count):
        if next(iterator, _END) is _END:
            return
    yield from iterator


def read_ahead(items: Iterable[T]) -> Iterator[T]:
    """`items`, whose first item a background thread starts fetching now.

    Opening a Ray Data stream takes seconds (tasks start, files are listed and read); the
    training loop opens its streams this way before it loads the model, so the two overlap.
    Only the first item is fetched ahead (Ray Data prefetches the rest itself); an error
    while fetching it is raised where the item is asked for.
    """
    iterator = iter(items)
    first: Future = Future()

    def fetch() -> None:
        try:
            first.set_result(next(iterator, _END))
        except BaseException as error:  # handed to the consumer, raised in its thread
            first.set_exception(error)

    threading.Thread(target=fetch, name="raytune-st-read-ahead", daemon=True).start()
    return _after(first, iterator)


def _after(first: "Future", rest: Iterator[T]) -> Iterator[T]:
    item = first.result()
    if item is _END:
        return
    yield item
    yield from rest


def columns_to_rows(batch: dict[str, Any]) -> list[Row]:
    """A columnar batch (numpy arrays or lists) as rows of plain Python values.

    A list column comes as an object array of arrays (Ray Data's numpy form of every list
    column, of equal lengths or not); its cells become lists too, so that a row can be written to JSON
    (a checkpoint keeps the rows still buffered) and collated like any other.
    """
    columns = {name: _plain_values(values) for name, values in batch.items()}
    names = list(columns)
    length = len(columns[names[0]]) if names else 0
    return [{name: columns[name][i] for name in names} for i in range(length)]


def _plain_values(values: Any) -> list[Any]:
    if getattr(values, "dtype", None) == object:  # cells that may be arrays themselves, at any depth
        return [_plain_values(cell) if hasattr(cell, "tolist") else cell for cell in values]
    return values.tolist() if hasattr(values, "tolist") else list(values)


# --- batches -> model inputs ----------------------------------------------------------------


def wants_dataset_name(prompts: Any, dataset_names: Iterable[str]) -> bool:
    """Whether prompts are given per data set, so rows must carry their data set's name."""
    return isinstance(prompts, dict) and any(name in prompts for name in dataset_names)


def collate(
    rows: Sequence[Row],
    inputs: Sequence[str],
    collator: Callable[[list[Row]], dict[str, Any]],
    dataset_name: Optional[str] = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Tokenise one batch with sentence-transformers' collator; returns (batch, per-input features).

    `inputs` are the data set's input columns in order. For a bi-encoder the collator
    tokenises each column separately ({column}_input_ids, ...), and each input's features
    are the keys under its column's prefix; for a cross-encoder it keeps each column's texts
    (the loss tokenises the pairs), and the features are those lists. The label, when
    present, is ``batch["label"]``.
    """
    features_in = [dict(row, dataset_name=dataset_name) if dataset_name is not None else dict(row) for row in rows]
    batch = collator(features_in)
    features: list[Any] = []
    # Longest names first, so that a column "query" does not claim "query_title_input_ids".
    by_length = sorted(inputs, key=len, reverse=True)
    owned: dict[str, dict[str, Any]] = {column: {} for column in inputs}
    for key, value in batch.items():
        if key in inputs:
            owned[key] = value  # cross-encoder: the column's raw texts
            continue
        for column in by_length:
            if key.startswith(column + "_"):
                owned[column][key[len(column) + 1 :]] = value
                break
    for column in inputs:
        features.append(owned[column])
    return batch, features
