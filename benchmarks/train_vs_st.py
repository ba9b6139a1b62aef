"""Training throughput and memory: raytune_st on one Ray Train worker against SentenceTransformerTrainer.

Both train the same model on the same (query, passage) pairs of the bundled Debian sample
with MultipleNegativesRankingLoss, no_duplicates batches, the same batch size, sequence
length, learning rate and seed, for the same number of optimizer steps. Each run is a fresh
process (benchmarks/children.py), started once the 1-minute load average is below 0.5 (the
load is printed, and a figure taken above it is marked). Samples/s counts the training steps
only (model loading and Ray start-up are in the wall time), two ways:

* whole run: every step, from the start of training with the model loaded (ST:
  ``trainer.train()``; raytune_st: the loop's own ``train_samples_per_second``). raytune_st
  opens its Ray Data stream before loading the model, so the two overlap; what is left of
  the stream's start-up counts here, and all of it in the wall time.
* steady state: steps 2..N, from the end of the first optimizer step to the end of the last
  (ST: a callback's timestamps; raytune_st: derived from the per-step cumulative figures).

Peak memory is the SentenceTransformerTrainer process's own, and for a Ray run the training
worker's (the kernel's high-water mark, VmHWM). "Ray other CPU s" is the CPU time of every
other process the Ray run started (controller, small actors, raylet, GCS, idle workers), the
cost of Ray's runtime that shares the cores.

A third run puts SentenceTransformerTrainer itself inside a Ray Train worker that reserves
what raytune_st's worker does: the ratio against it is the cost of raytune_st's loop alone.

The runs alternate `--repeats` times; the table gives the median of each figure with its
range, and the ratios of the medians. On this shared 2-core machine a run varies by up to
10%, so read a ratio against the ranges.

Ray gives a worker as many torch threads as CPUs it reserves; the worker reserves every core
(as the in-process trainer uses them all) and Ray is started, as raytune_st starts a local one,
with one more logical CPU so that Ray Data's read task can run beside it.

`--ray-env NAME=VALUE` adds a fourth run, raytune_st with that variable in its Ray processes'
environment, alternating with the others: the table then shows what the setting changes.
`--model tiny` trains a random 2-layer BERT, whose steps take milliseconds, so that the loops'
and Ray's own costs per step show:

    python benchmarks/train_vs_st.py                      # all-MiniLM-L6-v2, batch 32, 10 steps
    python benchmarks/train_vs_st.py --steps 24 --repeats 3   # the README's figures
    python benchmarks/train_vs_st.py --model tiny --steps 40 --repeats 2 --skip-st-in-ray --ray-env RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import children

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "examples", "data", "debian-train-sample.parquet")
LABELS = {
    "st": "SentenceTransformerTrainer",
    "st_in_ray": "ST trainer in a Ray worker",
    "raytune": "raytune_st (1 worker)",
    "raytune_env": "raytune_st with --ray-env/--set",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="'tiny' for a random 2-layer BERT")
    parser.add_argument(
        "--data", default=DATA,
        help="a Parquet file with query and passage columns; the runs read its first batch-size x (steps + 2) rows, "
        "in as many epochs as that takes",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the three runs this many times; the table gives medians")
    parser.add_argument("--settle", type=float, default=240, help="most seconds to wait for the load average to fall below 0.5")
    parser.add_argument("--skip-st-in-ray", action="store_true", help="do not run SentenceTransformerTrainer inside a Ray worker")
    parser.add_argument(
        "--ray-env", action="append", default=[], metavar="NAME=VALUE",
        help="adds a raytune_st run whose Ray processes get this environment variable (repeatable), "
        "e.g. RAY_worker_niceness=0: the two raytune_st runs alternate, so the table shows the setting's effect",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
        help="like --ray-env, for a config key of the train job (repeatable), e.g. stream.materialize_max_bytes=0",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def rows_for(args: dict) -> int:
    return args["batch_size"] * (args["steps"] + 2)  # every run sees fresh rows, and no_duplicates has room


def run_sentence_transformers(args: dict) -> dict:
    """SentenceTransformerTrainer in this process: whole-run and steady samples/s, wall seconds
    including the model load, and this process's peak memory."""
    import datasets
    import pandas as pd
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from raytune_st.models.loading import resolve_model

    start = time.perf_counter()
    frame = pd.read_parquet(args["data"], columns=["query", "passage"]).head(rows_for(args))
    model = SentenceTransformer(resolve_model(args["model"]), device="cpu")
    model.max_seq_length = args["max_seq_length"]
    training_args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(args["workdir"], "st"),
        max_steps=args["steps"],
        per_device_train_batch_size=args["batch_size"],
        learning_rate=2e-5,
        batch_sampler="no_duplicates",
        save_strategy="no",
        logging_steps=args["steps"],
        report_to="none",
        seed=42,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.Dataset.from_pandas(frame, preserve_index=False),
        loss=MultipleNegativesRankingLoss(model, scale=20),
    )
    step_ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            step_ends.append(time.perf_counter())

    trainer.add_callback(StepClock())
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    return {
        "whole": args["steps"] * args["batch_size"] / seconds,
        "steady": (args["steps"] - 1) * args["batch_size"] / (step_ends[-1] - step_ends[0]),
        "wall_s": time.perf_counter() - start,
        "peak_rss_mib": children.peak_rss_mib(),
    }


def start_ray(args: dict) -> None:
    """A local Ray as raytune_st starts one, with one more logical CPU than the machine has so
    that Ray Data's read task runs beside a worker that reserves every core; --ray-env's
    variables go to this process (Ray's own processes read them) and to the workers."""
    os.environ.update(args["ray_env"])
    children.start_local_ray((os.cpu_count() or 1) + 1, dict(args["ray_env"]))


def ray_figures(processes: "children.RayProcesses") -> dict:
    """The training worker's peak memory and the CPU seconds of Ray's other processes."""
    workers = [entry for entry in processes.workers() if "Train" in entry["name"] and "Controller" not in entry["name"]]
    trainer = workers[0] if workers else {"peak_mib": 0.0, "cpu_s": 0.0, "name": ""}
    cpu = processes.cpu_by_name()
    return {
        "worker_peak_mib": trainer["peak_mib"],
        "worker_name": trainer["name"],
        "other_cpu_s": sum(cpu.values()) - trainer["cpu_s"],
        "cpu_by_name": cpu,
    }


def run_sentence_transformers_in_ray_train(args: dict) -> dict:
    """SentenceTransformerTrainer's figures when it runs inside a Ray Train worker that reserves
    what raytune_st's worker does: the cost of Ray's runtime alone, apart from raytune_st's loop."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    result_file = os.path.join(args["workdir"], "st-in-ray-train.json")

    def loop(_config) -> None:
        with open(result_file, "w") as handle:
            json.dump(run_sentence_transformers(args), handle)

    start = time.perf_counter()
    with children.RayProcesses() as processes:
        start_ray(args)
        TorchTrainer(
            loop,
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": os.cpu_count() or 1}),
            run_config=ray.train.RunConfig(name="st-in-ray-train", storage_path=os.path.join(args["workdir"], "ray")),
        ).fit()
        ray.shutdown()
    with open(result_file) as handle:
        figures = json.load(handle)
    return {**figures, "wall_s": time.perf_counter() - start, **ray_figures(processes)}


def run_raytune_st(args: dict) -> dict:
    """raytune_st on one worker: whole-run and steady samples/s, wall seconds including Ray's
    start-up, the worker's peak memory and the CPU seconds of Ray's other processes."""
    import ray

    from raytune_st.config.core import apply_overrides, build
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.job import train

    config = build(
        TrainConfig,
        apply_overrides({
            "model": {"name": args["model"], "max_seq_length": args["max_seq_length"]},
            "train_datasets": {"pairs": {"data": {"path": args["data"], "columns": ["query", "passage"], "limit": rows_for(args)}}},
            "loss": "MultipleNegativesRankingLoss",
            "loss_kwargs": {"scale": 20},
            "args": {
                "output_dir": os.path.join(args["workdir"], "raytune-st"),
                "max_steps": args["steps"],
                "per_device_train_batch_size": args["batch_size"],
                "learning_rate": 2e-5,
                "batch_sampler": "no_duplicates",
                "save_strategy": "no",
                "logging_steps": 1,
                "seed": 42,
            },
            "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": os.cpu_count() or 1}},
            "run": {"name": "benchmark"},
            "stream": {"shuffle_buffer_size": 0},
        }, args["overrides"], TrainConfig),
    )
    start = time.perf_counter()
    with children.RayProcesses() as processes:
        start_ray(args)
        metrics = train(config)
        ray.shutdown()
    wall = time.perf_counter() - start
    with open(os.path.join(config.args.output_dir, "metrics.jsonl")) as handle:
        history = [json.loads(line) for line in handle]
    # Each record's figure is cumulative since the loop started: elapsed = samples / rate.
    elapsed = {r["step"]: r["step"] * args["batch_size"] / r["train_samples_per_second"] for r in history}
    steady = (args["steps"] - 1) * args["batch_size"] / (elapsed[args["steps"]] - elapsed[1])
    return {"whole": metrics["train_samples_per_second"], "steady": steady, "wall_s": wall, **ray_figures(processes)}


RUNS = {
    "st": run_sentence_transformers,
    "st_in_ray": run_sentence_transformers_in_ray_train,
    "raytune": run_raytune_st,
    "raytune_env": run_raytune_st,
}


def main(argv=None) -> int:
    cli = parse_args(argv)
    if cli.child:
        children.serve(RUNS, *cli.child)
        return 0
    ray_env = [item.split("=", 1) for item in cli.ray_env]
    if any(len(item) != 2 for item in ray_env):
        raise SystemExit("--ray-env takes NAME=VALUE")
    names = ["st", "raytune"] + (["raytune_env"] if ray_env or cli.overrides else []) + ([] if cli.skip_st_in_ray else ["st_in_ray"])
    runs: dict[str, list[dict]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="train-vs-st-") as workdir:
        model = cli.model
        if model == "tiny":  # steps of milliseconds: what is left is the loops' and Ray's own costs
            from raytune_st.testing import save_tiny_bi_encoder

            model = save_tiny_bi_encoder(os.path.join(workdir, "tiny-model"))
        for run in range(cli.repeats):
            for name in names:
                args = {
                    "model": model, "batch_size": cli.batch_size, "max_seq_length": cli.max_seq_length, "steps": cli.steps,
                    "data": os.path.abspath(cli.data), "workdir": os.path.join(workdir, f"{name}-{run}"), "ray_env": ray_env if name == "raytune_env" else [],
                    "overrides": cli.overrides if name == "raytune_env" else [],
                }
                figures = children.settled(__file__, name, args, cli.settle)
                runs[name].append(figures)
                memory = figures.get("worker_peak_mib", figures.get("peak_rss_mib", 0.0))
                print(
                    f"run {run}: {LABELS[name]:28} {figures['whole']:.2f} samples/s, steady {figures['steady']:.2f} "
                    f"({figures['wall_s']:.0f} s wall, peak {memory:.0f} MiB)", flush=True,
                )
    print_table(cli, runs)
    return 0


def print_table(cli: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    print()
    print(
        f"model {cli.model}, MultipleNegativesRankingLoss, batch {cli.batch_size}, max_seq_length {cli.max_seq_length}, "
        f"{cli.steps} steps, {os.path.basename(cli.data)}, median of {cli.repeats} (range)" + (f"; Ray env {' '.join(cli.ray_env)}" if cli.ray_env else "")
        + (f"; config {' '.join(cli.overrides)}" if cli.overrides else "")
    )
    print(children.load_line([r for name in runs for r in runs[name]]))
    print(f"{'':30}{'whole run samples/s':>24}{'steady samples/s':>24}{'peak MiB':>24}{'Ray other CPU s':>18}")
    medians = {}
    for name, figures in runs.items():
        memory = [r.get("worker_peak_mib", r.get("peak_rss_mib", 0.0)) for r in figures]
        other = children.spread([r["other_cpu_s"] for r in figures]) if "other_cpu_s" in figures[0] else "-"
        medians[name] = [statistics.median(r[key] for r in figures) for key in ("whole", "steady")] + [statistics.median(memory)]
        cells = "".join(f"{children.spread(values, '{:.2f}'):>24}" for values in ([r["whole"] for r in figures], [r["steady"] for r in figures]))
        print(f"{LABELS[name]:30}{cells}{children.spread(memory, '{:.0f}'):>24}{other:>18}")
    targets = (0.95, 1.0, 1.2)
    comparisons = [("raytune", name) for name in ("st", "st_in_ray") if name in medians]
    if "raytune_env" in medians:
        comparisons += [("raytune_env", "st"), ("raytune_env", "raytune")]
    for mine, against in comparisons:
        ours, theirs = medians[mine], medians[against]
        print(
            f"{LABELS[mine]} / {LABELS[against]:27} whole {ours[0] / theirs[0]:.2f}x, steady {ours[1] / theirs[1]:.2f}x, "
            f"worker peak memory {ours[2] / theirs[2]:.2f}x"
            + (f"  (targets: whole >= {targets[0]}, steady >= {targets[1]}, memory <= {targets[2]})" if against == "st" else "")
        )
    cpu = runs["raytune"][0]["cpu_by_name"]
    print("CPU seconds by process in raytune_st's first run: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in cpu.items()))


if __name__ == "__main__":
    sys.exit(main())
