"""Ray Tune sweeps over whole distributed training runs."""

import sys as _sys

from raytune_st import JobPackage

# `raytune_st.tune(config)` runs the tune job (see raytune_st.JobPackage).
_sys.modules[__name__].__class__ = JobPackage
