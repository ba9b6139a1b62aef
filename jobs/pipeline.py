"""The retriever flywheel (rounds of mine, teacher-score, denoise, train, evaluate), as one Ray job.

On a running cluster, from the repository root:

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime-env.yaml -- python jobs/pipeline.py --config examples/configs/pipeline-debian.yaml

Overrides follow the config: `... pipeline-debian.yaml rounds=3 output_dir=s3://bucket/flywheel`.
The same job runs locally as `raytune-st pipeline --config ...`.
"""

import sys

from raytune_st.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("pipeline", sys.argv[1:]))
