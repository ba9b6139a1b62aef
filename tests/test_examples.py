"""Every shipped YAML under examples/configs/ loads with the config class of its job."""

from __future__ import annotations

from pathlib import Path

import pytest

from raytune_st.cli import JOBS, load_job_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "examples" / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_loads(path, monkeypatch):
    job = path.name.split("-", 1)[0]
    assert job in JOBS, f"{path.name}: no job {job!r} (jobs: {', '.join(JOBS)}); name configs <job>-<what>.yaml"
    monkeypatch.chdir(REPO)  # configs use paths relative to the repository root
    config = load_job_config(job, str(path.relative_to(REPO)), [])
    assert type(config) is JOBS[job].load()[0]
