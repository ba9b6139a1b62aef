"""Mine hard negatives on a Ray cluster (see raytune_st.mining.job).

    ray job submit --address http://HEAD:8265 --working-dir . --runtime-env cluster/runtime-env.yaml -- python jobs/mine.py --config examples/configs/mine-debian.yaml

Any `key=value` after the config overrides it, e.g. `index.shards=4 mine.num_negatives=5`.
"""

import sys

from raytune_st.cli import run_job

if __name__ == "__main__":
    sys.exit(run_job("mine", sys.argv[1:]))
