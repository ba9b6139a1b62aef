"""Run sentence-transformers evaluators on a model, as a Ray job.

On a running cluster, from the repository root:

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime-env.yaml -- python jobs/evaluate.py --config examples/configs/evaluate-debian.yaml

Overrides follow the config: `... evaluate-debian.yaml model=s3://bucket/run/model output.path=s3://bucket/run/eval`.
The same job runs locally as `raytune-st evaluate --config ...`.
"""

import sys

from raytune_st.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("evaluate", sys.argv[1:]))
