"""Sweep losses and hyperparameters with Ray Tune; every trial is a whole Ray Train run.

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime-env.yaml \
        -- python jobs/tune.py --config examples/configs/tune-debian.yaml

Re-submitting the same command after an interruption resumes the sweep.
"""

import sys

from raytune_st.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("tune", sys.argv[1:]))
