"""raytune_st.train.plan's cluster arithmetic, from Ray's resource totals given as plain dicts (no Ray)."""

from __future__ import annotations

import pytest

from train_fixtures import DEBIAN_TRAIN
from raytune_st.config.core import build
from raytune_st.errors import ClusterError
from raytune_st.train.config import TrainConfig
from raytune_st.train.plan import cluster_fit


def config(**scaling) -> TrainConfig:
    return build(TrainConfig, {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
        "loss": "MultipleNegativesRankingLoss",
        "args": {"output_dir": "out"},
        "scaling": scaling,
    })


def test_workers_that_leave_a_cpu_for_reading_fit_quietly():
    assert cluster_fit(config(num_workers=2, resources_per_worker={"CPU": 0.5}), {"CPU": 2.0}, may_autoscale=False) is None


STREAMED = ("train_datasets.pairs",)


def test_workers_that_take_every_cpu_while_data_streams_are_refused_naming_the_fix():
    with pytest.raises(ClusterError) as refused:
        cluster_fit(config(num_workers=2), {"CPU": 2.0}, may_autoscale=False, streamed=STREAMED)
    assert str(refused.value) == (
        "2 workers x 1 CPU leave less than one of the cluster's 2 CPUs for Ray Data, which reads train_datasets.pairs "
        "while they train: the workers would wait for data forever; lower scaling.resources_per_worker.CPU (e.g. 0.5) "
        "or scaling.num_workers, or add CPUs"
    )
    # Where nodes may still come it is a warning; data read into the object store first needs no CPU later.
    warning = cluster_fit(config(num_workers=2), {"CPU": 2.0}, may_autoscale=True, streamed=STREAMED)
    assert warning.startswith("2 workers x 1 CPU leave less than one") and "unless the cluster adds a node" in warning
    assert cluster_fit(config(num_workers=1, resources_per_worker={"CPU": 2}), {"CPU": 2.0}, may_autoscale=False, streamed=()) is None


def test_concurrent_trials_that_take_every_cpu_are_refused_naming_the_sweeps_setting():
    # The sweep that hung: two trials of one 1-CPU worker each on a 2-CPU machine, data streamed.
    with pytest.raises(ClusterError, match=r"^search.max_concurrent_trials 2 x 1 workers x 1 CPU leave less than one .* "
                                           r"lower search.max_concurrent_trials, scaling.resources_per_worker.CPU"):
        cluster_fit(config(num_workers=1), {"CPU": 2.0}, may_autoscale=False, streamed=STREAMED, runs=2,
                    runs_key="search.max_concurrent_trials")
    assert cluster_fit(config(num_workers=1, resources_per_worker={"CPU": 0.5}), {"CPU": 2.0}, may_autoscale=False,
                       streamed=STREAMED, runs=2, runs_key="search.max_concurrent_trials") is None


def test_the_data_sets_read_while_training_are_those_not_materialized():
    from raytune_st.train.plan import streamed_datasets

    once = materializing({"max_steps": 2, "per_device_train_batch_size": 4}, eval_data=True)
    files = {"train_datasets.pairs": [["f", 1000, "d"]], "eval_datasets.dev": [["f", 1000, "d"]]}
    # Two steps of one epoch: the training set streams; the eval set is never read (no evaluation).
    assert streamed_datasets(once, {"pairs": 2000}, files) == ["train_datasets.pairs"]
    epochs = materializing({"num_train_epochs": 2, "per_device_train_batch_size": 4})
    assert streamed_datasets(epochs, {"pairs": 2000}, {"train_datasets.pairs": [["f", 1000, "d"]]}) == []


def test_gpu_workers_need_a_gpu_each():
    with pytest.raises(ClusterError, match=r"asks for 2 GPU workers but the cluster has 1 GPUs"):
        cluster_fit(config(num_workers=2, use_gpu=True), {"CPU": 8.0, "GPU": 1.0}, may_autoscale=True)
    assert cluster_fit(config(num_workers=2, use_gpu=True), {"CPU": 8.0, "GPU": 2.0}, may_autoscale=False) is None


def test_a_custom_resource_is_refused_on_a_local_ray_that_lacks_it_but_not_where_nodes_may_come():
    pinned = config(num_workers=1, resources_per_worker={"CPU": 1, "worker_node": 1})
    with pytest.raises(ClusterError, match="scaling.resources_per_worker asks for 'worker_node'"):
        cluster_fit(pinned, {"CPU": 4.0}, may_autoscale=False)
    assert cluster_fit(pinned, {"CPU": 4.0}, may_autoscale=True) is None
    assert cluster_fit(pinned, {"CPU": 4.0, "worker_node": 2.0}, may_autoscale=False) is None


def materializing(args: dict, stream: dict | None = None, eval_data: bool = False) -> TrainConfig:
    return build(TrainConfig, {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
        "eval_datasets": {"dev": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}} if eval_data else {},
        "loss": "MultipleNegativesRankingLoss",
        "args": {"output_dir": "out", "per_device_train_batch_size": 10, **args},
        "stream": stream or {},
    })


def test_data_sets_read_more_than_once_and_small_enough_are_materialized():
    from raytune_st.train.plan import materialized_datasets

    rows = {"pairs": 100}  # 10 batches an epoch
    files = {"train_datasets.pairs": [["a.parquet", 6_000_000, "d"], ["b.parquet", 4_000_000, "d"]],
             "eval_datasets.dev": [["dev.parquet", 1_000, "d"]]}
    # One epoch reads the training set once: it streams.
    assert materialized_datasets(materializing({"max_steps": 10}), rows, files) == set()
    assert materialized_datasets(materializing({"max_steps": 11}), rows, files) == {"train_datasets.pairs"}
    assert materialized_datasets(materializing({"num_train_epochs": 2}), rows, files) == {"train_datasets.pairs"}
    # Accumulated micro-batches count: 5 steps of 2 micro-batches is one epoch, 6 is more.
    assert materialized_datasets(materializing({"max_steps": 5, "gradient_accumulation_steps": 2}), rows, files) == set()
    assert materialized_datasets(materializing({"max_steps": 6, "gradient_accumulation_steps": 2}), rows, files) == {"train_datasets.pairs"}
    # The files' total against the limit; 0 turns it off.
    assert materialized_datasets(materializing({"max_steps": 11}, {"materialize_max_bytes": 10_000_000}), rows, files) == {"train_datasets.pairs"}
    assert materialized_datasets(materializing({"max_steps": 11}, {"materialize_max_bytes": 9_999_999}), rows, files) == set()
    assert materialized_datasets(materializing({"max_steps": 11}, {"materialize_max_bytes": 0}), rows, files) == set()
    # An eval set is read at every evaluation, whatever the epochs: materialized when evaluated
    # more than once (at steps 5 and 10; at the last step only, or never, it streams).
    evaluated = materializing({"max_steps": 10, "eval_strategy": "steps", "eval_steps": 5}, eval_data=True)
    assert materialized_datasets(evaluated, rows, files) == {"eval_datasets.dev"}
    once = materializing({"max_steps": 10, "eval_strategy": "steps", "eval_steps": 10}, eval_data=True)
    assert materialized_datasets(once, rows, files) == set()
    assert materialized_datasets(materializing({"max_steps": 10}, eval_data=True), rows, files) == set()
    by_epoch = materializing({"num_train_epochs": 2, "eval_strategy": "epoch"}, eval_data=True)
    assert materialized_datasets(by_epoch, rows, files) == {"train_datasets.pairs", "eval_datasets.dev"}


def test_materialize_max_bytes_must_not_be_negative():
    from raytune_st.errors import ConfigError

    with pytest.raises(ConfigError, match=r"materialize_max_bytes: must be >= 0 \(0 never materializes\), got -1"):
        materializing({}, {"materialize_max_bytes": -1})
