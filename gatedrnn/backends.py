"""Backend selection: which implementation runs an op.

Three backends implement every op:

- ``triton``: fused GPU kernels (``gatedrnn.kernels``) for CUDA tensors. Also runs on CPU
  tensors under ``TRITON_INTERPRET=1`` (Triton's interpreter; slow, for verification).
- ``cython``: the compiled CPU extensions (``gatedrnn._cpu``) for CPU tensors.
- ``numpy``: the float64 NumPy oracle (``gatedrnn.oracle``). Runs from any device (data is
  moved to the CPU and back, the result cast to the input's dtype): the reference.

The backend of a call is, in order of precedence: the op's ``backend=`` argument, the innermost
``with gatedrnn.use_backend(name):`` block, the ``GATEDRNN_BACKEND`` environment variable, and
otherwise the device of the inputs (CUDA -> ``triton``, CPU -> ``cython``).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import threading
from typing import Dict, Iterator, NamedTuple, Optional

import torch

__all__ = [
    "BACKENDS",
    "BackendStatus",
    "available_backends",
    "current_backend",
    "resolve_backend",
    "use_backend",
]

BACKENDS = ("triton", "cython", "numpy")
ENV_VAR = "GATEDRNN_BACKEND"

# The compiled extensions the CPU ops need; the backend counts as built only if all import.
_CPU_EXTENSIONS = ("lstm", "gru", "rnn", "conv", "pool", "embedding")


class BackendStatus(NamedTuple):
    """Whether a backend runs here; ``reason`` says why not and how to fix it."""

    available: bool
    reason: str


_state = threading.local()


def _stack() -> list:
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


def _check_name(name: object, argument: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a str naming one of {BACKENDS} or None, got {type(name).__name__}")
    key = name.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"{argument}: unknown backend {name!r}; expected one of {BACKENDS}")
    return key


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Run gatedrnn ops inside the block on backend ``name`` (unless a call passes ``backend=``).

    Blocks nest; the innermost wins. The setting is per thread.
    """
    key = _check_name(name, "use_backend(name)")
    stack = _stack()
    stack.append(key)
    try:
        yield key
    finally:
        stack.pop()


def current_backend() -> Optional[str]:
    """The backend forced by ``use_backend`` or ``GATEDRNN_BACKEND``, or None for automatic."""
    stack = _stack()
    if stack:
        return stack[-1]
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _check_name(env, f"environment variable {ENV_VAR}")
    return None


def _interpreting_triton() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _probe_cython() -> BackendStatus:
    missing = []
    for name in _CPU_EXTENSIONS:
        try:
            importlib.import_module(f"gatedrnn._cpu.{name}")
        except ImportError as error:
            missing.append(f"gatedrnn._cpu.{name} ({error})")
    if missing:
        return BackendStatus(
            False,
            "the compiled CPU extensions are not built: "
            + "; ".join(missing)
            + ". Fix: install gatedrnn from its source tree with a C compiler, Cython>=3 and "
            "scipy present (`pip install .`, or `pip install -e .` in a checkout).",
        )
    return BackendStatus(True, "compiled CPU extensions (Cython, OpenMP, BLAS)")


def _probe_triton_version() -> Optional[str]:
    """Triton's version if it is installed, found without importing it (that takes a second)."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Probed once, at import: torch.compile traces the dispatcher, and an import inside a trace
# would break the graph.
_CYTHON_STATUS = _probe_cython()
_TRITON_VERSION = _probe_triton_version()


def _cython_backend_status() -> BackendStatus:
    return _CYTHON_STATUS


def _triton_backend_status() -> BackendStatus:
    if _TRITON_VERSION is None:
        return BackendStatus(
            False, "Triton is not installed. Fix: `pip install 'gatedrnn[gpu]'` on a CUDA machine."
        )
    if _interpreting_triton():
        return BackendStatus(True, f"Triton {_TRITON_VERSION} interpreter (TRITON_INTERPRET=1, CPU tensors)")
    if not torch.cuda.is_available():
        return BackendStatus(
            False,
            f"Triton {_TRITON_VERSION} is installed but no CUDA device is visible. Fix: run on a "
            "machine with an NVIDIA GPU, or set TRITON_INTERPRET=1 to run the kernels in Triton's "
            "interpreter on CPU tensors (slow; for verification).",
        )
    return BackendStatus(True, f"Triton {_TRITON_VERSION} on CUDA")


def available_backends() -> Dict[str, BackendStatus]:
    """Each backend's :class:`BackendStatus`: whether it runs here and, if not, why and the fix."""
    return {
        "triton": _triton_backend_status(),
        "cython": _cython_backend_status(),
        "numpy": BackendStatus(True, "NumPy float64 oracle (reference; any device, data copied to the CPU)"),
    }


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """The backend that runs an op on tensors of ``device``, raising if it cannot run there.

    ``backend`` is the op's ``backend=`` argument (None for the usual precedence, see module
    docstring).
    """
    if backend is not None:
        name = _check_name(backend, "backend")
    else:
        name = current_backend()
        if name is None:
            name = "triton" if device.type == "cuda" else "cython"
    if name == "numpy":
        return name
    if name == "cython":
        if device.type != "cpu":
            raise ValueError(
                f"backend 'cython' runs on CPU tensors, but the inputs are on {device}. Fix: move "
                "them with .cpu(), or use backend='triton' (GPU) or backend='numpy' (reference)."
            )
        status = _cython_backend_status()
        if not status.available:
            raise RuntimeError(f"backend 'cython' cannot run here: {status.reason}")
        return name
    # triton
    status = _triton_backend_status()
    if not status.available:
        raise RuntimeError(f"backend 'triton' cannot run here: {status.reason}")
    if device.type == "cpu" and not _interpreting_triton():
        raise ValueError(
            "backend 'triton' runs on CUDA tensors, but the inputs are on the CPU. Fix: move them "
            "with .cuda(), use backend='cython', or set TRITON_INTERPRET=1 to interpret the kernels."
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend 'triton' runs on CUDA tensors, but the inputs are on {device}")
    return name
