"""Beat classifiers: (batch, channels, window [+ rr_features]) -> (batch, n_classes) logits."""

from pfl.models.cnn import SmallCNN
from pfl.models.cnn_lstm import CNNLSTM
from pfl.models.resnet import ResNet1D

__all__ = ["SmallCNN", "CNNLSTM", "ResNet1D"]
