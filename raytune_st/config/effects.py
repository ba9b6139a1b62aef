"""What a config setting changes, declared once on the field and read by every job that reuses work.

A field says it with ``option(..., effect=...)``:

- RESULT (the default): what the job makes. Another value means other work: a rerun refuses to
  resume the old run, a pipeline stage runs again.
- EVALUATION: only what is evaluated and reported (eval sets, evaluators, their cadence).
- PLACEMENT: only where and how the work runs and is recorded: the cluster, resources, CPUs,
  threads, actors, where outputs and checkpoints go, checkpoint cadence, trackers, the model card.
- SCALE: the number of training workers and GPU use. A resumed run continues with them, and is
  told that its global batch or device numerics differ.

A setting inside a field takes the field's effect unless it declares its own. Dictionaries of
sections (``train_datasets.<name>``) are keyed with ``*`` for the name.

Example::

    1. table = effects(TrainConfig)    -> {"args.output_dir": "placement", "evaluators": "evaluation",
                                           "scaling.num_workers": "scale", ...}
    2. effect_of("train_datasets.mined.data.path", table) -> "result"
    3. settings_for(TrainConfig, flat, keep=(RESULT, EVALUATION)) -> the flat settings without
       placement and scale

Pure logic, no Ray.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Iterable, Union

RESULT = "result"
EVALUATION = "evaluation"
PLACEMENT = "placement"
SCALE = "scale"
EFFECTS = (RESULT, EVALUATION, PLACEMENT, SCALE)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A plain config (nested dicts) as dotted keys -> values; lists and empty dicts are values."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


@functools.lru_cache(maxsize=None)
def _effects(config_cls: type) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        effect = field.metadata.get("effect", RESULT)
        if effect != RESULT:
            out.append((field.name, effect))
            continue
        for suffix, section in _sections(hints[field.name]):
            out += [(f"{field.name}{suffix}.{key}", inner) for key, inner in _effects(section)]
    return tuple(out)


def _sections(tp: Any) -> Iterable[tuple[str, type]]:
    """The config sections (dataclasses) a field's type holds: ("", cls) itself, (".*", cls) per dict value."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            yield from _sections(arg)
    elif origin is dict:
        for suffix, section in _sections(typing.get_args(tp)[1]):
            yield ".*" + suffix, section
    elif dataclasses.is_dataclass(tp):
        yield "", tp


def effects(config_cls: type) -> dict[str, str]:
    """Dotted key -> effect of every setting of `config_cls` whose effect is not RESULT."""
    return dict(_effects(config_cls))


def effect_of(key: str, table: dict[str, str]) -> str:
    """The effect of a dotted key: that of the longest declared key it is or lies under, else RESULT."""
    parts = key.split(".")
    best, best_length = RESULT, 0
    for declared, effect in table.items():
        pattern = declared.split(".")
        if len(pattern) > len(parts) or len(pattern) <= best_length:
            continue
        if all(p in ("*", k) for p, k in zip(pattern, parts)):
            best, best_length = effect, len(pattern)
    return best


def settings_for(config_cls: type, flat: dict[str, Any], keep: tuple[str, ...]) -> dict[str, Any]:
    """The dotted settings of a `config_cls` config whose effect is one of `keep`."""
    table = effects(config_cls)
    return {key: value for key, value in flat.items() if effect_of(key, table) in keep}
