"""Run one measured step of a benchmark in a fresh Python process (shared by the benchmarks).

A benchmark script calls itself with ``--child NAME ARGS_JSON``; the child runs ``runs[NAME]``
and prints its result as JSON on its last line. Each step thus has its own memory (peak RSS)
and its own imports, torch threads and Ray session.

Ray runs its workers at nice 15, so anything else on the machine slows a Ray run far more
than a plain process: :func:`settled` waits for the 1-minute load average to fall below 0.5
before each run, prints it, and records it with the run's figures.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
QUIET_LOAD = 0.5


def child(script: str, name: str, args: dict) -> dict:
    """Run step `name` of `script` with `args` in a new process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, script, "--child", name, json.dumps(args)],
        env={**os.environ, **ENV},
        cwd=Path(script).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the {name} run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve(runs: dict[str, Callable[[dict], dict]], name: str, args_json: str) -> None:
    """The child's side: run `runs[name]` and print its result for :func:`child`."""
    print(json.dumps(runs[name](json.loads(args_json))))


def load_average() -> float:
    return os.getloadavg()[0]


def quiet_load(settle_s: float) -> float:
    """The 1-minute load average once it is below QUIET_LOAD, or when `settle_s` has passed."""
    deadline = time.monotonic() + settle_s
    while load_average() >= QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(5)
    return load_average()


def settled(script: str, name: str, args: dict, settle_s: float) -> dict:
    """Run step `name` once the 1-minute load average is below 0.5 (or `settle_s` has passed).

    The result gains `process_s` (the whole process, as a user waits for it: interpreter,
    imports, model load, Ray start) and `load` (the load average it started under)."""
    load = quiet_load(settle_s)
    marked = f"  (above {QUIET_LOAD}: marked)" if load >= QUIET_LOAD else ""
    print(f"  {name}: 1-minute load average {load:.2f} before the run{marked}", flush=True)
    began = time.perf_counter()
    result = child(script, name, args)
    return {**result, "process_s": time.perf_counter() - began, "load": load}


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """The median and, with several values, the range."""
    median = fmt.format(statistics.median(values))
    return median if len(values) == 1 else f"{median} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def load_line(runs: list[dict]) -> str:
    """The load averages the runs started under, marked when any was above the quiet level."""
    loads = [r["load"] for r in runs]
    noisy = sum(load >= QUIET_LOAD for load in loads)
    return f"1-minute load average before the runs: {spread(loads, '{:.2f}')}" + (
        f"  ({noisy} run(s) above {QUIET_LOAD}: those figures are not quiet-machine figures)" if noisy else ""
    )


def start_local_ray(num_cpus: Optional[int] = None, env: Optional[dict[str, str]] = None) -> None:
    """A local Ray as raytune_st starts one: no dashboard or metrics collection, workers' output
    in Ray's log files, and the environment a run hands its processes (runtime.worker_env, with
    `env` on top). `num_cpus`: logical CPUs (default: the machine's); one more than the machine
    has lets Ray Data's read task run beside a worker that reserves every core."""
    import ray

    from raytune_st.runtime import LOCAL_SYSTEM_CONFIG, worker_env

    ray.init(
        num_cpus=num_cpus,
        log_to_driver=False,
        logging_level="ERROR",
        include_dashboard=False,
        _system_config=LOCAL_SYSTEM_CONFIG,
        runtime_env={"env_vars": {**worker_env(local=True), **(env or {})}},
    )


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class RayProcesses:
    """Samples every process this one starts (Ray's GCS, raylet, workers) while the body runs.

    For each: its peak resident memory (the kernel's high-water mark, VmHWM, so no peak is
    missed between samples), its CPU seconds, and its name (the last process title seen:
    ``ray::RayTrainWorker...``, ``.../raylet``, ...).
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s = interval_s
        self.seen: dict[int, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RayProcesses":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while True:
            for proc in me.children(recursive=True):
                try:
                    name = " ".join(proc.cmdline()[:1]) or proc.name()
                    cpu = sum(proc.cpu_times()[:2])
                    peak = _vm_hwm_mib(proc.pid)
                except (psutil.Error, OSError):
                    continue
                entry = self.seen.setdefault(proc.pid, {"peak_mib": 0.0})
                entry.update(name=name, cpu_s=cpu, peak_mib=max(entry["peak_mib"], peak))
            if self._stop.wait(self.interval_s):
                return

    def workers(self) -> list[dict]:
        """Ray's worker processes (tasks and actors), largest peak first."""
        found = [entry for entry in self.seen.values() if entry["name"].startswith("ray::")]
        return sorted(found, key=lambda entry: -entry["peak_mib"])

    def cpu_by_name(self) -> dict[str, float]:
        """CPU seconds of the processes, summed by name with the path and arguments dropped."""
        total: dict[str, float] = {}
        for entry in self.seen.values():
            key = os.path.basename(entry["name"].split(".")[0] if entry["name"].startswith("ray::") else entry["name"])
            total[key] = total.get(key, 0.0) + entry["cpu_s"]
        return dict(sorted(total.items(), key=lambda item: -item[1]))


def _vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0
