"""Python objects handed from a driver to its workers through Ray's object store, by name.

``RayTrainer`` and ``raytune_st.mine_hard_negatives`` take objects (a model, in-memory data
sets, a loss or an evaluator); the jobs they run take configs of paths. In between, each
object is registered under a name that stands where a path would:

- ``ray-object://model/<digest>`` (``model.name``): the model saved once, its weights as
  safetensors plus its sentence-transformers config files; ``<digest>`` hashes those files.
  Each file is one object in the store, sent to a node once; every process that loads the
  model (train workers, embedding actors, tune trials) finds or writes one copy per node in
  the model cache (as models in object storage do, :mod:`raytune_st.models.remote`).
- ``ray-object://data/<digest>`` (a data set's ``path``): an Arrow table in blocks of about
  64 MiB, from a ``datasets.Dataset``, or the blocks of a ``ray.data.Dataset``. Ray Data reads
  them where they lie (``ray.data.from_arrow_refs``): each row goes to one worker, and no
  worker gets a copy of the whole set.
- ``ray-object://blob/<digest>``: bytes, e.g. a loss pickled without its model, an evaluator.

Registering needs no Ray (a ``ray.data.Dataset`` excepted: it runs in the caller's session): a
config naming the objects is built and checked first. :func:`ship` then puts what is registered
into the object store of the current Ray session and files the references with a named actor
(``raytune_st.objects.<job id>``, on the driver's node) that every process of the job asks. One
object registered twice (the same model for two trainers) is one entry with two users.
The driver owns the objects: they live as long as it does, so a config naming them cannot be
rerun by another driver (the error says to pass the objects again, or paths).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from raytune_st.errors import ConfigError

SCHEME = "ray-object://"
HOLDER_NAME = "raytune_st.objects"
BLOCK_BYTES = 64 << 20


def is_object(ref: Any) -> bool:
    """Whether `ref` names an object registered here (``ray-object://...``)."""
    return isinstance(ref, str) and ref.startswith(SCHEME)


@dataclass
class _Entry:
    kind: str  # model | data | blob
    meta: dict[str, Any]  # model: {files}; data: {schema, num_rows}; blob: {}
    local: list[Any] = field(default_factory=list)  # this process's values, put into the store by ship()
    stored: Optional[list[Any]] = None  # references this driver already holds (a ray.data.Dataset's blocks)
    refs: Optional[list[Any]] = None  # the references in the current session: set by ship(), or from the holder
    users: int = 1  # registrations in this process (one object may serve two trainers): released at zero


# This process's entries: registered here (the driver), or looked up from the holder.
_ENTRIES: dict[str, _Entry] = {}


def _name(kind: str, digest: str) -> str:
    return f"{SCHEME}{kind}/{digest}"


def _add(name: str, entry: _Entry) -> str:
    """Register `entry` under `name`, or count one more user of the entry already there."""
    if name in _ENTRIES and (_ENTRIES[name].local or _ENTRIES[name].stored):
        _ENTRIES[name].users += 1
    else:
        _ENTRIES[name] = entry
    return name


# --- registering (no Ray) ----------------------------------------------------------------------


def register_model(model: Any) -> str:
    """Save a SentenceTransformer or CrossEncoder into this node's model cache; its object name.

    Saving is device-independent: a model on a GPU the workers lack loads on theirs.
    """
    from raytune_st.models.remote import filled_once, model_cache_root

    root = model_cache_root()
    os.makedirs(root, exist_ok=True)
    saved = tempfile.mkdtemp(prefix="ray-object-", suffix=".tmp", dir=root)
    try:
        model.save(saved, create_model_card=False)
        files = sorted(
            os.path.relpath(os.path.join(d, f), saved).replace(os.sep, "/") for d, _, names in os.walk(saved) for f in names
        )
        digest = hashlib.sha256()
        for relpath in files:
            digest.update(relpath.encode() + b"\0")
            with open(os.path.join(saved, relpath), "rb") as handle:
                for chunk in iter(lambda: handle.read(8 << 20), b""):
                    digest.update(chunk)
        key = digest.hexdigest()[:32]

        def move_in(staging: str) -> dict:
            os.rename(saved, staging)
            return {"object": _name("model", key), "files": len(files)}

        target = filled_once(_model_copy(key), move_in)
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    return _add(_name("model", key), _Entry("model", {"files": files}, local=[target]))


def register_table(table: Any, fingerprint: Optional[str] = None) -> str:
    """An Arrow table's object name; `fingerprint` (e.g. a datasets.Dataset's) keys it, else its content."""
    digest = hashlib.sha256(str(table.schema).encode() + str(table.num_rows).encode())
    if fingerprint is not None:
        digest.update(fingerprint.encode())
    else:
        digest.update(uuid.uuid4().bytes)  # no cheap content key: a name of its own
    name = _name("data", digest.hexdigest()[:32])
    per_block = max(1, math.ceil(table.num_rows * BLOCK_BYTES / max(table.nbytes, 1)))
    blocks = [table.slice(start, per_block) for start in range(0, table.num_rows, per_block)] or [table]
    return _add(name, _Entry("data", {"schema": table.schema, "num_rows": table.num_rows}, local=blocks))


def register_dataset(dataset: Any) -> str:
    """A ray.data.Dataset's object name: it is run once (in the caller's Ray session, which the
    run then uses), its blocks kept in the object store."""
    materialized = dataset.materialize()
    schema = materialized.schema()
    if schema is None or materialized.count() == 0:
        raise ConfigError("the ray.data.Dataset holds no rows; pass a data set with rows")
    refs = materialized.to_arrow_refs()
    meta = {"schema": _arrow_schema(schema), "num_rows": materialized.count()}
    return _add(_name("data", uuid.uuid4().hex), _Entry("data", meta, stored=refs))


def register_blob(data: bytes) -> str:
    return _add(_name("blob", hashlib.sha256(data).hexdigest()[:32]), _Entry("blob", {}, local=[data]))


def release(names: list[str]) -> None:
    """Forget `names` in this process and, in a Ray session that outlives the run (the caller's
    own ray.init), in the holder: the objects leave the store once nobody refers to them."""
    gone = []
    for name in names:
        entry = _ENTRIES.get(name)
        if entry is not None:
            entry.users -= 1
            if entry.users <= 0:
                del _ENTRIES[name]
                gone.append(name)
    import ray

    if gone and ray.is_initialized():
        try:
            ray.get(ray.get_actor(_holder_name()).drop.remote(gone))
        except ValueError:  # no holder: nothing was shipped in this session
            pass


def _arrow_schema(schema: Any) -> Any:
    import pyarrow as pa

    return schema if isinstance(schema, pa.Schema) else schema.base_schema


# --- shipping (the driver, in a Ray session) ----------------------------------------------------


def _holder_name() -> str:
    """The holder of this Ray job (a driver and all its workers, actors and trials share the job id)."""
    import ray

    return f"{HOLDER_NAME}.{ray.get_runtime_context().get_job_id()}"


def _holder() -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    class ObjectHolder:
        """Keeps the references of the objects a driver shipped, for the job's other processes."""

        def __init__(self) -> None:
            self.entries: dict[str, dict[str, Any]] = {}

        def missing(self, names: list[str]) -> list[str]:
            return [n for n in names if n not in self.entries]

        def add(self, name: str, entry: dict[str, Any]) -> None:
            self.entries[name] = entry

        def get(self, name: str) -> Optional[dict[str, Any]]:
            return self.entries.get(name)

        def drop(self, names: list[str]) -> None:
            for name in names:
                self.entries.pop(name, None)

    global _holder_handle
    try:
        return ray.get_actor(_holder_name())
    except ValueError:  # none in this session yet
        pass
    # A named actor lives while its creator's handle does: the driver keeps it for the session. It
    # runs on the driver's node, which lives as long as the objects' owner: a worker node lost
    # takes no reference with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    _holder_handle = ObjectHolder.options(name=_holder_name(), get_if_exists=True, scheduling_strategy=here).remote()
    return _holder_handle


_holder_handle: Any = None


def ship(names: list[str]) -> None:
    """Put the registered objects `names` into this Ray session's object store (once per session)."""
    import numpy as np
    import ray

    holder = _holder()
    for name in ray.get(holder.missing.remote(list(names))):
        entry = _ENTRIES.get(name)
        if entry is None:
            raise ConfigError(f"{name} was released in this process before it was shipped; register the object again")
        if entry.kind == "model":
            directory = entry.local[0]
            # One object per file, read straight into a numpy buffer that workers on a node share.
            refs = [ray.put(np.fromfile(os.path.join(directory, f), dtype=np.uint8)) for f in entry.meta["files"]]
        elif entry.stored is not None:
            refs = entry.stored  # a ray.data.Dataset's blocks, already in the store
        else:
            refs = [ray.put(value) for value in entry.local]
        # Nested in a dict, the references reach the actor as references, not as their values.
        ray.get(holder.add.remote(name, {"kind": entry.kind, "meta": entry.meta, "refs": refs}))
        entry.refs = refs


def _lookup(name: str, kind: str, need_refs: bool = False) -> _Entry:
    """This process's entry for `name`, asking the holder when it is not registered here."""
    entry = _ENTRIES.get(name)
    if entry is not None and (entry.refs is not None or (not need_refs and (entry.local or entry.stored))):
        if entry.kind != kind:
            raise ConfigError(f"{name} is a {entry.kind} object, not {kind}")
        return entry
    import ray

    found = None
    if ray.is_initialized():
        try:
            found = ray.get(ray.get_actor(_holder_name()).get.remote(name))
        except ValueError:  # no holder in this session
            found = None
    if found is None:
        raise ConfigError(
            f"{name} names an object that a RayTrainer or mine_hard_negatives call put into Ray's object store, and this "
            "process cannot reach it (its driver has exited, or this is a rerun of a config that driver wrote); "
            "pass the object again, or save it and pass its path"
        )
    if found["kind"] != kind:
        raise ConfigError(f"{name} is a {found['kind']} object, not {kind}")
    if entry is None:
        entry = _ENTRIES[name] = _Entry(found["kind"], found["meta"])
    entry.refs = found["refs"]
    return entry


# --- reading (any process of the job) -----------------------------------------------------------


def _model_copy(key: str) -> str:
    from raytune_st.models.remote import model_cache_root

    return os.path.join(model_cache_root(), f"ray-object-{key}")


def model_dir(name: str) -> str:
    """A local directory holding the model `name`: this node's copy, written from the store once."""
    from raytune_st.models.remote import filled_once

    def copy_out(staging: str) -> dict:
        import ray

        entry = _lookup(name, "model", need_refs=True)
        for relpath, ref in zip(entry.meta["files"], entry.refs):
            path = os.path.join(staging, *relpath.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            ray.get(ref).tofile(path)
        return {"object": name, "files": len(entry.meta["files"])}

    return filled_once(_model_copy(name.rsplit("/", 1)[-1]), copy_out)


def check_model_object(name: str) -> None:
    """Raise unless the model object `name` can be loaded here."""
    from raytune_st.models.remote import COMPLETE_MARKER

    if not os.path.isfile(os.path.join(_model_copy(name.rsplit("/", 1)[-1]), COMPLETE_MARKER)):
        _lookup(name, "model")


def table_info(name: str) -> tuple[Any, int]:
    """(Arrow schema, number of rows) of the data object `name`."""
    entry = _lookup(name, "data")
    return entry.meta["schema"], entry.meta["num_rows"]


def table_batches(name: str, columns: list[str], batch_rows: int) -> Iterator[Any]:
    """The data object's record batches of `columns`, in order, a block at a time."""
    import ray

    entry = _lookup(name, "data")
    blocks = entry.local or (ray.get(ref) for ref in (entry.stored or entry.refs))  # one block in memory at a time
    for table in blocks:
        yield from table.select(columns).to_batches(max_chunksize=batch_rows)


def ray_dataset(name: str) -> Any:
    """The data object as a Ray Dataset over its blocks in the object store (no copy)."""
    import ray.data

    return ray.data.from_arrow_refs(_lookup(name, "data", need_refs=True).refs)


def blob(name: str) -> bytes:
    import ray

    entry = _lookup(name, "blob")
    return entry.local[0] if entry.local else ray.get(entry.refs[0])
