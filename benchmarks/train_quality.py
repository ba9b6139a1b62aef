"""Training quality: raytune_st (1 and 2 Ray Train workers) against SentenceTransformerTrainer.

The same model, data, loss, hyperparameters and seed go through three trainers, each in its own
process, and every final model is scored by the same sentence-transformers evaluator in one
more process (the untrained model too, for scale):

* ``stsb``: CoSENTLoss on ../shared/data/stsb-en-train.parquet (5,749 scored pairs, 1 epoch,
  batch 16) -> cosine Spearman on stsb-en-dev (EmbeddingSimilarityEvaluator);
* ``debian``: MultipleNegativesRankingLoss (scale 20, no_duplicates) on the first --debian-pairs
  (query, passage) pairs of debian-train.parquet (1 epoch, batch 32, max_seq_length 128)
  -> NDCG@10 on debian-dev.parquet (InformationRetrievalEvaluator over the dev passages).

Two workers keep the global batch (per-device batch halved); for MNRL, gather_across_devices
(on by default with several workers) gives every query the whole global batch as negatives,
as in one process. The target is each raytune_st figure within 0.01 of SentenceTransformerTrainer's.
With ``--st-seeds 42,43,44`` SentenceTransformerTrainer runs once per seed, which shows how far
its own result moves with the seed alone (data order, initialisation of new heads): the noise
that "within noise" refers to. Differences are measured from the mean of those runs.

    python benchmarks/train_quality.py                    # both recipes
    python benchmarks/train_quality.py --recipes stsb
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import children

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def recipe(name: str, cli: dict) -> dict:
    """The shared settings of one recipe: data, columns, loss and training arguments."""
    if name == "stsb":
        return {
            "train": os.path.join(DATA, "stsb-en-train.parquet"),
            "columns": ["sentence1", "sentence2", "score"],
            "rows": None,
            "loss": "CoSENTLoss",
            "loss_kwargs": {},
            "batch_size": 16,
            "max_seq_length": None,
            "batch_sampler": "batch_sampler",
            # The file is ordered by source; raytune_st shuffles all of it, as the example config does.
            "global_shuffle": True,
        }
    return {
        "train": os.path.join(DATA, "debian-train.parquet"),
        "columns": ["query", "passage"],
        "rows": cli["debian_pairs"],
        "loss": "MultipleNegativesRankingLoss",
        "loss_kwargs": {"scale": 20.0},
        "batch_size": 32,
        "max_seq_length": 128,
        "batch_sampler": "no_duplicates",
        "global_shuffle": False,
    }


COMMON = {"num_train_epochs": 1, "learning_rate": 2e-5, "warmup_ratio": 0.1}
SEED = 42  # raytune_st's runs; SentenceTransformerTrainer runs with each of --st-seeds


# --- the runs (each in a child process) -----------------------------------------------------------


def train_st(args: dict) -> dict:
    import datasets
    import pandas as pd
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer import losses

    from raytune_st.models.loading import resolve_model

    spec = args["recipe"]
    frame = pd.read_parquet(spec["train"], columns=spec["columns"])
    if spec["rows"]:
        frame = frame.head(spec["rows"])
    model = SentenceTransformer(resolve_model(MODEL), device="cpu")
    if spec["max_seq_length"]:
        model.max_seq_length = spec["max_seq_length"]
    training_args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(args["dir"], "st-checkpoints"),
        per_device_train_batch_size=spec["batch_size"],
        batch_sampler=spec["batch_sampler"],
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        use_cpu=True,
        seed=args["seed"],
        **COMMON,
    )
    began = time.perf_counter()
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=datasets.Dataset.from_pandas(frame, preserve_index=False),
        loss=getattr(losses, spec["loss"])(model, **spec["loss_kwargs"]),
    )
    trainer.train()
    out = os.path.join(args["dir"], f"st-final-{args['seed']}")
    model.save(out)
    return {"model": out, "seconds": time.perf_counter() - began, "steps": trainer.state.global_step}


def train_raytune(args: dict) -> dict:
    import ray

    from raytune_st.config.core import build
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.job import train

    spec, workers = args["recipe"], args["workers"]
    cpus = os.cpu_count() or 1
    model = {"name": MODEL}
    if spec["max_seq_length"]:
        model["max_seq_length"] = spec["max_seq_length"]
    data = {"path": spec["train"], "columns": spec["columns"]}
    if spec["rows"]:
        data["limit"] = spec["rows"]
    output_dir = os.path.join(args["dir"], f"raytune-{workers}w")
    config = build(
        TrainConfig,
        {
            "model": model,
            "train_datasets": {"train": {"data": data}},
            "loss": spec["loss"],
            "loss_kwargs": spec["loss_kwargs"],
            "args": {
                "output_dir": output_dir,
                "per_device_train_batch_size": spec["batch_size"] // workers,
                "batch_sampler": spec["batch_sampler"],
                "save_strategy": "no",
                "logging_steps": 50,
                "seed": SEED,
                **COMMON,
            },
            # The workers share every core; one more logical CPU lets Ray Data read beside them.
            "scaling": {"num_workers": workers, "resources_per_worker": {"CPU": cpus / workers}},
            "run": {"name": f"quality-{workers}w", "storage_path": os.path.join(args["dir"], "ray-runs")},
            "stream": {"global_shuffle": spec["global_shuffle"]},
        },
    )
    children.start_local_ray(cpus + 1)
    began = time.perf_counter()
    try:
        metrics = train(config)
    finally:
        ray.shutdown()
    return {"model": os.path.join(output_dir, "final"), "seconds": time.perf_counter() - began, "steps": metrics.get("step")}


def evaluate(args: dict) -> dict:
    """Score every model of args["models"] with the recipe's sentence-transformers evaluator."""
    import pandas as pd
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

    from raytune_st.models.loading import resolve_model

    if args["name"] == "stsb":
        dev = pd.read_parquet(os.path.join(DATA, "stsb-en-dev.parquet"))
        evaluator = EmbeddingSimilarityEvaluator(
            dev["sentence1"].tolist(), dev["sentence2"].tolist(), dev["score"].tolist(), name="sts-dev"
        )
        metric = "sts-dev_spearman_cosine"
    else:
        from retrieval import debian_dev_evaluator

        evaluator = debian_dev_evaluator(DATA, name="debian-dev", ndcg_at_k=[10], batch_size=64)
        metric = "debian-dev_cosine_ndcg@10"
    scores = {}
    for label, path in args["models"].items():
        model = SentenceTransformer(resolve_model(path), device="cpu")
        if args["max_seq_length"]:
            model.max_seq_length = args["max_seq_length"]
        scores[label] = evaluator(model)[metric]
    return {"metric": metric, "scores": scores}


RUNS = {"st": train_st, "raytune": train_raytune, "evaluate": evaluate}


def child(name: str, args: dict) -> dict:
    return children.child(__file__, name, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", default="stsb,debian", help="comma-separated: stsb, debian")
    parser.add_argument("--debian-pairs", type=int, default=3200, help="first N debian-train pairs (batch 32: N/32 steps)")
    parser.add_argument("--workers", default="1,2", help="raytune_st worker counts to run")
    parser.add_argument("--st-seeds", default="42", help="seeds of the SentenceTransformerTrainer runs, comma-separated")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        children.serve(RUNS, *cli.child)
        return

    tables = []
    for name in cli.recipes.split(","):
        spec = recipe(name, {"debian_pairs": cli.debian_pairs})
        with tempfile.TemporaryDirectory(prefix=f"train-quality-{name}-") as tmp:
            runs = {}
            for seed in map(int, cli.st_seeds.split(",")):
                label = f"SentenceTransformerTrainer, seed {seed}"
                runs[label] = child("st", {"recipe": spec, "dir": tmp, "seed": seed})
                print(f"[{name}] {label}: {runs[label]['seconds']:.0f} s", flush=True)
            for workers in map(int, cli.workers.split(",")):
                label = f"raytune_st, {workers} worker{'s' if workers > 1 else ''}"
                runs[label] = child("raytune", {"recipe": spec, "dir": tmp, "workers": workers})
                print(f"[{name}] {label}: {runs[label]['seconds']:.0f} s", flush=True)
            models = {"untrained": MODEL, **{label: run["model"] for label, run in runs.items()}}
            result = child("evaluate", {"name": name, "models": models, "max_seq_length": spec["max_seq_length"]})
        tables.append((name, spec, runs, result))

    for name, spec, runs, result in tables:
        st_scores = [score for label, score in result["scores"].items() if label.startswith("SentenceTransformerTrainer")]
        reference = sum(st_scores) / len(st_scores)
        rows = f", first {spec['rows']:,} rows" if spec["rows"] else ""
        print(f"\n{name}: {spec['loss']} on {os.path.basename(spec['train'])}{rows}, global batch {spec['batch_size']}, 1 epoch")
        print(f"{'':38}{result['metric']:>28}{'vs ST':>9}{'steps':>7}{'train s':>9}")
        for label, score in result["scores"].items():
            run = runs.get(label)
            line = f"{label:38}{score:>28.4f}"
            if run:
                line += f"{score - reference:>+9.4f}{run['steps']:>7}{run['seconds']:>9.0f}"
            print(line)
        print(f"SentenceTransformerTrainer over {len(st_scores)} seed(s): mean {reference:.4f}, "
              f"spread (max - min) {max(st_scores) - min(st_scores):.4f}; 'vs ST' is measured from the mean")


if __name__ == "__main__":
    main()
