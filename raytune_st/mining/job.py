"""The mine job: sentence-transformers' ``mine_hard_negatives``, as stages on a Ray cluster.

Read top to bottom, :func:`mine` is the whole recipe:

0. check the config, the inputs' metadata and an earlier run's settings (no Ray yet);
1. prepare: one task streams the pairs (and the extra corpus) into deduplicated text chunks,
   then the index is checked against the corpus size and the parts already written are
   checked against their manifests;
2. embed: an autoscaling Ray Data actor pool embeds the chunks missing from the cache;
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

import json
import time
from typing import Any, Callable, Optional

from raytune_st.config import dump_yaml
from raytune_st.config.resources import check_custom_resources_exist
from raytune_st.errors import ClusterError
from raytune_st.mining import resume, store
from raytune_st.mining.config import MineConfig
from raytune_st.mining.embed import EmbedSpec, embed_chunks
from raytune_st.mining.index import IndexShard, check_index_fits, shard_bounds
from raytune_st.mining.miner import CrossEncoderScorer, MinePlan, mine_batch, part_name, read_counters, sidecar_name
from raytune_st.mining.prepare import prepare_inputs
from raytune_st.mining.rows import output_columns
from raytune_st.mining.select import FILTERS, FilterParams, rescoring_needed, resolve_range_max, skip_ratios
from raytune_st.mining.stats import missing_line, score_histogram_png, skipped_lines, stats_json, stats_table
from raytune_st.outputs import OutputDir, is_inside, removed_on_failure
from raytune_st.runtime import ray_address, ray_session


def _progress(stage: str, message: str, rows: int, seconds: float, unit: str = "rows") -> None:
    rate = f"{rows / seconds:,.1f} {unit}/s" if seconds > 0 and rows else "cached"
    print(f"[mine] {stage}: {message} in {seconds:.1f} s ({rate})", flush=True)


def mine(config: MineConfig) -> dict[str, Any]:
    """Mine hard negatives as configured; returns the summary also written to stats.json."""
    with removed_on_failure(config.output.path, worth_keeping=lambda: _holds_work(config)):
        return _mine(config)


def _holds_work(config: MineConfig) -> bool:
    """Whether a failed run's output directory holds something a rerun reuses (parts, cached embeddings)."""
    root = config.output.path
    embeddings = config.output.embeddings_dir or store.join(root, "_work", "embeddings")
    return bool(resume.part_names(root) or (is_inside(embeddings, root) and store.list_names(embeddings)))


def _mine(config: MineConfig) -> dict[str, Any]:
    import ray

    # 0. Everything checkable from metadata, before Ray starts.
    anchor, positive, corpus_column = config.check_inputs()
    settings = resume.mining_settings(config)
    resume.check_settings(config.output.path, settings, config.output.overwrite)
    mine_cfg = config.mine
    output = OutputDir(config.output.path)
    work = store.join(config.output.path, "_work")
    embeddings_dir = config.output.embeddings_dir or store.join(work, "embeddings")
    filters = FilterParams(
        include_positives=mine_cfg.include_positives,
        absolute_margin=mine_cfg.absolute_margin,
        relative_margin=mine_cfg.relative_margin,
        max_score=mine_cfg.max_score,
        min_score=mine_cfg.min_score,
    )
    output_format = mine_cfg.effective_output_format
    if output_format != mine_cfg.output_format:
        print('When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to ensure that the ranking order is preserved.')
    rescore = rescoring_needed(filters, config.cross_encoder is not None)
    resources = dict(config.compute.resources)  # custom resources every task and actor asks for
    timings: dict[str, float] = {}

    with ray_session(config.ray_address):
        _check_resources(config, rescore)

        # 1. Prepare: deduplicate queries and corpus into text chunks.
        began = time.perf_counter()
        prepare = ray.remote(prepare_inputs).options(num_cpus=0.5, resources=resources)
        prep = ray.get(
            prepare.remote(
                config.dataset, anchor, positive, config.corpus, corpus_column,
                store.join(work, "prep"), config.compute.embed_chunk_rows,
            )
        )
        timings["prepare"] = time.perf_counter() - began
        range_max, range_lines = resolve_range_max(
            mine_cfg.range_max,
            range_min=mine_cfg.range_min,
            num_negatives=mine_cfg.num_negatives,
            max_positives=prep["max_positives"],
            params=filters,
            has_cross_encoder=config.cross_encoder is not None,
            gpu_index=config.index.gpu,
        )
        for line in range_lines:
            print(line)
        if prep["num_queries"] != prep["num_rows"]:
            print(f"Found {prep['num_queries']} unique queries out of {prep['num_rows']} total queries.")
        if prep["max_positives"] > 1:
            print(f"Found an average of {prep['mean_positives']:.3f} positives per query.")
        _progress(
            "prepare",
            f"{prep['num_rows']:,} pairs -> {prep['num_queries']:,} unique queries, {prep['corpus_size']:,} passages",
            prep["num_rows"],
            timings["prepare"],
        )

        # Now that the corpus size is known, and before anything is embedded.
        bounds = shard_bounds(prep["corpus_size"], config.index.shards)
        check_index_fits(config.index.factory, [hi - lo for lo, hi in bounds], config.index.train_sample_size)

        # Which parts an earlier run of the same settings and data already wrote whole.
        k = range_max + prep["max_positives"]
        plan = MinePlan(
            filters=filters,
            range_min=mine_cfg.range_min,
            range_max=range_max,
            k=k,
            num_negatives=mine_cfg.num_negatives,
            sampling_strategy=mine_cfg.sampling_strategy,
            seed=mine_cfg.seed,
            output_format=output_format,
            output_scores=mine_cfg.output_scores,
            anchor_column=anchor,
            positive_column=positive,
            queries=prep["queries"],
            query_embeddings=prep["queries"],  # replaced below by the embedding files
            positives=prep["positives"],
            shard_starts=(),
            batch_rows=config.compute.mine_batch_rows,
            output_dir=config.output.path,
            parts_dir=store.join(work, "parts"),
            rescore=rescore,
            batch_size=mine_cfg.batch_size,
        )
        pending = resume.pending_batches(
            config.output.path, plan.parts_dir, plan.num_batches,
            settings=settings, data_digest=prep["digest"], range_max=range_max, overwrite=config.output.overwrite,
        )

        shards: list = []
        scorers: list = []
        try:
            if pending:
                # 2. Embed the corpus and the queries (chunks already in the cache are skipped).
                began = time.perf_counter()
                specs = {
                    "corpus": EmbedSpec("corpus", mine_cfg.corpus_prompt_name, mine_cfg.corpus_prompt),
                    "query": EmbedSpec("query", mine_cfg.query_prompt_name, mine_cfg.query_prompt),
                }
                dtype = config.compute.embedding_dtype
                files = {
                    kind: [store.join(embeddings_dir, specs[kind].cache_name(config.model, dtype, d)) for d in prep[f"{kind}_digests"]]
                    for kind in ("corpus", "query")
                }

                def embed() -> dict[str, int]:  # called again if the index finds a damaged cache file
                    return embed_chunks(
                        [
                            (specs["corpus"], prep["corpus"], files["corpus"]),
                            (specs["query"], prep["queries"], files["query"]),
                        ],
                        model=config.model,
                        batch_size=mine_cfg.batch_size,
                        dtype=dtype,
                        actors=(config.compute.embed_actors_min, config.compute.embed_actors_max),
                        num_cpus=config.compute.embed_num_cpus,
                        num_gpus=config.compute.embed_num_gpus,
                        resources=resources,
                    )

                embedded = embed()
                timings["embed"] = time.perf_counter() - began
                _progress(
                    "embed",
                    f"{embedded['corpus']:,} passages + {embedded['query']:,} queries "
                    f"({prep['corpus_size'] - embedded['corpus'] + prep['num_queries'] - embedded['query']:,} cached)",
                    embedded["corpus"] + embedded["query"],
                    timings["embed"],
                    "texts",
                )
                corpus_vectors = store.Chunked(tuple(files["corpus"]), prep["corpus"].chunk_rows, prep["corpus_size"])
                query_vectors = store.Chunked(tuple(files["query"]), prep["queries"].chunk_rows, prep["num_queries"])

                # 3. Build the index shards, each from its own slice of the corpus.
                began = time.perf_counter()
                shards = _build_shards(config, bounds, corpus_vectors, prep["corpus"], embed)
                timings["index"] = time.perf_counter() - began
                _progress(
                    "index",
                    f"{len(shards)} shard(s) of {config.index.factory!r} over {prep['corpus_size']:,} passages",
                    prep["corpus_size"],
                    timings["index"],
                )

                # 4. Mine the query batches, a few at a time, each writing its part file.
                began = time.perf_counter()
                if rescore:
                    scorer_actor = ray.remote(CrossEncoderScorer).options(
                        num_cpus=config.compute.cross_encoder_num_cpus,
                        num_gpus=config.compute.cross_encoder_num_gpus,
                        resources=resources,
                    )
                    scorers = [
                        scorer_actor.remote(config.cross_encoder, mine_cfg.batch_size)
                        for _ in range(config.compute.cross_encoder_actors)
                    ]
                plan = _replace(plan, query_embeddings=query_vectors, shard_starts=tuple(lo for lo, _ in bounds))
                task = ray.remote(mine_batch).options(num_cpus=config.compute.mine_num_cpus, resources=resources)
                queries_done, rows_done, in_flight = 0, 0, []
                for batch in pending:
                    if len(in_flight) >= config.compute.mine_tasks_in_flight:
                        ready, in_flight = ray.wait(in_flight, num_returns=1)
                        for counters in ray.get(ready):
                            queries_done += counters["queries"]
                            rows_done += counters["rows"]
                    scorer = scorers[batch % len(scorers)] if scorers else None
                    in_flight.append(task.remote(plan, batch, shards, scorer))
                for counters in ray.get(in_flight):
                    queries_done += counters["queries"]
                    rows_done += counters["rows"]
                timings["mine"] = time.perf_counter() - began
                _progress(
                    "mine",
                    f"{queries_done:,} queries -> {rows_done:,} rows in {len(pending)} part(s)",
                    queries_done,
                    timings["mine"],
                    "queries",
                )
            else:
                print(f"[mine] all {plan.num_batches} part(s) in {config.output.path} are complete; nothing to mine")
        finally:
            for actor in shards + scorers:
                ray.kill(actor)

        # 5. Statistics of the whole output, as sentence-transformers prints them.
        print("Negative candidates mined, preparing dataset...")
        report = ray.get(
            ray.remote(_report).options(num_cpus=0.5, resources=resources).remote(plan, prep, config.output.path, _filter_values(config))
        )
    for line in report["lines"]:
        print(line)
    summary = {
        "output": config.output.path,
        "parts": [part_name(b) for b in range(plan.num_batches)],
        "columns": report["columns"],
        "rows": report["rows"],
        "input_rows": prep["num_rows"],
        "unique_queries": prep["num_queries"],
        "corpus_size": prep["corpus_size"],
        "max_positives": prep["max_positives"],
        "range_max": range_max,
        "output_format": output_format,
        "statistics": report["statistics"],
        "skipped": report["skipped"],
        "missing": report["missing"],
        "printed": range_lines + report["lines"],
        "seconds": {name: round(value, 3) for name, value in timings.items()},
    }
    output.write("stats.json", json.dumps(summary, indent=2) + "\n")
    output.write("config.yaml", dump_yaml(config))
    return summary


def _build_shards(config: MineConfig, bounds: list, vectors: store.Chunked, texts: store.Chunked, embed: Callable) -> list:
    """One IndexShard actor per slice of the corpus, built; returns the actors.

    A shard that finds a damaged embedding-cache file removes it; the missing chunks are
    then embedded again with `embed()` and the shards rebuilt, once.
    """
    import ray

    actor = ray.remote(IndexShard).options(
        num_cpus=config.index.num_cpus, num_gpus=config.index.num_gpus, resources=dict(config.compute.resources)
    )
    for attempt in range(2):
        shards = [
            actor.remote(
                lo, hi, vectors, texts, config.index.factory, config.index.train_sample_size,
                config.index.nprobe, config.index.search_params, config.index.use_gpu,
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
            embed()
    raise AssertionError("unreachable")


def _replace(plan: MinePlan, **changes: Any) -> MinePlan:
    import dataclasses

    return dataclasses.replace(plan, **changes)


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


def _report(plan: MinePlan, prep: dict, output_path: str, filter_values: dict) -> dict:
    """Read every part's sidecar (in order) and compute the statistics; writes scores.png."""
    import numpy as np

    positive, negative, difference, totals = [], [], [], {}
    for batch in range(plan.num_batches):
        sidecar = store.read_npz(
            store.join(plan.parts_dir, sidecar_name(batch)), resume.manifest_digest(plan.parts_dir, batch, "sidecar")
        )
        positive.append(sidecar["positive"])
        negative.append(sidecar["negative"])
        difference.append(sidecar["difference"])
        for name, value in read_counters(sidecar).items():
            totals[name] = totals.get(name, 0) + value
    positive, negative, difference = (np.concatenate(x) if x else np.zeros(0, np.float32) for x in (positive, negative, difference))
    max_possible = totals.get("max_possible", 0)
    if plan.output_format == "labeled-pair":
        # sentence-transformers counts every input row as a possible positive row, duplicates included.
        max_possible += prep["num_rows"] - prep["num_pairs"]
    ratios = skip_ratios({name: totals.get(f"skipped_{name}", 0) for name in FILTERS}, totals.get("num_candidates", 0))
    missing = max_possible - totals.get("rows", 0)
    lines = stats_table(positive, negative, difference) + skipped_lines(ratios, filter_values)
    line = missing_line(
        missing,
        max_possible,
        range_min=plan.range_min,
        absolute_margin=filter_values["absolute_margin"],
        relative_margin=filter_values["relative_margin"],
        max_score=filter_values["max_score"],
    )
    if line:
        lines.append(line)
    OutputDir(output_path).write("scores.png", score_histogram_png(positive, negative, "raytune_st mine: positive vs negative scores"))
    return {
        "lines": lines,
        "rows": totals.get("rows", 0),
        "columns": [
            name
            for name, _ in output_columns(
                plan.output_format, plan.output_scores, plan.anchor_column, plan.positive_column, plan.num_negatives
            )
        ],
        "statistics": stats_json(positive, negative, difference),
        "skipped": {name: {"skipped": count, "ratio": ratio} for name, (count, ratio) in ratios.items()},
        "missing": max(missing, 0),
    }
