"""pfl: personalized federated learning experiments on ECG arrhythmia data."""

import os

# Idle OpenMP threads sleep instead of spinning. Spinning threads fight any other busy process
# (parallel sweep jobs, Ray workers, a shared machine): a 2-thread training step then takes up
# to 10x longer than a 1-thread one (BENCHMARKS.md, threads). Read once, when torch loads, so it
# only acts if pfl is imported first; set OMP_WAIT_POLICY yourself to choose otherwise.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pfl import resolvers as _resolvers  # noqa: E402, F401  (conf/ needs its resolvers)

__version__ = "0.1.0"
