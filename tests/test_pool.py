"""max_pool2d / avg_pool2d / adaptive_avg_pool2d: the oracle against torch.nn.functional
(float64), every CPU backend against the oracle (forward, indices, gradients), the custom ops'
registration, bad input, and the modules against torch.nn.

Triton backend: the kernels under TRITON_INTERPRET=1 (float32, CPU tensors) against the oracle
over the geometry cases (ties, NaN, odd sizes, windows missing the input), bitwise determinism,
and that every launch configuration the launchers pick is in ``gate_configs``. Triton chooses
the interpreter when the kernel module is imported, so those cases run in a fresh subprocess
(``test_triton_interpreter_subprocess``, ~15 s on 2 cores). ``gpu`` cases: realistic sizes in
float32/bfloat16/float16 against torch in float64 on the device.
"""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import oracle
from gatedrnn.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from gatedrnn.ops import pool as pool_ops
from gatedrnn.ops._spatial import is_channels_last
from gatedrnn.ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d

from interpreter import INTERPRETING, outside_interpreter, run_interpreted
from spatial_checks import (assert_close, check_eager_autograd, cpu_backends, needs_cython, ops_dispatched,
                            relative_error, rounded)

BACKENDS = cpu_backends("pool")
DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])

# (input shape, options)
MAX_CASES = {
    "2x2": ((2, 3, 8, 8), dict(kernel_size=2)),
    "3x3-s2-p1": ((2, 3, 9, 10), dict(kernel_size=3, stride=2, padding=1)),
    "ceil-odd": ((1, 2, 9, 7), dict(kernel_size=(3, 2), stride=(2, 2), padding=(1, 0), ceil_mode=True)),
    "dilated": ((2, 2, 11, 9), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
    "dilated-ceil": ((1, 3, 10, 8), dict(kernel_size=(2, 3), stride=(3, 2), padding=1, dilation=(2, 1),
                                           ceil_mode=True)),
    "stride-gt-kernel": ((2, 1, 10, 11), dict(kernel_size=2, stride=3)),
    "whole-plane": ((3, 2, 5, 4), dict(kernel_size=(5, 4))),
}
AVG_CASES = {
    "2x2": ((2, 3, 8, 8), dict(kernel_size=2)),
    "3x3-s2-p1": ((2, 3, 9, 10), dict(kernel_size=3, stride=2, padding=1)),
    "exclude-pad": ((2, 3, 9, 10), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    "ceil": ((1, 2, 9, 7), dict(kernel_size=(3, 2), stride=2, padding=(1, 1), ceil_mode=True)),
    "ceil-exclude-pad": ((1, 2, 8, 7), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                             count_include_pad=False)),
    "divisor": ((2, 2, 7, 6), dict(kernel_size=(2, 3), stride=1, padding=1, divisor_override=5)),
    "overlap-batch1": ((1, 4, 6, 5), dict(kernel_size=3, stride=1)),
}
ADAPTIVE_CASES = {
    "divides": ((2, 3, 8, 8), (4, 4)),
    "uneven": ((1, 2, 9, 7), (4, 3)),
    "global": ((2, 3, 5, 7), 1),
    "upsampling": ((1, 2, 3, 2), (5, 4)),
    "keep-width": ((2, 1, 7, 6), (3, None)),
}


def draw(shape, seed=0, ties=False):
    values = np.random.default_rng(seed).uniform(-3, 3, shape)
    # Rounded values make equal maxima in a window common, which checks the tie rule.
    return np.round(values) if ties else values


# --- oracle vs torch ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_oracle_matches_torch(name):
    shape, options = MAX_CASES[name]
    x = draw(shape, ties=True)
    x_t = torch.tensor(x, requires_grad=True)
    y, indices = F.max_pool2d(x_t, **options, return_indices=True)
    grad_y = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad_y)
    expected, expected_indices = oracle.max_pool2d_forward(x, **options)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    assert_close({"y": (y, expected), "grad_x": (x_t.grad, oracle.max_pool2d_backward(grad_y.numpy(),
                                                                                        expected_indices, x.shape))},
                 torch.float64)


@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_oracle_matches_torch(name):
    shape, options = AVG_CASES[name]
    x = draw(shape)
    x_t = torch.tensor(x, requires_grad=True)
    y = F.avg_pool2d(x_t, **options)
    grad_y = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad_y)
    assert_close({"y": (y, oracle.avg_pool2d_forward(x, **options)),
                  "grad_x": (x_t.grad, oracle.avg_pool2d_backward(grad_y.numpy(), x.shape, **options))},
                 torch.float64)


@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_oracle_matches_torch(name):
    shape, size = ADAPTIVE_CASES[name]
    x = draw(shape)
    x_t = torch.tensor(x, requires_grad=True)
    y = F.adaptive_avg_pool2d(x_t, size)
    grad_y = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad_y)
    assert_close({"y": (y, oracle.adaptive_avg_pool2d_forward(x, size)),
                  "grad_x": (x_t.grad, oracle.adaptive_avg_pool2d_backward(grad_y.numpy(), x.shape))},
                 torch.float64)


def test_max_oracle_nan_and_minus_infinity_like_torch():
    x = np.array([[[[1.0, np.nan, 3.0], [-np.inf, -np.inf, 2.0], [np.nan, 5.0, np.nan]]]])
    x[0, 0, 1, 2] = -np.inf
    for options in (dict(kernel_size=2, stride=1), dict(kernel_size=3, padding=1, stride=2)):
        y, indices = F.max_pool2d(torch.tensor(x), **options, return_indices=True)
        expected, expected_indices = oracle.max_pool2d_forward(x, **options)
        np.testing.assert_array_equal(y.numpy(), expected)
        np.testing.assert_array_equal(indices.numpy(), expected_indices)


# --- backends vs oracle ---------------------------------------------------------------------------

@DTYPES
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MAX_CASES))
def test_max_backend_matches_oracle(backend, dtype, name):
    shape, options = MAX_CASES[name]
    x = rounded(draw(shape, ties=True), dtype)
    x_t = torch.tensor(x, dtype=dtype, requires_grad=True)
    y, indices = max_pool2d(x_t, **options, return_indices=True, backend=backend)
    assert y.dtype == dtype and indices.dtype == torch.int64
    grad_y = rounded(np.random.default_rng(1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype))
    expected, expected_indices = oracle.max_pool2d_forward(x, **options)
    np.testing.assert_array_equal(indices.numpy(), expected_indices)
    assert_close({"y": (y, expected),
                  "grad_x": (x_t.grad, oracle.max_pool2d_backward(grad_y, expected_indices, x.shape))}, dtype)
    # Without return_indices: just the output.
    torch.testing.assert_close(max_pool2d(x_t, **options, backend=backend), y)


@DTYPES
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(AVG_CASES))
def test_avg_backend_matches_oracle(backend, dtype, name):
    shape, options = AVG_CASES[name]
    x = rounded(draw(shape), dtype)
    x_t = torch.tensor(x, dtype=dtype, requires_grad=True)
    y = avg_pool2d(x_t, **options, backend=backend)
    grad_y = rounded(np.random.default_rng(1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype))
    assert_close({"y": (y, oracle.avg_pool2d_forward(x, **options)),
                  "grad_x": (x_t.grad, oracle.avg_pool2d_backward(grad_y, x.shape, **options))}, dtype)


@DTYPES
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ADAPTIVE_CASES))
def test_adaptive_backend_matches_oracle(backend, dtype, name):
    shape, size = ADAPTIVE_CASES[name]
    x = rounded(draw(shape), dtype)
    x_t = torch.tensor(x, dtype=dtype, requires_grad=True)
    y = adaptive_avg_pool2d(x_t, size, backend=backend)
    grad_y = rounded(np.random.default_rng(1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype))
    assert_close({"y": (y, oracle.adaptive_avg_pool2d_forward(x, size)),
                  "grad_x": (x_t.grad, oracle.adaptive_avg_pool2d_backward(grad_y, x.shape))}, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unbatched_noncontiguous_and_empty(backend):
    x = torch.randn(2, 7, 6, 3, dtype=torch.float64).permute(0, 3, 1, 2)  # (2, 3, 7, 6), not contiguous
    torch.testing.assert_close(max_pool2d(x, 3, 2, 1, backend=backend), F.max_pool2d(x, 3, 2, 1))
    torch.testing.assert_close(max_pool2d(x[0], 2, return_indices=True, backend=backend),
                               F.max_pool2d(x[0], 2, return_indices=True))
    torch.testing.assert_close(avg_pool2d(x[1], 3, 1, 1, backend=backend), F.avg_pool2d(x[1], 3, 1, 1))
    torch.testing.assert_close(adaptive_avg_pool2d(x[0], 2, backend=backend), F.adaptive_avg_pool2d(x[0], 2))
    empty = torch.zeros(0, 3, 6, 6, requires_grad=True)
    for y in (max_pool2d(empty, 2, backend=backend), avg_pool2d(empty, 2, backend=backend),
              adaptive_avg_pool2d(empty, 3, backend=backend)):
        assert y.shape == (0, 3, 3, 3)
        y.sum().backward()
        assert empty.grad.shape == empty.shape


@needs_cython("pool")
def test_cython_gradcheck_float64():
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: max_pool2d(a, 3, 2, 1, 1, True, backend="cython"), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a: avg_pool2d(a, 3, 2, 1, True, False, backend="cython"), (x,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda a: adaptive_avg_pool2d(a, (4, 5), backend="cython"), (x,), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_inference_skips_the_custom_ops(backend):
    """Each pooling op runs its body directly when nothing needs the dispatcher (same numbers as
    torch) and goes through its gatedrnn:: op when autograd records the call."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    calls = {
        "gatedrnn::max_pool2d": (lambda t: max_pool2d(t, 3, 2, 1, backend=backend),
                                 lambda t: F.max_pool2d(t, 3, 2, 1)),
        "gatedrnn::avg_pool2d": (lambda t: avg_pool2d(t, 3, 2, 1, ceil_mode=True, backend=backend),
                                 lambda t: F.avg_pool2d(t, 3, 2, 1, ceil_mode=True)),
        "gatedrnn::adaptive_avg_pool2d": (lambda t: adaptive_avg_pool2d(t, (2, 3), backend=backend),
                                          lambda t: F.adaptive_avg_pool2d(t, (2, 3))),
    }
    leaf = x.clone().requires_grad_()
    for name, (ours, theirs) in calls.items():
        with torch.no_grad():
            assert ops_dispatched(lambda: ours(leaf)) == [], name
            torch.testing.assert_close(ours(leaf), theirs(x), rtol=1e-12, atol=1e-12)
        check_eager_autograd(lambda: ours(leaf), [leaf], name.split("::")[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.gatedrnn.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True, backend))
    torch.library.opcheck(torch.ops.gatedrnn.avg_pool2d.default,
                          (x, [3, 2], [2, 1], [1, 1], True, False, None, backend))
    torch.library.opcheck(torch.ops.gatedrnn.avg_pool2d.default, (x, [2, 2], [2, 2], [0, 0], False, True, 3, backend))
    torch.library.opcheck(torch.ops.gatedrnn.adaptive_avg_pool2d.default, (x, [4, 3], backend))
    grad_y = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.gatedrnn.adaptive_avg_pool2d_backward.default, (grad_y, [2, 3, 9, 8], backend))


def check_channels_last_like_torch(backend, dtype=torch.float64):
    """A channels_last input gives channels_last outputs (and max-pool indices), as torch's pools
    do, with the same values; the ops' fakes declare the same strides."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 8, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    calls = {
        "max": (lambda t: max_pool2d(t, 3, 2, 1, return_indices=True, backend=backend),
                lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True)),
        "avg": (lambda t: (avg_pool2d(t, (3, 2), (2, 1), 1, backend=backend),),
                lambda t: (F.avg_pool2d(t, (3, 2), (2, 1), 1),)),
        "adaptive": (lambda t: (adaptive_avg_pool2d(t, (4, 3), backend=backend),),
                     lambda t: (F.adaptive_avg_pool2d(t, (4, 3)),)),
    }
    for name, (ours, theirs) in calls.items():
        got, expected = ours(x), theirs(x)
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = ours(mode.from_tensor(x))
        for a, b, f in zip(got, expected, fake):
            assert a.stride() == b.stride() == f.stride(), (name, a.stride(), b.stride(), f.stride())
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        grad, = torch.autograd.grad(got[0], x, torch.ones_like(got[0]))
        expected_grad, = torch.autograd.grad(expected[0], x, torch.ones_like(expected[0]))
        torch.testing.assert_close(grad, expected_grad)
        if backend == "triton":  # its kernels compute in channels_last: the gradient keeps it, as torch's
            assert grad.stride() == expected_grad.stride(), (name, grad.stride(), expected_grad.stride())


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_like_torch(backend):
    check_channels_last_like_torch(backend)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.gatedrnn.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True, backend))


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "function, arguments, error, message",
    [
        (max_pool2d, dict(kernel_size=3, stride=0), ValueError, r"stride must be positive, got stride=\(0, 0\)"),
        (max_pool2d, dict(kernel_size=0), ValueError, "kernel_size must be positive"),
        (max_pool2d, dict(kernel_size=3, padding=-1), ValueError, "padding must be non-negative"),
        (max_pool2d, dict(kernel_size=3, padding=2), ValueError, "padding must be at most half of the kernel size"),
        (max_pool2d, dict(kernel_size=9), ValueError, r"kernel_size=\(9, 9\) .* larger than the padded input"),
        (max_pool2d, dict(kernel_size=3, dilation=4), ValueError, "larger than the padded input"),
        (max_pool2d, dict(kernel_size=2, ceil_mode=1), TypeError, "ceil_mode must be a bool"),
        (max_pool2d, dict(kernel_size=(2, 2, 2)), TypeError, "kernel_size must be an int or a sequence of 2 ints"),
        (avg_pool2d, dict(kernel_size=2, padding=2), ValueError, "padding must be at most half"),
        (avg_pool2d, dict(kernel_size=2, divisor_override=0), ValueError, "divisor_override must be None or a non-zero int"),
        (avg_pool2d, dict(kernel_size=2, stride=(1, 0)), ValueError, "stride must be positive"),
        (adaptive_avg_pool2d, dict(output_size=(2, -1)), ValueError, "output_size must be non-negative"),
        (adaptive_avg_pool2d, dict(output_size="2"), TypeError, "output_size must be an int"),
    ],
)
def test_bad_input_names_the_argument(function, arguments, error, message):
    with pytest.raises(error, match=message):
        function(torch.randn(2, 3, 7, 6), **arguments, backend="numpy")


def test_bad_tensors():
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2, backend="numpy")
    with pytest.raises(ValueError, match="input must be 4-D"):
        avg_pool2d(torch.randn(4, 4), 2, backend="numpy")
    with pytest.raises(ValueError, match="non-zero H and W"):
        adaptive_avg_pool2d(torch.randn(1, 2, 0, 4), 2, backend="numpy")


# --- modules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_match_torch(backend):
    x = torch.randn(2, 3, 9, 8, requires_grad=True)
    pairs = [
        (MaxPool2d(3, 2, 1, ceil_mode=True, backend=backend), torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        (MaxPool2d(2, return_indices=True, backend=backend), torch.nn.MaxPool2d(2, return_indices=True)),
        (AvgPool2d(3, 2, 1, count_include_pad=False, backend=backend),
         torch.nn.AvgPool2d(3, 2, 1, count_include_pad=False)),
        (AdaptiveAvgPool2d((3, None), backend=backend), torch.nn.AdaptiveAvgPool2d((3, None))),
    ]
    for ours, reference in pairs:
        y, y_ref = ours(x), reference(x)
        torch.testing.assert_close(y, y_ref)
        first, first_ref = (y[0], y_ref[0]) if isinstance(y, tuple) else (y, y_ref)
        grad, = torch.autograd.grad(first.square().sum(), x)
        grad_ref, = torch.autograd.grad(first_ref.square().sum(), x)
        torch.testing.assert_close(grad, grad_ref)
        assert isinstance(ours, type(reference)) and f"backend='{backend}'" in repr(ours)
        assert ours.state_dict().keys() == reference.state_dict().keys()


def max_gradient_by_windows(x, grad_y, kernel, stride, padding, dilation):
    """d(sum grad_y * max_pool(x)) / dx from the windows themselves (the taps inside the input;
    the first maximum wins): a window with no input element is -inf whatever x is, so its
    gradient goes nowhere. Independent of the indices."""
    grad_x = torch.zeros_like(x)
    for n, c, oh, ow in itertools.product(*map(range, grad_y.shape)):
        taps = [(r, q) for r in range(oh * stride[0] - padding[0], oh * stride[0] - padding[0]
                                      + kernel[0] * dilation[0], dilation[0])
                for q in range(ow * stride[1] - padding[1], ow * stride[1] - padding[1]
                               + kernel[1] * dilation[1], dilation[1])
                if 0 <= r < x.shape[2] and 0 <= q < x.shape[3]]
        if taps:
            r, q = max(taps, key=lambda tap: (x[n, c][tap], -taps.index(tap)))
            grad_x[n, c, r, q] += grad_y[n, c, oh, ow]
    return grad_x


# Windows with no input element (dilation steps every tap over the input): torch returns -inf
# and an index that points past the plane or, in a 1-wide plane, at the next row's element.
# Torch's backward then writes there (past the end of its buffer, or onto that element), so it
# is not the reference here.
MISSING_WINDOW_CASES = {
    "past-the-plane-ceil": ((1, 2, 1, 3), dict(kernel_size=(2, 2), stride=(4, 1), padding=(1, 1), dilation=(2, 1),
                                               ceil_mode=True)),
    "aliases-next-row": ((1, 2, 12, 1), dict(kernel_size=2, stride=(1, 2), padding=1, dilation=(1, 2))),
    "every-row-missed": ((2, 1, 3, 5), dict(kernel_size=(2, 3), stride=1, padding=1, dilation=(4, 1))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MISSING_WINDOW_CASES))
def test_max_window_that_misses_the_input(backend, name):
    """We match torch's forward (-inf, its index) and give such a window's gradient to no
    element, including where its index aliases a real one; every other window's gradient goes to
    its maximum."""
    shape, options = MISSING_WINDOW_CASES[name]
    x = torch.randn(shape, dtype=torch.float64)
    expected, expected_indices = F.max_pool2d(x, **options, return_indices=True)
    x.requires_grad_()
    y, indices = max_pool2d(x, **options, return_indices=True, backend=backend)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    assert bool(torch.isinf(y).any())
    grad_y = torch.randn_like(y)
    grad_y[torch.isinf(y)] = float("inf")  # as y.square()'s gradient there: still dropped, no NaN
    y.backward(grad_y)
    geometry = [int_pair(options.get(k, d)) for k, d in (("kernel_size", None), ("stride", None),
                                                         ("padding", 0), ("dilation", 1))]
    reference = max_gradient_by_windows(x.detach(), grad_y, *geometry)
    torch.testing.assert_close(x.grad, reference, rtol=0, atol=0)


def int_pair(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


@needs_cython("pool")
def test_cython_extension_checks_its_own_arguments():
    extension = pool_ops.cpu_module("pool")
    x, y = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2))
    indices = np.zeros((1, 1, 2, 2), np.int64)
    with pytest.raises(ValueError, match="must be positive"):  # a zero dilation step would loop forever
        extension.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 0, 1, y, indices, 1)
    with pytest.raises(ValueError, match="must be positive"):
        extension.avg_pool2d_forward(x, 2, 2, 0, 2, 0, 0, True, 0, y, 1)


# --- triton backend -------------------------------------------------------------------------------

in_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 subprocess (test_triton_interpreter_subprocess)")
TRITON_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Norm-wise relative tolerance of the triton backend (float32 accumulation in every dtype; the
# half types round the inputs/outputs: 8 and 11 significant bits).
TRITON_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

TRITON_MAX_CASES = dict(MAX_CASES, **{
    "odd-47x33-dilated-ceil": ((1, 2, 47, 33), dict(kernel_size=(4, 3), stride=(3, 2), padding=(2, 1),
                                                     dilation=(1, 2), ceil_mode=True)),
    "overlap-s1-batch3": ((3, 2, 13, 11), dict(kernel_size=3, stride=1, padding=1)),
})
TRITON_AVG_CASES = dict(AVG_CASES, **{
    "odd-47x33-ceil-exclude-pad": ((1, 2, 47, 33), dict(kernel_size=(5, 4), stride=(3, 2), padding=(2, 1),
                                                         ceil_mode=True, count_include_pad=False)),
    "negative-divisor": ((2, 1, 9, 8), dict(kernel_size=3, stride=2, padding=1, divisor_override=-4)),
    "ceil-include-pad": ((1, 3, 10, 9), dict(kernel_size=4, stride=3, padding=2, ceil_mode=True)),
})
TRITON_ADAPTIVE_CASES = dict(ADAPTIVE_CASES, **{
    "odd-47x33": ((1, 2, 47, 33), (5, 7)),
    "upsampling-odd": ((2, 1, 5, 3), (11, 7)),
})


def pool_kernels():
    import gatedrnn.kernels.pool as module  # imports triton: only inside triton tests
    return module


def _gate_key(kernel, config, dtype):
    from gatedrnn.kernels.pool import TRITON_TYPES
    return (kernel, tuple(sorted(config["constexprs"].items())), config["num_warps"], config["num_stages"],
            TRITON_TYPES[dtype])


def _gate_listing(module, capability):
    keys = set()
    for entry in module.gate_configs(capability):
        pointer_types = {t for name, t in entry["signature"].items()
                         if name.endswith("_ptr") and t not in ("*i64", "*i32")}
        assert len(pointer_types) == 1, entry  # one floating dtype per compile
        keys.add((entry["kernel"], tuple(sorted(entry["constexprs"].items())), entry["num_warps"],
                  entry["num_stages"], pointer_types.pop()[1:]))
    return keys


@pytest.fixture
def recorded_launches(monkeypatch):
    """Every launch configuration the launchers pick during the test; afterwards each must be in
    gate_configs(80) and gate_configs(90) (what the compile gate compiles)."""
    module = pool_kernels()
    picks = []
    choose = module.launch_config

    def recording(kernel, dtype, channels_last):
        config = choose(kernel, dtype, channels_last)
        picks.append(_gate_key(kernel, config, dtype))
        return config

    monkeypatch.setattr(module, "launch_config", recording)
    yield picks
    assert picks, "no triton launch recorded"
    for capability in (80, 90):
        missing = set(picks) - _gate_listing(module, capability)
        assert not missing, f"launches not in gate_configs({capability}): {missing}"


def _to(array, dtype, device):
    return torch.tensor(array, dtype=dtype, device=device)


def _rel(actual, expected):
    """Relative error of a tensor against a float64 tensor or array (finite check included)."""
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().cpu().numpy()
    return relative_error(actual, expected)


def _check(named, dtype):
    for name, (actual, expected) in named.items():
        error = _rel(actual, expected)
        assert error <= TRITON_TOLERANCE[dtype], f"{name}: relative error {error:.3e} > {TRITON_TOLERANCE[dtype]:.0e}"


# The GPU cases compare with torch itself in float64 on the device (the oracle is slow at large
# sizes; same semantics for windows that meet the input); the interpreter cases with the oracle.

def _max_reference(x64, grad_y64, options, reference):
    """(y, indices, grad_x) in float64 from ``reference`` ("oracle" or "torch")."""
    if reference == "oracle":
        y, indices = oracle.max_pool2d_forward(x64.numpy(), **options)
        return y, indices, oracle.max_pool2d_backward(grad_y64.numpy(), indices, tuple(x64.shape))
    x64 = x64.clone().requires_grad_()
    y, indices = F.max_pool2d(x64, **options, return_indices=True)
    y.backward(grad_y64)
    return y, indices.cpu().numpy(), x64.grad


def _avg_reference(x64, grad_y64, options, reference):
    if reference == "oracle":
        return (oracle.avg_pool2d_forward(x64.numpy(), **options),
                oracle.avg_pool2d_backward(grad_y64.numpy(), tuple(x64.shape), **options))
    x64 = x64.clone().requires_grad_()
    y = F.avg_pool2d(x64, **options)
    y.backward(grad_y64)
    return y, x64.grad


def _adaptive_reference(x64, grad_y64, size, reference):
    if reference == "oracle":
        return (oracle.adaptive_avg_pool2d_forward(x64.numpy(), size),
                oracle.adaptive_avg_pool2d_backward(grad_y64.numpy(), tuple(x64.shape)))
    x64 = x64.clone().requires_grad_()
    y = F.adaptive_avg_pool2d(x64, size)
    y.backward(grad_y64)
    return y, x64.grad


def _layout(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def _inputs(shape, dtype, device, ties=False, seed=0, channels_last=False):
    """x (requires grad) in dtype and the layout, and the same values in float64 NCHW (what the
    reference sees)."""
    x = _to(draw(shape, seed, ties), dtype, device)
    x64 = x.detach().to(torch.float64)
    return x.contiguous(memory_format=_layout(channels_last)).requires_grad_(), x64


def _grad_like(y, seed=1):
    """A random grad_y in y's layout (as autograd hands a channels_last network's gradients on),
    and the same values in float64."""
    grad_y = _to(np.random.default_rng(seed).standard_normal(tuple(y.shape)), y.dtype, y.device)
    return grad_y.contiguous(memory_format=_layout(is_channels_last(y))), grad_y.to(torch.float64)


def _check_layouts(x, tensors):
    """Every tensor of a channels_last x is channels_last, the triton launches included (the
    kernels read and write that layout; no copy in or out): the caller's recorded launches."""
    expected = is_channels_last(x)
    for name, tensor in tensors.items():
        assert is_channels_last(tensor) == expected, (name, tensor.stride())


def check_triton_max(shape, options, dtype, device, reference="oracle", ties=True, channels_last=False):
    x, x64 = _inputs(shape, dtype, device, ties, channels_last=channels_last)
    y, indices = max_pool2d(x, **options, return_indices=True, backend="triton")
    assert y.dtype == dtype and indices.dtype == torch.int64
    grad_y, grad_y64 = _grad_like(y)
    y.backward(grad_y)
    _check_layouts(x, {"y": y, "indices": indices, "grad_x": x.grad})
    expected, expected_indices, expected_grad = _max_reference(x64, grad_y64, options, reference)
    np.testing.assert_array_equal(indices.cpu().numpy(), expected_indices)
    _check({"y": (y, expected), "grad_x": (x.grad, expected_grad)}, dtype)


def check_triton_avg(shape, options, dtype, device, reference="oracle", channels_last=False):
    x, x64 = _inputs(shape, dtype, device, channels_last=channels_last)
    y = avg_pool2d(x, **options, backend="triton")
    grad_y, grad_y64 = _grad_like(y)
    y.backward(grad_y)
    _check_layouts(x, {"y": y, "grad_x": x.grad})
    expected, expected_grad = _avg_reference(x64, grad_y64, options, reference)
    _check({"y": (y, expected), "grad_x": (x.grad, expected_grad)}, dtype)


def check_triton_adaptive(shape, size, dtype, device, reference="oracle", channels_last=False):
    x, x64 = _inputs(shape, dtype, device, channels_last=channels_last)
    y = adaptive_avg_pool2d(x, size, backend="triton")
    grad_y, grad_y64 = _grad_like(y)
    y.backward(grad_y)
    if y.shape[2:] != (1, 1):  # a 1x1 output is contiguous as well: its gradient comes back NCHW
        _check_layouts(x, {"y": y, "grad_x": x.grad})
    expected, expected_grad = _adaptive_reference(x64, grad_y64, size, reference)
    _check({"y": (y, expected), "grad_x": (x.grad, expected_grad)}, dtype)


def check_triton_deterministic(shape, dtype, device):
    """Two runs of every backward (overlapping windows: elements sum several gradients) are
    bitwise equal."""
    x, _ = _inputs(shape, dtype, device, ties=True)
    runs = []
    for _ in range(2):
        x.grad = None
        y1 = max_pool2d(x, 3, 1, 1, backend="triton")
        y2 = avg_pool2d(x, 3, 1, 1, count_include_pad=False, backend="triton")
        y3 = adaptive_avg_pool2d(x, (shape[2] - 2, shape[3] - 3), backend="triton")
        grads = torch.autograd.grad([y1, y2, y3], [x], [_grad_like(y)[0] for y in (y1, y2, y3)])
        runs.append((y1, y2, y3) + grads)
    for first, second in zip(*runs):
        assert torch.equal(first, second)


@in_interpreter
def test_triton_interpreter_channels_last(recorded_launches):
    check_channels_last_like_torch("triton", torch.float32)
    assert {dict(key[1])["CHANNELS_LAST"] for key in recorded_launches} == {True}


# Channels_last cases: lanes enumerate (n, h, w, c), so planes interleave in memory; cases with
# several channels, odd sizes, padding, dilation, ceil_mode and overlapping windows.
CHANNELS_LAST_MAX = ["3x3-s2-p1", "dilated-ceil", "odd-47x33-dilated-ceil", "overlap-s1-batch3"]
CHANNELS_LAST_AVG = ["exclude-pad", "ceil-include-pad", "divisor"]
CHANNELS_LAST_ADAPTIVE = ["uneven", "odd-47x33", "global"]


@in_interpreter
def test_triton_interpreter_channels_last_kernels(recorded_launches):
    """The kernels' channels_last mode against the oracle (outputs, indices and gradients in
    channels_last, no copy: every launch recorded here ran in that mode)."""
    for name in CHANNELS_LAST_MAX:
        check_triton_max(*TRITON_MAX_CASES[name], torch.float32, "cpu", channels_last=True)
    for name in CHANNELS_LAST_AVG:
        check_triton_avg(*TRITON_AVG_CASES[name], torch.float32, "cpu", channels_last=True)
    for name in CHANNELS_LAST_ADAPTIVE:
        check_triton_adaptive(*TRITON_ADAPTIVE_CASES[name], torch.float32, "cpu", channels_last=True)
    layouts = {dict(key[1])["CHANNELS_LAST"] for key in recorded_launches}
    # the global pool's 1x1 output is contiguous too: its backward runs the NCHW kernel
    assert layouts == {True, False}, layouts


@in_interpreter
def test_triton_interpreter_channels_last_images_past_int32_run_nchw(recorded_launches, monkeypatch):
    """The kernels index within a channels_last image in int32: images of 2**31 elements or more
    (here: more than 100) run the NCHW kernels on a contiguous copy, with the same results and
    the op's layouts unchanged."""
    monkeypatch.setattr(pool_kernels(), "INT32_LIMIT", 100)
    check_triton_max(*TRITON_MAX_CASES["3x3-s2-p1"], torch.float32, "cpu", channels_last=True)
    check_triton_avg(*TRITON_AVG_CASES["exclude-pad"], torch.float32, "cpu", channels_last=True)
    check_triton_adaptive(*TRITON_ADAPTIVE_CASES["uneven"], torch.float32, "cpu", channels_last=True)
    assert {dict(key[1])["CHANNELS_LAST"] for key in recorded_launches} == {False}


def test_triton_adaptive_tables_match_the_definition():
    """The host tables the adaptive kernels read: output windows [floor(i*L/O), ceil((i+1)*L/O)),
    the windows containing each input (brute force on small axes), the bounds; exact where
    i * L passes 2**31."""
    pytest.importorskip("triton")
    module = pool_kernels()
    for L, O in ((7, 3), (3, 7), (9, 9), (1, 5), (13, 6)):
        table, longest, cover = module._adaptive_table(L, O, torch.device("cpu"))
        windows = [(i * L // O, -(-(i + 1) * L // O)) for i in range(O)]
        assert table[:O].tolist() == [list(w) for w in windows]
        for r in range(L):
            containing = [i for i, (start, end) in enumerate(windows) if start <= r < end]
            assert containing == list(range(*table[O + r].tolist())), (L, O, r)
        assert longest == max(end - start for start, end in windows)
        assert cover == max(end - start for start, end in table[O:].tolist())
    L, O = 100_003, 70_001
    table, _, _ = module._adaptive_table(L, O, torch.device("cpu"))
    assert table.dtype == torch.int32
    for i in (0, 30_001, O - 1):
        assert table[i].tolist() == [i * L // O, -(-(i + 1) * L // O)]
    for r in (0, 77_777, L - 1):
        assert table[O + r].tolist() == [r * O // L, -(-(r + 1) * O // L)]


@in_interpreter
@pytest.mark.parametrize("name", list(TRITON_MAX_CASES))
def test_triton_interpreter_max(name, recorded_launches):
    check_triton_max(*TRITON_MAX_CASES[name], torch.float32, "cpu")


@in_interpreter
@pytest.mark.parametrize("name", list(TRITON_AVG_CASES))
def test_triton_interpreter_avg(name, recorded_launches):
    check_triton_avg(*TRITON_AVG_CASES[name], torch.float32, "cpu")


@in_interpreter
@pytest.mark.parametrize("name", list(TRITON_ADAPTIVE_CASES))
def test_triton_interpreter_adaptive(name, recorded_launches):
    check_triton_adaptive(*TRITON_ADAPTIVE_CASES[name], torch.float32, "cpu")


@in_interpreter
def test_triton_interpreter_max_nan_and_infinity(recorded_launches):
    """NaN propagates (the last NaN of a window is its index), -inf inputs, ties."""
    x = np.round(draw((2, 3, 9, 8), seed=3))
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = x[1, 2, 7, 7] = np.nan
    x[0, 1, :4, :4] = -np.inf
    for options in (dict(kernel_size=2, stride=1), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)):
        x_t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
        y, indices = max_pool2d(x_t, **options, return_indices=True, backend="triton")
        expected, expected_indices = oracle.max_pool2d_forward(x, **options)
        np.testing.assert_array_equal(y.detach().numpy(), expected.astype(np.float32))  # NaN == NaN here
        np.testing.assert_array_equal(indices.numpy(), expected_indices)
        grad_y = np.random.default_rng(2).standard_normal(tuple(y.shape)).astype(np.float32)
        y.backward(torch.tensor(grad_y))
        expected_grad = oracle.max_pool2d_backward(grad_y.astype(np.float64), expected_indices, x.shape)
        assert relative_error(x_t.grad, expected_grad) <= TRITON_TOLERANCE[torch.float32]


@in_interpreter
def test_triton_interpreter_windows_that_miss_the_input(recorded_launches):
    """Dilation steps over the input: -inf and torch's index. Such a window's output does not
    depend on the input, so no element gets its gradient, also where torch's index (first
    column past a 1-wide plane) aliases the next row's element (the gather never credits it;
    the CPU backends drop those windows' gradients before they scatter)."""
    for shape, options in (((1, 2, 1, 3), dict(kernel_size=(2, 2), stride=(4, 1), padding=(1, 1), dilation=(2, 1),
                                                ceil_mode=True)),
                           ((1, 1, 3, 1), dict(kernel_size=(1, 2), stride=1, padding=(0, 1), dilation=(1, 2)))):
        x = torch.randn(shape, requires_grad=True)
        y, indices = max_pool2d(x, **options, return_indices=True, backend="triton")
        expected, expected_indices = F.max_pool2d(x.detach().double(), **options, return_indices=True)
        torch.testing.assert_close(y.double(), expected, rtol=0, atol=0)
        torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
        y.backward(torch.ones_like(y))
        assert torch.count_nonzero(x.grad) == 0


@in_interpreter
def test_triton_interpreter_torch_reference(recorded_launches):
    """The comparison the GPU cases make (torch in float64), on small CPU cases."""
    check_triton_max(*TRITON_MAX_CASES["dilated-ceil"], torch.float32, "cpu", reference="torch")
    check_triton_avg(*TRITON_AVG_CASES["ceil-exclude-pad"], torch.float32, "cpu", reference="torch")
    check_triton_adaptive(*TRITON_ADAPTIVE_CASES["uneven"], torch.float32, "cpu", reference="torch")


@in_interpreter
def test_triton_interpreter_deterministic(recorded_launches):
    check_triton_deterministic((2, 3, 11, 10), torch.float32, "cpu")


@in_interpreter
def test_triton_interpreter_float16_and_unbatched(recorded_launches):
    x = torch.tensor(draw((3, 9, 7), ties=True), dtype=torch.float16, requires_grad=True)
    reference = x.detach().double().requires_grad_()
    for function, options in ((max_pool2d, dict(kernel_size=3, stride=2, padding=1)),
                              (avg_pool2d, dict(kernel_size=2, stride=1, padding=1))):
        x.grad = reference.grad = None
        y = function(x, **options, backend="triton")
        y_ref = getattr(F, function.__name__)(reference, **options)
        grad_y = torch.randn(y.shape).to(torch.float16)
        y.backward(grad_y)
        y_ref.backward(grad_y.double())
        _check({"y": (y, y_ref), "grad_x": (x.grad, reference.grad)}, torch.float16)


@outside_interpreter
def test_triton_interpreter_subprocess():
    run_interpreted(__file__, "triton_interpreter and not subprocess", timeout=600)


def test_triton_launch_configs_are_in_gate_configs():
    """The launchers' configuration (one per kernel and dtype) is what gate_configs lists for
    both targets, with a signature naming every kernel argument in order."""
    pytest.importorskip("triton")
    module = pool_kernels()
    for capability in (80, 90):
        listing = _gate_listing(module, capability)
        # kernels x 3 dtypes x 2 layouts
        assert len(listing) == len(module.gate_configs(capability)) == 6 * len(module.KERNELS)
        for fn in module.KERNELS:
            for dtype in TRITON_DTYPES.values():
                for channels_last in (False, True):
                    config = module.launch_config(fn.__name__, dtype, channels_last)
                    assert _gate_key(fn.__name__, config, dtype) in listing
        for entry in module.gate_configs(capability):
            fn = getattr(module, entry["kernel"])
            assert list(entry["signature"]) == list(fn.arg_names)
            assert {n for n, t in entry["signature"].items() if t == "constexpr"} == set(entry["constexprs"])


def test_triton_slot_is_wired():
    pytest.importorskip("triton")
    assert type(pool_ops._implementations("triton")).__name__ == "TritonPool"


# --- triton on a GPU --------------------------------------------------------------------------------

GPU_MAX_CASES = {
    "resnet-stem-3x3-s2-p1": ((16, 64, 112, 112), dict(kernel_size=3, stride=2, padding=1)),
    "2x2-ceil-odd": ((8, 96, 55, 55), dict(kernel_size=2, stride=2, ceil_mode=True)),
    "dilated": ((4, 32, 47, 33), dict(kernel_size=3, stride=1, padding=1, dilation=2)),
}
GPU_AVG_CASES = {
    "3x3-s1-exclude-pad": ((16, 128, 56, 56), dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    "2x2-s2": ((16, 256, 28, 28), dict(kernel_size=2, stride=2)),
    "ceil-divisor": ((4, 64, 47, 33), dict(kernel_size=(5, 3), stride=(2, 3), padding=(2, 1), ceil_mode=True,
                                           divisor_override=7)),
}
GPU_ADAPTIVE_CASES = {
    "global-7x7": ((64, 512, 7, 7), (1, 1)),
    "13-to-6": ((8, 256, 13, 13), (6, 6)),
    "upsampling": ((4, 64, 5, 7), (11, 9)),
}
gpu_dtypes = pytest.mark.parametrize("dtype", list(TRITON_DTYPES.values()), ids=list(TRITON_DTYPES))


@pytest.mark.gpu
@gpu_dtypes
@pytest.mark.parametrize("name", list(GPU_MAX_CASES))
def test_triton_gpu_max(name, dtype):
    check_triton_max(*GPU_MAX_CASES[name], dtype, "cuda", reference="torch")


@pytest.mark.gpu
@gpu_dtypes
@pytest.mark.parametrize("name", list(GPU_AVG_CASES))
def test_triton_gpu_avg(name, dtype):
    check_triton_avg(*GPU_AVG_CASES[name], dtype, "cuda", reference="torch")


@pytest.mark.gpu
@gpu_dtypes
@pytest.mark.parametrize("name", list(GPU_ADAPTIVE_CASES))
def test_triton_gpu_adaptive(name, dtype):
    check_triton_adaptive(*GPU_ADAPTIVE_CASES[name], dtype, "cuda", reference="torch")


@pytest.mark.gpu
@gpu_dtypes
def test_triton_gpu_channels_last(dtype):
    """The channels_last kernels at realistic sizes (a ResNet's stem pool and head)."""
    check_triton_max(*GPU_MAX_CASES["resnet-stem-3x3-s2-p1"], dtype, "cuda", reference="torch", channels_last=True)
    check_triton_max(*GPU_MAX_CASES["dilated"], dtype, "cuda", reference="torch", channels_last=True)
    check_triton_avg(*GPU_AVG_CASES["ceil-divisor"], dtype, "cuda", reference="torch", channels_last=True)
    check_triton_adaptive(*GPU_ADAPTIVE_CASES["13-to-6"], dtype, "cuda", reference="torch", channels_last=True)
    check_triton_adaptive(*GPU_ADAPTIVE_CASES["global-7x7"], dtype, "cuda", reference="torch", channels_last=True)


@pytest.mark.gpu
@gpu_dtypes
def test_triton_gpu_deterministic(dtype):
    check_triton_deterministic((8, 64, 57, 41), dtype, "cuda")
