"""A two-node Ray cluster on this machine, jobs through `ray job submit`, data in object storage.

The head (`ray start --head --num-cpus 1`) runs the job drivers and has a CPU of its own; a
worker node (`ray start --address ... --resources '{"worker_node": 2}'`) runs every embedding
actor, index shard and train worker because the jobs ask for its custom resource
(`compute.resources`, `scaling.resources_per_worker`), not because the head has no room. Each node
has its own temp dir and its own model cache, and the data, the start model and every output
live in an S3 API server: the worker node never reads the driver's disk. The nodes are
killed as a machine dies (SIGKILL to every process of the node), and once Ray has declared
the node dead a replacement joins, as an autoscaler would bring one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pyarrow.fs
import pyarrow.parquet as pq
import pytest

from cluster_fixtures import Cluster, submission_runtime_env
from raytune_st.outputs import filesystem
from harness import RayNode, wait_for

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
BUCKET = "raytune-st-multinode"


class TwoNodes:
    def __init__(self, root: Path):
        self.root = root
        env = {
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAYTUNE_ST_MODEL_CACHE": str(root / "head-cache"),
            # The GCS declares a silent node dead after about 5 s instead of Ray's default 30.
            "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5",
        }
        self.head = RayNode(str(root / "head"), num_cpus=1, env=env).start()
        self.workers: list[RayNode] = []
        self.add_worker()
        self.cluster = Cluster(self.head.dashboard, root, self.head.env, submission_runtime_env(root))

    def add_worker(self) -> RayNode:
        name = f"worker{len(self.workers)}"
        node = RayNode(
            str(self.root / name), head=self.head, num_cpus=2, resources={"worker_node": 2},
            env={"RAYTUNE_ST_MODEL_CACHE": str(self.root / f"{name}-cache")},
        ).start()
        self.workers.append(node)
        return node

    def replace_dead_worker(self, node_id: str | None = None) -> float:
        """Kill the newest worker node as its machine would die, wait until Ray has declared it
        dead (as an autoscaler does before it replaces a node), and start a new one.
        `node_id` is the victim's id when the caller read it ahead of a timed kill.
        Returns the time of the kill."""
        victim = self.workers[-1]
        node_id = node_id or victim.node_id()
        victim.kill()
        killed_at = time.monotonic()
        wait_for(lambda: any(n["node_id"] == node_id and n["state"] == "DEAD" for n in self.head.list_state("nodes")),
                 120, "Ray to declare the killed node dead")
        self.add_worker()
        return killed_at

    def stop(self) -> None:
        for node in [*self.workers, self.head]:
            node.stop()


@pytest.fixture(scope="module")
def store(s3_server, tiny_bert_dir):
    s3_server.create_bucket(BUCKET)
    fs, _ = filesystem(f"s3://{BUCKET}")
    pyarrow.fs.copy_files(tiny_bert_dir, f"{BUCKET}/models/start", source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=fs)
    sample = REPO / "examples" / "data" / "debian-train-sample.parquet"
    pq.write_table(pq.read_table(sample, columns=["query", "passage"]).slice(0, 400), f"{BUCKET}/data/pairs.parquet", filesystem=fs)
    return fs


@pytest.fixture(scope="module")
def nodes(store):
    # Started after the S3 server: every node's processes inherit its endpoint and credentials,
    # as nodes of a real cluster get theirs from the environment or an instance role.
    root = Path(tempfile.mkdtemp(prefix="rtm-", dir="/tmp"))
    two = TwoNodes(root)
    try:
        yield two
    finally:
        two.stop()
        shutil.rmtree(root, ignore_errors=True)


def objects(fs, prefix: str) -> dict[str, int]:
    root = f"{BUCKET}/{prefix}"
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    return {i.path[len(root) + 1 :]: i.size for i in infos if i.type == pyarrow.fs.FileType.File}


def mine_args(out: str) -> list[str]:
    return [
        "python", "jobs/mine.py", "--config", "examples/configs/mine-debian.yaml",
        f"model=s3://{BUCKET}/models/start", f"dataset.path=s3://{BUCKET}/data/pairs.parquet",
        "mine.num_negatives=2", "mine.range_max=20", "mine.relative_margin=null", "compute.embed_chunk_rows=64", "compute.mine_batch_rows=64",
        "compute.embed_actors_max=2", "compute.resources={worker_node: 0.01}", f"output.path=s3://{BUCKET}/{out}",
    ]


def train_args(out: str, **extra: str) -> list[str]:
    return [
        "python", "jobs/train.py", "--config", "examples/configs/train-mnrl-debian.yaml",
        f"model=s3://{BUCKET}/models/start", f"train_datasets.mined.data.path=s3://{BUCKET}/mined",
        "evaluators=[]", "args.metric_for_best_model=null", "args.load_best_model_at_end=false", "args.eval_strategy=no",
        "args.eval_steps=null",
        "args.max_steps=8", "args.save_steps=2", "args.logging_steps=2", "args.per_device_train_batch_size=8",
        f"args.output_dir=s3://{BUCKET}/{out}", f"run.storage_path=s3://{BUCKET}/{out}-ray",
        "scaling.num_workers=1", "scaling.resources_per_worker={CPU: 1, worker_node: 1}",
        *[f"{k.replace('__', '.')}={v}" for k, v in extra.items()],
    ]


def rows(fs, prefix: str) -> list[tuple]:
    parts = sorted(f"{BUCKET}/{prefix}/{name}" for name in objects(fs, prefix) if name.startswith("part-"))
    table = pq.read_table(parts, filesystem=fs)
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names)))


def actors_by_class(node: RayNode, job_id: str) -> dict[str, set[str]]:
    """Actor class name -> the node ids its actors ran on, for one job."""
    placed: dict[str, set[str]] = {}
    for actor in node.list_state("actors"):
        if actor.get("job_id") == job_id:
            placed.setdefault(actor["class_name"], set()).add(actor["node_id"])
    return placed


def ray_job_id(cluster: Cluster, submission_id: str) -> str:
    out = cluster.ray("job", "list", "--address", cluster.address, timeout=60).stdout
    for line in out.splitlines():
        if submission_id in line and "job_id=" in line:
            return line.split("job_id='")[1].split("'")[0]
    raise AssertionError(f"no job {submission_id} in `ray job list`:\n{out[-2000:]}")


@pytest.fixture(scope="module")
def mined(nodes, store) -> tuple[str, RayNode]:
    """An uninterrupted mine job into s3://BUCKET/mined: its submission id and the worker node it had.

    Its triplets are what the training jobs read, and its rows what the fault tests compare with."""
    sid = f"mine-{uuid.uuid4().hex[:8]}"
    out = nodes.cluster.submit(*mine_args("mined"), submission_id=sid, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return sid, nodes.workers[-1]


def cache_of(node: RayNode) -> Path:
    return Path(node.env["RAYTUNE_ST_MODEL_CACHE"])


def test_every_stage_runs_on_the_worker_node_from_object_storage(nodes, store, mined):
    cluster = nodes.cluster
    sid, worker = mined
    written = objects(store, "mined")
    assert "stats.json" in written and any(n.startswith("part-") for n in written)
    placed = actors_by_class(nodes.head, ray_job_id(cluster, sid))
    # An embedding actor released before Ray placed it (the work ran out first) ran nowhere: no node id.
    embedders = {name: ids - {None} for name, ids in placed.items() if "ChunkEmbedder" in name}
    assert embedders and all(ids == {worker.node_id()} for ids in embedders.values()), placed
    assert placed.get("IndexShard") == {worker.node_id()}, placed
    job_id = ray_job_id(cluster, sid)
    tasks: dict[str, set[str]] = {}
    for task in nodes.head.list_state("tasks", "--limit", "10000"):
        if task.get("job_id") == job_id and task.get("node_id"):
            tasks.setdefault(task["name"], set()).add(task["node_id"])
    for stage in ("prepare_inputs", "mine_batch", "_report"):  # the job's own tasks, not only its actors
        assert tasks.get(stage) == {worker.node_id()}, (stage, tasks)

    worker = nodes.workers[-1]
    sid = f"train-{uuid.uuid4().hex[:8]}"
    out = cluster.submit(*train_args("model"), submission_id=sid, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert {"final/model.safetensors", "metrics.jsonl"} <= set(objects(store, "model"))
    placed = actors_by_class(nodes.head, ray_job_id(cluster, sid))
    train_workers = {name: ids for name, ids in placed.items() if "TrainWorker" in name}
    assert train_workers and all(ids == {worker.node_id()} for ids in train_workers.values()), placed

    # The driver on the head and the worker node each downloaded the start model once, into their own cache.
    for cache in (cache_of(nodes.head), cache_of(worker)):
        copies = [p for p in cache.iterdir() if p.is_dir()]
        assert len(copies) == 1 and (copies[0] / "modules.json").is_file(), (cache, copies)


def test_mining_survives_the_loss_of_its_worker_node(nodes, store, mined):
    """The worker node dies mid-embedding; a new node joins. The job completes or a rerun
    does, and the output is exactly the uninterrupted run's."""
    cluster = nodes.cluster
    sid = f"mine-fault-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    job = cluster.submit_in_background(*mine_args("mined-fault"), submission_id=sid)
    # Kill the node once the first embeddings are written: the run is half done.
    wait_for(lambda: any(n.startswith("_work/embeddings/") for n in objects(store, "mined-fault")), 300, "the first embeddings")
    assert job.poll() is None and "stats.json" not in objects(store, "mined-fault"), "the job ended before the fault"
    killed_at = nodes.replace_dead_worker()
    output, _ = job.communicate(timeout=600)
    if job.returncode != 0:
        rerun = cluster.submit(*mine_args("mined-fault"), submission_id=f"{sid}-rerun", timeout=600)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    recovered = time.monotonic() - killed_at
    assert rows(store, "mined-fault") == rows(store, "mined"), "the output differs from the uninterrupted run's"
    stats = json.loads(store.open_input_stream(f"{BUCKET}/mined-fault/stats.json").read())
    failure = next((line.strip() for line in output.splitlines() if "error:" in line or "Error" in line), "no error line") if job.returncode else ""
    print(f"mining, worker node killed mid-embedding: first run {'completed' if job.returncode == 0 else f'failed ({failure[:300]})'}; "
          f"{stats.get('rows', '?')} rows, 0 lost; recovered in {recovered:.0f} s (job {time.monotonic() - started:.0f} s)")


def test_training_resumes_from_its_checkpoint_when_its_worker_node_dies(nodes, store, mined):
    """The worker node dies after Ray Train has registered a checkpoint and well before the last
    step; the new worker group on the replacement node resumes from that checkpoint.

    The kill waits for the second checkpoint in the bucket: the first was reported four steps
    earlier, so Ray Train knows it (a checkpoint only in storage is not resumed from). 40 steps with
    a checkpoint every 4 leave the kill about 30 steps before the end; with 8 steps the run could
    finish between the first checkpoint and the kill."""
    cluster = nodes.cluster
    sid = f"train-fault-{uuid.uuid4().hex[:8]}"
    victim = nodes.workers[-1].node_id()
    job = cluster.submit_in_background(
        *train_args("model-fault", run__max_failures="1", args__max_steps="40", args__save_steps="4", args__logging_steps="4"),
        submission_id=sid,
    )

    def checkpoints() -> set[str]:
        return {part for name in objects(store, "model-fault-ray") for part in name.split("/") if part.startswith("checkpoint-")}

    wait_for(lambda: len(checkpoints()) >= 2, 400, "the second checkpoint")
    assert job.poll() is None, "the job ended before the fault"
    killed_at = nodes.replace_dead_worker(victim)
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-4000:]
    history = [json.loads(line) for line in store.open_input_stream(f"{BUCKET}/model-fault/metrics.jsonl").read().decode().splitlines()]
    steps = [r["step"] for r in history if "loss" in r]
    assert max(steps) == 40 and steps == sorted(set(steps)), steps
    resumed = [r["resumed_from_step"] for r in history if "resumed_from_step" in r]
    assert len(resumed) == 1 and resumed[0] % 4 == 0 and 4 <= resumed[0] < 40, (resumed, output[-4000:])
    print(f"training, worker node killed after a checkpoint: resumed from step {resumed[0]} on the new node, final step {max(steps)}, "
          f"recovered in {time.monotonic() - killed_at:.0f} s")


def test_a_script_with_python_objects_trains_on_another_node_without_shared_disk(nodes, store):
    """RayTrainer under `ray job submit`: the model object, an in-memory Dataset and a loss class
    defined in the script reach the worker node through the object store, not through a file."""
    worker = nodes.workers[-1]
    sid = f"trainer-{uuid.uuid4().hex[:8]}"
    out = nodes.cluster.submit(
        "python", "tests/cluster/trainer_script.py", f"s3://{BUCKET}/data/pairs.parquet", f"s3://{BUCKET}/models/start",
        f"s3://{BUCKET}/from-script", submission_id=sid, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith("{")))
    assert report["model"].startswith("ray-object://model/") and report["data"].startswith("ray-object://data/")
    assert report["trained_weights_back"], report
    placed = actors_by_class(nodes.head, ray_job_id(nodes.cluster, sid))
    train_workers = {name: ids for name, ids in placed.items() if "TrainWorker" in name}
    assert train_workers and all(ids == {worker.node_id()} for ids in train_workers.values()), placed
    # The worker node wrote its one copy of the model object from the store.
    digest = report["model"].rsplit("/", 1)[-1]
    assert (cache_of(worker) / f"ray-object-{digest}" / "modules.json").is_file(), sorted(p.name for p in cache_of(worker).iterdir())
    history = [json.loads(line) for line in store.open_input_stream(f"{BUCKET}/from-script/metrics.jsonl").read().decode().splitlines()]
    assert max(r["step"] for r in history if "loss" in r) == 4
    assert "final/model.safetensors" in objects(store, "from-script")
