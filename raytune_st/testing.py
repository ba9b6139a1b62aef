"""Tiny randomly initialised models, for tests, benchmarks and trying the machinery out.

A 2-layer BERT with hidden size 32 and all-MiniLM-L6-v2's tokenizer: it loads, tokenises and
trains like the real thing in milliseconds, so the machinery can be exercised (and its memory
measured) without paying for a real model's compute. Its embeddings mean nothing.
"""

from __future__ import annotations

import os

TOKENIZER_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def _bert_config(**overrides):
    from transformers import AutoTokenizer, BertConfig

    from raytune_st.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TOKENIZER_MODEL))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **overrides,
    )
    return config, tokenizer


def save_tiny_bert(path: str, *, seed: int = 0) -> str:
    """A random ``BertModel`` saved with ``save_pretrained`` (no modules.json) plus the tokenizer."""
    import torch
    from transformers import BertModel

    config, tokenizer = _bert_config()
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def save_tiny_bi_encoder(path: str, *, max_seq_length: int = 64, seed: int = 0) -> str:
    """The tiny BERT as a SentenceTransformer (Transformer + mean Pooling) in ``path``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    raw = save_tiny_bert(os.path.join(path, "hf"), seed=seed)
    transformer = Transformer(raw, max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    out = os.path.join(path, "bi-encoder")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(out)
    return out


def save_tiny_cross_encoder(
    path: str, *, max_length: int = 64, initializer_range: float = 0.02, seed: int = 1, num_labels: int = 1
) -> str:
    """The tiny BERT with a classification head of `num_labels` logits (1: a reranker's score),
    saved as a CrossEncoder in ``path`` (``path/cross-encoder``, or ``cross-encoder-<n>-labels``).

    With BERT's default ``initializer_range`` (0.02) every pair scores about the same; raise it
    where a test needs the scores to rank pairs apart from float noise.
    """
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import BertForSequenceClassification

    config, tokenizer = _bert_config(num_labels=num_labels, initializer_range=initializer_range)
    torch.manual_seed(seed)
    suffix = "" if num_labels == 1 else f"-{num_labels}-labels"
    raw = os.path.join(path, "hf-ce" + suffix)
    BertForSequenceClassification(config).save_pretrained(raw)
    tokenizer.save_pretrained(raw)
    out = os.path.join(path, "cross-encoder" + suffix)
    CrossEncoder(raw, num_labels=num_labels, max_length=max_length, device="cpu").save(out)
    return out
