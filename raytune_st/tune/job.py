"""The tune job: Ray Tune searches a training config; every trial is a whole Ray Train run.

1. Check on the driver, before any trial starts: every searched key exists, every option and
   bound makes a valid training config whose data sets fit their losses, the metric is one
   the runs report, the output directory is writable, and a sweep already in the storage was
   started with this config (else it is refused, see tune/rerun.py).
2. Ray Tune samples trials (random, grid or Optuna) and runs each as a driver function that
   builds and fits its own TorchTrainer (Train V2), reporting through TuneReportCallback;
   ASHA stops poor trials early. Under PBT a trial also hands Tune its checkpoints, and a
   poor trial continues from a better one's checkpoint with perturbed values. Train runs are
   named after the trial id, never a timestamp, so re-running the same command resumes an
   interrupted sweep where it stopped.
3. Write the results table (CSV + JSON), the best trial's config as a ready-to-run training
   YAML, its final model to `output_dir/best`, and a plot of the metric per trial over steps.
"""

from __future__ import annotations

import json
import math
import posixpath
from typing import TYPE_CHECKING, Any

from raytune_st.config.core import dump_yaml, to_dict
from raytune_st.errors import ConfigError, RaytuneError
from raytune_st.outputs import OutputDir, is_inside, join, removed_on_failure
from raytune_st.runtime import ray_session
from raytune_st.train.config import TrainConfig
from raytune_st.train.job import checked_output as checked_train_output, local_final_model, plan_run
from raytune_st.train.plan import default_storage_path
from raytune_st.train.plan import check_dataset, planned_steps
from raytune_st.train.progress import TrainConsole
from raytune_st.train.scan import check_values
from raytune_st.train.trackers import resolve_report_to
from raytune_st.tune.config import TuneConfig
from raytune_st.tune.rerun import check_sweep_rerun, save_sweep_config, sweep_exists
from raytune_st.tune.results import best_row, collect_rows, format_table, metric_plot, results_csv
from raytune_st.tune.trial import TRIAL_DRIVER_RESOURCES, TRIALS_DIR, run_trial

if TYPE_CHECKING:
    import ray.tune


def sweep_storage(config: TuneConfig) -> str:
    """Where Tune and the trials' Train runs keep state: search.storage_path, else the train job's default."""
    return config.search.storage_path or default_storage_path(config)


def _dataset_check_key(trial: TrainConfig, section: str, name: str) -> str:
    """What decides whether a data set fits: its source, its loss and the model's type and labels."""
    entry = (trial.train_datasets if section == "train_datasets" else trial.eval_datasets)[name]
    what = [section, name, to_dict(entry.data), to_dict(trial.loss_for(section, name)), trial.model.type, trial.model.num_labels]
    return json.dumps(what, sort_keys=True, default=str)


def checked_output(config: TuneConfig) -> OutputDir:
    """Pre-flight of the whole sweep (every option's data sets against its loss; model; output);
    returns the output directory, proven writable."""
    output = checked_train_output(config)  # the base config's data sets
    OutputDir(sweep_storage(config)).check_writable("search.storage_path")
    checked = {
        _dataset_check_key(config, section, name)
        for section, sets in (("train_datasets", config.train_datasets), ("eval_datasets", config.eval_datasets))
        for name in sets
    }
    for domain in config.search.domains:
        for value in domain.probe_values():
            trial = config.trial_config({domain.key: value})
            for section, sets in (("train_datasets", trial.train_datasets), ("eval_datasets", trial.eval_datasets)):
                for name in sets:
                    key = _dataset_check_key(trial, section, name)
                    if key in checked:
                        continue  # a learning rate or a batch size does not change what fits
                    try:
                        check_dataset(trial, section, name)
                        check_values(trial, section, name)
                    except RaytuneError as exc:
                        raise type(exc)(f"search.space.{domain.key} = {domain.label(value)!r}: {exc}") from None
                    checked.add(key)
    return output


def trial_resources(config: TrainConfig) -> dict[str, float]:
    """What one trial's Train workers take together (its driver takes no CPU or GPU)."""
    per_worker = dict(config.scaling.resources_per_worker or {})
    per_worker.setdefault("CPU", 1)
    if config.scaling.use_gpu:
        per_worker.setdefault("GPU", 1)
    return {k: v * config.scaling.num_workers for k, v in per_worker.items() if v}


def default_concurrency(config: TrainConfig, cluster: dict[str, float]) -> int:
    """As many trials as the cluster's GPUs (or CPUs) can hold at once, at least one.

    On CPUs one CPU stays free for Ray Data, which reads every trial's data: trials whose
    workers took every CPU would wait forever for their first batch.
    """
    need = trial_resources(config)
    free = dict(cluster)
    if "GPU" not in need and free.get("CPU", 0) > need.get("CPU", 0):
        free["CPU"] = free["CPU"] - 1
    fits = [math.floor(free.get(kind, 0) / amount) for kind, amount in need.items() if kind in ("CPU", "GPU")]
    return max(min(fits) if fits else 1, 1)


def _search_alg(config: TuneConfig, concurrency: int):
    """The search algorithm, limited to `concurrency` trials at once."""
    search = config.search
    seed = search.seed if search.seed is not None else config.args.seed
    if search.search_alg == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric=search.metric, mode=search.mode, seed=seed), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    # Tune ignores TuneConfig.max_concurrent_trials for a generator passed in; it takes its own.
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


def _scheduler(config: TuneConfig, max_t: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    from raytune_st.tune.space import to_tune_domain

    sched = config.search.scheduler
    if sched.type == "pbt":
        return PopulationBasedTraining(
            time_attr="step",
            perturbation_interval=sched.perturbation_interval or config.args.steps_between_evals,
            # Perturbing an option moves to a neighbouring one, for grid domains too.
            hyperparam_mutations={
                d.key: list(range(len(d.args))) if d.categorical else to_tune_domain(d, "random") for d in config.search.domains
            },
            quantile_fraction=sched.quantile_fraction,
            resample_probability=sched.resample_probability,
        )
    if sched.type == "asha":
        return ASHAScheduler(
            time_attr="step",
            # ASHA stops a trial whose step reaches max_t; one past the planned steps lets a
            # trial that survived every rung report its last step and write its final model.
            max_t=sched.max_t or max_t + 1,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
        )
    return FIFOScheduler()


def build_tuner(config: TuneConfig, console: Any = None) -> "ray.tune.Tuner":
    """A new Tuner for the sweep, or the interrupted one restored from its storage.

    `console`: a queue (train/progress.py) where every trial puts its progress.
    """
    import ray
    from ray import tune

    from raytune_st.tune.space import to_tune_domain

    search = config.search
    storage = sweep_storage(config)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, config=config, sweep_dir=config.args.output_dir, storage=storage, console=console),
        TRIAL_DRIVER_RESOURCES,
    )
    experiment = join(storage, search.name)
    if sweep_exists(experiment):
        print(f"resuming sweep {search.name!r} from {experiment}")
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)

    concurrency = search.max_concurrent_trials or default_concurrency(config, ray.cluster_resources())
    # Before any trial: the concurrent trials' workers leave Ray Data a CPU to read with.
    plan = plan_run(config, runs=concurrency, runs_key="search.max_concurrent_trials")
    save_sweep_config(config, experiment)  # before Tune's own state: a sweep Tune can resume has it
    param_space = {d.key: to_tune_domain(d, search.search_alg) for d in search.domains}
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric,
            mode=search.mode,
            num_samples=search.num_samples,
            search_alg=_search_alg(config, concurrency),
            scheduler=_scheduler(config, planned_steps(config, plan.train_rows())),
            time_budget_s=search.time_budget_s,
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=search.name,
            storage_path=storage,
            verbose=1,
            # PBT clones trials from the checkpoints they report; the last few are enough.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4) if search.scheduler.type == "pbt" else None,
        ),
    )


def tune(config: TuneConfig) -> dict[str, Any]:
    """Run the sweep; returns {"best": row of the best trial or None, "trials": [rows]}."""
    import pyarrow.fs

    search = config.search
    experiment = join(sweep_storage(config), search.name)

    def holds_sweep() -> bool:
        return is_inside(experiment, config.args.output_dir) and sweep_exists(experiment)

    with removed_on_failure(config.args.output_dir, worth_keeping=holds_sweep):
        output = checked_output(config)
        check_sweep_rerun(config, experiment)
        with ray_session(config.ray_address, state_api=True):
            # Lines, not bars: the trials share the console, each line starts with its trial's id.
            # Each trial is its own tracked run, grouped by the sweep's name.
            with TrainConsole(bar=False, trackers=resolve_report_to(config.args.report_to)) as console:
                grid = build_tuner(config, console.queue).fit()
                rows = collect_rows(config, grid, output)
                for row in rows:
                    if not row.stop_reason.startswith("error"):
                        trial_dir = posixpath.join(config.args.output_dir, TRIALS_DIR, row.trial_id)
                        final = {k: v for k, v in row.flat(search.metric).items() if v is not None}
                        console.finish(row.trial_id, final, local_final_model(trial_dir))
    print(format_table(rows, search.metric))
    best = best_row(rows, search.mode) if search.metric else None

    output.write("results.csv", results_csv(rows, search.metric))
    output.write("results.json", json.dumps([r.flat(search.metric) for r in rows], indent=2, default=str) + "\n")
    output.write("config.yaml", dump_yaml(config))
    if search.metric and any(r.history for r in rows):
        output.write("metric-per-trial.png", metric_plot(rows, search.metric))
    if best is not None:
        best_config = _best_config(config, grid, best.trial_id)
        best_config.args.output_dir = join(config.args.output_dir, "best-run")
        output.write("best-config.yaml", dump_yaml(best_config))
        source = posixpath.join(output.root, TRIALS_DIR, best.trial_id, "final")
        pyarrow.fs.copy_files(source, posixpath.join(output.root, "best"), source_filesystem=output.fs, destination_filesystem=output.fs)
        print(f"best trial {best.trial_id}: {search.metric} = {best.metric:.4f}; model in {join(config.args.output_dir, 'best')}, "
              f"config in {join(config.args.output_dir, 'best-config.yaml')}")
    elif search.metric:
        print("no trial completed; no best model to keep")
    return {"best": best.flat(search.metric) if best else None, "trials": [r.flat(search.metric) for r in rows]}


def _best_config(config: TuneConfig, grid: Any, trial_id: str) -> TrainConfig:
    for result in grid:
        if (posixpath.basename(result.path.rstrip("/"))) == trial_id:
            return config.trial_config({d.key: result.config[d.key] for d in config.search.domains})
    raise ConfigError(f"trial {trial_id} is not in the sweep's results")
