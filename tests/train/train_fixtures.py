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
    from raytune_st.testing import save_tiny_bi_encoder, save_tiny_cross_encoder

    return save_tiny_bi_encoder(root), save_tiny_cross_encoder(root)


def make_debian_sets(root: str) -> dict[str, str]:
    """Small stand-ins for what `raytune-st mine` writes, made from the bundled sample.

    triplets: (query, passage, negative); pairs: (query, passage, label) with each positive
    then one negative; lists: (query, passage: [positive, two negatives], labels: [1, 0, 0]) as
    mine's labeled-list output; rerank-dev: (query, passage, negative) from the dev sample.
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
    second = t["passage"].shift(-2).fillna(t["passage"].iloc[0])
    lists = pd.DataFrame(
        {
            "query": t["query"],
            "passage": [[p, n, m] for p, n, m in zip(t["passage"], t["negative"], second)],
            "labels": [[1, 0, 0]] * len(t),
        }
    )
    paths["lists"] = os.path.join(root, "lists.parquet")
    lists.to_parquet(paths["lists"], index=False)
    return paths
