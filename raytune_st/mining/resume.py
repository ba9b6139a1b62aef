"""Resuming a mining run: which parts an earlier run left whole, and whether they may be reused.

1. Before Ray starts, :func:`check_settings` compares the config with the settings recorded in
   ``<output>/_work/run.json`` and refuses an output mined with other settings, naming what
   changed (``output.overwrite=true`` replaces it instead).
2. After prepare, when the data is known, :func:`pending_batches` compares the whole
   fingerprint (settings, data, range_max), clears another run's parts (with overwrite),
   checks every remaining part against the manifest written with it (size and sha256 of
   the part and of its scores) and returns the batches still to mine.
3. While parts are (re)written, the directory holds no stats.json, config.yaml or
   scores.png: those files mean a complete run.

Pure logic over files (local or URI), no Ray: the tests call it on a temporary directory.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

from raytune_st.config import to_dict
from raytune_st.config.effects import EVALUATION, RESULT, SCALE, flatten, settings_for
from raytune_st.errors import DataError
from raytune_st.mining import store
from raytune_st.mining.miner import manifest_name, part_name, sidecar_name
from raytune_st.mining.prepare import TEXTS_FORMAT
from raytune_st.mining.select import SEMANTICS
from raytune_st.outputs import OutputDir

RESULT_FILES = ("stats.json", "config.yaml", "scores.png")


def mining_settings(config: Any) -> dict[str, Any]:
    """What the output parts depend on besides the data, as dotted keys -> values.

    Not where the work runs or its outputs go (the PLACEMENT settings, see
    raytune_st.config.effects): a rerun with more actors or on another cluster produces the
    same parts.
    """
    settings = to_dict(config)
    for section in ("model", "cross_encoder"):
        model = getattr(config, section, None)
        if model is not None and model.factory is not None:
            settings[section]["identity"] = model.identity  # the factory's source: an edit re-mines
        if model is not None and model.backend == "torch":  # as recorded before backends existed
            settings[section].pop("backend")
            settings[section].pop("backend_config")
    flat = _comparable(flatten(settings))
    flat["semantics"] = SEMANTICS  # parts mined under older rules are not extended
    flat["prepare"] = TEXTS_FORMAT  # chunk digests of another layout name other cache files
    return flat


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings of a mine config that decide its parts (also of a run recorded under older rules)."""
    from raytune_st.mining.config import MineConfig

    return settings_for(MineConfig, settings, keep=(RESULT, EVALUATION, SCALE))


def _same_run(record: Optional[dict[str, Any]], this_run: str, settings: dict[str, Any], data_digest: str, range_max: int) -> bool:
    """Whether the recorded run made its parts as this one would: the same fingerprint, or (a record
    written when other settings still counted, e.g. index.threads) the same settings, data and range."""
    if record is None:
        return False
    if record.get("fingerprint") == this_run:
        return True
    recorded = record.get("settings")
    return (
        isinstance(recorded, dict)
        and _comparable(recorded) == settings
        and record.get("data") == data_digest
        and record.get("range_max") == range_max
    )


def fingerprint(settings: dict[str, Any], data_digest: str, range_max: int) -> str:
    """The digest of everything the parts depend on: settings, prepared data, resolved range_max."""
    return store.text_digest(json.dumps(settings, sort_keys=True), data_digest, range_max)


def changed_settings(before: dict[str, Any], after: dict[str, Any], limit: int = 3) -> str:
    """'key: old -> new, ...' for the settings that differ (at most `limit` named), or ''."""
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    named = [f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in keys[:limit]]
    if len(keys) > limit:
        named.append(f"and {len(keys) - limit} more")
    return ", ".join(named)


def run_file(root: str) -> str:
    return store.join(root, "_work", "run.json")


def read_run(root: str) -> Optional[dict[str, Any]]:
    """The record of the run that last wrote parts into `root` (None if none, or unreadable)."""
    path = run_file(root)
    if not store.exists(path):
        return None
    try:
        record = json.loads(store.read_text(path))
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def part_names(root: str) -> list[str]:
    return [n for n in store.list_names(root) if n.startswith("part-") and n.endswith(".parquet")]


def _refusal(root: str, parts: int, difference: str) -> DataError:
    return DataError(
        f"{root!r} already holds {parts} part file(s) mined with other settings or data ({difference}); "
        "choose a new output.path, or set output.overwrite=true to replace them"
    )


def check_settings(root: str, settings: dict[str, Any], overwrite: bool) -> None:
    """Before any work: refuse an output whose parts were mined with other settings (unless overwrite)."""
    parts = part_names(root)
    if not parts or overwrite:
        return
    record = read_run(root)
    if record is None or not isinstance(record.get("settings"), dict):
        return  # no settings recorded: decided after prepare, from the fingerprint
    difference = changed_settings(_comparable(record["settings"]), settings)
    if difference:
        raise _refusal(root, len(parts), difference)


def part_damage(root: str, parts_dir: str, batch: int) -> Optional[str]:
    """None when batch `batch` has a whole part: its manifest exists and both files match it; else why not."""
    path = store.join(parts_dir, manifest_name(batch))
    if not store.exists(path):
        return "missing" if not store.exists(store.join(root, part_name(batch))) else "not recorded as complete"
    try:
        manifest = json.loads(store.read_text(path))
        digests = {"part": store.Digest.from_dict(manifest["part"]), "scores": store.Digest.from_dict(manifest["sidecar"])}
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "its manifest is unreadable"
    for what, file in (("part", store.join(root, part_name(batch))), ("scores", store.join(parts_dir, sidecar_name(batch)))):
        reason = store.intact(file, digests[what])
        if reason is not None:
            return f"its scores file: {reason}" if what == "scores" else reason
    return None


def manifest_digest(parts_dir: str, batch: int, key: str) -> store.Digest:
    """The digest recorded for one file of a batch ('part' or 'sidecar')."""
    return store.Digest.from_dict(json.loads(store.read_text(store.join(parts_dir, manifest_name(batch))))[key])


def _clear(directory: str, keep: Callable[[str], bool] = lambda name: False) -> None:
    for name in store.list_names(directory):
        if not keep(name):
            store.delete(store.join(directory, name))


def pending_batches(
    root: str,
    parts_dir: str,
    num_batches: int,
    *,
    settings: dict[str, Any],
    data_digest: str,
    range_max: int,
    overwrite: bool,
    log: Callable[[str], None] = print,
) -> list[int]:
    """The batches still to mine into `root`; refuses (or, with `overwrite`, clears) another run's parts.

    Records this run in ``_work/run.json``. A part is reused only when it matches its
    manifest; a damaged one is said out loud and mined again. When anything is left to
    mine, the result files of an earlier run (stats.json, config.yaml, scores.png) are
    removed first, so that the directory never claims a complete run it does not hold.
    """
    output = OutputDir(root)
    this_run = fingerprint(settings, data_digest, range_max)
    record = read_run(root)
    parts = part_names(root)
    if parts and not _same_run(record, this_run, settings, data_digest, range_max):
        recorded_settings = (record or {}).get("settings")
        if record is None:
            difference = "no record of the run that wrote them"
        elif recorded_settings is None:
            difference = "written by an earlier raytune_st, which recorded no digests of its parts"
        elif isinstance(recorded_settings, dict) and changed_settings(_comparable(recorded_settings), settings):
            difference = changed_settings(_comparable(recorded_settings), settings)
        elif record.get("data") not in (None, data_digest):
            difference = "the data differs"
        else:
            difference = "the settings or data differ"
        if not overwrite:
            raise _refusal(root, len(parts), difference)
        log(f"[mine] output.overwrite: replacing {len(parts)} part(s) of an earlier run ({difference})")
        output.delete(*RESULT_FILES)  # first: the old summary must never describe new parts
        _clear(root, keep=lambda name: name not in parts)
        _clear(parts_dir)
    # Temporary files of writes an interruption cut short.
    for directory in (root, parts_dir):
        _clear(directory, keep=lambda name: ".tmp-" not in name)
    store.write_text(
        run_file(root),
        json.dumps({"fingerprint": this_run, "settings": settings, "data": data_digest, "range_max": range_max}) + "\n",
    )
    pending = []
    for batch in range(num_batches):
        damage = part_damage(root, parts_dir, batch)
        if damage is None:
            continue
        if damage != "missing":
            log(f"[mine] {part_name(batch)} cannot be reused ({damage}); mining it again")
        pending.append(batch)
    if pending:
        output.delete(*RESULT_FILES)
    done = num_batches - len(pending)
    if done:
        log(f"[mine] resuming: {done} of {num_batches} part(s) already written")
    return pending
