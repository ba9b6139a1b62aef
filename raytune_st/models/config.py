"""The `model` section shared by every job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from raytune_st.config.core import option
from raytune_st.errors import ConfigError


@dataclass
class ModelConfig:
    """Which model to load and how; a bare string is shorthand for `{name: ...}`."""

    name: str = option(help="local model directory or Hugging Face hub id")
    type: Optional[Literal["bi_encoder", "cross_encoder"]] = option(
        None, help="bi_encoder (SentenceTransformer) or cross_encoder (CrossEncoder); default: bi_encoder, or what the job implies"
    )
    num_labels: Optional[int] = option(None, help="cross-encoder outputs; a checkpoint without a head gets one this size")
    max_seq_length: Optional[int] = option(None, help="truncate inputs to this many tokens (default: the model's own)")
    trust_remote_code: bool = option(False, help="allow model code from the checkpoint (transformers' trust_remote_code)")
    dtype: Literal["float32", "float16", "bfloat16"] = option(
        "float32",
        help="weights' dtype where the model only infers (mine, evaluate): float16 / bfloat16 halve its memory and speed "
        "up GPUs; training keeps float32 weights (mixed precision is args.fp16 / args.bf16)",
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def __post_init__(self) -> None:
        if self.num_labels is not None and self.num_labels < 1:
            raise ConfigError(f"num_labels: must be at least 1, got {self.num_labels}")
        if self.max_seq_length is not None and self.max_seq_length < 1:
            raise ConfigError(f"max_seq_length: must be at least 1 token, got {self.max_seq_length}")

    def load(self, device: Optional[str] = None, path: Optional[str] = None):
        """Load the model (on a worker: imports sentence-transformers and torch).

        `path`: load these settings from another copy instead of `name`, e.g. a checkpoint's.
        """
        from raytune_st.models.loading import load_model

        kwargs: dict[str, Any] = {"device": device, "trust_remote_code": self.trust_remote_code}
        if self.type == "cross_encoder":
            kwargs.update(num_labels=self.num_labels, max_length=self.max_seq_length)
        else:
            kwargs.update(max_seq_length=self.max_seq_length)
        model = load_model(path or self.name, self.type or "bi_encoder", **kwargs)
        if self.dtype != "float32":
            import torch

            model.to(getattr(torch, self.dtype))
        return model
