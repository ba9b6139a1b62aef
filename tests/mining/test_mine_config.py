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
        (["index.nprobe=16"], "'Flat' has no inverted-list cells to probe; remove index.nprobe"),
        (["index.factory=HNSW32", "index.nprobe=16"], "'HNSW32' has no inverted-list cells"),
    ],
)
def test_bad_settings_are_config_errors(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        config(tmp_path, *overrides)


def test_nprobe_is_taken_by_inverted_file_factories(tmp_path):
    assert config(tmp_path, "index.factory=IVF1024,Flat", "index.nprobe=16").index.nprobe == 16
    assert config(tmp_path, "index.factory=IVF256,PQ16", "index.nprobe=4").index.nprobe == 4


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


@pytest.mark.parametrize(
    "override, match",
    [
        ("compute.embed_num_cpus=-1", "compute.embed_num_cpus: must be more than 0, got -1"),
        ("compute.embed_num_cpus=0", "compute.embed_num_cpus: must be more than 0, got 0"),
        ("compute.embed_num_gpus=-0.5", "compute.embed_num_gpus: must be 0 or more, got -0.5"),
        ("compute.embed_num_cpus=1.5", "compute.embed_num_cpus: Ray accepts fractions only below 1, got 1.5; use 1 or 2"),
        ("compute.mine_num_cpus=0", "compute.mine_num_cpus: must be more than 0"),
        ("compute.cross_encoder_num_cpus=-2", "compute.cross_encoder_num_cpus: must be more than 0"),
        ("compute.cross_encoder_num_gpus=-1", "compute.cross_encoder_num_gpus: must be 0 or more"),
        ("index.num_cpus=0", "index.num_cpus: must be more than 0"),
        ("index.num_gpus=2.5", "index.num_gpus: Ray accepts fractions only below 1"),
    ],
)
def test_bad_resources_are_config_errors_at_config_time(tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        config(tmp_path, override)
    config(tmp_path, "compute.embed_num_cpus=0.25", "index.num_gpus=2")  # fractions below 1 and whole numbers pass


def pairs_dir(tmp_path: Path, second: pd.DataFrame) -> Path:
    directory = tmp_path / "pairs"
    directory.mkdir()
    pd.DataFrame({"query": ["q0", "q1"], "passage": ["p0", "p1"]}).to_parquet(directory / "a.parquet")
    second.to_parquet(directory / "b.parquet")
    return directory


def cli_error(tmp_path, capsys, *overrides: str) -> str:
    """Run `raytune-st mine` and return its one error line; it must exit 2 before Ray starts."""
    import ray

    from raytune_st.cli import main

    code = main(["mine", f"model={MINILM}", f"output.path={tmp_path / 'out'}", *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not ray.is_initialized()
    return err[0]


def test_a_second_file_with_an_integer_query_column_is_refused_by_name(tmp_path, capsys):
    directory = pairs_dir(tmp_path, pd.DataFrame({"query": [1, 2], "passage": ["p2", "p3"]}))
    err = cli_error(tmp_path, capsys, f"dataset.path={directory}")
    assert f"column 'query' holds int in file '{directory / 'b.parquet'}' but string in '{directory / 'a.parquet'}'" in err
    assert not (tmp_path / "out").exists()


def test_a_second_file_without_the_column_is_refused_by_name(tmp_path, capsys):
    directory = pairs_dir(tmp_path, pd.DataFrame({"query": ["q2"], "text": ["p2"]}))
    err = cli_error(tmp_path, capsys, f"dataset.path={directory}")
    assert f"file '{directory / 'b.parquet'}' has no column 'passage' (its columns: ['query', 'text'])" in err
    assert "give every file the same columns" in err


def test_format_jsonl_on_a_parquet_file_is_refused(tmp_path, capsys):
    err = cli_error(tmp_path, capsys, f"dataset.path={SAMPLE}", "dataset.format=jsonl")
    assert err == f"error: '{SAMPLE}' is a Parquet file, but the source's format is jsonl; set format: parquet"


def test_text_that_is_not_utf8_or_a_lone_surrogate_is_refused(tmp_path, capsys):
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"query": "caf\u00e9", "passage": "p"}\n'.encode("latin-1"))
    assert "line 1 is not valid UTF-8 (byte 0xe9 at offset 14); re-encode the file as UTF-8" in cli_error(
        tmp_path, capsys, f"dataset.path={latin1}"
    )
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"query": "a\\ud800", "passage": "p"}\n')
    assert "line 1 holds a lone surrogate" in cli_error(tmp_path, capsys, f"dataset.path={surrogate}")


def test_a_negative_embed_num_cpus_is_one_error_line(tmp_path, capsys):
    err = cli_error(tmp_path, capsys, f"dataset.path={SAMPLE}", "compute.embed_num_cpus=-1")
    assert err.startswith("error: compute.embed_num_cpus: must be more than 0")


def test_changed_settings_against_an_existing_output_are_refused_before_ray(tmp_path, capsys, tiny_model):
    from raytune_st.mining import resume
    from raytune_st.mining.miner import write_part

    out = tmp_path / "out"
    earlier = config(tmp_path, f"model={tiny_model}", "mine.num_negatives=2")
    resume.pending_batches(
        str(out), str(out / "_work" / "parts"), 1, settings=resume.mining_settings(earlier), data_digest="d",
        range_max=10, overwrite=False, log=lambda line: None,
    )
    write_part(str(out), str(out / "_work" / "parts"), 0, pa_table(), {"rows": 1})
    err = cli_error(tmp_path, capsys, f"model={tiny_model}", f"dataset.path={SAMPLE}", "mine.num_negatives=4")
    assert "(mine.num_negatives: 2 -> 4); choose a new output.path, or set output.overwrite=true" in err
    assert (out / "part-00000.parquet").exists()  # a refused run leaves the earlier output as it was


def pa_table():
    import pyarrow as pa

    return pa.table({"query": ["q"], "passage": ["p"], "negative": ["n"]})


def test_stages_that_a_local_ray_cannot_hold_are_refused_from_its_totals(tmp_path):
    from raytune_st.errors import ClusterError
    from raytune_st.mining.job import check_resources_fit

    two_cpus = {"CPU": 2.0}
    check_resources_fit(config(tmp_path), rescore=False, cluster=two_cpus)  # 1 shard x 1 + 0.5
    with pytest.raises(ClusterError, match=r"this Ray has 2 CPUs but mining needs 3.5 at once .*lower index.num_cpus"):
        check_resources_fit(config(tmp_path, "index.shards=3"), rescore=False, cluster=two_cpus)
    check_resources_fit(config(tmp_path, "index.shards=3", "index.num_cpus=0.25"), rescore=False, cluster=two_cpus)
    with pytest.raises(ClusterError, match="needs 2.5 at once"):  # the cross-encoder actor counts only when rescoring
        check_resources_fit(config(tmp_path), rescore=True, cluster=two_cpus)
    with pytest.raises(ClusterError, match="each embedding actor 4"):
        check_resources_fit(config(tmp_path, "compute.embed_num_cpus=4"), rescore=False, cluster=two_cpus)
    with pytest.raises(ClusterError, match="this Ray has 0 GPUs but .* ask for 1; set them to 0 on a CPU machine"):
        check_resources_fit(config(tmp_path, "compute.embed_num_gpus=1"), rescore=False, cluster=two_cpus)
    check_resources_fit(config(tmp_path, "compute.embed_num_gpus=1"), rescore=False, cluster={"CPU": 2.0, "GPU": 1.0})


def test_custom_resources_are_checked_in_the_config_and_against_the_cluster(tmp_path):
    from raytune_st.errors import ClusterError
    from raytune_st.mining.job import check_resources_fit

    pinned = config(tmp_path, "compute.resources={worker_node: 0.01}")
    assert pinned.compute.resources == {"worker_node": 0.01}
    check_resources_fit(pinned, rescore=False, cluster={"CPU": 2.0, "worker_node": 2.0})
    with pytest.raises(ClusterError, match=r"compute.resources asks for 'worker_node', which no node .* \(custom resources here: gpu_node\)"):
        check_resources_fit(pinned, rescore=False, cluster={"CPU": 2.0, "gpu_node": 1.0, "node:10.0.0.1": 1.0})
    with pytest.raises(ConfigError, match=r"compute.resources.CPU: ask for CPU with the \*_num_cpus / \*_num_gpus keys"):
        config(tmp_path, "compute.resources={CPU: 1}")
    with pytest.raises(ConfigError, match=r"compute.resources.worker_node: must be more than 0"):
        config(tmp_path, "compute.resources={worker_node: 0}")


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"include_positives": True},
        {"include_positives": True, "output_format": "n-tuple"},
        {"include_positives": True, "relative_margin": 0.1, "output_format": "n-tuple"},
        {"include_positives": True, "range_min": 1, "sampling_strategy": "random"},
        {"relative_margin": 0.1, "range_min": 1},
    ],
)
def test_the_warnings_are_sentence_transformers_own_for_the_same_parameters(settings, tiny_model, caplog):
    """sentence-transformers' function, run on a few pairs, logs exactly what MineSection.warnings() says."""
    import logging

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from raytune_st.config import build
    from raytune_st.mining.config import ST_LOGGER, MineSection

    pairs = Dataset.from_dict({"q": [f"question {i}" for i in range(8)], "p": [f"answer number {i}" for i in range(8)]})
    with caplog.at_level(logging.WARNING, logger=ST_LOGGER):
        mine_hard_negatives(pairs, SentenceTransformer(tiny_model, device="cpu"), num_negatives=2, verbose=False, **settings)
    theirs = [r.getMessage() for r in caplog.records if r.name == ST_LOGGER]
    assert build(MineSection, {"num_negatives": 2, **settings}).warnings() == theirs
