"""The evaluate job: run the configured evaluators on a model, on one Ray worker.

1. Check the config on the driver: the model resolves, every source exists and has the
   columns its evaluator needs, the output directory is writable. Nothing heavy yet.
2. On a Ray worker (with a GPU when the cluster has one): read the data with Ray Data,
   check every value, load the model once and run the evaluators as a SequentialEvaluator.
3. Back on the driver: print the metrics table, write config.yaml and metrics.json.

A rerun into the same output.path removes the old metrics.json and config.yaml once the
checks pass, before any work; a run that fails removes the directory it created.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from raytune_st.config.core import dump_yaml
from raytune_st.config.resources import check_custom_resources_exist
from raytune_st.evaluation.config import EvaluateConfig
from raytune_st.evaluation.run import build_evaluators, run_evaluators
from raytune_st.outputs import OutputDir, removed_on_failure
from raytune_st.runtime import cluster_gpus, ray_address, ray_session


RESULT_FILES = ("metrics.json", "config.yaml")


def evaluate_model(config: EvaluateConfig, lines: Any = None) -> dict[str, float]:
    """Load the model and run every evaluator in this process (a Ray worker, or a test).

    `lines`: a ray.util.queue.Queue for the progress lines the driver prints (None: print here).
    """
    import torch

    say = print if lines is None else lines.put
    evaluators = build_evaluators(config.evaluators)
    model = config.model.load(device="cuda" if torch.cuda.is_available() else "cpu")
    say(f"[evaluate] model loaded on {model.device}; {len(evaluators)} evaluator(s)")
    return run_evaluators(evaluators, model, say)


def checked_output(config: EvaluateConfig) -> OutputDir:
    """Every check that needs no cluster (model, data, output directory); returns the output directory."""
    config.model.check()
    for spec in config.evaluators:
        spec.check_data()
    output = OutputDir(config.output.path)
    output.check_writable()
    return output


def format_metrics(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in metrics.items()]
    return "\n".join(lines)


def evaluate(config: EvaluateConfig) -> dict[str, float]:
    """Run the evaluate job; returns the metrics (named as the evaluators name them)."""
    import ray

    with removed_on_failure(config.output.path):
        output = checked_output(config)
        # A rerun replaces the results: the old ones go before any work, so that a run killed
        # midway never leaves another run's metrics.json looking like its own.
        output.delete(*RESULT_FILES)
        with ray_session(config.ray_address):
            num_gpus = config.num_gpus if config.num_gpus is not None else (1 if cluster_gpus() >= 1 else 0)
            if ray_address(config.ray_address) is None:  # a remote cluster may autoscale
                check_custom_resources_exist("resources", config.resources, ray.cluster_resources())
            task = ray.remote(evaluate_model).options(num_gpus=num_gpus, num_cpus=1, resources=dict(config.resources))
            metrics = _printing_lines(lambda lines: task.remote(config, lines))
    print(format_metrics(metrics))
    # metrics.json last: its presence means a complete run, described by the config.yaml beside it.
    output.write("config.yaml", dump_yaml(config))
    output.write("metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(f"wrote {output.path}/metrics.json")
    return metrics


def _printing_lines(start: Callable[[Any], Any]) -> Any:
    """Run `start(queue)` (returns an object ref) and print the lines its task puts on the queue
    until its result is ready; returns the result."""
    import ray
    from ray.util.queue import Queue

    lines = Queue(actor_options={"num_cpus": 0})
    try:
        ref = start(lines)
        while True:
            ready, _ = ray.wait([ref], timeout=0.5)
            while not lines.empty():
                print(lines.get(), flush=True)
            if ready:
                return ray.get(ref)
    finally:
        lines.shutdown()
