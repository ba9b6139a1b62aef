"""Typed configs: dataclasses loaded from YAML plus dotted `key=value` overrides.

A job's config is a dataclass tree. Every field is declared with :func:`option`, which
records its one-line help. :func:`build` turns plain YAML data into that tree and checks
it on the way: unknown keys (with the closest valid name), wrong types, and values
outside a `Literal` all raise :class:`~raytune_st.errors.ConfigError` naming the dotted
key, before any work starts.

Two hooks let a dataclass accept friendlier YAML:

* ``from_shorthand(value)`` (classmethod): turns a non-mapping value into a mapping,
  e.g. a bare path string into ``{"path": ...}`` for a data source.
* ``__extra_field__ = "kwargs"``: unknown keys are collected into that ``dict`` field
  instead of being refused (the class validates them itself in ``__post_init__``,
  typically against the signature of the component they are passed to).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, TypeVar, Union

import yaml

from raytune_st.config.effects import EFFECTS
from raytune_st.errors import ConfigError

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, default_factory: Any = _MISSING, effect: str = "result") -> Any:
    """Declare a config field with its one-line help (shown by ``raytune-st <job> --help-config``)
    and what another value of it changes (see :mod:`raytune_st.config.effects`)."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise TypeError("option() takes default or default_factory, not both")
    if effect not in EFFECTS:
        raise TypeError(f"option(effect={effect!r}): expected one of {', '.join(EFFECTS)}")
    kwargs: dict[str, Any] = {"metadata": {"help": help, "effect": effect}}
    if default is not _MISSING:
        kwargs["default"] = default
    if default_factory is not _MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(**kwargs)


def suggest(name: str, choices: typing.Iterable[str]) -> str:
    """A ' (did you mean ...?)' suffix for a misspelt name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in args:
            if arm is type(None):
                continue
            try:
                return _convert(value, arm, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")

    if origin is Literal:
        if value in args and not (isinstance(value, bool) and True not in args and False not in args):
            return value
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no` / `yes` (`eval_strategy: no`) as a boolean.
            for word in (("no", "off", "false") if value is False else ("yes", "on", "true")):
                if word in args:
                    return word
        raise ConfigError(
            f"{key}: {value!r} is not a valid choice; choose one of "
            + ", ".join(repr(a) for a in args)
            + suggest(str(value), [str(a) for a in args])
        )

    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]

    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}

    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads "1e-5" (no dot) as a string; accept any float literal.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def build(cls: type[T], data: Any, key: str = "") -> T:
    """Build the dataclass `cls` from YAML data, checking every key and type.

    `key` is the dotted path of `data` inside the whole config, used in error messages.
    """
    where = key or "config"
    shorthand = getattr(cls, "from_shorthand", None)
    if not isinstance(data, dict) and shorthand is not None:
        data = shorthand(data)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")

    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra_field = getattr(cls, "__extra_field__", None)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in data.items():
        name = str(name)
        dotted = f"{key}.{name}" if key else name
        if name not in fields or name == extra_field:
            if extra_field:
                extra[name] = value
                continue
            valid = sorted(fields)
            raise ConfigError(
                f"unknown key {dotted!r}{suggest(name, valid)}; valid keys under {where}: "
                + ", ".join(valid)
            )
        kwargs[name] = _convert(value, hints[name], dotted)
    if extra_field:
        kwargs[extra_field] = extra
    for name, f in fields.items():
        if name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING:
            dotted = f"{key}.{name}" if key else name
            raise ConfigError(f"missing required key {dotted!r}: {f.metadata.get('help', '')}".rstrip(": "))
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        # __post_init__ checks report the key relative to their own class; prefix the path.
        message = str(exc)
        if key and not message.startswith(key):
            message = f"{key}.{message}"
        raise ConfigError(message) from None


def parse_overrides(overrides: typing.Sequence[str]) -> list[tuple[list[str], Any]]:
    """Parse ``a.b.c=value`` strings; values are read as YAML (``x=3`` is an int, ``x=[a, b]`` a list)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. mine.num_negatives=5)")
        dotted, _, raw = item.partition("=")
        dotted = dotted.strip()
        if not dotted or any(not part for part in dotted.split(".")):
            raise ConfigError(f"override {item!r} has an empty key; write it as section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({exc.problem})") from None
        parsed.append((dotted.split("."), value))
    return parsed


def _field_type(tp: Any, part: str) -> Any:
    """The annotation one level below `tp` along the override path part `part`, or Any."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = arms[0] if len(arms) == 1 else Any
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp).get(part, Any)
    origin = typing.get_origin(tp)
    if origin is dict:
        return typing.get_args(tp)[1]
    if origin in (list, tuple):
        return typing.get_args(tp)[0]
    return Any


def _expand_shorthand(value: Any, tp: Any) -> Any:
    """A shorthand value (a bare path, a model name) as the mapping its section's from_shorthand makes."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = arms[0] if len(arms) == 1 else Any
    shorthand = getattr(tp, "from_shorthand", None)
    return shorthand(value) if shorthand is not None else value


def apply_overrides(data: dict, overrides: typing.Sequence[str], cls: Any = Any) -> dict:
    """Return a copy of `data` with dotted overrides applied (the types are checked later, by `build`).

    A numeric part indexes a list: ``evaluators.0.data=dev.parquet``. With the config class
    `cls`, a shorthand value refined by a sub-key is first expanded the way its section reads
    it: ``train_datasets.pairs.loss=X`` on ``pairs: file.parquet`` gives ``{data: file.parquet, loss: X}``.
    """
    import copy

    data = copy.deepcopy(data)
    for path, value in parse_overrides(overrides):
        set_path(data, path, value, cls)
    return data


def set_path(data: Any, path: typing.Sequence[str], value: Any, cls: Any = Any) -> None:
    """Set `value` at the dotted `path` of plain config data (nested dicts and lists), in place.

    A numeric part indexes a list; a missing mapping on the way is created, and a shorthand
    value is expanded as its section (found along `cls`) reads it. The one walker of dotted
    keys: overrides and Tune's sampled values both go through it.
    """
    dotted = ".".join(path)
    node: Any = data
    tp = cls
    for i, part in enumerate(path):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {dotted}: {'.'.join(path[:i]) or 'config'} is a list of {len(node)}; "
                    f"index it with 0..{len(node) - 1}, not {part!r}"
                )
            key: Any = int(part)
        else:
            key = part
        tp = _field_type(tp, part)
        if i == len(path) - 1:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key)
        if child is None:
            child = node[key] = {}
        elif not isinstance(child, (dict, list)):
            child = node[key] = _expand_shorthand(child, tp)
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {'.'.join(path[: i + 1])} is {child!r}, not a mapping")
        node = child


def missing_part(data: Any, path: typing.Sequence[str]) -> Optional[int]:
    """The index of the first part of the dotted `path` that `data` does not have (None: it has them all)."""
    node: Any = data
    for i, part in enumerate(path):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, typing.Mapping) and part in node:
            node = node[part]
        else:
            return i
    return None


def read_yaml(path: str | Path) -> dict:
    """Read a config file into a mapping, with a clear error when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, not {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """Load `cls` from a YAML file (optional) with dotted overrides applied on top."""
    data = read_yaml(path) if path is not None else {}
    return build(cls, apply_overrides(data, overrides, cls))


def to_dict(config: Any) -> Any:
    """The plain-data form of a config (what `build` reads back to an equal config)."""
    if dataclasses.is_dataclass(config):
        out = {}
        extra_field = getattr(type(config), "__extra_field__", None)
        for f in dataclasses.fields(config):
            value = to_dict(getattr(config, f.name))
            if f.name == extra_field:
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def dump_yaml(config: Any) -> str:
    """The resolved config as YAML, in field order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, type, help) for every field of `cls`, nested sections included."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == getattr(cls, "__extra_field__", None):
            continue
        dotted = f"{prefix}{f.name}"
        tp = hints[f.name]
        rows.append((dotted, _type_name(tp), f.metadata.get("help", "")))
        if typing.get_origin(tp) in (Union, types.UnionType):  # Optional[Section]
            sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            tp = sections[0] if len(sections) == 1 else tp
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, dotted + "."))
    return rows
