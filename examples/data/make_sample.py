"""Rebuild the bundled Debian sample from ../shared/data (see README.md here for provenance).

    python examples/data/make_sample.py
"""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1].parent / "shared" / "data"
SIZES = {"train": 2000, "dev": 300}

for split, size in SIZES.items():
    table = pq.read_table(SHARED / f"debian-{split}.parquet")
    rows = np.sort(np.random.default_rng(0).choice(table.num_rows, size=size, replace=False))
    sample = table.take(rows).select(["query", "passage", "package"])
    pq.write_table(sample, HERE / f"debian-{split}-sample.parquet", compression="zstd")
    print(f"debian-{split}-sample.parquet: {sample.num_rows} rows")
