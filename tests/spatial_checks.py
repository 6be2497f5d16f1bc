"""Shared pieces of the convolution, pooling and embedding tests: which CPU backends run here,
a norm-wise relative comparison against the float64 oracle, and which custom ops a call
dispatched."""
import importlib

import numpy as np
import pytest
import torch

import gatedrnn


def _cython_has(*modules) -> bool:
    if not gatedrnn.available_backends()["cython"].available:
        return False
    try:
        for name in modules:
            importlib.import_module(f"gatedrnn._cpu.{name}")
    except ImportError:
        return False
    return True


def cpu_backends(module: str) -> list:
    """numpy always; cython when its extension ``gatedrnn._cpu.<module>`` is built."""
    return ["numpy"] + (["cython"] if _cython_has(module) else [])


def ops_dispatched(fn) -> list:
    """The gatedrnn custom ops that ``fn()`` sent through the dispatcher (the profiler's events;
    the profiler is no mode, so it does not itself push calls onto the op path)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sorted({event.name for event in prof.events() if event.name.startswith("gatedrnn::")})


def needs_cython(module: str):
    return pytest.mark.skipif(not _cython_has(module), reason=f"gatedrnn._cpu.{module} not built")


# Norm-wise relative tolerances: float64 agrees to rounding; float32 to a few ulps of the sums.
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}


def relative_error(actual: torch.Tensor, expected: np.ndarray) -> float:
    actual = actual.detach().cpu().to(torch.float64).numpy()
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), "non-finite values (an entry the kernel did not write?)"
    scale = max(np.linalg.norm(expected), 1e-30)
    return float(np.linalg.norm(actual - expected) / scale)


def assert_close(named, dtype):
    """named: {name: (actual tensor, expected float64 array)}."""
    tolerance = TOLERANCE[dtype]
    for name, (actual, expected) in named.items():
        error = relative_error(actual, expected)
        assert error <= tolerance, f"{name}: relative error {error:.3e} > {tolerance:.1e}"


def rounded(array: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """``array`` rounded to ``dtype`` and back to float64: the oracle sees what the kernel sees."""
    return torch.from_numpy(np.asarray(array, np.float64)).to(dtype).to(torch.float64).numpy()
