"""Experiment trackers: ``args.report_to`` with sentence-transformers' (transformers') names and meaning.

``report_to`` names where a training run is tracked: ``tensorboard`` (event files under
``output_dir/runs``), ``mlflow``, ``wandb``, ``trackio``, ``codecarbon`` (energy and emissions, measured on
the workers: train/energy.py), ``all`` (every tracker whose library is installed) or ``none``;
several at once as a list. The driver is the one process that logs: it receives
rank 0's reports as they happen (train/progress.py), so a run is tracked once, however many
workers it has and however often Ray restarts them. Each tracked run gets:

* the resolved config as parameters (dotted keys), under ``args.run_name`` (default ``run.name``);
* every metric of every report at its step;
* at the end, the final metrics and the final model directory as an artifact.

Pre-flight (:func:`check_trackers`, before Ray starts) refuses an unknown name, a tracker whose
library is missing (naming the pip extra), W&B online without credentials and an MLflow
tracking server that does not answer. No credential
reaches a tracker: parameters come from the config only, and :func:`params_of` masks the
user:password part of any URI in it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Mapping, Optional, Protocol

from raytune_st.errors import ConfigError

# Tracker name -> the module its library installs (and the pip extra: raytune_st[<name>]).
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio", "codecarbon": "codecarbon"}
VALUES = (*TRACKERS, "all", "none")


def resolve_report_to(value: Any, installed: Optional[set[str]] = None) -> list[str]:
    """The trackers `value` (a name or a list of names) asks for, in order, without repeats.

    `all` is every tracker whose library is installed (`installed`, default: looked up), as in
    transformers; `none` is none. Unknown names are a ConfigError listing the valid ones.
    """
    names = [value] if isinstance(value, str) else list(value or [])
    unknown = [n for n in names if n not in VALUES]
    if unknown:
        raise ConfigError(f"args.report_to: unknown tracker {unknown[0]!r}; valid: {', '.join(VALUES)} (or a list of them)")
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(f"args.report_to: 'none' cannot be combined with other trackers, got {names}")
        return []
    if "all" in names:
        installed = installed if installed is not None else {n for n, module in TRACKERS.items() if _installed(module)}
        names = [n for n in TRACKERS if n in installed] + [n for n in names if n != "all"]
    return list(dict.fromkeys(names))


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_trackers(names: list[str], env: Mapping[str, str] = os.environ) -> None:
    """Refuse, before any worker starts, a tracker that cannot work here (one line naming the fix)."""
    for name in names:
        if not _installed(TRACKERS[name]):
            # tensorboard is one of raytune_st's own dependencies; the others are extras.
            fix = "reinstall raytune_st" if name == "tensorboard" else f"pip install 'raytune_st[{name}]'"
            raise ConfigError(f"args.report_to: {name} is not installed; {fix}, or remove it from report_to")
    if "wandb" in names and env.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun"):
        if not env.get("WANDB_API_KEY") and not _wandb_logged_in():
            raise ConfigError(
                "args.report_to: wandb is online but has no credentials; run `wandb login` (or set WANDB_API_KEY), "
                "or set WANDB_MODE=offline to keep the run on disk and `wandb sync` it later"
            )


    if "mlflow" in names:
        _check_mlflow_server(env.get("MLFLOW_TRACKING_URI", ""))


def _check_mlflow_server(uri: str) -> None:
    """An http(s) tracking URI must answer its /health route (5 s) before the run starts."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return  # a local store (a path, sqlite:///...) or a managed one that mlflow resolves itself
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(
            f"args.report_to: the MLflow tracking server at MLFLOW_TRACKING_URI={_masked(uri)} does not answer ({reason}); "
            "start it (mlflow server --host ... --port ...), fix the URI, or remove mlflow from report_to"
        ) from None


def _wandb_logged_in() -> bool:
    netrc = os.path.join(os.path.expanduser("~"), ".netrc")
    return os.path.exists(netrc) and "api.wandb.ai" in open(netrc, errors="replace").read()


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def _masked(text: str) -> str:
    """`text` with the user:password of every URI in it replaced by ***."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)


def params_of(config: Any) -> dict[str, str]:
    """The config as flat dotted parameters (strings, URIs' credentials masked), as trackers take them."""
    from raytune_st.config.core import to_dict

    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = _masked(str(value))

    walk("", to_dict(config))
    return flat


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def finish(self, metrics: dict[str, Any], model_dir: Optional[str], *, failed: bool = False) -> None: ...


def numeric(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a report, step apart."""
    return {k: float(v) for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class WandbTracker:
    """One W&B run (WANDB_PROJECT, WANDB_MODE, WANDB_DIR, ... as wandb reads them; project default raytune_st)."""

    def __init__(self, run_name: str, params: dict[str, str], group: Optional[str] = None):
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "raytune_st"), name=run_name, group=group, config=params, reinit="create_new"
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, metrics: dict[str, Any], model_dir: Optional[str], *, failed: bool = False) -> None:
        import wandb

        self.run.summary.update(numeric(metrics))
        if model_dir:
            artifact = wandb.Artifact(name=f"model-{self.run.id}", type="model")
            artifact.add_dir(model_dir)
            self.run.log_artifact(artifact)
        self.run.finish(exit_code=1 if failed else 0)


_MLFLOW_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


class MlflowTracker:
    """One MLflow run (MLFLOW_TRACKING_URI as mlflow reads it; experiment: MLFLOW_EXPERIMENT_NAME, default raytune_st).

    A sweep's trials are runs of one experiment tagged ``raytune_st.group`` with the sweep's
    name. Metric names keep what MLflow allows: ``ndcg@10`` is logged as ``ndcg_10``.
    """

    def __init__(self, run_name: str, params: dict[str, str], group: Optional[str] = None):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient()
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "raytune_st")
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        tags = {"raytune_st.group": group} if group else {}
        self.run_id = self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        pairs = [Param(key[:250], value[:6000]) for key, value in params.items()]  # MLflow's key and value limits
        for start in range(0, len(pairs), 100):  # at most 100 params a batch
            self.client.log_batch(self.run_id, params=pairs[start : start + 100])

    @staticmethod
    def metric_name(name: str) -> str:
        return _MLFLOW_BAD.sub("_", name)

    def log(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(self.metric_name(k), v, now, step) for k, v in metrics.items()])

    def finish(self, metrics: dict[str, Any], model_dir: Optional[str], *, failed: bool = False) -> None:
        import time

        from mlflow.entities import Metric

        # The final model's metrics (the best checkpoint's with load_best_model_at_end), apart from the history.
        now, step = int(time.time() * 1000), int(metrics.get("step") or 0)
        final = [Metric("final/" + self.metric_name(k), v, now, step) for k, v in numeric(metrics).items()]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        if model_dir:
            self.client.log_artifacts(self.run_id, model_dir, artifact_path="model")
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


class TrackioTracker:
    """One Trackio run: project TRACKIO_PROJECT (default raytune_st), stored where trackio's own
    variables say (TRACKIO_DIR locally, or TRACKIO_SPACE_ID / TRACKIO_SERVER_URL)."""

    def __init__(self, run_name: str, params: dict[str, str], group: Optional[str] = None):
        import trackio

        with _quiet_stdout():  # trackio prints where it logs and how to open its dashboard
            self.run = trackio.init(
                project=os.environ.get("TRACKIO_PROJECT", "raytune_st"), name=run_name, group=group, config=params,
                embed=False, auto_log_cpu=False, auto_log_gpu=False,
            )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, metrics: dict[str, Any], model_dir: Optional[str], *, failed: bool = False) -> None:
        final = {f"final/{k}": v for k, v in numeric(metrics).items()}
        if final:
            self.run.log(final, step=int(metrics.get("step") or 0))
        if model_dir:
            self.run.log_artifact(model_dir, name=f"model-{self.run.name}", type="model")
        with _quiet_stdout():
            self.run.finish()


def _quiet_stdout():
    import contextlib
    import io

    return contextlib.redirect_stdout(io.StringIO())


def open_trackers(names: list[str], run_name: str, params: dict[str, str], group: Optional[str] = None) -> list[Tracker]:
    """A live tracker per name (TensorBoard is written from the history at the end, see artifacts.py;
    CodeCarbon measures on the workers, see energy.py)."""
    trackers: list[Tracker] = []
    for name in names:
        if name == "wandb":
            trackers.append(WandbTracker(run_name, params, group=group))
        elif name == "mlflow":
            trackers.append(MlflowTracker(run_name, params, group=group))
        elif name == "trackio":
            trackers.append(TrackioTracker(run_name, params, group=group))
    return trackers
