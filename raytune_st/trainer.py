"""``RayTrainer``: sentence-transformers' trainer constructor, run as the train job on Ray Train.

A script from the sentence-transformers guides changes its import and its trainer class::

    1. model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    2. loss = MultipleNegativesRankingLoss(model)
    3. args = SentenceTransformerTrainingArguments(output_dir="out", max_steps=100, ...)
    4. trainer = RayTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                            loss=loss, evaluator=dev_evaluator, scaling={"num_workers": 2})
    5. metrics = trainer.train()   # the trained weights are back in `model`, out/final on disk

The constructor turns its objects into the train job's config (:func:`training_config`):

- `args` (SentenceTransformerTrainingArguments or CrossEncoderTrainingArguments): every field
  the job supports becomes its `args.<field>`; any other field set to a non-default value is an
  error that lists them (:func:`args_section`).
- `model`: saved once (safetensors weights and its sentence-transformers config) and put into
  Ray's object store; each node writes one copy and its workers load it.
- `train_dataset` / `eval_dataset`: a ``datasets.Dataset``, a dict or ``DatasetDict`` of them
  (several named sets), a ``ray.data.Dataset`` or a source path; an in-memory set goes into the
  object store once as Arrow blocks, which Ray Data streams to the workers like any source.
- `loss`: one loss object, a dict of them per data set, or a function ``model -> loss``. A
  sentence-transformers loss without weights of its own is named with its settings
  (``get_config_dict``), so it is built as the YAML job builds it (gather_across_devices on
  several workers included); any other loss object is pickled without its model, which each
  worker puts back (:func:`staged_loss`).
- `evaluator`: one or a list; each pickled and run on rank 0 (:class:`StagedEvaluator`).

Objects reach the workers through Ray's object store, named in the config as
``ray-object://...`` (:mod:`raytune_st.objects`), so nothing needs a shared filesystem.

``trainer.tune(search)`` sweeps the same objects with Ray Tune instead (the tune job's `search`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import os
import pickle
from typing import Any, Iterator, Optional

from raytune_st import objects
from raytune_st.config.core import build
from raytune_st.errors import ConfigError
from raytune_st.train.config import TrainConfig

# TrainingArguments fields that follow from others or only name where a trainer logs; never refused.
_DERIVED = {"do_eval", "do_train", "do_predict", "logging_dir", "output_dir", "overwrite_output_dir", "local_rank"}
_MODEL_KEY = "raytune_st.model"


# --- args ------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """An enum as its value, a tuple as a list, a function as its name (as get_config_dict gives it)."""
    value = getattr(value, "value", value)
    if type(value).__module__.startswith("torch.nn"):  # a module instance, e.g. an activation_fn default
        return f"{type(value).__module__}.{type(value).__qualname__}"
    if callable(value) and hasattr(value, "__name__") and not isinstance(value, type):
        return value.__name__
    return list(value) if isinstance(value, tuple) else value


def args_section(args: Any) -> dict[str, Any]:
    """The train job's `args` section from a TrainingArguments object.

    Raises ConfigError listing every field set to a non-default value that the job does not
    support (deepspeed, fsdp, torch_compile, ...), never silently ignoring one.
    """
    from raytune_st.train.config import TrainingArgs

    supported = {f.name for f in dataclasses.fields(TrainingArgs)}
    defaults = type(args)(output_dir=args.output_dir)
    section: dict[str, Any] = {}
    unsupported = []
    for field in dataclasses.fields(args):
        value, default = getattr(args, field.name), getattr(defaults, field.name)
        if field.name in supported:
            section[field.name] = _plain(value)
        elif field.name not in _DERIVED and value != default:
            unsupported.append(f"{field.name}={value!r}")
    if unsupported:
        raise ConfigError(
            f"{type(args).__name__} sets options raytune_st's trainer does not support: {', '.join(unsupported)}; "
            "leave them at their defaults (the supported ones are the keys of `raytune-st train --help-config`)"
        )
    # transformers 5 folds warmup_ratio into warmup_steps: a float below 1 is a ratio.
    warmup = section.get("warmup_steps") or 0
    if isinstance(warmup, float) and 0 < warmup < 1:
        section["warmup_ratio"], section["warmup_steps"] = warmup, 0
    else:
        section["warmup_steps"] = int(warmup)
    if section.get("warmup_ratio") is None:
        section["warmup_ratio"] = 0.0
    section["report_to"] = _report_to(section.get("report_to"))
    for key in ("eval_steps", "save_steps", "logging_steps"):
        value = section.get(key)
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(
                    f"{type(args).__name__}: {key}={value} is a ratio of the total steps, which raytune_st does not take; "
                    "give a number of steps"
                )
            section[key] = int(value)
    if section.get("eval_strategy") == "no":
        section["eval_steps"] = None  # sentence-transformers ignores it without evaluation
    return section


def _report_to(value: Any) -> Any:
    """transformers' report_to for the job: [] is none, and "all" comes expanded to every installed integration."""
    from raytune_st.train.trackers import VALUES

    names = [value] if isinstance(value, str) else list(value or [])
    if not names:
        return "none"
    try:
        from transformers.integrations import get_available_reporting_integrations

        expanded = set(get_available_reporting_integrations())
    except ImportError:  # pragma: no cover - transformers always has it
        expanded = set()
    if expanded and set(names) == expanded:
        return "all"
    unknown = [n for n in names if n not in VALUES]
    if unknown:
        raise ConfigError(
            f"report_to: raytune_st does not report to {', '.join(unknown)}; it takes {', '.join(VALUES)}"
        )
    return names


# --- losses ----------------------------------------------------------------------------------------


def dump_without_model(obj: Any, model: Any, *, what: str, require_model: bool = False) -> bytes:
    """`obj` pickled without `model`, its modules and parameters (put back by
    :func:`load_with_model`); `require_model`: refuse an `obj` that holds no part of it."""
    import ray.cloudpickle

    # The model, each of its submodules and parameters, by their names in the model: a loss may
    # hold the model, one of its modules (model[0]) or a parameter, and each must be the worker's.
    ids: dict[int, str] = {}
    if model is not None:
        ids[id(model)] = _MODEL_KEY
        ids.update((id(module), f"{_MODEL_KEY}:module:{name}") for name, module in model.named_modules() if name)
        ids.update((id(param), f"{_MODEL_KEY}:param:{name}") for name, param in model.named_parameters())
    found: list[str] = []

    class ModelOut(ray.cloudpickle.CloudPickler):
        def persistent_id(self, candidate: Any) -> Optional[str]:
            key = ids.get(id(candidate))
            if key is not None:
                found.append(key)
            return key

    buffer = io.BytesIO()
    try:
        ModelOut(buffer).dump(obj)
    except Exception as error:
        raise ConfigError(
            f"{what} ({type(obj).__name__}) cannot be pickled to go to the workers: {error}; "
            "define it in a module at top level (no lambdas, locks or open files in it), or name it by import path"
        ) from None
    if model is not None and not found and require_model:
        raise ConfigError(
            f"{what} ({type(obj).__name__}) holds no part of the model passed to RayTrainer, so training it would not "
            "train that model; build the loss on that model object"
        )
    return buffer.getvalue()


class _ModelIn(pickle.Unpickler):
    """Unpickles what :func:`dump_without_model` wrote, with `model` where the model was."""

    def __init__(self, file: Any, model: Any):
        super().__init__(file)
        self._model = model

    def persistent_load(self, pid: str) -> Any:
        if pid == _MODEL_KEY:
            return self._model
        key, _, rest = pid.partition(":")
        kind, _, name = rest.partition(":")
        if key != _MODEL_KEY or kind not in ("module", "param"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._model.get_submodule(name) if kind == "module" else self._model.get_parameter(name)


def _pickled(path: str) -> bytes:
    """The bytes RayTrainer put into the object store under `path` (or a pickle file there)."""
    if objects.is_object(path):
        return objects.blob(path)
    with open(path, "rb") as handle:
        return handle.read()


def load_with_model(path: str, model: Any) -> Any:
    return _ModelIn(io.BytesIO(_pickled(path)), model).load()


def staged_loss(model: Any, path: str) -> Any:
    """A loss object pickled by :class:`RayTrainer`, rebuilt on this worker's `model`."""
    return load_with_model(path, model)


def loss_by_name(loss: Any, model: Any, model_type: str) -> Optional[tuple[str, dict[str, Any]]]:
    """(name, kwargs) that build `loss` again as the YAML job would, or None when they cannot.

    Only a sentence-transformers loss with no weights of its own qualifies, and only when the
    loss built from (name, kwargs) on `model` reports the same settings as `loss`.
    """
    import torch

    from raytune_st.losses.build import build_loss
    from raytune_st.losses.formats import LOSS_FORMATS

    name = type(loss).__name__
    if (model_type, name) not in LOSS_FORMATS or not hasattr(loss, "get_config_dict"):
        return None
    params = inspect.signature(type(loss).__init__).parameters
    settings = loss.get_config_dict()
    if any(p.kind == p.VAR_KEYWORD for p in params.values()) or not set(params) - {"self", "model"} <= set(settings):
        return None  # an argument the config dict does not show (e.g. reduction) would be lost
    model_params = {id(p) for p in model.parameters()}
    if any(id(p) not in model_params for p in loss.parameters()):
        return None  # e.g. SoftmaxLoss's classifier: its initial weights go with the object
    # Settings left at their defaults are left out, so the job's own defaults apply (on several
    # workers an in-batch-negatives loss gathers across them, as in the YAML job).
    defaults = {n: p.default for n, p in inspect.signature(type(loss).__init__).parameters.items()}
    kwargs = {key: _plain(value) for key, value in settings.items() if _plain(value) != _plain(defaults.get(key, inspect.Parameter.empty))}
    if "loss" in kwargs and isinstance(getattr(loss, "loss", None), torch.nn.Module):
        inner = loss_by_name(loss.loss, model, model_type)
        if inner is None:
            return None
        kwargs["loss"] = {"name": inner[0], **inner[1]}
    try:
        rebuilt = build_loss(name, kwargs, model, model_type)
    except (ConfigError, TypeError, ValueError):
        return None
    return (name, kwargs) if rebuilt.get_config_dict() == loss.get_config_dict() else None


# --- evaluators ------------------------------------------------------------------------------------


def _evaluator_base() -> type:
    from sentence_transformers.sentence_transformer.evaluation import SentenceEvaluator

    return SentenceEvaluator


class StagedEvaluator(_evaluator_base()):
    """An evaluator object pickled by :class:`RayTrainer`, loaded on rank 0 and run as itself."""

    def __init__(self, path: str, name: str = ""):
        super().__init__()
        self.evaluator = pickle.loads(_pickled(path))
        self.name = name

    @property
    def primary_metric(self) -> Any:
        # The inner evaluator's, as it is now: many prefix it with their name on their first call.
        return getattr(self.evaluator, "primary_metric", None)

    @primary_metric.setter
    def primary_metric(self, value: Any) -> None:
        pass  # SentenceEvaluator.__init__ sets it; the inner evaluator's is the one that counts

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        return self.evaluator(model, *args, **kwargs)


# --- datasets --------------------------------------------------------------------------------------


def _data_source(data: Any, what: str) -> str:
    """A source path for `data`: itself when it is one, else the name of the object it becomes."""
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    if type(data).__module__.startswith("ray.data"):
        return objects.register_dataset(data)
    if hasattr(data, "flatten_indices") and hasattr(data, "column_names"):
        # A selected, shuffled or filtered Dataset reads through an indices mapping: apply it first.
        flat = data.flatten_indices(keep_in_memory=True) if getattr(data, "_indices", None) is not None else data
        return objects.register_table(flat.data.table, fingerprint=getattr(flat, "_fingerprint", None))
    raise ConfigError(
        f"{what}: expected a datasets.Dataset, a ray.data.Dataset or a source path, got {type(data).__name__}"
    )


def _named(data: Any) -> dict[str, Any]:
    """{name: one data set}: a dict or DatasetDict as it is, anything else under the name 'train'."""
    if isinstance(data, dict) or type(data).__name__ == "DatasetDict":
        return dict(data)
    return {"train": data}


# --- the trainer -----------------------------------------------------------------------------------


class RayTrainer:
    """SentenceTransformerTrainer's (and CrossEncoderTrainer's) constructor, run on Ray Train.

    Args:
        model: a SentenceTransformer or CrossEncoder object, or a model reference (directory, URI, hub id).
        args: a SentenceTransformerTrainingArguments / CrossEncoderTrainingArguments object.
        train_dataset, eval_dataset: a datasets.Dataset, a DatasetDict or dict of them, a
            ray.data.Dataset or a source path.
        loss: a loss object built on `model`, a dict of them per data set, or a function model -> loss
            (defined at module top level).
        evaluator: an evaluator or a list of them.
        scaling: a ray.train.ScalingConfig or a dict of its fields, e.g. {"num_workers": 4, "use_gpu": True}.
        run: the train job's `run` section: {name, storage_path, max_failures}.
        stream: the train job's `stream` section.
        ray_address: the cluster to join (default: RAY_ADDRESS, else a local Ray).
    """

    def __init__(
        self,
        model: Any = None,
        args: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        loss: Any = None,
        evaluator: Any = None,
        *,
        scaling: Any = None,
        run: Optional[dict[str, Any]] = None,
        stream: Optional[dict[str, Any]] = None,
        ray_address: Optional[str] = None,
    ):
        if model is None or train_dataset is None or loss is None:
            missing = [n for n, v in (("model", model), ("train_dataset", train_dataset), ("loss", loss)) if v is None]
            raise ConfigError(f"RayTrainer needs {', '.join(missing)}; pass them as to SentenceTransformerTrainer")
        if args is None:  # as sentence-transformers' trainers do
            args = _default_args(model)
        self.model, self.args = model, args
        self._objects: list[str] = []  # names of the objects registered for the workers
        try:
            self._data = self._config_data(train_dataset, eval_dataset, loss, evaluator, scaling, run, stream, ray_address)
            self.config = build(TrainConfig, self._data)
        except BaseException:
            self._clean()
            raise
        self._ran = False

    def train(self) -> dict[str, Any]:
        """Run the train job; returns its final metrics and loads the trained weights into `model`."""
        from raytune_st.train.job import train

        self._start()
        try:
            with self._shipped():
                metrics = train(self.config)
        finally:
            self._clean()
        if not isinstance(self.model, str):
            from raytune_st.models.loading import load_model
            from raytune_st.outputs import join

            # From a URI too (s3://, gs://): downloaded once into this node's model cache.
            trained = load_model(join(self.args.output_dir, "final"), self.config.model.type, device="cpu")
            self.model.load_state_dict(trained.state_dict())
        return metrics

    def tune(self, search: dict[str, Any]) -> dict[str, Any]:
        """Sweep with Ray Tune, every trial a whole training run of these objects.

        `search` is the tune job's `search` section (space, metric, mode, num_samples,
        search_alg, scheduler, name, ...), its space keyed by the train config's keys, e.g.
        ``{"space": {"args.learning_rate": {"loguniform": [1e-5, 1e-4]}}, "num_samples": 8,
        "metric": "eval_dev_cosine_ndcg@10"}``. Returns ``{"best": the best trial's row, "trials":
        [...]}`` as the tune job does; the trials' models are under ``args.output_dir``, and
        `model` is left as it is.
        """
        from raytune_st.tune.config import TuneConfig
        from raytune_st.tune.job import tune

        self._start()
        try:
            with self._shipped(state_api=True):
                return tune(build(TuneConfig, {**self._data, "search": search}))
        finally:
            self._clean()

    def _start(self) -> None:
        if self._ran:
            raise ConfigError("this RayTrainer has run (its objects were released); build a new one to run again")
        self._ran = True

    @contextlib.contextmanager
    def _shipped(self, state_api: bool = False) -> Iterator[None]:
        """A Ray session (the job's own one inside) whose object store holds this trainer's objects.

        `state_api`: as ray_session's, which a sweep needs.
        """
        from raytune_st.runtime import ray_session

        with ray_session(self.config.ray_address, state_api=state_api):
            objects.ship(self._objects)
            yield

    def _clean(self) -> None:
        objects.release(self._objects)

    def _register(self, name: str) -> str:
        self._objects.append(name)
        return name

    def _config_data(self, train_dataset, eval_dataset, loss, evaluator, scaling, run, stream, ray_address) -> dict[str, Any]:
        data: dict[str, Any] = {"args": args_section(self.args), "model": self._model_section()}
        model_type = data["model"]["type"]
        train_sets = _named(train_dataset)
        data["train_datasets"] = {
            name: {"data": self._register_data(ds, f"train_dataset {name!r}")}
            for name, ds in train_sets.items()
        }
        if eval_dataset is not None:
            data["eval_datasets"] = {
                name: {"data": self._register_data(ds, f"eval_dataset {name!r}")}
                for name, ds in _named(eval_dataset).items()
            }
        losses = loss if isinstance(loss, dict) else None
        if losses is not None:
            unknown = sorted(set(losses) - set(train_sets))
            if unknown:
                raise ConfigError(f"loss: {', '.join(unknown)} name no train data set; the sets are {', '.join(train_sets)}")
            for name, one in losses.items():
                data["train_datasets"][name].update(self._loss_section(one, model_type, f"loss[{name!r}]"))
            missing = sorted(set(data.get("eval_datasets", {})) - set(losses))
            if missing:
                raise ConfigError(
                    f"eval_dataset {', '.join(map(repr, missing))} has no loss in the loss dict; pass eval_dataset as a dict "
                    f"named like the train sets ({', '.join(train_sets)}), or one loss for every set"
                )
        else:
            section = self._loss_section(loss, model_type, "loss")
            data["loss"], data["loss_kwargs"] = section["loss"], section["loss_kwargs"]
        if evaluator is not None:
            evaluators = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
            data["evaluators"] = [self._evaluator_section(e, i) for i, e in enumerate(evaluators)]
        data["scaling"] = _scaling_section(scaling)
        # As SentenceTransformerTrainer.train() does, a call trains afresh: checkpoints of an earlier
        # call under the same output_dir are replaced. Ray's restarts within the run still resume.
        data["run"] = {"overwrite": True, **(run or {})}
        for key, value in (("stream", stream), ("ray_address", ray_address)):
            if value is not None:
                data[key] = value
        return data

    def _register_data(self, data: Any, what: str) -> str:
        path = _data_source(data, what)
        if objects.is_object(path):
            self._register(path)
        return path

    def _model_section(self) -> dict[str, Any]:
        from sentence_transformers import CrossEncoder, SentenceTransformer

        if isinstance(self.model, str):
            return {"name": self.model, "type": "cross_encoder" if "CrossEncoder" in type(self.args).__name__ else "bi_encoder"}
        if not isinstance(self.model, (SentenceTransformer, CrossEncoder)):
            raise ConfigError(f"model: expected a SentenceTransformer, a CrossEncoder or a model reference, got {type(self.model).__name__}")
        # Saving is device-independent: a model on a GPU the workers do not have still loads on theirs.
        is_ce = isinstance(self.model, CrossEncoder)
        section = {"name": self._register(objects.register_model(self.model)), "type": "cross_encoder" if is_ce else "bi_encoder"}
        if is_ce:
            section["num_labels"] = self.model.num_labels
        return section

    def _loss_section(self, loss: Any, model_type: str, what: str) -> dict[str, Any]:
        import torch

        from raytune_st.components import is_import_path

        if isinstance(loss, str):
            return {"loss": loss, "loss_kwargs": {}}
        if isinstance(loss, torch.nn.Module):
            if isinstance(self.model, str):
                raise ConfigError(
                    f"{what}: a loss object holds its own model, not the workers' {self.model!r}; pass the model object "
                    "it was built on, or the loss by name or as a function model -> loss"
                )
            named = loss_by_name(loss, self.model, model_type)
            if named is not None:
                return {"loss": named[0], "loss_kwargs": named[1]}
            pickled = dump_without_model(loss, self.model, what=what, require_model=True)
            return {"loss": "raytune_st.trainer:staged_loss", "loss_kwargs": {"path": self._register(objects.register_blob(pickled))}}
        if callable(loss):
            target = f"{getattr(loss, '__module__', '')}:{getattr(loss, '__qualname__', '')}"
            if not is_import_path(target) or target.startswith("__main__:") or "<" in target:
                raise ConfigError(
                    f"{what}: a loss factory must be a function at the top level of an importable module "
                    f"(workers import it by name), got {target or loss!r}; move it into a module, or pass the loss object"
                )
            return {"loss": target, "loss_kwargs": {}}
        raise ConfigError(f"{what}: expected a loss object, a function model -> loss or a loss name, got {type(loss).__name__}")

    def _evaluator_section(self, evaluator: Any, index: int) -> dict[str, Any]:
        pickled = dump_without_model(evaluator, None, what=f"evaluator {getattr(evaluator, 'name', '') or index!r}")
        name = getattr(evaluator, "name", "") or ""
        return {"type": "raytune_st.trainer:StagedEvaluator", "name": name, "path": self._register(objects.register_blob(pickled))}


def _default_args(model: Any) -> Any:
    from sentence_transformers import CrossEncoder, CrossEncoderTrainingArguments, SentenceTransformerTrainingArguments

    cls = CrossEncoderTrainingArguments if isinstance(model, CrossEncoder) else SentenceTransformerTrainingArguments
    return cls(output_dir="trainer_output")


def _scaling_section(scaling: Any) -> dict[str, Any]:
    if scaling is None:
        return {}
    if isinstance(scaling, dict):
        return dict(scaling)
    import dataclasses as dc

    fields = ("num_workers", "use_gpu", "resources_per_worker")
    defaults = type(scaling)()
    unsupported = [
        f"{f.name}={getattr(scaling, f.name)!r}" for f in dc.fields(scaling)
        if f.name not in fields and getattr(scaling, f.name) != getattr(defaults, f.name)
    ]
    if unsupported:
        raise ConfigError(f"scaling: raytune_st takes num_workers, use_gpu and resources_per_worker; unsupported: {', '.join(unsupported)}")
    return {name: getattr(scaling, name) for name in fields if getattr(scaling, name, None) is not None}
