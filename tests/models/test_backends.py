"""Tests for raytune_st.models.backends: model.backend onnx / openvino against the torch model."""

from __future__ import annotations

import os

import numpy as np
import pytest

from raytune_st.config import build
from raytune_st.errors import ConfigError, ModelError
from raytune_st.models import ModelConfig
from raytune_st.models import backends
from raytune_st.train.config import TrainModelConfig

TEXTS = [
    "How do I list the packages installed on Debian?",
    "dpkg -l lists every installed package, with its version and a short description.",
    "apt",
    "Configure a static IP address in /etc/network/interfaces for the eth0 interface on boot.",
]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYTUNE_ST_MODEL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "exported"


@pytest.fixture(scope="module")
def tiny_cross_encoder_dir(tmp_path_factory) -> str:
    from raytune_st.testing import save_tiny_cross_encoder

    return save_tiny_cross_encoder(str(tmp_path_factory.mktemp("tiny-ce")), initializer_range=0.5)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_bi_encoder_embeds_as_with_torch(backend, tiny_bert_dir, cache):
    reference = build(ModelConfig, {"name": tiny_bert_dir}).load(device="cpu")
    model = build(ModelConfig, {"name": tiny_bert_dir, "backend": backend}).load(device="cpu")
    assert isinstance(model[0].model, backends.ExportedModel)
    expected = reference.encode(TEXTS, batch_size=2, normalize_embeddings=True)
    got = model.encode(TEXTS, batch_size=2, normalize_embeddings=True)  # batches of other lengths: dynamic axes
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert model.get_embedding_dimension() == reference.get_embedding_dimension()


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_cross_encoder_scores_as_with_torch(backend, tiny_cross_encoder_dir, cache):
    pairs = [(TEXTS[0], passage) for passage in TEXTS[1:]]
    reference = build(ModelConfig, {"name": tiny_cross_encoder_dir, "type": "cross_encoder"}).load(device="cpu")
    model = build(ModelConfig, {"name": tiny_cross_encoder_dir, "type": "cross_encoder", "backend": backend}).load(device="cpu")
    expected = reference.predict(pairs)
    assert np.ptp(expected) > 1e-3  # the pairs score apart, so a wrong graph shows
    np.testing.assert_allclose(model.predict(pairs), expected, atol=1e-5)


def test_minilm_under_openvino_gives_the_torch_vectors(minilm_dir, cache):
    reference = build(ModelConfig, {"name": minilm_dir}).load(device="cpu")
    model = build(ModelConfig, {"name": minilm_dir, "backend": "openvino"}).load(device="cpu")
    np.testing.assert_allclose(model.encode_query(TEXTS), reference.encode_query(TEXTS), atol=1e-5)


def test_the_graph_is_exported_once_per_weights(tiny_bert_dir, tmp_path, cache, monkeypatch):
    build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx"}).load()
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(backends, "_export_onnx", no_export)
    build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx"}).load()  # from the cache

    from raytune_st.testing import save_tiny_bi_encoder

    other = save_tiny_bi_encoder(str(tmp_path / "other"), seed=1)  # same architecture, other weights
    with pytest.raises(AssertionError, match="exported again"):
        build(ModelConfig, {"name": other, "backend": "onnx"}).load()
    assert not [p for p in cache.iterdir() if p.name.startswith(".export-")], "a failed export leaves no scratch folder"


def test_a_folder_without_its_graph_is_exported_again(tiny_bert_dir, cache):
    model = build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx"}).load()
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    os.remove(folder / "model.onnx")  # e.g. a disk that filled up under an older version
    again = build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx"}).load()
    assert (folder / "model.onnx").is_file()
    np.testing.assert_allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-6)


def test_a_backend_model_cannot_be_trained(tiny_bert_dir, cache):
    model = build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx"}).load()
    with pytest.raises(ModelError, match="cannot be trained"):
        model.train()


def test_openvino_settings_reach_the_runtime(tiny_bert_dir, cache):
    model = build(ModelConfig, {"name": tiny_bert_dir, "backend": "openvino", "backend_config": {"INFERENCE_NUM_THREADS": 1}}).load()
    assert model[0].model.runtime.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(model[0].model.runtime.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
    assert model[0].model.runtime.compiled.get_property("ENABLE_CPU_PINNING") is False  # actors on a node share no core
    with pytest.raises(ModelError, match="OpenVINO refused model.backend_config"):
        build(ModelConfig, {"name": tiny_bert_dir, "backend": "openvino", "backend_config": {"NO_SUCH_PROPERTY": 1}}).load()


def test_backend_config_errors_name_the_fix(tiny_bert_dir, monkeypatch):
    with pytest.raises(ConfigError, match="not a valid choice"):
        build(ModelConfig, {"name": tiny_bert_dir, "backend": "tensorrt"})
    with pytest.raises(ConfigError, match="set model.backend, or remove backend_config"):
        build(ModelConfig, {"name": tiny_bert_dir, "backend_config": {"intra_op_num_threads": 1}})
    with pytest.raises(ConfigError, match="not an onnxruntime SessionOptions attribute"):
        build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx", "backend_config": {"threads": 1}})
    with pytest.raises(ConfigError, match="runs a float32 graph. Remove model.dtype"):
        build(ModelConfig, {"name": tiny_bert_dir, "backend": "openvino", "dtype": "float16"})
    with pytest.raises(ConfigError, match="training runs torch"):
        build(TrainModelConfig, {"name": tiny_bert_dir, "backend": "onnx"})

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(ConfigError, match=r"needs openvino, not installed here; run `pip install 'raytune_st\[openvino\]'`"):
        build(ModelConfig, {"name": tiny_bert_dir, "backend": "openvino"})


def test_runtime_key_leaves_torch_float32_keys_as_they_were(tiny_bert_dir):
    assert build(ModelConfig, {"name": tiny_bert_dir}).runtime_key == ()
    assert build(ModelConfig, {"name": tiny_bert_dir, "dtype": "float16"}).runtime_key == ("float16",)
    onnx = build(ModelConfig, {"name": tiny_bert_dir, "backend": "onnx"}).runtime_key
    openvino = build(ModelConfig, {"name": tiny_bert_dir, "backend": "openvino"}).runtime_key
    bf16 = build(ModelConfig, {"name": tiny_bert_dir, "backend": "openvino", "backend_config": {"INFERENCE_PRECISION_HINT": "bf16"}}).runtime_key
    assert len({onnx, openvino, bf16}) == 3
