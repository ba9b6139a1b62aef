"""Build any sentence-transformers loss from its name and YAML keyword arguments.

YAML holds strings, numbers and lists; some loss arguments are Python objects. The builder
turns the former into the latter by the argument's name, so a config can say what a script
says:

=========================== ==================================== =========================================
argument                    YAML                                 becomes
=========================== ==================================== =========================================
loss (wrappers)             ``MultipleNegativesRankingLoss`` or  the inner loss, built the same way
                            ``{name: ..., scale: 20}``
guide (GIST, CachedGIST)    a model reference                    a SentenceTransformer (frozen guide)
pos_weight (BCE)            ``5``                                ``torch.tensor(5.0)``
similarity_fct              ``cos_sim``, ``dot_score``, ...      ``sentence_transformers.util.<name>``
distance_metric             ``COSINE_DISTANCE``, ``EUCLIDEAN``,  the member of the loss's metric class
                            ``eucledian_distance``, ...
activation_fn, loss_fct,    ``Sigmoid``, ``MSELoss``, ...        ``torch.nn.<name>()``
cos_score_transformation
weighting_scheme,           ``NDCGLoss2PPScheme``, ...           the cross-encoder scheme class, instantiated
lambda_weight
directions                  a list                               a tuple
=========================== ==================================== =========================================

SoftmaxLoss gets ``embedding_dimension`` from the model when it is not given. With more than
one worker, the in-batch-negative losses (MultipleNegativesRankingLoss, its cached and
symmetric variants, GISTEmbedLoss, CachedGISTEmbedLoss) get ``gather_across_devices=True``
unless the config sets it, so every anchor sees the whole global batch as negatives.

Example::

    1. check_loss_kwargs("MatryoshkaLoss", {"loss": "MultipleNegativesRankingLoss",
                                            "matryoshka_dims": [384, 128]}, "bi_encoder")
    2. loss = build_loss("MatryoshkaLoss", {...same...}, model, "bi_encoder", world_size=2)
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

from raytune_st.config.core import suggest
from raytune_st.errors import ConfigError

WRAPPERS = ("MatryoshkaLoss", "Matryoshka2dLoss", "AdaptiveLayerLoss")
_TORCH_MODULE_ARGS = ("activation_fn", "loss_fct", "cos_score_transformation")
_SCHEME_ARGS = ("weighting_scheme", "lambda_weight")


def inner_loss_spec(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A wrapper's `loss` argument as (name, kwargs): a bare name or {name: ..., <kwargs>}."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        kwargs = dict(value)
        return kwargs.pop("name"), kwargs
    raise ConfigError(
        f"{where}.loss_kwargs.loss: expected the wrapped loss's name or {{name: ..., <its kwargs>}}, got {value!r}"
    )


def _parameters(cls: type) -> tuple[list[str], bool]:
    """The keyword arguments of a loss class (without model) and whether it takes **kwargs."""
    params = inspect.signature(cls.__init__).parameters
    names = [p for p, v in params.items() if p not in ("self", "model") and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    takes_any = any(v.kind == v.VAR_KEYWORD for v in params.values())
    return names, takes_any


def _required(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [
        p
        for p, v in params.items()
        if p not in ("self", "model") and v.default is inspect.Parameter.empty
        and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)
    ]


def check_loss_kwargs(name: str, kwargs: dict[str, Any], model_type: str, *, where: str = "loss") -> None:
    """Check a loss name and its kwargs against the class's signature, without building anything.

    Raises ConfigError for an unknown loss (with the close names), an unknown argument (with
    the arguments it takes), a missing required argument, or a wrapper without an inner loss.
    A ``module:Name`` loss is checked by :func:`raytune_st.components.check_loss`.
    """
    from raytune_st.components import check_loss, is_import_path
    from raytune_st.losses.formats import declared_format, resolve_format, resolve_loss_class

    if is_import_path(name):
        declared_format(check_loss(name, kwargs, where=where), model_type, where=f"{where}: loss {name!r}")
        return

    cls = resolve_loss_class(name, model_type)
    names, takes_any = _parameters(cls)
    for key in kwargs:
        if key not in names and not takes_any:
            raise ConfigError(
                f"{where}: {key!r} is not an argument of {name}{suggest(key, names)}; it takes " + ", ".join(names)
            )
    # Filled in by the builder: the embedding size from the model.
    filled = {"embedding_dimension"} if name == "SoftmaxLoss" else set()
    missing = [p for p in _required(cls) if p not in kwargs and p not in filled]
    if name in WRAPPERS and "loss" in missing:
        raise ConfigError(
            f"{where}: {name} wraps another loss; set loss_kwargs.loss, e.g. loss: MultipleNegativesRankingLoss "
            "(or {name: MultipleNegativesRankingLoss, scale: 20})"
        )
    if missing:
        raise ConfigError(f"{where}: {name} needs " + ", ".join(missing) + " in loss_kwargs")
    if name in WRAPPERS:
        inner_name, inner_kwargs = inner_loss_spec(kwargs["loss"], where)
        resolve_format(name, model_type, inner_name)
        check_loss_kwargs(inner_name, inner_kwargs, model_type, where=f"{where}.loss_kwargs.loss")
    if "guide" in kwargs and not isinstance(kwargs["guide"], str):
        raise ConfigError(f"{where}: guide must be a model reference (a directory or hub id), got {kwargs['guide']!r}")


def _distance_metric(cls: type, value: str) -> Any:
    """A distance metric named in YAML, looked up on the metric classes of the loss's module."""
    import sys

    module = sys.modules[cls.__module__]
    holders = [obj for key, obj in vars(module).items() if isinstance(obj, type) and ("Distance" in key or "Metric" in key)]
    for holder in holders:
        for attr in (value, value.upper()):
            if hasattr(holder, attr):
                return getattr(holder, attr)
    choices = sorted({a for h in holders for a in vars(h) if not a.startswith("_")})
    raise ConfigError(f"distance_metric {value!r} is not one of {cls.__name__}'s metrics{suggest(value, choices)}: " + ", ".join(choices))


def _loss_argument(cls: type, key: str, value: Any, model: Any, model_type: str, world_size: int) -> Any:
    """One YAML value as the Python object the loss's argument expects (see the module docstring)."""
    import torch

    if key == "loss" and cls.__name__ in WRAPPERS:
        inner_name, inner_kwargs = inner_loss_spec(value, cls.__name__)
        return build_loss(inner_name, inner_kwargs, model, model_type, world_size=world_size)
    if key == "guide" and isinstance(value, str):
        from raytune_st.models.loading import load_bi_encoder

        guide = load_bi_encoder(value, device=str(model.device))
        guide.requires_grad_(False)
        return guide
    if key == "pos_weight" and value is not None and not isinstance(value, torch.Tensor):
        return torch.tensor(float(value))
    if key == "similarity_fct" and isinstance(value, str):
        from sentence_transformers import util

        if not callable(getattr(util, value, None)):
            choices = [n for n in ("cos_sim", "dot_score", "euclidean_sim", "manhattan_sim", "pairwise_cos_sim",
                                   "pairwise_dot_score", "pairwise_euclidean_sim", "pairwise_manhattan_sim") if hasattr(util, n)]
            raise ConfigError(f"similarity_fct {value!r} is not a sentence_transformers.util function{suggest(value, choices)}")
        return getattr(util, value)
    if key == "distance_metric" and isinstance(value, str):
        return _distance_metric(cls, value)
    if key in _TORCH_MODULE_ARGS and isinstance(value, str):
        if value.startswith("torch.nn."):  # the full name a loss's get_config_dict gives
            value = value.rpartition(".")[2]
        if not isinstance(getattr(torch.nn, value, None), type):
            raise ConfigError(f"{key} {value!r} is not a torch.nn module class, e.g. Sigmoid, Identity, MSELoss")
        return getattr(torch.nn, value)()
    if key in _SCHEME_ARGS and isinstance(value, str):
        from sentence_transformers.cross_encoder import losses

        if not isinstance(getattr(losses, value, None), type):
            raise ConfigError(f"{key} {value!r} is not a sentence-transformers cross-encoder weighting scheme")
        return getattr(losses, value)()
    if key == "directions" and isinstance(value, list):
        return tuple(value)
    return value


def build_loss(
    name: str,
    kwargs: Optional[dict[str, Any]],
    model: Any,
    model_type: str = "bi_encoder",
    *,
    world_size: int = 1,
) -> "Any":
    """The loss `name` for `model`, its YAML `kwargs` converted to what the class takes.

    `world_size` > 1 turns on gather_across_devices for the in-batch-negative losses unless
    `kwargs` sets it. A ``module:Name`` loss gets `kwargs` as they are.
    """
    from raytune_st.components import build_custom_loss, is_import_path
    from raytune_st.losses.formats import is_in_batch_negatives_loss, resolve_loss_class

    kwargs = dict(kwargs or {})
    check_loss_kwargs(name, kwargs, model_type, where=name)
    if is_import_path(name):
        return build_custom_loss(name, kwargs, model)
    cls = resolve_loss_class(name, model_type)
    names, _ = _parameters(cls)
    built = {key: _loss_argument(cls, key, value, model, model_type, world_size) for key, value in kwargs.items()}
    if name == "SoftmaxLoss" and "embedding_dimension" not in built:
        built["embedding_dimension"] = model.get_embedding_dimension()
    if (
        "gather_across_devices" in names
        and "gather_across_devices" not in built
        and world_size > 1
        and name not in WRAPPERS
        and is_in_batch_negatives_loss(name, model_type)
    ):
        built["gather_across_devices"] = True
    return cls(model, **built)
