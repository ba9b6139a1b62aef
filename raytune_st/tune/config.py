"""Config of the tune job: a training config plus a `search` section."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional

from raytune_st.config.core import build, option, to_dict
from raytune_st.config.effects import PLACEMENT
from raytune_st.errors import ConfigError
from raytune_st.train.config import TrainConfig
from raytune_st.tune.space import Domain, apply_params, check_key, parse_space


# What PBT may change in a running trial: it resumes a better trial's checkpoint with perturbed
# values, so only what the restored loop can take mid-run (not the data, model or step count).
PBT_MUTABLE_ARGS = ("learning_rate", "weight_decay", "max_grad_norm", "warmup_ratio", "warmup_steps")


def pbt_mutable(key: str) -> bool:
    """Whether PBT may perturb `key` of a running trial: optimizer settings and loss arguments."""
    return key in {f"args.{name}" for name in PBT_MUTABLE_ARGS} or key.startswith("loss_kwargs.") or ".loss_kwargs." in key


@dataclass
class SchedulerConfig:
    """Which trials to stop early, or (pbt) which to replace by perturbed copies of better ones."""

    type: Literal["fifo", "asha", "pbt"] = option(
        "fifo",
        help="fifo: run every trial to the end; asha: stop poor trials at rungs (async successive halving); "
        "pbt: population based training, poor trials continue from a better trial's checkpoint with perturbed values",
    )
    grace_period: int = option(1, help="asha: optimizer steps every trial runs before it may be stopped")
    reduction_factor: float = option(2.0, help="asha: keep the best 1/reduction_factor of trials at each rung")
    max_t: Optional[int] = option(None, help="asha: the last rung in optimizer steps (default: the trials' planned steps)")
    perturbation_interval: Optional[int] = option(
        None, help="pbt: optimizer steps between exploit/explore decisions (default: args.eval_steps)"
    )
    quantile_fraction: float = option(0.25, help="pbt: the bottom fraction of trials clones the top fraction")
    resample_probability: float = option(0.25, help="pbt: chance a value is resampled from its domain rather than perturbed")

    @classmethod
    def from_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    def __post_init__(self) -> None:
        if self.grace_period < 1:
            raise ConfigError(f"grace_period: must be at least 1 step, got {self.grace_period}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"reduction_factor: must be greater than 1, got {self.reduction_factor}")
        if self.perturbation_interval is not None and self.perturbation_interval < 1:
            raise ConfigError(f"perturbation_interval: must be at least 1 step, got {self.perturbation_interval}")
        if not 0 < self.quantile_fraction <= 0.5:
            raise ConfigError(f"quantile_fraction: must be in (0, 0.5], got {self.quantile_fraction}")
        if not 0 <= self.resample_probability <= 1:
            raise ConfigError(f"resample_probability: must be in [0, 1], got {self.resample_probability}")


@dataclass
class SearchConfig:
    """What to search, how, and for which metric."""

    space: dict[str, Any] = option(
        help="dotted training keys -> domains: {loguniform: [a, b]}, {uniform: [a, b]}, {quniform: [a, b, q]}, "
        "{randint: [a, b]}, {choice: [...]}, {grid: [...]}"
    )
    metric: Optional[str] = option(
        None, help="metric to optimise, as the training run reports it: eval_loss or eval_<evaluator name>_<metric>"
    )
    mode: Optional[Literal["min", "max"]] = option(None, help="min or max the metric (default: min for losses, else max)")
    num_samples: int = option(1, help="trials to sample (with grid: repeats of the whole grid)")
    search_alg: Literal["random", "grid", "optuna"] = option("random", help="random, grid (every choice) or optuna (TPE)")
    scheduler: SchedulerConfig = option(default_factory=SchedulerConfig, help="fifo, asha (early stopping) or pbt")
    max_concurrent_trials: Optional[int] = option(
        None, help="trials at once (default: what the cluster's GPUs, or CPUs, allow for one trial's workers)"
    )
    time_budget_s: Optional[float] = option(None, help="stop the sweep after this many seconds")
    storage_path: Optional[str] = option(None, effect=PLACEMENT, help="where Tune and the trials' Train runs keep state (default: <args.output_dir>/ray)")
    name: str = option("sweep", effect=PLACEMENT, help="sweep name; re-running with the same name and storage resumes it")
    seed: Optional[int] = option(None, help="seed of the search algorithm (default: args.seed)")

    def __post_init__(self) -> None:
        self.domains: list[Domain] = parse_space(self.space)
        if self.num_samples < 1:
            raise ConfigError(f"num_samples: must be at least 1, got {self.num_samples}")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            raise ConfigError(f"max_concurrent_trials: must be at least 1, got {self.max_concurrent_trials}")
        if self.scheduler.type == "asha" and not self.metric:
            raise ConfigError("scheduler asha needs a metric to compare trials; set search.metric (e.g. eval_loss)")
        if self.scheduler.type == "pbt":
            if not self.metric:
                raise ConfigError("scheduler pbt needs a metric to rank trials; set search.metric (e.g. eval_loss)")
            if self.search_alg == "optuna":
                raise ConfigError("scheduler pbt changes the trials' values itself, which optuna cannot follow; use search_alg random or grid")
            fixed = [d.key for d in self.domains if not pbt_mutable(d.key)]
            if fixed:
                raise ConfigError(
                    f"space: scheduler pbt changes values inside running trials, and {fixed[0]!r} cannot change mid-run; "
                    "pbt may search " + ", ".join(f"args.{n}" for n in PBT_MUTABLE_ARGS)
                    + " and loss_kwargs values; search the others with asha or fifo"
                )
        if self.search_alg == "optuna" and not self.metric:
            raise ConfigError("search_alg optuna needs a metric to optimise; set search.metric")
        if self.search_alg == "grid":
            continuous = [d.key for d in self.domains if not d.categorical]
            if continuous:
                raise ConfigError(
                    f"search_alg grid needs choice/grid domains, but {continuous[0]!r} is continuous; "
                    "list its values with {choice: [...]} or use search_alg random / optuna"
                )
        if self.search_alg == "optuna" and self.grid_domains:
            raise ConfigError(
                f"search_alg optuna cannot enumerate the grid domain {self.grid_domains[0].key!r}; write it as {{choice: [...]}}"
            )
        if self.metric and self.mode is None:
            self.mode = "min" if self.metric.endswith("loss") else "max"
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: {self.name!r} must be a non-empty name without '/'")

    @property
    def grid_domains(self) -> list[Domain]:
        """The domains Tune enumerates (grid_search) rather than samples."""
        return [d for d in self.domains if d.kind == "grid" or (self.search_alg == "grid" and d.categorical)]

    @property
    def num_trials(self) -> int:
        return math.prod(len(d.args) for d in self.grid_domains) * self.num_samples


@dataclass
class TuneConfig(TrainConfig):
    """raytune-st tune: a training config plus `search`; every trial is a whole distributed training run."""

    search: Optional[SearchConfig] = option(None, help="the search space, metric, algorithm and scheduler")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.search is None:
            raise ConfigError("missing required key 'search': a tune config is a training config plus a search section")
        base = self.train_data()
        for domain in self.search.domains:
            check_key(base, domain.key)
            # Every option, or both bounds, must make a valid training config (types, loss names,
            # loss arguments); the data sets are checked against each loss in `job.check`.
            for value in domain.probe_values():
                try:
                    self.trial_config({domain.key: value})
                except ConfigError as exc:
                    shown = domain.label(value)
                    raise ConfigError(f"search.space.{domain.key} = {shown!r} does not make a valid training config: {exc}") from None
        # search.metric was checked with args.metric_for_best_model, in TrainConfig.__post_init__.
        if self.search.scheduler.type == "pbt":
            self._check_pbt()

    def _check_pbt(self) -> None:
        """PBT clones a trial from the checkpoint of its last evaluation: every evaluation must save one."""
        args = self.args
        if args.eval_strategy == "no":
            raise ConfigError(
                "scheduler pbt compares and clones trials at their evaluations; set args.eval_strategy: steps with "
                "args.eval_steps, and args.save_strategy to match"
            )
        same_steps = args.eval_strategy != "steps" or args.save_steps == args.steps_between_evals
        if args.save_strategy != args.eval_strategy or not same_steps:
            every = f"steps with save_steps: {args.steps_between_evals}" if args.eval_strategy == "steps" else args.eval_strategy
            raise ConfigError(
                "scheduler pbt clones trials from the checkpoint saved with each evaluation; set args.save_strategy: "
                f"{every} (now save_strategy: {args.save_strategy}"
                + (f", save_steps: {args.save_steps}" if args.save_strategy == "steps" else "") + ")"
            )

    def check_metric_for_best_model(self, similarity: Optional[str] = None, num_labels: Optional[int] = None) -> None:
        """Both metric names, args.metric_for_best_model and search.metric, by the same exact rule."""
        super().check_metric_for_best_model(similarity, num_labels)
        if self.search is not None and self.search.metric:
            self.search.metric = self._check_metric(self.search.metric, similarity, num_labels)

    def _check_metric(self, metric: str, similarity: Optional[str], num_labels: Optional[int]) -> str:
        """The reported name search.metric means (``loss`` is the training loss, reported at every log)."""
        from raytune_st.evaluation.metrics import resolve_metric

        evaluated = self.metric_names(similarity, num_labels)
        resolved = resolve_metric(metric, ["loss", *evaluated], key="search.metric", open_prefixes=self.open_metric_prefixes())
        if resolved != "loss" and self.args.eval_strategy == "no":
            raise ConfigError(
                f"search.metric {metric!r} is only reported when the trials evaluate; set args.eval_strategy: steps "
                "and args.eval_steps"
            )
        return resolved

    def train_data(self) -> dict[str, Any]:
        """The training part of this config as plain data."""
        data = to_dict(self)
        data.pop("search")
        return data

    def trial_config(self, params: dict[str, Any]) -> TrainConfig:
        """The training config of one trial: sampled `params` (choice indices) applied."""
        return build(TrainConfig, apply_params(self.train_data(), self.search.domains, params))
