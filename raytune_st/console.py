"""What a job prints: its own progress lines, and Ray's output only when asked for.

By default a job's console holds raytune_st's lines (each stage's progress and result, the
training steps, evaluations and checkpoints) and the warnings it raises itself. Everything the
Ray processes print (worker output, Ray Train's per-rank reports, raylet and Ray Data notices,
C++ log lines) stays in Ray's log files, whose directory the job names once. ``raytune-st
--verbose`` or ``RAYTUNE_ST_VERBOSE=1`` streams all of it to the console as well.

:class:`Progress` is the line every long stage prints while it runs: done of total, rate and
time left, at most every few seconds. Pure logic, no Ray.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

VERBOSE_ENV = "RAYTUNE_ST_VERBOSE"


def verbose() -> bool:
    """Whether Ray's own output reaches the console (``--verbose`` or RAYTUNE_ST_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def ray_console_options() -> dict:
    """ray.init's console settings: the Ray processes' output reaches the driver only when verbose,
    and Ray's driver-side logger says only errors otherwise."""
    return {"log_to_driver": verbose(), "logging_level": "INFO" if verbose() else "ERROR"}


def format_seconds(seconds: float) -> str:
    """A duration as a person reads it: '42 s', '3 min 05 s', '2 h 10 min'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def time_left(done: float, total: float, elapsed: float) -> Optional[float]:
    """Seconds until `total` at the rate so far (None before any progress)."""
    if done <= 0 or elapsed <= 0:
        return None
    return (total - done) * elapsed / done


class Progress:
    """`[<job>] <stage>: N of M <things> (P%), R <things>/s, about T left`, at most every `every_s` seconds.

    The last step prints nothing: the stage's own result line follows it.
    """

    def __init__(
        self,
        label: str,
        total: int,
        things: str,
        *,
        every_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.things, self.every_s, self.clock = label, total, things, every_s, clock
        self.done = 0
        self.began = self.last = clock()

    def advance(self, n: int) -> Optional[str]:
        """Count `n` more done; print and return the line when one is due."""
        self.done += n
        now = self.clock()
        if now - self.last < self.every_s or self.done >= self.total:
            return None
        self.last = now
        elapsed = max(now - self.began, 1e-9)
        left = time_left(self.done, self.total, elapsed)
        line = (
            f"{self.label}: {self.done:,} of {self.total:,} {self.things} ({100 * self.done / self.total:.0f}%), "
            f"{self.done / elapsed:,.1f} {self.things}/s, about {format_seconds(left or 0)} left"
        )
        print(line, flush=True)
        return line
