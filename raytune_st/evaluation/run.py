"""Running evaluators in a worker: read their data, build them, run them as one SequentialEvaluator.

Shared by the evaluate job's worker and the training loop's rank 0, so that both read the
same data the same way and report the evaluators' metrics under the same names.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from raytune_st.console import format_seconds
from raytune_st.data.sources import Source, read_source
from raytune_st.evaluation.config import EvaluatorSpec


def read_columns(source: Source) -> dict[str, list[Any]]:
    """All rows of a (small) source as {column: values}, read through Ray Data."""
    import pyarrow as pa

    tables = [batch for batch in read_source(source).iter_batches(batch_format="pyarrow", batch_size=None)]
    return pa.concat_tables(tables).to_pydict() if tables else {}


def build_evaluators(specs: list[EvaluatorSpec]) -> list[Any]:
    """sentence-transformers evaluators for `specs`, their data read on the calling worker."""
    from raytune_st.evaluation.evaluators import build_evaluator

    evaluators = []
    for spec in specs:
        if spec.beir:
            beir = (read_columns(spec.corpus[0]), read_columns(spec.queries), read_columns(spec.qrels))
            evaluators.append(build_evaluator(spec.type, spec.name, {}, spec.kwargs, beir=beir))
            continue
        extra = [text for source in spec.corpus for text in next(iter(read_columns(source).values()))]
        columns = read_columns(spec.data) if spec.data is not None else {}  # a custom evaluator may take no data
        evaluators.append(build_evaluator(spec.type, spec.name, columns, spec.kwargs, extra_corpus=extra))
    return evaluators


def run_evaluators(evaluators: list[Any], model: Any, say: Optional[Callable[[str], None]] = None) -> dict[str, float]:
    """The evaluators' metrics on `model`, by the names they give them (one evaluator: no sequential_score).

    `say`, when given, receives a line as each evaluator starts and ends (the evaluate job's progress).
    """
    from sentence_transformers.sentence_transformer.evaluation import SequentialEvaluator

    if say is not None:
        evaluators = [Announced(evaluator, say) for evaluator in evaluators]
    results = SequentialEvaluator(evaluators)(model)
    if len(evaluators) == 1:
        results.pop("sequential_score", None)
    return {key: float(value) for key, value in results.items()}


class Announced:
    """An evaluator that says when it starts and how long it took; everything else is the evaluator's."""

    def __init__(self, evaluator: Any, say: Callable[[str], None]):
        self._evaluator, self._say = evaluator, say

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)

    def __call__(self, model: Any, *args: Any, **kwargs: Any) -> Any:
        label = f"{type(self._evaluator).__name__} {getattr(self._evaluator, 'name', '') or ''}".rstrip()
        self._say(f"[evaluate] {label}: running")
        began = time.perf_counter()
        result = self._evaluator(model, *args, **kwargs)
        self._say(f"[evaluate] {label}: done in {format_seconds(time.perf_counter() - began)}")
        return result
