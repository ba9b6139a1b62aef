"""A rerun of a sweep: resumed only with the config it was started with (no Ray; the Ray test
in test_tune_ray.py resumes and refuses real sweeps)."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config import build
from raytune_st.errors import ConfigError
from raytune_st.train.rerun import RerunWarning
from raytune_st.tune.config import TuneConfig
from raytune_st.tune.rerun import SWEEP_CONFIG, check_sweep_rerun, save_sweep_config, sweep_differences


def test_evaluation_settings_count_in_a_sweep_and_its_location_does_not():
    old = {"args": {"learning_rate": 2e-5, "eval_steps": 2}, "search": {"name": "a", "storage_path": "/x"}}
    new = {"args": {"learning_rate": 2e-5, "eval_steps": 4}, "search": {"name": "b", "storage_path": "/y"}}
    # A train rerun allows another eval_steps; a sweep's metric comes from its evaluations.
    assert sweep_differences(old, new) == [("args.eval_steps", 2, 4)]
    assert sweep_differences(old, {**old, "run": {"max_failures": 3}}) == []
    # Unlike a train rerun, a sweep's output_dir holds its finished trials: moving it is refused.
    assert sweep_differences({"args": {"output_dir": "a"}}, {"args": {"output_dir": "b"}}) == [("args.output_dir", "a", "b")]


@pytest.fixture
def config(tmp_path):
    pairs = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"anchor": ["q0", "q1"], "positive": ["p0", "p1"]}), pairs)

    def make(**args):
        return build(
            TuneConfig,
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "train_datasets": {"pairs": {"data": str(pairs), "loss": "MultipleNegativesRankingLoss"}},
                "args": {"output_dir": str(tmp_path / "out"), "max_steps": 4, **args},
                "search": {"space": {"args.learning_rate": {"choice": [1e-5, 2e-5]}}, "name": "sweep"},
            },
        )

    return make


def sweep_in(tmp_path, config) -> str:
    """An experiment directory as a started sweep leaves it: its config, then Tune's state."""
    experiment = str(tmp_path / "storage" / "sweep")
    save_sweep_config(config, experiment)
    (tmp_path / "storage" / "sweep" / "tuner.pkl").write_bytes(b"Tune's state")  # what Tuner.can_restore looks for
    return experiment


def test_a_sweep_resumes_with_its_own_config_and_is_refused_with_another(tmp_path, config):
    experiment = sweep_in(tmp_path, config())
    check_sweep_rerun(config(), experiment)  # the same config: resumed
    with pytest.raises(ConfigError, match=r"args.max_steps: 4 -> 8\. Set a new search.name"):
        check_sweep_rerun(config(max_steps=8), experiment)
    check_sweep_rerun(config(), str(tmp_path / "storage" / "no-such-sweep"))  # nothing to resume


def test_run_overwrite_deletes_the_other_sweep(tmp_path, config):
    experiment = sweep_in(tmp_path, config())
    changed = config(max_steps=8)
    changed.run.overwrite = True
    with pytest.warns(RerunWarning, match=r"deleted the earlier sweep .* \(args.max_steps: 4 -> 8\)"):
        check_sweep_rerun(changed, experiment)
    assert not (tmp_path / "storage" / "sweep").exists()


def test_a_sweep_without_a_saved_config_is_not_resumed_blindly(tmp_path, config):
    experiment = sweep_in(tmp_path, config())
    (tmp_path / "storage" / "sweep" / SWEEP_CONFIG).unlink()
    with pytest.raises(ConfigError, match=rf"it holds no {SWEEP_CONFIG} \(started by an earlier raytune_st\)"):
        check_sweep_rerun(config(), experiment)
