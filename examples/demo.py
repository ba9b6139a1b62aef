"""`make demo`: the toolkit end to end on the bundled sample, on a local Ray, offline.

1. Evaluate all-MiniLM-L6-v2 on the Debian dev sample: does each package synopsis
   retrieve its own description among 2,300 passages?

Outputs go to demo-output/. Each step is one job you can also run alone, e.g.
    raytune-st evaluate --config examples/configs/evaluate-debian.yaml
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from raytune_st.cli import load_job_config  # noqa: E402
from raytune_st.evaluation.job import evaluate  # noqa: E402
from raytune_st.runtime import ray_session  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main() -> int:
    os.chdir(Path(__file__).resolve().parents[1])  # configs use paths relative to the repo root
    with ray_session():  # one local Ray for every step
        step("1. evaluate all-MiniLM-L6-v2 on the Debian dev sample")
        metrics = evaluate(load_job_config("evaluate", CONFIGS / "evaluate-debian.yaml", []))
    print(f"\nNDCG@10 on the dev sample: {metrics['debian-dev_cosine_ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
