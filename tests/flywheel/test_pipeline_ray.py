"""The pipeline at tiny size on a local Ray: two rounds, a tiny model, a teacher trained in the
pipeline, round 2 denoised and distilled; killed in round 2 and run again, it skips what finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir):
    from raytune_st.testing import save_tiny_cross_encoder

    root = tmp_path_factory.mktemp("flywheel")
    sample = pq.read_table(REPO / "examples" / "data" / "debian-train-sample.parquet", columns=["query", "passage"])
    pq.write_table(sample.slice(0, 96), root / "pairs.parquet")
    pq.write_table(sample.slice(96, 40), root / "dev.parquet")
    config = {
        "model": tiny_bert_dir,
        "data": {"path": str(root / "pairs.parquet")},
        "rounds": 2,
        "mine": {"num_negatives": 1, "range_max": 10, "batch_size": 32, "compute": {"embed_actors_max": 1}},
        "train": {"loss": "MultipleNegativesRankingLoss", "scaling": {"num_workers": 1},
                  "args": {"per_device_train_batch_size": 8, "max_steps": 3, "seed": 12, "logging_steps": 1}},
        "evaluate": {"evaluators": [{"type": "InformationRetrievalEvaluator", "name": "dev", "data": {"path": str(root / "dev.parquet")}}]},
        "teacher": {
            # A wide initializer: the untrained head already scores pairs apart, so denoising has something to do.
            "train": {"model": save_tiny_cross_encoder(str(root / "ce"), initializer_range=0.5), "loss": "BinaryCrossEntropyLoss",
                      "scaling": {"num_workers": 1}, "args": {"per_device_train_batch_size": 8, "max_steps": 2, "logging_steps": 1}},
            "mine": {"num_negatives": 1, "range_max": 10},
        },
        "rounds_override": {2: {"score": {}, "denoise": {"margin": 0.0}, "train": {"loss": "MarginMSELoss"}}},
        "output_dir": str(root / "out"),
    }
    (root / "pipeline.yaml").write_text(yaml.safe_dump(config))
    return root


def test_a_pipeline_killed_in_round_2_goes_on_from_its_first_unfinished_stage(ray_local, project):
    import ray

    import raytune_st

    out = project / "out"
    command = [sys.executable, "-m", "raytune_st", "pipeline", "--config", str(project / "pipeline.yaml")]
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    with open(project / "killed.log", "w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while not (out / "round-2" / "mine.done.json").exists():
            assert proc.poll() is None, (project / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "round 2 never started"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "round-2" / "train.done.json").exists()
    finished = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*.done.json")}
    assert "round-1/train.done.json" in finished and "round-2/mine.done.json" in finished

    result = raytune_st.pipeline(str(project / "pipeline.yaml"))

    # What finished before the kill was not run again; round 2 went on from its score stage.
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    records = {str(p.relative_to(out)): json.loads(p.read_text()) for p in out.rglob("*.done.json")}
    assert sorted(records) == sorted([
        "teacher/mine.done.json", "teacher/train.done.json", "round-0/evaluate.done.json",
        *[f"round-{k}/{s}.done.json" for k in (1, 2) for s in ("mine", "train", "evaluate")],
        "round-2/score.done.json", "round-2/denoise.done.json",
    ])
    rows = result["rounds"]
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert [row.get("mined_with") for row in rows] == [None, "base", "previous"]
    assert rows[2]["trained_on"] == "denoise" and rows[2]["rows_mined"] == 96
    denoised = records["round-2/denoise.done.json"]["summary"]
    assert rows[2]["negatives_removed"] == denoised["negatives_removed"] > 0 and denoised["rows_out"] > 0
    assert all("dev_cosine_ndcg@10" in row["metrics"] for row in rows)
    # Round 2 distilled the teacher's scores: its data's label is [s(query, positive), s(query, negative)].
    trained = yaml.safe_load((out / "round-2" / "train" / "config.yaml").read_text())
    assert trained["loss"] == "MarginMSELoss" and trained["train_datasets"]["mined"]["data"]["rename"] == {"teacher_scores": "label"}
    scores = pq.read_table(out / "round-2" / "denoise").column("teacher_scores").to_pylist()
    assert len(scores) == denoised["rows_out"] and all(len(s) == 2 and s[1] <= s[0] for s in scores)
    assert json.loads((out / "rounds.json").read_text()) == rows and (out / "rounds.png").stat().st_size > 1000
    assert "| base model |" in (out / "rounds.md").read_text()

    # Rerun with only where the stages run changed (resources, CPUs, threads, actors): every stage
    # is skipped, and no file a stage wrote is deleted or rewritten.
    def stage_files() -> dict[str, int]:
        return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}

    before = stage_files()
    placed = yaml.safe_load((project / "pipeline.yaml").read_text())
    placed["train"]["scaling"]["resources_per_worker"] = {"CPU": 0.5}
    placed["mine"]["index"] = {"num_cpus": 0.5, "threads": 1}
    placed["mine"]["compute"]["embed_actors_max"] = 2
    (project / "placed.yaml").write_text(yaml.safe_dump(placed))
    again = raytune_st.pipeline(str(project / "placed.yaml"))
    assert stage_files() == before
    assert again["rounds"] == rows


def test_the_readmes_command_runs_the_debian_example(ray_local, tmp_path, monkeypatch):
    from raytune_st.cli import main

    monkeypatch.chdir(REPO)
    assert main(["pipeline", "--config", "examples/configs/pipeline-debian.yaml", f"output_dir={tmp_path / 'flywheel'}"]) == 0
    rows = json.loads((tmp_path / "flywheel" / "rounds.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert all(row["metrics"]["dev_cosine_ndcg@10"] > 0.9 for row in rows)  # all-MiniLM-L6-v2 on Debian
