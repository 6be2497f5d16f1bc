"""Drop-in ``torch.nn.MaxPool2d`` / ``AvgPool2d`` / ``AdaptiveAvgPool2d`` on gatedrnn's pooling.

Subclasses of torch's modules (same arguments, attributes and ``extra_repr``; no parameters)
whose forward calls :mod:`gatedrnn.ops.pool` on the chosen ``backend``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import _check_name
from ..ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d

__all__ = ["MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d"]


def _backend_argument(backend: Optional[str]) -> Optional[str]:
    return None if backend is None else _check_name(backend, "backend")


def _with_backend(text: str, backend: Optional[str]) -> str:
    return text + (f", backend={backend!r}" if backend is not None else "")


class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` plus ``backend``: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out)
    (and the int64 indices with ``return_indices=True``)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False,
                 *, backend: Optional[str] = None):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self.backend = _backend_argument(backend)

    def forward(self, input: Tensor):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices, backend=self.backend)

    def extra_repr(self) -> str:
        return _with_backend(super().extra_repr(), self.backend)


class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` plus ``backend``: (N, C, H, W) or (C, H, W) -> (N, C, H_out, W_out)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, backend: Optional[str] = None):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
        self.backend = _backend_argument(backend)

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override, backend=self.backend)

    def extra_repr(self) -> str:
        return _with_backend(super().extra_repr(), self.backend)


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` plus ``backend``: (N, C, H, W) or (C, H, W) -> (N, C, OH, OW)."""

    def __init__(self, output_size, *, backend: Optional[str] = None):
        super().__init__(output_size)
        self.backend = _backend_argument(backend)

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool2d(input, self.output_size, backend=self.backend)

    def extra_repr(self) -> str:
        return _with_backend(super().extra_repr(), self.backend)
