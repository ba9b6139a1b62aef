"""raytune_st mine vs sentence-transformers' mine_hard_negatives on the same pairs.

Runs three things, each in its own process so their memory is measured apart:

1. sentence-transformers: ``mine_hard_negatives(..., use_faiss=True)``;
2. raytune_st: ``raytune_st.mine`` on a fresh local Ray (start-up included);
3. the floor: a plain ``model.encode`` of the same deduplicated passages and queries.

and prints wall time, peak memory (the process itself, and for raytune_st the largest Ray
worker), rows out and the row-level agreement of the two outputs.

    python benchmarks/mine_vs_st.py --pairs 5000
    python benchmarks/mine_vs_st.py --pairs 1000 --shards 2 --index-num-cpus 0.5

``--driver-memory-at 5000,50000`` runs only raytune_st, once per size, and prints how the
driver's and the largest worker's peak memory change with the corpus. ``--model tiny`` swaps
in a random 2-layer BERT (``raytune_st.testing``) so that the 50,000-pair run measures the
pipeline's memory rather than hours of MiniLM encoding on a CPU:

    python benchmarks/mine_vs_st.py --driver-memory-at 5000,50000 --model tiny
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import children

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "debian-train.parquet"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


# --- the three measured runs (each runs in a child process) --------------------------------------


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_st(args: dict) -> dict:
    import datasets
    import pandas as pd
    from sentence_transformers.util import mine_hard_negatives

    from raytune_st.models import load_bi_encoder

    began = time.perf_counter()
    model = load_bi_encoder(args["model"], device="cpu")
    result = mine_hard_negatives(
        datasets.Dataset.from_parquet(args["pairs"]),
        model,
        num_negatives=args["num_negatives"],
        range_max=args["range_max"],
        sampling_strategy="top",
        output_format="triplet",
        batch_size=args["batch_size"],
        use_faiss=True,
    )
    wall = time.perf_counter() - began
    pd.DataFrame(result.to_dict()).to_parquet(args["out"], index=False)
    return {"wall_s": wall, "peak_rss_mib": _peak_rss_mib(), "rows": len(result)}


def run_raytune(args: dict) -> dict:
    import threading

    import psutil

    from raytune_st import mine
    from raytune_st.config import load_config
    from raytune_st.mining.config import MineConfig

    # Sample the RSS of every Ray process this driver starts (GCS, raylet, workers).
    peaks: dict[int, tuple[float, str]] = {}
    stop = threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not stop.is_set():
            for proc in me.children(recursive=True):
                try:
                    rss = proc.memory_info().rss / 2**20
                    name = " ".join(proc.cmdline()[:1]) or proc.name()
                except psutil.Error:
                    continue
                if rss > peaks.get(proc.pid, (0, ""))[0]:
                    peaks[proc.pid] = (rss, name)
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    began = time.perf_counter()
    config = load_config(
        MineConfig,
        None,
        [
            f"model={args['model']}",
            f"dataset.path={args['pairs']}",
            f"output.path={args['out']}",
            f"mine.num_negatives={args['num_negatives']}",
            f"mine.range_max={args['range_max']}",
            f"mine.batch_size={args['batch_size']}",
            f"index.shards={args['shards']}",
            f"index.num_cpus={args['index_num_cpus']}",
            f"compute.embed_actors_max={args['embed_actors']}",
            f"compute.embed_chunk_rows={args['chunk_rows']}",
        ],
    )
    summary = mine(config)
    wall = time.perf_counter() - began
    stop.set()
    sampler.join()
    workers = [(rss, name) for rss, name in peaks.values() if name.startswith("ray::")]
    largest = max(workers, default=(0.0, ""))
    return {
        "wall_s": wall,
        "peak_rss_mib": _peak_rss_mib(),
        "largest_worker_mib": largest[0],
        "largest_worker": largest[1],
        "rows": summary["rows"],
        "stage_s": summary["seconds"],
    }


def run_encode(args: dict) -> dict:
    import pandas as pd

    from raytune_st.models import load_bi_encoder

    pairs = pd.read_parquet(args["pairs"])
    corpus = list(dict.fromkeys(pairs.iloc[:, 1]))
    queries = list(dict.fromkeys(pairs.iloc[:, 0]))
    began = time.perf_counter()
    model = load_bi_encoder(args["model"], device="cpu")
    model.encode_document(corpus, batch_size=args["batch_size"], normalize_embeddings=True)
    model.encode_query(queries, batch_size=args["batch_size"], normalize_embeddings=True)
    return {"wall_s": time.perf_counter() - began, "peak_rss_mib": _peak_rss_mib(), "texts": len(corpus) + len(queries)}


def setup(args: dict) -> dict:
    """The inputs: the first N pairs for each size and, for --model tiny, a random tiny BERT."""
    import pandas as pd

    data = pd.read_parquet(args["data"], columns=["query", "passage"])
    if max(args["sizes"]) > len(data):
        raise SystemExit(f"{max(args['sizes']):,} pairs asked for but {args['data']} has {len(data):,}")
    pairs = {}
    for n in args["sizes"]:
        pairs[str(n)] = os.path.join(args["dir"], f"pairs-{n}.parquet")
        data.iloc[:n].to_parquet(pairs[str(n)], index=False)
    model = args["model"]
    if model == "tiny":
        from raytune_st.testing import save_tiny_bi_encoder

        model = save_tiny_bi_encoder(os.path.join(args["dir"], "tiny"), max_seq_length=128)
    return {"pairs": pairs, "model": model}


RUNS = {"setup": setup, "st": run_st, "raytune": run_raytune, "encode": run_encode}


def child(name: str, args: dict) -> dict:
    return children.child(__file__, name, args)


# --- comparing the outputs ------------------------------------------------------------------------


def agreement(st_path: str, ours_dir: str) -> dict:
    import glob

    import pandas as pd

    st = pd.read_parquet(st_path)
    ours = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(os.path.join(ours_dir, "part-*.parquet")))], ignore_index=True)
    st_rows = Counter(map(tuple, st.itertuples(index=False)))
    our_rows = Counter(map(tuple, ours.itertuples(index=False)))
    shared = sum((st_rows & our_rows).values())
    same_order = len(st) == len(ours) and bool((st.values == ours.values).all())
    return {"shared_rows": shared, "agreement": shared / max(len(st), 1), "identical_in_order": same_order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5000, help="first N (query, passage) pairs of --data")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="parquet with (query, passage) as its first two columns")
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--index-num-cpus", type=float, default=1.0)
    parser.add_argument("--embed-actors", type=int, default=2, help="most embedding actors")
    parser.add_argument("--chunk-rows", type=int, default=512, help="texts per embedding chunk (compute.embed_chunk_rows)")
    parser.add_argument("--model", default=MINILM, help="embedding model; 'tiny' for a random 2-layer BERT")
    parser.add_argument(
        "--driver-memory-at", metavar="N,N,...", help="run only raytune_st, at each of these pair counts, and compare peak memory"
    )
    parser.add_argument("--skip-encode", action="store_true", help="do not time the plain model.encode floor")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        children.serve(RUNS, *cli.child)
        return

    # The parent reads no data and loads no model: a child's peak RSS (ru_maxrss) starts from
    # its parent's RSS at the fork, so a heavy parent would inflate every child's figure.
    sizes = [int(n) for n in cli.driver_memory_at.split(",")] if cli.driver_memory_at else [cli.pairs]
    with tempfile.TemporaryDirectory(prefix="mine-bench-") as tmp:
        inputs = child("setup", {"data": cli.data, "sizes": sizes, "dir": tmp, "model": cli.model})
        args = {
            "model": inputs["model"],
            "num_negatives": cli.num_negatives,
            "range_max": cli.range_max,
            "batch_size": cli.batch_size,
            "shards": cli.shards,
            "index_num_cpus": cli.index_num_cpus,
            "embed_actors": cli.embed_actors,
            "chunk_rows": cli.chunk_rows,
        }
        if cli.driver_memory_at:
            runs = [(n, child("raytune", {**args, "pairs": inputs["pairs"][str(n)], "out": os.path.join(tmp, f"out-{n}")})) for n in sizes]
            print_driver_memory(cli, runs)
            return
        args["pairs"] = inputs["pairs"][str(cli.pairs)]
        st = child("st", {**args, "out": os.path.join(tmp, "st.parquet")})
        ours = child("raytune", {**args, "out": os.path.join(tmp, "ours")})
        floor = None if cli.skip_encode else child("encode", args)
        agree = agreement(os.path.join(tmp, "st.parquet"), os.path.join(tmp, "ours"))

    print(f"pairs: {cli.pairs:,}  num_negatives={cli.num_negatives} range_max={cli.range_max} top triplet  shards={cli.shards}")
    print(f"{'run':<34} {'wall s':>8} {'peak MiB':>9} {'rows out':>9}")
    print(f"{'sentence-transformers (use_faiss)':<34} {st['wall_s']:>8.1f} {st['peak_rss_mib']:>9.0f} {st['rows']:>9,}")
    print(f"{'raytune_st (driver)':<34} {ours['wall_s']:>8.1f} {ours['peak_rss_mib']:>9.0f} {ours['rows']:>9,}")
    print(f"{'raytune_st (largest Ray worker)':<34} {'':>8} {ours['largest_worker_mib']:>9.0f}   {ours['largest_worker']}")
    if floor:
        print(f"{'plain model.encode (floor)':<34} {floor['wall_s']:>8.1f} {floor['peak_rss_mib']:>9.0f} {floor['texts']:>9,} texts")
        print(f"raytune_st throughput vs the encode floor: {floor['wall_s'] / ours['wall_s']:.0%}")
    print(f"raytune_st stages (s): {ours['stage_s']}")
    print(
        f"row-level agreement: {agree['shared_rows']:,} of {st['rows']:,} rows ({agree['agreement']:.2%}); "
        f"identical in order: {agree['identical_in_order']}"
    )


def print_driver_memory(cli: argparse.Namespace, runs: list[tuple[int, dict]]) -> None:
    """raytune_st alone at each size of --driver-memory-at: wall time and peak memory side by side."""
    print(f"model: {cli.model}  num_negatives={cli.num_negatives} range_max={cli.range_max} shards={cli.shards}")
    print(f"{'pairs':>8} {'wall s':>8} {'driver peak MiB':>16} {'largest worker MiB':>19} {'rows out':>9}")
    for n, run in runs:
        print(f"{n:>8,} {run['wall_s']:>8.1f} {run['peak_rss_mib']:>16.0f} {run['largest_worker_mib']:>19.0f} {run['rows']:>9,}")
    (small, first), (large, last) = runs[0], runs[-1]
    print(
        f"driver peak at {large:,} pairs is {last['peak_rss_mib'] / first['peak_rss_mib']:.2f}x "
        f"its peak at {small:,} ({large / small:.0f}x the pairs)"
    )


if __name__ == "__main__":
    main()
