"""TrainConfig: names, defaults, and every bad input refused before a worker starts. No Ray."""

from __future__ import annotations

import glob
import os

import pytest

from train_fixtures import DEBIAN_TRAIN, REPO, STSB_TRAIN
from raytune_st.config.core import build, load_config
from raytune_st.errors import ConfigError, DataError
from raytune_st.train.config import TrainConfig
from raytune_st.train.plan import preflight, total_optimizer_steps


def make(**sections):
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
        "loss": "MultipleNegativesRankingLoss",
        "args": {"output_dir": "out"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return build(TrainConfig, data)


def test_defaults_are_sentence_transformers_training_arguments_defaults():
    from sentence_transformers import SentenceTransformerTrainingArguments

    ours = make().args
    theirs = SentenceTransformerTrainingArguments(output_dir="out")
    for name in (
        "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
        "gradient_accumulation_steps", "learning_rate", "weight_decay", "max_grad_norm", "fp16", "bf16",
        "save_steps", "logging_steps", "save_total_limit", "load_best_model_at_end", "metric_for_best_model",
        "seed",
    ):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.lr_scheduler_type == str(theirs.lr_scheduler_type.value)
    assert ours.batch_sampler == theirs.batch_sampler.value
    assert ours.multi_dataset_batch_sampler == theirs.multi_dataset_batch_sampler.value
    assert ours.eval_strategy == theirs.eval_strategy.value
    assert ours.save_strategy == theirs.save_strategy.value


def test_shorthands_and_top_level_loss():
    config = make(train_datasets={"a": DEBIAN_TRAIN}, loss_kwargs={"scale": 30})
    assert config.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.model.type == "bi_encoder"
    assert config.train_datasets["a"].data.path == DEBIAN_TRAIN
    spec = config.loss_for("train_datasets", "a")
    assert (spec.name, spec.kwargs) == ("MultipleNegativesRankingLoss", {"scale": 30})


def test_half_precision_weights_are_refused_for_training_with_the_amp_flag_to_use():
    with pytest.raises(ConfigError, match=r"model.dtype: training keeps float32 weights, got 'float16'.*args.fp16=true"):
        make(model={"name": "m", "dtype": "float16"})
    with pytest.raises(ConfigError, match=r"args.bf16=true"):
        make(model={"name": "m", "dtype": "bfloat16"})


def test_a_set_with_its_own_loss_does_not_take_the_top_level_kwargs():
    config = make(train_datasets={"sts": {"data": STSB_TRAIN, "loss": "CoSENTLoss"}}, loss_kwargs={"scale": 30})
    assert config.loss_for("train_datasets", "sts").kwargs == {}


def test_eval_set_defaults_to_the_train_set_loss_of_the_same_name():
    config = make(
        train_datasets={"sts": {"data": STSB_TRAIN, "loss": "CoSENTLoss", "loss_kwargs": {"scale": 10}}},
        eval_datasets={"sts": STSB_TRAIN},
    )
    spec = config.loss_for("eval_datasets", "sts")
    assert (spec.name, spec.kwargs) == ("CoSENTLoss", {"scale": 10})


def test_unknown_loss_lists_close_names():
    with pytest.raises(ConfigError, match="MultipleNegativesRankingLoss"):
        make(loss="MultipleNegativeRankingLoss")


def test_unknown_loss_argument_lists_the_arguments():
    with pytest.raises(ConfigError, match="'scal' is not an argument of MultipleNegativesRankingLoss.*'scale'"):
        make(loss_kwargs={"scal": 20})


def test_no_loss_anywhere_is_an_error():
    with pytest.raises(ConfigError, match="no loss"):
        make(loss=None)


def test_unknown_args_key_suggests_the_name():
    with pytest.raises(ConfigError, match="per_device_train_batch_size"):
        make(args={"output_dir": "o", "per_device_batch_size": 8})


def test_eval_strategy_without_an_eval_target():
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        make(args={"output_dir": "o", "eval_strategy": "steps"})


def test_eval_steps_without_an_eval_target():
    with pytest.raises(ConfigError, match="eval_steps is set but there is nothing to evaluate"):
        make(args={"output_dir": "o", "eval_steps": 10})


def test_load_best_model_needs_aligned_saves():
    with pytest.raises(ConfigError, match="multiple of"):
        make(
            eval_datasets={"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
            args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 30, "save_steps": 50, "load_best_model_at_end": True},
        )


def test_metric_for_best_model_that_no_evaluator_produces():
    evaluator = {"type": "EmbeddingSimilarityEvaluator", "name": "sts-dev", "data": STSB_TRAIN}
    good = make(evaluators=[evaluator], args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 10,
                                              "metric_for_best_model": "sts-dev_spearman_cosine"})
    assert good.args.best_metric == "eval_sts-dev_spearman_cosine"
    assert good.args.higher_is_better
    with pytest.raises(ConfigError, match="not produced by any evaluation.*eval_sts-dev_"):
        make(evaluators=[evaluator], args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 10,
                                           "metric_for_best_model": "stsdev_spearman_cosine"})


def test_eval_loss_ranks_lower_is_better():
    config = make(
        eval_datasets={"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}},
        args={"output_dir": "o", "eval_strategy": "steps", "eval_steps": 10, "save_steps": 10, "load_best_model_at_end": True},
    )
    assert config.args.best_metric == "eval_loss"
    assert not config.args.higher_is_better


def test_evaluator_for_the_other_model_type():
    with pytest.raises(ConfigError, match="is for a cross_encoder"):
        make(evaluators=[{"type": "CrossEncoderCorrelationEvaluator", "name": "x", "data": STSB_TRAIN}])


def test_resources_per_worker_follow_rays_rules():
    assert make(scaling={"resources_per_worker": {"CPU": 0.5, "worker_node": 1}}).scaling.resources_per_worker == {
        "CPU": 0.5, "worker_node": 1
    }
    with pytest.raises(ConfigError, match=r"scaling.resources_per_worker.CPU: Ray accepts fractions only below 1, got 1.5"):
        make(scaling={"resources_per_worker": {"CPU": 1.5}})
    with pytest.raises(ConfigError, match=r"scaling.resources_per_worker.worker_node: must be more than 0"):
        make(scaling={"resources_per_worker": {"worker_node": -1}})


def test_fp16_and_bf16_together():
    with pytest.raises(ConfigError, match="choose one"):
        make(args={"output_dir": "o", "fp16": True, "bf16": True})


def test_wrapper_needs_an_inner_loss_and_checks_its_kwargs():
    with pytest.raises(ConfigError, match="wraps another loss"):
        make(loss="MatryoshkaLoss", loss_kwargs={"matryoshka_dims": [32]})
    with pytest.raises(ConfigError, match="'scal' is not an argument of MultipleNegativesRankingLoss"):
        make(loss="MatryoshkaLoss", loss_kwargs={"loss": {"name": "MultipleNegativesRankingLoss", "scal": 1}, "matryoshka_dims": [32]})
    with pytest.raises(ConfigError, match="cannot wrap CachedMultipleNegativesRankingLoss"):
        make(loss="AdaptiveLayerLoss", loss_kwargs={"loss": "CachedMultipleNegativesRankingLoss"})


# --- pre-flight: data against loss, batch against shard ------------------------------------


def test_preflight_counts_rows_and_columns():
    plan = preflight(make())
    assert plan.train["pairs"].columns == ["query", "passage"]
    assert plan.train_rows() == {"pairs": 2000}


def test_preflight_refuses_columns_that_do_not_fit_the_loss():
    config = make(train_datasets={"pairs": {"data": DEBIAN_TRAIN, "loss": "CoSENTLoss"}})
    with pytest.raises(DataError, match="train 'pairs'.*CoSENTLoss needs"):
        preflight(config)


def test_preflight_refuses_num_labels_that_do_not_fit_the_loss():
    config = make(
        model={"name": "sentence-transformers/all-MiniLM-L6-v2", "type": "cross_encoder", "num_labels": 3},
        train_datasets={"pairs": {"data": {"path": STSB_TRAIN, "rename": {"score": "label"}}}},
        loss="BinaryCrossEntropyLoss",
    )
    with pytest.raises(ConfigError, match="num_labels == 1"):
        preflight(config)


def test_softmax_needs_num_labels():
    with pytest.raises(ConfigError, match="SoftmaxLoss needs num_labels"):
        make(train_datasets={"pairs": {"data": STSB_TRAIN, "loss": "SoftmaxLoss"}})


def test_preflight_refuses_a_batch_larger_than_a_worker_shard():
    config = make(
        train_datasets={"pairs": {"data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"], "limit": 100}}},
        scaling={"num_workers": 4},
        args={"output_dir": "o", "per_device_train_batch_size": 32},
    )
    with pytest.raises(DataError, match="25 per worker with 4 workers, fewer than per_device_train_batch_size=32"):
        preflight(config)


def test_preflight_reports_a_missing_source():
    config = make(train_datasets={"pairs": "/nonexistent/data.parquet"})
    with pytest.raises(DataError, match="does not exist"):
        preflight(config)


def test_total_steps_from_epochs_and_accumulation():
    args = make(args={"output_dir": "o", "num_train_epochs": 1.5, "gradient_accumulation_steps": 4}).args
    assert total_optimizer_steps(args, micro_batches_per_epoch=10) == 5  # 3 steps per epoch x 1.5, rounded up
    args = make(args={"output_dir": "o", "max_steps": 7}).args
    assert total_optimizer_steps(args, micro_batches_per_epoch=10) == 7


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "examples", "configs", "train-*.yaml"))), ids=os.path.basename)
def test_every_shipped_train_config_loads(path):
    config = load_config(TrainConfig, path)
    assert config.args.output_dir
    for name in config.train_datasets:
        config.loss_for("train_datasets", name)


# --- pre-flight of values: one pyarrow pass over the columns the loss reads ------------------


def write_table(path, **columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=2)
    return str(path)


def values_config(path, loss, loss_kwargs=None, **source):
    return make(train_datasets={"pairs": {"data": {"path": path, **source}, "loss": loss, "loss_kwargs": loss_kwargs}})


@pytest.mark.parametrize(
    "loss,loss_kwargs,label,message",
    [
        ("SoftmaxLoss", {"num_labels": 3}, [0, 1, 2, 3, 0, 1],
         r"column 'label' row 3 \(counting from 0\) is 3, outside \[0, 3\); SoftmaxLoss needs an integer class id in \[0, 3\)"),
        ("CoSENTLoss", None, [0.1, 0.5, float("nan"), 0.2, 0.3, 0.4],
         r"column 'label' row 2 \(counting from 0\) is nan; CoSENTLoss needs a finite number in every row"),
        ("AnglELoss", None, [0.1, 0.5, 0.2, float("inf"), 0.3, 0.4], r"column 'label' row 3 \(counting from 0\) is inf"),
        ("CosineSimilarityLoss", None, [0.1, 0.5, 0.2, 0.3, 1.5, 0.4],
         r"column .label. row 4 \(counting from 0\) is 1.5, outside \[0, 1\]; CosineSimilarityLoss needs a score in \[0, 1\]"),
    ],
)
def test_preflight_refuses_labels_the_loss_cannot_take(tmp_path, loss, loss_kwargs, label, message):
    from raytune_st.train.scan import check_values

    path = write_table(tmp_path / "d.parquet", a=list("abcdef"), b=list("ghijkl"), label=label)
    with pytest.raises(DataError, match=rf"train 'pairs' \({path}\): {message}"):
        check_values(values_config(path, loss, loss_kwargs), "train_datasets", "pairs")


def test_preflight_reads_a_datasets_directory(tmp_path):
    import datasets

    from raytune_st.train.scan import check_values

    path = str(tmp_path / "saved")
    datasets.Dataset.from_dict({"a": list("abc"), "b": list("def"), "label": [0.2, float("nan"), 0.4]}).save_to_disk(path)
    with pytest.raises(DataError, match=r"column 'label' row 1 \(counting from 0\) is nan"):
        check_values(values_config(path, "CoSENTLoss", format="hf_disk"), "train_datasets", "pairs")


def test_preflight_takes_any_finite_scale_for_cosent(tmp_path):
    from raytune_st.train.scan import check_values

    path = write_table(tmp_path / "d.parquet", a=list("abc"), b=list("def"), score=[0.0, 2.5, 5.0])  # STS-B's 0-5
    check_values(values_config(path, "CoSENTLoss"), "train_datasets", "pairs")


def test_preflight_refuses_a_null_text_in_any_file_and_row_group(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raytune_st.train.scan import check_values

    folder = tmp_path / "parts"
    folder.mkdir()
    write_table(folder / "part-0.parquet", query=list("abcd"), passage=list("efgh"))
    # No statistics in the second file: its column must be read.
    pq.write_table(pa.table({"query": ["i", "j", "k"], "passage": ["l", "m", None]}), folder / "part-1.parquet", write_statistics=False)
    with pytest.raises(DataError, match=rf"train 'pairs' \({folder}/part-1.parquet\): column 'passage' row 2 \(counting from 0\) is null; "
                                        r"MultipleNegativesRankingLoss needs text in every row of its input columns"):
        check_values(values_config(str(folder), "MultipleNegativesRankingLoss"), "train_datasets", "pairs")
    check_values(values_config(str(folder), "MultipleNegativesRankingLoss", limit=6), "train_datasets", "pairs")  # past the limit


def test_preflight_refuses_a_null_text_in_jsonl(tmp_path):
    import json

    from raytune_st.train.scan import check_values

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [{"query": "a", "passage": "b"}, {"query": None, "passage": "c"}]))
    with pytest.raises(DataError, match=r"column 'query' row 1 \(counting from 0\) is null"):
        check_values(values_config(str(path), "MultipleNegativesRankingLoss"), "train_datasets", "pairs")


def test_the_train_job_refuses_bad_values_before_ray_starts(tmp_path, tiny_bi_encoder):
    import ray

    from raytune_st.train.job import train

    path = write_table(tmp_path / "d.parquet", query=["a", None], passage=["b", "c"])
    config = make(model=tiny_bi_encoder, train_datasets={"pairs": path}, args={"output_dir": str(tmp_path / "out")})
    with pytest.raises(DataError, match=r"column 'query' row 1 \(counting from 0\) is null"):
        train(config)
    assert not ray.is_initialized()


def test_metric_for_best_model_is_checked_against_the_models_own_similarity(tmp_path, tiny_bi_encoder):
    """Pre-flight reads the model's similarity function: a cosine metric of a dot-product model is refused."""
    import json
    import shutil

    from raytune_st.train.job import checked_output as check

    model = tmp_path / "dot-model"
    shutil.copytree(tiny_bi_encoder, model)
    settings = json.loads((model / "config_sentence_transformers.json").read_text())
    (model / "config_sentence_transformers.json").write_text(json.dumps({**settings, "similarity_fn_name": "dot"}))
    evaluator = {"type": "InformationRetrievalEvaluator", "name": "dev", "data": {"path": DEBIAN_TRAIN, "columns": ["query", "passage"]}}
    args = {"output_dir": str(tmp_path / "out"), "eval_strategy": "steps", "eval_steps": 10}
    config = make(model=str(model), evaluators=[evaluator], args={**args, "metric_for_best_model": "dev_cosine_ndcg@10"})
    with pytest.raises(ConfigError, match=r"'dev_cosine_ndcg@10' is not reported .*the closest are eval_dev_dot_ndcg@10"):
        check(config)
    check(make(model=str(model), evaluators=[evaluator], args={**args, "metric_for_best_model": "dev_dot_ndcg@10"}))


def test_preflight_reads_a_long_csv_whose_integer_labels_turn_into_fractions(tmp_path):
    """pyarrow's streaming reader types a column from its first block; the scan fixes it to numbers."""
    from raytune_st.train.scan import check_values

    path = tmp_path / "scores.csv"
    rows = [f"text {i},other {i},{1 if i < 100_000 else 0.5}" for i in range(120_000)]
    path.write_text("a,b,score\n" + "\n".join(rows) + "\n")
    check_values(values_config(str(path), "CoSENTLoss"), "train_datasets", "pairs")
    path.write_text("a,b,score\n" + "\n".join(rows) + "\nlast,row,inf\n")
    with pytest.raises(DataError, match=r"column 'score' row 120000 \(counting from 0\) is inf"):
        check_values(values_config(str(path), "CoSENTLoss"), "train_datasets", "pairs")
