"""`make demo`: mine -> train -> evaluate on the bundled sample, on a local Ray, offline.

1. Evaluate all-MiniLM-L6-v2 on the Debian dev sample: does each package synopsis retrieve
   its own description among 2,300 passages? (the "before" figure)
2. Mine hard negatives for the 2,000 train pairs (sentence-transformers' mine_hard_negatives
   semantics, on an embedding actor pool and a FAISS index actor); prints the statistics table.
3. Train the model with MultipleNegativesRankingLoss on the mined triplets, on two Ray Train
   workers, evaluating on the dev sample as it goes.
4. Evaluate the trained model on the same dev sample (the "after" figure).

Every step is one job you can also run alone, with the same config:
    raytune-st evaluate --config examples/configs/evaluate-debian.yaml
    raytune-st mine --config examples/configs/mine-debian.yaml
    raytune-st train --config examples/configs/train-mnrl-debian.yaml
Outputs go to demo-output/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import raytune_st  # noqa: E402
from raytune_st.runtime import ray_session  # noqa: E402

CONFIGS = Path(__file__).resolve().parent / "configs"
METRIC = "debian-dev_cosine_ndcg@10"
# The demo trains for a few minutes on a laptop CPU; the example config trains a full epoch.
DEMO_TRAINING = ["args.max_steps=40", "args.eval_steps=20", "args.save_steps=20", "args.logging_steps=10"]


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main() -> int:
    os.chdir(Path(__file__).resolve().parents[1])  # configs use paths relative to the repo root
    with ray_session():  # one local Ray for every step
        step("1/4 evaluate all-MiniLM-L6-v2 on the Debian dev sample")
        before = raytune_st.evaluate(CONFIGS / "evaluate-debian.yaml", ["output.path=demo-output/evaluate-before"])

        step("2/4 mine hard negatives for the 2,000 train pairs")
        raytune_st.mine(CONFIGS / "mine-debian.yaml")

        step("3/4 train on the mined triplets with MultipleNegativesRankingLoss, two Ray Train workers")
        raytune_st.train(CONFIGS / "train-mnrl-debian.yaml", DEMO_TRAINING)

        step("4/4 evaluate the trained model")
        after = raytune_st.evaluate(
            CONFIGS / "evaluate-debian.yaml", ["model=demo-output/model/final", "output.path=demo-output/evaluate-after"]
        )
    print(f"\nNDCG@10 on the Debian dev sample: {before[METRIC]:.4f} before, {after[METRIC]:.4f} after training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
