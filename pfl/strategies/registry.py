"""Strategies from config: a `_target_` class (every built-in YAML has one), or a name that an
installed package registers under the `pfl.strategies` entry-point group.

No list of built-ins lives in code: a strategy is its module and its YAML in conf/strategy/.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from pfl.errors import ConfigError
from pfl.strategies.base import Adapter, Strategy

#: keys of a strategy config that are not constructor arguments
META_KEYS = ("name", "_target_", "search", "weighting")
WEIGHTINGS = ("samples", "uniform")


def config_names(conf_dir: str | Path | None = None) -> list[str]:
    """Strategy options shipped in conf/strategy (or another config dir)."""
    if conf_dir is None:
        from pfl.cli import CONF_DIR

        conf_dir = CONF_DIR
    return sorted(p.stem for p in (Path(conf_dir) / "strategy").glob("*.yaml"))


def available() -> dict[str, Any]:
    """Names a strategy can be chosen by: the YAML options and entry points."""
    found: dict[str, Any] = {n: "conf/strategy" for n in config_names()}
    for ep in _entry_points().values():
        found.setdefault(ep.name, ep)
    return found


def _plain(cfg: Mapping | DictConfig | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def _load(key: str, target: str) -> type:
    try:
        return get_class(target)
    except Exception as e:  # hydra wraps import errors in several types
        raise ConfigError(f"{key}._target_", target, "an importable Strategy subclass",
                          hint=str(e).splitlines()[0]) from None


def build_adapter(cfg: Mapping | DictConfig | None) -> Adapter | None:
    params = _plain(cfg)
    params.pop("name", None)
    target = params.pop("_target_", None)
    if not target:
        return None
    cls = _load("adapt", target)
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise ConfigError("adapt._target_", target, "a subclass of pfl.strategies.Adapter")
    try:
        return cls(**params)
    except TypeError as e:
        raise ConfigError("adapt", sorted(params), f"the hyperparameters of {target}", hint=str(e)) from None


def cfg_items(cfg: Mapping | DictConfig) -> dict[str, Any]:
    return _plain(cfg)


def _shipped(name: str) -> dict[str, Any]:
    """conf/strategy/<name>.yaml as a plain dict."""
    from pfl.cli import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "strategy" / f"{name}.yaml"))


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="pfl.strategies")}


def _class_named(name: str) -> type | None:
    """The class a shipped YAML or an entry point builds under `name` (None: no such name, or
    a YAML without its own `_target_`, such as one composed from another)."""
    if name in config_names():
        target = _shipped(name).get("_target_")
        return _load("strategy", target) if target else None
    options = _entry_points()
    return options[name].load() if name in options else None


def build_strategy(cfg: Mapping | DictConfig, adapt: Mapping | DictConfig | None = None) -> Strategy:
    params = _plain(cfg)
    name = params.pop("name", None)
    target = params.pop("_target_", None)
    params.pop("search", None)  # the tuning space (hparams_search=tune), not an argument
    weighting = params.pop("weighting", None)
    if target is None and name in config_names():
        # By name from the API: the shipped YAML, with the given keys on top.
        shipped = {k: v for k, v in _shipped(name).items() if k != "defaults"}
        return build_strategy({**shipped, **cfg_items(cfg)}, adapt)
    if target is not None:
        cls = _load("strategy", target)
        # `strategy.name=fedprox` on top of another strategy would run that one under FedProx's
        # name, in MLflow and every report: a name that belongs to another strategy is refused.
        named = _class_named(name) if name else None
        if named is not None and not issubclass(cls, named):  # a subclass (a test's variant) keeps it
            raise ConfigError("strategy.name", name, f"a name that no other strategy has, or the name of a "
                              f"strategy that strategy._target_ subclasses (strategy._target_ is {target}; "
                              f"{name!r} is {named.__module__}.{named.__qualname__})",
                              hint=f"strategy.name only names the strategy a run uses; to run {name}, "
                                   f"choose it: strategy={name}")
    else:
        options = _entry_points()
        if name not in options:
            raise ConfigError("strategy.name", name, "one of " + ", ".join(sorted(available()))
                              + " (or a strategy config with a _target_)")
        cls = options[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError("strategy", target or name, "a subclass of pfl.strategies.Strategy")
    try:
        strategy = cls(**params)
    except TypeError as e:
        raise ConfigError("strategy", sorted(params), f"the hyperparameters of {cls.__name__}",
                          hint=str(e)) from None
    if name:
        strategy.name = name
    if weighting is not None:
        if weighting not in WEIGHTINGS:
            raise ConfigError("strategy.weighting", weighting, " | ".join(WEIGHTINGS))
        strategy.weighting = weighting
    strategy.adapter = build_adapter(adapt)
    return strategy
