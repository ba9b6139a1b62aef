"""The tune config and the sweep's pre-flight checks, without Ray."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config import build, to_dict
from raytune_st.errors import ConfigError, DataError
from raytune_st.tune.config import TuneConfig


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": [f"q{i}" for i in range(32)], "positive": [f"p{i}" for i in range(32)]}), path)
    return str(path)


def sweep(pairs, tmp_path, **search):
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "train_datasets": {"pairs": {"data": pairs, "loss": "MultipleNegativesRankingLoss"}},
        "eval_datasets": {"pairs": {"data": pairs}},
        "args": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "eval_strategy": "steps", "eval_steps": 2, "logging_steps": 2},
        "search": {
            "space": {
                "args.learning_rate": {"loguniform": [1e-6, 1e-4]},
                "train_datasets.pairs.loss": {
                    "choice": [
                        "MultipleNegativesRankingLoss",
                        {"loss": "CachedMultipleNegativesRankingLoss", "loss_kwargs": {"mini_batch_size": 4}},
                    ]
                },
            },
            "metric": "eval_loss",
            "num_samples": 4,
            "scheduler": {"type": "asha", "grace_period": 2},
            **search,
        },
    }
    return build(TuneConfig, data)


def test_a_sweep_config_builds_and_makes_trial_configs(pairs, tmp_path):
    config = sweep(pairs, tmp_path)
    assert config.search.mode == "min"  # a loss is minimised unless told otherwise
    assert config.search.num_trials == 4
    trial = config.trial_config({"args.learning_rate": 3e-5, "train_datasets.pairs.loss": 1})
    assert trial.args.learning_rate == 3e-5
    assert trial.loss_for("train_datasets", "pairs").name == "CachedMultipleNegativesRankingLoss"
    assert trial.loss_for("train_datasets", "pairs").kwargs == {"mini_batch_size": 4}
    assert type(trial).__name__ == "TrainConfig"


def test_grid_search_counts_every_combination(pairs, tmp_path):
    config = sweep(
        pairs, tmp_path, search_alg="grid", num_samples=2,
        space={"args.per_device_train_batch_size": {"choice": [4, 8, 16]}, "args.warmup_ratio": {"grid": [0.0, 0.1]}},
    )
    assert config.search.num_trials == 12
    with pytest.raises(ConfigError, match=r"search_alg grid needs choice/grid domains, but 'args.learning_rate' is continuous"):
        sweep(pairs, tmp_path, search_alg="grid")


LR = {"args.learning_rate": {"loguniform": [1e-6, 1e-4]}}


@pytest.mark.parametrize(
    "search, message",
    [
        ({"space": {"args.learnin_rate": {"uniform": [0, 1]}}}, r"'args.learnin_rate' is not a key of the training config: args has no 'learnin_rate' \(did you mean 'learning_rate'"),
        ({"space": {"train_datasets.pairs.loss": {"choice": ["MultipleNegativesRankingLos"]}}}, r"search.space.train_datasets.pairs.loss = 'MultipleNegativesRankingLos' does not make a valid training config: .*MultipleNegativesRankingLoss"),
        ({"space": {"args.per_device_train_batch_size": {"uniform": [1, 2]}}}, r"search.space.args.per_device_train_batch_size = 1.0 does not make a valid training config: args.per_device_train_batch_size: expected an integer, got 1.0"),
        ({"metric": "eval_ndcg"}, r"search.metric 'eval_ndcg' is not reported by the training runs"),
        ({"metric": None}, r"scheduler asha needs a metric"),
        ({"scheduler": "pbt"}, r"scheduler pbt changes values inside running trials, and 'train_datasets.pairs.loss' cannot change mid-run"),
        ({"scheduler": "pbt", "metric": None, "space": LR}, r"scheduler pbt needs a metric to rank trials"),
        ({"scheduler": "pbt", "search_alg": "optuna", "space": LR}, r"scheduler pbt changes the trials' values itself, which optuna cannot follow"),
        ({"scheduler": {"type": "pbt", "quantile_fraction": 0.8}, "space": LR}, r"quantile_fraction: must be in \(0, 0.5\], got 0.8"),
        ({"search_alg": "optuna", "metric": None, "scheduler": "fifo"}, r"search_alg optuna needs a metric"),
        ({"space": {"args.warmup_ratio": {"grid": [0.0, 0.1]}}, "search_alg": "optuna"}, r"optuna cannot enumerate the grid domain 'args.warmup_ratio'"),
    ],
)
def test_bad_sweeps_fail_before_any_trial(pairs, tmp_path, search, message):
    with pytest.raises(ConfigError, match=message):
        sweep(pairs, tmp_path, **search)


def test_pbt_searches_what_a_running_trial_can_change_and_needs_a_checkpoint_per_evaluation(pairs, tmp_path):
    from raytune_st.tune.job import _scheduler

    space = {**LR, "train_datasets.pairs.loss_kwargs.scale": {"uniform": [10.0, 30.0]}}
    data = to_dict(sweep(pairs, tmp_path))
    data["train_datasets"]["pairs"]["loss_kwargs"] = {"scale": 20.0}
    data["search"] = {"space": space, "metric": "eval_loss", "scheduler": "pbt"}
    with pytest.raises(ConfigError, match=r"pbt clones trials from the checkpoint saved with each evaluation; set args.save_strategy: steps with save_steps: 2 \(now save_strategy: steps, save_steps: 500\)"):
        build(TuneConfig, data)
    data["args"]["save_steps"] = 2
    config = build(TuneConfig, data)
    pbt = _scheduler(config, max_t=4)
    assert type(pbt).__name__ == "PopulationBasedTraining"
    assert pbt._perturbation_interval == 2  # args.eval_steps
    assert set(pbt._hyperparam_mutations) == set(space)


def test_a_metric_needs_evaluation_in_the_trials(pairs, tmp_path):
    with pytest.raises(ConfigError, match=r"only reported when the trials evaluate; set args.eval_strategy"):
        build(TuneConfig, {
            "model": "m",
            "train_datasets": {"pairs": {"data": pairs, "loss": "MultipleNegativesRankingLoss"}},
            "eval_datasets": {"pairs": {"data": pairs}},
            "args": {"output_dir": str(tmp_path)},
            "search": {"space": {"args.learning_rate": {"uniform": [1e-5, 2e-5]}}, "metric": "eval_loss"},
        })


def test_every_loss_option_is_checked_against_its_data_before_any_trial(pairs, tmp_path):
    from raytune_st.tune.job import checked_output as check

    config = sweep(pairs, tmp_path, space={"train_datasets.pairs.loss": {"choice": ["MultipleNegativesRankingLoss", "CoSENTLoss"]}})
    with pytest.raises(DataError, match=r"search.space.train_datasets.pairs.loss = 'CoSENTLoss': .*CoSENTLoss"):
        check(config)


def test_default_concurrency_follows_the_cluster_and_the_trials_workers(pairs, tmp_path):
    from raytune_st.train.plan import planned_steps
    from raytune_st.tune.job import default_concurrency

    config = sweep(pairs, tmp_path)
    assert default_concurrency(config, {"CPU": 8.0}) == 7  # one CPU stays free for Ray Data
    config.scaling.num_workers = 2
    assert default_concurrency(config, {"CPU": 9.0}) == 4
    config.scaling.use_gpu = True
    assert default_concurrency(config, {"CPU": 8.0, "GPU": 4.0}) == 2
    assert default_concurrency(config, {"CPU": 1.0}) == 1
    assert planned_steps(config, {"pairs": 32}) == 4  # max_steps wins
    config.args.max_steps = -1
    config.args.num_train_epochs = 2
    config.args.per_device_train_batch_size = 4
    assert planned_steps(config, {"pairs": 32}) == 8  # 2 epochs x 32 rows / (4 x 2 workers)


def test_train_and_tune_match_metric_names_by_one_exact_rule(pairs, tmp_path):
    """metric_for_best_model and search.metric accept and refuse the same names (they once differed)."""
    from raytune_st.train.config import TrainConfig

    evaluator = {"type": "InformationRetrievalEvaluator", "name": "dev", "data": pairs}

    def accepted(make) -> bool:
        try:
            make()
        except ConfigError as exc:
            assert "is not reported by the training runs" in str(exc)
            return False
        return True

    def as_train(metric):
        data = to_dict(sweep(pairs, tmp_path))
        data.pop("search")
        data["evaluators"] = [evaluator]
        data["args"]["metric_for_best_model"] = metric
        return lambda: build(TrainConfig, data)

    def as_tune(metric):
        data = to_dict(sweep(pairs, tmp_path))
        data["evaluators"] = [evaluator]
        data["search"] = {"space": LR, "metric": metric}
        return lambda: build(TuneConfig, data)

    verdicts = {}
    for metric in ("dev_cosine_ndcg@10", "eval_dev_cosine_ndcg@10", "eval_dev_cosine_ndcg@100", "dev_cosine_ndcg@100", "eval_lossy", "eval_dev_"):
        verdicts[metric] = (accepted(as_train(metric)), accepted(as_tune(metric)))
    assert verdicts == {
        "dev_cosine_ndcg@10": (True, True),
        "eval_dev_cosine_ndcg@10": (True, True),
        "eval_dev_cosine_ndcg@100": (False, False),
        "dev_cosine_ndcg@100": (False, False),
        "eval_lossy": (False, False),
        "eval_dev_": (False, False),
    }
    tuned = as_tune("dev_cosine_ndcg@10")()
    assert tuned.search.metric == "eval_dev_cosine_ndcg@10" and tuned.search.mode == "max"
