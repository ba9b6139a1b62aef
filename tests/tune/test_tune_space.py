"""Search-space parsing and application, without Ray."""

import pytest

from raytune_st.errors import ConfigError
from raytune_st.tune.space import apply_params, check_key, parse_domain, parse_space


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"loguniform": [0, 1e-4]}, r"loguniform bounds must be positive"),
        ({"loguniform": [-1e-5, 1e-4]}, r"loguniform bounds must be positive"),
        ({"uniform": [0.2, 0.1]}, r"uniform needs low < high, got \[0.2, 0.1\]"),
        ({"choice": []}, r"the choice list is empty"),
        ({"grid": []}, r"the grid list is empty"),
        ({"loguniform": [1e-5]}, r"loguniform takes 2 numbers \[low, high\]"),
        ({"randint": [1.5, 4]}, r"randint takes integers"),
        ({"logunifrom": [1e-5, 1e-4]}, r"unknown domain 'logunifrom' \(did you mean 'loguniform'"),
        ({"choice": [1], "uniform": [0, 1]}, r"write one domain as a mapping"),
        ([1e-5, 1e-4], r"write one domain as a mapping"),
        ({"choice": "MultipleNegativesRankingLoss"}, r"choice takes a list"),
    ],
)
def test_bad_domains_name_the_key_and_the_fix(spec, message):
    with pytest.raises(ConfigError, match=r"search\.space\.args\.x: " + message):
        parse_domain("args.x", spec)


def test_empty_space_is_refused():
    with pytest.raises(ConfigError, match="search.space is empty"):
        parse_space({})


def test_choice_domains_are_searched_by_index_and_read_by_label():
    domain = parse_domain("loss", {"choice": ["A", {"loss": "B", "loss_kwargs": {"k": 1}}]})
    assert domain.probe_values() == [0, 1]
    assert [domain.label(i) for i in (0, 1)] == ["A", "B"]
    numeric = parse_domain("args.learning_rate", {"loguniform": [1e-6, 1e-4]})
    assert numeric.probe_values() == [1e-6, 1e-4]
    assert numeric.label(3e-5) == 3e-5


BASE = {
    "loss": "MultipleNegativesRankingLoss",
    "loss_kwargs": {"scale": 20},
    "train_datasets": {"pairs": {"data": {"path": "x.parquet"}, "loss": None, "loss_kwargs": None}},
    "args": {"learning_rate": 5e-5, "per_device_train_batch_size": 8},
    "evaluators": [{"type": "TripletEvaluator", "name": "dev"}],
}


def test_apply_params_sets_values_and_loss_options_with_their_kwargs():
    domains = parse_space(
        {
            "args.learning_rate": {"loguniform": [1e-6, 1e-4]},
            "train_datasets.pairs.loss": {
                "choice": ["MultipleNegativesRankingLoss", {"loss": "CachedMultipleNegativesRankingLoss", "loss_kwargs": {"mini_batch_size": 4}}]
            },
        }
    )
    cached = apply_params(BASE, domains, {"args.learning_rate": 2e-5, "train_datasets.pairs.loss": 1})
    assert cached["args"]["learning_rate"] == 2e-5
    assert cached["train_datasets"]["pairs"]["loss"] == "CachedMultipleNegativesRankingLoss"
    assert cached["train_datasets"]["pairs"]["loss_kwargs"] == {"mini_batch_size": 4}
    # A bare loss name starts from empty kwargs, not the other option's.
    plain = apply_params(BASE, domains, {"train_datasets.pairs.loss": 0})
    assert plain["train_datasets"]["pairs"] == {"data": {"path": "x.parquet"}, "loss": "MultipleNegativesRankingLoss", "loss_kwargs": {}}
    assert BASE["args"]["learning_rate"] == 5e-5  # the base is not modified


def test_apply_params_refuses_a_malformed_loss_option():
    domains = parse_space({"loss": {"choice": [{"name": "X"}]}})
    with pytest.raises(ConfigError, match=r"a loss option is a name or \{loss: Name, loss_kwargs"):
        apply_params(BASE, domains, {"loss": 0})


def test_check_key_accepts_real_keys_and_names_the_missing_part():
    for key in ("args.learning_rate", "train_datasets.pairs.loss", "loss", "evaluators.0.name"):
        check_key(BASE, key)
    with pytest.raises(ConfigError, match=r"'args.learnin_rate' is not a key of the training config: args has no 'learnin_rate' \(did you mean 'learning_rate'\?\)"):
        check_key(BASE, "args.learnin_rate")
    with pytest.raises(ConfigError, match=r"train_datasets has no 'nli'; it has pairs"):
        check_key(BASE, "train_datasets.nli.loss")
    with pytest.raises(ConfigError, match=r"evaluators has no '3'"):
        check_key(BASE, "evaluators.3.name")
