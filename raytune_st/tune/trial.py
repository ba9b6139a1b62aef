"""One trial of a sweep: a Ray Tune driver function that builds and fits its own TorchTrainer.

A trial's Train run is named after the trial id (``<search.name>-<trial id>``), so re-running
an interrupted sweep resumes each trial's run from its last checkpoint. Its reports reach
Tune through a Train callback; under PBT they carry their checkpoints, and a trial that PBT
restarts from a better one's checkpoint first copies it (:func:`pin_start_checkpoint`).
"""

from __future__ import annotations

import logging
import posixpath
from typing import TYPE_CHECKING, Any, Optional

from raytune_st.errors import RaytuneError
from raytune_st.outputs import join
from raytune_st.train.config import TrainConfig
from raytune_st.train.job import fit_and_write, plan_run
from raytune_st.train.plan import planned_steps
from raytune_st.train.progress import tracking_start
from raytune_st.train.ray_world import console_callback, make_run_config
from raytune_st.train.steps import check_metric_reported
from raytune_st.train.rerun import check_rerun, latest_checkpoint_history
from raytune_st.train.trackers import params_of
from raytune_st.tune.config import TuneConfig

if TYPE_CHECKING:
    import ray.train

logger = logging.getLogger(__name__)

TRIALS_DIR = "trials"  # <args.output_dir>/trials/<trial id>: each trial's own output_dir
PBT_START_DIR = "pbt-start"  # in a cloned trial's Train run: its copy of the checkpoint it started from
# A trial's driver function only builds the TorchTrainer and waits. It takes no CPU, so that
# the trials' workers and Ray Data's read tasks (one whole CPU each) share the CPUs; Tune
# refuses an empty resource request, so it asks for a little logical memory instead.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 64 * 2**20}


def _report_callback(metric: Optional[str]):
    """TuneReportCallback that hands Tune only the reports carrying the sweep's metric.

    The training loop also reports plain logging steps; Tune refuses results without the
    metric that its scheduler and search algorithm compare.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class MetricReportCallback(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            _check_evaluated(metric, metrics[0])
            if metric is None or metric in metrics[0]:
                super().after_report(run_context, metrics, checkpoint)

    return MetricReportCallback()


def _check_evaluated(metric: Optional[str], report: dict[str, Any]) -> None:
    """An evaluation's report must carry an eval_ search.metric (a custom evaluator's name is
    known only then); a report of logging alone need not."""
    if metric and metric.startswith("eval_") and any(key.startswith("eval_") for key in report):
        check_metric_reported(metric, report, key="search.metric")


def _queue_callback(queue: Any, metric: Optional[str]):
    """A Train callback that hands each report carrying `metric`, with its checkpoint, to `queue`."""
    from ray.train.v2.api.callback import UserCallback

    class QueueReportCallback(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            _check_evaluated(metric, metrics[0])
            if metric is None or metric in metrics[0]:
                queue.put((dict(metrics[0]), checkpoint))

    return QueueReportCallback()


def run_trial(params: dict[str, Any], *, config: TuneConfig, sweep_dir: str, storage: str, console: Any = None) -> None:
    """One trial (a Tune driver function): build and fit this trial's TorchTrainer.

    `console`: the sweep driver's queue (train/progress.py) for this trial's progress lines.
    """
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    trial = config.trial_config(params)
    trial.args.output_dir = join(sweep_dir, TRIALS_DIR, trial_id)
    plan = plan_run(trial)
    name = f"{config.search.name}-{trial_id}"
    progress = []
    if console is not None:
        # This trial's own tracked run, grouped by the sweep; its params hold the searched values.
        run_name = f"{trial.args.run_name}-{trial_id}" if trial.args.run_name else trial_id
        try:
            console.put(tracking_start(trial_id, run_name, params_of(trial), group=config.search.name))
        except Exception:  # the sweep driver's queue is gone: the trial trains untracked rather than fails
            logger.warning("trial %s: the sweep's progress queue is gone; training without its console lines", trial_id)
        progress = [console_callback(console, planned_steps(trial, plan.train_rows()), trial_id)]
    if config.search.scheduler.type == "pbt":
        _run_pbt_trial(trial, plan, name=name, storage=storage, metric=config.search.metric, progress=progress)
        return
    check_rerun(trial, join(storage, name))
    if config.search.scheduler.type == "asha":
        for record in evaluations_to_replay(latest_checkpoint_history(join(storage, name)), config.search.metric):
            ray.tune.report(record)
    run_config = make_run_config(trial, name=name, storage_path=storage, callbacks=[_report_callback(config.search.metric), *progress])
    fit_and_write(trial, plan, run_config=run_config)


def evaluations_to_replay(history: list[dict[str, Any]], metric: Optional[str]) -> list[dict[str, Any]]:
    """What a resumed trial reports again before its Train run resumes: the records of its
    history up to the checkpoint that carry the sweep's metric (those Tune saw the first time).

    Tune does not save ASHA's rungs with the sweep. A resumed sweep starts them empty, so a trial
    resumed from its step-4 checkpoint would be judged at the step-4 rung by its step-6 value,
    and could be stopped at its last step. Reported again, its evaluations fill the rungs as
    they were; a rung that already holds the trial ignores the repeat.
    """
    if metric is None:
        return []
    return [record for record in history if record.get(metric) is not None and "step" in record]


def _run_pbt_trial(trial: TrainConfig, plan: Any, *, name: str, storage: str, metric: Optional[str], progress: list[Any]) -> None:
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
    run_config = make_run_config(trial, name=name, storage_path=storage, callbacks=[_queue_callback(reports, metric), *progress])
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
