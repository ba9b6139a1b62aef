"""Inference runtimes for a model that only infers (mine, evaluate, score): torch, onnx, openvino.

``model.backend: onnx`` or ``openvino`` exports the model's transformer once per node and
weights, and runs that graph with onnxruntime or OpenVINO on the CPU. Everything around it stays
sentence-transformers': the tokenizer, the pooling and normalisation modules (a bi-encoder), the
activation (a cross-encoder), ``encode`` and ``predict``. So the embeddings are the torch
model's to float rounding: onnxruntime's within 1e-6, OpenVINO's within 1e-6 at its float32
precision (the default here; ``backend_config: {INFERENCE_PRECISION_HINT: bf16}`` trades that for
speed on CPUs with bfloat16 units).

Why not sentence-transformers' own ``backend=`` argument: it loads through optimum-onnx (which
holds transformers below 4.58, where sentence-transformers 6.3 needs 5) or optimum-intel (which
holds huggingface-hub below 1.22, where datasets 5.1+ needs 1.31, and pulls torchvision). Exporting
the one torch module ourselves needs only onnxruntime or openvino.

The exported graph is cached beside downloaded models, in ``$RAYTUNE_ST_MODEL_CACHE/exported/<digest>``
(default ``~/.cache/raytune_st/models/exported``), keyed by the weights' digest, the backend and
the library versions: one actor on a node exports (under a file lock), the others load the file.

Example::

    model = accelerate(SentenceTransformer(path), "openvino")
    model.encode(["a query"])  # the torch model's vectors, to float rounding
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Any, Optional

import torch

from raytune_st.errors import ModelError
from raytune_st.models.remote import model_cache_root
from raytune_st.models.runtimes import RUNTIMES

_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}


def accelerate(model: Any, backend: str, config: Optional[dict[str, Any]] = None, cache_dir: Optional[str] = None) -> Any:
    """`model` (a SentenceTransformer or CrossEncoder) with its transformer run by `backend`.

    The torch weights are dropped, so the model only infers: putting it in training mode raises
    ModelError. So does a model whose first module is not a plain text transformer (a custom or
    multi-modal module): use backend torch for it. The graph runs on the CPU wherever `model` was.
    """
    if backend == "torch":
        return model
    module = _transformer(model, backend)
    output = _output_name(module, backend)
    module.model.to("cpu")
    sample = [("a query", "a passage")] if _pairs(model) else ["an example text"]
    example = {key: value.cpu() for key, value in model.preprocess(sample).items() if torch.is_tensor(value)}
    folder = _exported(module.model, example, output, backend, cache_dir)
    runtime = _OnnxRuntime(folder, config or {}) if backend == "onnx" else _OpenVinoRuntime(folder, config or {})
    module.model = ExportedModel(runtime, module.model.config, tuple(example), output)
    return model


class ExportedModel(torch.nn.Module):
    """Stands in for the transformers model inside sentence-transformers' Transformer module:
    called with the tokenizer's tensors, returns ``{output: tensor}`` like the model it replaced.
    It holds no parameters, so ``.to(device)`` and ``.half()`` leave it as it is."""

    def __init__(self, runtime: Any, config: Any, inputs: tuple[str, ...], output: str) -> None:
        super().__init__()
        self.runtime, self.config, self.inputs, self.output = runtime, config, inputs, output
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def forward(self, **features: Any) -> dict[str, Any]:
        arrays = {}
        for name in self.inputs:
            value = features.get(name)
            if value is None:  # e.g. token_type_ids a tokenizer left out: BERT's default
                value = torch.zeros_like(features["input_ids"])
            arrays[name] = value.detach().cpu().numpy()
        return {self.output: torch.from_numpy(self.runtime(arrays))}

    def train(self, mode: bool = True) -> "ExportedModel":
        if mode:
            raise ModelError("a model run by onnx or openvino cannot be trained; training uses model.backend: torch")
        return super().train(False)


class _OnnxRuntime:
    def __init__(self, folder: str, config: dict[str, Any]) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # the CPUs the job reserved (Ray sets OMP_NUM_THREADS)
        for key, value in config.items():
            setattr(options, key, value)
        path = os.path.join(folder, _FILES["onnx"])
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def __call__(self, arrays: dict[str, Any]) -> Any:
        return self.session.run(None, arrays)[0]


class _OpenVinoRuntime:
    def __init__(self, folder: str, config: dict[str, Any]) -> None:
        import openvino

        properties = {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "INFERENCE_PRECISION_HINT": "f32",
            # OpenVINO pins its threads to the first cores: two one-CPU actors on a node would share one.
            "ENABLE_CPU_PINNING": False,
            **config,
        }
        try:
            self.compiled = openvino.Core().compile_model(os.path.join(folder, _FILES["openvino"]), "CPU", properties)
        except RuntimeError as exc:
            raise ModelError(f"OpenVINO refused model.backend_config {config}: {str(exc).strip().splitlines()[0]}") from None
        self.request = self.compiled.create_infer_request()

    def __call__(self, arrays: dict[str, Any]) -> Any:
        return self.request.infer(arrays)[0].copy()  # the request reuses its output buffer


def _transformer(model: Any, backend: str) -> Any:
    from sentence_transformers.base.modules.transformer import Transformer

    first = model[0] if len(model) else None
    if not isinstance(first, Transformer) or first.modality_config.get("text", {}).get("method") != "forward":
        raise ModelError(
            f"model.backend={backend} exports a text transformer's forward, and this model's first module is "
            f"{type(first).__name__}; set model.backend: torch"
        )
    if len(first.modality_config) != 1:
        others = sorted(set(first.modality_config) - {"text"})
        raise ModelError(f"model.backend={backend} exports text models only, and this one also takes {others}; set model.backend: torch")
    return first


def _output_name(module: Any, backend: str) -> str:
    output = module.modality_config["text"]["method_output_name"]
    if isinstance(output, (list, tuple)):
        output = output[0] if len(output) == 1 else None
    if not isinstance(output, str):
        raise ModelError(
            f"model.backend={backend} exports a model with one output, and this one reads "
            f"{module.modality_config['text']['method_output_name']!r}; set model.backend: torch"
        )
    return output


def _pairs(model: Any) -> bool:
    from sentence_transformers.cross_encoder import CrossEncoder

    return isinstance(model, CrossEncoder)


def export_key(network: Any, inputs: tuple[str, ...], output: str, backend: str) -> str:
    """The digest the exported graph is cached under: weights, class, inputs, output, versions."""
    digest = hashlib.blake2b(digest_size=16)
    runtime = RUNTIMES[backend][0]
    versions = {name: _version(name) for name in ("torch", "transformers", runtime)}
    described = [backend, type(network).__name__, inputs, output, versions, network.config.to_json_string()]
    digest.update(json.dumps(described).encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def cache_root() -> str:
    return os.path.join(model_cache_root(), "exported")


def _exported(network: Any, example: dict[str, Any], output: str, backend: str, cache_dir: Optional[str]) -> str:
    """The folder holding `network`'s graph for `backend`: from the cache, or exported into it once."""
    root = cache_dir or cache_root()
    os.makedirs(root, exist_ok=True)
    folder = os.path.join(root, export_key(network, tuple(example), output, backend))
    done = os.path.join(folder, _FILES[backend])
    with _locked(folder + ".lock"):
        if not os.path.exists(done):
            scratch = tempfile.mkdtemp(prefix=".export-", dir=root)
            try:
                with warnings.catch_warnings():  # the tracers' notes on Python control flow: the graph is checked by tests
                    warnings.simplefilter("ignore")
                    (_export_onnx if backend == "onnx" else _export_openvino)(network, example, output, scratch)
                shutil.rmtree(folder, ignore_errors=True)  # a folder some crash left without its graph
                os.replace(scratch, folder)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return folder


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the other actors on this node wait for one export
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _graph(network: Any, inputs: tuple[str, ...], output: str) -> Any:
    """`network`'s forward over positional tensors, returning the one output (what exporters trace)."""
    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, *tensors: Any) -> Any:
            return getattr(self.network(**dict(zip(inputs, tensors)), return_dict=True), output)

    return Graph().eval()


def _export_onnx(network: Any, example: dict[str, Any], output: str, folder: str) -> None:
    names = tuple(example)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output] = {0: "batch"} if output == "logits" else {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            _graph(network, names, output),
            tuple(example.values()),
            os.path.join(folder, _FILES["onnx"]),
            input_names=list(names),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _export_openvino(network: Any, example: dict[str, Any], output: str, folder: str) -> None:
    import openvino

    with torch.no_grad():
        graph = openvino.convert_model(_graph(network, tuple(example), output), example_input=tuple(example.values()))
    for port, name in zip(graph.inputs, example):
        port.get_tensor().set_names({name})
    openvino.save_model(graph, os.path.join(folder, _FILES["openvino"]), compress_to_fp16=False)
