"""Helpers for the train tests (imported by conftest.py and tests/losses): tiny random models
and small data sets in tmp directories, made from the bundled sample."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN_TRAIN = os.path.join(REPO, "examples", "data", "debian-train-sample.parquet")
DEBIAN_DEV = os.path.join(REPO, "examples", "data", "debian-dev-sample.parquet")
SHARED_DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
STSB_TRAIN = os.path.join(SHARED_DATA, "stsb-en-train.parquet")
STSB_DEV = os.path.join(SHARED_DATA, "stsb-en-dev.parquet")


def make_tiny_models(root: str) -> tuple[str, str]:
    """A tiny random BERT with MiniLM's tokenizer, saved as a bi-encoder and as a cross-encoder."""
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from raytune_st.models.loading import resolve_model

    hf_dir = os.path.join(root, "hf")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    bi_dir, ce_dir = os.path.join(root, "bi"), os.path.join(root, "ce")
    bi = SentenceTransformer(hf_dir, device="cpu")
    bi.max_seq_length = 64
    bi.save(bi_dir)
    CrossEncoder(hf_dir, num_labels=1, device="cpu", max_length=64).save(ce_dir)
    return bi_dir, ce_dir


def make_debian_sets(root: str) -> dict[str, str]:
    """Small stand-ins for what `raytune-st mine` writes, made from the bundled sample.

    triplets: (query, passage, negative); pairs: (query, passage, label) with each positive
    then one negative; rerank-dev: (query, passage, negative) from the dev sample.
    The negative of row i is the passage of row i+1 (a different package).
    """
    import pandas as pd

    os.makedirs(root, exist_ok=True)
    train = pd.read_parquet(DEBIAN_TRAIN)
    dev = pd.read_parquet(DEBIAN_DEV)

    def triplets(frame):
        return pd.DataFrame(
            {"query": frame["query"], "passage": frame["passage"], "negative": frame["passage"].shift(-1).fillna(frame["passage"].iloc[0])}
        )

    paths = {}
    paths["triplets"] = os.path.join(root, "triplets.parquet")
    triplets(train).to_parquet(paths["triplets"], index=False)
    paths["rerank_dev"] = os.path.join(root, "rerank-dev.parquet")
    triplets(dev.head(40)).to_parquet(paths["rerank_dev"], index=False)
    t = triplets(train.head(600))
    pairs = pd.concat(
        [
            pd.DataFrame({"query": t["query"], "passage": t["passage"], "label": 1}),
            pd.DataFrame({"query": t["query"], "passage": t["negative"], "label": 0}),
        ]
    ).sort_index(kind="stable")
    paths["pairs"] = os.path.join(root, "pairs.parquet")
    pairs.to_parquet(paths["pairs"], index=False)
    return paths
