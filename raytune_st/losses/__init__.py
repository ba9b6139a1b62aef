"""Losses: which columns each sentence-transformers loss needs, checked before training starts."""

from raytune_st.losses.formats import (
    LABEL_COLUMNS,
    LOSS_FORMATS,
    LossFormat,
    check_dataset_for_loss,
    get_format,
    is_in_batch_negatives_loss,
    loss_names,
    resolve_format,
    resolve_loss_class,
    split_columns,
)

__all__ = [
    "LABEL_COLUMNS",
    "LOSS_FORMATS",
    "LossFormat",
    "check_dataset_for_loss",
    "get_format",
    "is_in_batch_negatives_loss",
    "loss_names",
    "resolve_format",
    "resolve_loss_class",
    "split_columns",
]
