"""The mine job's config: shipped YAML, and bad input refused before any heavy work (no Ray here)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mining_fixtures import MINILM, ROOT, SAMPLE
from raytune_st.config import load_config
from raytune_st.errors import ConfigError, DataError
from raytune_st.mining.config import MineConfig

CONFIGS = sorted((ROOT / "examples" / "configs").glob("mine-*.yaml"))


def config(tmp_path: Path, *overrides: str) -> MineConfig:
    base = [f"model={MINILM}", f"dataset.path={SAMPLE}", f"output.path={tmp_path / 'out'}"]
    return load_config(MineConfig, None, [*base, *overrides])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_pass_the_input_checks(path, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    cfg = load_config(MineConfig, path, [f"output.path={tmp_path / 'out'}"])
    assert cfg.check_inputs()[:2] == ("query", "passage")


def test_defaults_are_sentence_transformers_defaults():
    import inspect

    from sentence_transformers.util import mine_hard_negatives

    defaults = {k: v.default for k, v in inspect.signature(mine_hard_negatives).parameters.items()}
    section = MineConfig.__dataclass_fields__["mine"].default_factory()
    for name in section.__dataclass_fields__:
        if name != "seed":
            assert getattr(section, name) == defaults[name], name


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["mine.range_min=5", "mine.range_max=5"], "mine.range_min must be smaller than range_max"),
        (["mine.num_negatives=4", "mine.range_max=5", "mine.range_min=2"], "cannot mine 4 negatives"),
        (["mine.num_negatives=0"], "at least 1"),
        (["index.factory=IVF12,Bogus"], "index.factory: faiss cannot build 'IVF12,Bogus'"),
        (["index.use_gpu=true", "index.num_gpus=1", "mine.range_max=2048"], "2048"),
        (["index.use_gpu=true"], "num_gpus is 0"),
        (["mine.output_format=triplets"], "did you mean 'triplet'"),
        (["mine.sampling=top"], "unknown key 'mine.sampling'"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        config(tmp_path, *overrides)


def test_missing_and_non_text_columns_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no column 'question'"):
        config(tmp_path, "dataset.anchor_column_name=question").check_inputs()
    numbers = tmp_path / "numbers.parquet"
    pd.DataFrame({"text": ["a"], "n": [1]}).to_parquet(numbers)
    with pytest.raises(DataError, match="column 'n' .* holds int, not text"):
        config(tmp_path, f"corpus.path={numbers}", "corpus.column=n").check_inputs()
    with pytest.raises(DataError, match="positive column 'n' holds int"):
        config(tmp_path, f"dataset.path={numbers}").check_inputs()


def test_empty_dataset_is_refused_from_its_metadata(tmp_path):
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({"query": pd.Series([], dtype=str), "passage": pd.Series([], dtype=str)}).to_parquet(empty)
    with pytest.raises(DataError, match="empty"):
        config(tmp_path, f"dataset.path={empty}").check_inputs()


def test_default_columns_are_the_first_two(tmp_path):
    assert config(tmp_path).pair_columns() == ("query", "passage")
    assert config(tmp_path, "dataset.columns=[passage, query]").pair_columns() == ("passage", "query")


def test_cli_prints_one_error_line_for_bad_input(tmp_path, capsys):
    from raytune_st.cli import main

    code = main(["mine", "--config", str(ROOT / "examples/configs/mine-debian.yaml"), f"output.path={tmp_path}", f"dataset.path={SAMPLE}", "dataset.anchor_column_name=nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: dataset.anchor_column_name")
