"""Hard-negative mining: sentence-transformers' mine_hard_negatives, distributed with Ray.

Entry point: :func:`raytune_st.mining.job.mine` (``raytune-st mine``). The pure pieces,
tested without Ray: :func:`merge_topk` (sharded search), :mod:`select` (filters and
sampling), :mod:`rows` (output formats), :mod:`stats` (the printed summary) and
:mod:`prepare` (deduplication).
"""

from raytune_st.mining.config import MineConfig
from raytune_st.mining.topk import merge_topk

__all__ = ["MineConfig", "merge_topk"]
