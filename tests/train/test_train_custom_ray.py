"""A user's own loss, evaluator and model, named by import path in YAML, trained through a real
local Ray: the driver runs from the user's project directory (tests/user_project), whose
modules Ray's workers import from their working directory."""

from __future__ import annotations

import json
import os

import pytest

from train_fixtures import DEBIAN_DEV, REPO

pytestmark = pytest.mark.ray

PROJECT = os.path.join(REPO, "tests", "user_project")


@pytest.fixture(scope="module")
def ray_in_project(ray_init_options):
    import ray

    # Ray gives its workers the driver's working directory as it is when Ray starts.
    before = os.getcwd()
    os.chdir(PROJECT)
    ray.init(**ray_init_options, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    os.chdir(before)


def test_a_custom_loss_evaluator_and_model_factory_train_the_evaluator_ranks_checkpoints_and_codecarbon_counts(ray_in_project, tmp_path, tiny_bi_encoder, debian_sets):
    from sentence_transformers import SentenceTransformer

    from raytune_st.config.core import read_yaml
    from raytune_st.registry import load_job_config
    from raytune_st.train.job import train

    config_path = tmp_path / "train.yaml"
    config_path.write_text(
        f"""
model:
  factory: my_project.models:with_dense
  kwargs: {{base: {tiny_bi_encoder}, dim: 16}}
  max_seq_length: 32
train_datasets:
  pairs: {{data: {{path: {debian_sets['triplets']}, columns: [query, passage], limit: 64}}}}
loss: my_project.losses:MarginLoss
loss_kwargs: {{margin: 0.3}}
evaluators:
  - {{type: my_project.evaluation:MeanPairSimilarity, name: dev, data: {{path: {DEBIAN_DEV}, columns: [query, passage], limit: 24}}, batch_size: 8}}
args:
  output_dir: {tmp_path / 'out'}
  max_steps: 6
  per_device_train_batch_size: 8
  learning_rate: 0.001
  logging_steps: 2
  eval_strategy: steps
  eval_steps: 2
  save_steps: 2
  load_best_model_at_end: true
  metric_for_best_model: dev_mean_similarity
  report_to: [codecarbon]
scaling: {{num_workers: 2, resources_per_worker: {{CPU: 0.5}}}}
"""
    )
    metrics = train(load_job_config("train", str(config_path)))

    history = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    evaluated = {row["step"]: row["eval_dev_mean_similarity"] for row in history if "eval_dev_mean_similarity" in row}
    assert sorted(evaluated) == [2, 4, 6]
    assert all(row["loss"] >= 0 for row in history if "loss" in row)
    # The custom metric ranked the checkpoints: the final model is the best step's.
    best = max(evaluated, key=evaluated.get)
    assert metrics["step"] == best and metrics["eval_dev_mean_similarity"] == evaluated[best]

    model = SentenceTransformer(str(tmp_path / "out" / "final"), device="cpu")
    assert model.get_embedding_dimension() == 16
    assert model.encode(["apt"]).shape == (1, 16)
    # report_to: codecarbon: the last report carries the run's energy, summed over the workers.
    last = history[-1]
    assert last["step"] == 6 and last["energy_consumed_kwh"] > 0 and last["emissions_kg"] > 0
    # The resolved config names the components as the user wrote them.
    saved = read_yaml(tmp_path / "out" / "config.yaml")
    assert saved["loss"] == "my_project.losses:MarginLoss" and saved["model"]["factory"] == "my_project.models:with_dense"
