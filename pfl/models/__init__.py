"""Beat classifiers: (batch, 1, window) -> (batch, n_classes) logits."""

from pfl.models.cnn import SmallCNN
from pfl.models.cnn_lstm import CNNLSTM

__all__ = ["SmallCNN", "CNNLSTM"]
