"""Config of the pipeline job: rounds of mine -> (teacher scores) -> (denoise) -> train -> evaluate.

The per-round sections (`mine`, `denoise`, `score`, `train`, `evaluate`) are written once at the
top level and apply to every round; ``rounds_override: {2: {mine: {with: base}}}`` changes
single rounds, and a round inherits whatever it does not set from the round before it.
:meth:`PipelineConfig.plan` turns them into each round's typed job configs (the mine, score,
train and evaluate jobs' own), so that every key is checked before any stage runs.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from raytune_st.config.core import build, option
from raytune_st.errors import ConfigError
from raytune_st.mining.config import PairsSource
from raytune_st.models.config import ModelConfig
from raytune_st.outputs import join

SECTIONS = ("mine", "denoise", "score", "train", "evaluate")
MINE_WITH = ("base", "previous", "teacher-rescored")
TRAIN_FROM = ("base", "previous")
DATA_STAGES = ("mine", "score", "denoise")
DISTILLATION_LOSSES = ("MarginMSELoss", "DistillKLDivLoss")
TEACHER_SCORES = "teacher_scores"  # the column the score stage adds: [s(q, positive), s(q, negative_1), ...]


@dataclass
class TeacherSection:
    """The cross-encoder that scores mined rows: a model reference, or one the pipeline trains first."""

    name: Optional[str] = option(None, help="a cross-encoder (reranker): directory, URI or hub id")
    train: Optional[dict[str, Any]] = option(
        None,
        help="instead of name: a train job config for a cross-encoder (model, loss, args, ...), trained on labeled "
        "pairs mined from `data` with the base model (the reranker recipe); its data and output_dir are the pipeline's",
    )
    mine: dict[str, Any] = option(
        default_factory=dict, help="the teacher's mining (mine keys); default num_negatives 3, output_format labeled-pair"
    )
    batch_size: int = option(64, help="pairs per forward pass when the teacher scores")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def __post_init__(self) -> None:
        if (self.name is None) == (self.train is None):
            raise ConfigError("teacher: set name (a cross-encoder) or train (a train config for one), " + ("not both" if self.name else "one of them"))


@dataclass
class Round:
    """One round's stages as job configs (dicts checked by building them), and how they connect."""

    number: int
    mine_with: str
    train_from: str
    train_on: str  # mine | score | denoise: whose output the round trains on
    mine: dict[str, Any]
    score: Optional[dict[str, Any]]  # score job config, when denoise or score is set
    denoise: Optional[dict[str, Any]]  # {margin | max_score | relative_margin}
    distill: bool  # the loss takes the teacher's scores as labels
    train: dict[str, Any]
    evaluate: Optional[dict[str, Any]]

    @property
    def stages(self) -> list[str]:
        return ["mine"] + (["score"] if self.score else []) + (["denoise"] if self.denoise else []) + ["train"] + (
            ["evaluate"] if self.evaluate else []
        )


@dataclass
class PipelineConfig:
    """raytune-st pipeline: rounds of mine -> (teacher-score) -> (denoise) -> train -> evaluate, resumable."""

    model: ModelConfig = option(help="the start model (a bi-encoder): what round 1 mines with and what each round trains from by default")
    data: PairsSource = option(help="the (anchor, positive) pairs")
    output_dir: str = option(help="one directory per round and stage: output_dir/round-<k>/<stage>/, the table and its plot")
    rounds: int = option(1, help="how many rounds")
    mine: dict[str, Any] = option(
        default_factory=dict,
        help="every round's mining: the mine job's `mine` keys, plus `index` and `compute` sections and "
        "`with: base | previous | teacher-rescored` (default: base in round 1, previous after)",
    )
    score: Optional[dict[str, Any]] = option(
        None, help="teacher scores for every mined row, as labels for MarginMSELoss / DistillKLDivLoss: {batch_size, compute} ({} for defaults)"
    )
    denoise: Optional[dict[str, Any]] = option(
        None,
        help="drop mined negatives the teacher scores too close to the positive: {margin: m} (above positive - m), "
        "{relative_margin: r} (above positive - |positive| * r) and/or {max_score: s}",
    )
    train: dict[str, Any] = option(
        default_factory=dict,
        help="the train job's sections (loss, loss_kwargs, args, scaling, stream, evaluators), plus `from: base | previous` "
        "(default base) and `on: mine | score | denoise` (default: the round's last data stage)",
    )
    evaluate: Optional[dict[str, Any]] = option(None, help="held-out evaluation after each round: the evaluate job's {evaluators, num_gpus, resources}")
    teacher: Optional[TeacherSection] = option(None, help="a cross-encoder for with: teacher-rescored, denoise and score")
    rounds_override: dict[str, dict[str, Any]] = option(
        default_factory=dict, help="per-round changes, e.g. {2: {mine: {with: base}}}; later rounds inherit them"
    )
    ray_address: Optional[str] = option(None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds: must be at least 1, got {self.rounds}")
        if self.model.type == "cross_encoder":
            raise ConfigError("model: the pipeline trains a bi-encoder (the retriever); a cross-encoder goes under teacher")
        for key, value in self.rounds_override.items():
            if not str(key).isdigit() or not 1 <= int(key) <= self.rounds:
                raise ConfigError(f"rounds_override: {key!r} is not a round of 1..{self.rounds}")
            unknown = sorted(set(value) - set(SECTIONS))
            if unknown:
                raise ConfigError(f"rounds_override.{key}: {', '.join(unknown)} is not a round section; a round sets {', '.join(SECTIONS)}")
        self.plan()  # every round's job configs, checked now
        teacher = self.teacher_configs()
        if teacher is not None:
            from raytune_st.mining.config import MineConfig
            from raytune_st.train.config import TrainConfig

            build(MineConfig, copy.deepcopy(teacher[0]), key="teacher.mine")
            build(TrainConfig, copy.deepcopy(teacher[1]), key="teacher.train")

    @property
    def teacher_dir(self) -> str:
        return join(self.output_dir, "teacher")

    @property
    def embeddings_dir(self) -> str:
        """One embedding cache for every mining stage: a model embeds a text once per pipeline."""
        return join(self.output_dir, "embeddings")

    def round_dir(self, number: int) -> str:
        return join(self.output_dir, f"round-{number}")

    def teacher_model(self) -> Optional[dict[str, Any]]:
        if self.teacher is None:
            return None
        if self.teacher.name is not None:
            return {"name": self.teacher.name, "type": "cross_encoder", "num_labels": 1}
        return {"name": join(self.teacher_dir, "train", "final"), "type": "cross_encoder", "num_labels": 1}

    def sections(self, number: int) -> dict[str, Any]:
        """Round `number`'s sections: the top level, then every override up to this round."""
        merged = {name: copy.deepcopy(getattr(self, name)) for name in SECTIONS}
        for k in range(1, number + 1):
            for name, value in (self.rounds_override.get(str(k)) or {}).items():
                merged[name] = _merged(merged[name], value)
        return merged

    # --- the jobs ---------------------------------------------------------------------------------

    def plan(self) -> list[Round]:
        """Each round's job configs, built (so checked) by their job's config class."""
        from raytune_st.evaluation.config import EvaluateConfig
        from raytune_st.mining.config import MineConfig
        from raytune_st.scoring.config import ScoreConfig
        from raytune_st.train.config import TrainConfig

        rounds = []
        for number in range(1, self.rounds + 1):
            where = f"round {number}" if self.rounds > 1 else "the round"
            sections = self.sections(number)
            mine = dict(sections["mine"] or {})
            mine_with = mine.pop("with", "base" if number == 1 else "previous")
            if mine_with not in MINE_WITH:
                raise ConfigError(f"mine.with ({where}): {mine_with!r} is not one of {', '.join(MINE_WITH)}")
            if mine_with == "teacher-rescored" and self.teacher is None:
                raise ConfigError(f"mine.with ({where}): teacher-rescored needs a teacher; set teacher: {{name: <a cross-encoder>}} or teacher.train")
            train = dict(sections["train"] or {})
            train_from = train.pop("from", "base")
            if train_from not in TRAIN_FROM:
                raise ConfigError(f"train.from ({where}): {train_from!r} is not one of {', '.join(TRAIN_FROM)}")
            denoise = sections["denoise"]
            score = sections["score"]
            if (denoise is not None or score is not None) and self.teacher is None:
                stage = "denoise" if denoise is not None else "score"
                raise ConfigError(f"{stage} ({where}) needs the teacher's scores; set teacher: {{name: <a cross-encoder>}} or teacher.train")
            present = ["mine"] + (["score"] if score is not None or denoise is not None else []) + (["denoise"] if denoise is not None else [])
            train_on = train.pop("on", present[-1])
            if train_on not in DATA_STAGES:
                raise ConfigError(f"train.on ({where}): {train_on!r} is not a data stage; choose one of {', '.join(DATA_STAGES)}")
            if train_on not in present:
                raise ConfigError(
                    f"train.on ({where}): the round has no {train_on} stage (its data stages: {', '.join(present)}); "
                    f"set {train_on} (and a teacher), or train on one of those"
                )
            if score is not None or denoise is not None:
                fmt = mine.get("output_format", "triplet")
                if fmt not in ("triplet", "n-tuple") or mine.get("output_scores") or mine.get("include_positives"):
                    raise ConfigError(
                        f"mine ({where}): the teacher scores (query, positive, negative...) rows; mine them with output_format "
                        f"triplet or n-tuple and without output_scores / include_positives (got output_format {fmt!r})"
                    )
            loss = train.get("loss")
            distill = isinstance(loss, str) and loss in DISTILLATION_LOSSES
            if distill and score is None:
                raise ConfigError(
                    f"train.loss ({where}): {loss} learns from the teacher's scores; add a score stage (score: {{}}) and a teacher"
                )
            if distill and train_on == "mine":
                raise ConfigError(f"train.on ({where}): {loss} needs the scored rows; train on score or denoise")
            rdir = self.round_dir(number)
            model = self.model_section("base" if mine_with == "base" or number == 1 else "previous", number)
            mine_config = self._mine_config(mine, model, join(rdir, "mine"), teacher=mine_with == "teacher-rescored")
            build(MineConfig, copy.deepcopy(mine_config), key=f"mine ({where})")
            score_config = None
            if score is not None or denoise is not None:
                score_config = {
                    "model": self.teacher_model(), "data": {"path": join(rdir, "mine"), "format": "parquet"},
                    "output": {"path": join(rdir, "score"), "column": TEACHER_SCORES, "overwrite": True},
                    "batch_size": self.teacher.batch_size, **copy.deepcopy(score or {}), "ray_address": self.ray_address,
                }
                build(ScoreConfig, copy.deepcopy(score_config), key=f"score ({where})")
            if denoise is not None:
                _check_denoise(denoise, where)
            train_config = self._train_config(train, self.model_section(train_from, number), join(rdir, train_on), join(rdir, "train"), number)
            build(TrainConfig, copy.deepcopy(train_config), key=f"train ({where})")
            evaluate_config = None
            if sections["evaluate"] is not None:
                evaluate_config = self._evaluate_config(sections["evaluate"], {**self._base_model(), "name": join(rdir, "train", "final")}, join(rdir, "evaluate"))
                build(EvaluateConfig, copy.deepcopy(evaluate_config), key=f"evaluate ({where})")
            rounds.append(Round(number, mine_with, train_from, train_on, mine_config, score_config, denoise, distill, train_config, evaluate_config))
        return rounds

    def _base_model(self) -> dict[str, Any]:
        return _set_keys(self.model)

    def model_section(self, which: str, number: int) -> dict[str, Any]:
        """The model of `which` (base, or the previous round's trained one) as a config section."""
        base = self._base_model()
        if which == "base" or number == 1:
            return base
        base.pop("factory", None)
        base.pop("kwargs", None)
        return {**base, "name": join(self.round_dir(number - 1), "train", "final")}

    def _mine_config(self, mine: dict[str, Any], model: dict[str, Any], output: str, *, teacher: bool) -> dict[str, Any]:
        settings = dict(mine)
        config: dict[str, Any] = {
            "model": model, "dataset": _set_keys(self.data),
            "output": {"path": output, "embeddings_dir": self.embeddings_dir, "overwrite": True},
            "index": settings.pop("index", {}), "compute": settings.pop("compute", {}), "mine": settings,
            "ray_address": self.ray_address,
        }
        if teacher:
            config["cross_encoder"] = self.teacher_model()
        return config

    def teacher_configs(self) -> Optional[tuple[dict[str, Any], dict[str, Any]]]:
        """(mine config, train config) of a teacher the pipeline trains, else None."""
        if self.teacher is None or self.teacher.train is None:
            return None
        mine = {"num_negatives": 3, "output_format": "labeled-pair", **copy.deepcopy(self.teacher.mine)}
        mine_config = self._mine_config(mine, self._base_model(), join(self.teacher_dir, "mine"), teacher=False)
        train = copy.deepcopy(self.teacher.train)
        model = train.pop("model", None)
        if model is None:
            raise ConfigError("teacher.train.model: name the cross-encoder to train, e.g. {name: sentence-transformers/all-MiniLM-L6-v2, type: cross_encoder, num_labels: 1}")
        model = {"name": model} if isinstance(model, str) else dict(model)
        model.setdefault("type", "cross_encoder")
        model.setdefault("num_labels", 1)
        if model["type"] != "cross_encoder":
            raise ConfigError("teacher.train.model: the teacher is a cross-encoder; set type: cross_encoder")
        train_config = self._train_config(train, model, join(self.teacher_dir, "mine"), join(self.teacher_dir, "train"), 0)
        return mine_config, train_config

    def _train_config(self, train: dict[str, Any], model: dict[str, Any], data: str, output: str, number: int) -> dict[str, Any]:
        config = copy.deepcopy(train)
        for key in ("train_datasets", "model"):
            if key in config:
                raise ConfigError(f"train.{key}: the pipeline sets it (the round's data and its model); remove it")
        args = dict(config.pop("args", {}) or {})
        if "output_dir" in args:
            raise ConfigError("train.args.output_dir: the pipeline sets it (output_dir/round-<k>/train); remove it")
        run = dict(config.pop("run", {}) or {})
        config.update({
            "model": model,
            "train_datasets": {"mined": {"data": {"path": data, "format": "parquet"}}},
            "args": {**args, "output_dir": output},
            # A changed stage trains afresh; an interrupted one with the same config resumes its checkpoints.
            "run": {"name": f"round-{number}" if number else "teacher", "overwrite": True, **run},
            "ray_address": self.ray_address,
        })
        return config

    def _evaluate_config(self, section: dict[str, Any], model: dict[str, Any], output: str) -> dict[str, Any]:
        config = copy.deepcopy(section)
        if "model" in config or "output" in config:
            raise ConfigError("evaluate: the pipeline sets model and output (each round's trained model); give evaluators")
        return {**config, "model": model, "output": {"path": output}, "ray_address": self.ray_address}

    def base_evaluate_config(self) -> Optional[dict[str, Any]]:
        """The start model evaluated as round 0 of the table, with round 1's evaluators."""
        section = self.sections(1)["evaluate"]
        if section is None:
            return None
        return self._evaluate_config(section, self._base_model(), join(self.output_dir, "round-0", "evaluate"))


def _merged(base: Any, change: Any) -> Any:
    """`change` over `base`: mappings key by key, anything else replaced (None turns a section off)."""
    if isinstance(base, dict) and isinstance(change, dict):
        out = dict(base)
        for key, value in change.items():
            out[key] = _merged(base.get(key), value)
        return out
    return copy.deepcopy(change)


def _set_keys(section: Any) -> dict[str, Any]:
    """A built config section as data again, with only the keys that hold a value."""
    from raytune_st.config.core import to_dict

    return {k: v for k, v in to_dict(section).items() if v not in (None, {}, [])}


def _check_denoise(denoise: dict[str, Any], where: str) -> None:
    known = {"margin", "relative_margin", "max_score"}
    unknown = sorted(set(denoise) - known)
    if unknown:
        raise ConfigError(f"denoise ({where}): unknown key {', '.join(unknown)}; it takes margin, relative_margin and max_score")
    if not denoise:
        raise ConfigError(f"denoise ({where}): set margin, relative_margin or max_score (the teacher's threshold)")
    for key, value in denoise.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"denoise.{key} ({where}): expected a number, got {value!r}")


def model_kind(reference: str) -> Optional[str]:
    """'cross_encoder' or 'bi_encoder' as a saved sentence-transformers model says, None when it does not."""
    from raytune_st.models.loading import resolve_model

    try:
        directory = resolve_model(reference)
    except Exception:
        return None
    path = os.path.join(directory, "config_sentence_transformers.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        kind = json.load(handle).get("model_type")
    return {"CrossEncoder": "cross_encoder", "SentenceTransformer": "bi_encoder"}.get(kind)
