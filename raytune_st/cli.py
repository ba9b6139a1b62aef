"""`raytune-st <job> --config FILE [key=value ...]`: the command line for every job.

Each job (:mod:`raytune_st.registry`) is a typed config class plus a function that runs it; both
are imported only when their subcommand is chosen, so `raytune-st --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence

from raytune_st.console import VERBOSE_ENV
from raytune_st.errors import RaytuneError, RaytuneWarning
from raytune_st.registry import JOBS, load_job_config

__all__ = ["JOBS", "load_job_config", "main", "run_job"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raytune-st",
        description="Train and mine Sentence-Transformers models at cluster scale with Ray.",
    )
    sub = parser.add_subparsers(dest="job", required=True, metavar="{" + ",".join(JOBS) + "}")
    for name, job in JOBS.items():
        p = sub.add_parser(name, help=job.help, description=job.help)
        p.add_argument("--config", "-c", help="YAML config file")
        p.add_argument("--help-config", action="store_true", help="list every config key with its type and help, then exit")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit without running")
        p.add_argument(
            "--verbose", "-v", action="store_true",
            help=f"also print the output of Ray's processes (workers, Ray Train, Ray Data); same as {VERBOSE_ENV}=1",
        )
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. mine.num_negatives=5")
    return parser


def run_job(job: str, argv: Sequence[str]) -> int:
    """Parse `--config FILE key=value ...` for one job and run it (used by jobs/*.py too)."""
    return main([job, *argv])


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """raytune_st's own warnings as one `warning:` line; everything else as Python prints it."""
    if issubclass(category, RaytuneWarning):
        return f"warning: {message}\n"
    return _python_format_warning(message, category, filename, lineno, line)


_python_format_warning = warnings.formatwarning


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.formatwarning = _format_warning
    args = _parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # read by raytune_st.console wherever the job starts Ray
    job = JOBS[args.job]
    try:
        config_cls, run = job.load()
        if args.help_config:
            from raytune_st.config import describe

            for key, type_name, help_text in describe(config_cls):
                print(f"{key:<40} {type_name:<28} {help_text}")
            return 0
        bad = [o for o in args.overrides if "=" not in o]
        if bad:
            print(
                f"error: unexpected argument {bad[0]!r}; overrides are key=value (flags: --config, --help-config, --print-config, --verbose)",
                file=sys.stderr,
            )
            return 2
        config = load_job_config(args.job, args.config, args.overrides)
        if args.print_config:
            from raytune_st.config import dump_yaml

            print(dump_yaml(config), end="")
            return 0
        run(config)
    except Exception as exc:
        # A user error raised inside a Ray worker arrives wrapped in a RayTaskError, which
        # is also an instance of the error's class but prints the worker's traceback;
        # print the original one line instead.
        cause = _user_error_cause(exc)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return 2
    return 0


def _user_error_cause(exc: BaseException) -> Optional[RaytuneError]:
    """The RaytuneError behind `exc` (through Ray's task wrappers and `raise ... from`), or None for a bug."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError keeps the original here
        if isinstance(inner, BaseException) and inner is not exc:
            exc = inner
            continue
        if isinstance(exc, RaytuneError):
            return exc
        exc = exc.__cause__
    return None


if __name__ == "__main__":
    sys.exit(main())
