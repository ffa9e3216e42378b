"""`lgfedavg`: LG-FedAvg (Liang et al. 2020): each client's own body (representation), a shared head."""

from pfl.strategies.base import Strategy


class LGFedAvg(Strategy):
    label = "LG-FedAvg"
    order = 90
    paper = "Liang et al., arXiv:2001.01523, 2020"
    has_global = False

    def __init__(self, head: str = "head."):
        self.head = str(head)

    def is_local(self, key: str) -> bool:
        return not key.startswith(self.head)
