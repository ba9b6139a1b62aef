"""Model references: resolve a name to something loadable, and load bi- or cross-encoders."""

from raytune_st.models.config import ModelConfig
from raytune_st.models.loading import check_model, load_bi_encoder, load_cross_encoder, load_model, resolve_model

__all__ = ["ModelConfig", "check_model", "load_bi_encoder", "load_cross_encoder", "load_model", "resolve_model"]
