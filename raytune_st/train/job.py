"""The train job's driver: check, build the TorchTrainer, fit, write the outputs.

1. Check on the driver, before Ray starts: the model resolves, every data set's columns and
   values fit its loss, the output directory is writable, and a run already in the
   checkpoint storage was made with this config (else it is refused, see train/rerun.py).
   Then, in the Ray session: every data set holds at least one batch per worker.
2. Build the Ray datasets (lazy) and the TorchTrainer (:func:`build_trainer`, also used by
   Ray Tune trials) and fit: every worker runs :func:`~raytune_st.train.ray_world.train_loop_per_worker`.
3. From the latest checkpoint (or the best, with load_best_model_at_end) write
   `args.output_dir`: final/, metrics.jsonl, runs/ (TensorBoard), curves.png, config.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from typing import Any, Iterator, Optional

from raytune_st.data.sources import Source, read_source
from raytune_st.errors import ClusterWarning
from raytune_st.evaluation.metrics import model_facts
from raytune_st.models.loading import resolve_model
from raytune_st.outputs import OutputDir, is_inside, join, removed_on_failure
from raytune_st.console import verbose
from raytune_st.runtime import logger_level, ray_address, ray_session
from raytune_st.train.artifacts import final_metrics, write_run_outputs
from raytune_st.train.checkpointing import MODEL_DIR, read_checkpoint
from raytune_st.train.config import TrainConfig
from raytune_st.train.plan import (
    Plan,
    check_dataset,
    cluster_fit,
    default_storage_path,
    materialized_datasets,
    planned_steps,
    preflight,
    streamed_datasets,
)
from raytune_st.train.progress import TrainConsole, tracking_start
from raytune_st.train.ray_world import cluster_resources, make_run_config, torch_trainer
from raytune_st.train.rerun import check_rerun, data_files, latest_checkpoint_config
from raytune_st.train.scan import check_values
from raytune_st.train.trackers import check_trackers, params_of, resolve_report_to
from raytune_st.train.world import LoopPlan, shard_name


def build_datasets(config: TrainConfig, materialized: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The Ray datasets, named by :func:`~raytune_st.train.world.shard_name` as the loop reads them.

    Lazy, except those named in `materialized` (see :func:`~raytune_st.train.plan.materialized_datasets`),
    which are read into the object store here, in file order, so that every pass and a resumed
    run see the same rows in the same order.
    """
    def read(section: str, name: str, source: Source) -> Any:
        dataset = read_source(source)
        if f"{section}.{name}" in materialized:
            dataset.context.execution_options.preserve_order = True
            # Ray Data's own lines (execution plan, timing) go to Ray's logs; --verbose shows them.
            with contextlib.nullcontext() if verbose() else logger_level("ray.data", logging.ERROR):
                dataset = dataset.materialize()
        return dataset

    datasets = {}
    for name, entry in config.train_datasets.items():
        dataset = read("train_datasets", name, entry.data)
        if config.stream.global_shuffle:
            dataset = dataset.random_shuffle(seed=config.args.seed)
        datasets[shard_name("train", name)] = dataset
    datasets.update({shard_name("eval", name): read("eval_datasets", name, entry.data) for name, entry in config.eval_datasets.items()})
    return datasets


def build_trainer(
    config: TrainConfig,
    plan: Plan,
    *,
    dataset_config: Any = None,
    run_config: Any = None,
    initial_checkpoint: Any = None,
) -> Any:
    """The TorchTrainer for a checked config (`plan` from :func:`plan_run`).

    `dataset_config` (a ray.train.DataConfig) and `run_config` (see
    :func:`~raytune_st.train.ray_world.make_run_config`) replace the defaults. `initial_checkpoint`
    (a ray.train.Checkpoint of this loop, e.g. the one PBT clones into a trial) is where a run
    without checkpoints of its own starts from. Fit it inside :func:`working_dir_kept` so that
    relative paths in the config still resolve.
    """
    files = plan.files if plan.files is not None else data_files(config)
    return torch_trainer(
        config,
        LoopPlan.from_plan(config, plan, files, initial_checkpoint),
        build_datasets(config, frozenset(materialized_datasets(config, plan.train_rows(), files))),
        dataset_config=dataset_config,
        run_config=run_config or make_run_config(config),
    )


@contextlib.contextmanager
def working_dir_kept() -> Iterator[None]:
    """For the body, Ray Train leaves its workers in the job's working directory (where `ray job
    submit --working-dir` puts the project) instead of the run's, so that relative data and
    model paths in a config mean the same in every process. Train reads the variable when a
    trainer's fit starts; a value the user set is kept, and the process's environment is
    restored afterwards."""
    name = "RAY_CHDIR_TO_TRIAL_DIR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "0"
    try:
        yield
    finally:
        os.environ.pop(name, None)


def count_rows(source: Source) -> int:
    """Rows of a source whose format stores no count (JSONL, CSV), counted by Ray Data."""
    return read_source(source).count()


def checked_output(config: TrainConfig) -> OutputDir:
    """The checks that need no Ray: the model resolves, every data set's metadata fits its loss and
    its values too (one pyarrow pass over the loss's columns), the evaluators' data exists, the
    output is writable; returns the output directory. (Row counts and shard sizes: :func:`plan_run`.)"""
    # The model decides some metric names (its similarity function, a cross-encoder's outputs).
    # (A factory's model is not built here: its facts count as unknown, every possibility allowed.)
    config.check_metric_for_best_model(*model_facts(resolve_model(config.model.name) if config.model.name else None))
    for section, sets in (("train_datasets", config.train_datasets), ("eval_datasets", config.eval_datasets)):
        for name in sets:
            check_dataset(config, section, name)
            check_values(config, section, name)
    for spec in config.evaluators:
        spec.check_data()
    check_loss_factories(config)
    check_trackers(resolve_report_to(config.args.report_to))
    output = OutputDir(config.args.output_dir)
    output.check_writable("args.output_dir")
    # Checkpoints go here; find out now rather than at the first checkpoint, hours in.
    OutputDir(default_storage_path(config)).check_writable("run.storage_path")
    return output


STAGED_LOSS = "raytune_st.trainer:staged_loss"


def check_loss_factories(config: TrainConfig) -> None:
    """Call each loss factory (a ``module:function`` loss) once on the model, on this CPU: what a
    function returns is known only by calling it, and a worker is the wrong place to find out."""
    from raytune_st.components import import_object, is_import_path
    from raytune_st.losses.build import build_loss

    specs = []
    for section, sets in (("train_datasets", config.train_datasets), ("eval_datasets", config.eval_datasets)):
        for spec in (config.loss_for(section, name) for name in sets):
            if (
                is_import_path(spec.name)
                and spec.name != STAGED_LOSS  # RayTrainer's pickled loss object: it was a loss when pickled
                and not isinstance(import_object(spec.name, what="loss"), type)
                and spec not in specs
            ):
                specs.append(spec)
    if specs:
        model = config.model.load(device="cpu")
        for spec in specs:
            build_loss(spec.name, spec.kwargs, model, spec.model_type)


def plan_run(config: TrainConfig, *, runs: int = 1, runs_key: str = "") -> Plan:
    """Pre-flight inside a Ray session: every data set checked and counted, the cluster big enough
    for `runs` runs of `config` at once (`runs_key`: the setting that says so)."""
    plan = preflight(config, count_rows=count_rows)
    plan.files = data_files(config)
    warning = cluster_fit(
        config,
        cluster_resources(),
        may_autoscale=ray_address(config.ray_address) is not None,
        streamed=tuple(streamed_datasets(config, plan.train_rows(), plan.files)),
        runs=runs,
        runs_key=runs_key,
    )
    if warning:
        warnings.warn(warning, ClusterWarning, stacklevel=2)
    return plan


def fit_and_write(
    config: TrainConfig, plan: Plan, *, run_config: Any = None, dataset_config: Any = None, initial_checkpoint: Any = None
) -> dict[str, Any]:
    """Fit the TorchTrainer and write `args.output_dir` from its checkpoints; returns the final metrics.

    The final model is the latest checkpoint's, or the best one's with load_best_model_at_end
    (its metrics are then the returned ones).
    """
    import pyarrow.fs

    output = OutputDir(config.args.output_dir)
    trainer = build_trainer(
        config, plan, dataset_config=dataset_config, run_config=run_config, initial_checkpoint=initial_checkpoint
    )
    with working_dir_kept():
        result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a checkpoint; the final step always saves one")

    best_step: Optional[int] = None
    chosen = result.checkpoint
    if config.args.load_best_model_at_end:
        mode = "max" if config.args.higher_is_better else "min"
        chosen = result.get_best_checkpoint(metric=config.args.best_metric, mode=mode) or chosen
    with result.checkpoint.as_directory() as latest_dir:
        history = read_checkpoint(latest_dir).history
    with chosen.as_directory() as chosen_dir:
        chosen_state = read_checkpoint(chosen_dir)
        metrics = final_metrics(chosen_state.history)
        if chosen.path != result.checkpoint.path:
            best_step = chosen_state.step
        with tempfile.TemporaryDirectory(prefix="raytune-st-train-") as stage:
            write_run_outputs(
                stage,
                config=config,
                model_dir=os.path.join(chosen_dir, MODEL_DIR),
                history=history,
                metrics=metrics,
                best_step=best_step,
            )
            pyarrow.fs.copy_files(
                stage, output.root, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=output.fs
            )
    print(_summary(metrics, config.args.output_dir, best_step))
    return metrics


def train(config: TrainConfig, *, dataset_config: Any = None) -> dict[str, Any]:
    """Run the train job; returns the final metrics (of the best checkpoint with load_best_model_at_end).

    A run that fails removes the output directory it created, unless it holds checkpoints of
    this run (in the default storage, ``<output_dir>/ray``) that a rerun resumes from.
    """
    run_dir = join(default_storage_path(config), config.run.name)

    def holds_checkpoints() -> bool:
        return is_inside(run_dir, config.args.output_dir) and latest_checkpoint_config(run_dir) is not None

    with removed_on_failure(config.args.output_dir, worth_keeping=holds_checkpoints):
        checked_output(config)
        # A run already in the checkpoint storage is resumed only when it was made with this config.
        check_rerun(config, run_dir)
        with ray_session(config.ray_address):
            plan = plan_run(config)
            with TrainConsole(trackers=resolve_report_to(config.args.report_to)) as console:
                console.handle(tracking_start(None, config.args.run_name or config.run.name, params_of(config)))
                callback = console.callback(planned_steps(config, plan.train_rows()))
                run_config = make_run_config(config, callbacks=[callback])
                metrics = fit_and_write(config, plan, run_config=run_config, dataset_config=dataset_config)
                console.finish(None, metrics, local_final_model(config.args.output_dir))
            return metrics


def local_final_model(output_dir: str) -> Optional[str]:
    """<output_dir>/final when it is on this machine's disk (trackers upload it), else None."""
    final = os.path.join(output_dir, "final")
    return final if "://" not in output_dir and os.path.isdir(final) else None


def _summary(metrics: dict[str, Any], output_dir: str, best_step: Optional[int]) -> str:
    lines = [f"{k:<40} {v:.6g}" if isinstance(v, float) else f"{k:<40} {v}" for k, v in metrics.items()]
    where = f"wrote {output_dir}/final" + (f" (best checkpoint, step {best_step})" if best_step is not None else "")
    return "\n".join(lines + [where])
