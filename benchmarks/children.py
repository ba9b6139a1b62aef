"""Run one measured step of a benchmark in a fresh Python process (shared by the benchmarks).

A benchmark script calls itself with ``--child NAME ARGS_JSON``; the child runs ``runs[NAME]``
and prints its result as JSON on its last line. Each step thus has its own memory (peak RSS)
and its own imports, torch threads and Ray session.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def child(script: str, name: str, args: dict) -> dict:
    """Run step `name` of `script` with `args` in a new process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, script, "--child", name, json.dumps(args)],
        env={**os.environ, **ENV},
        cwd=Path(script).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the {name} run failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve(runs: dict[str, Callable[[dict], dict]], name: str, args_json: str) -> None:
    """The child's side: run `runs[name]` and print its result for :func:`child`."""
    print(json.dumps(runs[name](json.loads(args_json))))
