"""gatedrnn: fused recurrent and convolutional layers for PyTorch.

Functional ops (``lstm``, ``gru``, ``rnn``) run on one of three backends: Triton kernels for
CUDA tensors, compiled Cython extensions for CPU tensors, and a NumPy float64 oracle as the
reference (see :mod:`gatedrnn.backends`).
"""
from .backends import BackendStatus, available_backends, current_backend, use_backend
from .ops import gru, lstm, rnn

__version__ = "0.1.0"

__all__ = [
    "lstm",
    "gru",
    "rnn",
    "use_backend",
    "current_backend",
    "available_backends",
    "BackendStatus",
    "__version__",
]
