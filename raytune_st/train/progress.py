"""Training progress on the driver: rank 0's reports as a live bar, or as one line per logging step.

Ray Train hands every report of a run to the run's callbacks (in its controller process).
:func:`~raytune_st.train.ray_world.console_callback` forwards rank 0's metrics, and whether a
checkpoint came with them, to a queue; :class:`TrainConsole`, on the driver, drains it while the
run fits and prints:

* on a terminal, a tqdm bar (step of total, epoch, loss, learning rate, samples/s, time left)
  with a line above it for each evaluation and checkpoint;
* elsewhere (``ray job submit`` logs, CI, a file), one line per logging step::

    [train] step 20/40 (50%)  epoch 0.50  loss 1.2345  lr 1.11e-05  grad_norm 3.210  41.2 samples/s  about 25 s left
    [train] eval at step 20: loss 0.4321, debian-dev_cosine_ndcg@10 0.8812
    [train] checkpoint at step 20 saved

Nothing is printed once per rank. In a sweep every line starts with its trial's id. Which lines
one report makes (:func:`report_lines`) is pure logic, no Ray.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from typing import Any, Optional, Sequence

from raytune_st.console import format_seconds, time_left


def report_lines(
    record: dict[str, Any], total_steps: int, seconds_left: Optional[float], *, saved: bool, prefix: str
) -> list[tuple[str, str]]:
    """(kind, line) for each line one report of rank 0 makes; kinds: resumed, step (a logging
    step), eval, checkpoint."""
    step = record["step"]
    lines = []
    if "resumed_from_step" in record:
        lines.append(("resumed", f"{prefix} resumed from the checkpoint of step {record['resumed_from_step']}"))
    if "loss" in record:
        lines.append(("step", f"{prefix} {step_summary(record, total_steps, seconds_left)}"))
    evaluation = {key[len("eval_") :]: value for key, value in record.items() if key.startswith("eval_")}
    if evaluation:
        lines.append(("eval", f"{prefix} eval at step {step}: {eval_figures(evaluation)}"))
    if saved:
        lines.append(("checkpoint", f"{prefix} checkpoint at step {step} saved"))
    return lines


def step_summary(record: dict[str, Any], total_steps: int, seconds_left: Optional[float]) -> str:
    """`step N/M (P%)` then the logging step's figures, two spaces apart."""
    step = record["step"]
    done = f"step {step}/{total_steps} ({100 * step / max(total_steps, 1):.0f}%)"
    return "  ".join([done, *step_figures(record, total_steps, seconds_left)])


def step_figures(record: dict[str, Any], total_steps: int, seconds_left: Optional[float]) -> list[str]:
    """Epoch, loss, learning rate, gradient norm, samples/s and time left, those the record has."""
    figures = [f"epoch {record['epoch']:.2f}"] if "epoch" in record else []
    figures.append(f"loss {record['loss']:.4f}")
    figures += [f"lr {record['learning_rate']:.2e}"] if "learning_rate" in record else []
    figures += [f"grad_norm {record['grad_norm']:.3f}"] if record.get("grad_norm") is not None else []
    figures += [f"{record['train_samples_per_second']:.1f} samples/s"] if record.get("train_samples_per_second") else []
    if seconds_left is not None and record["step"] < total_steps:
        figures.append(f"about {format_seconds(seconds_left)} left")
    return figures


def eval_figures(evaluation: dict[str, Any]) -> str:
    """`name value, ...`; an evaluator's shared name prefix is said once:
    `debian-dev_cosine_ accuracy@1 0.8667, ndcg@10 0.9250` rather than on every metric."""
    shared = os.path.commonprefix([name for name in evaluation if name != "loss"])
    shared = shared[: shared.rfind("_") + 1] if sum(name != "loss" for name in evaluation) > 1 else ""
    figures = [f"{name[len(shared):] if name != 'loss' else name} {_figure(value)}" for name, value in evaluation.items()]
    if not shared:
        return ", ".join(figures)
    loss = [f for f, name in zip(figures, evaluation) if name == "loss"]
    others = [f for f, name in zip(figures, evaluation) if name != "loss"]
    return ", ".join(loss + [f"{shared} {others[0]}", *others[1:]])


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def tracking_start(tag: Optional[str], run_name: str, params: dict[str, str], group: Optional[str] = None) -> dict[str, Any]:
    """The queue item that opens a run's trackers (a sweep's trial sends it before it fits)."""
    return {"tag": tag, "run_name": run_name, "params": params, "group": group}


class TrainConsole:
    """On the driver: a queue for the runs' console callbacks, drained while a run (or a sweep) fits;
    each report of rank 0 is printed and logged to the run's trackers (train/trackers.py).

    Use as a context manager around ``trainer.fit()`` (or a sweep); `bar` defaults to whether
    stdout is a terminal (a sweep always prints lines: several trials share the console).
    Trackers a run opened are finished when the context exits, after the last report:
    with the final metrics and model that :meth:`finish` recorded, or as failed.
    """

    POLL_S = 0.5

    def __init__(
        self, *, bar: Optional[bool] = None, prefix: str = "[train]", queue: Any = None, trackers: Sequence[str] = ()
    ):
        if queue is None:
            from raytune_st.train.ray_world import progress_queue

            queue = progress_queue()
        self.queue = queue
        self.bar_wanted = sys.stdout.isatty() if bar is None else bar
        self.prefix = prefix
        self.tracker_names = list(trackers)
        self._trackers: dict[Optional[str], list[Any]] = {}
        self._finished: dict[Optional[str], tuple[dict[str, Any], Optional[str]]] = {}
        self._bars: dict[Optional[str], Any] = {}
        self._began: dict[Optional[str], tuple[int, float]] = {}  # tag -> (first step seen, when)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="train-console", daemon=True)

    def callback(self, total_steps: int, tag: Optional[str] = None) -> Any:
        from raytune_st.train.ray_world import console_callback

        return console_callback(self.queue, total_steps, tag)

    def finish(self, tag: Optional[str], metrics: dict[str, Any], model_dir: Optional[str]) -> None:
        """Record a run's final metrics and model, for its trackers when the context exits."""
        self._finished[tag] = (metrics, model_dir)

    def __enter__(self) -> "TrainConsole":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()  # every report put before fit returned has been handled
        for bar in self._bars.values():
            bar.close()
        # A tracker that cannot finish (an upload refused) costs its run's record, never the
        # trained model: the job's outputs are written, and failing now would remove them.
        _warn_on_error("closing the progress queue", self.queue.shutdown)
        for tag, trackers in self._trackers.items():
            metrics, model_dir = self._finished.get(tag, ({}, None))
            for tracker in trackers:
                _warn_on_error(
                    f"finishing the {type(tracker).__name__} run", tracker.finish, metrics, model_dir, failed=tag not in self._finished
                )

    def _drain(self) -> None:
        from raytune_st.train.ray_world import queue_gone

        while True:
            try:
                item = self.queue.get(timeout=self.POLL_S)
            except queue.Empty:  # ray.util.queue.Empty is one
                if self._stop.is_set():
                    return
                continue
            except Exception as error:
                if queue_gone(error):  # the Ray session ended: nothing more will come
                    return
                raise
            # One report that cannot be shown or tracked must not silence the rest of the run.
            _warn_on_error("showing a training report", self.handle, item)

    def handle(self, item: dict[str, Any]) -> None:
        """One queue item: a run's tracking start, or a report of rank 0."""
        if "params" in item:
            from raytune_st.train.trackers import open_trackers

            # A trial that Tune restarts (PBT) keeps the tracked run it opened first.
            if self.tracker_names and item["tag"] not in self._trackers:
                self._trackers[item["tag"]] = open_trackers(self.tracker_names, item["run_name"], item["params"], item["group"])
            return
        self.show(item["tag"], item["total_steps"], item["record"], item["saved"])

    def show(self, tag: Optional[str], total_steps: int, record: dict[str, Any], saved: bool) -> None:
        """Print one report of rank 0 (a bar update, or its lines) and log it to the run's trackers."""
        if "step" not in record:  # not a report of raytune_st's loop
            return
        from raytune_st.train.trackers import numeric

        for tracker in self._trackers.get(tag, []):
            _warn_on_error(f"logging to the {type(tracker).__name__} run", tracker.log, numeric(record), record["step"])
        now = time.monotonic()
        step = record["step"]
        first_step, first_time = self._began.setdefault(tag, (step, now))
        left = time_left(step - first_step, total_steps - first_step, now - first_time)
        prefix = f"{self.prefix} [trial {tag}]" if tag else self.prefix
        lines = report_lines(record, total_steps, left, saved=saved, prefix=prefix)
        if not self.bar_wanted:
            for _, line in lines:
                print(line, flush=True)
            return
        bar = self._bars.get(tag)
        if bar is None:
            from tqdm.auto import tqdm

            # tqdm measures the rate and time left itself, from the first step this run shows.
            bar = self._bars[tag] = tqdm(total=total_steps, initial=step - 1, desc=prefix, unit="step", dynamic_ncols=True)
        bar.update(step - bar.n)
        if "loss" in record:
            bar.set_postfix_str("  ".join(step_figures(record, total_steps, None)), refresh=True)
        for kind, line in lines:
            if kind != "step":
                bar.write(line)


def _warn_on_error(what: str, call: Any, *args: Any, **kwargs: Any) -> None:
    """`call(*args, **kwargs)`; an error in it becomes one `warning:` line instead of an exception."""
    import warnings

    from raytune_st.errors import RaytuneWarning

    try:
        call(*args, **kwargs)
    except Exception as exc:
        warnings.warn(f"{what} failed ({type(exc).__name__}: {exc}); training is not affected", RaytuneWarning, stacklevel=2)
