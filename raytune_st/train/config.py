"""Config of the train job: the names of SentenceTransformerTrainer / CrossEncoderTrainer, in YAML.

A training script from the sentence-transformers guides maps onto this file section by
section::

    model = SentenceTransformer("...")                  -> model: ...
    loss = MultipleNegativesRankingLoss(model, scale=20) -> loss: MultipleNegativesRankingLoss
                                                           loss_kwargs: {scale: 20}
    train_dataset = {"nli": ..., "sts": ...}            -> train_datasets: {nli: {data: ...}, sts: {...}}
    evaluator = EmbeddingSimilarityEvaluator(...)       -> evaluators: [{type: EmbeddingSimilarityEvaluator, ...}]
    args = SentenceTransformerTrainingArguments(...)    -> args: {...} (same names, defaults, meanings)

plus what Ray adds: `scaling` (workers, GPUs), `run` (where checkpoints live, how many
failures to survive) and `stream` (buffers of the streaming data path).

Checks come in two stages. Building the config (``__post_init__``) checks what the config
alone decides: loss names, loss arguments against the loss's signature, eval and
checkpoint settings. :func:`raytune_st.train.plan.preflight` then reads the data sets'
metadata and checks columns against losses and batch sizes against the shards, still
before any worker starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from raytune_st.config.core import option
from raytune_st.config.effects import EVALUATION, PLACEMENT, SCALE
from raytune_st.config.resources import check_amount
from raytune_st.data.sources import Source
from raytune_st.errors import ConfigError
from raytune_st.evaluation.config import EvaluatorSpec
from raytune_st.models.config import ModelConfig
from raytune_st.train.trackers import TRACKERS, resolve_report_to

SchedulerName = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
]
Strategy = Literal["no", "steps", "epoch"]


@dataclass
class CardConfig:
    """What the model card says about the model (sentence-transformers' model card data)."""

    language: Optional[str] = option(None, help="language code(s) of the training data, e.g. en")
    license: Optional[str] = option(None, help="license of the trained model, e.g. apache-2.0")
    model_name: Optional[str] = option(None, help="a human-readable name for the trained model")


@dataclass
class TrainModelConfig(ModelConfig):
    """The model to train; a bare string is shorthand for `{name: ...}` (a bi-encoder)."""

    card: CardConfig = option(default_factory=CardConfig, effect=PLACEMENT, help="model card data: language, license, model_name")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.type is None:
            self.type = "bi_encoder"
        if self.dtype != "float32":
            # Optimizer steps on half-precision weights lose the small updates; AMP keeps float32 masters.
            raise ConfigError(
                f"model.dtype: training keeps float32 weights, got {self.dtype!r}; remove model.dtype and set "
                f"args.{'bf16' if self.dtype == 'bfloat16' else 'fp16'}=true for mixed precision"
            )
        if self.backend != "torch":
            raise ConfigError(
                f"model.backend: training runs torch, got {self.backend!r}; remove model.backend "
                "(onnx and openvino serve mine, evaluate and score)"
            )


@dataclass
class DatasetConfig:
    """One named data set: its source and the loss it trains (or is evaluated) with."""

    data: Source = option(help="the data source; its columns, in order, are the loss's inputs then the label")
    loss: Optional[str] = option(None, help="loss class name; default: the top-level loss")
    loss_kwargs: Optional[dict[str, Any]] = option(
        None, help="the loss's keyword arguments, e.g. {scale: 20}; default: the top-level loss_kwargs"
    )

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"data": value} if isinstance(value, str) else value


@dataclass
class TrainingArgs:
    """SentenceTransformerTrainingArguments: the same names, defaults and meanings."""

    output_dir: str = option(effect=PLACEMENT, help="where the final model, metrics.jsonl, TensorBoard events and plots go")
    num_train_epochs: float = option(3.0, help="total number of training epochs (fractions allowed)")
    max_steps: int = option(-1, help="if > 0: total number of optimizer steps, overriding num_train_epochs")
    per_device_train_batch_size: int = option(8, help="training batch size per worker")
    per_device_eval_batch_size: int = option(8, effect=EVALUATION, help="evaluation batch size per worker")
    gradient_accumulation_steps: int = option(1, help="micro-batches to accumulate before each optimizer step")
    learning_rate: float = option(5e-5, help="initial learning rate of AdamW")
    lr_scheduler_type: SchedulerName = option("linear", help="transformers scheduler type")
    warmup_ratio: float = option(0.0, help="linear warmup over this fraction of the total steps")
    warmup_steps: int = option(0, help="linear warmup over this many steps (overrides warmup_ratio)")
    optim: Literal["adamw_torch_fused", "adamw_torch"] = option(
        "adamw_torch_fused", help="AdamW implementation, as in transformers: fused kernel (default) or per-tensor loop"
    )
    weight_decay: float = option(0.0, help="AdamW weight decay, not applied to biases and LayerNorm weights")
    adam_beta1: float = option(0.9, help="AdamW beta1: decay rate of the gradient's running mean")
    adam_beta2: float = option(0.999, help="AdamW beta2: decay rate of the squared gradient's running mean")
    adam_epsilon: float = option(1e-8, help="AdamW epsilon, added to the denominator for numerical stability")
    max_grad_norm: float = option(1.0, help="gradient clipping norm; 0 disables clipping")
    fp16: bool = option(False, help="float16 mixed precision with a gradient scaler (meant for GPUs; runs on CPU too)")
    bf16: bool = option(False, help="bfloat16 mixed precision (autocast)")
    gradient_checkpointing: bool = option(False, help="recompute activations in backward to save memory")
    batch_sampler: Literal["batch_sampler", "no_duplicates"] = option(
        "batch_sampler", help="no_duplicates: no text appears twice in a batch (for in-batch-negative losses)"
    )
    multi_dataset_batch_sampler: Literal["proportional", "round_robin"] = option(
        "proportional", help="with several train_datasets: batches in proportion to their sizes, or in turn until one runs out"
    )
    prompts: Optional[Union[str, dict[str, Any]]] = option(
        None, help="a prompt for every column, {column: prompt}, or {dataset: {column: prompt}}"
    )
    # YAML 1.1 reads a bare `no` as false; both spellings mean "no".
    eval_strategy: Strategy = option("no", effect=EVALUATION, help="when to evaluate: no, steps (every eval_steps) or epoch")
    eval_steps: Optional[int] = option(None, effect=EVALUATION, help="optimizer steps between evaluations; default: logging_steps")
    save_strategy: Literal["no", "steps", "epoch", "best"] = option(
        "steps", help="when to checkpoint: no, steps, epoch, best (the final step always saves)"
    )
    save_steps: int = option(500, effect=PLACEMENT, help="optimizer steps between checkpoints when save_strategy is steps")
    report_to: Union[str, list[str]] = option(
        default_factory=lambda: ["tensorboard"],
        effect=PLACEMENT, help="trackers: tensorboard (output_dir/runs), mlflow, wandb, trackio, codecarbon, all (every installed one) or none; one or a list",
    )
    run_name: Optional[str] = option(None, effect=PLACEMENT, help="the run's name in the trackers; default: run.name (a sweep: the trial id)")
    save_total_limit: Optional[int] = option(None, effect=PLACEMENT, help="checkpoints to keep (the best ones by metric_for_best_model)")
    # EVALUATION: also the evaluation interval when eval_steps is not set.
    logging_steps: int = option(500, effect=EVALUATION, help="optimizer steps between logged training losses")
    load_best_model_at_end: bool = option(False, help="make the final model the best checkpoint by metric_for_best_model")
    metric_for_best_model: Optional[str] = option(None, help="metric that ranks checkpoints; default: eval loss")
    greater_is_better: Optional[bool] = option(None, help="whether a higher metric is better; default: true unless it is a loss")
    seed: int = option(42, help="random seed for model init, shuffling and the data-set schedule")

    def __post_init__(self) -> None:
        positive = {
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "per_device_eval_batch_size": self.per_device_eval_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "logging_steps": self.logging_steps,
            "save_steps": self.save_steps,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}: must be at least 1, got {value}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"{key}: must be in [0, 1), got {getattr(self, key)}")
        if self.adam_epsilon <= 0:
            raise ConfigError(f"adam_epsilon: must be positive, got {self.adam_epsilon}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("num_train_epochs: must be positive (or set max_steps > 0)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ConfigError(f"eval_steps: must be at least 1, got {self.eval_steps}")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ConfigError(f"save_total_limit: must be at least 1 (or null to keep all), got {self.save_total_limit}")
        if self.fp16 and self.bf16:
            raise ConfigError("fp16 and bf16 are both true; choose one mixed-precision mode")
        resolve_report_to(self.report_to, installed=set(TRACKERS))  # names only; installs are checked in pre-flight
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                raise ConfigError("load_best_model_at_end needs evaluation; set eval_strategy to steps or epoch")
            if self.save_strategy not in (self.eval_strategy, "best"):
                raise ConfigError(
                    f"load_best_model_at_end needs save_strategy equal to eval_strategy ({self.eval_strategy!r}), "
                    f"got {self.save_strategy!r}; checkpoints are ranked by the evaluation made when they are saved"
                )
            if self.eval_strategy == "steps" and self.save_strategy == "steps" and self.save_steps % self.steps_between_evals:
                raise ConfigError(
                    f"load_best_model_at_end needs save_steps ({self.save_steps}) to be a multiple of "
                    f"eval_steps ({self.steps_between_evals}), so that every checkpoint has an evaluation"
                )

    @property
    def steps_between_evals(self) -> int:
        return self.eval_steps or self.logging_steps

    @property
    def best_metric(self) -> str:
        """The metric that ranks checkpoints, with the `eval_` prefix the reported metrics carry."""
        metric = self.metric_for_best_model or "loss"
        return metric if metric.startswith("eval_") else f"eval_{metric}"

    @property
    def higher_is_better(self) -> bool:
        if self.greater_is_better is not None:
            return self.greater_is_better
        return not self.best_metric.endswith("loss")


@dataclass
class ScalingSection:
    """How many Ray Train workers, and what each one holds (Ray's ScalingConfig)."""

    num_workers: int = option(1, effect=SCALE, help="training workers (one process and one model replica each)")
    use_gpu: bool = option(False, effect=SCALE, help="give each worker one GPU; DDP then runs over NCCL instead of gloo")
    resources_per_worker: dict[str, float] = option(
        default_factory=dict,
        effect=PLACEMENT, help="Ray resources per worker, e.g. {CPU: 4, GPU: 1}; custom ones ({worker_node: 1}) keep the workers on the nodes that have them",
    )

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ConfigError(f"num_workers: must be at least 1, got {self.num_workers}")
        for name, value in self.resources_per_worker.items():
            if value != 0:  # {CPU: 0} is how a GPU worker asks for no CPU of its own
                check_amount(f"scaling.resources_per_worker.{name}", value)


@dataclass
class RunSection:
    """Where Ray Train keeps checkpoints, and how many worker failures a run survives."""

    name: str = option("train", help="run name: checkpoints go to storage_path/name (fixed, so a rerun resumes)")
    storage_path: Optional[str] = option(
        None, help="local path or s3:// / gs:// URI for checkpoints; default: <output_dir>/ray (shared storage on a multi-node cluster)"
    )
    max_failures: int = option(0, help="worker failures to recover from by restarting at the last checkpoint")
    overwrite: bool = option(
        False,
        help="when storage_path/name holds checkpoints of a run with another config: delete them and start afresh "
        "instead of refusing (a rerun with the same config always resumes)",
    )

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: must be a non-empty name without '/', got {self.name!r}")
        if self.max_failures < -1:
            raise ConfigError(f"max_failures: must be >= 0 (or -1 for unlimited), got {self.max_failures}")


@dataclass
class StreamSection:
    """Buffers of the streaming data path (Ray Data) on each worker."""

    shuffle_buffer_size: int = option(
        1000, help="rows in each worker's local shuffle buffer, reshuffled every epoch from the seed; 0 keeps file order"
    )
    no_duplicates_buffer_size: int = option(
        4096, help="rows held back at most while building no_duplicates batches"
    )
    global_shuffle: bool = option(
        False,
        help="shuffle each training set across all its rows (Ray Data random_shuffle, seeded by args.seed) before "
        "the local buffer, as sentence-transformers' random sampler does; one all-to-all pass over the data per epoch. "
        "Use it for data stored in sorted order (e.g. by source or label), which a local buffer cannot mix",
    )

    # PLACEMENT: the same rows in the same order, whether read once or every pass.
    materialize_max_bytes: int = option(
        128 * 2**20,
        effect=PLACEMENT, help="a data set read more than once (a training set over several epochs, an eval set evaluated more than once) "
        "whose files total at most this many bytes is read once into Ray's object store (Dataset.materialize) and "
        "every pass reads it from there, without read tasks; 0 reads every pass from the files",
    )

    def __post_init__(self) -> None:
        if self.materialize_max_bytes < 0:
            raise ConfigError(f"materialize_max_bytes: must be >= 0 (0 never materializes), got {self.materialize_max_bytes}")
        if self.shuffle_buffer_size < 0:
            raise ConfigError(f"shuffle_buffer_size: must be >= 0, got {self.shuffle_buffer_size}")
        if self.no_duplicates_buffer_size < 1:
            raise ConfigError(f"no_duplicates_buffer_size: must be at least 1, got {self.no_duplicates_buffer_size}")


@dataclass
class LossSpec:
    """A loss resolved for one data set: its name, keyword arguments and model type."""

    name: str
    kwargs: dict[str, Any]
    model_type: str

    @property
    def inner_name(self) -> Optional[str]:
        """For a wrapper (MatryoshkaLoss, ...), the name of the loss it wraps."""
        inner = self.kwargs.get("loss")
        if isinstance(inner, dict):
            return inner.get("name")
        return inner if isinstance(inner, str) else None


@dataclass
class TrainConfig:
    """raytune-st train: fine-tune a bi-encoder or a cross-encoder on a Ray cluster."""

    model: TrainModelConfig = option(help="the model to train: a directory, a hub id, or {name, type, num_labels, max_seq_length, card}")
    train_datasets: dict[str, DatasetConfig] = option(
        help="named training sets {name: {data, loss, loss_kwargs}}; a bare string is the data source"
    )
    args: TrainingArgs = option(help="SentenceTransformerTrainingArguments (same names)")
    loss: Optional[str] = option(None, help="loss class for every data set that names none, e.g. MultipleNegativesRankingLoss")
    loss_kwargs: dict[str, Any] = option(default_factory=dict, help="keyword arguments of the top-level loss")
    eval_datasets: dict[str, DatasetConfig] = option(
        default_factory=dict, effect=EVALUATION, help="named sets for the eval loss; default loss: the train set of the same name, else the top-level loss"
    )
    evaluators: list[EvaluatorSpec] = option(
        default_factory=list, effect=EVALUATION, help="sentence-transformers evaluators, as in the evaluate job's config"
    )
    scaling: ScalingSection = option(default_factory=ScalingSection, help="Ray Train workers and their resources")
    # PLACEMENT: run.name and storage_path are where a rerun found the run, the same place by construction.
    run: RunSection = option(default_factory=RunSection, effect=PLACEMENT, help="run name, checkpoint storage and fault tolerance")
    stream: StreamSection = option(default_factory=StreamSection, help="streaming buffers on each worker")
    ray_address: Optional[str] = option(None, effect=PLACEMENT, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self) -> None:
        from raytune_st.losses.build import check_loss_kwargs

        if not self.train_datasets:
            raise ConfigError("train_datasets: give at least one data set, e.g. {pairs: {data: train.parquet}}")
        for names in (self.train_datasets, self.eval_datasets):
            for name in names:
                if name == "dataset_name" or not name:
                    raise ConfigError(f"train_datasets: {name!r} cannot name a data set; choose another name")
        for section, sets in (("train_datasets", self.train_datasets), ("eval_datasets", self.eval_datasets)):
            for name in sets:
                spec = self.loss_for(section, name)
                check_loss_kwargs(spec.name, spec.kwargs, spec.model_type, where=f"{section}.{name}")
        self._check_evaluation()

    # --- resolved views ------------------------------------------------------------------

    def loss_for(self, section: str, name: str) -> LossSpec:
        """The loss of one data set: its own, else (eval) the train set's of the same name, else the top-level one."""
        sets = self.train_datasets if section == "train_datasets" else self.eval_datasets
        entry = sets[name]
        loss, kwargs = entry.loss, entry.loss_kwargs
        if loss is None and section == "eval_datasets" and name in self.train_datasets:
            fallback = self.train_datasets[name]
            loss, kwargs = fallback.loss, fallback.loss_kwargs if kwargs is None else kwargs
        if loss is None:
            loss = self.loss
            kwargs = self.loss_kwargs if kwargs is None else kwargs
        if loss is None:
            raise ConfigError(
                f"{section}.{name}: no loss; set {section}.{name}.loss or a top-level loss, "
                "e.g. loss: MultipleNegativesRankingLoss"
            )
        return LossSpec(name=loss, kwargs=dict(kwargs or {}), model_type=self.model.type)

    @property
    def has_eval(self) -> bool:
        return bool(self.eval_datasets or self.evaluators)

    def _check_evaluation(self) -> None:
        args = self.args
        if args.eval_strategy != "no" and not self.has_eval:
            raise ConfigError(
                f"args.eval_strategy is {args.eval_strategy!r} but there is nothing to evaluate; "
                "add eval_datasets (for the eval loss) or evaluators, or set eval_strategy: no"
            )
        if args.eval_steps is not None and not self.has_eval:
            raise ConfigError(
                "args.eval_steps is set but there is nothing to evaluate; add eval_datasets or evaluators "
                "(with eval_strategy: steps), or remove eval_steps"
            )
        if args.eval_steps is not None and args.eval_strategy != "steps":
            raise ConfigError(
                f"args.eval_steps is set but eval_strategy is {args.eval_strategy!r}; set eval_strategy: steps"
            )
        for spec in self.evaluators:
            if spec.model_type not in (None, self.model.type):
                raise ConfigError(
                    f"evaluators: {spec.type} is for a {spec.model_type}, but model.type is {self.model.type}"
                )
        # An unnamed custom evaluator prefixes its metrics itself: nothing to tell apart by name.
        labels = [e.label for e in self.evaluators if e.name or not e.custom]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ConfigError(f"evaluators: the name {dup[0]!r} is used twice; give each evaluator its own name")
        self.check_metric_for_best_model()

    def check_metric_for_best_model(self, similarity: Optional[str] = None, num_labels: Optional[int] = None) -> None:
        """Refuse a metric_for_best_model that the evaluation does not report, by its exact name.

        Until the model is read (`similarity`, `num_labels` None) the names of every similarity
        function count; pre-flight checks again with the model's own.
        """
        from raytune_st.evaluation.metrics import resolve_metric

        if self.args.metric_for_best_model is None or self.args.eval_strategy == "no":
            return
        reported = self.metric_names(similarity, num_labels)
        resolve_metric(self.args.metric_for_best_model, reported, key="args.metric_for_best_model", open_prefixes=self.open_metric_prefixes())

    def open_metric_prefixes(self) -> list[str]:
        """Prefixes of the metrics of custom evaluators, whose names are known only when they report."""
        return [f"eval_{spec.name}_" if spec.name else "eval_" for spec in self.evaluators if spec.custom]

    def metric_names(self, similarity: Optional[str] = None, num_labels: Optional[int] = None) -> list[str]:
        """Every eval metric the run reports, by its exact name (see :func:`~raytune_st.evaluation.evaluators.metric_names`).

        `similarity` is the model's similarity_fn_name and `num_labels` a cross-encoder's
        outputs; None (not read yet) counts every possibility.
        """
        from raytune_st.evaluation.evaluators import SIMILARITY_NAMES, metric_names

        if num_labels is None:
            num_labels = self.model.num_labels
        # Unknown: the model has one similarity function, any of the four.
        similarities = [similarity] if similarity else list(SIMILARITY_NAMES)
        produced = []
        if self.eval_datasets:
            produced.append("eval_loss")
            if len(self.eval_datasets) > 1:
                produced += [f"eval_{name}_loss" for name in self.eval_datasets]
        for spec in self.evaluators:
            if spec.custom:
                continue  # its names are known when it reports: see open_metric_prefixes
            for one in similarities:
                names = metric_names(spec.type, spec.name, spec.kwargs, similarities=[one], num_labels=num_labels)
                produced += [f"eval_{name}" for name in names if f"eval_{name}" not in produced]
        if len(self.evaluators) > 1:
            produced.append("eval_sequential_score")
        return produced
