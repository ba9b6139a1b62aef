"""Models in object storage: download a model directory once per node, then load it locally.

A model reference such as ``s3://bucket/runs/model/final`` names a directory of model files
in any filesystem pyarrow reaches (``s3://``, ``gs://``, ``hdfs://``). Every process that
resolves it (the driver, each embedding actor, each train worker) calls
:func:`fetch_model_dir`, which keeps one local copy per node under the model cache::

    $RAYTUNE_ST_MODEL_CACHE (default ~/.cache/raytune_st/models)/
        <digest>/            the complete copy, with .raytune-st-complete.json inside
        <digest>.lock        held while one process downloads; the others wait for it

``<digest>`` is a hash of the URI and of every object's relative path, size, modification
time and ETag, so a model overwritten in the bucket gets a new copy while an
unchanged one is reused. A copy is downloaded into a temporary directory and renamed into
place only when every file has its listed size, so a killed download never leaves a
directory that a later run trusts.

Credentials come only from where pyarrow's filesystems look for them: AWS_* / GOOGLE_*
environment variables, the instance role, and AWS_ENDPOINT_URL for S3-compatible stores.
They never appear in a URI raytune_st logs, because a URI that carries them is refused.
No Ray here.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from typing import Callable, Optional

from raytune_st.errors import ModelError

COMPLETE_MARKER = ".raytune-st-complete.json"
# Files that make a directory a model: sentence-transformers' module list, or a transformers config.
MODEL_MARKERS = ("modules.json", "config.json")


def is_remote(ref: str) -> bool:
    """Whether `ref` is a URI of a remote filesystem (``file://`` counts as local)."""
    return "://" in ref and not ref.startswith("file://")


def check_no_credentials(uri: str, key: str = "model") -> None:
    """Refuse a URI with a user or password in it: it would be printed, saved and logged."""
    from raytune_st.outputs import credentials_problem

    problem = credentials_problem(uri)
    if problem:
        raise ModelError(f"{key}: {problem}")


def no_model(ref: str) -> ModelError:
    """The error for a directory that holds none of MODEL_MARKERS."""
    return ModelError(
        f"model directory {ref!r} holds no model: none of {', '.join(MODEL_MARKERS)} is in it; point model at the "
        "directory a model was saved to (SentenceTransformer.save / save_pretrained, or a train run's final/)"
    )


def model_cache_root() -> str:
    """Where downloaded models live on this node: RAYTUNE_ST_MODEL_CACHE, else ~/.cache/raytune_st/models."""
    return os.path.expanduser(os.environ.get("RAYTUNE_ST_MODEL_CACHE") or "~/.cache/raytune_st/models")


@dataclass(frozen=True)
class RemoteFile:
    relpath: str
    size: int
    mtime_ns: Optional[int]
    etag: Optional[str]  # S3 and GCS give one per object version; other filesystems none


def list_model_files(uri: str) -> list[RemoteFile]:
    """Every file under the directory `uri`, with size and modification time; ModelError when there is none."""
    import pyarrow.fs

    from raytune_st.outputs import filesystem

    check_no_credentials(uri)
    try:
        fs, root = filesystem(uri)
        info = fs.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File:
            raise ModelError(f"model {uri!r} is a file; point it at the model's directory")
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except ModelError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow: unreachable endpoint, missing bucket, denied, bad URI
        raise ModelError(
            f"cannot list the model directory {uri!r} ({exc}); check the URI, that the bucket exists, and the "
            "credentials and endpoint in the environment (AWS_* / AWS_ENDPOINT_URL, GOOGLE_*)"
        ) from None
    root = root.rstrip("/")
    files = [
        RemoteFile(posixpath.relpath(i.path, root), int(i.size or 0), i.mtime_ns, _etag(fs, i.path))
        for i in infos
        if i.type == pyarrow.fs.FileType.File
    ]
    if not files:
        bucket = root.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
            raise ModelError(
                f"cannot list the model directory {uri!r}: bucket {bucket!r} does not exist or these credentials cannot "
                "see it; check the URI, that the bucket exists, and the credentials and endpoint in the environment"
            )
        raise ModelError(f"model directory {uri!r} does not exist or is empty; check the path")
    if not any(f.relpath in MODEL_MARKERS for f in files):
        raise no_model(uri)
    return sorted(files, key=lambda f: f.relpath)


def _etag(fs, path: str) -> Optional[str]:
    """The object's ETag (one HEAD request on S3): modification times have whole-second resolution."""
    try:
        with fs.open_input_file(path) as handle:
            value = handle.metadata().get("ETag")
    except (OSError, NotImplementedError):
        return None
    return value.decode() if isinstance(value, bytes) else value


def cache_key(uri: str, files: list[RemoteFile]) -> str:
    """The cache directory name for this URI with exactly these files (a changed object changes it)."""
    h = hashlib.sha256(uri.rstrip("/").encode())
    for f in files:
        h.update(f"\0{f.relpath}\0{f.size}\0{f.mtime_ns}\0{f.etag}".encode())
    return h.hexdigest()[:32]


def fetch_model_dir(uri: str, cache_root: Optional[str] = None) -> str:
    """A local directory holding the model at `uri`, downloaded into the node's cache unless already there.

    Safe to call from many processes of one node at once: one downloads, the others wait on
    a file lock and reuse its copy.
    """
    files = list_model_files(uri)
    root = cache_root or model_cache_root()

    def download(staging: str) -> dict:
        _download(uri, files, staging)
        return {"uri": uri, "files": len(files), "bytes": sum(f.size for f in files)}

    return filled_once(os.path.join(root, cache_key(uri, files)), download)


def filled_once(target: str, fill: Callable[[str], dict]) -> str:
    """`target`, a directory of the node's model cache, filled once by `fill(staging)`.

    `fill` writes the files under `staging` (a path that does not exist yet) and returns what
    the completion marker records. It runs under a file lock beside `target`, so that of many
    processes of one node one fills it and the others wait and reuse it; the staging directory
    is renamed into place only once it is complete, so a killed process never leaves a
    directory that a later one trusts.
    """
    if _is_complete(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(target):  # another process finished it while we waited
            return target
        if os.path.exists(target):  # a copy without its marker: never trusted
            shutil.rmtree(target)
        # Staging directories of processes that were killed: nobody else fills this copy
        # while the lock is held.
        for stale in glob.glob(glob.escape(target) + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = f"{target}.tmp-{uuid.uuid4().hex}"
        try:
            record = fill(staging)
            with open(os.path.join(staging, COMPLETE_MARKER), "w") as handle:
                json.dump(record, handle)
            os.rename(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, COMPLETE_MARKER))


def _download(uri: str, files: list[RemoteFile], staging: str) -> None:
    from raytune_st.outputs import filesystem

    fs, root = filesystem(uri)
    root = root.rstrip("/")
    for f in files:
        local = os.path.join(staging, *f.relpath.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        try:
            with fs.open_input_stream(f"{root}/{f.relpath}") as source, open(local, "wb") as sink:
                shutil.copyfileobj(source, sink, length=8 << 20)
        except OSError as exc:
            raise ModelError(f"downloading {uri}/{f.relpath} failed ({exc}); rerun when the store is reachable") from None
        if os.path.getsize(local) != f.size:
            raise ModelError(
                f"downloading {uri}/{f.relpath} gave {os.path.getsize(local)} bytes, the store lists {f.size}; "
                "the object changed during the download: rerun"
            )
