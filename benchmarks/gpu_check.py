"""The GPU paths of raytune_st, proven on one GPU in one run (under 8 minutes on one H200).

Prints one line per check, PASS / FAIL / SKIP with its figure, and writes a JSON summary:

1. embed: the embedding actor's code (``ChunkEmbedder.embed``) against a plain ``model.encode``
   of the same Debian passages on the same device, at max_seq_length 128, with float32 and with
   float16 weights (``model.dtype``): the vectors agree, and throughput is at least 0.9x.
2. faiss: an ``IndexShard`` with ``use_gpu`` over 200,000 vectors, ``Flat`` then
   ``IVF1024,Flat`` (nprobe 16), 20,000 queries: the Flat neighbours equal CPU faiss' up to ties,
   the IVF recall against the Flat truth is CPU faiss', both timed; faiss-gpu refuses k > 2048
   and the mine config refuses a range_max that would ask for it, before any work.
3. mine: ``raytune_st.mine`` on 20,000 Debian pairs, embedding actor and index shard on the GPU,
   against sentence-transformers' ``mine_hard_negatives(use_faiss=True)`` with the model on the
   same GPU: rows agree (at least 99.5%, ties counted apart) and the wall time is at most 1.0x.
4. train: without Ray, the loop's own loss step (collate, autocast, gradient scaler) on the
   device; with Ray, one Train worker, MultipleNegativesRankingLoss, batch 64, 100 steps, fp16
   (scaler) then bf16: every loss finite, the scaler's state in the step-50 checkpoint, a run
   started from that checkpoint repeats the steps after it; steady samples/s against
   SentenceTransformerTrainer on the same GPU (at least 0.95x) and both peaks of GPU memory.
5. several GPU workers: two Tune trials at GPU 0.5 each, run at once. DDP over NCCL needs a
   GPU per rank: with one GPU it is reported as not proven, never faked.

Ray and faiss are optional: a check that needs one that is missing is SKIP, naming it (install
the wheels first: ``pip install ray faiss-gpu-cu12``). With a faiss that has no GPU support
(faiss-cpu, or faiss-gpu-cu12 without CUDA 12's cuBLAS) the GPU index is SKIP as not proven and
both miners of check 3 search on the CPU.

    python benchmarks/gpu_check.py --summary gpu-check.json              # on a GPU machine
    python benchmarks/gpu_check.py --dry-run --summary gpu-dry-run.json  # on CPU

``--dry-run`` runs every code path on the CPU with a tiny random BERT and toy sizes: what does
not depend on the device (agreement, finite losses, the scaler's checkpoint, resume, the
guards) still passes or fails; the speed targets and GPU-only checks are SKIP. ``make test``
runs it (``tests/test_benchmarks.py``), so the script cannot rot. The exit status is 1 when any
check failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data" / "debian-train.parquet"
DEFAULT_DATA = SHARED_DATA if SHARED_DATA.exists() else ROOT / "examples" / "data" / "debian-train-sample.parquet"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DRY_SLOT = "gpu_check_slot"  # the dry run's stand-in for the one GPU that two trials share


@dataclass(frozen=True)
class Sizes:
    passages: int  # texts embedded by check 1
    vectors: int  # corpus of check 2
    queries: int  # queries of check 2
    k: int  # neighbours searched in check 2
    ivf: str  # the IVF factory of check 2
    nprobe: int
    pairs: int  # pairs mined by check 3
    steps: int  # optimizer steps of check 4
    batch: int  # training batch of check 4
    encode_batch: int


GPU_SIZES = Sizes(20_000, 200_000, 20_000, 100, "IVF1024,Flat", 16, 20_000, 100, 64, 128)
DRY_SIZES = Sizes(256, 4_000, 200, 10, "IVF16,Flat", 4, 300, 6, 8, 16)


# --- reporting --------------------------------------------------------------------------------


class Report:
    """One line per result, kept for the JSON summary."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.results: list[dict[str, Any]] = []

    def add(self, check: str, status: str, detail: str, **figures: Any) -> None:
        print(f"{status:4}  {check:32} {detail}", flush=True)
        self.results.append({"check": check, "status": status, "detail": detail, **figures})

    def judge(self, check: str, ok: bool, detail: str, **figures: Any) -> None:
        """A device-independent fact: PASS or FAIL in a dry run too."""
        self.add(check, "PASS" if ok else "FAIL", detail, **figures)

    def target(self, check: str, value: float, goal: float, detail: str, *, at_most: bool = False, **figures: Any) -> None:
        """A speed figure against its target: SKIP in a dry run (a CPU figure proves nothing about a GPU)."""
        met = value <= goal if at_most else value >= goal
        line = f"{value:.2f}x (target {'<=' if at_most else '>='} {goal}x): {detail}"
        if self.dry_run:
            self.add(check, "SKIP", f"dry run on CPU, figure not judged: {line}", value=value, **figures)
        else:
            self.add(check, "PASS" if met else "FAIL", line, value=value, goal=goal, **figures)

    def skip(self, check: str, why: str) -> None:
        self.add(check, "SKIP", why)

    def run(self, check: str, body: Callable[[], None]) -> None:
        """Run one check; an exception is its FAIL line, and the other checks still run."""
        try:
            body()
        except Exception as exc:  # a check that crashes is a finding, not the end of the run
            traceback.print_exc()
            self.add(check, "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")

    @property
    def failed(self) -> list[str]:
        return [r["check"] for r in self.results if r["status"] == "FAIL"]


@dataclass
class Context:
    device: str
    gpus: int
    sizes: Sizes
    model: str
    data: str
    workdir: Path

    def pairs(self, n: int):
        """The first `n` (query, passage) pairs; beyond the data, copy k has " (k)" appended to both."""
        import pandas as pd

        data = pd.read_parquet(self.data, columns=["query", "passage"])
        copies = [data if k == 0 else data.apply(lambda column: column + f" ({k})") for k in range(-(-n // len(data)))]
        return pd.concat(copies, ignore_index=True).iloc[:n]


def _median_seconds(runs: list[Callable[[], Any]], repeats: int) -> list[float]:
    """Each callable's median wall seconds over `repeats` alternating rounds (A B A B ...)."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for i, run in enumerate(runs):
            began = time.perf_counter()
            run()
            times[i].append(time.perf_counter() - began)
    return [statistics.median(t) for t in times]


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# --- 1. embedding ---------------------------------------------------------------------------------


def check_embed(report: Report, ctx: Context) -> None:
    import pyarrow as pa

    from raytune_st.mining import store
    from raytune_st.mining.embed import ChunkEmbedder, ChunkJob, EmbedSpec, EmbedUnit
    from raytune_st.models.config import ModelConfig

    texts = list(dict.fromkeys(ctx.pairs(ctx.sizes.passages * 2)["passage"]))[: ctx.sizes.passages]
    chunk_rows = 512
    jobs = []
    for i, start in enumerate(range(0, len(texts), chunk_rows)):
        path = str(ctx.workdir / "embed" / f"texts-{i}.parquet")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        chunk = texts[start : start + chunk_rows]
        store.write_parquet(path, pa.table({"text": chunk}))
        jobs.append(ChunkJob(path, str(ctx.workdir / "embed" / f"vectors-{i}.npz"), start, len(chunk), len(chunk)))
    unit = EmbedUnit(EmbedSpec("corpus", None, None), tuple(jobs))
    batch = ctx.sizes.encode_batch
    for dtype, tolerance in (("float32", 1e-4), ("float16", 2e-2)):
        config = ModelConfig(name=ctx.model, max_seq_length=128, dtype=dtype)
        actor = ChunkEmbedder(config, batch_size=batch, dtype="float32")  # the actor's constructor: device, dtype
        plain = config.load(device=ctx.device)
        reference: dict[str, np.ndarray] = {}

        def encode() -> None:
            reference["v"] = plain.encode_document(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
            _sync(ctx.device)

        def embed() -> None:
            actor.embed(unit)
            _sync(ctx.device)

        encode(), embed()  # warm-up: CUDA kernels, allocator, tokenizer caches
        encode_s, embed_s = _median_seconds([encode, embed], repeats=2)
        ours = np.concatenate([store.load_vectors(job.out) for job in jobs])
        gap = float(np.abs(ours.astype(np.float32) - reference["v"].astype(np.float32)).max())
        report.judge(f"embed {dtype}: vectors", gap <= tolerance, f"largest difference to model.encode {gap:.2e} (tolerance {tolerance})")
        report.target(
            f"embed {dtype}: throughput",
            encode_s / embed_s,
            0.9,
            f"actor {len(texts) / embed_s:,.0f} texts/s, model.encode {len(texts) / encode_s:,.0f} texts/s on {ctx.device}",
            actor_texts_per_s=len(texts) / embed_s,
            encode_texts_per_s=len(texts) / encode_s,
        )


# --- 2. faiss ---------------------------------------------------------------------------------------


def _clustered_vectors(rng: np.random.Generator, n: int, dim: int, centers: np.ndarray) -> np.ndarray:
    """Unit vectors around random centres, so that an IVF index has structure to find."""
    points = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32) / math.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def neighbour_agreement(vectors: np.ndarray, queries: np.ndarray, ids_a: np.ndarray, ids_b: np.ndarray, tol: float = 1e-5) -> dict:
    """Rows whose neighbour ids are identical; a differing position whose two candidates score within
    `tol` of each other (exact inner products) is a tie, and a row with only ties is identical up to ties."""
    identical = (ids_a == ids_b).all(axis=1)
    ties_only = identical.copy()
    for row in np.flatnonzero(~identical):
        diff = ids_a[row] != ids_b[row]
        scores_a = vectors[ids_a[row][diff]] @ queries[row]
        scores_b = vectors[ids_b[row][diff]] @ queries[row]
        ties_only[row] = bool(np.all(np.abs(np.sort(scores_a) - np.sort(scores_b)) <= tol))
    n = len(ids_a)
    return {"identical": float(identical.sum() / n), "identical_up_to_ties": float(ties_only.sum() / n)}


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    """Share of the true top-k ids that `found` holds, over all queries."""
    return float(np.mean([len(set(t) & set(f)) / len(t) for t, f in zip(truth, found)]))


def faiss_has_gpu() -> bool:
    import faiss

    return (faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0) > 0


def check_faiss(report: Report, ctx: Context) -> None:
    if importlib.util.find_spec("faiss") is None:
        report.skip("faiss", "faiss is not installed (pip install faiss-gpu-cu12, or faiss-cpu for the dry run)")
        return
    import pyarrow as pa

    from raytune_st.mining import store
    from raytune_st.mining.index import IndexShard

    sizes = ctx.sizes
    if ctx.device == "cuda" and not faiss_has_gpu():
        # An environment's limit, not a finding about raytune_st: the CPU shard is proven by the
        # test suite, so on a GPU machine only the config guard runs.
        report.skip("faiss gpu", "not proven: this faiss has no GPU support (install faiss-gpu-cu12, which needs CUDA 12's cuBLAS)")
        _check_k_guard(report, ctx)
        return
    on_gpu = ctx.device == "cuda"

    # The corpus as the mining job leaves it: sealed embedding chunks and text chunks.
    rng = np.random.default_rng(0)
    dim, chunk_rows = 384, 50_000
    centers = rng.standard_normal((max(sizes.vectors // 200, 4), dim)).astype(np.float32)
    vectors = _clustered_vectors(rng, sizes.vectors, dim, centers)
    queries = _clustered_vectors(rng, sizes.queries, dim, centers)
    paths, text_paths = [], []
    for i, start in enumerate(range(0, sizes.vectors, chunk_rows)):
        part = vectors[start : start + chunk_rows]
        paths.append(str(ctx.workdir / "faiss" / f"emb-{i}.npz"))
        text_paths.append(str(ctx.workdir / "faiss" / f"texts-{i}.parquet"))
        os.makedirs(os.path.dirname(paths[-1]), exist_ok=True)
        store.put(paths[-1], store.sealed_npz_bytes(ids=np.arange(start, start + len(part), dtype=np.int64), embeddings=part))
        store.write_parquet(text_paths[-1], pa.table({"text": [f"passage {j}" for j in range(start, start + len(part))]}))
    embeddings = store.Chunked(tuple(paths), chunk_rows, sizes.vectors)
    texts = store.Chunked(tuple(text_paths), chunk_rows, sizes.vectors)
    threads = os.cpu_count() or 1

    def shard(factory: str, gpu: bool, nprobe: Optional[int] = None) -> tuple[Any, float, float, np.ndarray]:
        index = IndexShard(0, sizes.vectors, embeddings, texts, factory, 100_000, nprobe, None, gpu, threads)
        built = index.build()
        began = time.perf_counter()
        _, ids = index.search(queries, sizes.k)
        return index, built["seconds"], time.perf_counter() - began, ids

    cpu_flat, cpu_build, cpu_search, truth = shard("Flat", False)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, : sizes.k] if sizes.vectors <= 20_000 else None
    if exact is not None:  # the dry run also proves the CPU shard against numpy
        agree = neighbour_agreement(vectors, queries, truth, exact)
        report.judge("faiss Flat cpu: exact", agree["identical_up_to_ties"] == 1.0, f"{agree['identical_up_to_ties']:.2%} of rows equal numpy's top-{sizes.k} up to ties")
    if on_gpu:
        gpu_flat, gpu_build, gpu_search, found = shard("Flat", True)
        agree = neighbour_agreement(vectors, queries, truth, found)
        report.judge(
            "faiss Flat gpu: neighbours",
            agree["identical_up_to_ties"] == 1.0,
            f"{agree['identical']:.2%} of {sizes.queries:,} rows identical to CPU faiss, {agree['identical_up_to_ties']:.2%} up to ties",
            **agree,
        )
        report.target(
            "faiss Flat gpu: search speed",
            cpu_search / gpu_search,
            1.0,
            f"{sizes.queries:,} queries x {sizes.vectors:,} vectors, top-{sizes.k}: GPU {gpu_search:.3f} s, CPU ({threads} threads) {cpu_search:.3f} s; build {gpu_build:.2f} s vs {cpu_build:.2f} s",
        )
        # faiss-gpu's own limit, which the mine config keeps every search under.
        gpu_flat.search(queries[:2], 2048)
        try:
            gpu_flat.index.search(queries[:2], 2049)
            refused = False
        except (RuntimeError, AssertionError):
            refused = True
        report.judge("faiss gpu: k limit", refused, "k=2048 searched; k=2049 " + ("refused by faiss-gpu" if refused else "accepted: the guard may be lifted"))
        del gpu_flat
    else:
        report.skip("faiss Flat gpu: neighbours", "no GPU: CPU shard only")

    _, ivf_cpu_build, ivf_cpu_search, ivf_cpu = shard(sizes.ivf, False, sizes.nprobe)
    cpu_recall = recall(truth, ivf_cpu)
    if on_gpu:
        _, ivf_gpu_build, ivf_gpu_search, ivf_gpu = shard(sizes.ivf, True, sizes.nprobe)
        gpu_recall = recall(truth, ivf_gpu)
        report.judge(
            f"faiss {sizes.ivf} gpu: recall",
            gpu_recall >= cpu_recall - 0.005,
            f"recall@{sizes.k} at nprobe {sizes.nprobe}: GPU {gpu_recall:.4f}, CPU {cpu_recall:.4f}; search GPU {ivf_gpu_search:.3f} s, CPU {ivf_cpu_search:.3f} s",
            gpu_recall=gpu_recall,
            cpu_recall=cpu_recall,
        )
    else:
        report.judge(f"faiss {sizes.ivf} cpu: recall", cpu_recall > 0.5, f"recall@{sizes.k} at nprobe {sizes.nprobe}: {cpu_recall:.4f} (no GPU to compare)")
    _check_k_guard(report, ctx)


def _check_k_guard(report: Report, ctx: Context) -> None:
    """The mine config refuses, before any work, a range_max that would ask a GPU index for more than 2048."""
    from raytune_st.config import build
    from raytune_st.errors import ConfigError
    from raytune_st.mining.config import MineConfig

    base = {"model": ctx.model, "dataset": {"path": ctx.data}, "output": {"path": str(ctx.workdir / "never")}, "index": {"num_gpus": 1}}
    build(MineConfig, {**base, "mine": {"range_max": 2046}})
    try:
        build(MineConfig, {**base, "mine": {"range_max": 2047}})
        message = None
    except ConfigError as exc:
        message = str(exc)
    report.judge("mine config: k <= 2048 guard", message is not None and "2048" in message, f"range_max 2046 accepted, 2047 refused: {message}")


# --- 3. mining end to end ---------------------------------------------------------------------------


MINE_SETTINGS = dict(num_negatives=5, range_min=2, range_max=40, relative_margin=0.05)
# The tiny random model ranks most passages above the positive, so a margin leaves no negative.
DRY_MINE_SETTINGS = dict(num_negatives=3, range_min=0, range_max=20)


def check_mine(report: Report, ctx: Context) -> None:
    import datasets
    from sentence_transformers.util import mine_hard_negatives

    import raytune_st
    from raytune_st.models import load_bi_encoder

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mine_vs_st import agreement

    sizes = ctx.sizes
    settings = MINE_SETTINGS if ctx.device == "cuda" else DRY_MINE_SETTINGS
    pairs_path = str(ctx.workdir / "mine-pairs.parquet")
    ctx.pairs(sizes.pairs).to_parquet(pairs_path, index=False)
    st_out = str(ctx.workdir / "mine-st.parquet")

    began = time.perf_counter()
    model = load_bi_encoder(ctx.model, device=ctx.device, max_seq_length=128)
    result = mine_hard_negatives(
        datasets.Dataset.from_parquet(pairs_path), model, **settings, sampling_strategy="top", output_format="triplet",
        output_scores=True, batch_size=sizes.encode_batch, use_faiss=True, verbose=False,
    )
    st_wall = time.perf_counter() - began
    result.to_pandas().to_parquet(st_out, index=False)
    del model, result

    gpu = ctx.device == "cuda"
    index_gpu = gpu and faiss_has_gpu()  # sentence-transformers' faiss search runs where this faiss can
    began = time.perf_counter()
    summary = raytune_st.mine(
        {
            "model": {"name": ctx.model, "max_seq_length": 128},
            "dataset": {"path": pairs_path},
            "mine": {**settings, "output_scores": True, "batch_size": sizes.encode_batch},
            # One GPU: one embedding actor and the index shard share it (the shard where faiss can).
            "compute": {"embed_actors_max": 1, "embed_num_gpus": 0.5 if gpu else 0, "embed_chunk_rows": 2048},
            "index": {"num_gpus": 0.25 if index_gpu else 0},
            "output": {"path": str(ctx.workdir / "mine-ours")},
        }
    )
    our_wall = time.perf_counter() - began
    rows = agreement(st_out, str(ctx.workdir / "mine-ours"))
    report.judge(
        "mine: rows agree",
        rows["agreement_with_ties"] >= 0.995,
        f"{rows['agreement']:.2%} of {rows['rows']:,} rows identical to mine_hard_negatives, {rows['agreement_with_ties']:.2%} with ties",
        **rows,
    )
    report.target(
        "mine: wall time",
        our_wall / st_wall,
        1.0,
        f"raytune_st {our_wall:.1f} s (Ray already up; stages {summary['seconds']}) vs mine_hard_negatives {st_wall:.1f} s "
        f"(model load included), {sizes.pairs:,} pairs on {ctx.device}, index on {'the GPU' if index_gpu else 'the CPU'}",
        at_most=True,
        raytune_s=our_wall,
        st_s=st_wall,
    )


# --- 4. training --------------------------------------------------------------------------------------


def check_loss_step(report: Report, ctx: Context) -> None:
    """The loop's loss step (sentence-transformers' collator, autocast) with a gradient scaler, no Ray."""
    import torch

    from raytune_st.config import build
    from raytune_st.losses.build import build_loss
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.loop import WorkerContext, make_collator
    from raytune_st.train.world import LocalWorld, shard_name

    rows = ctx.pairs(ctx.sizes.batch * 3).to_dict("records")
    for amp in ("fp16", "bf16"):
        config = build(TrainConfig, _train_config(ctx, "loss-step", amp, steps=3))
        model = config.model.load(device=ctx.device)
        amp_dtype = torch.float16 if amp == "fp16" else torch.bfloat16
        world = LocalWorld({}, storage="", device=torch.device(ctx.device))
        worker = WorkerContext(config, {shard_name("train", "pairs"): ["query", "passage"]}, world, amp_dtype)
        worker.collator = make_collator(model, None, False)  # as the loop's setup() builds it
        loss_fn = build_loss("MultipleNegativesRankingLoss", {}, model, "bi_encoder")
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
        scaler = torch.amp.GradScaler(ctx.device, enabled=amp == "fp16")
        losses = []
        for step in range(3):
            batch = rows[step * ctx.sizes.batch : (step + 1) * ctx.sizes.batch]
            loss = worker.loss_step(loss_fn, batch, ["query", "passage"], "pairs")
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        scaled = amp != "fp16" or "scale" in scaler.state_dict()
        report.judge(
            f"train {amp}: loss step (no Ray)",
            all(math.isfinite(v) for v in losses) and scaled,
            f"3 steps on {ctx.device}, losses {', '.join(f'{v:.4f}' for v in losses)}" + (f", scale {scaler.get_scale():g}" if amp == "fp16" else ""),
        )


def _train_config(ctx: Context, name: str, amp: str, *, steps: int, workers: int = 1, gpu_share: float = 1.0) -> dict:
    sizes = ctx.sizes
    gpu = ctx.device == "cuda"
    return {
        "model": {"name": ctx.model, "max_seq_length": 128},
        "train_datasets": {"pairs": {"data": {"path": str(ctx.workdir / "train-pairs.parquet"), "columns": ["query", "passage"]}}},
        "loss": "MultipleNegativesRankingLoss",
        "args": {
            "output_dir": str(ctx.workdir / name),
            "max_steps": steps,
            "per_device_train_batch_size": sizes.batch,
            "learning_rate": 2e-5,
            "batch_sampler": "no_duplicates",
            "save_strategy": "steps",
            "save_steps": steps // 2,
            "logging_steps": 1,
            "seed": 42,
            amp: True,
        },
        "scaling": {"num_workers": workers, "use_gpu": gpu, "resources_per_worker": {"CPU": 1, **({"GPU": gpu_share} if gpu else {})}},
        "run": {"name": name},
        "stream": {"shuffle_buffer_size": 0},
    }


def _history(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def _steady_samples_per_s(history: list[dict], batch: int) -> float:
    """Steps 2..N: each record's samples/s is cumulative since the loop started (elapsed = samples / rate)."""
    elapsed = {r["step"]: r["step"] * batch / r["train_samples_per_second"] for r in history if r.get("train_samples_per_second")}
    first, last = min(elapsed), max(elapsed)
    return (last - first) * batch / (elapsed[last] - elapsed[first])


def _st_trainer(ctx: Context, amp: str, steps: int) -> tuple[float, Optional[float]]:
    """SentenceTransformerTrainer's steady samples/s and peak GPU memory (MiB) with the same settings."""
    import datasets
    import pandas as pd
    import torch
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from raytune_st.models import load_bi_encoder

    model = load_bi_encoder(ctx.model, device=ctx.device, max_seq_length=128)
    frame = pd.read_parquet(ctx.workdir / "train-pairs.parquet")
    args = SentenceTransformerTrainingArguments(
        output_dir=str(ctx.workdir / f"st-{amp}"), max_steps=steps, per_device_train_batch_size=ctx.sizes.batch,
        learning_rate=2e-5, batch_sampler="no_duplicates", save_strategy="no", logging_steps=steps, report_to="none",
        seed=42, use_cpu=ctx.device == "cpu", **{amp: True},
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_pandas(frame, preserve_index=False),
        loss=MultipleNegativesRankingLoss(model),
    )
    ends: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, *_, **__):
            _sync(ctx.device)
            ends.append(time.perf_counter())

    trainer.add_callback(StepClock())
    if ctx.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**20 if ctx.device == "cuda" else None
    del trainer, model
    return (steps - 1) * ctx.sizes.batch / (ends[-1] - ends[0]), peak


def check_train(report: Report, ctx: Context) -> None:
    import ray.train

    from raytune_st.config import build
    from raytune_st.train.checkpointing import read_checkpoint
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.job import fit_and_write, plan_run, train

    steps = ctx.sizes.steps
    for amp in ("fp16", "bf16"):
        # A: the whole run. B: a new run started from A's middle checkpoint.
        config = build(TrainConfig, _train_config(ctx, f"train-{amp}-a", amp, steps=steps))
        train(config)
        whole = _history(config.args.output_dir)
        losses = [r["loss"] for r in whole if "loss" in r]
        report.judge(
            f"train {amp}: losses finite",
            len(losses) == steps and all(math.isfinite(v) for v in losses),
            f"{len(losses)} of {steps} steps logged on {ctx.device}, first {losses[0]:.4f}, last {losses[-1]:.4f}",
        )
        middle = os.path.join(config.args.output_dir, "ray", config.run.name, f"checkpoint-{steps // 2:06d}")
        state = read_checkpoint(middle)
        if amp == "fp16":
            report.judge(
                "train fp16: scaler checkpointed",
                bool(state.scaler) and "scale" in state.scaler,
                f"step-{steps // 2} checkpoint's scaler state: {sorted(state.scaler or {})}",
            )
        resumed_config = build(TrainConfig, _train_config(ctx, f"train-{amp}-b", amp, steps=steps))
        fit_and_write(resumed_config, plan_run(resumed_config), initial_checkpoint=ray.train.Checkpoint.from_directory(middle))
        again = _history(resumed_config.args.output_dir)
        after = [(a["loss"], b["loss"]) for a, b in zip(whole, again) if a["step"] > steps // 2]
        gap = max(abs(a - b) / max(abs(a), 1e-8) for a, b in after)
        resumed_from = next((r.get("resumed_from_step") for r in again if "resumed_from_step" in r), None)
        # CUDA kernels are not bitwise deterministic; on CPU the steps repeat exactly.
        report.judge(
            f"train {amp}: resume",
            resumed_from == steps // 2 and gap <= (1e-2 if ctx.device == "cuda" else 0.0),
            f"resumed from step {resumed_from}; steps {steps // 2 + 1}-{steps} repeat the whole run's losses to {gap:.1e} (relative)",
        )
        st_rate, st_peak = _st_trainer(ctx, amp, steps)
        ours = _steady_samples_per_s(whole, ctx.sizes.batch)
        peak = whole[-1].get("gpu_memory_peak_mib")
        report.target(
            f"train {amp}: steady samples/s",
            ours / st_rate,
            0.95,
            f"raytune_st {ours:.1f} samples/s vs SentenceTransformerTrainer {st_rate:.1f}; peak GPU memory "
            + (f"{peak:,.0f} MiB vs {st_peak:,.0f} MiB" if peak and st_peak else "not measured (no GPU)"),
            ours=ours,
            sentence_transformers=st_rate,
            gpu_memory_peak_mib=peak,
            st_gpu_memory_peak_mib=st_peak,
        )


# --- 5. several GPU workers -------------------------------------------------------------------------


def _least_available(key: str, stop: threading.Event, seen: list[float]) -> None:
    """Sample how much of resource `key` is free, until `stop`."""
    import ray

    while not stop.wait(0.2):
        seen.append(ray.available_resources().get(key, 0.0))


def check_several_workers(report: Report, ctx: Context) -> None:
    import raytune_st

    steps = 4
    share = 0.5
    config = _train_config(ctx, "tune", "fp16", steps=steps, gpu_share=share)
    # Both trials held their share at once when the free amount of the resource fell to 0. The dry
    # run asks for half a CPU and a share of a resource of its own (Ray Data's tasks use CPUs too).
    key = "GPU" if ctx.device == "cuda" else DRY_SLOT
    if ctx.device != "cuda":
        config["scaling"]["resources_per_worker"] = {"CPU": 0.5, DRY_SLOT: share}
    config["args"].update(save_strategy="no")
    config["search"] = {"space": {"args.learning_rate": {"choice": [2e-5, 5e-5]}}, "num_samples": 1, "search_alg": "grid", "name": "gpu-check"}
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_least_available, args=(key, stop, seen), daemon=True)
    watcher.start()
    try:
        result = raytune_st.tune(config)
    finally:
        stop.set()
        watcher.join()
    finished = [t for t in result["trials"] if t["stop_reason"] == "completed"]
    least = min(seen, default=1.0)
    report.judge(
        "tune: two trials at once",
        len(finished) == 2 and least <= 1e-9,
        f"{len(finished)} of 2 trials completed at {key} {share} each; least {key} free while they ran: {least:g} of 1",
    )
    if ctx.gpus >= 2:
        ddp = _train_config(ctx, "ddp", "bf16", steps=steps, workers=2)
        ddp["args"].update(save_strategy="no")
        metrics = raytune_st.train(ddp)
        report.judge("train: DDP over NCCL", metrics.get("step") == steps, f"2 ranks, one GPU each: {metrics.get('step')} of {steps} steps")
    else:
        report.skip("train: DDP over NCCL", f"not proven: NCCL needs one GPU per rank and this machine has {ctx.gpus}")


# --- the run ----------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random model, toy sizes; speed targets not judged")
    parser.add_argument("--summary", default="gpu-check.json", help="where to write the JSON summary")
    parser.add_argument("--model", default=MINILM, help="the model (default all-MiniLM-L6-v2; the dry run builds a tiny one)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="(query, passage) pairs, parquet")
    parser.add_argument("--only", nargs="*", default=None, help="run only these checks: embed faiss mine train workers")
    cli = parser.parse_args(argv)

    import torch

    if not cli.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device here; run with --dry-run to exercise the checks on CPU")
    began = time.perf_counter()
    report = Report(cli.dry_run)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        model = cli.model
        if cli.dry_run:
            from raytune_st.testing import save_tiny_bi_encoder

            model = save_tiny_bi_encoder(os.path.join(workdir, "tiny"), max_seq_length=128)
        device = "cpu" if cli.dry_run else "cuda"
        ctx = Context(device, torch.cuda.device_count() if device == "cuda" else 0, DRY_SIZES if cli.dry_run else GPU_SIZES, model, cli.data, Path(workdir))
        ctx.pairs(ctx.sizes.batch * (ctx.sizes.steps + 4)).to_parquet(ctx.workdir / "train-pairs.parquet", index=False)
        gpu_name = torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run)"
        print(f"gpu_check: device {device}, GPU {gpu_name}, torch {torch.__version__}, sizes {asdict(ctx.sizes)}", flush=True)
        wanted = set(cli.only or ("embed", "faiss", "mine", "train", "workers"))

        if "embed" in wanted:
            report.run("embed", lambda: check_embed(report, ctx))
        if "faiss" in wanted:
            report.run("faiss", lambda: check_faiss(report, ctx))
        if "train" in wanted:
            report.run("train: loss step", lambda: check_loss_step(report, ctx))
        ray_checks = [(name, check) for name, check in (("mine", check_mine), ("train", check_train), ("workers", check_several_workers)) if name in wanted]
        try:
            import ray
        except ImportError:
            for name, _ in ray_checks:
                report.skip(name, "Ray is not installed here (pip install 'ray[data,train,tune]')")
            ray_checks = []
        if ray_checks:
            from raytune_st.runtime import worker_env

            # Workers' output stays in Ray's log files: the console is this script's lines. The
            # workers get the environment a job gives them (Ray Train's 0.1 s poll among it).
            ray.init(
                num_cpus=os.cpu_count(), num_gpus=ctx.gpus, resources={DRY_SLOT: 1} if cli.dry_run else None,
                include_dashboard=False, logging_level="ERROR", log_to_driver=False, runtime_env={"env_vars": worker_env(local=True)},
            )
            try:
                for name, check in ray_checks:
                    if name == "mine" and importlib.util.find_spec("faiss") is None:
                        report.skip("mine", "faiss is not installed")
                        continue
                    report.run(name, lambda check=check: check(report, ctx))
            finally:
                ray.shutdown()

    seconds = time.perf_counter() - began
    summary = {
        "device": device,
        "gpu": gpu_name,
        "dry_run": cli.dry_run,
        "seconds": round(seconds, 1),
        "sizes": asdict(ctx.sizes),
        "results": report.results,
        "failed": report.failed,
    }
    with open(cli.summary, "w") as handle:
        json.dump(summary, handle, indent=2)
    counts = {status: sum(r["status"] == status for r in report.results) for status in ("PASS", "FAIL", "SKIP")}
    print(f"gpu_check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {seconds:.0f} s; summary in {cli.summary}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
