"""`fedper`: FedPer (Arivazhagan et al. 2019): a shared body, each client's own head."""

from pfl.strategies.base import Strategy


class FedPer(Strategy):
    label = "FedPer"
    order = 70
    paper = "Arivazhagan et al., arXiv:1912.00818, 2019"
    has_global = False

    def __init__(self, head: str = "head."):
        self.head = str(head)

    def is_local(self, key: str) -> bool:
        return key.startswith(self.head)
