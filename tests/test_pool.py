"""max_pool2d / avg_pool2d / adaptive_avg_pool2d: the oracle against torch.nn.functional
(float64), every CPU backend against the oracle (forward, indices, gradients), the custom ops'
registration, bad input, and the modules against torch.nn."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import oracle
from gatedrnn.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from gatedrnn.ops import pool as pool_ops
from gatedrnn.ops.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d

from spatial_checks import assert_close, cpu_backends, needs_cython, rounded

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
def test_opcheck(backend):
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.gatedrnn.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True, backend))
    torch.library.opcheck(torch.ops.gatedrnn.avg_pool2d.default,
                          (x, [3, 2], [2, 1], [1, 1], True, False, None, backend))
    torch.library.opcheck(torch.ops.gatedrnn.avg_pool2d.default, (x, [2, 2], [2, 2], [0, 0], False, True, 3, backend))
    torch.library.opcheck(torch.ops.gatedrnn.adaptive_avg_pool2d.default, (x, [4, 3], backend))
    grad_y = torch.randn(2, 3, 4, 3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.gatedrnn.adaptive_avg_pool2d_backward.default, (grad_y, [2, 3, 9, 8], backend))


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


def test_bad_tensors_and_triton_slot():
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        max_pool2d(torch.ones(1, 1, 4, 4, dtype=torch.int64), 2, backend="numpy")
    with pytest.raises(ValueError, match="input must be 4-D"):
        avg_pool2d(torch.randn(4, 4), 2, backend="numpy")
    with pytest.raises(ValueError, match="non-zero H and W"):
        adaptive_avg_pool2d(torch.randn(1, 2, 0, 4), 2, backend="numpy")
    with pytest.raises(RuntimeError, match="not implemented yet for backend 'triton'"):
        pool_ops._implementations("triton")


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_window_that_misses_the_input(backend):
    """Dilation plus ceil_mode can give a window with no input element: torch returns -inf and
    an index past the plane (and its backward then writes into the next plane, or past the end;
    so torch's backward is not run here). We match the forward and give that window's gradient
    to nothing."""
    x = torch.randn(1, 2, 1, 3, dtype=torch.float64)
    options = dict(kernel_size=(2, 2), stride=(4, 1), padding=(1, 1), dilation=(2, 1), ceil_mode=True)
    expected, expected_indices = F.max_pool2d(x, **options, return_indices=True)
    x.requires_grad_()
    y, indices = max_pool2d(x, **options, return_indices=True, backend=backend)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(indices, expected_indices, rtol=0, atol=0)
    assert bool((indices >= 3).any()) and bool(torch.isinf(y).all())
    y.backward(torch.ones_like(y))
    assert torch.count_nonzero(x.grad) == 0


@needs_cython("pool")
def test_cython_extension_checks_its_own_arguments():
    extension = pool_ops.cpu_module("pool")
    x, y = np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 2, 2))
    indices = np.zeros((1, 1, 2, 2), np.int64)
    with pytest.raises(ValueError, match="must be positive"):  # a zero dilation step would loop forever
        extension.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 0, 1, y, indices, 1)
    with pytest.raises(ValueError, match="must be positive"):
        extension.avg_pool2d_forward(x, 2, 2, 0, 2, 0, 0, True, 0, y, 1)
