"""A user's own losses, evaluators and model builders, named in a config by import path.

A config names sentence-transformers' losses and evaluators by class name
(``MultipleNegativesRankingLoss``) and a user's own by ``module.path:Name``::

    loss: my_project.losses:MarginLoss               # a loss class, or a function model -> loss
    loss_kwargs: {margin: 0.2}
    evaluators:
      - {type: my_project.evaluation:RecallAtK, name: dev, data: dev.parquet, k: 5}
    model: {factory: my_project.models:build_model, kwargs: {dim: 128}}

The module must import on the driver and on every worker: ship it with ``ray job submit
--working-dir .`` or the runtime env's ``py_modules`` (or install it). What is checked here
runs on the driver, before any worker starts:

- the path imports and names something (:func:`import_object`);
- a loss is a ``torch.nn.Module`` class whose constructor takes the model first and whose
  ``forward`` takes ``(features, labels)``, or a function whose first argument is the model
  (:func:`check_loss`); its keyword arguments fit its signature;
- an evaluator is a sentence-transformers ``SentenceEvaluator`` class; its keyword arguments
  and its data's columns fit its constructor (:func:`check_evaluator`);
- a model factory is a function whose keyword arguments fit (:func:`check_model_factory`); what
  it returns is checked where it is called, on the workers (:func:`build_model`), and every
  caller gets the same model (a fixed seed for new layers' weights).

A custom loss's columns cannot be known; a class (or function) that sets ``loss_format`` to
the name of a built-in loss with the same inputs, e.g. ``loss_format = "TripletLoss"``, has its
data checked as that loss's would be (:func:`raytune_st.losses.formats.declared_format`).

Example::

    1. is_import_path("my_project.losses:MarginLoss") -> True; is_import_path("CoSENTLoss") -> False
    2. check_loss("my_project.losses:MarginLoss", {"margin": 0.2}, where="loss")
    3. loss = build_custom_loss("my_project.losses:MarginLoss", {"margin": 0.2}, model)

Pure Python, no Ray; importing a user's module imports whatever it imports.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable, Optional

from raytune_st.config.core import suggest
from raytune_st.errors import ConfigError

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
SHIP_HINT = "ship the module with `ray job submit --working-dir .` or runtime_env py_modules, or install it"


def is_import_path(value: Any) -> bool:
    """Whether `value` is a ``module.path:Name`` string."""
    return isinstance(value, str) and bool(_PATH.match(value))


def import_object(path: str, *, what: str) -> Any:
    """The object `path` (``module.path:Name``, Name may be dotted) names.

    Raises ConfigError, naming `what`, when the module does not import or has no such name.
    """
    module_name, _, attribute = path.partition(":")
    # A module in the directory the job runs from imports, as under `python -m` (the CLI's script
    # directory is on sys.path, not the working directory; Ray's workers get the latter).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"{what} {path!r}: module {module_name!r} does not import ({type(error).__name__}: {error}); "
            f"check the path, then {SHIP_HINT}"
        ) from None
    found: Any = module
    for i, part in enumerate(attribute.split(".")):
        if not hasattr(found, part):
            owner = ".".join([module_name, *attribute.split(".")[:i]])
            names = [n for n in dir(found) if not n.startswith("_")]
            raise ConfigError(f"{what} {path!r}: {owner} has no {part!r}{suggest(part, names)}; check the name after ':'")
        found = getattr(found, part)
    return found


def _fit(function: Callable[..., Any], given: set[str], *, skip: int, where: str, owner: str, provided: set[str] = frozenset()) -> None:
    """Refuse keyword arguments `function` does not take, and required ones neither `given` nor `provided`.

    `skip`: leading parameters the caller fills positionally (self, the model).
    """
    params = list(inspect.signature(function).parameters.values())[skip:]
    named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
    for key in sorted(given):
        if key not in named and not takes_any:
            raise ConfigError(f"{where}: {key!r} is not an argument of {owner}{suggest(key, named)}; it takes " + (", ".join(named) or "nothing"))
    missing = [
        p.name for p in params
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in given and p.name not in provided
    ]
    if missing:
        raise ConfigError(f"{where}: it needs " + ", ".join(missing) + "; set them with its keyword arguments")


def _positional_count(function: Callable[..., Any]) -> tuple[int, bool]:
    params = inspect.signature(function).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional), any(p.kind == p.VAR_POSITIONAL for p in params)


# --- losses ----------------------------------------------------------------------------------------


def check_loss(path: str, kwargs: dict[str, Any], *, where: str) -> Any:
    """The loss class or factory at `path`, after checking its shape and `kwargs` against it."""
    import torch

    obj = import_object(path, what=f"{where}: loss")
    where = f"{where}: loss {path!r}"
    if isinstance(obj, type):
        if not issubclass(obj, torch.nn.Module):
            raise ConfigError(
                f"{where} is a class but not a torch.nn.Module; a loss takes the model in its constructor "
                "and its forward(features, labels) returns the loss tensor"
            )
        count, star = _positional_count(obj.__init__)
        if count < 2 and not star:
            raise ConfigError(f"{where}: its constructor takes no model; a loss is built as Loss(model, **loss_kwargs)")
        count, star = _positional_count(obj.forward)
        if count < 3 and not star:
            raise ConfigError(
                f"{where}: its forward takes {max(count - 1, 0)} argument(s); the training loop calls "
                "loss(features, labels), features being one tokenised dict per input column"
            )
        _fit(obj.__init__, set(kwargs), skip=2, where=where, owner=obj.__name__)
    elif callable(obj):
        count, star = _positional_count(obj)
        if count < 1 and not star:
            raise ConfigError(f"{where}: a loss factory takes the model as its first argument and returns the loss")
        _fit(obj, set(kwargs), skip=1, where=where, owner=obj.__name__)
    else:
        raise ConfigError(f"{where} names a {type(obj).__name__}, not a loss class or a function model -> loss")
    return obj


def build_custom_loss(path: str, kwargs: dict[str, Any], model: Any) -> Any:
    """The loss `path` names, built on `model`; refuses a factory whose result is not a torch module."""
    import torch

    obj = import_object(path, what="loss")
    loss = obj(model, **kwargs)
    if not isinstance(loss, torch.nn.Module):
        raise ConfigError(
            f"loss {path!r} returned a {type(loss).__name__}, not a loss; a loss factory returns a torch.nn.Module "
            "whose forward(features, labels) returns the loss tensor"
        )
    return loss


# --- evaluators ------------------------------------------------------------------------------------


def check_evaluator(path: str, kwargs: dict[str, Any], *, where: str, columns: Optional[list[str]] = None) -> type:
    """The evaluator class at `path`, after checking it is a SentenceEvaluator and that `kwargs`
    (and, when known, the data's `columns`, passed as keyword arguments of the same names) fit it."""
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    cls = import_object(path, what=where)
    where = f"{where} {path!r}"
    if not (isinstance(cls, type) and issubclass(cls, SentenceEvaluator)):
        raise ConfigError(
            f"{where} is not a sentence-transformers evaluator class; subclass "
            "sentence_transformers.sentence_transformer.evaluation.SentenceEvaluator and return a dict of metrics from __call__"
        )
    clash = sorted(set(kwargs) & set(columns or ()))
    if clash:
        raise ConfigError(f"{where}: {', '.join(clash)} is both a column of its data and a keyword argument; keep one")
    # Until the data's columns are read, any required argument may still come from them.
    provided = {"name"} if columns is not None else set(inspect.signature(cls.__init__).parameters)
    _fit(cls.__init__, set(kwargs) | set(columns or ()), skip=1, where=where, owner=cls.__name__, provided=provided)
    return cls


def build_custom_evaluator(path: str, name: str, columns: dict[str, list[Any]], kwargs: dict[str, Any]) -> Any:
    """An instance of the evaluator class at `path`: its data's columns and `kwargs` as keyword arguments."""
    cls = import_object(path, what="evaluator")
    params = inspect.signature(cls.__init__).parameters
    built = dict(kwargs)
    if "name" in params or any(p.kind == p.VAR_KEYWORD for p in params.values()):
        built["name"] = name
    built.update({column: list(values) for column, values in columns.items()})
    return cls(**built)


# --- models ----------------------------------------------------------------------------------------


def check_model_factory(path: str, kwargs: dict[str, Any]) -> Callable[..., Any]:
    """The function at `path`, after checking that `kwargs` fit its signature."""
    where = f"model.factory {path!r}"
    factory = import_object(path, what="model.factory")
    if isinstance(factory, type) or not callable(factory):
        raise ConfigError(f"{where} is not a function; name a function that returns a SentenceTransformer or CrossEncoder")
    _fit(factory, set(kwargs), skip=0, where=where, owner=factory.__name__)
    return factory


def build_model(path: str, kwargs: dict[str, Any], model_type: str) -> Any:
    """The model the factory at `path` returns for `kwargs`; refuses anything but a model of `model_type`."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    model = check_model_factory(path, kwargs)(**kwargs)
    expected = CrossEncoder if model_type == "cross_encoder" else SentenceTransformer
    if not isinstance(model, expected):
        raise ConfigError(
            f"model.factory {path!r} returned a {type(model).__name__}; model.type {model_type} needs a "
            f"{expected.__name__} (set model.type to match the factory)"
        )
    return model
