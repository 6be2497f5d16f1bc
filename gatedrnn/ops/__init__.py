"""Functional ops with autograd, registered as ``torch.library`` custom ops (``gatedrnn::*``)."""
from .gru import gru
from .lstm import lstm
from .rnn import rnn

__all__ = ["lstm", "gru", "rnn"]
