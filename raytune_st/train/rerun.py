"""A rerun resumes exactly the run it finds, or is refused: the checkpoint's config against this one.

Ray Train resumes a run from the newest checkpoint in ``storage_path/run.name``. That is only
right when the run would have come out the same: a rerun with another learning rate or data
set would otherwise pick up the old run (finished, it returns at once) and write outputs that
claim the new settings. Every checkpoint holds the config that wrote it (``config.yaml``), so
pre-flight compares the two and refuses a rerun that differs in anything that shapes the
trained model, naming each difference.

What a setting changes is declared on its field (:mod:`raytune_st.config.effects`). A rerun may
change where the run runs and how it is checkpointed (PLACEMENT), and how it is logged and
evaluated unless evaluation picks the final model (EVALUATION). A changed number of workers or
GPU use (SCALE) is allowed with a warning, like torchtune's ``_update_recipe_state``: resuming
on fewer workers after losing a node is a rerun a user wants, but it does not reproduce the
uninterrupted run.

Example::

    1. config_differences({"args": {"learning_rate": 2e-5}}, {"args": {"learning_rate": 5e-5}})
       -> [("args.learning_rate", 2e-05, 5e-05)]
    2. refused_differences(TrainConfig, differences, evaluation_picks_model=False)
       -> the differences that change the result (pure logic, no Ray; reading: latest_checkpoint_config)

Data rewritten in place under the same path is caught too: every checkpoint also records its
data sets' files and sizes (:func:`data_files`), compared the same way.
"""

from __future__ import annotations

import posixpath
import warnings
from typing import Any, Optional

import yaml

from raytune_st.config.core import build, dump_yaml
from raytune_st.config.effects import EVALUATION, RESULT, SCALE, effect_of, effects, flatten
from raytune_st.errors import ConfigError, RaytuneWarning

_MISSING = "(not set)"

class RerunWarning(RaytuneWarning):
    """A resumed run whose checkpoint was written with another number of workers or devices."""


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Every dotted key whose value differs between two plain configs, as (key, old, new), sorted.

    A key one side lacks shows as "(not set)" on that side.
    """
    before, after = flatten(old), flatten(new)
    keys = sorted(set(before) | set(after))
    return [
        (key, before.get(key, _MISSING), after.get(key, _MISSING))
        for key in keys
        if before.get(key, _MISSING) != after.get(key, _MISSING)
    ]


def refused_differences(
    config_cls: type, differences: list[tuple[str, Any, Any]], *, evaluation_picks_model: bool
) -> list[tuple[str, Any, Any]]:
    """The differences that change the trained model: of RESULT settings, and of EVALUATION ones
    when the evaluations pick the final model or the checkpoints kept."""
    table = effects(config_cls)
    refused = (RESULT, EVALUATION) if evaluation_picks_model else (RESULT,)
    return [d for d in differences if effect_of(d[0], table) in refused]


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)  # 2e-05, as Python and the YAML the user wrote say it
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def describe(differences: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}: {_shown(old)} -> {_shown(new)}" for key, old, new in differences)


# A text file is digested by its first and last bytes, this many each (whole when it is smaller):
# pre-flight reads at most twice this much per file, however large the data set.
EDGE_BYTES = 64 * 2**10


def content_digest(fs: Any, path: str, size: int) -> str:
    """A short digest of what a data file holds, cheap enough for every pre-flight.

    A Parquet file: its footer (schema, row groups, every column chunk's statistics, offsets
    and sizes), which most rewrites change even at the same size. Another file: its first and
    last :data:`EDGE_BYTES`. A rewrite that keeps all of that is not seen.
    """
    import hashlib

    digest = hashlib.sha256()
    with fs.open_input_file(path) as handle:
        tail = handle.read_at(8, size - 8) if size >= 12 else b""
        footer = int.from_bytes(tail[:4], "little") if tail[4:] == b"PAR1" else -1
        if 0 <= footer <= size - 12:
            digest.update(handle.read_at(footer, size - 8 - footer))
        elif size <= 2 * EDGE_BYTES:
            digest.update(handle.read_at(size, 0) if size else b"")
        else:
            digest.update(handle.read_at(EDGE_BYTES, 0))
            digest.update(handle.read_at(EDGE_BYTES, size - EDGE_BYTES))
    return digest.hexdigest()[:16]


def data_files(config: Any) -> dict[str, list[list[Any]]]:
    """The files each data set reads, with sizes and content digests:
    {"train_datasets.<name>": [[file, bytes, digest], ...]}.

    So that a rerun sees data rewritten in place (files added, removed, of another size, or
    rewritten at the same size) though its config names the same path (:func:`content_digest`).
    """
    import pyarrow.fs

    from raytune_st.data.sources import source_files
    from raytune_st.outputs import filesystem

    found: dict[str, list[list[Any]]] = {}
    for section in ("train_datasets", "eval_datasets"):
        for name, entry in getattr(config, section).items():
            source = entry.data
            if source.format == "ray_object":
                from raytune_st.objects import table_info

                # An object's name is its content's digest (or a name of its own): nothing on disk to list.
                found[f"{section}.{name}"] = [[source.path, table_info(source.path)[1]]]
                continue
            if source.format == "hf_disk":
                fs, root = filesystem(source.path)
                infos = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)) if i.type == pyarrow.fs.FileType.File]
            else:
                fs, files = source_files(source)
                root = posixpath.dirname(files[0]) if len(files) == 1 else filesystem(source.path)[1]
                infos = fs.get_file_info(files)
            found[f"{section}.{name}"] = sorted(
                [posixpath.relpath(i.path, root), i.size, content_digest(fs, i.path, i.size)] for i in infos
            )
    found.update(code_files(config))
    return found


CODE_KEY = "code "
# RayTrainer's pickled objects: their bytes are named in the config (ray-object://blob/<digest>).
_PICKLED = {"raytune_st.trainer:staged_loss", "raytune_st.trainer:StagedEvaluator"}


def code_files(config: Any) -> dict[str, list[list[Any]]]:
    """The source file of each component the config names by import path (losses, evaluators, a
    model factory): {"code module.path:Name": [[file, bytes, digest]]}, so that a rerun sees the
    code edited though the config names the same path."""
    import hashlib
    import inspect
    import os

    from raytune_st.components import import_object, is_import_path

    paths = []
    for section in ("train_datasets", "eval_datasets"):
        for name in getattr(config, section):
            spec = config.loss_for(section, name)
            inner = spec.kwargs.get("loss")
            inner = inner.get("name") if isinstance(inner, dict) else inner
            paths += [p for p in (spec.name, inner) if is_import_path(p)]
    paths += [e.type for e in config.evaluators if is_import_path(e.type)]
    if config.model.factory:
        paths.append(config.model.factory)
    found = {}
    for path in sorted(set(paths) - _PICKLED):
        source = inspect.getsourcefile(import_object(path, what=path))
        if source is None:
            continue
        with open(source, "rb") as handle:
            code = handle.read()
        found[f"{CODE_KEY}{path}"] = [[os.path.basename(source), len(code), hashlib.sha256(code).hexdigest()[:16]]]
    return found


def file_differences(old: dict[str, Any], new: dict[str, Any], changed_keys: list[str]) -> list[tuple[str, Any, Any]]:
    """The data sets whose files differ, as (key, old, new) phrases; sets whose config changed are left out
    (their difference is already named). Records of an older raytune_st carry sizes only."""
    out = []
    for key in sorted(set(old) & set(new)):
        if any(k.startswith(key + ".") for k in changed_keys):
            continue
        before = {entry[0]: tuple(entry[1:]) for entry in old[key]}
        after = {entry[0]: tuple(entry[1:]) for entry in new[key]}
        after_compared = {f: a[: len(before[f])] if f in before else a for f, a in after.items()}
        if before == after_compared:
            continue
        gone = [f for f in before if f not in after]
        added = [f for f in after if f not in before]
        resized = [f for f in before if f in after and before[f][0] != after[f][0]]
        rewritten = [f for f in before if f in after and f not in resized and before[f] != after_compared[f]]
        parts = [
            f"{len(files)} {verb} ({', '.join(files[:3])}{', ...' if len(files) > 3 else ''})"
            for files, verb in ((resized, "of another size"), (rewritten, "rewritten at the same size"), (added, "added"), (gone, "removed"))
            if files
        ]
        what = f"{key[len(CODE_KEY):]} (its source file)" if key.startswith(CODE_KEY) else f"{key}.data files"
        out.append((what, f"{len(before)} file(s)", "; ".join(parts)))
    return out


def _newest_complete_checkpoint(run_dir: str) -> Optional[tuple[Any, str]]:
    """(filesystem, path) of the newest checkpoint in `run_dir` that was written whole, or None."""
    import pyarrow.fs

    from raytune_st.outputs import filesystem
    from raytune_st.train.checkpointing import CONFIG_FILE

    fs, root = filesystem(run_dir)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError:
        return None  # not listable (yet): there is nothing to resume
    checkpoints = sorted(
        e.path for e in entries if e.type == pyarrow.fs.FileType.Directory and posixpath.basename(e.path).startswith("checkpoint-")
    )
    for path in reversed(checkpoints):
        # One without its config was cut short while it was written; Ray resumes from a complete one.
        if fs.get_file_info(posixpath.join(path, CONFIG_FILE)).type == pyarrow.fs.FileType.File:
            return fs, path
    return None


def latest_checkpoint_config(run_dir: str) -> Optional[tuple[str, dict[str, Any], Optional[dict[str, Any]]]]:
    """(checkpoint path, its config as plain data, its data files or None) of the newest checkpoint in `run_dir`, or None."""
    import json

    import pyarrow.fs

    from raytune_st.train.checkpointing import CONFIG_FILE, DATA_FILE

    found = _newest_complete_checkpoint(run_dir)
    if found is None:
        return None
    fs, path = found
    with fs.open_input_stream(posixpath.join(path, CONFIG_FILE)) as handle:
        config = yaml.safe_load(handle.read().decode()) or {}
    files = None  # checkpoints written before data files were recorded have none
    data_file = posixpath.join(path, DATA_FILE)
    if fs.get_file_info(data_file).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(data_file) as handle:
            files = json.loads(handle.read().decode())
    return path, config, files


def latest_checkpoint_history(run_dir: str) -> list[dict[str, Any]]:
    """Every metrics record of the run in `run_dir` up to its newest checkpoint ([] when it has none)."""
    import pyarrow.fs

    from raytune_st.train.checkpointing import HISTORY_FILE, parse_history

    found = _newest_complete_checkpoint(run_dir)
    if found is None:
        return []
    fs, path = found
    history_file = posixpath.join(path, HISTORY_FILE)
    if fs.get_file_info(history_file).type != pyarrow.fs.FileType.File:
        return []
    with fs.open_input_stream(history_file) as handle:
        return parse_history(handle.read().decode())


def with_defaults(config_cls: type, old: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config with the keys a later version added at their defaults (so a key that
    did not exist then is no difference); as written when this version cannot read it."""
    try:
        return yaml.safe_load(dump_yaml(build(config_cls, old)))
    except Exception:  # a key removed since, a value no longer valid: compared as written
        return old


def check_rerun(config: Any, run_dir: str) -> None:
    """Refuse to resume the run in `run_dir` with a config that would train another model.

    With ``run.overwrite`` the old run's checkpoints are deleted instead, and the run starts
    afresh. Warns (:class:`RerunWarning`) when only the number of workers or GPU use changed.
    """
    found = latest_checkpoint_config(run_dir)
    if found is None:
        return
    checkpoint, old, old_files = found
    new = yaml.safe_load(dump_yaml(config))  # the same serialisation the checkpoint's config went through
    old = with_defaults(type(config), old)
    differences = config_differences(old, new)
    args = config.args
    picks_model = args.load_best_model_at_end or args.save_strategy == "best"
    refused = refused_differences(type(config), differences, evaluation_picks_model=picks_model)
    if old_files is not None:
        refused += file_differences(old_files, data_files(config), [key for key, _, _ in differences])
    if refused:
        if config.run.overwrite:
            from raytune_st.outputs import filesystem

            fs, root = filesystem(run_dir)
            fs.delete_dir(root)
            warnings.warn(
                f"run.overwrite: deleted the checkpoints of the earlier run in {run_dir} (its config differs: "
                f"{describe(refused)}); training starts afresh",
                RerunWarning,
                stacklevel=2,
            )
            return
        raise ConfigError(
            f"{run_dir} holds the checkpoints of a run made with another config, which this run would resume "
            f"instead of training its own: {describe(refused)}. Set a new run.name (or a new args.output_dir) to "
            "train this config as a new run, restore the old values to resume the old run, or set "
            "run.overwrite=true to delete the old checkpoints and start afresh"
        )
    table = effects(type(config))
    changed = [d for d in differences if effect_of(d[0], table) == SCALE]
    if changed:
        warnings.warn(
            f"resuming {checkpoint} with {describe(changed)}: the global batch (or device numerics) differ from "
            "the checkpointed run's and the current epoch's data restarts, so the result will not equal an "
            "uninterrupted run's",
            RerunWarning,
            stacklevel=2,
        )
