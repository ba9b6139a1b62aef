"""Helpers of the cluster tests: a handle on a Ray cluster's job server, and the runtime env they submit with."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@dataclass
class Cluster:
    address: str  # the job server, http://127.0.0.1:PORT
    temp_dir: Path
    env: dict
    runtime_env: Path  # cluster/runtime-env.yaml less pip

    def ray(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)

    def _submit_args(self, entrypoint: tuple[str, ...], submission_id: str, runtime_env: Path | None = None) -> list[str]:
        return [
            "job", "submit", "--address", self.address, "--submission-id", submission_id,
            "--working-dir", ".", "--runtime-env", str(runtime_env or self.runtime_env), "--", *entrypoint,
        ]

    def submit(
        self, *entrypoint: str, submission_id: str, timeout: float = 180, runtime_env: Path | None = None
    ) -> subprocess.CompletedProcess:
        """The README's command: blocks until the job ends, exit status 1 when it failed.

        `runtime_env`: another runtime env file than cluster/runtime-env.yaml (less pip).
        """
        return self.ray(*self._submit_args(entrypoint, submission_id, runtime_env), timeout=timeout)

    def submit_in_background(self, *entrypoint: str, submission_id: str) -> subprocess.Popen:
        """The same command, running while the caller injects a fault; read its output with communicate()."""
        return subprocess.Popen(
            [RAY, *self._submit_args(entrypoint, submission_id)], cwd=REPO, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )

    def status(self, submission_id: str) -> str:
        """`ray job status`'s verdict: 'succeeded', 'failed', or its status line."""
        out = self.ray("job", "status", "--address", self.address, submission_id, timeout=60)
        text = out.stdout + out.stderr
        for verdict in ("succeeded", "failed"):
            if f"Job '{submission_id}' {verdict}" in text:
                return verdict
        return text

    def logs(self, submission_id: str) -> str:
        return self.ray("job", "logs", "--address", self.address, submission_id, timeout=60).stdout


def submission_runtime_env(temp_dir: Path, name: str = "runtime-env.yaml", **extra) -> Path:
    """cluster/runtime-env.yaml less its pip list, plus `extra` keys, written under temp_dir."""
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime-env.yaml").read_text())
    runtime_env.pop("pip")
    runtime_env.update(extra)
    path = temp_dir / name
    path.write_text(yaml.safe_dump(runtime_env))
    return path
