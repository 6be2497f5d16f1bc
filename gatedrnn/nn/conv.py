"""Drop-in ``torch.nn.Conv2d`` / ``torch.nn.Conv1d`` running gatedrnn's convolution.

The modules subclass torch's, so arguments, checks, parameter names (``weight``, ``bias``),
shapes, initialisation (kaiming-uniform with a=sqrt(5), bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))),
``extra_repr`` and ``load_state_dict`` in both directions are torch's own; ``isinstance(m,
torch.nn.Conv2d)`` holds, so initialisation loops written for torch models apply. Only the
forward differs: it calls :func:`gatedrnn.ops.conv.conv2d` on the chosen ``backend``.
Non-zero ``padding_mode`` (reflect, replicate, circular) pads with ``torch.nn.functional.pad``
first, as torch does, then convolves without padding.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends import _check_name
from ..ops.conv import conv1d, conv2d

__all__ = ["Conv2d", "Conv1d"]


def _backend_argument(backend: Optional[str]) -> Optional[str]:
    return None if backend is None else _check_name(backend, "backend")


class _ConvOnBackend:
    """What Conv2d and Conv1d add to torch's classes: the forward on gatedrnn's op."""

    backend: Optional[str]

    @staticmethod
    def _convolution(*args, **kwargs) -> Tensor:
        raise NotImplementedError

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        padding = self.padding
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return self._convolution(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                                 backend=self.backend)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (f", backend={self.backend!r}" if self.backend is not None else "")


class Conv2d(_ConvOnBackend, torch.nn.Conv2d):
    """``torch.nn.Conv2d`` with the same arguments plus ``backend`` ("triton", "cython",
    "numpy", or None for the usual choice, see :mod:`gatedrnn.backends`).

    Shapes: input (N, C_in, H, W) or (C_in, H, W) -> (N, C_out, H_out, W_out).
    """

    _convolution = staticmethod(conv2d)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, backend: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.backend = _backend_argument(backend)


class Conv1d(_ConvOnBackend, torch.nn.Conv1d):
    """``torch.nn.Conv1d`` with the same arguments plus ``backend``.

    Shapes: input (N, C_in, L) or (C_in, L) -> (N, C_out, L_out).
    """

    _convolution = staticmethod(conv1d)

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, backend: Optional[str] = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.backend = _backend_argument(backend)
