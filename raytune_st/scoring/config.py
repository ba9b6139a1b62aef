"""Config of the score job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from raytune_st.config.core import option
from raytune_st.config.effects import PLACEMENT
from raytune_st.config.resources import check_custom_resources
from raytune_st.data.sources import Source, inspect_source
from raytune_st.errors import ConfigError, DataError
from raytune_st.losses.formats import LABEL_COLUMNS
from raytune_st.models.config import ModelConfig


@dataclass
class ScoreOutput:
    path: str = option(effect=PLACEMENT, help="output directory (local path or s3:// / gs:// URI): part files, stats.json, config.yaml")
    column: str = option(
        "label",
        help="the scores' column: one score per row for (query, passage) rows, else the list [s(q, p_1), ..., s(q, p_n)] "
        "(the labels MarginMSELoss and DistillKLDivLoss take)",
    )
    overwrite: bool = option(False, effect=PLACEMENT, help="replace the scores of an earlier run in output.path instead of refusing")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


@dataclass
class ScoreCompute:
    actors_min: int = option(1, help="scoring actors started at first; the pool grows while work waits")
    actors_max: int = option(2, help="most scoring actors")
    num_cpus: float = option(1.0, help="CPUs per scoring actor")
    num_gpus: float = option(0.0, help="GPUs per scoring actor")
    resources: dict[str, float] = option(default_factory=dict, help="custom Ray resources each actor asks for, e.g. {worker_node: 0.01}")

    def __post_init__(self) -> None:
        if not 1 <= self.actors_min <= self.actors_max:
            raise ConfigError(f"compute: need 1 <= actors_min <= actors_max, got {self.actors_min} and {self.actors_max}")
        check_custom_resources("compute.resources", self.resources)


@dataclass
class ScoreConfig:
    """raytune-st score: a cross-encoder's (or a bi-encoder's) scores for (query, passage, ...) rows."""

    model: ModelConfig = option(
        help="the scorer: {name, type: cross_encoder} (a reranker, one output) or {name, type: bi_encoder} (cosine similarity)"
    )
    data: Source = option(help="rows of text: the query first, then one or more passages (positive, negatives, ...)")
    output: ScoreOutput = option(help="where the scored rows go")
    batch_size: int = option(64, help="pairs (cross-encoder) or texts (bi-encoder) per forward pass")
    compute: ScoreCompute = option(default_factory=ScoreCompute, effect=PLACEMENT, help="the autoscaling actor pool")
    ray_address: Optional[str] = option(None, effect=PLACEMENT, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self) -> None:
        if self.model.type is None:
            self.model.type = "cross_encoder"
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be at least 1, got {self.batch_size}")

    def roles(self) -> tuple[str, list[str]]:
        """(query column, passage columns) of the data, checked: text columns only, at least two."""
        info = inspect_source(self.data)
        labels = [c for c in info.columns if c in LABEL_COLUMNS["bi_encoder"] or c in LABEL_COLUMNS["cross_encoder"]]
        if labels or self.output.column in info.columns:
            taken = labels or [self.output.column]
            raise DataError(
                f"data {self.data.describe()!r} already has a label column {taken[0]!r}; the scores become output.column "
                f"{self.output.column!r}: select the text columns with data.columns"
            )
        not_text = [c for c in info.columns if info.types[c] != "string"]
        if not_text:
            raise DataError(
                f"data {self.data.describe()!r}: column {not_text[0]!r} holds {info.types[not_text[0]]}, not text; "
                "select the query and passage columns with data.columns"
            )
        if len(info.columns) < 2:
            raise DataError(f"data {self.data.describe()!r} has {len(info.columns)} column(s); it needs a query column and at least one passage column")
        return info.columns[0], info.columns[1:]
