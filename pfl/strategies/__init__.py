"""Personalization strategies: one module and one YAML each, found by name."""

from pfl.strategies.base import Context, Strategy, Update, snapshot
from pfl.strategies.registry import available, build_strategy, register

__all__ = ["Context", "Strategy", "Update", "snapshot", "available", "build_strategy", "register"]
