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


def _check_short_forms(args: list[str]) -> None:
    """A short form the chosen strategy lacks: one pfl error listing the strategy's keys.

    Without this, Hydra's own message ("Key 'alpha' is not in struct") would not say what the
    strategy does take. Single runs only; a sweep reports Hydra's message per job.
    """
    from pfl.shortforms import rewritten

    task = [a for a in args if "=" in a and not a.startswith(("-", "hydra"))]
    short = rewritten(task)
    if not short or any(a in ("-m", "--multirun") for a in args):
        return
    from hydra import compose, initialize_config_dir

    from pfl.shortforms import expand

    plain = [a for a in task if a.split("=", 1)[0] not in short]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        try:
            strategy = compose("config", overrides=expand(plain)).strategy
        except Exception:  # noqa: BLE001 - any other problem: Hydra reports it in its own words
            return
    have = [k for k in strategy if k not in ("name", "_target_", "search")]
    for key in short:
        if key not in strategy:
            value = next(a.split("=", 1)[1] for a in task if a.split("=", 1)[0] == key)
            fail(PflError(f"{key}={value} is not allowed: expected a hyperparameter of strategy "
                          f"{strategy.get('name')!r}: " + (", ".join(have) if have else "it has none")
                          + f" (a short form of strategy.{key})"))


def with_short_forms(app):
    """Wrap a Hydra app so `key=value` short forms reach Hydra as `strategy.key=value`."""
    def main(*cfg):
        if cfg:  # a composed config passed in (tests, notebooks): Hydra's own pass-through
            return app(*cfg)
        from pfl.shortforms import expand, search_overrides

        _check_short_forms(sys.argv[1:])
        sys.argv[1:] = search_overrides(sys.argv[1:]) + expand(sys.argv[1:])
        return app()
    main.__doc__ = app.__doc__
    return main


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _train(cfg: DictConfig) -> float | None:
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


train_main = with_short_forms(_train)
