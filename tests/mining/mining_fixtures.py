"""Helpers of the mining tests: tiny random models and (anchor, positive) pairs from the debian sample."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from raytune_st.testing import save_tiny_bi_encoder, save_tiny_cross_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "data" / "debian-train-sample.parquet"
DEV_SAMPLE = ROOT / "examples" / "data" / "debian-dev-sample.parquet"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def make_tiny_bi_encoder(path: Path) -> str:
    """A random 2-layer BERT (hidden size 32) with the MiniLM tokenizer, saved as a SentenceTransformer."""
    return save_tiny_bi_encoder(str(path))


def make_tiny_cross_encoder(path: Path) -> str:
    """A random 2-layer BERT with a 1-logit head, saved as a CrossEncoder.

    max_length 256: with fewer tokens, passages sharing their first sentences get exactly
    equal scores, and the order of exact ties is arbitrary in sentence-transformers.
    Larger random weights than BERT's 0.02: otherwise every pair scores about 0.4975 and the
    ranking is decided by float noise.
    """
    return save_tiny_cross_encoder(str(path), max_length=256, initializer_range=0.3)


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
