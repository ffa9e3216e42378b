"""Importing this module registers the built-in strategies."""

from pfl.strategies import fedavg, finetune, perfedavg  # noqa: F401
