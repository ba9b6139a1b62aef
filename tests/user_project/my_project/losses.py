"""Losses of a user's own: a margin loss on embeddings, and the shapes raytune_st refuses."""

import torch
import torch.nn.functional as F


class MarginLoss(torch.nn.Module):
    """mean(relu(margin - cos(a, p) + cos(a, n))), each anchor's negative the next row's positive."""

    # The built-in loss whose columns this one takes: (anchor, positive), so pre-flight checks them.
    loss_format = "MultipleNegativesRankingLoss"

    def __init__(self, model, margin: float = 0.2):
        super().__init__()
        self.model = model
        self.margin = margin

    def forward(self, features, labels):
        anchor, positive = (self.model(f)["sentence_embedding"] for f in features[:2])
        negative = positive.roll(1, dims=0)
        gap = F.cosine_similarity(anchor, positive) - F.cosine_similarity(anchor, negative)
        return F.relu(self.margin - gap).mean()


class UndeclaredMarginLoss(MarginLoss):
    """The same loss without loss_format: its columns cannot be checked."""

    loss_format = None


class CachedStyleLoss(MarginLoss):
    """Declares the inputs of a cached loss, which some wrappers cannot take."""

    loss_format = "CachedMultipleNegativesRankingLoss"


def margin_loss(model, margin: float = 0.2):
    """A loss factory: model -> loss."""
    return MarginLoss(model, margin=margin)


def not_a_loss(model):
    return "a loss, honestly"


class NotAModule:
    def __init__(self, model):
        self.model = model


class ForwardTakesOne(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features):
        return features
