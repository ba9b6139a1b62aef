"""Helpers of the mining tests: tiny random models and (anchor, positive) pairs from the debian sample."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "data" / "debian-train-sample.parquet"
DEV_SAMPLE = ROOT / "examples" / "data" / "debian-dev-sample.parquet"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def make_tiny_bi_encoder(path: Path) -> str:
    """A random 2-layer BERT (hidden size 32) with the MiniLM tokenizer, saved as a SentenceTransformer."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from raytune_st.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    import torch

    torch.manual_seed(0)
    raw = path / "raw"
    BertModel(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    transformer = Transformer(str(raw), max_seq_length=64)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(path / "model"))
    return str(path / "model")


def make_tiny_cross_encoder(path: Path) -> str:
    """A random 2-layer BERT with a 1-logit head, saved as a CrossEncoder.

    max_length 256: with fewer tokens, passages sharing their first sentences get exactly
    equal scores, and the order of exact ties is arbitrary in sentence-transformers.
    """
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from raytune_st.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(MINILM))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=1,
        # Larger random weights than BERT's 0.02: otherwise every pair scores about 0.4975
        # and the ranking is decided by float noise.
        initializer_range=0.3,
    )
    torch.manual_seed(1)
    raw = path / "raw-ce"
    BertForSequenceClassification(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    CrossEncoder(str(raw), num_labels=1, max_length=256, device="cpu").save(str(path / "cross-encoder"))
    return str(path / "cross-encoder")


def sample_pairs(n: int = 300, extra_positives: int = 20, duplicates: int = 5) -> pd.DataFrame:
    """The first `n` debian pairs, plus queries with a second positive and exact duplicate rows.

    The extras exercise what sentence-transformers handles specially: several positives per
    query (some shared with other queries) and duplicated (query, passage) rows.
    """
    df = pd.read_parquet(SAMPLE, columns=["query", "passage"]).iloc[:n].reset_index(drop=True)
    extra = pd.DataFrame(
        {"query": df["query"].iloc[:extra_positives].values, "passage": df["passage"].iloc[n // 2 : n // 2 + extra_positives].values}
    )
    dup = df.iloc[10 : 10 + duplicates]
    return pd.concat([df, extra, dup], ignore_index=True)
