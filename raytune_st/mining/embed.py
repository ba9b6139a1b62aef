"""Embedding text chunks with a pool of Ray actors.

The pending chunks (those whose cache file is missing or damaged) are grouped into units of
work (:func:`plan_units`): each unit holds chunks of one kind, large enough that
sentence-transformers' length sort over the unit's texts leaves little padding (512 random
texts sorted apart pad 14-19% more tokens than one sort of the whole list, as
``mine_hard_negatives`` does; a few thousand pad 1-4% more), and small enough that every actor
gets several, heaviest first. An actor (:class:`ChunkEmbedder`) loads the model once, embeds a
unit with ``encode_query`` / ``encode_document`` (prompts applied exactly as
``mine_hard_negatives`` does), normalises like it, and writes each chunk's ``ids + vectors`` to
the embedding cache under a name derived from (model, prompts, texts), as one object sealed
with the sha256 of its arrays. A chunk is embedded again unless its file ends as a whole zip;
readers verify the seal (``store.load_vectors``) and drop a damaged file.

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
        # The weights' dtype joins the key only when it is not the default, so float32 caches stay valid.
        weights = () if model.dtype == "float32" else (model.dtype,)
        key = store.text_digest(
            CACHE_FORMAT, model.identity, model.max_seq_length, self.kind, self.prompt_name, self.prompt, dtype, chunk_digest, *weights
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
    """Chunks of one kind embedded in one encode call (one length sort)."""

    spec: EmbedSpec
    chunks: tuple[ChunkJob, ...]

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
    the total weight (at most `max_rows` texts, at least one chunk); heaviest unit first."""
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
        self.batch_size = batch_size
        self.dtype = np.float16 if dtype == "float16" else np.float32

    def ready(self) -> bool:
        return True

    def embed(self, unit: EmbedUnit) -> int:
        """Embed every chunk of `unit` in one encode call; write each chunk's cache file. Returns texts embedded."""
        texts = [store.load_texts(chunk.texts) for chunk in unit.chunks]
        encode = self.model.encode_query if unit.spec.kind == "query" else self.model.encode_document
        vectors = encode(
            [t for chunk in texts for t in chunk],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            prompt_name=unit.spec.prompt_name or None,
            prompt=unit.spec.prompt,
        ).astype(self.dtype, copy=False)
        start = 0
        for chunk, chunk_texts in zip(unit.chunks, texts):
            store.put(
                chunk.out,
                store.sealed_npz_bytes(
                    ids=np.arange(chunk.first_id, chunk.first_id + len(chunk_texts), dtype=np.int64),
                    embeddings=vectors[start : start + len(chunk_texts)],
                ),
            )
            start += len(chunk_texts)
        return start


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

    def start(self, n: int) -> None:
        while len(self.actors) < n:
            actor = self._actor.remote(*self._args)
            self.actors.append(actor)
            self._ready[actor] = actor.ready.remote()

    def run(self, units: list[EmbedUnit], on_done: Callable[[EmbedUnit], None]) -> None:
        """Embed `units` (in their order) over the pool's actors; `on_done(unit)` as each finishes."""
        import ray

        queue = collections.deque(units)
        outstanding = {self._ready[actor]: actor for actor in self.actors}  # model loaded, or unit done -> actor
        working: dict = {}  # the refs of units being embedded -> unit
        while working or (queue and outstanding):
            ready, _ = ray.wait(list(outstanding), num_returns=1)
            ref = ready[0]
            actor = outstanding.pop(ref)
            unit = working.pop(ref, None)
            done = ray.get(ref)
            if unit is not None:
                if done != unit.rows:
                    raise RuntimeError(f"an embedding actor returned {done} of {unit.rows} texts; rerun the job to embed the rest")
                on_done(unit)
            if queue:
                unit = queue.popleft()
                ref = actor.embed.remote(unit)
                outstanding[ref], working[ref] = actor, unit
            else:
                self._release(actor)
        self.close()

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
    pool.start(min(actors, len(units)))
    progress = Progress("[mine] embed", sum(unit.rows for unit in units), "texts")
    pool.run(units, lambda unit: progress.advance(unit.rows))
    for unit in units:
        done[unit.spec.kind] += unit.rows
    return done
