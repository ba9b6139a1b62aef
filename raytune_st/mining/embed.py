"""Embedding text chunks with a pool of Ray actors.

The pending chunks (those whose cache file is missing or damaged) are grouped into units of
work (:func:`plan_units`): each unit holds chunks of one kind whose texts are sorted together
by length, so that every batch pads little. A unit is large enough for that sort to work (512
texts sorted apart pad 15-19% more tokens than one sort of a few thousand) and small enough that
every actor gets several, heaviest first. A job whose every kind fits in one unit (a few
thousand texts) sorts each kind as a whole and deals its batches out to the actors in turn
(``EmbedUnit.parts``), so that the actors finish together.

An actor (:class:`ChunkEmbedder`) loads the model once and embeds with ``encode_query`` /
``encode_document`` (prompts applied exactly as ``mine_hard_negatives`` does), normalised like
it. On a CPU it orders texts by their number of tokens (:func:`length_order`), where
sentence-transformers' ``encode`` orders by characters: on debian passages and queries that
pads 3-4% tokens instead of 39-56%, a quarter less compute for the same vectors up to float
rounding. On a GPU the forward pass is cheap and tokenizing is what takes the time, so an
actor orders by characters as ``encode`` does instead of tokenizing every text twice (with the
token sort an actor ran at 0.64x ``model.encode``'s throughput on an H200). Each chunk's
``ids + vectors`` go to the embedding cache under a name derived from (model, prompts, texts),
as one object sealed with the sha256 of its arrays. A chunk is
embedded again unless its file ends as a whole zip; readers verify the seal
(``store.load_vectors``) and drop a damaged file.

:class:`EmbedPool` starts its first actors while the prepare task runs, so their start-up and
model load are not on the stage's critical path.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import numpy as np

from raytune_st.console import Progress
from raytune_st.mining import store
from raytune_st.models.config import ModelConfig

Kind = Literal["query", "corpus"]
CACHE_FORMAT = "sealed-npz-1"  # see store.sealed_npz_bytes
UNITS_PER_ACTOR = 4  # units of work per actor when the work allows: the last unit of each is short
MAX_UNIT_ROWS = 8192  # texts per unit: beyond this a longer sort buys under 1% of padding


@dataclass(frozen=True)
class EmbedSpec:
    """How one kind of text (queries or corpus) is embedded: what the cache key is made of."""

    kind: Kind
    prompt_name: Optional[str]
    prompt: Optional[str]

    def cache_name(self, model: ModelConfig, dtype: str, chunk_digest: str) -> str:
        # The file format is part of the key: files of an older format (no seal) are never looked at.
        # The weights' dtype and the runtime join the key only when they are not the defaults, so torch float32 caches stay valid.
        key = store.text_digest(
            CACHE_FORMAT, model.identity, model.max_seq_length, self.kind, self.prompt_name, self.prompt, dtype, chunk_digest, *model.runtime_key
        )
        return f"{self.kind}-{key[:32]}.npz"


@dataclass(frozen=True)
class ChunkJob:
    """One text chunk to embed: its texts file, its cache file and the ids of its rows."""

    texts: str
    out: str
    first_id: int
    rows: int
    weight: int  # the chunk's cost estimate (prepare.text_weight of its texts)


@dataclass(frozen=True)
class EmbedUnit:
    """Chunks of one kind sorted together by length; embedded in `parts` calls that each take
    every `parts`-th batch of the sorted texts (one call when `parts` is 1)."""

    spec: EmbedSpec
    chunks: tuple[ChunkJob, ...]
    parts: int = 1

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chunks)

    @property
    def weight(self) -> int:
        return sum(c.weight for c in self.chunks)


def plan_units(
    jobs: list[tuple[EmbedSpec, list[ChunkJob]]], actors: int, *, max_rows: int = MAX_UNIT_ROWS
) -> list[EmbedUnit]:
    """Group each kind's chunks, in order, into units of about 1/(UNITS_PER_ACTOR x actors) of
    the total weight (at most `max_rows` texts, at least one chunk); heaviest unit first.

    When every kind's chunks hold at most `max_rows` texts, each kind is instead one unit in
    `actors` parts: a sort of the whole kind, and the same share of each kind for every actor.
    """
    if all(sum(c.rows for c in chunks) <= max_rows for _, chunks in jobs):
        units = [EmbedUnit(spec, tuple(chunks), parts=max(actors, 1)) for spec, chunks in jobs if chunks]
        return sorted(units, key=lambda unit: -unit.weight)
    total = sum(c.weight for _, chunks in jobs for c in chunks)
    target = total / (UNITS_PER_ACTOR * max(actors, 1))
    units = []
    for spec, chunks in jobs:
        current: list[ChunkJob] = []
        for chunk in chunks:
            if current and (
                sum(c.weight for c in current) + chunk.weight > target or sum(c.rows for c in current) + chunk.rows > max_rows
            ):
                units.append(EmbedUnit(spec, tuple(current)))
                current = []
            current.append(chunk)
        if current:
            units.append(EmbedUnit(spec, tuple(current)))
    return sorted(units, key=lambda unit: -unit.weight)


class ChunkEmbedder:
    """Ray actor: loads the model once, then embeds units of chunks into the cache."""

    def __init__(self, model: ModelConfig, batch_size: int, dtype: str):
        import torch

        quiet_model_loading()

        self.model = model.load(device="cuda" if torch.cuda.is_available() else "cpu")
        self.sort_by_tokens = sorts_by_tokens(self.model)
        self.batch_size = batch_size
        self.dtype = np.float16 if dtype == "float16" else np.float32

    def ready(self) -> bool:
        return True

    def embed(self, unit: EmbedUnit) -> int:
        """Embed a unit of one part and write each chunk's cache file. Returns texts embedded."""
        return self.write(unit, self.embed_part(unit, 0)[1])

    def embed_part(self, unit: EmbedUnit, part: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """Part `part` of `unit`: (texts embedded, (their positions in the unit, their vectors))."""
        texts = [t for chunk in unit.chunks for t in store.load_texts(chunk.texts)]
        order = length_order(self.model, texts, by_tokens=self.sort_by_tokens)
        batches = [order[b : b + self.batch_size] for b in range(0, len(order), self.batch_size)][part :: unit.parts]
        encode = self.model.encode_query if unit.spec.kind == "query" else self.model.encode_document
        vectors = [
            encode(
                [texts[i] for i in batch],
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                prompt_name=unit.spec.prompt_name or None,
                prompt=unit.spec.prompt,
            ).astype(self.dtype, copy=False)
            for batch in batches
        ]
        positions = np.concatenate(batches) if batches else np.zeros(0, np.int64)
        return len(positions), (positions, np.concatenate(vectors) if vectors else np.zeros((0, 0), self.dtype))

    def write(self, unit: EmbedUnit, *parts: tuple[np.ndarray, np.ndarray]) -> int:
        """Put the parts' vectors back in the unit's order; write each chunk's cache file. Returns texts written."""
        parts = tuple((where, part) for where, part in parts if len(where))  # a part can get no batch
        positions = np.concatenate([where for where, _ in parts])
        if not np.array_equal(np.sort(positions), np.arange(unit.rows)):
            raise RuntimeError(f"the parts of an embedding unit hold {len(positions)} of its {unit.rows} texts; rerun the job")
        vectors = np.empty((unit.rows, parts[0][1].shape[1]), self.dtype)
        for where, part in parts:
            vectors[where] = part
        start = 0
        for chunk in unit.chunks:
            store.put(
                chunk.out,
                store.sealed_npz_bytes(
                    ids=np.arange(chunk.first_id, chunk.first_id + chunk.rows, dtype=np.int64),
                    embeddings=vectors[start : start + chunk.rows],
                ),
            )
            start += chunk.rows
        return start


def sorts_by_tokens(model) -> bool:
    """Whether an actor orders `model`'s texts by tokens: on a CPU, where the forward pass
    dominates and the sort's extra tokenizing pass pays for itself; not on an accelerator."""
    return str(getattr(model, "device", "cpu")).startswith("cpu")


def length_order(model, texts: list[str], *, by_tokens: bool = True) -> np.ndarray:
    """Positions of `texts`, longest first by tokens (stable), so that a batch pads little.

    sentence-transformers' ``encode`` sorts by characters, a loose proxy: by tokens the batches
    pad a tenth as much. With `by_tokens` false, and for models without a text tokenizer, texts
    are ordered by characters, as there.
    """
    tokenizer = getattr(model, "tokenizer", None)
    if by_tokens and callable(tokenizer) and texts:
        ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=model.max_seq_length)["input_ids"]
        lengths = np.fromiter((len(row) for row in ids), np.int64, len(texts))
    else:
        lengths = np.fromiter((len(text) for text in texts), np.int64, len(texts))
    return np.argsort(-lengths, kind="stable")


def quiet_model_loading() -> None:
    """Hide transformers' per-actor 'Loading weights' progress bar."""
    from transformers.utils import logging

    logging.disable_progress_bar()


class EmbedPool:
    """Embedding actors, fed units of work one at a time, heaviest first.

    `start(n)` asks Ray for actors up to `n` in all; they load the model as soon as Ray places
    them (the job starts the first ones while prepare runs). A unit goes only to an actor that
    has loaded its model, so an actor that Ray cannot place yet holds no work. An actor whose
    node dies is restarted and its unit retried (`MAX_RESTARTS` times); an actor with no work
    left is released at once, so the index shards get its CPUs.

    An actor is killed only once its constructor has finished (or `START_WAIT_S` has passed):
    Ray can lose the CPU of an actor killed while its worker process starts, and the stages
    after embedding then wait for that CPU forever.
    """

    MAX_RESTARTS = 3
    START_WAIT_S = 300.0

    def __init__(self, model: ModelConfig, batch_size: int, dtype: str, options: dict):
        import ray

        self._actor = ray.remote(ChunkEmbedder).options(
            max_restarts=self.MAX_RESTARTS, max_task_retries=self.MAX_RESTARTS, **options
        )
        self._args = (model, batch_size, dtype)
        self.actors: list = []
        self._ready: dict = {}  # actor -> the ref of its ready() call
        self._vectors: dict = {}  # the count ref of each embed_part call running -> the ref of its vectors

    def start(self, n: int) -> None:
        while len(self.actors) < n:
            actor = self._actor.remote(*self._args)
            self.actors.append(actor)
            self._ready[actor] = actor.ready.remote()

    def run(self, units: list[EmbedUnit], on_embedded: Callable[[int], None]) -> None:
        """Embed `units` (in their order) over the pool's actors; `on_embedded(texts)` as each call finishes.

        A unit of several parts is written by the actor that finishes its last part, from the
        parts' vectors in Ray's object store (the driver never fetches them). If a node's loss
        took a part's vectors with it, the unit's parts are embedded again.
        """
        import ray

        queue = collections.deque((unit, part) for unit in units for part in range(unit.parts))
        outstanding = {self._ready[actor]: actor for actor in self.actors}  # model loaded, or call done -> actor
        working: dict = {}  # the ref of each call running -> (unit, part); part None: embed or write the whole unit
        parts: dict = {}  # unit -> {part: the ref of its vectors}
        lost = collections.Counter()  # unit -> how many times its parts' vectors were lost
        while working or (queue and outstanding):
            [ref], _ = ray.wait(list(outstanding), num_returns=1)
            actor = outstanding.pop(ref)
            unit, part = working.pop(ref, (None, None))
            follow_up = None
            if unit is None:
                ray.get(ref)  # the actor's constructor: raises what it raised
            elif part is not None:
                on_embedded(ray.get(ref))
                parts.setdefault(unit, {})[part] = self._vectors.pop(ref)
                if len(parts[unit]) == unit.parts:
                    follow_up = (unit, None), actor.write.remote(unit, *parts.pop(unit).values())
            else:
                try:
                    done = ray.get(ref)
                except ray.exceptions.ObjectLostError:
                    if unit.parts == 1 or lost[unit] >= self.MAX_RESTARTS:
                        raise
                    lost[unit] += 1
                    queue.extendleft((unit, p) for p in reversed(range(unit.parts)))
                else:
                    if done != unit.rows:
                        raise RuntimeError(f"an embedding actor returned {done} of {unit.rows} texts; rerun the job to embed the rest")
                    if unit.parts == 1:
                        on_embedded(done)
            if follow_up is None and queue:
                follow_up = self._call(actor, *queue.popleft())
            if follow_up is None:
                self._release(actor)
            else:
                call, ref = follow_up
                outstanding[ref], working[ref] = actor, call
        self.close()

    def _call(self, actor, unit: EmbedUnit, part: int) -> tuple[tuple, object]:
        """Start embedding `part` of `unit` on `actor`: ((unit, part or None), the ref to wait on)."""
        if unit.parts == 1:
            return (unit, None), actor.embed.remote(unit)
        count, vectors = actor.embed_part.options(num_returns=2).remote(unit, part)
        self._vectors[count] = vectors
        return (unit, part), count

    def _release(self, actor) -> None:
        import ray

        ray.kill(actor)
        self.actors.remove(actor)
        del self._ready[actor]

    def close(self) -> None:
        """Kill every actor, after waiting for those still starting (see the class docstring)."""
        import ray

        starting = [self._ready[actor] for actor in self.actors]
        if starting:
            ray.wait(starting, num_returns=len(starting), timeout=self.START_WAIT_S)
        for actor in list(self.actors):
            self._release(actor)


def pending_chunks(chunks: store.Chunked, outputs: list[str], weights: tuple[int, ...]) -> list[ChunkJob]:
    """The chunks whose cache file is missing or cut short."""
    pending = []
    for i, (texts_path, out) in enumerate(zip(chunks.paths, outputs)):
        if store.looks_sealed(out):
            continue  # cached; damage that kept the zip's closing record is caught when it is read
        lo, hi = chunks.chunk_range(i)
        pending.append(ChunkJob(texts_path, out, lo, hi - lo, weights[i]))
    return pending


def embed_chunks(
    jobs: list[tuple[EmbedSpec, list[ChunkJob]]], pool: EmbedPool, *, actors: int
) -> dict[str, int]:
    """Embed the pending chunks of each kind over `pool` (grown to at most `actors`); texts embedded per kind.

    All kinds go through one pool, so the model is loaded once per actor for the whole stage.
    The pool is closed when the work is done.
    """
    units = plan_units(jobs, actors)
    done = {"query": 0, "corpus": 0}
    if not units:
        pool.close()
        return done
    pool.start(min(actors, sum(unit.parts for unit in units)))
    progress = Progress("[mine] embed", sum(unit.rows for unit in units), "texts")
    pool.run(units, progress.advance)
    for unit in units:
        done[unit.spec.kind] += unit.rows
    return done
