"""Tests for raytune_st.cli: argument handling, config printing and one-line user errors."""

from __future__ import annotations

import pytest
import yaml

from raytune_st import cli
from raytune_st.config import build
from raytune_st.errors import ConfigError, DataError


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "evaluate.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": str(tmp_path),
                "evaluators": [{"type": "EmbeddingSimilarityEvaluator", "name": "sts", "data": "sts.parquet", "batch_size": 8}],
                "output": str(tmp_path / "out"),
            }
        )
    )
    return str(path)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_print_config_applies_overrides_and_round_trips(config_file, capsys, tmp_path):
    assert cli.main(["evaluate", "--config", config_file, "--print-config", "output.path=elsewhere", "model.max_seq_length=64"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["output"] == {"path": "elsewhere"}
    assert printed["model"]["name"] == str(tmp_path) and printed["model"]["max_seq_length"] == 64
    assert printed["model"]["type"] == "bi_encoder"  # implied by the evaluators
    assert printed["evaluators"][0]["batch_size"] == 8 and printed["evaluators"][0]["data"]["format"] == "parquet"
    # What --print-config shows builds back to the very config the job would run.
    resolved = cli.load_job_config("evaluate", config_file, ["output.path=elsewhere", "model.max_seq_length=64"])
    assert build(type(resolved), printed) == resolved


def test_help_config_lists_keys(capsys):
    assert cli.main(["evaluate", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("model.num_labels") for line in out.splitlines())
    assert any(line.startswith("output.path") for line in out.splitlines())


def test_unknown_key_exits_2_with_one_line(config_file, capsys):
    assert cli.main(["evaluate", "--config", config_file, "modle=x"]) == 2
    line = one_error_line(capsys)
    assert "unknown key 'modle'" in line and "did you mean 'model'" in line


def test_wrong_type_exits_2(config_file, capsys):
    assert cli.main(["evaluate", "--config", config_file, "num_gpus=lots"]) == 2
    assert "num_gpus" in one_error_line(capsys)


def test_argument_that_is_not_an_override(config_file, capsys):
    assert cli.main(["evaluate", "--config", config_file, "model"]) == 2
    assert "unexpected argument 'model'; overrides are key=value" in one_error_line(capsys)


def test_missing_config_file(capsys, tmp_path):
    assert cli.main(["evaluate", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "does not exist" in one_error_line(capsys)


def test_unknown_job_and_flag_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fly"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "--confg", "x.yaml"])
    assert exc.value.code == 2


def ray_wrapped(error: Exception) -> Exception:
    """What ray.get raises for `error` raised in a task: a RayTaskError that is also an instance of its class."""
    from ray.exceptions import RayTaskError

    try:
        raise error
    except Exception as exc:
        return RayTaskError("evaluate_on_worker", "Traceback (most recent call last):\n  ...", exc).as_instanceof_cause()


def test_user_error_cause_unwraps_ray_task_errors():
    original = DataError("data source 'x.parquet' does not exist")
    wrapped = ray_wrapped(original)
    assert isinstance(wrapped, DataError)  # why the wrapper must not be printed as is
    assert cli._user_error_cause(wrapped) is original
    try:
        raise RuntimeError("stage failed") from wrapped
    except RuntimeError as chained:
        assert cli._user_error_cause(chained) is original
    assert cli._user_error_cause(ray_wrapped(KeyError("bug"))) is None
    assert cli._user_error_cause(ValueError("bug")) is None


class _RaisingJob:
    help = "test job"

    def __init__(self, error):
        self.error = error

    def load(self):
        from raytune_st.evaluation.config import EvaluateConfig

        def run(config):
            raise self.error

        return EvaluateConfig, run


def test_error_from_a_ray_task_prints_one_line(config_file, capsys, monkeypatch):
    monkeypatch.setitem(cli.JOBS, "evaluate", _RaisingJob(ray_wrapped(ConfigError("evaluators: boom"))))
    assert cli.main(["evaluate", "--config", config_file]) == 2
    assert one_error_line(capsys) == "error: evaluators: boom"


def test_bugs_keep_their_traceback(config_file, monkeypatch):
    monkeypatch.setitem(cli.JOBS, "evaluate", _RaisingJob(ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        cli.main(["evaluate", "--config", config_file])


def test_our_warnings_print_as_one_line_and_others_as_python_prints_them(capsys):
    import warnings

    from raytune_st import cli
    from raytune_st.errors import ClusterWarning

    saved = warnings.formatwarning
    try:
        assert cli.main(["mine", "--help-config"]) == 0  # any run of the CLI installs the format
        ours = warnings.formatwarning("2 workers x 1 CPU leave no CPU for reading data", ClusterWarning, "job.py", 7)
        other = warnings.formatwarning("deprecated", DeprecationWarning, "lib.py", 3)
    finally:
        warnings.formatwarning = saved
    assert ours == "warning: 2 workers x 1 CPU leave no CPU for reading data\n"
    assert other.startswith("lib.py:3: DeprecationWarning: deprecated")
