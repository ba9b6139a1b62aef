"""Retrieval quality of the pipeline's variants, against in-batch negatives only and sentence-transformers.

Training data: the first --pairs (6,400) debian-train (query, passage) pairs. Held out: the whole
debian-dev split, its 2,378 queries against the dev passages plus --distractors (20,000) train
passages that are not among the training pairs. Every model is scored by one
sentence-transformers InformationRetrievalEvaluator, in a process of its own: NDCG@10, MRR@10, R@10.

Variants (MultipleNegativesRankingLoss, batch 32, 1 epoch, max_seq_length 128, unless said):

* ``base``: the start model, untrained;
* ``in-batch``: trained on the pairs alone (the train job);
* ``round 1``, ``round 2``: ``raytune-st pipeline`` with rounds=2: one negative per pair mined
  with relative_margin 0.05 by the start model, then by round 1's model; each round trains
  the start model;
* ``round 1 + denoise``: round 1 with a teacher the pipeline trains first (a MiniLM
  cross-encoder, BinaryCrossEntropyLoss on labeled pairs mined from the same pairs) dropping
  the rows whose negative it scores above the positive (margin 0);
* ``round 1 + MarginMSE``: round 1 with that teacher's scores as MarginMSELoss labels;
* ``ST on round 1``: SentenceTransformerTrainer on round 1's mined rows, the reference;
* ``round 1 seed s``: round 1's rows trained with --seeds: their spread is the noise.

Targets: the best pipeline variant beats in-batch by >= 0.01 NDCG@10; round 2 >= round 1 - noise.

    python benchmarks/flywheel_quality.py                           # the issue's sizes (hours on 2 CPU cores)
    python benchmarks/flywheel_quality.py --pairs 1600 --teacher-steps 200   # the README's figures (1 h 40 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import children

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TRAIN_ARGS = {"per_device_train_batch_size": 32, "num_train_epochs": 1, "learning_rate": 2e-5, "warmup_ratio": 0.1,
              "batch_sampler": "no_duplicates", "save_strategy": "no", "logging_steps": 50}
METRICS = ("ndcg@10", "mrr@10", "recall@10")


def prepare(args: dict) -> dict:
    """The training pairs and the distractor passages (train passages not among the pairs), as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = pq.read_table(os.path.join(DATA, "debian-train.parquet"), columns=["query", "passage"])
    pairs = train.slice(0, args["pairs"])
    used = set(pairs.column("passage").to_pylist())
    distractors = list(dict.fromkeys(p for p in train.slice(args["pairs"]).column("passage").to_pylist() if p not in used))
    paths = {"pairs": os.path.join(args["dir"], "pairs.parquet"), "distractors": os.path.join(args["dir"], "distractors.parquet")}
    pq.write_table(pairs, paths["pairs"])
    pq.write_table(pa.table({"passage": distractors[: args["distractors"]]}), paths["distractors"])
    return paths


def pipeline(args: dict) -> dict:
    import raytune_st

    began = time.perf_counter()
    result = raytune_st.pipeline(args["config"])
    return {"rounds": result["rounds"], "seconds": time.perf_counter() - began}


def train_raytune(args: dict) -> dict:
    import raytune_st

    began = time.perf_counter()
    raytune_st.train(args["config"])
    return {"model": os.path.join(args["config"]["args"]["output_dir"], "final"), "seconds": time.perf_counter() - began}


def train_st(args: dict) -> dict:
    import datasets
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from raytune_st.models.loading import resolve_model

    files = sorted(os.path.join(args["data"], f) for f in os.listdir(args["data"]) if f.endswith(".parquet"))
    table = pq.read_table(files)
    model = SentenceTransformer(resolve_model(args["model"]), device="cpu")
    model.max_seq_length = args["max_seq_length"]
    began = time.perf_counter()
    trainer = SentenceTransformerTrainer(
        model=model, train_dataset=datasets.Dataset(table), loss=MultipleNegativesRankingLoss(model),
        args=SentenceTransformerTrainingArguments(output_dir=os.path.join(args["dir"], "st-checkpoints"), report_to="none", use_cpu=True,
                                                  seed=args["seed"], **TRAIN_ARGS),
    )
    trainer.train()
    out = os.path.join(args["dir"], "st-round-1")
    model.save(out)
    return {"model": out, "seconds": time.perf_counter() - began}


def evaluate(args: dict) -> dict:
    """Every model of args["models"] scored by one sentence-transformers InformationRetrievalEvaluator."""
    import pyarrow.parquet as pq
    from sentence_transformers import SentenceTransformer

    from raytune_st.models.loading import resolve_model
    from retrieval import debian_dev_evaluator

    distractors = pq.read_table(args["distractors"]).column("passage").to_pylist()
    evaluator = debian_dev_evaluator(
        DATA, distractors, name="dev", ndcg_at_k=[10], mrr_at_k=[10], accuracy_at_k=[10], precision_recall_at_k=[10],
        map_at_k=[100], batch_size=64, show_progress_bar=False,
    )
    scores = {}
    for label, path in args["models"].items():
        model = SentenceTransformer(resolve_model(path), device="cpu")
        model.max_seq_length = args["max_seq_length"]
        found = evaluator(model)
        scores[label] = {m: found[f"dev_cosine_{m}"] for m in METRICS}
    return {"scores": scores, "queries": len(evaluator.queries), "corpus": len(evaluator.corpus)}


RUNS = {"prepare": prepare, "pipeline": pipeline, "raytune": train_raytune, "st": train_st, "evaluate": evaluate}


def child(name: str, args: dict) -> dict:
    return children.child(__file__, name, args)


def pipeline_config(cli: argparse.Namespace, pairs: str, out: str, **extra) -> dict:
    return {
        "model": {"name": cli.model, "max_seq_length": cli.max_seq_length},
        "data": {"path": pairs},
        "rounds": 1,
        "mine": {"num_negatives": 1, "relative_margin": 0.05, "range_max": 50, "batch_size": 64},
        "train": {"loss": "MultipleNegativesRankingLoss", "args": {**TRAIN_ARGS, "seed": cli.seed}, "scaling": {"num_workers": 1}},
        "output_dir": out,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=6400, help="first N debian-train pairs to train on")
    parser.add_argument("--distractors", type=int, default=20000, help="train passages added to the dev corpus")
    parser.add_argument("--model", default=MODEL, help="start model (and the teacher's base)")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--teacher-steps", type=int, default=400, help="training steps of the cross-encoder teacher")
    parser.add_argument("--seed", type=int, default=12, help="the seed of every variant")
    parser.add_argument("--seeds", default="12,13,14", help="seeds of round 1's training, for the noise")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.child:
        children.serve(RUNS, *cli.child)
        return
    work = cli.dir or tempfile.mkdtemp(prefix="flywheel-quality-")
    os.makedirs(work, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.2f}; work directory {work}", flush=True)
    paths = child("prepare", {"dir": work, "pairs": cli.pairs, "distractors": cli.distractors})
    pairs = paths["pairs"]
    models: dict[str, str] = {"base": cli.model}
    seconds: dict[str, float] = {}

    rounds = child("pipeline", {"config": pipeline_config(cli, pairs, os.path.join(work, "rounds"), rounds=2)})
    seconds["round 1 + round 2 (pipeline)"] = rounds["seconds"]
    models["round 1"] = os.path.join(work, "rounds", "round-1", "train", "final")
    models["round 2"] = os.path.join(work, "rounds", "round-2", "train", "final")

    teacher = {"train": {"model": {"name": cli.model, "type": "cross_encoder", "num_labels": 1, "max_seq_length": cli.max_seq_length},
                         "loss": "BinaryCrossEntropyLoss", "loss_kwargs": {"pos_weight": 3},
                         "args": {"per_device_train_batch_size": 32, "max_steps": cli.teacher_steps, "learning_rate": 2e-5,
                                  "warmup_ratio": 0.1, "save_strategy": "no", "logging_steps": 50, "seed": cli.seed},
                         "scaling": {"num_workers": 1}}}
    denoised = child("pipeline", {"config": pipeline_config(cli, pairs, os.path.join(work, "denoise"), teacher=teacher, denoise={"margin": 0.0})})
    seconds["teacher + round 1 + denoise (pipeline)"] = denoised["seconds"]
    models["round 1 + denoise"] = os.path.join(work, "denoise", "round-1", "train", "final")
    trained_teacher = os.path.join(work, "denoise", "teacher", "train", "final")
    distilled = child("pipeline", {"config": pipeline_config(
        cli, pairs, os.path.join(work, "marginmse"), teacher=trained_teacher, score={},
        train={"loss": "MarginMSELoss", "args": {**TRAIN_ARGS, "seed": cli.seed}, "scaling": {"num_workers": 1}},
    )})
    seconds["round 1 + MarginMSE (pipeline)"] = distilled["seconds"]
    models["round 1 + MarginMSE"] = os.path.join(work, "marginmse", "round-1", "train", "final")

    base_train = {"model": {"name": cli.model, "max_seq_length": cli.max_seq_length}, "loss": "MultipleNegativesRankingLoss",
                  "scaling": {"num_workers": 1}}
    inbatch = child("raytune", {"config": {**base_train, "train_datasets": {"pairs": {"data": {"path": pairs}}},
                                           "args": {**TRAIN_ARGS, "seed": cli.seed, "output_dir": os.path.join(work, "in-batch")}}})
    seconds["in-batch (train job)"] = inbatch["seconds"]
    models["in-batch"] = inbatch["model"]
    mined = os.path.join(work, "rounds", "round-1", "mine")
    reference = child("st", {"data": mined, "model": cli.model, "max_seq_length": cli.max_seq_length, "seed": cli.seed, "dir": work})
    seconds["ST on round 1 (SentenceTransformerTrainer)"] = reference["seconds"]
    models["ST on round 1"] = reference["model"]
    seeds = [int(s) for s in cli.seeds.split(",") if s]
    for seed in seeds:
        if seed == cli.seed:
            models[f"round 1 seed {seed}"] = models["round 1"]
            continue
        run = child("raytune", {"config": {**base_train, "train_datasets": {"mined": {"data": {"path": mined, "format": "parquet"}}},
                                           "args": {**TRAIN_ARGS, "seed": seed, "output_dir": os.path.join(work, f"seed-{seed}")}}})
        models[f"round 1 seed {seed}"] = run["model"]

    found = child("evaluate", {"models": models, "distractors": paths["distractors"], "max_seq_length": cli.max_seq_length})
    scores = found["scores"]
    print(f"\n{found['queries']:,} dev queries against {found['corpus']:,} passages; {cli.pairs:,} training pairs\n")
    print("| variant | NDCG@10 | MRR@10 | R@10 |\n|---|---|---|---|")
    for label, values in scores.items():
        print(f"| {label} | {values['ndcg@10']:.4f} | {values['mrr@10']:.4f} | {values['recall@10']:.4f} |")
    noise_runs = [scores[f"round 1 seed {s}"]["ndcg@10"] for s in seeds]
    noise = max(noise_runs) - min(noise_runs) if len(noise_runs) > 1 else 0.0
    variants = ("round 1", "round 2", "round 1 + denoise", "round 1 + MarginMSE")
    best = max(variants, key=lambda v: scores[v]["ndcg@10"])
    gain = scores[best]["ndcg@10"] - scores["in-batch"]["ndcg@10"]
    print(f"\nnoise (NDCG@10 spread of round 1 over seeds {seeds}): {noise:.4f}; mean {statistics.mean(noise_runs):.4f}")
    print(f"best pipeline variant: {best}, {gain:+.4f} NDCG@10 over in-batch (target >= +0.01): {'met' if gain >= 0.01 else 'NOT met'}")
    drift = scores["round 2"]["ndcg@10"] - scores["round 1"]["ndcg@10"]
    print(f"round 2 - round 1: {drift:+.4f} (target >= -noise = {-noise:.4f}): {'met' if drift >= -noise else 'NOT met'}")
    print("\nseconds: " + json.dumps({k: round(v, 1) for k, v in seconds.items()}))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
