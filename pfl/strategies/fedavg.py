"""`none`: plain FedAvg; every client is evaluated with the global model."""

from pfl.strategies.base import Strategy
from pfl.strategies.registry import register


@register("none")
class FedAvg(Strategy):
    personalizes = False
