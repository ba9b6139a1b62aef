"""benchmarks/gpu_check.py: its CPU dry run passes end to end, and its comparison helpers judge right.

The dry run starts its own local Ray (no other Ray session runs in this module), so the GPU
check's code cannot rot between the rare runs on a GPU machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_neighbour_agreement_counts_swapped_equal_scores_as_ties_and_nothing_else():
    gpu_check = _gpu_check()
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8]], dtype=np.float32)
    queries = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    truth = np.array([[1, 2], [0, 3]])
    # Row 0: ids 1 and 2 are the same vector (a tie, swapped). Row 1: a different neighbour.
    found = np.array([[2, 1], [0, 1]])
    assert gpu_check.neighbour_agreement(vectors, queries, truth, found) == {"identical": 0.0, "identical_up_to_ties": 0.5}
    assert gpu_check.neighbour_agreement(vectors, queries, truth, truth) == {"identical": 1.0, "identical_up_to_ties": 1.0}
    assert gpu_check.recall(truth, found) == 0.75


def test_a_dry_run_target_is_reported_but_never_judged(capsys):
    gpu_check = _gpu_check()
    dry, real = gpu_check.Report(dry_run=True), gpu_check.Report(dry_run=False)
    for report in (dry, real):
        report.target("speed", 0.5, 0.9, "half as fast")
        report.run("crash", lambda: 1 / 0)
    assert [r["status"] for r in dry.results] == ["SKIP", "FAIL"]
    assert [r["status"] for r in real.results] == ["FAIL", "FAIL"]
    assert real.failed == ["speed", "crash"]
    assert "ZeroDivisionError" in real.results[1]["detail"]
    assert "0.50x (target >= 0.9x): half as fast" in capsys.readouterr().out


@pytest.mark.ray
def test_the_gpu_check_dry_run_passes_every_device_independent_check(tmp_path):
    summary_path = tmp_path / "summary.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--summary", str(summary_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    summary = json.loads(summary_path.read_text())
    by_check = {r["check"]: r for r in summary["results"]}
    assert summary["failed"] == [] and summary["dry_run"] is True
    # Every check group ran its code: the device-independent facts passed...
    for check in (
        "embed float32: vectors", "embed float16: vectors", "faiss Flat cpu: exact", "mine config: k <= 2048 guard",
        "train fp16: loss step (no Ray)", "train bf16: loss step (no Ray)", "mine: rows agree",
        "train fp16: losses finite", "train fp16: scaler checkpointed", "train fp16: resume", "train bf16: resume",
        "tune: two trials at once",
    ):
        assert by_check[check]["status"] == "PASS", by_check[check]
    # ...and the speed figures were measured but not judged on a CPU.
    for check in ("embed float32: throughput", "mine: wall time", "train fp16: steady samples/s"):
        assert by_check[check]["status"] == "SKIP" and by_check[check]["value"] > 0, by_check[check]
    assert by_check["train: DDP over NCCL"]["detail"].startswith("not proven")
    assert "passed, 0 failed" in proc.stdout


def _children():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import children
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return children


def test_figures_are_medians_with_ranges_and_loaded_runs_are_marked():
    children = _children()
    assert children.spread([3.0, 1.0, 2.0]) == "2.0 (1.0-3.0)"
    assert children.spread([1.234], "{:.2f}") == "1.23"
    assert "above" not in children.load_line([{"load": 0.2}, {"load": 0.49}])
    line = children.load_line([{"load": 0.2}, {"load": 0.7}])
    assert line.startswith("1-minute load average before the runs: 0.45 (0.20-0.70)")
    assert "1 run(s) above 0.5" in line


def test_the_process_sampler_sees_a_child_processs_peak_memory_and_cpu():
    """A child that touches 300 MiB, frees it and then spins: the sampler reports the peak the
    kernel recorded (not the smaller resident size it sees afterwards) and the CPU it used."""
    children = _children()
    code = "import time; b = bytearray(300 << 20); del b; t = time.process_time()\nwhile time.process_time() - t < 1.0: pass\ntime.sleep(1)"
    with children.RayProcesses(interval_s=0.1) as processes:
        child = subprocess.Popen([sys.executable, "-c", code])
        assert child.wait() == 0
    # The suite's process may have other children (an earlier test's Ray): look at this one.
    entry = processes.seen[child.pid]
    assert entry["peak_mib"] >= 300
    assert entry["cpu_s"] >= 0.9
    assert entry not in processes.workers()  # not a ray:: process
    assert processes.cpu_by_name()[os.path.basename(sys.executable)] >= entry["cpu_s"]
