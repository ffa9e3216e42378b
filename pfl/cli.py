"""Entry points: thin Hydra apps over conf/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

import pfl  # noqa: F401  (registers the config resolvers)
from pfl.errors import PflError

CONF_DIR = str(Path(os.environ.get("PFL_CONFIG_DIR", Path(__file__).resolve().parent.parent / "conf")))


def fail(exc: PflError) -> None:
    """One line, non-zero exit; the traceback only when HYDRA_FULL_ERROR=1 asks for it."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def train_main(cfg: DictConfig) -> float | None:
    from pfl.run import train

    try:
        result = train(cfg)
    except PflError as exc:
        fail(exc)
    except KeyboardInterrupt:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print("error: interrupted; every completed round is checkpointed: add resume=true to the same "
              "command to continue", file=sys.stderr)
        sys.exit(130)
    # Returned for Hydra sweepers (Optuna): the objective is a validation metric, never test.
    return result.metrics.get(str(cfg.objective))
