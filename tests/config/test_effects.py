"""What each setting changes (raytune_st.config.effects), declared on the fields. No Ray."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest

from raytune_st.config.core import option
from raytune_st.config.effects import EVALUATION, PLACEMENT, RESULT, SCALE, effect_of, effects, flatten, settings_for


@dataclasses.dataclass
class Inner:
    size: int = option(1, help="changes the result")
    threads: int = option(1, effect=PLACEMENT, help="where it runs")


@dataclasses.dataclass
class Outer:
    sets: dict[str, Inner] = option(default_factory=dict, help="named sections")
    inner: Optional[Inner] = option(None, help="an optional section")
    where: Inner = option(default_factory=Inner, effect=PLACEMENT, help="a whole section that is placement")
    seed: int = option(0, help="changes the result")


def test_a_setting_takes_its_own_effect_its_sections_or_result():
    table = effects(Outer)
    assert table == {"sets.*.threads": PLACEMENT, "inner.threads": PLACEMENT, "where": PLACEMENT}
    assert effect_of("sets.mined.threads", table) == PLACEMENT
    assert effect_of("sets.mined.size", table) == RESULT
    assert effect_of("where.size", table) == PLACEMENT  # inside a placement section
    assert effect_of("seed", table) == RESULT
    assert effect_of("semantics", table) == RESULT  # not a config key: counts


def test_settings_keep_the_effects_asked_for():
    flat = flatten({"sets": {"a": {"size": 2, "threads": 4}}, "where": {"size": 1, "threads": 1}, "seed": 3})
    assert settings_for(Outer, flat, keep=(RESULT,)) == {"sets.a.size": 2, "seed": 3}


def test_an_unknown_effect_is_refused_where_the_field_is_declared():
    with pytest.raises(TypeError, match="expected one of result, evaluation, placement, scale"):
        option(1, help="x", effect="speed")


@pytest.mark.parametrize(
    "job,key,effect",
    [
        ("train", "scaling.resources_per_worker.CPU", PLACEMENT),
        ("train", "scaling.num_workers", SCALE),
        ("train", "run.storage_path", PLACEMENT),
        ("train", "evaluators", EVALUATION),
        ("train", "args.learning_rate", RESULT),
        ("train", "train_datasets.mined.data.path", RESULT),
        ("mine", "index.num_cpus", PLACEMENT),
        ("mine", "index.threads", PLACEMENT),
        ("mine", "index.factory", RESULT),
        ("mine", "compute.embed_actors_max", PLACEMENT),
        ("mine", "compute.mine_batch_rows", RESULT),  # one part per batch
        ("tune", "search.storage_path", PLACEMENT),
        ("evaluate", "num_gpus", PLACEMENT),
        ("score", "compute.actors_max", PLACEMENT),
        ("score", "output.column", RESULT),
    ],
)
def test_the_jobs_declare_where_work_runs_as_placement(job, key, effect):
    from raytune_st.registry import JOBS

    assert effect_of(key, effects(JOBS[job].load()[0])) == effect
