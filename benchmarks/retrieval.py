"""The held-out retrieval task of the Debian benchmarks (shared by train_quality.py and flywheel_quality.py)."""

from __future__ import annotations

import os
from typing import Any, Sequence


def debian_dev_evaluator(data_dir: str, extra_passages: Sequence[str] = (), **kwargs: Any) -> Any:
    """sentence-transformers' InformationRetrievalEvaluator on debian-dev.parquet: each query against
    its own passage(s) among every dev passage plus `extra_passages` (distractors). `kwargs` go to
    the evaluator (name, ndcg_at_k, batch_size, ...)."""
    import pyarrow.parquet as pq
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    dev = pq.read_table(os.path.join(data_dir, "debian-dev.parquet"), columns=["query", "passage"]).to_pydict()
    corpus = {f"d{i}": passage for i, passage in enumerate(dev["passage"])}
    corpus.update({f"x{i}": passage for i, passage in enumerate(extra_passages)})
    qids: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for i, query in enumerate(dev["query"]):
        qid = qids.setdefault(query, f"q{len(qids)}")
        relevant.setdefault(qid, set()).add(f"d{i}")
    return InformationRetrievalEvaluator({qid: query for query, qid in qids.items()}, corpus, relevant, **kwargs)
