"""Config of the evaluate job, and the evaluator entry shared with the train job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from raytune_st.components import check_evaluator, is_import_path
from raytune_st.config.core import option, suggest
from raytune_st.config.effects import PLACEMENT
from raytune_st.config.resources import check_custom_resources
from raytune_st.data.sources import Source, inspect_source
from raytune_st.errors import ConfigError, DataError
from raytune_st.evaluation.evaluators import EVALUATORS, ROLE_TYPES
from raytune_st.models.config import ModelConfig


@dataclass
class EvaluatorSpec:
    """One evaluator: its type, metric prefix, data and its own keyword arguments (any other key)."""

    __extra_field__ = "kwargs"

    type: str = option(help="evaluator class: " + ", ".join(EVALUATORS) + ", or your own as module.path:Class")
    name: str = option("", help="metric prefix, e.g. sts-dev gives sts-dev_spearman_cosine")
    data: Optional[Source] = option(None, help="the evaluator's rows; columns feed its inputs in order")
    corpus: list[Source] = option(
        default_factory=list,
        help="InformationRetrievalEvaluator: extra passages (first column), or the BEIR corpus (_id, title, text) with queries and qrels",
    )
    queries: Optional[Source] = option(None, help="InformationRetrievalEvaluator, BEIR layout: queries (_id, text)")
    qrels: Optional[Source] = option(None, help="InformationRetrievalEvaluator, BEIR layout: qrels (query-id, corpus-id, score)")
    kwargs: dict[str, Any] = option(default_factory=dict, help="the evaluator's own keyword arguments")

    def __post_init__(self) -> None:
        if self.custom:
            if self.corpus or self.beir:
                raise ConfigError(f"evaluator {self.type!r}: corpus, queries and qrels are for InformationRetrievalEvaluator; "
                                  "give your evaluator its data (its columns become keyword arguments) or keyword arguments")
            check_evaluator(self.type, self.kwargs, where="evaluator")
            return
        if self.type not in EVALUATORS:
            raise ConfigError(
                f"type: unknown evaluator {self.type!r}{suggest(self.type, EVALUATORS)}; choose one of "
                + ", ".join(EVALUATORS)
            )
        kind = EVALUATORS[self.type]
        allowed = kind.keyword_arguments()
        for key in self.kwargs:
            if key not in allowed:
                raise ConfigError(
                    f"{key!r} is not an argument of {self.type}{suggest(key, allowed)}; it takes "
                    + ", ".join(["type", "name", "data", *allowed])
                )
        is_ir = self.type == "InformationRetrievalEvaluator"
        if self.beir:
            if not is_ir:
                raise ConfigError(f"queries/qrels are only for InformationRetrievalEvaluator, not {self.type}")
            if not (self.queries and self.qrels and len(self.corpus) == 1) or self.data is not None:
                raise ConfigError(
                    "the BEIR layout needs exactly one corpus source plus queries and qrels, and no data; "
                    "for query/passage pairs give data (and optionally corpus) instead"
                )
        elif self.data is None:
            raise ConfigError(f"{self.type} needs data: a source whose columns are ({', '.join(kind.roles)})")
        elif self.corpus and not is_ir:
            raise ConfigError(f"corpus is only for InformationRetrievalEvaluator, not {self.type}")

    @property
    def beir(self) -> bool:
        return self.queries is not None or self.qrels is not None

    @property
    def custom(self) -> bool:
        """A user's evaluator class named by import path (see :mod:`raytune_st.components`)."""
        return is_import_path(self.type)

    @property
    def model_type(self) -> Optional[str]:
        """bi_encoder or cross_encoder; None for a custom evaluator, which may take either."""
        return None if self.custom else EVALUATORS[self.type].model_type

    @property
    def label(self) -> str:
        return self.name or self.type

    def check_data(self) -> None:
        """Check the sources exist and have the columns this evaluator needs; reads metadata only."""
        if self.custom:
            columns = inspect_source(self.data).columns if self.data is not None else []
            check_evaluator(self.type, self.kwargs, where="evaluator", columns=columns)
            return
        kind = EVALUATORS[self.type]
        where = f"evaluator {self.label!r}"
        if self.beir:
            for source in (self.corpus[0], self.queries, self.qrels):
                inspect_source(source)
            return
        info = inspect_source(self.data)
        if len(info.columns) != len(kind.roles):
            raise DataError(
                f"{where}: {self.data.path!r} has columns {info.columns}, but {self.type} takes "
                f"{len(kind.roles)} columns in this order: ({', '.join(kind.roles)}); "
                "select and order them with `columns:` (and `rename:`) in the data source"
            )
        for column, role, role_type in zip(info.columns, kind.roles, kind.role_types):
            found = info.types[column]
            if found not in ROLE_TYPES[role_type].column_types:
                raise DataError(
                    f"{where}: column {column!r} ({role}) holds {found}, expected {ROLE_TYPES[role_type].described}; "
                    f"{self.type}'s columns are ({', '.join(kind.roles)}), check their order"
                )
        for source in self.corpus:
            info = inspect_source(source)
            if info.types[info.columns[0]] != "string":
                raise DataError(
                    f"{where}: corpus {source.path!r} column {info.columns[0]!r} is not text; "
                    "select the passage column first with `columns:`"
                )


@dataclass
class OutputConfig:
    path: str = option(help="output directory (local path or s3:// / gs:// URI)")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"path": value} if isinstance(value, str) else value


@dataclass
class EvaluateConfig:
    """raytune-st evaluate: run sentence-transformers evaluators on a model, on a Ray worker."""

    model: ModelConfig = option(help="the model to evaluate: a directory, a hub id, or {name, type, ...}")
    evaluators: list[EvaluatorSpec] = option(help="evaluators to run, together as a SequentialEvaluator")
    output: OutputConfig = option(effect=PLACEMENT, help="where metrics.json and the resolved config.yaml go")
    num_gpus: Optional[float] = option(None, effect=PLACEMENT, help="GPUs for the evaluation worker; default: 1 when the cluster has one")
    resources: dict[str, float] = option(
        default_factory=dict, effect=PLACEMENT, help="custom Ray resources the evaluation worker asks for, e.g. {worker_node: 0.01}: runs it on a node that has them"
    )
    ray_address: Optional[str] = option(None, effect=PLACEMENT, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self) -> None:
        check_custom_resources("resources", self.resources, built_in_key="num_gpus (the worker takes one CPU)")
        if not self.evaluators:
            raise ConfigError("evaluators: give at least one evaluator, e.g. [{type: InformationRetrievalEvaluator, name: dev, data: ...}]")
        # An unnamed custom evaluator prefixes its metrics itself: nothing to tell apart by name.
        labels = [e.label for e in self.evaluators if e.name or not e.custom]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ConfigError(f"evaluators: the name {dup[0]!r} is used twice; give each evaluator its own name (metrics are prefixed with it)")
        types = {e.model_type for e in self.evaluators if e.model_type is not None}  # custom ones take either
        if len(types) > 1:
            raise ConfigError(
                "evaluators: bi-encoder and CrossEncoder* evaluators cannot share one model; run them in two evaluate jobs"
            )
        implied = types.pop() if types else (self.model.type or "bi_encoder")
        if self.model.type is None:
            self.model.type = implied
        elif self.model.type != implied:
            raise ConfigError(
                f"model.type is {self.model.type} but the evaluators are for a {implied}; "
                "use CrossEncoder* evaluators for cross-encoders and the others for bi-encoders"
            )
