"""Metric names: what a training run reports, and finding a configured name among them.

A training run reports ``loss`` (training) and, when it evaluates, ``eval_loss``,
``eval_<set>_loss`` (several eval sets), ``eval_<evaluator name>_<metric>`` and
``eval_sequential_score`` (several evaluators). `args.metric_for_best_model` and
`search.metric` both name one of them; :func:`resolve_metric` is the one rule for both.

Example::

    1. resolve_metric("dev_cosine_ndcg@10", ["eval_loss", "eval_dev_cosine_ndcg@10"], key="args.metric_for_best_model")
       -> "eval_dev_cosine_ndcg@10"
    2. resolve_metric("dev_cosine_ndcg@100", [...same...], key=...)
       -> ConfigError naming the close valid names

Pure logic, no Ray; :func:`model_facts` reads two small JSON files of a local model.
"""

from __future__ import annotations

import difflib
import json
import os
from typing import Optional, Sequence

from raytune_st.errors import ConfigError

EVAL_PREFIX = "eval_"


def resolve_metric(name: str, reported: Sequence[str], *, key: str, open_prefixes: Sequence[str] = ()) -> str:
    """The reported metric that `name` means: `name` itself, else ``eval_<name>``.

    `open_prefixes` are the prefixes of metrics known only when they are reported (a custom
    evaluator's, ``eval_<its name>_``): a name under one of them is taken as it is, with the
    ``eval_`` prefix, and checked at the first evaluation.

    Raises ConfigError (naming `key`, the closest reported names and the fix) when neither is
    reported.
    """
    for candidate in (name, EVAL_PREFIX + name):
        if candidate in reported:
            return candidate
    for candidate in (name, EVAL_PREFIX + name):
        if any(candidate.startswith(prefix) and len(candidate) > len(prefix) for prefix in open_prefixes):
            return candidate
    close = difflib.get_close_matches(name, list(reported), n=5, cutoff=0.5)
    close += [c for c in difflib.get_close_matches(EVAL_PREFIX + name, list(reported), n=5, cutoff=0.5) if c not in close]
    hint = f"; the closest are {', '.join(close[:5])}" if close else ""
    shown = ", ".join(reported[:12]) + (f", ... ({len(reported)} in all)" if len(reported) > 12 else "")
    raise ConfigError(
        f"{key} {name!r} is not reported by the training runs (it is not produced by any evaluation){hint}. "
        f"They report {shown}; "
        f"set {key} to one of them (the {EVAL_PREFIX!r} prefix may be left out)"
    )


def model_facts(model_dir: Optional[str]) -> tuple[Optional[str], Optional[int]]:
    """(similarity_fn_name, num_labels) of a local model directory, None where it cannot tell.

    sentence-transformers uses cosine when a bi-encoder's config names no similarity function
    (or the directory is a plain transformers checkpoint).
    """
    if not model_dir or not os.path.isdir(model_dir):
        return None, None
    similarity, num_labels = "cosine", None
    st_config = os.path.join(model_dir, "config_sentence_transformers.json")
    if os.path.isfile(st_config):
        with open(st_config) as handle:
            similarity = json.load(handle).get("similarity_fn_name") or similarity
    hf_config = os.path.join(model_dir, "config.json")
    if os.path.isfile(hf_config):
        with open(hf_config) as handle:
            data = json.load(handle)
        if "id2label" in data:
            num_labels = len(data["id2label"])
        elif "num_labels" in data:
            num_labels = int(data["num_labels"])
    return similarity, num_labels
