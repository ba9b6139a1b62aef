"""Tests for raytune_st.config.core: building typed configs from YAML and overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import pytest
import yaml

from raytune_st.config import apply_overrides, build, describe, dump_yaml, load_config, parse_overrides, read_yaml, to_dict
from raytune_st.config.core import option
from raytune_st.data.sources import Source
from raytune_st.errors import ConfigError
from raytune_st.models.config import ModelConfig


@dataclass
class Optim:
    lr: float = option(2e-5, help="learning rate")
    schedule: Literal["linear", "cosine"] = option("linear", help="LR schedule")


@dataclass
class Plugin:
    __extra_field__ = "kwargs"

    type: str = option(help="plugin name")
    kwargs: dict[str, Any] = option(default_factory=dict, help="the plugin's own arguments")


@dataclass
class Job:
    model: ModelConfig = option(help="model")
    data: Source = option(help="data")
    epochs: int = option(1, help="passes over the data")
    fp16: bool = option(False, help="mixed precision")
    optim: Optim = option(default_factory=Optim, help="optimiser")
    tags: list[str] = option(default_factory=list, help="labels")
    plugins: list[Plugin] = option(default_factory=list, help="plugins")
    note: Optional[str] = option(None, help="free text")


BASE = {"model": "some/model", "data": "train.parquet"}


def test_build_fills_defaults_and_expands_shorthand():
    job = build(Job, BASE)
    assert job.model == ModelConfig(name="some/model")
    assert job.data.path == "train.parquet" and job.data.format == "parquet"
    assert job.epochs == 1 and job.optim == Optim() and job.tags == []


def test_unknown_key_names_the_dotted_key_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr' \(did you mean 'lr'\?\)"):
        build(Job, {**BASE, "optim": {"lrr": 1e-4}})
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\).*valid keys under config: data, epochs"):
        build(Job, {**BASE, "epoch": 3})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epochs": "three"}, r"epochs: expected an integer, got 'three'"),
        ({"epochs": 2.5}, r"epochs: expected an integer"),
        ({"epochs": True}, r"epochs: expected an integer"),  # YAML `yes` must not become 1
        ({"fp16": "yes please"}, r"fp16: expected true or false"),
        ({"optim": {"lr": "fast"}}, r"optim\.lr: expected a number, got 'fast'"),
        ({"tags": "a"}, r"tags: expected a list"),
        ({"tags": ["a", 3]}, r"tags\[1\]: expected a string, got 3"),
        ({"optim": 3}, r"optim: expected a mapping, got 3"),
        ({"note": 5}, r"note: expected a string"),
    ],
)
def test_wrong_types_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build(Job, {**BASE, **override})


def test_float_accepts_ints_and_yaml_exponent_strings():
    # PyYAML reads `1e-5` (no dot) as a string; it is a valid learning rate.
    assert build(Job, {**BASE, "optim": yaml.safe_load("lr: 1e-5")}).optim.lr == 1e-5
    assert build(Job, {**BASE, "optim": {"lr": 1}}).optim.lr == 1.0


def test_literal_choices_are_listed_with_suggestion():
    with pytest.raises(ConfigError, match=r"optim\.schedule: 'cosin' is not a valid choice; choose one of 'linear', 'cosine' \(did you mean 'cosine'\?\)"):
        build(Job, {**BASE, "optim": {"schedule": "cosin"}})
    assert build(Job, {**BASE, "optim": {"schedule": "cosine"}}).optim.schedule == "cosine"


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"missing required key 'data'"):
        build(Job, {"model": "m"})
    with pytest.raises(ConfigError, match=r"missing required key 'data\.path'"):
        build(Job, {"model": "m", "data": {"format": "csv"}})


def test_post_init_errors_get_the_section_prefix():
    with pytest.raises(ConfigError, match=r"^data\.limit: must be a positive number of rows, got 0"):
        build(Job, {**BASE, "data": {"path": "x.csv", "limit": 0}})


def test_extra_field_collects_unknown_keys():
    job = build(Job, {**BASE, "plugins": [{"type": "p", "alpha": 1, "beta": [2]}]})
    assert job.plugins == [Plugin(type="p", kwargs={"alpha": 1, "beta": [2]})]
    # to_dict flattens them back beside the declared keys, so the YAML round-trips.
    assert to_dict(job)["plugins"] == [{"type": "p", "alpha": 1, "beta": [2]}]


def test_dump_yaml_round_trip_gives_an_equal_config():
    job = build(
        Job,
        {
            "model": {"name": "m", "type": "cross_encoder", "num_labels": 3},
            "data": {"path": "d.tsv", "columns": ["b", "a"], "rename": {"a": "label"}, "limit": 5},
            "epochs": 4,
            "optim": {"lr": 1e-3, "schedule": "cosine"},
            "tags": ["x"],
            "plugins": [{"type": "p", "k": 1}],
            "note": "über",
        },
    )
    text = dump_yaml(job)
    assert text.index("model:") < text.index("data:") < text.index("epochs:")  # field order
    assert build(Job, yaml.safe_load(text)) == job


def test_overrides_are_yaml_typed_and_dotted():
    assert parse_overrides(["a.b=3", "c=[x, y]", "d=", "e=a=b"]) == [
        (["a", "b"], 3),
        (["c"], ["x", "y"]),
        (["d"], ""),
        (["e"], "a=b"),
    ]
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["epochs"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["optim..lr=1"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["tags=[a"])


def test_apply_overrides_refines_shorthand_and_does_not_mutate():
    data = {"model": "m", "data": "d.parquet", "optim": {"lr": 1.0}}
    out = apply_overrides(data, ["model.num_labels=2", "data.limit=10", "optim.schedule=cosine", "new.key=1"], Job)
    assert out["model"] == {"name": "m", "num_labels": 2}
    assert out["data"] == {"path": "d.parquet", "limit": 10}
    assert out["optim"] == {"lr": 1.0, "schedule": "cosine"}
    assert data == {"model": "m", "data": "d.parquet", "optim": {"lr": 1.0}}
    with pytest.raises(ConfigError, match=r"epochs is 3, not a mapping"):
        apply_overrides({"epochs": 3}, ["epochs.x=1"], Job)
    # Without the config class a shorthand string cannot be refined: its meaning is unknown.
    with pytest.raises(ConfigError, match=r"data is 'd.parquet', not a mapping"):
        apply_overrides(data, ["data.limit=10"])


def test_overrides_expand_shorthand_through_the_sections_own_rule():
    """A data-set entry's shorthand is its `data` source, not a `path`."""
    from raytune_st.train.config import TrainConfig

    data = {"model": "m", "train_datasets": {"pairs": "p.parquet"}, "args": {"output_dir": "out"}}
    out = apply_overrides(data, ["train_datasets.pairs.loss=MultipleNegativesRankingLoss", "model.max_seq_length=64"], TrainConfig)
    assert out["train_datasets"]["pairs"] == {"data": "p.parquet", "loss": "MultipleNegativesRankingLoss"}
    assert out["model"] == {"name": "m", "max_seq_length": 64}


def test_yaml_booleans_read_as_the_choice_they_spell():
    from raytune_st.train.config import TrainingArgs

    args = build(TrainingArgs, {"output_dir": "out", "eval_strategy": False, "save_strategy": False})
    assert (args.eval_strategy, args.save_strategy) == ("no", "no")


def test_load_config_from_yaml_with_overrides(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("model: m\ndata: {path: d.jsonl}\nepochs: 2\n")
    job = load_config(Job, path, ["epochs=5", "data.limit=7"])
    assert job.epochs == 5 and job.data.limit == 7 and job.data.format == "jsonl"
    with pytest.raises(ConfigError, match="unknown key 'epochz'"):
        load_config(Job, path, ["epochz=5"])
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        load_config(Job, path, ["epochs=many"])


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    seq = tmp_path / "list.yaml"
    seq.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections, not list"):
        read_yaml(seq)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert read_yaml(empty) == {}


def test_describe_lists_nested_keys_with_types_and_help():
    rows = {key: (tp, help_text) for key, tp, help_text in describe(Job)}
    assert rows["epochs"] == ("int", "passes over the data")
    assert rows["optim.schedule"] == ("'linear' | 'cosine'", "LR schedule")
    assert rows["model.name"][1] == "local model directory, s3:// / gs:// URI or Hugging Face hub id (or set factory)"
    assert rows["tags"][0] == "list of str"
    assert rows["note"][0] == "str | null"
    assert "plugins" in rows and not any(k.startswith("plugins") and k.endswith("kwargs") for k in rows)  # the extra field is no key


def test_option_rejects_default_and_factory():
    with pytest.raises(TypeError):
        option(1, default_factory=list, help="x")
