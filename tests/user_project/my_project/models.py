"""A model built in Python: a base model plus a Dense layer down to `dim` dimensions."""

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense


def with_dense(base: str, dim: int = 128):
    model = SentenceTransformer(base, device="cpu")
    dense = Dense(model.get_embedding_dimension(), dim, activation_function=torch.nn.Tanh())
    return SentenceTransformer(modules=[*model, dense], device="cpu")


def not_a_model(base: str):
    return base
