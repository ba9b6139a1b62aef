"""Connecting to Ray: join the cluster named by `ray_address` or RAY_ADDRESS, else start a local one."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator, Optional

from raytune_st.console import ray_console_options, verbose
from raytune_st.errors import ClusterError


def ray_address(configured: Optional[str] = None) -> Optional[str]:
    """The cluster to join: the config's `ray_address`, then RAY_ADDRESS, else None (start locally)."""
    return configured or os.environ.get("RAY_ADDRESS") or None


@contextlib.contextmanager
def ray_session(address: Optional[str] = None, *, state_api: bool = False) -> Iterator[None]:
    """Make sure Ray is initialised for the body; shut down only what this call started.

    Inside a `ray job submit` job, or when the caller already called `ray.init()`, the
    existing connection is used as is.

    `state_api`: a local Ray also serves Ray's state API (from the dashboard's process). Ray
    Train's placement-group cleaner asks it whether a run's controller is still alive; a sweep
    needs that, since Tune kills the trials it stops or restarts (ASHA, PBT) while the cluster
    goes on, and without the cleaner each killed run's CPUs stay taken. Elsewhere a run's
    controller outlives its run, or dies with the local Ray, and Ray starts faster without it.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    target = ray_address(address)
    env = worker_env(local=target is None)
    # Inside `ray job submit` the job's runtime env already reaches every worker, and
    # ray.init refuses a runtime env that sets any of the same variables again.
    job_env = (json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}).get("env_vars") or {}
    env = {k: v for k, v in env.items() if k not in job_env}
    # Ray Data reads some settings where a dataset is built: in this process.
    local_only = {k: env[k] for k in LOCAL_WORKER_ENV if k in env}
    with data_context(enable_progress_bars={**job_env, **env}["RAY_DATA_DISABLE_PROGRESS_BARS"] != "1"), environ(local_only), quiet_console():
        try:
            if target is not None:
                _check_reachable(target)
                ray.init(address=target, runtime_env={"env_vars": env} if env else None, **ray_console_options())
                where = "in the cluster's log files (`ray logs`, or the dashboard)"
            else:
                where = f"in {_init_local(env, state_api=state_api)}"
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            if target is None:
                raise
            raise _unreachable(target, exc) from None
        if not verbose():
            print(f"[ray] Ray's own output is {where}; --verbose shows it here", flush=True)
        try:
            yield
        finally:
            ray.shutdown()


def worker_env(local: bool = False) -> dict[str, str]:
    """The environment variables a run hands every Ray process it starts (its runtime env).

    `local`: for a Ray of one machine that the run starts itself (LOCAL_WORKER_ENV too).
    """
    # Workers inherit the driver's environment for what changes their behaviour here.
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM") if k in os.environ}
    # Ray Data's per-operator progress bars flood job logs; jobs print one line per stage instead.
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # Tune trials keep the job's working directory rather than their trial directory, so that
    # relative data and model paths in a config mean the same in every process.
    env["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    # Ray Train's controller takes a worker's report only when it polls the workers, every 2 s
    # by default, and `ray.train.report` waits until the previous report was taken: a run that
    # logs, evaluates or saves more often than every 2 s waited for the poll (2,011 ms a report
    # measured, 102 ms at 0.1 s). Polling every 0.1 s costs the controller and the idle worker
    # about 0.9 s of CPU a minute more (measured on 2 cores), 1.5% of one core.
    env[TRAIN_POLL_ENV] = os.environ.get(TRAIN_POLL_ENV, TRAIN_POLL_S)
    if local:
        env.update({k: os.environ.get(k, v) for k, v in LOCAL_WORKER_ENV.items()})
    return env


# What a Ray of one machine leaves out; each helper is a Python process of its own that takes
# 1-2 s of CPU to start. Together they took 3 s off a 4-step training run of the tiny model on
# 2 cores (medians of 3 alternated runs at load average 0.9-1.8: 28.2 s against 31.6 s).
LOCAL_WORKER_ENV = {
    # Train starts a watcher per run for nodes the cluster drains (spot preemption); a local
    # Ray drains none.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Data reads Parquet footers through up to 32 actors per read, each with 128 reads in
    # flight; one machine's files need one.
    "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1",
}


TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.1"


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Unless verbose, for the body: no Ray deprecation warnings (they are about how raytune_st
    calls Ray, never about the user's config, which raytune_st checks itself) and no transformers
    progress bars (loading and saving a model on the driver). Both are restored afterwards."""
    import warnings

    if verbose():
        yield
        return
    import ray._private.worker as ray_worker
    from ray.util.annotations import RayDeprecationWarning
    from transformers.utils import logging as transformers_logging

    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is not None:
        ray_worker.print_to_stdstream = _without_benign_notices(printer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RayDeprecationWarning)
            yield
    finally:
        if printer is not None:
            ray_worker.print_to_stdstream = printer
        if bars:
            transformers_logging.enable_progress_bar()


# Notices the raylet publishes to every driver that say nothing about the user's run. Ray's
# other published errors (a worker or actor that died, a task retried) still reach the console.
BENIGN_RAY_NOTICES = (
    # Many short-lived tasks and fractional-CPU actors on a small machine, as the jobs start by design.
    "worker processes have been started on node",
)


def _without_benign_notices(printer: Any) -> Any:
    """Ray's driver-side printer of published errors (ray._private.worker.print_to_stdstream),
    dropping BENIGN_RAY_NOTICES."""

    def print_to_stdstream(data: dict, *args: Any, **kwargs: Any) -> None:
        lines = data.get("lines") or []
        if data.get("pid") == "raylet" and any(notice in line for line in lines for notice in BENIGN_RAY_NOTICES):
            return
        printer(data, *args, **kwargs)

    return print_to_stdstream


@contextlib.contextmanager
def logger_level(name: str, level: int) -> Iterator[None]:
    """The logger `name` at `level` for the body, restored afterwards."""
    import logging

    logger = logging.getLogger(name)
    saved = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(saved)


@contextlib.contextmanager
def data_context(**settings: Any) -> Iterator[Any]:
    """Ray Data's DataContext with `settings` for the body, restored afterwards.

    The context is global to the process (and handed to the tasks of every dataset executed
    meanwhile), so a job changes it only while it runs, never for the rest of a user's program.
    """
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield context
    finally:
        for name, value in saved.items():
            setattr(context, name, value)


@contextlib.contextmanager
def environ(settings: dict[str, str]) -> Iterator[None]:
    """os.environ with `settings` for the body (those not set already), restored afterwards."""
    added = {k: v for k, v in settings.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


# The local Ray's system config: see _init_local.
LOCAL_SYSTEM_CONFIG = {"enable_metrics_collection": False}


def _init_local(env: dict[str, str], *, state_api: bool) -> str:
    """Start a Ray of this run's own, beside any other Ray on the machine.

    - address "local", not None: None joins a `ray start` cluster that the user may run here.
    - A temp dir of its own, under RAY_TMPDIR or /tmp and short (Ray puts unix sockets below
      it, at most 107 characters a path). It is kept after the run: Ray's logs are there.
    - Its GCS on a port chosen here, named to every worker as RAY_ADDRESS (added to `env`):
      Ray's own helpers that look a cluster up (Train's placement-group cleaner, the state
      API) otherwise pick the last `ray start` cluster, or fail once two Rays run here.
    - Only what a run needs: no metrics collection, and no dashboard (nothing here submits
      jobs to it) unless `state_api`, since Ray serves its state API from the dashboard's
      process. On 2 cores, without it Ray starts in 2.5 s instead of 4.1 s and its idle
      processes take 0.9 s of CPU per 30 s instead of 1.5 s, time the workers get back.

    Returns the directory of Ray's log files.
    """
    import tempfile

    import ray
    from ray._common.utils import get_default_system_temp_dir
    from ray._private.services import get_node_ip_address

    root = tempfile.mkdtemp(prefix="rtst-", dir=get_default_system_temp_dir())
    port = free_port()
    env["RAY_ADDRESS"] = f"{get_node_ip_address()}:{port}"
    # Ray reads the head's GCS port from the environment of the process that starts it.
    saved = os.environ.get("RAY_GCS_SERVER_PORT")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        ray.init(
            address="local",
            _temp_dir=os.path.join(root, "ray"),
            runtime_env={"env_vars": env},
            include_dashboard=state_api,
            _system_config=LOCAL_SYSTEM_CONFIG,
            **ray_console_options(),
        )
    finally:
        if saved is None:
            os.environ.pop("RAY_GCS_SERVER_PORT", None)
        else:
            os.environ["RAY_GCS_SERVER_PORT"] = saved
    if ray.get_runtime_context().gcs_address != env["RAY_ADDRESS"]:
        address = ray.get_runtime_context().gcs_address
        ray.shutdown()
        raise ClusterError(f"the local Ray came up at {address}, not at {env['RAY_ADDRESS']} as asked; rerun")
    return os.path.join(root, "ray", "session_latest", "logs")


def free_port(host: str = "") -> int:
    """A TCP port free on `host` now (all interfaces by default)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _unreachable(address: str, exc: BaseException) -> ClusterError:
    return ClusterError(
        f"could not reach a Ray cluster at {address!r} ({exc}); start one with `ray start --head`, "
        "fix ray_address / RAY_ADDRESS, or unset both to run on a local Ray"
    )


def _check_reachable(address: str) -> None:
    """Fail fast on a `host:port` nobody listens at: ray.init retries it for minutes."""
    import socket

    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", ray:// (Ray Client) and other forms: let ray.init judge them
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=10).close()
    except OSError as exc:
        raise _unreachable(address, exc) from None


def cluster_gpus() -> float:
    """GPUs the connected cluster has in total (0 on a CPU cluster)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))
