"""Short forms of strategy hyperparameters: `alpha=0.005` means `strategy.alpha=0.005`.

The rewrite happens on the override strings, before Hydra composes anything, so every view of
the config (`--cfg job`, `--info`, the saved `.hydra/config.yaml`, the Compose API through
`expand`) shows `strategy.alpha: 0.005`. Any hyperparameter of any strategy has a short form,
with no list to keep: a bare key that is not a top-level key or a config group of conf/ is
a strategy key.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

_BARE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")


@functools.cache
def top_level_keys(conf_dir: str) -> frozenset[str]:
    root = Path(conf_dir)
    keys = {p.name for p in root.iterdir() if p.is_dir()} | {"hydra"}
    primary = yaml.safe_load((root / "config.yaml").read_text()) or {}
    return frozenset(keys | {k for k in primary if k != "defaults"})


def expand(overrides: Sequence[str], conf_dir: str | None = None) -> list[str]:
    """Override strings with each short form written out as `strategy.<key>=...`."""
    if conf_dir is None:
        from pfl.cli import CONF_DIR

        conf_dir = CONF_DIR
    known = top_level_keys(str(conf_dir))
    out = []
    for o in overrides:
        m = _BARE.match(o)
        out.append(f"strategy.{o}" if m and m.group(1) not in known else o)
    return out


def rewritten(overrides: Sequence[str], conf_dir: str | None = None) -> list[str]:
    """The short-form keys among overrides (for error messages)."""
    return [n.split("=", 1)[0].removeprefix("strategy.") for o, n in zip(overrides, expand(overrides, conf_dir),
                                                                         strict=True) if o != n]


def search_overrides(args: Sequence[str], conf_dir: str | None = None) -> list[str]:
    """For a search preset whose sweeper has no params of its own (hparams_search=tune): the
    override that makes the chosen strategy's `search` block the sweeper's search space.

    Hydra cannot interpolate the task config into `hydra.sweeper.params` while composing, so
    the pfl command composes once and passes the space as an override.
    """
    if not any(a.startswith("hparams_search=") for a in args):
        return []
    from hydra import compose, initialize_config_dir

    if conf_dir is None:
        from pfl.cli import CONF_DIR

        conf_dir = CONF_DIR
    task = [a for a in args if "=" in a and not a.startswith("-")]
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        try:
            cfg = compose("config", overrides=expand(task, conf_dir), return_hydra_config=True)
        except Exception:  # noqa: BLE001 - Hydra reports it again, in its own words, when it runs
            return []
    params = cfg.hydra.sweeper.get("params") or {}
    search = cfg.strategy.get("search") or {}
    if params or not search:
        return []
    body = ",".join(f"{k}:'{v}'" for k, v in search.items())
    return ["++hydra.sweeper.params={" + body + "}"]
