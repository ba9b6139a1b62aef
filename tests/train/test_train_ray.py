"""The train job through a real local Ray (one session for the module): two CPU workers with
uneven shards, outputs, a worker killed mid-run, and every shipped example at a few steps."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
import pytest

from train_fixtures import DEBIAN_DEV, REPO

pytestmark = pytest.mark.ray

# The machine running the tests may have 2 cores: half a CPU per worker leaves one for Ray Data.
HALF_CPU = "scaling.resources_per_worker={CPU: 0.5}"


@pytest.fixture(scope="module")
def ray_local(ray_init_options):
    import ray
    import ray.cloudpickle

    ray.init(**ray_init_options, log_to_driver=False, logging_level="ERROR")
    # The UnevenShards DataConfig below runs in Ray's train controller, which cannot import this module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def load(example: str, overrides: list[str]):
    from raytune_st.cli import load_job_config

    return load_job_config("train", os.path.join(REPO, "examples", "configs", example), overrides)


def make_uneven_shards(rows_per_worker: list[int]):
    """A DataConfig whose training shards hold different numbers of rows (worker i: rows_per_worker[i])."""
    import ray.train

    class UnevenShards(ray.train.DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                for rank in range(world_size):
                    if name.startswith("train_"):
                        output[rank][name] = ds.limit(rows_per_worker[rank]).iterator()
                    else:
                        output[rank][name] = ds.iterator()
            return output

    return UnevenShards()


def training_without_evaluation(tiny_bi_encoder, debian_sets, out, overrides: list[str]):
    """The MNRL example on the tiny model and the triplets, with every checkpoint kept and no evaluation."""
    return load("train-mnrl-debian.yaml", without_evaluation(tiny_bi_encoder, debian_sets, out, overrides))


def without_evaluation(tiny_bi_encoder, debian_sets, out, overrides: list[str]) -> list[str]:
    """training_without_evaluation's overrides of train-mnrl-debian.yaml."""
    return [
        f"model={tiny_bi_encoder}",
        f"train_datasets.mined.data.path={debian_sets['triplets']}",
        "evaluators=[]",
        "args.eval_strategy=no",
        "args.eval_steps=null",
        "args.load_best_model_at_end=false",
        "args.metric_for_best_model=null",
        f"args.output_dir={out}",
        "args.per_device_train_batch_size=4",
        "args.save_total_limit=null",
        HALF_CPU,
        *overrides,
    ]


def read_jsonl(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_two_workers_with_uneven_shards_run_the_same_steps_and_write_every_output(
    ray_local, tmp_path, tiny_bi_encoder, debian_sets
):
    from sentence_transformers import SentenceTransformer

    from raytune_st.train.job import train

    out = tmp_path / "out"
    config = load(
        "train-mnrl-debian.yaml",
        [
            f"model={tiny_bi_encoder}",
            f"train_datasets.mined.data.path={debian_sets['triplets']}",
            f"evaluators=[{{type: InformationRetrievalEvaluator, name: dev, data: {{path: {DEBIAN_DEV}, columns: [query, passage], limit: 60}}}}]",
            "args.metric_for_best_model=dev_cosine_ndcg@10",
            f"eval_datasets.dev={{data: {{path: {debian_sets['triplets']}, limit: 40}}}}",
            f"args.output_dir={out}",
            "args.per_device_train_batch_size=8",
            "args.max_steps=16",
            "args.logging_steps=4",
            "args.eval_steps=8",
            "args.save_steps=8",
            "args.save_total_limit=1",
            "scaling.num_workers=2",
            HALF_CPU,
        ],
    )
    # Worker 1 holds 60 rows (7 batches of 8): it must pad, never stop early.
    metrics = train(config, dataset_config=make_uneven_shards([400, 60]))

    history = read_jsonl(out / "metrics.jsonl")
    # The run's last record, not `metrics`: with load_best_model_at_end those are the best
    # checkpoint's, which may be an earlier step than the last.
    last = history[-1]
    assert last["worker_steps_min"] == last["worker_steps_max"] == 16
    assert last["padded_batches"] >= 9
    assert metrics["step"] in (8, 16)
    assert [r["step"] for r in history] == [4, 8, 12, 16]
    assert all("loss" in r for r in history)
    assert "eval_loss" in history[1] and "eval_dev_cosine_ndcg@10" in history[1]
    assert os.listdir(out / "runs") and (out / "curves.png").stat().st_size > 0
    assert "train-mnrl-debian" in (out / "config.yaml").read_text()
    model = SentenceTransformer(str(out / "final"), device="cpu")
    assert model.encode(["apt"]).shape == (1, 32)
    card = (out / "final" / "README.md").read_text()
    assert "## Training with raytune_st" in card and "MultipleNegativesRankingLoss" in card
    checkpoints = sorted(p for p in os.listdir(out / "ray" / "train-mnrl-debian") if p.startswith("checkpoint-"))
    assert 1 <= len(checkpoints) <= 2  # save_total_limit=1 by metric, plus the latest always kept


def test_a_run_that_fails_removes_the_output_directory_it_created(ray_local, tmp_path, tiny_bi_encoder, debian_sets):
    from raytune_st.errors import DataError
    from raytune_st.train.job import train

    out = tmp_path / "new" / "out"
    # Fails in the Ray session's pre-flight, after the output and its checkpoint storage were created.
    config = training_without_evaluation(tiny_bi_encoder, debian_sets, out, ["args.per_device_train_batch_size=100000"])
    with pytest.raises(DataError, match="fewer than per_device_train_batch_size=100000"):
        train(config)
    assert not out.exists() and (tmp_path / "new").is_dir()  # only the directory itself goes, never a parent


def test_a_killed_worker_resumes_from_the_last_checkpoint_and_finishes_the_planned_steps(
    ray_local, tmp_path, tiny_bi_encoder, debian_sets
):
    from raytune_st.train.job import train

    out = tmp_path / "out"
    run_dir = out / "ray" / "train-mnrl-debian"
    config = training_without_evaluation(
        tiny_bi_encoder, debian_sets, out,
        ["args.max_steps=100", "args.logging_steps=5", "args.save_steps=10", "run.max_failures=1", "scaling.num_workers=2"],
    )
    killed: list[int] = []
    watcher = kill_a_worker_after_checkpoints(run_dir, 2, killed)
    train(config)
    watcher.join(timeout=5)

    assert killed, "no worker was killed: the run ended before its first checkpoint was seen"
    history = read_jsonl(out / "metrics.jsonl")
    steps = [r["step"] for r in history]
    assert steps == sorted(set(steps)) and steps[-1] == 100  # no step twice, all planned steps
    resumed = [r["resumed_from_step"] for r in history if "resumed_from_step" in r]
    assert len(resumed) == 1 and resumed[0] % 10 == 0 and 10 <= resumed[0] < 100
    assert history[-1]["worker_steps_min"] == history[-1]["worker_steps_max"] == 100


def test_a_driver_killed_after_its_second_checkpoint_resumes_to_the_planned_steps(ray_local, tmp_path, tiny_bi_encoder, debian_sets):
    """SIGKILL the driver (its own process, a driver on this module's Ray) once the run has saved
    two checkpoints, rerun the same command: every planned step trained once, checkpoints in one
    lineage, and the rerun resumed from the second checkpoint or a later one."""
    import signal
    import subprocess

    import ray

    from harness import wait_for
    from raytune_st.train.job import train

    out = tmp_path / "out"
    run_dir = out / "ray" / "train-mnrl-debian"
    overrides = without_evaluation(
        tiny_bi_encoder, debian_sets, out, ["args.max_steps=30", "args.logging_steps=5", "args.save_steps=5"]
    )
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    example = os.path.join(REPO, "examples", "configs", "train-mnrl-debian.yaml")
    proc = subprocess.Popen([sys.executable, "-m", "raytune_st", "train", "--config", example, *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def checkpoints() -> int:
        return sum(p.name.startswith("checkpoint-") for p in run_dir.iterdir()) if run_dir.is_dir() else 0

    wait_for(lambda: checkpoints() >= 2, timeout=180, what="the run's second checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoints() < 6, "the run finished before the driver was killed"
    # Ray ends a dead driver's workers; the rerun starts once their CPUs are back.
    train(load("train-mnrl-debian.yaml", overrides))

    history = read_jsonl(out / "metrics.jsonl")
    steps = [r["step"] for r in history]
    assert steps == sorted(set(steps)) and steps[-1] == 30, steps
    assert history[-1]["worker_steps_min"] == history[-1]["worker_steps_max"] == 30
    resumed = [r["resumed_from_step"] for r in history if "resumed_from_step" in r]
    assert len(resumed) == 1 and resumed[0] % 5 == 0 and resumed[0] >= 10, resumed


def kill_a_worker_after_checkpoints(run_dir, count: int, killed: list[int], timeout: float = 240) -> threading.Thread:
    """A watcher thread that kills one Ray Train worker of this test's Ray once `run_dir` holds `count` checkpoints."""
    import psutil

    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            # Two checkpoint directories: the first one is surely registered by Ray Train by now.
            if run_dir.exists() and sum(p.startswith("checkpoint-") for p in os.listdir(run_dir)) >= count:
                # Ray names worker processes after their actor class; only this test's own Ray
                # (started by the fixture, a child of this process) is searched.
                workers = [
                    p for p in psutil.Process().children(recursive=True)
                    if "RayTrainWorker" in " ".join(p.cmdline() or [p.name()])
                ]
                if workers:
                    victim = max(workers, key=lambda p: p.pid)
                    victim.kill()
                    killed.append(victim.pid)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


@pytest.mark.parametrize(
    "example,overrides",
    [
        # fp16 runs with its gradient scaler on CPU too (scaled, unscaled for clipping, saved in checkpoints).
        (
            "train-cosent-stsb.yaml",
            ["train_datasets.stsb.data.limit=200", "eval_datasets.stsb.data.limit=40", "args.eval_steps=2", "args.save_steps=2", "args.fp16=true"],
        ),
        (
            "train-multi-dataset.yaml",
            [
                "train_datasets.retrieval.data.path={triplets}",
                "train_datasets.similarity.data.limit=200",
                "train_datasets.relevance.data.path={pairs}",
                "args.eval_steps=2",
                "args.save_steps=2",
            ],
        ),
        # bf16 autocast runs on CPU too: the mixed-precision path of one recipe is exercised here.
        ("train-matryoshka-debian.yaml", ["train_datasets.mined.data.path={triplets}", "loss_kwargs.matryoshka_dims=[32, 16]", "args.bf16=true"]),
        # The rerankers train on two workers: DDP once failed every cross-encoder's first backward.
        (
            "train-reranker-bce.yaml",
            [
                "scaling.num_workers=2",
                HALF_CPU.replace("{", "{{").replace("}", "}}"),  # these overrides are str.format()ted
                "model.name={ce}",
                "model.max_seq_length=64",
                "train_datasets.pairs.data.path={pairs}",
                "evaluators=[{{type: CrossEncoderRerankingEvaluator, name: debian-dev, data: {rerank_dev}, at_k: 10}}]",
                "args.eval_steps=1",
                "args.save_steps=1",
            ],
        ),
        (
            "train-reranker-lambda.yaml",
            [
                "scaling.num_workers=2",
                HALF_CPU.replace("{", "{{").replace("}", "}}"),  # these overrides are str.format()ted
                "model.name={ce}",
                "model.max_seq_length=64",
                "train_datasets.lists.data.path={lists}",
                "args.per_device_train_batch_size=4",
            ],
        ),
        (
            "train-reranker-cmnrl.yaml",
            ["model.name={ce}", "model.max_seq_length=64", "train_datasets.mined.data.path={triplets}", "args.per_device_train_batch_size=4"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_example_runs_a_few_steps(ray_local, tmp_path, tiny_bi_encoder, tiny_cross_encoder, debian_sets, example, overrides):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from raytune_st.train.job import train

    values = {**debian_sets, "ce": tiny_cross_encoder}
    overrides = [o.format(**values) for o in overrides]
    if not any(o.startswith("model.name=") for o in overrides):
        overrides.append(f"model={tiny_bi_encoder}")
    # One worker unless the case asks for more.
    config = load(example, ["scaling.num_workers=1", *overrides, f"args.output_dir={tmp_path / 'out'}", "args.max_steps=2", "args.logging_steps=1"])
    metrics = train(config)

    last = read_jsonl(tmp_path / "out" / "metrics.jsonl")[-1]
    assert last["step"] == 2 and last["worker_steps_min"] == last["worker_steps_max"] == 2
    final = str(tmp_path / "out" / "final")
    if config.model.type == "cross_encoder":
        scores = CrossEncoder(final, device="cpu").predict([("apt", "package manager"), ("dpkg", "low level tool")])
        assert scores.shape == (2,) and np.isfinite(scores).all()
    else:
        model = SentenceTransformer(final, device="cpu")
        assert model.encode(["apt"]).shape == (1, model.get_embedding_dimension())
    if example == "train-reranker-bce.yaml":
        # load_best_model_at_end: the final model is the checkpoint with the best NDCG@10.
        assert "eval_debian-dev_ndcg@10" in metrics and metrics["step"] in (1, 2)
    if config.args.fp16:
        from raytune_st.train.checkpointing import read_checkpoint

        # The gradient scaler ran and its state was checkpointed (a disabled scaler saves nothing).
        checkpoints = sorted((tmp_path / "out" / "ray" / config.run.name).glob("checkpoint-*"))
        assert checkpoints and read_checkpoint(str(checkpoints[-1])).scaler.get("scale", 0) > 0


def test_a_materialized_data_set_trains_and_resumes_on_the_same_rows_as_one_read_every_pass(
    ray_local, tmp_path, tiny_bi_encoder, debian_sets, capfd
):
    """Small data sets read more than once (24 training rows over 3 epochs; the eval set at
    every evaluation) are read into the object store once; the batches, losses and evaluations
    are those of reading the files on every pass, and a run resumed in the second epoch
    repeats them."""
    import ray.train

    from raytune_st.train.job import fit_and_write, plan_run, train
    from raytune_st.train.plan import materialized_datasets
    from raytune_st.train.rerun import data_files

    def config(out, *extra):
        return training_without_evaluation(tiny_bi_encoder, debian_sets, out, [
            "train_datasets.mined.data.limit=24", "args.max_steps=16", "args.logging_steps=1", "args.save_steps=8",
            "scaling.num_workers=1", "args.eval_strategy=steps", "args.eval_steps=8",
            f"eval_datasets.dev.data.path={debian_sets['triplets']}", "eval_datasets.dev.data.limit=12", *extra,
        ])

    materialized = config(tmp_path / "materialized")
    plan = plan_run(materialized)
    assert materialized_datasets(materialized, plan.train_rows(), data_files(materialized)) == {"train_datasets.mined", "eval_datasets.dev"}
    capfd.readouterr()
    train(materialized)
    console = capfd.readouterr()
    assert "Dataset" not in console.out + console.err  # Ray Data's lines stay in Ray's logs
    train(config(tmp_path / "streamed", "stream.materialize_max_bytes=0"))
    checkpoint = ray.train.Checkpoint.from_directory(str(tmp_path / "materialized" / "ray" / "train-mnrl-debian" / "checkpoint-000008"))
    resumed = config(tmp_path / "resumed")
    fit_and_write(resumed, plan, initial_checkpoint=checkpoint)

    def seen(name):
        return [(r["step"], r.get("epoch"), r.get("loss"), r.get("grad_norm"), r.get("eval_loss"))
                for r in read_jsonl(tmp_path / name / "metrics.jsonl")]

    assert seen("materialized") == seen("streamed")
    assert seen("resumed") == seen("materialized")
    assert seen("materialized")[-1][1] > 2 and len([r for r in seen("materialized") if r[4] is not None]) == 2
