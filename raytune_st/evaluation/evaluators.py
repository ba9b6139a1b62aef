"""sentence-transformers evaluators built from config entries and table columns.

An evaluator entry names the evaluator `type`, its `name` (the metric prefix), its `data`
source and the evaluator's own keyword arguments. The data's columns feed the
evaluator's inputs in order, the way sentence-transformers feeds a loss:

=================================== =========================================
type                                columns, in order
=================================== =========================================
EmbeddingSimilarityEvaluator        sentence1, sentence2, score
InformationRetrievalEvaluator       query, passage (or corpus/queries/qrels)
TripletEvaluator                    anchor, positive, negative
BinaryClassificationEvaluator       sentence1, sentence2, label
RerankingEvaluator                  query, positive(s), negative(s)
CrossEncoderRerankingEvaluator      query, positive(s), negative(s)
CrossEncoderClassificationEvaluator sentence1, sentence2, label
CrossEncoderCorrelationEvaluator    sentence1, sentence2, score
=================================== =========================================

Everything here is plain Python; the evaluate job and the training loop call
:func:`build_evaluator` on a worker, after the columns were read there.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from raytune_st.errors import DataError

Columns = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class EvaluatorKind:
    """How one sentence-transformers evaluator takes its data."""

    cls_path: str  # "module:Class"
    model_type: str  # bi_encoder | cross_encoder
    roles: tuple[str, ...]  # what each data column is, in order
    role_types: tuple[str, ...]  # text | texts (text or list of texts) | number
    data_params: tuple[str, ...]  # constructor arguments filled from the data (not settable in config)
    build: Callable[[Any, list[list[Any]], dict[str, Any], Sequence[str]], Any]  # see the builders below
    # (kwargs, the model's similarity function names, the cross-encoder's num_labels) -> the
    # metric names the evaluator returns, before its name prefix: see metric_names().
    metrics: Callable[[dict[str, Any], Sequence[str], Optional[int]], list[str]]

    def evaluator_class(self) -> type:
        module, _, name = self.cls_path.partition(":")
        return getattr(importlib.import_module(module), name)

    def keyword_arguments(self) -> list[str]:
        """The constructor arguments a config may set."""
        params = inspect.signature(self.evaluator_class().__init__).parameters
        skip = {"self", "name", *self.data_params}
        return [p for p, v in params.items() if p not in skip and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]


def ir_from_pairs(
    queries: Sequence[str], passages: Sequence[str], extra_corpus: Sequence[str] = ()
) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant_docs) for InformationRetrievalEvaluator from (query, passage) pairs.

    Each distinct query is relevant to every passage it is paired with; the corpus is every
    distinct passage plus the extra corpus texts. Ids are assigned in first-seen order.
    """
    corpus_ids: dict[str, str] = {}
    for text in [*passages, *extra_corpus]:
        corpus_ids.setdefault(text, f"d{len(corpus_ids)}")
    query_ids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for query, passage in zip(queries, passages):
        qid = query_ids.setdefault(query, f"q{len(query_ids)}")
        relevant.setdefault(qid, set()).add(corpus_ids[passage])
    return (
        {qid: text for text, qid in query_ids.items()},
        {cid: text for text, cid in corpus_ids.items()},
        relevant,
    )


def ir_from_beir(corpus: Columns, queries: Columns, qrels: Columns) -> tuple[dict, dict, dict[str, set[str]]]:
    """(queries, corpus, relevant_docs) from BEIR's corpus (_id, [title], text), queries (_id, text) and qrels.

    qrels rows are (query-id, corpus-id[, score]); a score <= 0 is not relevant. Only queries
    with at least one relevant document are kept, as BEIR's evaluation does.
    """
    for what, cols, needed in (("corpus", corpus, ("_id", "text")), ("queries", queries, ("_id", "text"))):
        missing = [c for c in needed if c not in cols]
        if missing:
            raise DataError(f"BEIR {what} needs columns {list(needed)}, found {list(cols)}; use rename: in its source")
    titles = corpus.get("title") or [""] * len(corpus["_id"])
    corpus_map = {str(i): f"{t} {x}".strip() if t else x for i, t, x in zip(corpus["_id"], titles, corpus["text"])}
    qcols = list(qrels)
    if len(qcols) < 2:
        raise DataError(f"BEIR qrels need (query-id, corpus-id[, score]) columns, found {qcols}")
    scores = qrels[qcols[2]] if len(qcols) > 2 else [1] * len(qrels[qcols[0]])
    relevant: dict[str, set[str]] = {}
    for qid, cid, score in zip(qrels[qcols[0]], qrels[qcols[1]], scores):
        if float(score) > 0:
            relevant.setdefault(str(qid), set()).add(str(cid))
    query_map = {str(i): t for i, t in zip(queries["_id"], queries["text"]) if str(i) in relevant}
    relevant = {q: docs for q, docs in relevant.items() if q in query_map}
    if not relevant:
        raise DataError("BEIR qrels name no query found in queries with a positive score; check that the ids match")
    return query_map, corpus_map, relevant


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [value]
    return list(value)


def reranking_samples(queries: Sequence[str], positives: Sequence[Any], negatives: Sequence[Any]) -> list[dict]:
    """Samples {query, positive: [...], negative: [...]} grouped by query text, in first-seen order.

    A cell may hold one text or a list of texts; rows of the same query are merged, keeping
    each document once.
    """
    grouped: dict[str, dict[str, list[str]]] = {}
    for query, pos, neg in zip(queries, positives, negatives):
        sample = grouped.setdefault(query, {"positive": [], "negative": []})
        for key, docs in (("positive", pos), ("negative", neg)):
            for doc in _as_list(docs):
                if doc not in sample[key]:
                    sample[key].append(doc)
    return [{"query": q, **docs} for q, docs in grouped.items()]


# Each builder: (evaluator class, the checked data columns in role order, keyword arguments,
# extra corpus passages) -> the evaluator.


def _similarity(evaluator, columns, kwargs, extra_corpus):
    return evaluator(sentences1=columns[0], sentences2=columns[1], scores=[float(s) for s in columns[2]], **kwargs)


def _binary(evaluator, columns, kwargs, extra_corpus):
    return evaluator(sentences1=columns[0], sentences2=columns[1], labels=[int(v) for v in columns[2]], **kwargs)


def _triplet(evaluator, columns, kwargs, extra_corpus):
    return evaluator(anchors=columns[0], positives=columns[1], negatives=columns[2], **kwargs)


def _reranking(evaluator, columns, kwargs, extra_corpus):
    return evaluator(samples=reranking_samples(columns[0], columns[1], columns[2]), **kwargs)


def _ir(evaluator, columns, kwargs, extra_corpus):
    queries, corpus, relevant = ir_from_pairs(columns[0], columns[1], extra_corpus)
    return evaluator(queries=queries, corpus=corpus, relevant_docs=relevant, **kwargs)


def _ce_classification(evaluator, columns, kwargs, extra_corpus):
    return evaluator(sentence_pairs=[list(p) for p in zip(columns[0], columns[1])], labels=[int(v) for v in columns[2]], **kwargs)


def _ce_correlation(evaluator, columns, kwargs, extra_corpus):
    return evaluator(sentence_pairs=[list(p) for p in zip(columns[0], columns[1])], scores=[float(v) for v in columns[2]], **kwargs)


# --- the metric names each evaluator returns (sentence-transformers 6.2's __call__) ---------
# The model decides some of them: the bi-encoder evaluators default to the model's
# similarity_fn_name, and CrossEncoderClassificationEvaluator reports binary or multi-class
# metrics by the model's num_labels. The tests run every evaluator and compare.

SIMILARITY_NAMES = ("cosine", "dot", "euclidean", "manhattan")


def _similarities(kw: dict[str, Any], model_similarities: Sequence[str], main_key: Optional[str]) -> list[str]:
    """The similarity functions an evaluator scores with: its similarity_fn_names, else its main one, else the model's."""
    if kw.get("similarity_fn_names"):
        return list(kw["similarity_fn_names"])
    if main_key and kw.get(main_key):
        from sentence_transformers.util.similarity import SimilarityFunction

        return [SimilarityFunction(kw[main_key]).value]
    return list(model_similarities)


def _similarity_metrics(kw, sims, num_labels):
    names = _similarities(kw, sims, "main_similarity")
    out = [f"{metric}_{fn}" for fn in names for metric in ("pearson", "spearman")]
    return out + (["pearson_max", "spearman_max"] if len(names) > 1 else [])


_BINARY_METRICS = ("accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "ap", "mcc")


def _binary_metrics(kw, sims, num_labels):
    names = _similarities(kw, sims, None)
    out = [f"{fn}_{metric}" for fn in names for metric in _BINARY_METRICS]
    return out + ([f"max_{metric}" for metric in _BINARY_METRICS] if len(names) > 1 else [])


def _triplet_metrics(kw, sims, num_labels):
    names = _similarities(kw, sims, "main_similarity_function")
    return [f"{fn}_accuracy" for fn in names] + (["max_accuracy"] if len(names) > 1 else [])


def _ir_metrics(kw, sims, num_labels):
    names = sorted(kw["score_functions"]) if kw.get("score_functions") else sorted(sims)
    ks = {
        "accuracy": kw.get("accuracy_at_k", [1, 3, 5, 10]),
        "precision": kw.get("precision_recall_at_k", [1, 3, 5, 10]),
        "recall": kw.get("precision_recall_at_k", [1, 3, 5, 10]),
        "ndcg": kw.get("ndcg_at_k", [10]),
        "mrr": kw.get("mrr_at_k", [10]),
        "map": kw.get("map_at_k", [100]),
    }
    return [f"{fn}_{metric}@{k}" for fn in names for metric, at in ks.items() for k in at]


def _reranking_metrics(kw, sims, num_labels):
    at_k = kw.get("mrr_at_k") or kw.get("at_k", 10)
    return ["map", f"mrr@{at_k}", f"ndcg@{at_k}"]


def _ce_classification_metrics(kw, sims, num_labels):
    binary = ["accuracy", "accuracy_threshold", "f1", "f1_threshold", "precision", "recall", "average_precision"]
    multi = ["f1_macro", "f1_micro", "f1_weighted"]
    if num_labels is None:  # not known before the model is read: either set
        return binary + multi
    return binary if num_labels == 1 else multi


def _ce_correlation_metrics(kw, sims, num_labels):
    return ["pearson", "spearman"]


def metric_names(
    type_name: str, name: str, kwargs: dict[str, Any], *, similarities: Sequence[str] = SIMILARITY_NAMES,
    num_labels: Optional[int] = None,
) -> list[str]:
    """The metric names an evaluator returns, with its name prefix (``<name>_<metric>``).

    `similarities` are the model's similarity function names (one for a known model; all four
    when the model has not been read yet), `num_labels` a cross-encoder's outputs (None: unknown).
    """
    found = EVALUATORS[type_name].metrics(kwargs, similarities, num_labels)
    return [f"{name}_{metric}" if name else metric for metric in found]


_ST = "sentence_transformers.sentence_transformer.evaluation"
_CE = "sentence_transformers.cross_encoder.evaluation"

EVALUATORS: dict[str, EvaluatorKind] = {
    "EmbeddingSimilarityEvaluator": EvaluatorKind(
        f"{_ST}:EmbeddingSimilarityEvaluator", "bi_encoder", ("sentence1", "sentence2", "score"),
        ("text", "text", "number"), ("sentences1", "sentences2", "scores"), _similarity, _similarity_metrics,
    ),
    "InformationRetrievalEvaluator": EvaluatorKind(
        f"{_ST}:InformationRetrievalEvaluator", "bi_encoder", ("query", "passage"),
        ("text", "text"), ("queries", "corpus", "relevant_docs"), _ir, _ir_metrics,
    ),
    "TripletEvaluator": EvaluatorKind(
        f"{_ST}:TripletEvaluator", "bi_encoder", ("anchor", "positive", "negative"),
        ("text", "text", "text"), ("anchors", "positives", "negatives"), _triplet, _triplet_metrics,
    ),
    "BinaryClassificationEvaluator": EvaluatorKind(
        f"{_ST}:BinaryClassificationEvaluator", "bi_encoder", ("sentence1", "sentence2", "label"),
        ("text", "text", "number"), ("sentences1", "sentences2", "labels"), _binary, _binary_metrics,
    ),
    "RerankingEvaluator": EvaluatorKind(
        f"{_ST}:RerankingEvaluator", "bi_encoder", ("query", "positive", "negative"),
        ("text", "texts", "texts"), ("samples",), _reranking, _reranking_metrics,
    ),
    "CrossEncoderRerankingEvaluator": EvaluatorKind(
        f"{_CE}:CrossEncoderRerankingEvaluator", "cross_encoder", ("query", "positive", "negative"),
        ("text", "texts", "texts"), ("samples",), _reranking, _reranking_metrics,
    ),
    "CrossEncoderClassificationEvaluator": EvaluatorKind(
        f"{_CE}:CrossEncoderClassificationEvaluator", "cross_encoder", ("sentence1", "sentence2", "label"),
        ("text", "text", "number"), ("sentence_pairs", "labels"), _ce_classification, _ce_classification_metrics,
    ),
    "CrossEncoderCorrelationEvaluator": EvaluatorKind(
        f"{_CE}:CrossEncoderCorrelationEvaluator", "cross_encoder", ("sentence1", "sentence2", "score"),
        ("text", "text", "number"), ("sentence_pairs", "scores"), _ce_correlation, _ce_correlation_metrics,
    ),
}


@dataclass(frozen=True)
class RoleType:
    """What a column of one role type holds: in the data's metadata, and value by value."""

    column_types: frozenset[str]  # the metadata types (data.sources' names) that can hold it
    described: str  # what a column must hold, for messages
    value: str  # what each value must be, for messages
    accepts: Callable[[Any], bool]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


ROLE_TYPES: dict[str, RoleType] = {
    "text": RoleType(frozenset({"string", "null"}), "text", "a string", lambda v: isinstance(v, str)),
    "texts": RoleType(
        frozenset({"string", "list<string>", "null"}), "text or lists of text", "a string or a list of strings",
        lambda v: isinstance(v, str) or (isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v)),
    ),
    "number": RoleType(frozenset({"float", "int", "bool", "null"}), "numbers", "a number", _is_number),
}


def check_values(columns: Columns, kind: EvaluatorKind, where: str) -> list[list[Any]]:
    """The columns as lists in role order, after checking every value has its role's type."""
    names = list(columns)
    out = []
    for name, role, role_type in zip(names, kind.roles, kind.role_types):
        values = list(columns[name])
        expected = ROLE_TYPES[role_type]
        for row, value in enumerate(values):
            if not expected.accepts(value):
                what = "null" if value is None else f"{type(value).__name__} {value!r:.40}"
                raise DataError(
                    f"{where}: column {name!r} ({role}) row {row} is {what}, expected {expected.value}; "
                    "drop or fix such rows in the data"
                )
        out.append(values)
    return out


def build_evaluator(
    type_name: str,
    name: str,
    columns: Columns,
    kwargs: Optional[dict[str, Any]] = None,
    *,
    extra_corpus: Sequence[str] = (),
    beir: Optional[tuple[Columns, Columns, Columns]] = None,
):
    """A sentence-transformers evaluator from its data's columns (in role order) and its kwargs.

    `extra_corpus` adds passages to an InformationRetrievalEvaluator built from pairs;
    `beir` = (corpus, queries, qrels) columns builds it from the BEIR layout instead.
    A ``module:Class`` evaluator gets its data's columns as keyword arguments of the same names.
    """
    from raytune_st.components import build_custom_evaluator, is_import_path

    if is_import_path(type_name):
        return build_custom_evaluator(type_name, name, dict(columns), dict(kwargs or {}))
    kind = EVALUATORS[type_name]
    cls = kind.evaluator_class()
    kwargs = {**(kwargs or {}), "name": name}
    kwargs.setdefault("show_progress_bar", False)
    kwargs.setdefault("write_csv", False)
    if beir is not None:
        queries, corpus, relevant = ir_from_beir(*beir)
        return cls(queries=queries, corpus=corpus, relevant_docs=relevant, **kwargs)
    where = f"evaluator {name or type_name!r}"
    if not columns or not len(next(iter(columns.values()))):
        raise DataError(f"{where}: the data set is empty; point data at a file with rows")
    values = check_values(columns, kind, where)
    return kind.build(cls, values, kwargs, list(extra_corpus))
