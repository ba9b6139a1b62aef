"""raytune_st mine vs sentence-transformers' mine_hard_negatives on the same pairs.

Runs three things, each in its own process so their memory is measured apart:

1. sentence-transformers: ``mine_hard_negatives(..., use_faiss=True)``;
2. raytune_st: ``raytune_st.mine`` on a fresh local Ray (start-up included);
3. the floor: a plain ``model.encode`` of the same deduplicated passages and queries (in --dtype).

and prints wall time, peak memory (the process itself, and for raytune_st the largest Ray
worker), rows out and the row-level agreement of the two outputs (rows that differ only by a
negative of exactly the same score as sentence-transformers' are counted apart, as ties).

``--repeats N`` alternates the runs (st, raytune_st, encode, st, raytune_st, ...) and reports
medians with their ranges. Ray runs its workers at nice 15, so anything else on the machine
slows raytune_st far more than a plain process: before each run the benchmark waits (up to
``--settle`` seconds) for the 1-minute load average to fall below 0.5, prints it, and marks
every figure taken above it.

    python benchmarks/mine_vs_st.py --pairs 3000 --num-negatives 5 --range-max 40 --relative-margin 0.05 --batch-size 64 --repeats 2
    python benchmarks/mine_vs_st.py --pairs 1000 --shards 2 --index-num-cpus 0.5

``--backends onnx,openvino`` adds, in each repeat, raytune_st with ``model.backend`` set to each
and sentence-transformers' ``mine_hard_negatives`` given the same runtime (the model that
``raytune_st.models.backends.accelerate`` returns), and compares their rows with
sentence-transformers' torch rows. ``openvino-bf16`` is openvino computing in bfloat16
(``backend_config: {INFERENCE_PRECISION_HINT: bf16}``):

    python benchmarks/mine_vs_st.py --pairs 3000 --num-negatives 5 --range-min 2 --range-max 40 --relative-margin 0.05 --batch-size 64 --repeats 2 --backends onnx,openvino,openvino-bf16

``--driver-memory-at 5000,50000`` runs only raytune_st, once per size, and prints how the
driver's and the largest worker's peak memory change with the corpus. ``--model tiny`` swaps
in a random 2-layer BERT (``raytune_st.testing``) so that the 50,000-pair run measures the
pipeline's memory rather than hours of MiniLM encoding on a CPU:

    python benchmarks/mine_vs_st.py --driver-memory-at 5000,50000 --model tiny

Sizes beyond the data's rows are synthesised: copy k of the data has " (k)" appended to every
query and passage, so each copy keeps the data's own duplicates and adds none across copies.
Each size prints its stages' seconds and rows/s, so the next bottleneck shows. The largest size
is also prepared ``--repeats`` times by ``prepare_inputs`` alone in a plain process: in the job,
the prepare stage also pays for its task's launch and shares the cores with the first embedding
actor's start-up, which it overlaps on purpose:

    python benchmarks/mine_vs_st.py --driver-memory-at 5000,200000 --model tiny
    python benchmarks/mine_vs_st.py --driver-memory-at 5000,1000000 --model tiny --index-factory IVF1024,Flat --nprobe 16
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import children

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "debian-train.parquet"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# --backends names: (model.backend, model.backend_config)
BACKENDS = {"torch": ("torch", {}), "onnx": ("onnx", {}), "openvino": ("openvino", {}),
            "openvino-bf16": ("openvino", {"INFERENCE_PRECISION_HINT": "bf16"})}


# --- the three measured runs (each runs in a child process) --------------------------------------


def run_st(args: dict) -> dict:
    import datasets
    import pandas as pd
    from sentence_transformers.util import mine_hard_negatives

    from raytune_st.models import load_bi_encoder

    began = time.perf_counter()
    model = load_bi_encoder(args["model"], device="cpu")
    if args.get("st_dtype", "float32") != "float32":
        import torch

        model.to(getattr(torch, args["st_dtype"]))
    backend, backend_config = BACKENDS[args.get("backend", "torch")]
    if backend != "torch":
        from raytune_st.models.backends import accelerate

        model = accelerate(model, backend, backend_config)
    result = mine_hard_negatives(
        datasets.Dataset.from_parquet(args["pairs"]),
        model,
        num_negatives=args["num_negatives"],
        range_min=args["range_min"],
        range_max=args["range_max"],
        relative_margin=args["relative_margin"],
        sampling_strategy="top",
        output_format="triplet",
        output_scores=True,
        batch_size=args["batch_size"],
        use_faiss=True,
    )
    wall = time.perf_counter() - began
    pd.DataFrame(result.to_dict()).to_parquet(args["out"], index=False)
    return {"wall_s": wall, "peak_rss_mib": children.peak_rss_mib(), "rows": len(result)}


def run_raytune(args: dict) -> dict:
    from raytune_st import mine
    from raytune_st.config import load_config
    from raytune_st.mining.config import MineConfig

    began = time.perf_counter()
    backend, backend_config = BACKENDS[args.get("backend", "torch")]
    config = load_config(
        MineConfig,
        None,
        [
            f"model={args['model']}",
            f"model.dtype={args['dtype']}",
            f"model.backend={backend}",
            *[f"model.backend_config.{key}={value}" for key, value in backend_config.items()],
            f"dataset.path={args['pairs']}",
            f"output.path={args['out']}",
            f"mine.num_negatives={args['num_negatives']}",
            f"mine.range_min={args['range_min']}",
            f"mine.range_max={args['range_max']}",
            f"mine.relative_margin={'null' if args['relative_margin'] is None else args['relative_margin']}",
            "mine.output_scores=true",
            f"mine.batch_size={args['batch_size']}",
            f"index.shards={args['shards']}",
            f"index.num_cpus={args['index_num_cpus']}",
            f"compute.embed_actors_max={args['embed_actors']}",
            *([f"compute.embed_chunk_rows={args['chunk_rows']}"] if args["chunk_rows"] else []),
            f"index.factory={args['index_factory']}",
            *([f"index.nprobe={args['nprobe']}"] if args["nprobe"] else []),
        ],
    )
    with children.RayProcesses() as processes:
        summary = mine(config)
    wall = time.perf_counter() - began
    largest = (processes.workers() or [{"peak_mib": 0.0, "name": ""}])[0]
    return {
        "wall_s": wall,
        "peak_rss_mib": children.peak_rss_mib(),
        "largest_worker_mib": largest["peak_mib"],
        "largest_worker": largest["name"],
        "rows": summary["rows"],
        "texts": summary["corpus_size"] + summary["unique_queries"],
        "stage_s": summary["seconds"],
        "stage_rows": {"prepare": summary["input_rows"], "embed": summary["corpus_size"] + summary["unique_queries"],
                       "index": summary["corpus_size"], "mine": summary["unique_queries"]},
    }


def run_encode(args: dict) -> dict:
    import pandas as pd

    from raytune_st.models import load_bi_encoder

    pairs = pd.read_parquet(args["pairs"])
    corpus = list(dict.fromkeys(pairs.iloc[:, 1]))
    queries = list(dict.fromkeys(pairs.iloc[:, 0]))
    began = time.perf_counter()
    model = load_bi_encoder(args["model"], device="cpu")
    if args["dtype"] != "float32":
        import torch

        model.to(getattr(torch, args["dtype"]))
    loaded = time.perf_counter()
    model.encode_document(corpus, batch_size=args["batch_size"], normalize_embeddings=True)
    model.encode_query(queries, batch_size=args["batch_size"], normalize_embeddings=True)
    done = time.perf_counter()
    return {"wall_s": done - began, "encode_s": done - loaded, "peak_rss_mib": children.peak_rss_mib(), "texts": len(corpus) + len(queries)}


def setup(args: dict) -> dict:
    """The inputs: the first N pairs for each size and, for --model tiny, a random tiny BERT."""
    import pandas as pd

    data = pd.read_parquet(args["data"], columns=["query", "passage"])
    pairs = {}
    for n in args["sizes"]:
        pairs[str(n)] = os.path.join(args["dir"], f"pairs-{n}.parquet")
        copies = [data if k == 0 else data.apply(lambda column: column + f" ({k})") for k in range(-(-n // len(data)))]
        pd.concat(copies, ignore_index=True).iloc[:n].to_parquet(pairs[str(n)], index=False)
    model = args["model"]
    if model == "tiny":
        from raytune_st.testing import save_tiny_bi_encoder

        model = save_tiny_bi_encoder(os.path.join(args["dir"], "tiny"), max_seq_length=128)
    return {"pairs": pairs, "model": model}


def run_prepare(args: dict) -> dict:
    """The prepare stage's own work, without Ray: ``prepare_inputs`` on the pairs in this process."""
    from raytune_st.data.sources import Source
    from raytune_st.mining.config import ComputeSection
    from raytune_st.mining.prepare import prepare_inputs

    with tempfile.TemporaryDirectory(prefix="prepare-") as directory:
        began = time.perf_counter()
        chunk_rows = args["chunk_rows"] or ComputeSection().embed_chunk_rows
        summary = prepare_inputs(Source(path=args["pairs"]), "query", "passage", None, None, directory, chunk_rows)
        return {"seconds": time.perf_counter() - began, "rows": summary.num_rows}


RUNS = {"setup": setup, "st": run_st, "raytune": run_raytune, "encode": run_encode, "prepare": run_prepare}


def child(name: str, args: dict) -> dict:
    return children.child(__file__, name, args)


# --- comparing the outputs ------------------------------------------------------------------------


def agreement(st_path: str, ours: str, single_file: bool = False) -> dict:
    """Rows of both outputs compared as (query, positive, negative) multisets.

    A row of ours that differs only by its negative, where sentence-transformers' differing row
    for the same (query, positive) has a negative of the same score (to 1e-6), is a tie: FAISS
    orders equal scores as it finds them, so either negative is right.
    """
    import glob

    import pandas as pd

    st = pd.read_parquet(st_path)
    if single_file:
        ours = pd.read_parquet(ours)
    else:
        ours = pd.concat([pd.read_parquet(p) for p in sorted(glob.glob(os.path.join(ours, "part-*.parquet")))], ignore_index=True)

    def rows(frame) -> tuple[Counter, dict]:
        keys = list(zip(frame.iloc[:, 0], frame.iloc[:, 1], frame.iloc[:, 2]))
        scores = {key: float(s[-1]) for key, s in zip(keys, frame["scores"])}
        return Counter(keys), scores

    (st_rows, st_scores), (our_rows, our_scores) = rows(st), rows(ours)
    shared = sum((st_rows & our_rows).values())
    st_left = defaultdict(list)
    for (query, positive, negative), count in (st_rows - our_rows).items():
        st_left[(query, positive)] += [st_scores[(query, positive, negative)]] * count
    ties = 0
    for (query, positive, negative), count in (our_rows - st_rows).items():
        for _ in range(count):
            left = st_left[(query, positive)]
            match = next((i for i, score in enumerate(left) if abs(score - our_scores[(query, positive, negative)]) <= 1e-6), None)
            if match is not None:
                left.pop(match)
                ties += 1
    n = max(len(st), 1)
    return {"rows": len(st), "shared_rows": shared, "ties": ties, "agreement": shared / n, "agreement_with_ties": (shared + ties) / n}


def settled_child(name: str, args: dict, settle_s: float) -> dict:
    return children.settled(__file__, name, args, settle_s)


spread = children.spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3000, help="first N (query, passage) pairs of --data")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="parquet with (query, passage) as its first two columns")
    parser.add_argument("--num-negatives", type=int, default=5)
    parser.add_argument("--range-min", type=int, default=0)
    parser.add_argument("--range-max", type=int, default=50)
    parser.add_argument("--relative-margin", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--index-factory", default="Flat", help="index.factory, e.g. IVF1024,Flat")
    parser.add_argument("--nprobe", type=int, help="index.nprobe (IVF factories only)")
    parser.add_argument("--index-num-cpus", type=float, default=1.0)
    parser.add_argument("--embed-actors", type=int, default=2, help="most embedding actors")
    parser.add_argument("--chunk-rows", type=int, help="texts per embedding chunk (compute.embed_chunk_rows; default: the config's)")
    parser.add_argument("--model", default=MINILM, help="embedding model; 'tiny' for a random 2-layer BERT")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
        help="raytune_st's model.dtype; other than float32, sentence-transformers also runs with the same dtype (rows still compared with its float32 run)",
    )
    parser.add_argument(
        "--repeats", type=int, default=1,
        help="alternate the runs this many times; figures are medians (ranges). With --driver-memory-at: how many times prepare_inputs runs alone",
    )
    parser.add_argument("--settle", type=float, default=240, help="most seconds to wait for the load average to fall below 0.5")
    parser.add_argument(
        "--driver-memory-at", metavar="N,N,...", help="run only raytune_st, at each of these pair counts, and compare peak memory"
    )
    parser.add_argument("--skip-encode", action="store_true", help="do not time the plain model.encode floor")
    parser.add_argument(
        "--backends", default="", metavar="NAME,...",
        help=f"also run both sides with these runtimes ({', '.join(b for b in BACKENDS if b != 'torch')}), compared with torch",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.backends = [name for name in cli.backends.split(",") if name]
    unknown = [name for name in cli.backends if name not in BACKENDS or name == "torch"]
    if unknown:
        parser.error(f"--backends: unknown {', '.join(unknown)}; choose from {', '.join(b for b in BACKENDS if b != 'torch')}")
    if cli.child:
        children.serve(RUNS, *cli.child)
        return
    if cli.repeats < 1:
        parser.error(f"--repeats: at least 1, got {cli.repeats}")

    # The parent reads no data and loads no model: a child's peak RSS (ru_maxrss) starts from
    # its parent's RSS at the fork, so a heavy parent would inflate every child's figure.
    sizes = [int(n) for n in cli.driver_memory_at.split(",")] if cli.driver_memory_at else [cli.pairs]
    with tempfile.TemporaryDirectory(prefix="mine-bench-") as tmp:
        inputs = child("setup", {"data": cli.data, "sizes": sizes, "dir": tmp, "model": cli.model})
        args = {
            "model": inputs["model"],
            "num_negatives": cli.num_negatives,
            "range_min": cli.range_min,
            "range_max": cli.range_max,
            "relative_margin": cli.relative_margin,
            "batch_size": cli.batch_size,
            "shards": cli.shards,
            "index_num_cpus": cli.index_num_cpus,
            "embed_actors": cli.embed_actors,
            "chunk_rows": cli.chunk_rows,
            "index_factory": cli.index_factory,
            "nprobe": cli.nprobe,
            "dtype": cli.dtype,
        }
        if cli.driver_memory_at:
            runs = [(n, settled_child("raytune", {**args, "pairs": inputs["pairs"][str(n)], "out": os.path.join(tmp, f"out-{n}")}, cli.settle)) for n in sizes]
            # The prepare stage's work alone at the largest size: in the job it also pays for its
            # task's launch and shares the cores with the first embedding actor's start-up.
            largest = {"pairs": inputs["pairs"][str(max(sizes))], "chunk_rows": cli.chunk_rows}
            alone = [settled_child("prepare", largest, cli.settle) for _ in range(cli.repeats)]
            print_driver_memory(cli, runs, alone)
            return
        args["pairs"] = inputs["pairs"][str(cli.pairs)]
        st_runs, our_runs, floors, agreements, same_dtype = [], [], [], [], []
        by_backend: dict[str, dict[str, list]] = {name: {"st": [], "ours": [], "agreement": [], "st_agreement": []} for name in cli.backends}
        for repeat in range(cli.repeats):
            print(f"repeat {repeat + 1} of {cli.repeats}", flush=True)
            st_out, our_out = os.path.join(tmp, f"st-{repeat}.parquet"), os.path.join(tmp, f"ours-{repeat}")
            st_runs.append(settled_child("st", {**args, "out": st_out}, cli.settle))
            our_runs.append(settled_child("raytune", {**args, "out": our_out}, cli.settle))
            if cli.dtype != "float32":
                same_out = os.path.join(tmp, f"st-{cli.dtype}-{repeat}.parquet")
                same_dtype.append(settled_child("st", {**args, "st_dtype": cli.dtype, "out": same_out}, cli.settle))
                same_dtype[-1]["agreement"] = agreement(st_out, same_out, single_file=True)
            if not cli.skip_encode:
                floors.append(settled_child("encode", args, cli.settle))
            agreements.append(agreement(st_out, our_out))
            for name, runs in by_backend.items():
                st_b, ours_b = os.path.join(tmp, f"st-{name}-{repeat}.parquet"), os.path.join(tmp, f"ours-{name}-{repeat}")
                runs["st"].append(settled_child("st", {**args, "backend": name, "out": st_b}, cli.settle))
                runs["ours"].append(settled_child("raytune", {**args, "backend": name, "out": ours_b}, cli.settle))
                runs["agreement"].append(agreement(st_out, ours_b))
                runs["st_agreement"].append(agreement(st_out, st_b, single_file=True))
    print_comparison(cli, st_runs, our_runs, floors, agreements, same_dtype)
    if by_backend:
        print_backends(st_runs, our_runs, by_backend)


def print_comparison(
    cli: argparse.Namespace, st_runs: list[dict], our_runs: list[dict], floors: list[dict], agreements: list[dict], same_dtype: list[dict]
) -> None:
    print()
    print(
        f"pairs: {cli.pairs:,}  num_negatives={cli.num_negatives} range_min={cli.range_min} range_max={cli.range_max} "
        f"relative_margin={cli.relative_margin} top triplet  batch_size={cli.batch_size}  shards={cli.shards}  raytune_st dtype={cli.dtype}  "
        f"runs: {cli.repeats} each, alternated; medians (ranges)"
    )
    print(children.load_line(st_runs + our_runs + floors))
    print("wall s: the whole process (interpreter, imports, model load, Ray start); in-call: the mining call alone")
    print(f"{'run':<36} {'wall s':>18} {'in-call s':>18} {'peak MiB':>9} {'rows out':>9}")
    print(f"{'sentence-transformers (use_faiss)':<36} {spread([r['process_s'] for r in st_runs]):>18} "
          f"{spread([r['wall_s'] for r in st_runs]):>18} {max(r['peak_rss_mib'] for r in st_runs):>9.0f} {st_runs[0]['rows']:>9,}")
    print(f"{'raytune_st (driver)':<36} {spread([r['process_s'] for r in our_runs]):>18} "
          f"{spread([r['wall_s'] for r in our_runs]):>18} {max(r['peak_rss_mib'] for r in our_runs):>9.0f} {our_runs[0]['rows']:>9,}")
    print(f"{'raytune_st (largest Ray worker)':<36} {'':>18} {'':>18} {max(r['largest_worker_mib'] for r in our_runs):>9.0f}")
    ratios = [ours["process_s"] / st["process_s"] for st, ours in zip(st_runs, our_runs)]
    print(f"raytune_st wall / sentence-transformers wall: {spread(ratios, '{:.2f}')}x  (target <= 1.00)")
    if same_dtype:
        label = f"sentence-transformers, {cli.dtype}"
        print(f"{label:<36} {spread([r['process_s'] for r in same_dtype]):>18} "
              f"{spread([r['wall_s'] for r in same_dtype]):>18} {max(r['peak_rss_mib'] for r in same_dtype):>9.0f} {same_dtype[0]['rows']:>9,}")
        same = [ours["process_s"] / st["process_s"] for st, ours in zip(same_dtype, our_runs)]
        print(f"raytune_st ({cli.dtype}) wall / sentence-transformers ({cli.dtype}) wall: {spread(same, '{:.2f}')}x")
        a = same_dtype[-1]["agreement"]
        print(f"sentence-transformers {cli.dtype} rows against its float32 rows: {a['agreement']:.2%} identical, {a['agreement_with_ties']:.2%} with ties")
    for name in our_runs[0]["stage_s"]:
        print(f"  raytune_st stage {name:<8} {spread([r['stage_s'].get(name, 0.0) for r in our_runs])} s")
    if floors:
        print(f"{'plain model.encode (load + encode)':<36} {spread([r['process_s'] for r in floors]):>18} "
              f"{spread([r['wall_s'] for r in floors]):>18} {max(r['peak_rss_mib'] for r in floors):>9.0f} {floors[0]['texts']:>9,} texts")
        floor_rate = [r["texts"] / r["encode_s"] for r in floors]
        embed_rate = [r["texts"] / r["stage_s"]["embed"] for r in our_runs if r["stage_s"].get("embed")]
        print(f"embedding throughput, texts/s: plain encode {spread(floor_rate)}, raytune_st embed stage {spread(embed_rate)}; "
              f"ratio {spread([e / f for e, f in zip(embed_rate, floor_rate)], '{:.2f}')}  (target >= 0.95)")
    a = agreements[-1]
    print(
        f"row-level agreement: {a['shared_rows']:,} of {a['rows']:,} rows identical ({a['agreement']:.2%}); "
        f"{a['ties']:,} more differ only by a negative of equal score (ties); with ties {a['agreement_with_ties']:.2%}  (target >= 99.5%)"
    )


def print_backends(st_runs: list[dict], our_runs: list[dict], by_backend: dict[str, dict[str, list]]) -> None:
    """Each --backends runtime on both sides, against sentence-transformers with torch."""
    print()
    print("model.backend runs (wall s: the whole process), each side against sentence-transformers with torch; rows against its torch rows")
    print(f"{'backend':<14} {'raytune_st s':>18} {'x st torch':>18} {'st same backend s':>18} {'ours x st same':>16} {'rows same':>10} {'with ties':>10}")
    fastest = None
    for name, runs in by_backend.items():
        ours = [r["process_s"] for r in runs["ours"]]
        st_same = [r["process_s"] for r in runs["st"]]
        vs_torch = [o / s["process_s"] for o, s in zip(ours, st_runs)]
        vs_same = [o / s for o, s in zip(ours, st_same)]
        a = runs["agreement"][-1]
        print(f"{name:<14} {spread(ours):>18} {spread(vs_torch, '{:.2f}'):>18} {spread(st_same):>18} {spread(vs_same, '{:.2f}'):>16} "
              f"{a['agreement']:>10.2%} {a['agreement_with_ties']:>10.2%}")
        b = runs["st_agreement"][-1]
        print(f"{'':<14} sentence-transformers with {name}: rows {b['agreement']:.2%} the same as with torch ({b['agreement_with_ties']:.2%} with ties)")
        if fastest is None or statistics.median(vs_torch) < fastest[1]:
            fastest = (name, statistics.median(vs_torch))
    print(f"fastest: raytune_st with {fastest[0]} at {fastest[1]:.2f}x sentence-transformers' torch wall  (target <= 0.70; rows target >= 99%)")


def print_driver_memory(cli: argparse.Namespace, runs: list[tuple[int, dict]], alone: list[dict]) -> None:
    """raytune_st alone at each size of --driver-memory-at: wall time and peak memory side by side."""
    print(f"model: {cli.model}  num_negatives={cli.num_negatives} range_max={cli.range_max} shards={cli.shards} index={cli.index_factory}")
    loads = ", ".join(f"{run['load']:.2f}" for _, run in runs)
    print(f"1-minute load average before the runs: {loads}")
    print(f"{'pairs':>9} {'wall s':>8} {'driver peak MiB':>16} {'largest worker MiB':>19} {'rows out':>10}  largest worker")
    for n, run in runs:
        print(f"{n:>9,} {run['wall_s']:>8.1f} {run['peak_rss_mib']:>16.0f} {run['largest_worker_mib']:>19.0f} {run['rows']:>10,}  {run['largest_worker']}")
    for n, run in runs:
        stages = ", ".join(
            f"{stage} {seconds:.1f} s ({run['stage_rows'][stage] / seconds:,.0f} rows/s)" for stage, seconds in run["stage_s"].items() if seconds > 0
        )
        print(f"{n:>9,} pairs: {stages}")
    (small, first), (large, last) = min(runs, key=lambda run: run[0]), max(runs, key=lambda run: run[0])
    print(
        f"driver peak at {large:,} pairs is {last['peak_rss_mib'] / first['peak_rss_mib']:.2f}x "
        f"its peak at {small:,} ({large / small:.0f}x the pairs)"
    )
    rates = [run["rows"] / run["seconds"] for run in alone]
    print(
        f"{large:,} pairs, prepare_inputs alone in one process (no Ray): {spread([run['seconds'] for run in alone])} s, "
        f"{spread(rates, '{:,.0f}')} rows/s over {len(alone)} run(s)  (target >= 200,000 rows/s); {children.load_line(alone)}"
    )


if __name__ == "__main__":
    main()
