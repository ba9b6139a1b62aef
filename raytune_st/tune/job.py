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
import logging
import math
import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from raytune_st.config.core import dump_yaml
from raytune_st.errors import ConfigError, RaytuneError
from raytune_st.outputs import OutputDir, is_inside, join, removed_on_failure
from raytune_st.runtime import ray_session
from raytune_st.train.config import TrainConfig, check_dataset, planned_steps
from raytune_st.train.job import check as check_train, default_storage_path, fit_and_write, make_run_config, plan_run
from raytune_st.train.rerun import check_rerun
from raytune_st.train.scan import check_values
from raytune_st.tune.config import TuneConfig
from raytune_st.tune.rerun import check_sweep_rerun, save_sweep_config, sweep_exists

if TYPE_CHECKING:
    import ray.train
    import ray.tune

logger = logging.getLogger(__name__)

TRIALS_DIR = "trials"
PBT_START_DIR = "pbt-start"  # in a cloned trial's Train run: its copy of the checkpoint it started from
# A trial's driver function only builds the TorchTrainer and waits. It takes no CPU, so that
# the trials' workers and Ray Data's read tasks (one whole CPU each) share the CPUs; Tune
# refuses an empty resource request, so it asks for a little logical memory instead.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2**20}


def sweep_storage(config: TuneConfig) -> str:
    """Where Tune and the trials' Train runs keep state: search.storage_path, else the train job's default."""
    return config.search.storage_path or default_storage_path(config)


def _dataset_check_key(trial: TrainConfig, section: str, name: str) -> str:
    """What decides whether a data set fits: its source, its loss and the model's type and labels."""
    entry = (trial.train_datasets if section == "train_datasets" else trial.eval_datasets)[name]
    return repr((section, name, entry.data, trial.loss_for(section, name), trial.model.type, trial.model.num_labels))


def check(config: TuneConfig) -> OutputDir:
    """Pre-flight of the whole sweep: every option's data sets against its loss; model; output."""
    output = check_train(config)  # the base config's data sets
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


def _report_callback(metric: Optional[str]):
    """TuneReportCallback that hands Tune only the reports carrying the sweep's metric.

    The training loop also reports plain logging steps; Tune refuses results without the
    metric that its scheduler and search algorithm compare.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class MetricReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metric is None or metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return MetricReportCallback()


def _queue_callback(queue: Any, metric: Optional[str]):
    """A Train callback that hands each report carrying `metric`, with its checkpoint, to `queue`."""
    from ray.train.v2.api.callback import UserCallback

    class QueueReportCallback(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metric is None or metric in metrics[0]:
                queue.put((dict(metrics[0]), checkpoint))

    return QueueReportCallback()


def run_trial(params: dict[str, Any], *, config: TuneConfig, sweep_dir: str, storage: str) -> None:
    """One trial (a Tune driver function): build and fit this trial's TorchTrainer."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    trial = config.trial_config(params)
    trial.args.output_dir = join(sweep_dir, TRIALS_DIR, trial_id)
    plan = plan_run(trial)
    name = f"{config.search.name}-{trial_id}"
    if config.search.scheduler.type == "pbt":
        _run_pbt_trial(trial, plan, name=name, storage=storage, metric=config.search.metric)
        return
    check_rerun(trial, join(storage, name))
    run_config = make_run_config(trial, name=name, storage_path=storage, callbacks=[_report_callback(config.search.metric)])
    fit_and_write(trial, plan, run_config=run_config)


def _run_pbt_trial(trial: TrainConfig, plan: Any, *, name: str, storage: str, metric: Optional[str]) -> None:
    """A PBT trial: its reports reach Tune with their checkpoints, so that PBT can clone it.

    TuneReportCallback hands Tune metrics only. Here the Train run's reports come back through
    a queue and this driver reports each with its checkpoint (`ray.tune.report`), while the run
    fits in a thread. A trial that PBT restarts from another trial's checkpoint (with perturbed
    values) starts a new Train run from its own copy of that checkpoint
    (:func:`pin_start_checkpoint`); the run is named after it, so an interrupted sweep resumes
    it rather than the trial's first run.
    """
    import hashlib
    import threading

    import ray.tune
    from ray.util.queue import Queue

    start = ray.tune.get_checkpoint()
    if start is not None:
        name = f"{name}-from-{hashlib.sha1(start.path.encode()).hexdigest()[:8]}"
        start = pin_start_checkpoint(start, join(storage, name, PBT_START_DIR))
    check_rerun(trial, join(storage, name))
    reports = Queue(actor_options={"num_cpus": 0})
    run_config = make_run_config(trial, name=name, storage_path=storage, callbacks=[_queue_callback(reports, metric)])
    outcome: dict[str, BaseException] = {}

    def fit() -> None:
        try:
            fit_and_write(trial, plan, run_config=run_config, initial_checkpoint=start)
        except BaseException as exc:  # re-raised in the trial's own thread below
            outcome["error"] = exc
        finally:
            reports.put(None)  # every report was put (synchronously) before fit returned

    runner = threading.Thread(target=fit, name="pbt-trial-fit", daemon=True)
    runner.start()
    while (item := reports.get()) is not None:
        metrics, checkpoint = item
        ray.tune.report(metrics, checkpoint=checkpoint)
    runner.join()
    if "error" in outcome:
        raise outcome["error"]


def pin_start_checkpoint(start: "ray.train.Checkpoint", target: str) -> "ray.train.Checkpoint":
    """This trial's own copy (at `target`, a path or URI) of the checkpoint PBT cloned it from.

    Tune may delete the better trial's checkpoint soon after handing it over (when that trial
    reports more, or is itself cloned), while the new Train run reads it only once its workers
    are up. So the trial's driver copies it at once. If it is gone already, the better trial's
    newest checkpoint is copied instead: a later state of the same better trial. A copy made
    before (an interrupted sweep, resumed) is reused.
    """
    import pyarrow.fs
    import ray.train

    from raytune_st.outputs import filesystem

    target_fs, target_root = filesystem(target)
    complete = posixpath.join(target_root, ".copy-complete")
    if target_fs.get_file_info(complete).type == pyarrow.fs.FileType.File:
        return ray.train.Checkpoint(target_root, filesystem=target_fs)
    target_fs.delete_dir_contents(target_root, missing_dir_ok=True)  # what a cut-short copy left
    source_fs, parent = start.filesystem, posixpath.dirname(start.path.rstrip("/"))
    candidates = [start.path]
    for _ in range(3):
        for source in candidates:
            if source_fs.get_file_info(source).type != pyarrow.fs.FileType.Directory:
                continue
            try:
                pyarrow.fs.copy_files(source, target_root, source_filesystem=source_fs, destination_filesystem=target_fs)
            except OSError:  # deleted while copying: try the next one
                target_fs.delete_dir_contents(target_root, missing_dir_ok=True)
                continue
            target_fs.open_output_stream(complete).close()
            if source != start.path:
                logger.warning("PBT's checkpoint %s was deleted before this trial copied it; starting from %s", start.path, source)
            return ray.train.Checkpoint(target_root, filesystem=target_fs)
        siblings = [i.path for i in source_fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True))]
        candidates = sorted((p for p in siblings if posixpath.basename(p).startswith("checkpoint_")), reverse=True)
    raise RaytuneError(
        f"Tune deleted the checkpoint PBT cloned this trial from ({start.path}), and every other checkpoint "
        "of that trial, before this trial could copy one; raise search.scheduler.perturbation_interval "
        "so that trials report checkpoints less often"
    )


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


def build_tuner(config: TuneConfig, output: OutputDir) -> "ray.tune.Tuner":
    """A new Tuner for the sweep, or the interrupted one restored from its storage."""
    import ray
    from ray import tune

    from raytune_st.tune.space import to_tune_domain

    search = config.search
    storage = sweep_storage(config)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, config=config, sweep_dir=config.args.output_dir, storage=storage),
        TRIAL_DRIVER_RESOURCES,
    )
    experiment = join(storage, search.name)
    if sweep_exists(experiment):
        print(f"resuming sweep {search.name!r} from {experiment}")
        return tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)

    plan = plan_run(config)
    save_sweep_config(config, experiment)  # before Tune's own state: a sweep Tune can resume has it
    concurrency = search.max_concurrent_trials or default_concurrency(config, ray.cluster_resources())
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


@dataclass
class TrialRow:
    trial_id: str
    params: dict[str, Any]  # searched key -> value as a person reads it
    metric: Optional[float]  # last reported value of the sweep's metric
    steps: Optional[int]  # optimizer steps run
    stop_reason: str
    history: list[tuple[int, float]]  # (step, metric) over the run

    def flat(self, metric_name: Optional[str]) -> dict[str, Any]:
        return {
            "trial_id": self.trial_id,
            **self.params,
            (metric_name or "metric"): self.metric,
            "steps": self.steps,
            "stop_reason": self.stop_reason,
        }


def collect_rows(config: TuneConfig, grid: Any, output: OutputDir) -> list[TrialRow]:
    """One row per trial from Tune's ResultGrid."""
    search = config.search
    rows = []
    for result in grid:
        trial_id = posixpath.basename(result.path.rstrip("/"))
        # A trial that failed before its first report (e.g. its process could not start) has
        # neither a config nor metrics.
        trial_config, reported = result.config or {}, result.metrics or {}
        params = {d.key: d.label(trial_config[d.key]) for d in search.domains if d.key in trial_config}
        history: list[tuple[int, float]] = []
        frame = result.metrics_dataframe
        if search.metric and frame is not None and search.metric in frame and "step" in frame:
            history = [(int(s), float(m)) for s, m in zip(frame["step"], frame[search.metric]) if m == m]
        metric = reported.get(search.metric) if search.metric else None
        steps = reported.get("step")
        trial_dir = posixpath.join(TRIALS_DIR, trial_id)
        if result.error is not None:
            reason = f"error: {type(result.error).__name__}"
        elif output.exists(posixpath.join(trial_dir, "final")):
            reason = "completed"
            # The trial's own log is complete even when Tune's record of it lags (a trial
            # interrupted after its last step and finished on resume reports nothing new).
            logged = [json.loads(line) for line in output.read(posixpath.join(trial_dir, "metrics.jsonl")).decode().splitlines()]
            steps = logged[-1]["step"]
            if search.metric:
                history = [(r["step"], r[search.metric]) for r in logged if search.metric in r]
                metric = history[-1][1] if history else None
        elif search.scheduler.type == "asha":
            reason = "stopped early by asha"
        else:
            reason = "stopped by the time budget"
        rows.append(TrialRow(trial_id, params, metric, steps, reason, history))
    return sorted(rows, key=lambda r: r.trial_id)


def best_row(rows: list[TrialRow], mode: Optional[str]) -> Optional[TrialRow]:
    """The completed trial with the best last metric (the only ones with a final model)."""
    done = [r for r in rows if r.stop_reason == "completed" and r.metric is not None]
    if not done:
        return None
    return (max if mode == "max" else min)(done, key=lambda r: r.metric)


def format_table(rows: list[TrialRow], metric: Optional[str]) -> str:
    flat = [r.flat(metric) for r in rows]
    if not flat:
        return "no trials ran"
    columns = list(flat[0])
    cells = [[("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row.values()] for row in flat]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _csv(rows: list[TrialRow], metric: Optional[str]) -> str:
    import csv
    import io

    flat = [r.flat(metric) for r in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]) if flat else ["trial_id"])
    writer.writeheader()
    writer.writerows(flat)
    return buffer.getvalue()


def _plot(rows: list[TrialRow], metric: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for row in rows:
        if row.history:
            steps, values = zip(*row.history)
            ax.plot(steps, values, marker="o", label=f"{row.trial_id} ({row.stop_reason})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title("metric per trial")
    ax.legend(fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def tune(config: TuneConfig) -> dict[str, Any]:
    """Run the sweep; returns {"best": row of the best trial or None, "trials": [rows]}."""
    import pyarrow.fs

    search = config.search
    experiment = join(sweep_storage(config), search.name)

    def holds_sweep() -> bool:
        return is_inside(experiment, config.args.output_dir) and sweep_exists(experiment)

    with removed_on_failure(config.args.output_dir, worth_keeping=holds_sweep):
        output = check(config)
        check_sweep_rerun(config, experiment)
        with ray_session(config.ray_address):
            tuner = build_tuner(config, output)
            grid = tuner.fit()
    rows = collect_rows(config, grid, output)
    print(format_table(rows, search.metric))
    best = best_row(rows, search.mode) if search.metric else None

    output.write("results.csv", _csv(rows, search.metric))
    output.write("results.json", json.dumps([r.flat(search.metric) for r in rows], indent=2, default=str) + "\n")
    output.write("config.yaml", dump_yaml(config))
    if search.metric and any(r.history for r in rows):
        output.write("metric-per-trial.png", _plot(rows, search.metric))
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
