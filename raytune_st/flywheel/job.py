"""The pipeline job: the retriever flywheel as one resumable run on one Ray session.

For a trained teacher, first ``teacher/mine`` (labeled pairs mined with the base model) and
``teacher/train`` (the cross-encoder). Then the start model is evaluated (``round-0/evaluate``,
the table's first row) and each round runs its stages in order, each the job of that name:

    round-<k>/mine       negatives mined with the base, the previous round's model, or the
                         previous model's candidates rescored by the teacher
    round-<k>/score      the teacher's scores for every mined row (when denoise or score is set)
    round-<k>/denoise    rows whose negatives the teacher scores too close to the positive, dropped
    round-<k>/train      a model trained from the base (or the previous model) on the round's data
    round-<k>/evaluate   that model on the held-out evaluators

A stage that finished leaves ``round-<k>/<stage>.done.json``: a key (the digest of its job's
resolved config and of the keys of the stages it reads from), its time and its summary. A rerun
skips every stage whose record holds the key it would have now, so an interrupted pipeline
goes on from the first unfinished stage (which itself resumes: mined parts and training
checkpoints), and a changed setting reruns that stage and those after it that read from it. A
setting that only says where a stage runs (resources, CPUs, threads, actors: PLACEMENT in
raytune_st.config.effects) is not part of the key: changing it reruns nothing.
Every mining stage shares one embedding cache (``output_dir/embeddings``): a model embeds a
text once per pipeline. At the end, ``rounds.md`` / ``rounds.json`` (one row per round: the
held-out metrics, rows mined, negatives removed, each stage's seconds) and ``rounds.png``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from raytune_st.config.core import build, dump_yaml
from raytune_st.config.effects import EVALUATION, RESULT, SCALE, flatten, settings_for
from raytune_st.errors import ConfigError
from raytune_st.flywheel.config import TEACHER_SCORES, PipelineConfig, Round, model_kind
from raytune_st.outputs import OutputDir, filesystem, join, write_parts
from raytune_st.runtime import ray_session

RECORD = ".done.json"


@dataclass
class Stage:
    name: str  # e.g. round-2/train
    key: str
    seconds: float
    summary: dict[str, Any]


STARTED = ".started.json"


class Stages:
    """Runs stages once: a stage whose record holds its key is skipped (see the module docstring)."""

    def __init__(self, output_dir: str):
        self.output = OutputDir(output_dir)
        self.done: dict[str, Stage] = {}

    def key(self, config: Any, deps: list[Optional[Stage]]) -> str:
        """What the stage makes depends on: its job's settings (not those that only say where it
        runs, see raytune_st.config.effects), the stages it reads from, and the files of its data
        and local models as they are now."""
        import yaml

        plain = flatten(yaml.safe_load(dump_yaml(config)))
        settings = settings_for(type(config), plain, keep=(RESULT, EVALUATION, SCALE))
        what = {"config": settings, "after": [d.key for d in deps if d is not None], "inputs": input_files(config)}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def run(
        self, name: str, config_cls: type, data: dict[str, Any], job: Callable[[Any], Any], deps: list[Optional[Stage]], directory: str
    ) -> Stage:
        """Run the job of stage `name` unless its record holds the key it has now. `directory`
        holds what the job writes: emptied first unless it holds an interrupted run of this very key
        (which the job resumes), so that output made with other inputs is never reused."""
        config = build(config_cls, copy.deepcopy(data), key=name)
        key = self.key(config, deps)
        record_name, started_name = name + RECORD, name + STARTED
        if self.output.exists(record_name):
            record = json.loads(self.output.read(record_name))
            if record.get("key") == key:
                print(f"[pipeline] {name}: finished in an earlier run ({record['seconds']:.1f} s), skipped", flush=True)
                stage = Stage(name, key, record["seconds"], record["summary"])
                self.done[name] = stage
                return stage
            self.output.delete(record_name)  # its stage runs again: the old record must not outlive a failure
        resumes = self.output.exists(started_name) and json.loads(self.output.read(started_name)).get("key") == key
        if not resumes:
            _empty(directory)
            self.output.write(started_name, json.dumps({"key": key}) + "\n")
        print(f"[pipeline] {name}: {'resuming' if resumes else 'running'}", flush=True)
        started = time.monotonic()
        summary = _json_safe(job(config))
        seconds = time.monotonic() - started
        self.output.write(record_name, json.dumps({"key": key, "seconds": round(seconds, 2), "summary": summary}, indent=2) + "\n")
        self.output.delete(started_name)
        print(f"[pipeline] {name}: done in {seconds:.1f} s", flush=True)
        stage = Stage(name, key, seconds, summary)
        self.done[name] = stage
        return stage


def _empty(directory: str) -> None:
    import pyarrow.fs

    fs, root = filesystem(directory)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.Directory:
        fs.delete_dir_contents(root)


def input_files(config: Any) -> dict[str, Any]:
    """The data sources and local model directories a job config reads, with what identifies their
    content now: (file, bytes, digest) per data file, (file, bytes, mtime) per model file."""
    import os

    from raytune_st.data.sources import Source, source_files
    from raytune_st.models.config import ModelConfig
    from raytune_st.train.rerun import content_digest

    found: dict[str, Any] = {}

    def visit(value: Any, where: str) -> None:
        if isinstance(value, Source) and value.format not in ("hf_disk", "ray_object"):
            try:
                fs, files = source_files(value)
            except Exception:  # not there yet: the job names the problem
                return
            found[where] = [[f, i.size, content_digest(fs, f, i.size)] for f, i in zip(files, fs.get_file_info(files))]
        elif isinstance(value, ModelConfig) and value.name and os.path.isdir(os.path.expanduser(value.name)):
            root = os.path.expanduser(value.name)
            found[where] = sorted(
                [os.path.relpath(os.path.join(d, f), root), os.path.getsize(os.path.join(d, f)), os.stat(os.path.join(d, f)).st_mtime_ns]
                for d, _, names in os.walk(root) for f in names
            )
        elif dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                visit(getattr(value, f.name), f"{where}.{f.name}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{where}.{i}")
        elif isinstance(value, dict):
            for k, item in value.items():
                visit(item, f"{where}.{k}")

    visit(config, "config")
    return found


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def preflight(config: PipelineConfig) -> None:
    """What can be checked before any stage: the models resolve and are of their kind, the pairs
    and every evaluator's data exist, the output directory is writable."""
    from raytune_st.data.sources import inspect_source
    from raytune_st.evaluation.config import EvaluateConfig

    config.model.check()
    inspect_source(config.data)
    if config.teacher is not None:
        teacher = config.teacher_model() if config.teacher.name else (config.teacher.train or {}).get("model")
        build(type(config.model), copy.deepcopy(teacher), key="teacher").check()
    check_models(config)
    for spec in config.plan()[:1]:
        if spec.evaluate is not None:
            for evaluator in build(EvaluateConfig, copy.deepcopy(spec.evaluate)).evaluators:
                evaluator.check_data()
    OutputDir(config.output_dir).check_writable("output_dir")


def check_models(config: PipelineConfig) -> None:
    """The start model must be a bi-encoder and a named teacher a cross-encoder, where their saved config says."""
    if config.model.name and model_kind(config.model.name) == "cross_encoder":
        raise ConfigError(f"model {config.model.name!r} is a cross-encoder; the pipeline trains a bi-encoder, and a cross-encoder goes under teacher")
    if config.teacher is not None and config.teacher.name and model_kind(config.teacher.name) == "bi_encoder":
        raise ConfigError(
            f"teacher {config.teacher.name!r} is a bi-encoder; the teacher scores (query, passage) pairs as a cross-encoder "
            "(a reranker), e.g. one trained with teacher.train"
        )


def pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run the pipeline; returns {"rounds": [one row per round], "output_dir": ...}."""
    from raytune_st.evaluation.config import EvaluateConfig
    from raytune_st.evaluation.job import evaluate
    from raytune_st.mining.config import MineConfig
    from raytune_st.mining.job import mine
    from raytune_st.scoring.config import ScoreConfig
    from raytune_st.scoring.job import score
    from raytune_st.train.config import TrainConfig
    from raytune_st.train.job import train

    rounds = config.plan()
    preflight(config)
    teacher_jobs = config.teacher_configs()
    stages = Stages(config.output_dir)
    stages.output.write("config.yaml", dump_yaml(config))
    rows: list[dict[str, Any]] = []
    with ray_session(config.ray_address):
        teacher = None
        if teacher_jobs is not None:
            mined = stages.run("teacher/mine", MineConfig, teacher_jobs[0], mine, [], join(config.teacher_dir, "mine"))
            teacher = stages.run("teacher/train", TrainConfig, teacher_jobs[1], train, [mined], join(config.teacher_dir, "train"))
        base_evaluation = config.base_evaluate_config()
        if base_evaluation is not None:
            output = base_evaluation["output"]["path"]
            evaluated = stages.run("round-0/evaluate", EvaluateConfig, base_evaluation, evaluate, [], output)
            rows.append(_row(0, None, {"evaluate": evaluated}))
        previous = None
        for spec in rounds:
            prefix, where = f"round-{spec.number}", config.round_dir(spec.number)
            done: dict[str, Stage] = {}
            rescored = spec.mine_with == "teacher-rescored"
            embedder = previous if spec.mine_with != "base" else None
            mine_config = copy.deepcopy(spec.mine)
            # A cache per embedding model: a retrained round writes its model to the same path, and its
            # vectors must not be taken for the old ones'. The start model's serve every round.
            mine_config["output"]["embeddings_dir"] = join(config.embeddings_dir, f"{embedder.name.replace('/', '-')}-{embedder.key[:12]}" if embedder else "start")
            done["mine"] = stages.run(
                f"{prefix}/mine", MineConfig, mine_config, mine, [embedder, teacher if rescored else None], join(where, "mine")
            )
            if spec.score is not None:
                done["score"] = stages.run(f"{prefix}/score", ScoreConfig, spec.score, score, [done["mine"], teacher], join(where, "score"))
            if spec.denoise is not None:
                denoised = {"input": join(where, "score"), "output": join(where, "denoise"), **spec.denoise}
                done["denoise"] = stages.run(f"{prefix}/denoise", DenoiseConfig, denoised, denoise, [done["score"]], join(where, "denoise"))
            train_config = with_train_columns(spec, done[spec.train_on])
            done["train"] = stages.run(
                f"{prefix}/train", TrainConfig, train_config, train,
                [done[spec.train_on], previous if spec.train_from == "previous" else None], join(where, "train"),
            )
            if spec.evaluate is not None:
                done["evaluate"] = stages.run(
                    f"{prefix}/evaluate", EvaluateConfig, spec.evaluate, evaluate, [done["train"]], join(where, "evaluate")
                )
            rows.append(_row(spec.number, spec, done))
            previous = done["train"]
    return write_table(config.output_dir, rows)


def with_train_columns(spec: Round, data_stage: Stage) -> dict[str, Any]:
    """The round's train config with its data's columns: the text columns of the rows it trains on,
    plus the teacher's scores as `label` for a distillation loss."""
    from raytune_st.data.sources import Source, inspect_source

    config = copy.deepcopy(spec.train)
    source = config["train_datasets"]["mined"]["data"]
    columns = inspect_source(build(Source, dict(source))).columns
    if TEACHER_SCORES in columns:
        source["columns"] = [c for c in columns if c != TEACHER_SCORES] + ([TEACHER_SCORES] if spec.distill else [])
        if spec.distill:
            source["rename"] = {TEACHER_SCORES: "label"}
    return config


# --- denoise ---------------------------------------------------------------------------------------


@dataclass
class DenoiseConfig:
    """The denoise stage: mined rows, each negative dropped where the teacher scores it too close to the positive."""

    input: str
    output: str
    margin: Optional[float] = None
    relative_margin: Optional[float] = None
    max_score: Optional[float] = None


def removed_negatives(scores: list[float], config: DenoiseConfig, positive: Optional[float] = None) -> list[bool]:
    """For one row's teacher scores [positive, negative_1, ...]: which negatives go.

    As sentence-transformers' filters, on the teacher's scores: ``margin`` drops a negative
    above positive - margin, ``relative_margin`` above positive - |positive| * relative_margin,
    ``max_score`` above max_score. `positive`: the score to compare with, by default the row's
    own; :func:`denoise` passes the lowest of the query's positives, as sentence-transformers does."""
    positive = scores[0] if positive is None else positive
    negatives = scores[1:]
    limits = []
    if config.margin is not None:
        limits.append(positive - config.margin)
    if config.relative_margin is not None:
        limits.append(positive - abs(positive) * config.relative_margin)
    if config.max_score is not None:
        limits.append(config.max_score)
    return [any(score > limit for limit in limits) for score in negatives]


def denoise(config: DenoiseConfig) -> dict[str, Any]:
    """Keep the rows none of whose negatives the teacher flags. A negative is compared with the
    lowest teacher score of its query's positives (a query with several positives has a row per
    positive), as sentence-transformers' filters do. A row is one query with its positive and
    negatives; a flagged n-tuple row goes whole, as its columns must stay filled."""
    import pyarrow as pa
    import pyarrow.fs
    import pyarrow.parquet as pq

    fs, root = filesystem(config.input)
    parts = sorted(i.path for i in fs.get_file_info(pyarrow.fs.FileSelector(root)) if i.path.endswith(".parquet"))
    if not parts:
        raise ConfigError(f"denoise: {config.input!r} holds no scored rows; rerun the pipeline to score them again")
    query = pq.read_schema(parts[0], filesystem=fs).names[0]
    lowest: dict[str, float] = {}  # query -> the lowest teacher score of its positives
    for part in parts:
        table = pq.read_table(part, columns=[query, TEACHER_SCORES], filesystem=fs)
        for q, scores in zip(table.column(query).to_pylist(), table.column(TEACHER_SCORES).to_pylist()):
            lowest[q] = min(lowest.get(q, scores[0]), scores[0])
    out_fs, out_root = filesystem(config.output)
    if out_fs.get_file_info(out_root).type != pyarrow.fs.FileType.NotFound:
        out_fs.delete_dir_contents(out_root)
    out_fs.create_dir(out_root)
    counts = {"rows_in": 0, "flagged": 0, "removed": 0}

    def kept_rows():
        for part in parts:
            table = pq.read_table(part, filesystem=fs)
            flags = [
                removed_negatives(scores, config, lowest[q])
                for q, scores in zip(table.column(query).to_pylist(), table.column(TEACHER_SCORES).to_pylist())
            ]
            keep = [not any(row) for row in flags]
            counts["rows_in"] += len(keep)
            counts["flagged"] += sum(sum(row) for row in flags)
            counts["removed"] += sum(len(row) for row, kept in zip(flags, keep) if not kept)
            yield table.filter(pa.array(keep, type=pa.bool_()))

    rows_out = write_parts(kept_rows(), out_fs, out_root)
    rows_in, flagged, removed = counts["rows_in"], counts["flagged"], counts["removed"]
    if rows_out == 0:
        raise ConfigError(
            f"denoise: the teacher flags a negative in every one of the {rows_in} rows; nothing is left to train on. "
            "Loosen the threshold (a larger margin or max_score), or drop denoise"
        )
    summary = {"rows_in": rows_in, "rows_out": rows_out, "negatives_flagged": flagged, "negatives_removed": removed}
    print(f"[denoise] {rows_in:,} rows: {flagged:,} negatives flagged by the teacher; {rows_in - rows_out:,} rows "
          f"({removed:,} negatives) removed, {rows_out:,} kept", flush=True)
    return summary


# --- the table -------------------------------------------------------------------------------------

_HEADLINE = ("ndcg@10", "mrr@10", "recall@10", "accuracy", "map@100")


def _row(number: int, spec: Optional[Round], done: dict[str, Stage]) -> dict[str, Any]:
    row: dict[str, Any] = {"round": number}
    if spec is not None:
        row.update({"mined_with": spec.mine_with, "trained_from": spec.train_from, "trained_on": spec.train_on})
    if "evaluate" in done:
        metrics = done["evaluate"].summary
        headline = {k: v for k, v in metrics.items() if k.endswith(_HEADLINE)}
        row["metrics"] = headline or metrics
    if "mine" in done:
        row["rows_mined"] = done["mine"].summary.get("rows")
    if "denoise" in done:
        row["negatives_removed"] = done["denoise"].summary.get("negatives_removed")
    row["seconds"] = {name.split("/")[-1]: round(stage.seconds, 1) for name, stage in done.items()}
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table, one row per round."""
    metric_names = list(dict.fromkeys(k for row in rows for k in row.get("metrics", {})))
    present = {k for row in rows for k in row["seconds"]}
    stage_names = [s for s in ("mine", "score", "denoise", "train", "evaluate") if s in present]
    header = ["round", "mined with", "trained on", *metric_names, "rows mined", "negatives removed", *[f"{s} s" for s in stage_names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            "base model" if row["round"] == 0 else str(row["round"]),
            row.get("mined_with", ""), row.get("trained_on", ""),
            *[f"{row['metrics'][m]:.4f}" if m in row.get("metrics", {}) else "" for m in metric_names],
            f"{row['rows_mined']:,}" if row.get("rows_mined") is not None else "",
            str(row["negatives_removed"]) if row.get("negatives_removed") is not None else "",
            *[f"{row['seconds'][s]:.1f}" if s in row["seconds"] else "" for s in stage_names],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_table(output_dir: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    output = OutputDir(output_dir)
    table = format_table(rows)
    print(table, flush=True)
    output.write("rounds.md", table + "\n")
    output.write("rounds.json", json.dumps(rows, indent=2) + "\n")
    metric_names = list(dict.fromkeys(k for row in rows for k in row.get("metrics", {})))
    if metric_names:
        output.write("rounds.png", _plot(rows, metric_names))
    print(f"[pipeline] wrote {output_dir}/rounds.md, rounds.json" + (", rounds.png" if metric_names else ""), flush=True)
    return {"output_dir": output_dir, "rounds": rows}


def _plot(rows: list[dict[str, Any]], metric_names: list[str]) -> bytes:
    from raytune_st.plots import figure, png_bytes

    fig, (axes,) = figure((6.0, 3.6))
    for name in metric_names:
        points = [(row["round"], row["metrics"][name]) for row in rows if name in row.get("metrics", {})]
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    axes.set_xlabel("round (0: the start model)")
    axes.set_ylabel("held-out metric")
    axes.set_xticks(sorted({row["round"] for row in rows}))
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return png_bytes(fig)
