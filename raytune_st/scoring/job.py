"""The score job: a scorer's scores for every row of a data set, streamed to Parquet.

1. Check the config on the driver: the model resolves, the data has a query column and one
   or more passage columns of text and no label column yet, the output is writable.
2. Ray Data reads the rows and hands batches to an autoscaling pool of scoring actors
   (``compute.actors_min`` .. ``actors_max``), each loading the model once: a cross-encoder
   scores each (query, passage) pair; a bi-encoder gives the cosine similarity (the model's
   similarity function) of their embeddings. The rows keep their order.
3. Each row gets ``output.column``: one score for (query, passage) rows, else the list
   ``[s(query, passage_1), ..., s(query, passage_n)]``, which is what MarginMSELoss and
   DistillKLDivLoss take as labels for (query, positive, negative_1, ...) rows.

The driver writes the scored blocks in their order as ``part-00000.parquet``, ... (200,000 rows
or so each) while the actors go on; ``stats.json`` is written last, so its presence means a complete run. A rerun into the same output.path is refused unless
``output.overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from raytune_st.config.core import dump_yaml
from raytune_st.config.resources import check_custom_resources_exist
from raytune_st.errors import ConfigError
from raytune_st.models.config import ModelConfig
from raytune_st.outputs import OutputDir, filesystem, removed_on_failure, write_parts
from raytune_st.console import verbose
from raytune_st.runtime import logger_level, ray_address, ray_session
from raytune_st.scoring.config import ScoreConfig

STATS = "stats.json"


class Scorer:
    """A scoring actor: the model loaded once, then a batch of rows at a time (a Ray Data callable class)."""

    def __init__(self, model: ModelConfig, query: str, passages: list[str], column: str, batch_size: int):
        import torch

        from raytune_st.mining.embed import quiet_model_loading

        quiet_model_loading()
        self.model = model.load(device="cuda" if torch.cuda.is_available() else "cpu")
        self.cross = model.type == "cross_encoder"
        if self.cross and self.model.num_labels != 1:
            raise ConfigError(
                f"model {model.name or model.factory!r} has {self.model.num_labels} outputs; scores come from a cross-encoder "
                "with one (num_labels: 1), e.g. a reranker"
            )
        self.query, self.passages, self.column, self.batch_size = query, passages, column, batch_size

    def __call__(self, table: Any) -> Any:
        import numpy as np
        import pyarrow as pa

        queries = table.column(self.query).to_pylist()
        columns = [table.column(c).to_pylist() for c in self.passages]
        if self.cross:
            pairs = [(q, p) for passages in columns for q, p in zip(queries, passages)]
            flat = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
            scores = np.asarray(flat, dtype=np.float64).reshape(len(columns), len(queries))
        else:
            # Queries and passages with the model's own query and document prompts, as mining embeds them.
            encode = dict(batch_size=self.batch_size, show_progress_bar=False, convert_to_tensor=True)
            q = self.model.encode_query(queries, **encode)
            scores = np.stack([
                self.model.similarity_pairwise(q, self.model.encode_document(passages, **encode)).float().cpu().numpy()
                for passages in columns
            ]).astype(np.float64)
        if len(columns) == 1:
            values = pa.array(scores[0], type=pa.float64())
        else:
            values = pa.array(scores.T.tolist(), type=pa.list_(pa.float64()))
        return table.append_column(self.column, values)


def checked_output(config: ScoreConfig) -> tuple[OutputDir, str, list[str]]:
    """The checks that need no cluster; returns the output directory and the (query, passages) columns."""
    config.model.check()
    query, passages = config.roles()
    from raytune_st.mining.store import list_names

    output = OutputDir(config.output.path)
    output.check_writable()
    names = list_names(config.output.path)
    if names and not config.output.overwrite:
        raise ConfigError(
            f"output.path {config.output.path!r} already holds {len(names)} file(s) (an earlier score run?); "
            "choose another output.path, or set output.overwrite=true to replace them"
        )
    return output, query, passages


def _clear(path: str) -> None:
    import pyarrow.fs

    fs, root = filesystem(path)
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory:
            fs.delete_dir(info.path)
        else:
            fs.delete_file(info.path)


def score(config: ScoreConfig) -> dict[str, Any]:
    """Run the score job; returns the summary also written to stats.json."""
    import ray
    import ray.data

    from raytune_st.data.sources import read_source
    from raytune_st.runtime import data_context

    with removed_on_failure(config.output.path):
        output, query, passages = checked_output(config)
        _clear(config.output.path)  # an earlier run's parts (output.overwrite) go before any work
        started = time.monotonic()
        # Ray Data's own lines (execution plans, a CPU-starvation notice while the actors hold
        # every CPU) are in Ray's logs; the job prints one line per run. --verbose shows them.
        quiet = contextlib.nullcontext() if verbose() else logger_level("ray.data", logging.ERROR)
        with ray_session(config.ray_address), data_context(execution_options=_ordered()), quiet:
            compute = config.compute
            if ray_address(config.ray_address) is None:  # a remote cluster may autoscale
                check_custom_resources_exist("compute.resources", compute.resources, ray.cluster_resources())
            print(f"[score] {config.data.describe()}: {query!r} against {', '.join(map(repr, passages))} "
                  f"with {config.model.type} {config.model.name or config.model.factory}", flush=True)
            scored = read_source(config.data).map_batches(
                _bound(Scorer, config.model, query, passages, config.output.column, config.batch_size),
                batch_format="pyarrow",
                batch_size=max(config.batch_size, 256),
                concurrency=(compute.actors_min, compute.actors_max),
                num_cpus=compute.num_cpus,
                num_gpus=compute.num_gpus,
                resources=dict(compute.resources) or None,
            )
            fs, root = filesystem(config.output.path)
            # The driver writes the blocks as the actors finish them (Ray Data hands them over in
            # order), so the parts are named and filled the same on every run, whatever the timing.
            rows = write_parts(scored.iter_batches(batch_size=None, batch_format="pyarrow"), fs, root)
        seconds = time.monotonic() - started
        summary = {
            "output": config.output.path, "rows": rows, "column": config.output.column, "query": query, "passages": passages,
            "model": config.model.identity, "seconds": round(seconds, 2),
        }
        output.write("config.yaml", dump_yaml(config))
        output.write(STATS, json.dumps(summary, indent=2) + "\n")
    print(f"[score] {rows:,} rows scored in {seconds:.1f} s ({rows / max(seconds, 1e-9):,.1f} rows/s); wrote {config.output.path}", flush=True)
    return summary


def _bound(cls: type, *args: Any) -> type:
    """`cls` with its constructor arguments bound: they travel with the class, not as objects in
    the store that a restarted actor could no longer find (ray-project/ray#53727)."""

    class Bound(cls):
        def __init__(self) -> None:
            super().__init__(*args)

    Bound.__name__ = Bound.__qualname__ = cls.__name__
    return Bound


def _ordered() -> Any:
    """Ray Data's current execution options, with rows kept in order."""
    import copy

    from ray.data import DataContext

    options = copy.deepcopy(DataContext.get_current().execution_options)
    options.preserve_order = True
    return options


