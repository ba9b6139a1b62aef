"""Embedding text chunks with an autoscaling Ray Data actor pool.

Each unit of work is one text chunk: the actor loads the model once, embeds the chunk with
sentence-transformers' own ``encode_query`` / ``encode_document`` (which sort the texts by
length so each batch carries little padding, and apply the prompts exactly as
``mine_hard_negatives`` does), normalises like it, and writes ``ids + vectors`` to the
embedding cache under a name derived from (model, prompts, texts), as one object sealed with
the sha256 of its arrays. A chunk is embedded again unless its file ends as a whole zip;
readers verify the seal (``store.load_vectors``) and drop a damaged file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from raytune_st.mining import store
from raytune_st.models.config import ModelConfig
from raytune_st.runtime import data_context, logger_level

Kind = Literal["query", "corpus"]
CACHE_FORMAT = "sealed-npz-1"  # see store.sealed_npz_bytes


@dataclass(frozen=True)
class EmbedSpec:
    """How one kind of text (queries or corpus) is embedded: what the cache key is made of."""

    kind: Kind
    prompt_name: Optional[str]
    prompt: Optional[str]

    def cache_name(self, model: ModelConfig, dtype: str, chunk_digest: str) -> str:
        # The file format is part of the key: files of an older format (no seal) are never looked at.
        key = store.text_digest(
            CACHE_FORMAT, model.name, model.max_seq_length, self.kind, self.prompt_name, self.prompt, dtype, chunk_digest
        )
        return f"{self.kind}-{key[:32]}.npz"


class ChunkEmbedder:
    """Ray Data callable class: embeds one text chunk per row of its input batch."""

    def __init__(self, model: ModelConfig, batch_size: int, dtype: str):
        import torch

        quiet_model_loading()

        self.model = model.load(device="cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.dtype = np.float16 if dtype == "float16" else np.float32

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, seconds = [], []
        for i in range(len(batch["texts"])):
            start = time.perf_counter()
            texts = store.load_texts(str(batch["texts"][i]))
            encode = self.model.encode_query if batch["kind"][i] == "query" else self.model.encode_document
            prompt_name = batch["prompt_name"][i] or None
            prompt = batch["prompt"][i] if batch["has_prompt"][i] else None
            vectors = encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                prompt_name=prompt_name,
                prompt=prompt,
            )
            first = int(batch["first_id"][i])
            store.put(
                str(batch["out"][i]),
                store.sealed_npz_bytes(
                    ids=np.arange(first, first + len(texts), dtype=np.int64),
                    embeddings=vectors.astype(self.dtype, copy=False),
                ),
            )
            rows.append(len(texts))
            seconds.append(time.perf_counter() - start)
        return {"rows": np.asarray(rows), "seconds": np.asarray(seconds)}


def quiet_model_loading() -> None:
    """Hide transformers' per-actor 'Loading weights' progress bar."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def embed_chunks(
    jobs: list[tuple[EmbedSpec, store.Chunked, list[str]]],
    *,
    model: ModelConfig,
    batch_size: int,
    dtype: str,
    actors: tuple[int, int],
    num_cpus: float,
    num_gpus: float,
    resources: Optional[dict[str, float]] = None,
) -> dict[str, int]:
    """Embed every chunk whose cache file is missing or damaged; return texts embedded per kind.

    Each job is ``(spec, text chunks, the chunks' output paths)``. All kinds go through
    one actor pool, so the model is loaded once per actor for the whole stage.
    """
    import ray.data

    items = []
    for spec, chunks, outputs in jobs:
        for i, (texts_path, out) in enumerate(zip(chunks.paths, outputs)):
            if store.looks_sealed(out):
                continue  # cached; damage that kept the zip's closing record is caught when it is read
            lo, hi = chunks.chunk_range(i)
            items.append(
                {
                    "kind": spec.kind,
                    "texts": texts_path,
                    "out": out,
                    "first_id": lo,
                    "rows": hi - lo,
                    "prompt_name": spec.prompt_name or "",
                    "prompt": spec.prompt or "",
                    "has_prompt": spec.prompt is not None,
                }
            )
    done = {"query": 0, "corpus": 0}
    if not items:
        return done
    # Longest chunks first, so the last unit of work is a short one.
    items.sort(key=lambda item: -item["rows"])
    # Start at the largest pool the work can use: the model loads while the first chunks wait,
    # and Ray Data scales the pool down again as the queue drains.
    largest = min(actors[1], len(items))
    pool = ray.data.ActorPoolStrategy(min_size=min(actors[0], largest), max_size=largest, initial_size=largest)
    # One progress line per stage is ours to print: no Ray Data bars or start-up lines meanwhile.
    with data_context(enable_progress_bars=False, print_on_execution_start=False), logger_level("ray.data", logging.ERROR):
        results = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(
                ChunkEmbedder,
                fn_constructor_kwargs={"model": model, "batch_size": batch_size, "dtype": dtype},
                batch_size=1,
                compute=pool,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                resources=resources or None,
            )
            .take_all()
        )
    if sum(r["rows"] for r in results) != sum(item["rows"] for item in items):
        raise RuntimeError("the embedding stage returned fewer texts than it was given; rerun the job to embed the rest")
    for item in items:
        done[item["kind"]] += item["rows"]
    return done
