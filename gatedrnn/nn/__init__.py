"""Drop-in replacements for ``torch.nn`` layers, running on gatedrnn's backends."""
from .conv import Conv1d, Conv2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .rnn import GRU, LSTM, RNN
from .sparse import Embedding

__all__ = ["LSTM", "GRU", "RNN", "Conv2d", "Conv1d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Embedding"]
