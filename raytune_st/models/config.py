"""The `model` section shared by every job."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from typing import Any, Literal, Optional

from raytune_st.config.core import option
from raytune_st.errors import ConfigError
from raytune_st.models.runtimes import RUNTIMES


@dataclass
class ModelConfig:
    """Which model to load and how; a bare string is shorthand for `{name: ...}`."""

    name: Optional[str] = option(None, help="local model directory, s3:// / gs:// URI or Hugging Face hub id (or set factory)")
    type: Optional[Literal["bi_encoder", "cross_encoder"]] = option(
        None, help="bi_encoder (SentenceTransformer) or cross_encoder (CrossEncoder); default: bi_encoder, or what the job implies"
    )
    num_labels: Optional[int] = option(None, help="cross-encoder outputs; a checkpoint without a head gets one this size")
    max_seq_length: Optional[int] = option(None, help="truncate inputs to this many tokens (default: the model's own)")
    trust_remote_code: bool = option(False, help="allow model code from the checkpoint (transformers' trust_remote_code)")
    dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32",
        help="weights' dtype where the model only infers (mine, evaluate): float16 / bfloat16 halve its memory and speed "
        "up GPUs; training keeps float32 weights (mixed precision is args.fp16 / args.bf16)",
    )
    backend: Literal["torch", "onnx", "openvino"] = option(
        "torch",
        help="runtime where the model only infers (mine, evaluate, score, rescoring): onnx (onnxruntime) or openvino run "
        "its transformer exported once per node, on the CPU, with the same outputs to float rounding; training uses torch",
    )
    backend_config: dict[str, Any] = option(
        default_factory=dict,
        help="the runtime's settings: onnxruntime SessionOptions attributes, or OpenVINO properties "
        "(e.g. {INFERENCE_PRECISION_HINT: bf16}: faster on CPUs with bfloat16 units, embeddings within about 1e-3)",
    )

    factory: Optional[str] = option(
        None, help="instead of name: module.path:function returning the model (a SentenceTransformer or CrossEncoder), called with kwargs"
    )
    kwargs: dict[str, Any] = option(default_factory=dict, help="the factory's keyword arguments")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def __post_init__(self) -> None:
        from raytune_st.components import check_model_factory, is_import_path

        if (self.name is None) == (self.factory is None):
            raise ConfigError(
                "model: set name (a directory, URI or hub id) or factory (module.path:function returning the model), "
                + ("not both" if self.name else "one of them")
            )
        if self.factory is not None:
            if not is_import_path(self.factory):
                raise ConfigError(f"model.factory: expected module.path:function, got {self.factory!r}")
            check_model_factory(self.factory, self.kwargs)
        elif self.kwargs:
            raise ConfigError("model.kwargs are the factory's arguments; set model.factory, or remove kwargs")
        if self.num_labels is not None and self.num_labels < 1:
            raise ConfigError(f"num_labels: must be at least 1, got {self.num_labels}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ConfigError(f"max_seq_length: must be at least 1 token, got {self.max_seq_length}")
        self._check_backend()

    def _check_backend(self) -> None:
        if self.backend == "torch":
            if self.backend_config:
                raise ConfigError("model.backend_config sets the onnx or openvino runtime; set model.backend, or remove backend_config")
            return
        if self.dtype != "float32":
            raise ConfigError(
                f"model.dtype={self.dtype} halves torch weights; backend {self.backend} runs a float32 graph. Remove model.dtype "
                "(openvino: backend_config {INFERENCE_PRECISION_HINT: bf16} computes in bfloat16)"
            )
        missing = [name for name in RUNTIMES[self.backend] if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(
                f"model.backend={self.backend} needs {' and '.join(missing)}, not installed here; "
                f"run `pip install 'raytune_st[{self.backend}]'` (on a cluster, in its runtime environment too)"
            )
        if self.backend == "onnx":
            import onnxruntime

            unknown = sorted(key for key in self.backend_config if not hasattr(onnxruntime.SessionOptions, key))
            if unknown:
                raise ConfigError(
                    f"model.backend_config: {', '.join(unknown)} is not an onnxruntime SessionOptions attribute "
                    "(e.g. intra_op_num_threads, graph_optimization_level)"
                )

    def check(self) -> None:
        """Raise ModelError unless `name` names a model, without loading it (a factory was checked when the config was built)."""
        from raytune_st.models.loading import check_model

        if self.name is not None:
            check_model(self.name)

    @property
    def identity(self) -> str:
        """What the model is, for cache keys: its name, or its factory with the arguments and the
        digest of the factory's source file (editing the function changes the model)."""
        if self.factory is None:
            return self.name
        import hashlib
        import inspect
        import json

        from raytune_st.components import import_object

        with open(inspect.getsourcefile(import_object(self.factory, what="model.factory")), "rb") as handle:
            code = hashlib.sha256(handle.read()).hexdigest()[:16]
        return f"{self.factory}({json.dumps(self.kwargs, sort_keys=True, default=str)})#{code}"

    def load(self, device: Optional[str] = None, path: Optional[str] = None):
        """Load the model (on a worker: imports sentence-transformers and torch).

        `path`: load these settings from another copy instead of `name`, e.g. a checkpoint's.
        """
        from raytune_st.models.loading import load_model

        if self.backend != "torch":
            device = "cpu"  # onnxruntime and OpenVINO run the exported graph on the CPU
        if path is None and self.factory is not None:
            return self._finish(self._from_factory(device))
        kwargs: dict[str, Any] = {"device": device, "trust_remote_code": self.trust_remote_code}
        if self.type == "cross_encoder":
            kwargs.update(num_labels=self.num_labels, max_length=self.max_seq_length)
        else:
            kwargs.update(max_seq_length=self.max_seq_length)
        return self._finish(load_model(path or self.name, self.type or "bi_encoder", **kwargs))

    def _from_factory(self, device: Optional[str]):
        import torch

        from raytune_st.components import build_model

        # Every process that calls the factory (each embedding actor, each training worker) must
        # get the same model: new layers' random weights come from a fixed seed, and the caller's
        # random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build_model(self.factory, self.kwargs, self.type or "bi_encoder")
        if device is not None:
            model.to(device)  # a factory may build on any device; the job decides where the model runs
        if self.max_seq_length is not None:
            if self.type == "cross_encoder":
                model.max_length = self.max_seq_length
            else:
                model.max_seq_length = self.max_seq_length
        return model

    def _finish(self, model):
        if self.dtype != "float32":
            import torch

            model.to(getattr(torch, self.dtype))
        if self.backend != "torch":
            from raytune_st.models.backends import accelerate

            model = accelerate(model, self.backend, self.backend_config)
        return model

    @property
    def runtime_key(self) -> tuple[Any, ...]:
        """What the outputs depend on besides the weights: empty for torch float32, so caches made before stay valid."""
        weights = () if self.dtype == "float32" else (self.dtype,)
        runtime = () if self.backend == "torch" else (self.backend, json.dumps(self.backend_config, sort_keys=True, default=str))
        return weights + runtime
