"""The tests' harness: servers and nodes on 127.0.0.1 (an S3 API, an MLflow tracking server,
`ray start` nodes), waiting for a condition, a quiet console's noise patterns, and an offline
W&B run read back. Imported by the tests (tests/ is on their path), not shipped in the package.
"""

from __future__ import annotations

import os
import re

from raytune_st.runtime import free_port


# Lines a quiet console never shows (raytune_st.console): a Ray process's forwarded output,
# raylet notices, C++ log lines at error or warning level, Ray Train's once-per-rank report
# lines, and Python warnings from the libraries underneath.
CONSOLE_NOISE = tuple(
    re.compile(pattern)
    for pattern in (
        r"\(\w+ pid=\d+\)",
        r"\(raylet\)",
        r"\b[EW]\d{4}|\] E |\bE \d{2,}|core_worker\.cc",
        r"Reporting training result",
        r"DeprecationWarning|FutureWarning|\bWARNING\b|\bERROR\b",
    )
)


def console_noise(text: str) -> list[str]:
    """The lines of `text` that match CONSOLE_NOISE."""
    return [line for line in text.splitlines() if any(pattern.search(line) for pattern in CONSOLE_NOISE)]


def read_wandb_offline_run(run_dir: str, timeout_s: float = 60.0) -> dict:
    """What an offline W&B run (WANDB_MODE=offline) recorded, read back from its `run-*.wandb` file:
    {"name", "group", "config": {key: value}, "history": {step: {key: value}}, "artifacts":
    [(name, type, [paths])], "exit_code"}. The file is a LevelDB-style log of W&B's protobuf
    records (32 KiB blocks, 7-byte record headers) after a 7-byte ':W&B' header.

    wandb's service may still be writing the file when `run.finish()` has returned: it is read
    again until it holds the run's exit record (or `timeout_s` passes)."""
    import glob
    import time

    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    deadline = time.monotonic() + timeout_s
    while True:
        run = _parse_wandb_log(open(path, "rb").read())
        if (run["exit_code"] is not None and "name" in run) or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _parse_wandb_log(data: bytes) -> dict:
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    block, pos, chunks, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer: too short for a header
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        piece, pos = data[pos : pos + length], pos + length
        if len(piece) < length:  # a record still being written
            break
        if kind == 1:  # a whole record
            chunks.append(piece)
        elif kind == 2:  # first piece
            pending = piece
        elif kind == 3:  # middle
            pending += piece
        else:  # last
            chunks.append(pending + piece)
    run: dict = {"config": {}, "history": {}, "artifacts": [], "exit_code": None}
    for raw in chunks:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(name=record.run.display_name, group=record.run.run_group)
            run["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update if i.key != "_wandb"})
        elif kind == "config":
            run["config"].update({i.key: json.loads(i.value_json) for i in record.config.update if i.key != "_wandb"})
        elif kind == "history":
            items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item}
            run["history"][record.history.step.num] = {k: v for k, v in items.items() if not k.startswith("_")}
        elif kind == "artifact":
            run["artifacts"].append((record.artifact.name, record.artifact.type, [m.path for m in record.artifact.manifest.contents]))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def wait_for(predicate, timeout: float, what: str) -> None:
    """Until `predicate()` holds, checked every 0.5 s; AssertionError naming `what` after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _wait_for(url: str, process, timeout: float, stop, failure: str) -> None:
    """Until `url` answers; `stop()` and RuntimeError(`failure`) when `process` exits or `timeout` passes."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop()
                raise RuntimeError(failure)
            time.sleep(0.2)


class S3TestServer:
    """An S3 API on 127.0.0.1 (moto's server, from the `dev` extra) for tests of object storage.

    Start it, create buckets, and point every S3 client at it with :meth:`env`: pyarrow's
    filesystems (which Ray Data, Ray Train and raytune_st use) honour AWS_ENDPOINT_URL. Stop
    it with :meth:`stop`; as a context manager it stops itself.
    """

    ACCESS_KEY = "raytune-st-test-key"
    SECRET_KEY = "raytune-st-test-secret"

    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self._process = None

    def env(self) -> dict[str, str]:
        """The environment variables that send S3 clients (pyarrow, boto3) to this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            # pyarrow would otherwise ask the EC2 metadata service for credentials first.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def start(self, timeout: float = 60) -> "S3TestServer":
        import subprocess
        import sys

        server = os.path.join(os.path.dirname(sys.executable), "moto_server")
        if not os.path.exists(server):
            raise RuntimeError("moto_server is not installed; pip install 'moto[server]' (raytune_st's dev extra)")
        self._process = subprocess.Popen(
            [server, "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        _wait_for(f"{self.endpoint}/moto-api/", self._process, timeout, self.stop, f"moto_server did not answer at {self.endpoint}")
        return self

    def client(self):
        import boto3

        env = self.env()
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=env["AWS_REGION"],
            aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY,
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket `name`; returns its URI, s3://name."""
        self.client().create_bucket(Bucket=name)
        return f"s3://{name}"

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except Exception:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> "S3TestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MlflowTestServer:
    """A real MLflow tracking server on 127.0.0.1 (``mlflow server``, from the `dev` extra) with a
    SQLite backend store and artifacts served over HTTP, all under `root`.

    Clients reach it with ``MLFLOW_TRACKING_URI`` = :attr:`uri`; :meth:`stop` ends the server and
    the workers it started (they share its process group).
    """

    def __init__(self, root: str, host: str = "127.0.0.1", port: int | None = None):
        self.root = root
        self.host = host
        self.port = port or free_port(host)
        self.uri = f"http://{host}:{self.port}"
        self._process = None

    def start(self, timeout: float = 120) -> "MlflowTestServer":
        import subprocess
        import sys

        os.makedirs(self.root, exist_ok=True)
        self._log = open(os.path.join(self.root, "server.log"), "wb")
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server", "--host", self.host, "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{os.path.join(self.root, 'mlflow.db')}",
                "--artifacts-destination", os.path.join(self.root, "artifacts"),
            ],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        _wait_for(f"{self.uri}/health", self._process, timeout, self.stop, f"mlflow server did not answer at {self.uri}; see {self.root}/server.log")
        return self

    def stop(self) -> None:
        import signal

        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except Exception:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "MlflowTestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RayNode:
    """One `ray start --block` node on this machine, with a temp dir of its own, for tests.

    A head (no ``head`` given) gets free ports for its GCS, dashboard (the job server) and
    agents, and a token of its own for Ray's token authentication; a worker node joins
    ``head`` with the head's environment plus ``env``. :meth:`stop` signals only this node's
    process group (and anything left under its temp dir): ``ray stop`` would stop every Ray
    on the machine.
    """

    def __init__(
        self,
        temp_dir: str,
        *,
        head: "RayNode | None" = None,
        num_cpus: float = 2,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
    ):
        import json
        import secrets
        import sys

        self.temp_dir = temp_dir
        self.is_head = head is None
        os.makedirs(temp_dir, exist_ok=True)
        if head is None:
            token = os.path.join(temp_dir, "auth_token")
            with open(token, "w") as handle:
                handle.write(secrets.token_hex(32))
            base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
            # Ray 2.60 turns token authentication on for a head that finds ~/.ray/auth_token;
            # pin it on, with this cluster's own token, for its nodes and every CLI call alike.
            base.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=token, RAY_USAGE_STATS_ENABLED="0")
        else:
            base = dict(head.env)
        self.env = {**base, **(env or {})}
        self.env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{self.env.get('PATH', '')}"
        self.ray = os.path.join(os.path.dirname(sys.executable), "ray")
        host = "127.0.0.1"
        args = [self.ray, "start", "--block", "--disable-usage-stats", "--num-cpus", str(num_cpus), "--temp-dir", temp_dir]
        args += ["--node-ip-address", host, "--dashboard-agent-listen-port", str(free_port(host))]
        args += ["--metrics-export-port", str(free_port(host)), "--runtime-env-agent-port", str(free_port(host))]
        if resources:
            args += ["--resources", json.dumps(resources)]
        if head is None:
            port, dashboard = free_port(host), free_port(host)
            self.gcs_address = f"{host}:{port}"
            self.dashboard = f"http://{host}:{dashboard}"
            args += ["--head", "--port", str(port), "--dashboard-host", host, "--dashboard-port", str(dashboard)]
            args += ["--include-dashboard", "true", "--ray-client-server-port", str(free_port(host))]
        else:
            self.gcs_address = head.gcs_address
            self.dashboard = head.dashboard
            args += ["--address", head.gcs_address]
        self._args = args
        self._process = None
        self._log = None

    def start(self, timeout: float = 120) -> "RayNode":
        import subprocess
        import time

        os.makedirs(self.temp_dir, exist_ok=True)
        self._log = open(os.path.join(self.temp_dir, "ray-start.log"), "w")
        self._process = subprocess.Popen(self._args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None or time.monotonic() > deadline:
                log = open(os.path.join(self.temp_dir, "ray-start.log")).read()[-3000:]
                self.stop()
                raise RuntimeError(f"`{' '.join(self._args[:3])}` did not come up:\n{log}")
            time.sleep(1)
        return self

    def _ready(self) -> bool:
        import json
        import subprocess

        if self.is_head:
            probe = [self.ray, "job", "list", "--address", self.dashboard]
            return subprocess.run(probe, env=self.env, capture_output=True, timeout=60).returncode == 0
        if self.node_id() is None:
            return False
        try:
            nodes = json.loads(self._list("nodes"))
        except RuntimeError:  # the state API answers once the head's dashboard is up
            return False
        return any(n["node_id"] == self.node_id() and n["state"] == "ALIVE" for n in nodes)

    def _list(self, what: str, *args: str) -> str:
        import subprocess

        out = subprocess.run(
            [self.ray, "list", what, "--address", self.gcs_address, "--format", "json", "--limit", "10000", *args],
            env=self.env, capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"`ray list {what}` failed: {out.stderr[-2000:]}")
        # An empty list prints "No resource in the cluster" instead of [].
        return "[]" if out.stdout.strip().startswith("No resource") else out.stdout

    def node_id(self) -> str | None:
        """This node's Ray node id, read from its raylet's log (None until the raylet has started)."""
        import glob
        import re

        for path in glob.glob(os.path.join(self.temp_dir, "session_*", "logs", "raylet.out")):
            match = re.search(r"[Nn]ode[ _]?[Ii][Dd][:=]? ?([0-9a-f]{56})", open(path, errors="replace").read())
            if match:
                return match.group(1)
        return None

    def list_state(self, what: str, *args: str) -> list[dict]:
        """`ray list WHAT --detail`'s rows (actors, tasks, nodes, jobs) for the whole cluster."""
        import json

        return json.loads(self._list(what, "--detail", *args))

    def processes(self) -> list[int]:
        """Process ids whose command lines name this node's temp dir (its raylet, workers, agents)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/cmdline", "rb") as handle:
                        if self.temp_dir.encode() in handle.read():
                            pids.append(int(entry))
                except OSError:
                    pass
        return pids

    def kill(self) -> None:
        """SIGKILL the whole node at once, as when its machine dies: raylet, workers and all."""
        import signal

        for pid in set(self.processes()) | ({self._process.pid} if self._process else set()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._process is not None:
            self._process.wait()

    def stop(self) -> None:
        import signal
        import subprocess

        if self._process is None:
            return
        # `ray start --block` and the processes it started share one new process group; stop
        # them at once (one by one, Ray's own shutdown takes over 30 s), then what is left.
        try:
            os.killpg(self._process.pid, signal.SIGTERM)
            self._process.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        self.kill()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "RayNode":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
