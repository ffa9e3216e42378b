"""pfl: personalized federated learning experiments on ECG arrhythmia data."""

import os as _os

# MLflow 3 reports usage to its maintainers by default. pfl runs on hospital machines that may
# have no route out and should send nothing nobody asked for: off unless the user sets
# MLFLOW_DISABLE_TELEMETRY=false (read when mlflow is imported, so set before any import of it).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pfl import resolvers as _resolvers  # noqa: E402, F401  (conf/ needs its resolvers)

__version__ = "0.1.0"
