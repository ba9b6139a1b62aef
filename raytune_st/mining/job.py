"""The mine job: sentence-transformers' ``mine_hard_negatives``, as stages on a Ray cluster.

Read top to bottom, :func:`mine` is the whole recipe:

0. check the config, the inputs' metadata and an earlier run's settings (no Ray yet);
1. prepare: one task streams the pairs (and the extra corpus) into deduplicated text chunks,
   then the index is checked against the corpus size and the parts already written are
   checked against their manifests;
2. embed: a pool of actors embeds the chunks missing from the cache (the first actors start
   while prepare runs, so their model load is off the critical path);
3. index: ``index.shards`` actors each build a FAISS index over their slice of the corpus;
4. mine: one task per batch of queries searches every shard, merges, (rescores), filters,
   samples and writes its part file, a few batches at a time;
5. report: sentence-transformers' statistics, stats.json, scores.png and config.yaml.

Finished embedding chunks and output parts are kept, so rerunning an interrupted job
redoes only what is missing; a part or cache file whose bytes no longer match the digest
recorded when it was written is computed again. A run that fails before it has mined or
embedded anything removes the output directory it created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from raytune_st.config import dump_yaml
from raytune_st.config.resources import check_custom_resources_exist
from raytune_st.console import Progress
from raytune_st.errors import ClusterError
from raytune_st.mining import resume, store
from raytune_st.mining.config import ST_LOGGER, MineConfig
from raytune_st.mining.embed import EmbedPool, EmbedSpec, embed_chunks, pending_chunks
from raytune_st.mining.batch import MineSettings
from raytune_st.mining.index import IndexShard, check_index_fits, search_threads, shard_bounds
from raytune_st.mining.miner import CrossEncoderScorer, MinePlan, mine_batch, part_name, read_counters, sidecar_name
from raytune_st.mining.prepare import PrepareSummary, prepare_inputs
from raytune_st.mining.select import FILTERS, FilterParams, candidates_per_query, resolve_range_max
from raytune_st.mining.stats import score_histogram_png, stats_json, summarize
from raytune_st.outputs import OutputDir, is_inside, removed_on_failure
from raytune_st.runtime import ray_address, ray_session


def _progress(stage: str, message: str, rows: int, seconds: float, unit: str = "rows") -> None:
    rate = f"{rows / seconds:,.1f} {unit}/s" if seconds > 0 and rows else "cached"
    print(f"[mine] {stage}: {message} in {seconds:.1f} s ({rate})", flush=True)


def mine(config: MineConfig, *, st_warnings: bool = True) -> dict[str, Any]:
    """Mine hard negatives as configured; returns the summary also written to stats.json."""
    with removed_on_failure(config.output.path, worth_keeping=lambda: _holds_work(config)):
        return _mine(config, st_warnings)


def _holds_work(config: MineConfig) -> bool:
    """Whether a failed run's output directory holds something a rerun reuses (parts, cached embeddings)."""
    root = config.output.path
    embeddings = config.output.embeddings_dir or store.join(root, "_work", "embeddings")
    return bool(resume.part_names(root) or (is_inside(embeddings, root) and store.list_names(embeddings)))


@dataclass(frozen=True)
class Embeddings:
    """Where the embedding stage left the vectors, and how to embed again what a shard finds damaged."""

    corpus: store.Chunked
    queries: store.Chunked
    embed: Callable[[], dict[str, int]]


def _mine(config: MineConfig, st_warnings: bool = True) -> dict[str, Any]:
    # 0. Everything checkable from metadata, before Ray starts.
    anchor, positive, corpus_column = config.check_inputs()
    settings = resume.mining_settings(config)
    resume.check_settings(config.output.path, settings, config.output.overwrite)
    output_format = config.mine.effective_output_format
    for warning in config.mine.warnings() if st_warnings else ():  # raytune_st.mine_hard_negatives logs its own
        logging.getLogger(ST_LOGGER).warning(warning)
    filters = FilterParams(include_positives=config.mine.include_positives, **_filter_values(config))
    rescore = config.cross_encoder is not None  # sentence-transformers 6.3 rescores whenever one is given
    work = store.join(config.output.path, "_work")
    parts_dir = store.join(work, "parts")
    timings: dict[str, float] = {}

    with ray_session(config.ray_address), contextlib.closing(_embed_pool(config)) as pool:
        _check_resources(config, rescore)

        # 1. Prepare: deduplicate queries and corpus into text chunks, while the first
        #    embedding actors start and load the model.
        with _timed(timings, "prepare"):
            prep = _prepare(
                config, anchor, positive, corpus_column, store.join(work, "prep"),
                started=lambda: pool.start(config.compute.embed_actors_min),
            )
        range_max, range_lines = _resolve_range(config, prep, filters)
        _progress(
            "prepare",
            f"{prep.num_rows:,} pairs -> {prep.num_queries:,} unique queries, {prep.corpus_size:,} passages",
            prep.num_rows,
            timings["prepare"],
        )
        bounds = shard_bounds(prep.corpus_size, config.index.shards)
        # Now that the corpus size is known, and before anything is embedded.
        check_index_fits(config.index.factory, [hi - lo for lo, hi in bounds], config.index.train_sample_size)
        mine_settings = MineSettings(
            filters=filters,
            range_min=config.mine.range_min,
            range_max=range_max,
            k=candidates_per_query(range_max, prep.max_positives),
            num_negatives=config.mine.num_negatives,
            sampling_strategy=config.mine.sampling_strategy,
            seed=config.mine.seed,
            output_format=output_format,
            output_scores=config.mine.output_scores,
            anchor_column=anchor,
            positive_column=positive,
            shard_starts=tuple(lo for lo, _ in bounds),
            rescore=rescore,
        )
        # Which parts an earlier run of the same settings and data already wrote whole.
        num_batches = -(-prep.num_queries // config.compute.mine_batch_rows)
        pending = resume.pending_batches(
            config.output.path, parts_dir, num_batches,
            settings=settings, data_digest=prep.digest, range_max=range_max, overwrite=config.output.overwrite,
        )

        if pending:
            # 2. Embed the corpus and the queries (chunks already in the cache are skipped).
            with _timed(timings, "embed"):
                embeddings = _embed(config, prep, pool)
            shards: list = []
            try:
                # 3. Build the index shards, each from its own slice of the corpus.
                with _timed(timings, "index"):
                    shards = _build_shards(config, bounds, embeddings, prep.corpus)
                _progress(
                    "index",
                    f"{len(shards)} shard(s) of {config.index.factory!r} over {prep.corpus_size:,} passages",
                    prep.corpus_size,
                    timings["index"],
                )
                # 4. Mine the query batches, a few at a time, each writing its part file.
                plan = MinePlan(
                    settings=mine_settings,
                    queries=prep.queries,
                    query_embeddings=embeddings.queries,
                    positives=prep.positives,
                    batch_rows=config.compute.mine_batch_rows,
                    output_dir=config.output.path,
                    parts_dir=parts_dir,
                )
                with _timed(timings, "mine"):
                    queries_done, rows_done = _mine_batches(config, plan, pending, shards, prep.num_queries)
                _progress(
                    "mine",
                    f"{queries_done:,} queries -> {rows_done:,} rows in {len(pending)} part(s)",
                    queries_done,
                    timings["mine"],
                    "queries",
                )
            finally:
                _kill(shards)
        else:
            pool.close()
            print(f"[mine] all {num_batches} part(s) in {config.output.path} are complete; nothing to mine")

        # 5. Statistics of the whole output, as sentence-transformers prints them.
        print("Negative candidates mined, preparing dataset...")
        report = _get(
            _remote(config, _report, num_cpus=0.5).remote(
                mine_settings, num_batches, parts_dir, prep, config.output.path, _filter_values(config)
            )
        )
    for line in report["lines"]:
        print(line)
    summary = {
        "output": config.output.path,
        "parts": [part_name(b) for b in range(num_batches)],
        "columns": report["columns"],
        "rows": report["rows"],
        "input_rows": prep.num_rows,
        "unique_queries": prep.num_queries,
        "corpus_size": prep.corpus_size,
        "max_positives": prep.max_positives,
        "range_max": range_max,
        "output_format": output_format,
        "statistics": report["statistics"],
        "skipped": report["skipped"],
        "missing": report["missing"],
        "printed": range_lines + report["lines"],
        "seconds": {name: round(value, 3) for name, value in timings.items()},
    }
    output = OutputDir(config.output.path)
    output.write("stats.json", json.dumps(summary, indent=2) + "\n")
    output.write("config.yaml", dump_yaml(config))
    return summary


# --- the stages ------------------------------------------------------------------------------


def _prepare(
    config: MineConfig, anchor: str, positive: str, corpus_column: Optional[str], directory: str, started: Callable[[], None]
) -> PrepareSummary:
    """One task streams the pairs (and the extra corpus) into deduplicated text chunks under `directory`.

    `started()` is called once the task runs: actors started then cannot take the CPU it
    needs (on a small cluster they would, and wait for work that never comes).
    """
    import ray

    prepare = _remote(config, _prepare_streamed, num_cpus=0.5, num_returns="streaming", name="prepare_inputs")
    stream = prepare.remote(config.dataset, anchor, positive, config.corpus, corpus_column, directory, config.compute.embed_chunk_rows)
    ray.get(next(stream))
    started()
    return ray.get(next(stream))


def _prepare_streamed(*args: Any) -> Iterator[Optional[PrepareSummary]]:
    yield None  # running, with its resources held
    yield prepare_inputs(*args)


def _resolve_range(config: MineConfig, prep: PrepareSummary, filters: FilterParams) -> tuple[int, list[str]]:
    """range_max, and the lines sentence-transformers prints about it and about the queries."""
    range_max, lines = resolve_range_max(
        config.mine.range_max,
        range_min=config.mine.range_min,
        num_negatives=config.mine.num_negatives,
        max_positives=prep.max_positives,
        params=filters,
        has_cross_encoder=config.cross_encoder is not None,
        gpu_index=config.index.gpu,
    )
    for line in lines:
        print(line)
    if prep.num_queries != prep.num_rows:
        print(f"Found {prep.num_queries} unique queries out of {prep.num_rows} total queries.")
    if prep.max_positives > 1:
        print(f"Found an average of {prep.mean_positives:.3f} positives per query.")
    return range_max, lines


def _embed_pool(config: MineConfig) -> EmbedPool:
    options = {"num_cpus": config.compute.embed_num_cpus, "num_gpus": config.compute.embed_num_gpus}
    return EmbedPool(config.model, config.mine.batch_size, config.compute.embedding_dtype, dict(options, resources=dict(config.compute.resources)))


def _embed(config: MineConfig, prep: PrepareSummary, pool: EmbedPool) -> Embeddings:
    """Embed every text chunk missing from the cache over `pool`; returns where the vectors are."""
    began = time.perf_counter()
    mine_cfg, dtype = config.mine, config.compute.embedding_dtype
    directory = config.output.embeddings_dir or store.join(config.output.path, "_work", "embeddings")
    specs = {
        "corpus": EmbedSpec("corpus", mine_cfg.corpus_prompt_name, mine_cfg.corpus_prompt),
        "query": EmbedSpec("query", mine_cfg.query_prompt_name, mine_cfg.query_prompt),
    }
    files = {
        kind: [store.join(directory, specs[kind].cache_name(config.model, dtype, d)) for d in digests]
        for kind, digests in (("corpus", prep.corpus_digests), ("query", prep.query_digests))
    }

    def embed(pool: EmbedPool) -> dict[str, int]:
        return embed_chunks(
            [
                (specs["corpus"], pending_chunks(prep.corpus, files["corpus"], prep.corpus_weights)),
                (specs["query"], pending_chunks(prep.queries, files["query"], prep.query_weights)),
            ],
            pool,
            actors=config.compute.embed_actors_max,
        )

    embedded = embed(pool)
    cached = prep.corpus_size - embedded["corpus"] + prep.num_queries - embedded["query"]
    _progress(
        "embed",
        f"{embedded['corpus']:,} passages + {embedded['query']:,} queries ({cached:,} cached)",
        embedded["corpus"] + embedded["query"],
        time.perf_counter() - began,
        "texts",
    )
    return Embeddings(
        corpus=store.Chunked(tuple(files["corpus"]), prep.corpus.chunk_rows, prep.corpus_size),
        queries=store.Chunked(tuple(files["query"]), prep.queries.chunk_rows, prep.num_queries),
        embed=lambda: embed(_embed_pool(config)),  # called again when an index shard finds a damaged cache file
    )


def _mine_batches(config: MineConfig, plan: MinePlan, pending: list[int], shards: list, num_queries: int) -> tuple[int, int]:
    """One task per pending batch, `mine_tasks_in_flight` at a time; returns (queries, rows) mined."""
    import ray

    rows = config.compute.mine_batch_rows
    progress = Progress("[mine] mine", sum(min(rows, num_queries - b * rows) for b in pending), "queries")

    scorers: list = []
    if plan.settings.rescore:
        scorer = _remote(
            config, CrossEncoderScorer, num_cpus=config.compute.cross_encoder_num_cpus, num_gpus=config.compute.cross_encoder_num_gpus
        )
        scorers = [scorer.remote(config.cross_encoder, config.mine.batch_size) for _ in range(config.compute.cross_encoder_actors)]
    in_flight: list = []
    try:
        task = _remote(config, mine_batch, num_cpus=config.compute.mine_num_cpus)
        queries_done, rows_done = 0, 0

        def collect(done: list) -> None:
            nonlocal queries_done, rows_done
            for counters in ray.get(done):
                queries_done += counters["queries"]
                rows_done += counters["rows"]
                progress.advance(counters["queries"])

        for batch in pending:
            if len(in_flight) >= config.compute.mine_tasks_in_flight:
                ready, in_flight = ray.wait(in_flight, num_returns=1)
                collect(ready)
            in_flight.append(task.remote(plan, batch, shards, scorers[batch % len(scorers)] if scorers else None))
        collect(in_flight)
        return queries_done, rows_done
    except BaseException:
        # One batch failed (a full disk, say): the others stop too, and the job returns only
        # once none of them can still write a part, so that a rerun starts from what it sees.
        for ref in in_flight:
            ray.cancel(ref)
        ray.wait(in_flight, num_returns=len(in_flight), timeout=CANCEL_WAIT_S)
        raise
    finally:
        _kill(scorers)


CANCEL_WAIT_S = 60  # the most a failed mining stage waits for its other tasks to stop


# --- Ray plumbing ----------------------------------------------------------------------------


def _remote(config: MineConfig, function: Any, **options: Any) -> Any:
    """`function` (or an actor class) as a Ray remote with `options` and the job's custom resources."""
    import ray

    return ray.remote(function).options(resources=dict(config.compute.resources), **options)


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


def _kill(actors: list) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)


@contextlib.contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = time.perf_counter() - began


def _build_shards(config: MineConfig, bounds: list, embeddings: Embeddings, texts: store.Chunked) -> list:
    """One IndexShard actor per slice of the corpus, built; returns the actors.

    A shard that finds a damaged embedding-cache file removes it; the missing chunks are
    then embedded again (`embeddings.embed()`) and the shards rebuilt, once.
    """
    import ray

    actor = _remote(config, IndexShard, num_cpus=config.index.num_cpus, num_gpus=config.index.num_gpus)
    vectors = embeddings.corpus
    threads = search_threads(
        config.index.num_cpus, config.index.shards, config.compute.mine_tasks_in_flight * config.compute.mine_num_cpus, config.index.threads
    )
    for attempt in range(2):
        shards = [
            actor.remote(
                lo, hi, vectors, texts, config.index.factory, config.index.train_sample_size,
                config.index.nprobe, config.index.search_params, config.index.use_gpu, threads,
            )
            for lo, hi in bounds
        ]
        try:
            ray.get([s.build.remote() for s in shards])
            return shards
        except store.CorruptFile as exc:
            for shard in shards:
                ray.kill(shard)
            if attempt:
                raise
            print(f"[mine] {getattr(exc, 'cause', exc)}; embedding it again", flush=True)
            embeddings.embed()
    raise AssertionError("unreachable")


def _filter_values(config: MineConfig) -> dict[str, Optional[float]]:
    return {name: getattr(config.mine, name) for name in FILTERS}


def _check_resources(config: MineConfig, rescore: bool) -> None:
    """On a local Ray, refuse settings whose actors could never all be scheduled (they would wait forever)."""
    import ray

    if ray_address(config.ray_address) is None:  # a remote cluster may autoscale
        check_resources_fit(config, rescore, ray.cluster_resources())


def check_resources_fit(config: MineConfig, rescore: bool, cluster: dict[str, float]) -> None:
    """Raise ClusterError when `cluster` (Ray's resource totals) cannot hold the stages' actors at once."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    needed = config.index.shards * config.index.num_cpus + config.compute.mine_num_cpus
    if rescore:
        needed += config.compute.cross_encoder_actors * config.compute.cross_encoder_num_cpus
    if needed > cpus or config.compute.embed_num_cpus > cpus:
        raise ClusterError(
            f"this Ray has {cpus:g} CPUs but mining needs {needed:g} at once (index.shards x index.num_cpus "
            "+ compute.mine_num_cpus + cross-encoder actors) and each embedding actor "
            f"{config.compute.embed_num_cpus:g}; lower index.num_cpus (e.g. 0.5), index.shards, compute.mine_num_cpus "
            "or compute.cross_encoder_num_cpus (or compute.embed_num_cpus)"
        )
    check_custom_resources_exist("compute.resources", config.compute.resources, cluster)
    gpu_needed = config.index.shards * config.index.num_gpus + config.compute.embed_num_gpus
    if gpu_needed > gpus:
        raise ClusterError(
            f"this Ray has {gpus:g} GPUs but index.num_gpus / compute.embed_num_gpus ask for {gpu_needed:g}; set them to 0 on a CPU machine"
        )


def _report(
    settings: MineSettings, num_batches: int, parts_dir: str, prep: PrepareSummary, output_path: str, filter_values: dict
) -> dict:
    """Read every part's sidecar (in order) and compute the statistics; writes scores.png."""
    import numpy as np

    positive, negative, difference, totals = [], [], [], {}
    for batch in range(num_batches):
        sidecar = store.read_npz(store.join(parts_dir, sidecar_name(batch)), resume.manifest_digest(parts_dir, batch, "sidecar"))
        positive.append(sidecar["positive"])
        negative.append(sidecar["negative"])
        difference.append(sidecar["difference"])
        for name, value in read_counters(sidecar).items():
            totals[name] = totals.get(name, 0) + value
    positive, negative, difference = (np.concatenate(x) if x else np.zeros(0, np.float32) for x in (positive, negative, difference))
    summary = summarize(
        totals,
        (positive, negative, difference),
        output_format=settings.output_format,
        range_min=settings.range_min,
        duplicate_rows=prep.num_rows - prep.num_pairs,
        filter_values=filter_values,
    )
    OutputDir(output_path).write("scores.png", score_histogram_png(positive, negative, "raytune_st mine: positive vs negative scores"))
    return {
        "lines": summary.lines,
        "rows": summary.rows,
        "columns": [name for name, _ in settings.columns()],
        "statistics": stats_json(positive, negative, difference),
        "skipped": {name: {"skipped": count, "ratio": ratio} for name, (count, ratio) in summary.ratios.items()},
        "missing": summary.missing,
    }
