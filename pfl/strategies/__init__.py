"""Personalization strategies: one module and one YAML each."""

from pfl.strategies.base import Adapter, Context, Strategy, Update, snapshot
from pfl.strategies.registry import available, build_adapter, build_strategy

__all__ = ["Adapter", "Context", "Strategy", "Update", "snapshot", "available", "build_adapter", "build_strategy"]
