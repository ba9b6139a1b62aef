"""Evaluator entries and builders, without Ray: config checks, data shaping, value checks."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config import build
from raytune_st.errors import ConfigError, DataError
from raytune_st.evaluation.config import EvaluateConfig, EvaluatorSpec
from raytune_st.evaluation.evaluators import (
    EVALUATORS,
    build_evaluator,
    ir_from_beir,
    ir_from_pairs,
    reranking_samples,
)


def write(tmp_path, name, **columns):
    path = tmp_path / name
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_ir_from_pairs_dedups_queries_and_passages_and_keeps_every_positive():
    queries, corpus, relevant = ir_from_pairs(
        ["q a", "q b", "q a"], ["p1", "p2", "p3"], extra_corpus=["p2", "p4"]
    )
    assert sorted(queries.values()) == ["q a", "q b"]
    assert sorted(corpus.values()) == ["p1", "p2", "p3", "p4"]
    by_text = {text: cid for cid, text in corpus.items()}
    qa = next(q for q, t in queries.items() if t == "q a")
    qb = next(q for q, t in queries.items() if t == "q b")
    assert relevant[qa] == {by_text["p1"], by_text["p3"]}
    assert relevant[qb] == {by_text["p2"]}


def test_ir_from_beir_joins_titles_and_drops_queries_without_positive_qrels():
    queries, corpus, relevant = ir_from_beir(
        {"_id": ["d1", "d2"], "title": ["T", ""], "text": ["one", "two"]},
        {"_id": ["q1", "q2", "q3"], "text": ["first", "second", "third"]},
        {"query-id": ["q1", "q2", "q2"], "corpus-id": ["d1", "d2", "d1"], "score": [1, 0, 2]},
    )
    assert corpus == {"d1": "T one", "d2": "two"}
    assert queries == {"q1": "first", "q2": "second"}
    assert relevant == {"q1": {"d1"}, "q2": {"d1"}}


def test_ir_from_beir_names_missing_columns():
    with pytest.raises(DataError, match=r"BEIR corpus needs columns \['_id', 'text'\]"):
        ir_from_beir({"id": ["d1"], "text": ["x"]}, {"_id": ["q"], "text": ["y"]}, {"a": ["q"], "b": ["d1"]})


def test_reranking_samples_group_rows_by_query_and_accept_lists():
    samples = reranking_samples(
        ["q1", "q2", "q1"], ["p1", ["p2", "p2b"], "p1"], [["n1", "n2"], "n3", "n4"]
    )
    assert samples == [
        {"query": "q1", "positive": ["p1"], "negative": ["n1", "n2", "n4"]},
        {"query": "q2", "positive": ["p2", "p2b"], "negative": ["n3"]},
    ]


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"s1": ["a", None], "s2": ["b", "c"], "score": [0.1, 0.2]}, r"column 's1' \(sentence1\) row 1 is null, expected a string"),
        ({"s1": ["a", "b"], "s2": ["b", 3], "score": [0.1, 0.2]}, r"column 's2' \(sentence2\) row 1 is int 3"),
        ({"s1": ["a", "b"], "s2": ["b", "c"], "score": [0.1, float("nan")]}, r"column 'score' \(score\) row 1 is float nan, expected a number"),
    ],
)
def test_build_evaluator_rejects_bad_values_naming_row_and_column(columns, message):
    with pytest.raises(DataError, match=message):
        build_evaluator("EmbeddingSimilarityEvaluator", "sts", columns)


def test_build_evaluator_rejects_empty_data():
    with pytest.raises(DataError, match="the data set is empty"):
        build_evaluator("TripletEvaluator", "t", {"a": [], "p": [], "n": []})


def test_every_evaluator_kind_names_real_constructor_arguments():
    import inspect

    for type_name, kind in EVALUATORS.items():
        params = inspect.signature(kind.evaluator_class().__init__).parameters
        assert set(kind.data_params) <= set(params), type_name
        assert len(kind.roles) == len(kind.role_types)
        assert "batch_size" in kind.keyword_arguments(), type_name


def test_spec_unknown_type_suggests_the_close_name():
    with pytest.raises(ConfigError, match=r"unknown evaluator 'EmbeddingSimilarityEvaluater' \(did you mean 'EmbeddingSimilarityEvaluator'\?\)"):
        build(EvaluatorSpec, {"type": "EmbeddingSimilarityEvaluater", "data": "x.parquet"})


def test_spec_keyword_arguments_are_checked_against_the_evaluator_signature():
    spec = build(EvaluatorSpec, {"type": "InformationRetrievalEvaluator", "data": "x.parquet", "ndcg_at_k": [5, 10]})
    assert spec.kwargs == {"ndcg_at_k": [5, 10]}
    with pytest.raises(ConfigError, match=r"'ndcg_at' is not an argument of InformationRetrievalEvaluator \(did you mean 'ndcg_at_k'\?\)"):
        build(EvaluatorSpec, {"type": "InformationRetrievalEvaluator", "data": "x.parquet", "ndcg_at": [5]})
    # Data arguments come from the data, never from the config.
    with pytest.raises(ConfigError, match="'relevant_docs' is not an argument"):
        build(EvaluatorSpec, {"type": "InformationRetrievalEvaluator", "data": "x.parquet", "relevant_docs": {"q": ["d"]}})


def test_spec_needs_data_and_keeps_beir_keys_for_information_retrieval():
    with pytest.raises(ConfigError, match=r"TripletEvaluator needs data: a source whose columns are \(anchor, positive, negative\)"):
        build(EvaluatorSpec, {"type": "TripletEvaluator"})
    with pytest.raises(ConfigError, match="queries/qrels are only for InformationRetrievalEvaluator"):
        build(EvaluatorSpec, {"type": "TripletEvaluator", "queries": "q.jsonl", "qrels": "r.tsv", "corpus": ["c.jsonl"]})
    with pytest.raises(ConfigError, match="BEIR layout needs exactly one corpus source plus queries and qrels"):
        build(EvaluatorSpec, {"type": "InformationRetrievalEvaluator", "queries": "q.jsonl", "qrels": "r.tsv"})
    with pytest.raises(ConfigError, match="corpus is only for InformationRetrievalEvaluator"):
        build(EvaluatorSpec, {"type": "TripletEvaluator", "data": "t.parquet", "corpus": ["c.parquet"]})


def _config(**overrides):
    data = {
        "model": "m",
        "evaluators": [{"type": "EmbeddingSimilarityEvaluator", "name": "sts", "data": "x.parquet"}],
        "output": "out",
    }
    data.update(overrides)
    return build(EvaluateConfig, data)


def test_config_infers_the_model_type_from_the_evaluators():
    assert _config().model.type == "bi_encoder"
    ce = _config(evaluators=[{"type": "CrossEncoderCorrelationEvaluator", "data": "x.parquet"}])
    assert ce.model.type == "cross_encoder"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"evaluators": []}, "give at least one evaluator"),
        (
            {"evaluators": [{"type": "TripletEvaluator", "name": "a", "data": "x.parquet"}] * 2},
            "the name 'a' is used twice",
        ),
        (
            {"evaluators": [
                {"type": "TripletEvaluator", "name": "a", "data": "x.parquet"},
                {"type": "CrossEncoderCorrelationEvaluator", "name": "b", "data": "x.parquet"},
            ]},
            "cannot share one model",
        ),
        ({"model": {"name": "m", "type": "cross_encoder"}}, "model.type is cross_encoder but the evaluators are for a bi_encoder"),
    ],
)
def test_config_rejects_inconsistent_evaluators(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_check_data_wants_the_evaluators_columns_in_order(tmp_path):
    path = write(tmp_path, "sts.parquet", sentence1=["a"], sentence2=["b"])
    spec = build(EvaluatorSpec, {"type": "EmbeddingSimilarityEvaluator", "name": "sts", "data": path})
    with pytest.raises(DataError, match=r"has columns \['sentence1', 'sentence2'\], but EmbeddingSimilarityEvaluator takes 3 columns in this order: \(sentence1, sentence2, score\); select and order them"):
        spec.check_data()

    path = write(tmp_path, "swapped.parquet", score=[0.5], sentence1=["a"], sentence2=["b"])
    spec = build(EvaluatorSpec, {"type": "EmbeddingSimilarityEvaluator", "name": "sts", "data": path})
    with pytest.raises(DataError, match=r"column 'score' \(sentence1\) holds float, expected text"):
        spec.check_data()
    # Reordering with `columns:` fixes it.
    build(
        EvaluatorSpec,
        {"type": "EmbeddingSimilarityEvaluator", "data": {"path": path, "columns": ["sentence1", "sentence2", "score"]}},
    ).check_data()


def test_build_evaluator_gives_the_evaluators_own_metrics(tiny_bert_dir):
    """The built evaluator is sentence-transformers' own: same metrics as building it by hand."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    model = SentenceTransformer(tiny_bert_dir, device="cpu")
    queries = ["how to compress files", "a text editor", "an image viewer"]
    passages = ["gzip compresses files", "vim edits text", "feh shows images"]
    ours = build_evaluator("InformationRetrievalEvaluator", "ir", {"q": queries, "p": passages}, {"ndcg_at_k": [2]})
    reference = InformationRetrievalEvaluator(
        {f"q{i}": q for i, q in enumerate(queries)},
        {f"d{i}": p for i, p in enumerate(passages)},
        {f"q{i}": {f"d{i}"} for i in range(3)},
        ndcg_at_k=[2],
        name="ir",
        write_csv=False,
    )
    assert ours(model) == reference(model)


def test_announced_evaluators_say_when_each_runs_and_return_the_same_metrics(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer

    from raytune_st.evaluation.run import run_evaluators

    model = SentenceTransformer(tiny_bert_dir, device="cpu")
    queries = ["how to compress files", "a text editor", "an image viewer"]
    passages = ["gzip compresses files", "vim edits text", "feh shows images"]
    evaluators = [
        build_evaluator("InformationRetrievalEvaluator", "ir", {"q": queries, "p": passages}, {}),
        build_evaluator("EmbeddingSimilarityEvaluator", "sts", {"a": queries, "b": passages, "s": [0.9, 0.1, 0.5]}, {}),
    ]
    said: list[str] = []
    assert run_evaluators(evaluators, model, said.append) == run_evaluators(evaluators, model)
    assert said[0] == "[evaluate] InformationRetrievalEvaluator ir: running"
    assert said[1].startswith("[evaluate] InformationRetrievalEvaluator ir: done in ")
    assert said[2:3] == ["[evaluate] EmbeddingSimilarityEvaluator sts: running"] and len(said) == 4


# --- metric names, known before any evaluation runs --------------------------------------

TEXTS = ["how to compress files", "a text editor", "an image viewer", "a web browser"]
DOCS = ["gzip compresses files", "vim edits text", "feh shows images", "firefox browses the web"]

METRIC_CASES = [
    ("EmbeddingSimilarityEvaluator", {"a": TEXTS, "b": DOCS, "s": [0.9, 0.1, 0.5, 0.3]}, {}),
    ("EmbeddingSimilarityEvaluator", {"a": TEXTS, "b": DOCS, "s": [0.9, 0.1, 0.5, 0.3]}, {"similarity_fn_names": ["cosine", "dot"]}),
    ("InformationRetrievalEvaluator", {"q": TEXTS, "p": DOCS}, {}),
    ("InformationRetrievalEvaluator", {"q": TEXTS, "p": DOCS}, {"ndcg_at_k": [2, 3], "accuracy_at_k": [1], "map_at_k": [4]}),
    ("TripletEvaluator", {"a": TEXTS, "p": DOCS, "n": DOCS[::-1]}, {}),
    ("TripletEvaluator", {"a": TEXTS, "p": DOCS, "n": DOCS[::-1]}, {"main_similarity_function": "dot"}),
    ("BinaryClassificationEvaluator", {"a": TEXTS, "b": DOCS, "l": [1, 0, 1, 0]}, {}),
    ("BinaryClassificationEvaluator", {"a": TEXTS, "b": DOCS, "l": [1, 0, 1, 0]}, {"similarity_fn_names": ["cosine", "manhattan"]}),
    ("RerankingEvaluator", {"q": TEXTS, "p": DOCS, "n": DOCS[::-1]}, {"at_k": 3}),
]
CE_METRIC_CASES = [
    ("CrossEncoderRerankingEvaluator", {"q": TEXTS, "p": DOCS, "n": DOCS[::-1]}, {"at_k": 3}, 1),
    ("CrossEncoderClassificationEvaluator", {"a": TEXTS, "b": DOCS, "l": [1, 0, 1, 0]}, {}, 1),
    ("CrossEncoderClassificationEvaluator", {"a": TEXTS, "b": DOCS, "l": [2, 0, 1, 0]}, {}, 3),
    ("CrossEncoderCorrelationEvaluator", {"a": TEXTS, "b": DOCS, "s": [0.9, 0.1, 0.5, 0.3]}, {}, 1),
]


@pytest.mark.parametrize("type_name,columns,kwargs", METRIC_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_metric_names_are_the_ones_the_bi_encoder_evaluator_returns(tiny_bert_dir, type_name, columns, kwargs):
    from sentence_transformers import SentenceTransformer

    from raytune_st.evaluation.evaluators import metric_names
    from raytune_st.evaluation.metrics import model_facts

    model = SentenceTransformer(tiny_bert_dir, device="cpu")
    similarity, _ = model_facts(tiny_bert_dir)
    assert similarity == model.similarity_fn_name == "cosine"
    returned = build_evaluator(type_name, "dev", columns, dict(kwargs))(model)
    assert sorted(metric_names(type_name, "dev", kwargs, similarities=[similarity])) == sorted(returned)


@pytest.mark.parametrize("type_name,columns,kwargs,num_labels", CE_METRIC_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_metric_names_are_the_ones_the_cross_encoder_evaluator_returns(tmp_path_factory, type_name, columns, kwargs, num_labels):
    from sentence_transformers.cross_encoder import CrossEncoder

    from raytune_st.evaluation.evaluators import metric_names
    from raytune_st.evaluation.metrics import model_facts
    from raytune_st.testing import save_tiny_cross_encoder

    root = str(tmp_path_factory.mktemp("ce"))
    path = save_tiny_cross_encoder(root)
    if num_labels != 1:  # the same tiny BERT with a 3-class head
        from transformers import AutoConfig, AutoTokenizer, BertForSequenceClassification

        path = str(tmp_path_factory.mktemp("ce-multi"))
        config = AutoConfig.from_pretrained(f"{root}/hf-ce", num_labels=num_labels, id2label={i: str(i) for i in range(num_labels)})
        BertForSequenceClassification(config).save_pretrained(path)
        AutoTokenizer.from_pretrained(f"{root}/hf-ce").save_pretrained(path)
    assert model_facts(path)[1] == num_labels
    model = CrossEncoder(path, device="cpu")
    returned = build_evaluator(type_name, "dev", columns, dict(kwargs))(model)
    assert sorted(metric_names(type_name, "dev", kwargs, num_labels=num_labels)) == sorted(returned)


def test_resolve_metric_takes_exact_names_with_or_without_the_eval_prefix():
    from raytune_st.evaluation.metrics import resolve_metric

    reported = ["eval_loss", "eval_dev_cosine_ndcg@10", "eval_dev_cosine_mrr@10"]
    assert resolve_metric("dev_cosine_ndcg@10", reported, key="k") == "eval_dev_cosine_ndcg@10"
    assert resolve_metric("eval_dev_cosine_ndcg@10", reported, key="k") == "eval_dev_cosine_ndcg@10"
    assert resolve_metric("loss", reported, key="k") == "eval_loss"
    with pytest.raises(ConfigError, match=r"k 'dev_cosine_ndcg@100' is not reported .*the closest are eval_dev_cosine_ndcg@10"):
        resolve_metric("dev_cosine_ndcg@100", reported, key="k")
