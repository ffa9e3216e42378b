"""pfl: personalized federated learning experiments on ECG arrhythmia data."""

from pfl import resolvers as _resolvers  # noqa: F401  (conf/ needs its resolvers)

__version__ = "0.1.0"
