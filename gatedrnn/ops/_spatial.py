"""Helpers shared by the convolution, pooling and embedding ops: argument parsing with errors
that name the argument, the per-backend dtype check, and loading a backend's implementation.

Each op module (``conv.py``, ``pool.py``, ``embedding.py``) registers its own
``torch.library`` custom ops; what they have in common lives here.
"""
from __future__ import annotations

import functools
import importlib
import numbers
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..backends import resolve_backend
from ..kernels._launch import is_channels_last  # torch only: shared with the Triton launchers
from ._recurrence import _BACKEND_DTYPES

__all__ = ["is_int", "int_tuple", "check_tensor", "check_same", "pick_backend", "Implementations",
           "cpu_module", "is_channels_last", "empty_in_format", "in_format"]


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_tuple(value, size: int, argument: str, op: str) -> Tuple[int, ...]:
    """``value`` (an int, or a sequence of 1 or ``size`` ints) as a tuple of ``size`` ints."""
    if is_int(value):
        return (int(value),) * size
    if isinstance(value, (tuple, list, torch.Size)) and all(is_int(v) for v in value):
        if len(value) == size:
            return tuple(int(v) for v in value)
        if len(value) == 1:
            return (int(value[0]),) * size
    raise TypeError(f"{op}: {argument} must be an int or a sequence of {size} ints, got {value!r}")


def check_tensor(value, argument: str, op: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{op}: {argument} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_same(reference: Tensor, tensor: Tensor, argument: str, op: str) -> None:
    """``tensor`` has the input's floating dtype and device."""
    if tensor.dtype != reference.dtype:
        raise TypeError(f"{op}: {argument} must have the input's dtype {reference.dtype}, got {tensor.dtype}")
    if tensor.device != reference.device:
        raise ValueError(f"{op}: {argument} must be on the input's device {reference.device}, got {tensor.device}")


def pick_backend(backend: Optional[str], dtype: torch.dtype, device: torch.device) -> str:
    """The backend that runs the call, checked to compute in ``dtype``."""
    name = resolve_backend(backend, device)
    if dtype not in _BACKEND_DTYPES[name]:
        supported = ", ".join(str(d) for d in _BACKEND_DTYPES[name])
        raise TypeError(
            f"backend {name!r} does not compute in {dtype} (it supports {supported}); "
            "convert the tensors with .to(...) or choose another backend"
        )
    return name


class Implementations:
    """Backend name -> loader of that backend's functions, loaded on first use."""

    def __init__(self, op: str, loaders: Dict[str, Callable[[], object]]):
        self.op = op
        self.loaders = loaders
        self.loaded: Dict[str, object] = {}

    def __call__(self, backend: str):
        if backend not in self.loaded:
            if backend not in self.loaders:
                raise ValueError(f"backend {backend!r} does not implement {self.op}")
            self.loaded[backend] = self.loaders[backend]()
        return self.loaded[backend]


def cpu_module(name: str):
    """``gatedrnn._cpu.<name>``, or a RuntimeError naming the fix when it was not built.

    The dispatcher checks only the recurrent extensions; a checkout built before this op's
    extension existed would otherwise fail with a bare ImportError.
    """
    try:
        return importlib.import_module(f"gatedrnn._cpu.{name}")
    except ImportError as error:
        raise RuntimeError(
            f"backend 'cython' cannot run {name} here: gatedrnn._cpu.{name} is not built ({error}). "
            "Fix: rebuild the extensions (`pip install -e .` in a checkout), or use backend='numpy'."
        ) from None


# --- memory formats: torch's spatial ops return channels_last for channels_last input ---------------

def empty_in_format(shape, like: Tensor, memory_format: torch.memory_format, dtype=None) -> Tensor:
    """torch.empty in ``memory_format`` with like's dtype (or ``dtype``) and device: what the
    ops' fake implementations return and ``in_format`` matches."""
    return torch.empty(tuple(shape), dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


@functools.lru_cache(maxsize=256)
def _format_strides(shape: Tuple[int, ...], memory_format: torch.memory_format) -> Tuple[int, ...]:
    return torch.empty(shape, device="meta", memory_format=memory_format).stride()


def in_format(t: Tensor, memory_format: torch.memory_format) -> Tensor:
    """t with exactly the strides of ``empty_in_format(t.shape, t, memory_format)`` (what the fake
    implementations declare): t itself where they already agree, else a copy."""
    expected = _format_strides(tuple(t.shape), memory_format)
    if t.stride() == expected:
        return t
    return torch.empty_strided(t.shape, expected, dtype=t.dtype, device=t.device).copy_(t)
