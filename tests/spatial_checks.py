"""Shared pieces of the convolution, pooling and embedding tests: which CPU backends run here,
a norm-wise relative comparison against the float64 oracle, which custom ops a call
dispatched, and the eager autograd path against the custom op's."""
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


class _ThroughTheOps(torch.overrides.TorchFunctionMode):
    """A pass-through torch-function mode: while one is active, our functions call their custom ops."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _tensors(outputs) -> list:
    """The tensors of a (nested) tuple of outputs, in order."""
    if isinstance(outputs, (tuple, list)):
        return [t for part in outputs for t in _tensors(part)]
    return [outputs]


def _recorded_nodes(output) -> set:
    """The class names of the autograd nodes behind ``output`` (a view's node leads to the op's)."""
    names, pending = set(), [output.grad_fn]
    while pending:
        node = pending.pop()
        if node is not None and type(node).__name__ not in names:
            names.add(type(node).__name__)
            pending.extend(next_node for next_node, _ in node.next_functions)
    return names


def check_eager_autograd(call, leaves, op: str) -> None:
    """``call()``, recorded by autograd, dispatches no custom op (it runs the op's body in the
    autograd.Function that eager_or_op builds from the op's own setup_context and backward), and
    its floating outputs and the gradients of a random weighting of them with respect to
    ``leaves`` are bitwise those of the same call through ``gatedrnn::<op>`` (forced by a
    torch-function mode)."""
    def outputs_and_grads():
        outputs = _tensors(call())
        floating = [o for o in outputs if o.is_floating_point()]
        generator = torch.Generator().manual_seed(5)
        loss = sum((o * torch.randn(o.shape, dtype=o.dtype, generator=generator)).sum() for o in floating)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return outputs, grads

    assert ops_dispatched(call) == []
    first = _tensors(call())[0]
    assert f"Eager_{op}Backward" in _recorded_nodes(first), _recorded_nodes(first)
    outputs, grads = outputs_and_grads()
    with _ThroughTheOps():
        assert f"gatedrnn::{op}" in ops_dispatched(call)
        first = _tensors(call())[0]
        assert not any(name.startswith("Eager_") for name in _recorded_nodes(first))
        op_outputs, op_grads = outputs_and_grads()
    for ours, theirs in zip(outputs, op_outputs):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(grads, op_grads):
        assert (ours is None) == (theirs is None)
        assert ours is None or torch.equal(ours, theirs)


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
