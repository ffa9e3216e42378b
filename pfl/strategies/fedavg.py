"""`none`: FedAvg (McMahan et al. 2017); every client is evaluated with the global model."""

from pfl.strategies.base import Strategy


class FedAvg(Strategy):
    label = "FedAvg"
    order = 10
    paper = "McMahan et al., AISTATS 2017"
    baseline = True
    personalizes = False
