"""Training throughput: raytune_st on one Ray Train worker against SentenceTransformerTrainer.

Both train the same model on the same (query, passage) pairs of the bundled Debian sample
with MultipleNegativesRankingLoss, no_duplicates batches, the same batch size, sequence
length, learning rate and seed, for the same number of optimizer steps, one after the other
in this process. Samples/s counts the training steps only (model loading and Ray start-up
are reported apart as wall time), two ways:

* whole run: every step, from the start of training with the model loaded (ST:
  ``trainer.train()``; raytune_st: the loop's own ``train_samples_per_second``). raytune_st
  opens its Ray Data stream before loading the model, so the two overlap; what is left of
  the stream's start-up (seconds on this machine) counts here, and all of it in the wall time.
* steady state: steps 2..N, from the end of the first optimizer step to the end of the last
  (ST: a callback's timestamps; raytune_st: derived from the per-step cumulative figures).

A third run puts SentenceTransformerTrainer itself inside a Ray Train worker that reserves
what raytune_st's worker does: the ratio against it is the cost of raytune_st's loop alone,
and the difference between the two SentenceTransformerTrainer rows is the cost of Ray's own
processes (a Train controller and a handful of small actors beside the worker), which on a
2-core machine share the cores that train.

The runs alternate `--repeats` times; the table gives the median of each figure with its
range, and the ratios of the medians. On a small shared machine a single run varies by
5-10%, so read a ratio against the ranges.

Ray gives a worker as many torch threads as CPUs it reserves; the worker reserves every core
(as the in-process trainer uses them all) and Ray is started with one more logical CPU so
that Ray Data's read task can run beside it. Ray runs only during raytune_st's turn (a fresh
local Ray each time): with Ray's processes alive in the background, SentenceTransformerTrainer
in this process measured 3-4x slower than alone on a 2-core machine.

    python benchmarks/train_vs_st.py                      # all-MiniLM-L6-v2, batch 32, 10 steps
    python benchmarks/train_vs_st.py --steps 24 --repeats 3   # the README's figures
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "examples", "data", "debian-train-sample.parquet")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the three runs this many times; the table gives medians")
    return parser.parse_args(argv)


def run_sentence_transformers(args: argparse.Namespace, rows: int, workdir: str) -> tuple[float, float, float]:
    """(whole-run samples/s, steady samples/s, wall seconds including model load) of SentenceTransformerTrainer."""
    import datasets
    import pandas as pd
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from raytune_st.models.loading import resolve_model

    start = time.perf_counter()
    frame = pd.read_parquet(DATA, columns=["query", "passage"]).head(rows)
    model = SentenceTransformer(resolve_model(args.model), device="cpu")
    model.max_seq_length = args.max_seq_length
    training_args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(workdir, "st"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=2e-5,
        batch_sampler="no_duplicates",
        save_strategy="no",
        logging_steps=args.steps,
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
    whole = args.steps * args.batch_size / seconds
    steady = (args.steps - 1) * args.batch_size / (step_ends[-1] - step_ends[0])
    return whole, steady, time.perf_counter() - start


def run_sentence_transformers_in_ray_train(args: argparse.Namespace, rows: int, workdir: str, run: int) -> tuple[float, float, float]:
    """SentenceTransformerTrainer's figures when it runs inside a Ray Train worker that reserves
    what raytune_st's worker does: the cost of Ray's runtime alone, apart from raytune_st's loop."""
    import json

    import ray.train
    from ray.train.torch import TorchTrainer

    result_file = os.path.join(workdir, f"st-in-ray-train-{run}.json")

    def loop(_config) -> None:
        with open(result_file, "w") as handle:
            json.dump(run_sentence_transformers(args, rows, workdir), handle)

    TorchTrainer(
        loop,
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": os.cpu_count() or 1}),
        run_config=ray.train.RunConfig(name=f"st-in-ray-train-{run}", storage_path=os.path.join(workdir, "ray")),
    ).fit()
    with open(result_file) as handle:
        return tuple(json.load(handle))


def run_raytune_st(args: argparse.Namespace, rows: int, workdir: str, run: int) -> tuple[float, float, float]:
    """(whole-run samples/s, steady samples/s, wall seconds including Ray start-up) of raytune_st on one worker."""
    import json

    from raytune_st.config.core import build
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.job import train

    cpus = os.cpu_count() or 1
    config = build(
        TrainConfig,
        {
            "model": {"name": args.model, "max_seq_length": args.max_seq_length},
            "train_datasets": {"pairs": {"data": {"path": DATA, "columns": ["query", "passage"], "limit": rows}}},
            "loss": "MultipleNegativesRankingLoss",
            "loss_kwargs": {"scale": 20},
            "args": {
                "output_dir": os.path.join(workdir, f"raytune-st-{run}"),
                "max_steps": args.steps,
                "per_device_train_batch_size": args.batch_size,
                "learning_rate": 2e-5,
                "batch_sampler": "no_duplicates",
                "save_strategy": "no",
                "logging_steps": 1,
                "seed": 42,
            },
            "scaling": {"num_workers": 1, "resources_per_worker": {"CPU": cpus}},
            "run": {"name": f"benchmark-{run}"},
            "stream": {"shuffle_buffer_size": 0},
        },
    )
    start = time.perf_counter()
    metrics = train(config)
    wall = time.perf_counter() - start
    with open(os.path.join(config.args.output_dir, "metrics.jsonl")) as handle:
        history = [json.loads(line) for line in handle]
    # Each record's figure is cumulative since the loop started: elapsed = samples / rate.
    elapsed = {r["step"]: r["step"] * args.batch_size / r["train_samples_per_second"] for r in history}
    steady = (args.steps - 1) * args.batch_size / (elapsed[args.steps] - elapsed[1])
    return metrics["train_samples_per_second"], steady, wall


def main(argv=None) -> int:
    import ray

    args = parse_args(argv)
    rows = args.batch_size * (args.steps + 2)  # every run sees fresh rows, and no_duplicates has room
    labels = ("SentenceTransformerTrainer", "ST trainer in a Ray worker", "raytune_st (1 worker)")
    runs: dict[str, list[tuple[float, float, float]]] = {label: [] for label in labels}

    def record(label: str, run: int, figures: tuple[float, float, float]) -> None:
        runs[label].append(figures)
        print(f"run {run}: {label:28} {figures[0]:.2f} samples/s, steady {figures[1]:.2f} ({figures[2]:.0f} s wall)", flush=True)

    with tempfile.TemporaryDirectory(prefix="train-vs-st-") as workdir:
        for run in range(args.repeats):
            record(labels[0], run, run_sentence_transformers(args, rows, workdir))
            ray.init(num_cpus=(os.cpu_count() or 1) + 1, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
            try:
                record(labels[2], run, run_raytune_st(args, rows, workdir, run))
                record(labels[1], run, run_sentence_transformers_in_ray_train(args, rows, workdir, run))
            finally:
                ray.shutdown()
    print()
    print(
        f"model {args.model}, MultipleNegativesRankingLoss, batch {args.batch_size}, "
        f"max_seq_length {args.max_seq_length}, {args.steps} steps, median of {args.repeats} (range)"
    )
    print(f"{'':30}{'whole run':>22}{'steady':>22}")
    medians = {label: [statistics.median(r[i] for r in runs[label]) for i in (0, 1)] for label in labels}
    for label in labels:
        cells = "".join(
            f"{medians[label][i]:8.2f} ({min(r[i] for r in runs[label]):5.2f}-{max(r[i] for r in runs[label]):5.2f})"
            for i in (0, 1)
        )
        print(f"{label:30}{cells}  samples/s")
    rt = medians[labels[2]]
    for against, label in ((labels[0], "ratio raytune_st / ST"), (labels[1], "ratio / ST trainer in Ray")):
        print(f"{label:30}{rt[0] / medians[against][0]:8.2f}x{'':13}{rt[1] / medians[against][1]:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
