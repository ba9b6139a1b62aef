"""Training throughput: raytune_st on one Ray Train worker against SentenceTransformerTrainer.

Both train the same model on the same (query, passage) pairs of the bundled Debian sample
with MultipleNegativesRankingLoss, no_duplicates batches, the same batch size, sequence
length, learning rate and seed, for the same number of optimizer steps, one after the other
in this process. Samples/s counts the training steps only (model loading and Ray start-up
are reported apart as wall time), two ways:

* whole run: every step, from the trainer's first batch request (ST: ``trainer.train()``;
  raytune_st: the loop's own ``train_samples_per_second``, so Ray Data's first read counts).
* steady state: steps 2..N, from the end of the first optimizer step to the end of the last
  (ST: a callback's timestamps; raytune_st: derived from the per-step cumulative figures).

Ray gives a worker as many torch threads as CPUs it reserves; the worker reserves every core
(as the in-process trainer uses them all) and Ray is started with one more logical CPU so
that Ray Data's read task can run beside it. Ray runs only during raytune_st's turn (a fresh
local Ray each time): with Ray's processes alive in the background, SentenceTransformerTrainer
in this process measured 3-4x slower than alone on a 2-core machine.

    python benchmarks/train_vs_st.py                      # all-MiniLM-L6-v2, batch 32, 10 steps
    python benchmarks/train_vs_st.py --steps 30 --repeats 2
"""

from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two trainers this many times; best of each")
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
    st_runs, rt_runs = [], []
    with tempfile.TemporaryDirectory(prefix="train-vs-st-") as workdir:
        for run in range(args.repeats):
            st_runs.append(run_sentence_transformers(args, rows, workdir))
            print(f"run {run}: SentenceTransformerTrainer {st_runs[-1][0]:.2f} samples/s, steady {st_runs[-1][1]:.2f} ({st_runs[-1][2]:.0f} s wall)", flush=True)
            ray.init(num_cpus=(os.cpu_count() or 1) + 1, log_to_driver=False, logging_level="ERROR", include_dashboard=False)
            try:
                rt_runs.append(run_raytune_st(args, rows, workdir, run))
            finally:
                ray.shutdown()
            print(f"run {run}: raytune_st (1 worker)     {rt_runs[-1][0]:.2f} samples/s, steady {rt_runs[-1][1]:.2f} ({rt_runs[-1][2]:.0f} s wall)", flush=True)
    print()
    print(f"model {args.model}, MultipleNegativesRankingLoss, batch {args.batch_size}, max_seq_length {args.max_seq_length}, {args.steps} steps, best of {args.repeats}")
    print(f"{'':28}{'whole run':>12}{'steady':>12}")
    st = [max(r[i] for r in st_runs) for i in (0, 1)]
    rt = [max(r[i] for r in rt_runs) for i in (0, 1)]
    print(f"{'SentenceTransformerTrainer':28}{st[0]:12.2f}{st[1]:12.2f}  samples/s")
    print(f"{'raytune_st (1 worker)':28}{rt[0]:12.2f}{rt[1]:12.2f}  samples/s")
    print(f"{'ratio raytune_st / ST':28}{rt[0] / st[0]:11.2f}x{rt[1] / st[1]:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
