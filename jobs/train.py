"""Fine-tune a bi-encoder or cross-encoder on a Ray cluster (see raytune_st.train.job).

On a running cluster, from the repository root:

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime-env.yaml -- python jobs/train.py --config examples/configs/train-mnrl-debian.yaml

Any `key=value` after the config overrides it, e.g. `scaling.num_workers=4 scaling.use_gpu=true
args.per_device_train_batch_size=64 run.storage_path=s3://bucket/runs`. A rerun with the same
run.name and run.storage_path resumes from the latest checkpoint when its config and data are
unchanged; otherwise it is refused with the differences named (run.overwrite=true starts afresh).
The same job runs locally as `raytune-st train --config ...`.
"""

import sys

from raytune_st.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("train", sys.argv[1:]))
