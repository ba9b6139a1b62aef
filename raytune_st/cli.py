"""`raytune-st <job> --config FILE [key=value ...]`: the command line for every job.

Each job is a typed config class plus a function that runs it; both are imported only when
their subcommand is chosen, so `raytune-st --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from raytune_st.errors import RaytuneError


@dataclass(frozen=True)
class Job:
    help: str
    config: str  # "module:ConfigClass"
    run: str  # "module:function(config)"

    def load(self) -> tuple[type, Callable[[Any], Any]]:
        def resolve(spec: str) -> Any:
            module, _, name = spec.partition(":")
            return getattr(importlib.import_module(module), name)

        return resolve(self.config), resolve(self.run)


JOBS: dict[str, Job] = {
    "mine": Job(
        help="add hard negatives to (anchor, positive) pairs, like sentence-transformers' mine_hard_negatives",
        config="raytune_st.mining.config:MineConfig",
        run="raytune_st.mining.job:mine",
    ),
    "evaluate": Job(
        help="run sentence-transformers evaluators on a model, on a Ray worker",
        config="raytune_st.evaluation.config:EvaluateConfig",
        run="raytune_st.evaluation.job:evaluate",
    ),
    "train": Job(
        help="fine-tune a bi-encoder or cross-encoder with sentence-transformers losses on Ray Train",
        config="raytune_st.train.config:TrainConfig",
        run="raytune_st.train.job:train",
    ),
    "tune": Job(
        help="sweep losses and hyperparameters with Ray Tune; every trial is a whole Ray Train run",
        config="raytune_st.tune.config:TuneConfig",
        run="raytune_st.tune.job:tune",
    ),
}


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
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. mine.num_negatives=5")
    return parser


def load_job_config(job: str, config_path: Optional[str], overrides: Sequence[str] = ()) -> Any:
    """The typed, validated config of `job` from a YAML file plus overrides."""
    from raytune_st.config import load_config

    config_cls, _ = JOBS[job].load()
    return load_config(config_cls, config_path, overrides)


def run_job(job: str, argv: Sequence[str]) -> int:
    """Parse `--config FILE key=value ...` for one job and run it (used by jobs/*.py too)."""
    return main([job, *argv])


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
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
                f"error: unexpected argument {bad[0]!r}; overrides are key=value (flags: --config, --help-config, --print-config)",
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
