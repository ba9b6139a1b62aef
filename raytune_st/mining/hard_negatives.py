"""``raytune_st.mine_hard_negatives``: sentence-transformers' function, same signature, on Ray.

A script that mines with sentence-transformers changes only its import::

    from raytune_st import mine_hard_negatives  # was: from sentence_transformers.util import ...

    hard_train_dataset = mine_hard_negatives(
        train_dataset, embedding_model, num_negatives=5, range_min=10, range_max=100, max_score=0.8,
        absolute_margin=0.1, relative_margin=0.1, sampling_strategy="top", batch_size=4096,
        output_format="labeled-pair", use_faiss=True,
    )

Every parameter of the installed sentence-transformers function is taken with its meaning
(the deprecated ``margin`` and ``as_triplets`` with its warnings, logged under its logger
name) and becomes the mine job's config; the job runs on the Ray cluster (the local one by
default) and its output comes back as a ``datasets.Dataset``. Keyword-only arguments add
what a cluster needs: where to keep results too large to return, index shards, actors.

A model or cross-encoder object is saved once and put into Ray's object store, named by the
digest of its files (:mod:`raytune_st.objects`): each node writes one copy for its actors, and
a later call with the same weights reuses the embedding cache. The dataset and an extra corpus
are written once as Parquet, which the driver's prepare step reads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import tempfile
from typing import Any, Literal, Optional, Sequence, Union

from raytune_st import objects
from raytune_st.mining.config import ST_LOGGER, include_positives_warnings
from raytune_st.runtime import ray_session

logger = logging.getLogger(ST_LOGGER)


def mine_hard_negatives(
    dataset: Any,
    model: Any,
    anchor_column_name: Optional[str] = None,
    positive_column_name: Optional[str] = None,
    corpus: Optional[list[str]] = None,
    cross_encoder: Any = None,
    range_min: int = 0,
    range_max: Optional[int] = None,
    max_score: Optional[float] = None,
    min_score: Optional[float] = None,
    absolute_margin: Optional[float] = None,
    relative_margin: Optional[float] = None,
    num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top",
    query_prompt_name: Optional[str] = None,
    query_prompt: Optional[str] = None,
    corpus_prompt_name: Optional[str] = None,
    corpus_prompt: Optional[str] = None,
    include_positives: bool = False,
    output_format: str = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: Union[list[str], bool] = False,
    verbose: bool = True,
    cache_folder: Optional[str] = None,
    as_triplets: Optional[bool] = None,
    margin: Optional[float] = None,
    *,
    output_path: Optional[str] = None,
    index_factory: str = "Flat",
    shards: int = 1,
    embed_actors: Optional[int] = None,
    ray_address: Optional[str] = None,
    overrides: Sequence[str] = (),
):
    """Mine hard negatives as sentence-transformers' ``mine_hard_negatives`` does, on a Ray cluster.

    The positional and keyword parameters up to ``margin`` are sentence-transformers', with its
    defaults and meaning (``use_faiss``: the search always runs on FAISS, exact with the default
    ``Flat`` index, which finds what the dense search finds; ``faiss_batch_size``: queries per
    mining batch; ``use_multi_process``: one embedding actor per listed device, or per CPU when
    True; ``cache_folder``: the embedding cache, reused across calls and runs).

    Cluster keywords:
        output_path: directory (or s3:// / gs:// URI) that keeps the mined Parquet parts,
            statistics and config after the call; by default a temporary directory, removed.
        index_factory, shards: the FAISS index (``index.factory``, ``index.shards``).
        embed_actors: most embedding actors (``compute.embed_actors_max``).
        ray_address: the cluster to join (default: RAY_ADDRESS, else a local Ray).
        overrides: any other mine config keys, as ``key=value`` (``raytune-st mine --help-config``).

    Returns:
        A ``datasets.Dataset`` with sentence-transformers' columns for `output_format`.
    """
    import datasets
    import pyarrow.parquet as pq

    from raytune_st.config import apply_overrides, build
    from raytune_st.mining.config import MineConfig
    from raytune_st.mining.job import mine
    from raytune_st.outputs import filesystem

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}; for files use raytune_st.mine(config)")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")
    columns = dataset.column_names
    anchor = anchor_column_name if anchor_column_name in columns else columns[0]
    if positive_column_name not in columns and len(columns) < 2:
        raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
    positive = positive_column_name if positive_column_name in columns else columns[1]
    output_format, output_scores, absolute_margin = st_parameters(
        range_min=range_min, range_max=range_max, max_score=max_score, min_score=min_score, absolute_margin=absolute_margin,
        relative_margin=relative_margin, sampling_strategy=sampling_strategy, include_positives=include_positives,
        output_format=output_format, output_scores=output_scores, as_triplets=as_triplets, margin=margin,
    )

    with tempfile.TemporaryDirectory(prefix="raytune-st-mine-") as work:
        pairs = os.path.join(work, "pairs.parquet")
        dataset.select_columns([anchor, positive]).to_parquet(pairs)
        config: dict[str, Any] = {
            "model": _model_reference(model),
            "dataset": {"path": pairs, "anchor_column_name": anchor, "positive_column_name": positive},
            "output": {"path": output_path or os.path.join(work, "mined")},
            "mine": {
                "range_min": range_min, "range_max": range_max, "max_score": max_score, "min_score": min_score,
                "absolute_margin": absolute_margin, "relative_margin": relative_margin, "num_negatives": num_negatives,
                "sampling_strategy": sampling_strategy, "query_prompt_name": query_prompt_name, "query_prompt": query_prompt,
                "corpus_prompt_name": corpus_prompt_name, "corpus_prompt": corpus_prompt,
                "include_positives": include_positives, "output_format": output_format, "output_scores": output_scores,
                "batch_size": batch_size,
            },
            "index": {"factory": index_factory, "shards": shards},
            "compute": {"mine_batch_rows": faiss_batch_size, **_embed_actors(use_multi_process, embed_actors)},
            "ray_address": ray_address,
        }
        if corpus is not None:
            corpus_path = os.path.join(work, "corpus.parquet")
            pq.write_table(_text_table(corpus), corpus_path)
            config["corpus"] = {"path": corpus_path, "column": "text"}
        if cross_encoder is not None:
            config["cross_encoder"] = {**_model_reference(cross_encoder), "type": "cross_encoder"}
        if cache_folder:
            config["output"]["embeddings_dir"] = cache_folder
        built = build(MineConfig, apply_overrides(config, list(overrides), MineConfig))
        printed = contextlib.redirect_stdout(io.StringIO()) if not verbose else contextlib.nullcontext()
        shipped = [m.name for m in (built.model, built.cross_encoder) if m is not None and objects.is_object(m.name)]
        try:
            with printed, ray_session(built.ray_address):
                objects.ship(shipped)
                summary = mine(built, st_warnings=False)  # logged above, in sentence-transformers' order
        finally:
            objects.release(shipped)
        fs, root = filesystem(summary["output"])
        table = pq.read_table([posixpath.join(root, part) for part in summary["parts"]], filesystem=fs)
        return datasets.Dataset(table)


def st_parameters(
    *, range_min: int, range_max: Optional[int], max_score: Optional[float], min_score: Optional[float],
    absolute_margin: Optional[float], relative_margin: Optional[float], sampling_strategy: str, include_positives: bool,
    output_format: str, output_scores: bool, as_triplets: Optional[bool], margin: Optional[float],
) -> tuple[str, bool, Optional[float]]:
    """(output_format, output_scores, absolute_margin) as sentence-transformers settles them from
    these arguments of mine_hard_negatives, with its warnings (:func:`_deprecated`)."""
    filtered = (
        range_min != 0 or range_max is not None or max_score is not None or min_score is not None
        or absolute_margin is not None or relative_margin is not None or margin is not None or sampling_strategy != "top"
    )
    return _deprecated(as_triplets, margin, output_format, output_scores, absolute_margin, include_positives, filtered)


def _deprecated(
    as_triplets: Optional[bool], margin: Optional[float], output_format: str, output_scores: bool, absolute_margin: Optional[float],
    include_positives: bool = False, filtered: bool = False,
) -> tuple[str, bool, Optional[float]]:
    """sentence-transformers' deprecated parameters and include_positives, mapped and warned about
    as it does, in its order: include_positives makes any format n-tuple before "n-tuple-scores"
    is looked at, so that one then gives no scores column."""
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning(
            "The `as_triplets` parameter is deprecated. Use the `output_format` parameter instead. "
            f"Setting `output_format` to `{output_format}`."
        )
    if include_positives:
        for warning in include_positives_warnings(filtered, output_format):
            logger.warning(warning)
        output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        logger.warning(
            '`output_format="n-tuple-scores"` is deprecated. Use `output_format="n-tuple"` with '
            "`output_scores=True` instead for equivalent output formats."
        )
        output_format, output_scores = "n-tuple", True
    if margin is not None:
        absolute_margin = margin
        logger.warning(
            "The `margin` parameter is deprecated. Use the `absolute_margin` and/or `relative_margin` parameter instead. "
            f"Setting `absolute_margin` to `{absolute_margin}`."
        )
    return output_format, output_scores, absolute_margin


def _model_reference(model: Any) -> dict[str, Any]:
    """A model config for `model`: a reference as given, or an object put into Ray's object store.

    The weights reach each node once (:mod:`raytune_st.objects`), not pickled into every task,
    and the name is the digest of the saved model, so the embedding cache knows the same weights
    in the next call. Half-precision weights stay half precision (``model.dtype``).
    """
    if isinstance(model, str):
        return {"name": model}
    if not hasattr(model, "save"):
        raise TypeError(
            f"model must be a SentenceTransformer (cross_encoder: a CrossEncoder) or a model name or directory, got {type(model).__name__}"
        )
    dtype = str(next(model.parameters()).dtype).replace("torch.", "")
    return {"name": objects.register_model(model), **({"dtype": dtype} if dtype in ("float16", "bfloat16") else {})}


def _embed_actors(use_multi_process: Union[list[str], bool], embed_actors: Optional[int]) -> dict[str, Any]:
    """compute.* for sentence-transformers' use_multi_process: an actor per device (a GPU each
    for CUDA devices), or per CPU of this machine when True; `embed_actors` wins."""
    settings: dict[str, Any] = {}
    if isinstance(use_multi_process, (list, tuple)) and use_multi_process:
        settings["embed_actors_max"] = len(use_multi_process)
        if all(str(device).startswith("cuda") for device in use_multi_process):
            settings["embed_num_gpus"] = 1
    elif use_multi_process is True:
        settings["embed_actors_max"] = os.cpu_count() or 1
    if embed_actors is not None:
        settings["embed_actors_max"] = embed_actors
    if "embed_actors_max" in settings:
        settings["embed_actors_min"] = min(settings["embed_actors_max"], 1)
    return settings


def _text_table(texts: Sequence[str]):
    import pyarrow as pa

    return pa.table({"text": pa.array(list(texts), type=pa.string())})
