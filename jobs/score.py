"""Score (query, passage, ...) rows with a cross-encoder or a bi-encoder, as a Ray job.

On a running cluster, from the repository root:

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime-env.yaml -- python jobs/score.py --config examples/configs/score-debian.yaml

Overrides follow the config: `... score-debian.yaml model=s3://bucket/run/model output.path=s3://bucket/run/scored`.
The same job runs locally as `raytune-st score --config ...`.
"""

import sys

from raytune_st.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("score", sys.argv[1:]))
