"""Typed configs: YAML plus dotted overrides, checked before any work starts."""

from raytune_st.config.core import (
    apply_overrides,
    build,
    describe,
    dump_yaml,
    load_config,
    option,
    parse_overrides,
    read_yaml,
    suggest,
    to_dict,
)

__all__ = [
    "apply_overrides",
    "build",
    "describe",
    "dump_yaml",
    "load_config",
    "option",
    "parse_overrides",
    "read_yaml",
    "suggest",
    "to_dict",
]
