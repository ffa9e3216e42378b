"""Strategies by name: built-ins, `pfl.strategies` entry points, or a `_target_` class."""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from pfl.errors import ConfigError
from pfl.strategies.base import Strategy

_BUILTIN: dict[str, type[Strategy]] = {}


def register(name: str):
    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        _BUILTIN[name] = cls
        return cls

    return deco


def available() -> dict[str, type[Strategy] | Any]:
    import pfl.strategies.builtin  # noqa: F401  (registers the built-ins)

    found: dict[str, Any] = dict(_BUILTIN)
    for ep in entry_points(group="pfl.strategies"):
        found.setdefault(ep.name, ep)
    return found


def build_strategy(cfg: Mapping | DictConfig) -> Strategy:
    params: dict[str, Any] = (
        OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    )
    name = params.pop("name", None)
    target = params.pop("_target_", None)
    if target is not None:
        try:
            cls = get_class(target)
        except Exception as e:  # hydra wraps import errors in several types
            raise ConfigError("strategy._target_", target, "an importable Strategy subclass",
                              hint=str(e).splitlines()[0]) from None
    else:
        options = available()
        if name not in options:
            raise ConfigError("strategy.name", name, "one of " + ", ".join(sorted(options)))
        cls = options[name]
        if not isinstance(cls, type):
            cls = cls.load()
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError("strategy", target or name, "a subclass of pfl.strategies.Strategy")
    strategy = cls(**params)
    if name:
        strategy.name = name
    return strategy
