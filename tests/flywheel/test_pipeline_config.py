"""The pipeline's config, its stage bookkeeping, denoising and its table, without Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raytune_st.config import load_config
from raytune_st.errors import ConfigError
from raytune_st.flywheel.config import TEACHER_SCORES, PipelineConfig
from raytune_st.flywheel.job import DenoiseConfig, Stages, check_models, denoise, format_table, removed_negatives, write_table

REPO = Path(__file__).resolve().parents[2]
SMALLEST = """
model: {name: sentence-transformers/all-MiniLM-L6-v2, max_seq_length: 64}
data: {path: pairs.parquet}
rounds: 2
mine: {num_negatives: 1, range_max: 20, relative_margin: 0.05, batch_size: 64}
train:
  loss: MultipleNegativesRankingLoss
  args: {per_device_train_batch_size: 16, max_steps: 6, seed: 12}
  scaling: {num_workers: 1}
evaluate:
  evaluators: [{type: InformationRetrievalEvaluator, name: dev, data: {path: dev.parquet}}]
output_dir: out
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """The issue's smallest config in a directory with its pairs.parquet and dev.parquet."""
    sample = pq.read_table(REPO / "examples" / "data" / "debian-train-sample.parquet", columns=["query", "passage"])
    pq.write_table(sample.slice(0, 64), tmp_path / "pairs.parquet")
    pq.write_table(sample.slice(64, 32), tmp_path / "dev.parquet")
    (tmp_path / "pipeline.yaml").write_text(SMALLEST)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(overrides=()):
    return load_config(PipelineConfig, "pipeline.yaml", list(overrides))


def test_the_smallest_config_works_as_written(project):
    first, second = load().plan()
    assert (first.mine_with, second.mine_with) == ("base", "previous")
    assert first.mine["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert second.mine["model"]["name"] == os.path.join("out", "round-1", "train", "final")
    assert second.mine["model"]["max_seq_length"] == 64  # the start model's settings go with its successors
    # Each round trains from the start model, on its own mined rows.
    assert first.train["model"]["name"] == second.train["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert second.train["train_datasets"]["mined"]["data"]["path"] == os.path.join("out", "round-2", "mine")
    assert second.train["args"]["output_dir"] == os.path.join("out", "round-2", "train")
    assert first.stages == second.stages == ["mine", "train", "evaluate"]
    # One embedding cache for every mining stage: with: base in round 2 reuses round 1's vectors.
    assert first.mine["output"]["embeddings_dir"] == second.mine["output"]["embeddings_dir"] == os.path.join("out", "embeddings")
    assert second.evaluate["model"]["name"] == os.path.join("out", "round-2", "train", "final")


def test_a_round_inherits_what_it_does_not_set_from_the_round_before(project):
    rounds = load(["rounds=3", "rounds_override={2: {mine: {with: base, num_negatives: 2}}, 3: {train: {from: previous}}}"]).plan()
    assert [r.mine_with for r in rounds] == ["base", "base", "base"]
    assert [r.mine["mine"]["num_negatives"] for r in rounds] == [1, 2, 2]
    assert [r.train_from for r in rounds] == ["base", "base", "previous"]
    assert rounds[2].train["model"]["name"] == os.path.join("out", "round-2", "train", "final")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rounds=0"], "rounds: must be at least 1, got 0"),
        (["train.on=denoise"], r"train.on \(round 1\): the round has no denoise stage \(its data stages: mine\)"),
        (["mine.with=teacher-rescored"], r"mine.with \(round 1\): teacher-rescored needs a teacher"),
        (["train.loss=MarginMSELoss"], r"train.loss \(round 1\): MarginMSELoss learns from the teacher's scores; add a score stage"),
        (["denoise={margin: 0.1}"], r"denoise \(round 1\) needs the teacher's scores"),
        (["teacher=some/reranker", "denoise={limit: 3}"], r"denoise \(round 1\): unknown key limit"),
        (["teacher=some/reranker", "score={}", "train.loss=DistillKLDivLoss", "train.on=mine"], "DistillKLDivLoss needs the scored rows"),
        (["rounds_override={5: {mine: {}}}"], "rounds_override: '5' is not a round of 1..2"),
        (["rounds_override={2: {model: x}}"], r"rounds_override.2: model is not a round section"),
        (["train.args.learning_rate=fast"], r"train \(round 1\)"),
        (["teacher={name: a, train: {}}"], "teacher: set name .* not both"),
        (["teacher=some/reranker", "score={}", "mine.output_format=labeled-pair"], r"mine \(round 1\): the teacher scores .* output_format triplet or n-tuple"),
        (["teacher={train: {loss: BinaryCrossEntropyLoss}}", "score={}"], "teacher.train.model: name the cross-encoder to train"),
        (["teacher={train: {model: m, loss: NoSuchLoss}}", "score={}"], r"teacher.train"),
    ],
)
def test_a_pipeline_that_cannot_run_is_refused_before_any_stage(project, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load(overrides)


def test_a_bi_encoder_teacher_or_a_cross_encoder_start_model_is_refused(project, tiny_bert_dir, tmp_path_factory):
    from raytune_st.testing import save_tiny_cross_encoder

    cross_encoder = save_tiny_cross_encoder(str(tmp_path_factory.mktemp("ce")))
    with pytest.raises(ConfigError, match="is a bi-encoder; the teacher scores .* as a cross-encoder"):
        check_models(load([f"teacher={tiny_bert_dir}", "score={}"]))
    with pytest.raises(ConfigError, match="is a cross-encoder; the pipeline trains a bi-encoder"):
        check_models(load([f"model={cross_encoder}"]))
    check_models(load([f"model={tiny_bert_dir}", f"teacher={cross_encoder}", "score={}"]))


def test_denoise_drops_negatives_the_teacher_scores_close_to_the_positive(tmp_path):
    assert removed_negatives([0.8, 0.9, 0.5], DenoiseConfig("i", "o", margin=0.0)) == [True, False]
    assert removed_negatives([0.8, 0.75, 0.5], DenoiseConfig("i", "o", margin=0.1)) == [True, False]
    # relative_margin as sentence-transformers computes it: positive - |positive| * r, for negative scores too.
    assert removed_negatives([-2.0, -2.1, -2.3], DenoiseConfig("i", "o", relative_margin=0.1)) == [True, False]
    assert removed_negatives([0.9, 0.6, 0.4], DenoiseConfig("i", "o", max_score=0.5)) == [True, False]

    (tmp_path / "scored").mkdir()
    # q4 has two positives: its negatives are compared with the lower one (0.3), as sentence-transformers does.
    rows = {"query": ["q1", "q2", "q3", "q4", "q4"], "passage": ["p1", "p2", "p3", "p4", "p4b"], "negative": ["n1", "n2", "n3", "n4", "n4b"],
            TEACHER_SCORES: [[0.9, 0.1], [0.2, 0.3], [0.5, 0.45], [0.9, 0.5], [0.3, 0.1]]}
    pq.write_table(pa.table(rows), tmp_path / "scored" / "part-0.parquet")
    summary = denoise(DenoiseConfig(str(tmp_path / "scored"), str(tmp_path / "denoised"), margin=0.1))
    assert summary == {"rows_in": 5, "rows_out": 2, "negatives_flagged": 3, "negatives_removed": 3}
    assert pq.read_table(tmp_path / "denoised").column("passage").to_pylist() == ["p1", "p4b"]
    with pytest.raises(ConfigError, match="flags a negative in every one of the 5 rows; nothing is left to train on"):
        denoise(DenoiseConfig(str(tmp_path / "scored"), str(tmp_path / "denoised"), max_score=0.0))


def test_a_finished_stage_is_skipped_and_a_changed_one_reruns_with_what_reads_from_it(tmp_path):
    ran = []

    def job(name):
        def run(config):
            ran.append(name)
            os.makedirs(tmp_path / name, exist_ok=True)
            (tmp_path / name / f"made-{len(ran)}").write_text("output")
            return {"margin": config.margin}
        return run

    def pipeline(first_margin, second_margin, fail=False):
        stages = Stages(str(tmp_path))
        first = stages.run("round-1/first", DenoiseConfig, {"input": "a", "output": "b", "margin": first_margin}, job("first"), [],
                           str(tmp_path / "first"))

        def second_job(config):
            if fail:
                raise RuntimeError("killed")
            return job("second")(config)

        stages.run("round-1/second", DenoiseConfig, {"input": "b", "output": "c", "margin": second_margin}, second_job, [first],
                   str(tmp_path / "second"))

    os.makedirs(tmp_path / "round-1")
    pipeline(0.1, 0.2)
    assert ran == ["first", "second"]
    pipeline(0.1, 0.2)
    assert ran == ["first", "second"]  # both finished with these settings: skipped
    pipeline(0.1, 0.3)
    assert ran == ["first", "second", "second"]  # only the changed stage
    pipeline(0.5, 0.3)
    assert ran == ["first", "second", "second", "first", "second"]  # and what reads from a changed one
    record = json.loads((tmp_path / "round-1" / "second.done.json").read_text())
    assert record["summary"] == {"margin": 0.3} and record["seconds"] >= 0
    # A stage that runs again starts from an empty directory: nothing made with other inputs is reused.
    assert os.listdir(tmp_path / "second") == ["made-5"]
    with pytest.raises(RuntimeError, match="killed"):
        pipeline(0.5, 0.4, fail=True)
    assert not (tmp_path / "round-1" / "second.done.json").exists()  # no record outlives a failed rerun
    # The interrupted stage resumes with what it left when its key is the same, and not otherwise.
    (tmp_path / "second" / "partial").write_text("half")
    pipeline(0.5, 0.4)
    assert sorted(os.listdir(tmp_path / "second")) == ["made-6", "partial"]
    assert not (tmp_path / "round-1" / "second.started.json").exists()


def test_a_stage_key_follows_its_data_not_where_it_runs(tmp_path):
    pq.write_table(pa.table({"q": ["a", "b"], "p": ["c", "d"]}), tmp_path / "pairs.parquet")
    settings = {"model": "m", "dataset": str(tmp_path / "pairs.parquet"), "output": str(tmp_path / "out")}
    stages = Stages(str(tmp_path))
    key = stages.key(build_mine(settings), [])
    assert stages.key(build_mine({**settings, "ray_address": "10.0.0.1:6379", "compute": {"embed_actors_max": 8}}), []) == key
    # Nested settings that only say where the work runs count no more than top-level ones.
    assert stages.key(build_mine({**settings, "index": {"num_cpus": 0.5, "threads": 1}}), []) == key
    assert stages.key(build_mine({**settings, "mine": {"num_negatives": 5}}), []) != key
    pq.write_table(pa.table({"q": ["a", "b", "e"], "p": ["c", "d", "f"]}), tmp_path / "pairs.parquet")  # rewritten in place
    assert stages.key(build_mine(settings), []) != key


def test_a_training_stage_key_ignores_its_workers_resources_but_not_its_learning_rate(tmp_path):
    from raytune_st.config.core import build
    from raytune_st.train.config import TrainConfig

    pq.write_table(pa.table({"q": ["a", "b"], "p": ["c", "d"]}), tmp_path / "pairs.parquet")
    settings = {
        "model": "m", "train_datasets": {"pairs": {"data": str(tmp_path / "pairs.parquet")}},
        "loss": "MultipleNegativesRankingLoss", "args": {"output_dir": str(tmp_path / "out")},
    }
    stages = Stages(str(tmp_path))
    key = stages.key(build(TrainConfig, settings), [])
    placed = {**settings, "scaling": {"resources_per_worker": {"CPU": 2}}, "run": {"max_failures": 3}}
    assert stages.key(build(TrainConfig, placed), []) == key
    assert stages.key(build(TrainConfig, {**settings, "args": {**settings["args"], "learning_rate": 1e-4}}), []) != key


def build_mine(settings):
    from raytune_st.config.core import build
    from raytune_st.mining.config import MineConfig

    return build(MineConfig, settings)


def test_the_table_has_a_row_per_round_and_a_plot(tmp_path):
    rows = [
        {"round": 0, "metrics": {"dev_cosine_ndcg@10": 0.81}, "seconds": {"evaluate": 3.0}},
        {"round": 1, "mined_with": "base", "trained_on": "denoise", "metrics": {"dev_cosine_ndcg@10": 0.85}, "rows_mined": 1200,
         "negatives_removed": 17, "seconds": {"mine": 10.0, "score": 4.0, "denoise": 0.1, "train": 30.0, "evaluate": 3.0}},
    ]
    table = format_table(rows)
    assert table.splitlines()[0] == ("| round | mined with | trained on | dev_cosine_ndcg@10 | rows mined | negatives removed | mine s | score s "
                                     "| denoise s | train s | evaluate s |")
    assert table.splitlines()[3] == "| 1 | base | denoise | 0.8500 | 1,200 | 17 | 10.0 | 4.0 | 0.1 | 30.0 | 3.0 |"
    write_table(str(tmp_path), rows)
    assert (tmp_path / "rounds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "rounds.json").read_text()) == rows
