"""`local`: every client trains alone and nothing is shared: the floor personalization must beat."""

from pfl.strategies.base import Strategy


class Local(Strategy):
    label = "Local"
    order = 5
    paper = "no federation (each client's own model)"
    has_global = False

    def is_local(self, key: str) -> bool:
        return True
