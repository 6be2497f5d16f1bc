"""gatedrnn: fused recurrent and convolutional layers for PyTorch.

Functional ops (``lstm``, ``gru``, ``rnn``, ``conv2d``, ``conv1d``, ``max_pool2d``,
``avg_pool2d``, ``adaptive_avg_pool2d``, ``embedding``) run on one of three backends: Triton
kernels for CUDA tensors, compiled Cython extensions for CPU tensors, and a NumPy float64 oracle
as the reference (see :mod:`gatedrnn.backends`). ``gatedrnn.nn`` holds drop-in modules.
"""
from .backends import BackendStatus, available_backends, current_backend, use_backend
from .ops.conv import conv1d, conv2d
from .ops.embedding import embedding
from .ops.gru import gru
from .ops.lstm import lstm
from .ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from .ops.rnn import rnn
from . import nn  # noqa: E402  (after the ops it is built on)

__version__ = "0.1.0"

__all__ = [
    "lstm",
    "gru",
    "rnn",
    "conv2d",
    "conv1d",
    "max_pool2d",
    "avg_pool2d",
    "adaptive_avg_pool2d",
    "embedding",
    "nn",
    "use_backend",
    "current_backend",
    "available_backends",
    "BackendStatus",
    "__version__",
]
