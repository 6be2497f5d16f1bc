"""conv2d / conv1d: the oracle against torch.nn.functional (float64), every CPU backend against
the oracle (forward and every gradient), the custom ops' registration, bad input, and the
Conv2d/Conv1d modules against torch.nn with the same weights.

Triton (kernels/conv.py): the same cases under Triton's interpreter (float32, in a
TRITON_INTERPRET=1 subprocess: Triton picks the interpreter when the kernels are imported), the
launcher's configurations against the compile-gate listing, and on a GPU (``@pytest.mark.gpu``)
ResNet-sized layers in float32 (TF32 off and on), bfloat16 and float16 plus a determinism check
of the weight gradient.
"""
import importlib.util
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import oracle
from gatedrnn.nn.conv import Conv1d, Conv2d
from gatedrnn.ops import conv as conv_ops
from gatedrnn.ops.conv import conv1d, conv2d

from interpreter import INTERPRETING, outside_interpreter, run_interpreted
from spatial_checks import (assert_close, check_eager_autograd, cpu_backends, needs_cython, ops_dispatched,
                            relative_error, rounded)

BACKENDS = cpu_backends("conv")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# gatedrnn.kernels is the checkout's kernels/ once installed (pip install -e .); Triton itself
# is an optional dependency.
HAS_TRITON_KERNELS = (importlib.util.find_spec("triton") is not None
                      and importlib.util.find_spec("gatedrnn.kernels") is not None)
# torch's own conv2d warns about the extra copy an even 'same' kernel needs; it is not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# (batch, in_channels, height, width, out_channels, kernel, stride, padding, dilation, groups, bias)
CASES = {
    "3x3-pad1": (2, 3, 7, 9, 5, 3, 1, 1, 1, 1, True),
    "batch1-odd": (1, 5, 11, 6, 7, (3, 2), (2, 1), (1, 0), (1, 2), 1, True),
    "stride2-dilation2": (2, 4, 13, 12, 6, 3, 2, 2, 2, 2, False),
    "depthwise": (2, 6, 8, 7, 6, 3, 1, 1, 1, 6, True),
    "depthwise-multiplier": (1, 3, 9, 9, 6, (2, 3), (1, 2), (0, 1), 1, 3, False),
    "1x1": (3, 8, 5, 7, 4, 1, 1, 0, 1, 1, True),
    "1x1-stride2": (2, 8, 9, 7, 6, 1, 2, 0, 1, 2, True),
    "stem-7x7-s2": (1, 3, 17, 15, 8, 7, 2, 3, 1, 1, False),
    "same-even-kernel": (2, 4, 6, 7, 3, (2, 4), 1, "same", (1, 2), 1, True),
    "same-dilated": (1, 4, 7, 7, 4, 3, 1, "same", 3, 2, True),
    "valid": (2, 3, 6, 8, 2, (3, 5), 1, "valid", 1, 1, True),
    "kernel-equals-padded-input": (2, 2, 3, 4, 3, (5, 4), 1, (1, 0), 1, 1, True),
    # Wider padding than input: whole output columns read only padding.
    "narrow-wide-padding": (1, 8, 12, 2, 6, (2, 1), (3, 1), (0, 2), (2, 3), 2, True),
    # K = 48 * 9 = 432 rows: a 17x19 output spans two im2col tiles of the Cython backend.
    "multi-tile": (2, 48, 17, 19, 5, 3, 1, 1, 1, 1, True),
}


def draw_case(case, seed=0):
    n, c_in, h, w, c_out, kernel, stride, padding, dilation, groups, bias = case
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, c_in, h, w))
    weight = rng.uniform(-1, 1, (c_out, c_in // groups) + kernel) / np.sqrt(c_in // groups * kernel[0] * kernel[1])
    b = rng.uniform(-1, 1, c_out) if bias else None
    return x, weight, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.parametrize("name", list(CASES))
def test_oracle_matches_torch_float64(name):
    x, weight, bias, options = draw_case(CASES[name])
    tensors = [torch.tensor(a, requires_grad=True) if a is not None else None for a in (x, weight, bias)]
    y = F.conv2d(*tensors, **options)
    grad_y = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y.backward(grad_y)
    expected_y = oracle.conv2d_forward(x, weight, bias, **options)
    grad_x, grad_w, grad_b = oracle.conv2d_backward(grad_y.numpy(), x, weight, **options)
    named = {"y": (y, expected_y), "grad_x": (tensors[0].grad, grad_x), "grad_w": (tensors[1].grad, grad_w)}
    if bias is not None:
        named["grad_b"] = (tensors[2].grad, grad_b)
    assert_close(named, torch.float64)


def test_oracle_conv1d_matches_torch_float64():
    rng = np.random.default_rng(3)
    x, weight, bias = rng.standard_normal((2, 4, 13)), rng.standard_normal((6, 2, 3)), rng.standard_normal(6)
    options = dict(stride=2, padding=2, dilation=2, groups=2)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    y = F.conv1d(*tensors, **options)
    grad_y = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad_y)
    grads = oracle.conv1d_backward(grad_y.numpy(), x, weight, **options)
    assert_close({"y": (y, oracle.conv1d_forward(x, weight, bias, **options)),
                  **{name: (t.grad, g) for name, t, g in zip(("grad_x", "grad_w", "grad_b"), tensors, grads)}},
                 torch.float64)


def run_against_oracle(backend, dtype, case, requires=(True, True, True), seed=0, *, device="cpu",
                       tolerance=None, channels_last=False):
    """Forward and every requested gradient of ``conv2d`` on ``backend`` against the oracle on the
    same (rounded) inputs; norm-wise relative error <= tolerance (default: TOLERANCE[dtype]).
    Returns {name: relative error}."""
    x, weight, bias, options = draw_case(case, seed)
    x, weight = rounded(x, dtype), rounded(weight, dtype)
    bias = rounded(bias, dtype) if bias is not None else None
    tensors = [torch.tensor(a, dtype=dtype, device=device) if a is not None else None for a in (x, weight, bias)]
    if channels_last:
        tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    tensors = [t.requires_grad_(r) if t is not None else None for t, r in zip(tensors, requires)]
    y = conv2d(*tensors, **options, backend=backend)
    assert y.dtype == dtype
    grad_y = rounded(np.random.default_rng(seed + 1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype, device=device))
    grad_x, grad_w, grad_b = oracle.conv2d_backward(grad_y, x, weight, **options)
    named = {"y": (y, oracle.conv2d_forward(x, weight, bias, **options))}
    for name, tensor, expected in zip(("grad_x", "grad_w", "grad_b"), tensors, (grad_x, grad_w, grad_b)):
        if tensor is not None and tensor.requires_grad:
            named[name] = (tensor.grad, expected)
        elif tensor is not None:
            assert tensor.grad is None, name
    if tolerance is None:
        assert_close(named, dtype)
        return {}
    errors = {name: relative_error(actual, expected) for name, (actual, expected) in named.items()}
    assert all(e <= tolerance for e in errors.values()), f"relative errors above {tolerance:.0e}: {errors}"
    return errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_oracle(backend, dtype, name):
    run_against_oracle(backend, dtype, CASES[name])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("requires", [(False, True, True), (True, False, False), (False, False, True)],
                         ids=["no-input-grad", "input-grad-only", "bias-only"])
def test_partial_gradients(backend, requires):
    run_against_oracle(backend, torch.float64, CASES["batch1-odd"], requires=requires)
    run_against_oracle(backend, torch.float64, CASES["1x1"], requires=requires)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv1d_and_unbatched_and_noncontiguous(backend):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 15, dtype=torch.float64)
    weight = torch.randn(6, 2, 4, dtype=torch.float64)
    for options in (dict(stride=2, padding=1, dilation=2, groups=2), dict(padding="same", groups=2),
                    dict(padding=(3,), stride=(3,), groups=2)):
        torch.testing.assert_close(conv1d(x, weight, **options, backend=backend), F.conv1d(x, weight, **options))
        torch.testing.assert_close(conv1d(x[1], weight, **options, backend=backend), F.conv1d(x[1], weight, **options))
    image = torch.randn(2, 6, 5, 3, dtype=torch.float64).permute(0, 3, 1, 2)  # (2, 3, 6, 5), not contiguous
    kernel = torch.randn(4, 3, 3, 3, dtype=torch.float64)[..., :2]  # not contiguous either
    torch.testing.assert_close(conv2d(image, kernel, padding=1, backend=backend), F.conv2d(image, kernel, padding=1))
    torch.testing.assert_close(conv2d(image[0], kernel, backend=backend), F.conv2d(image[0], kernel))
    channels_last = image.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv2d(channels_last, kernel, backend=backend), F.conv2d(channels_last, kernel))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x = torch.zeros(0, 3, 5, 5, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    y = conv2d(x, weight, padding=1, backend=backend)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.count_nonzero(weight.grad) == 0


@needs_cython("conv")
def test_cython_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w, b: conv2d(a, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2, backend="cython"),
        (x, weight, bias), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.gatedrnn.conv2d.default, (x, weight, bias, [2, 1], [1, 1, 0, 1], [1, 1], 2, backend))
    torch.library.opcheck(torch.ops.gatedrnn.conv2d.default, (x, weight, None, [1, 1], [0, 0, 0, 0], [1, 2], 2, backend))
    grad_y = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.gatedrnn.conv2d_backward.default,
                          (grad_y, x.detach(), weight.detach(), [2, 1], [1, 1, 0, 1], [1, 1], 2, backend, [True, False, True]))
    torch.library.opcheck(torch.ops.gatedrnn.conv2d_backward.default,
                          (grad_y, x.detach(), weight.detach(), [2, 1], [1, 1, 0, 1], [1, 1], 2, backend, [False, True, False]))
    # channels_last input (or weight): outputs and gradients channels_last, fake and real alike
    last = torch.channels_last
    torch.library.opcheck(torch.ops.gatedrnn.conv2d.default,
                          (x.detach().contiguous(memory_format=last).requires_grad_(), weight, bias, [2, 1],
                           [1, 1, 0, 1], [1, 1], 2, backend))
    torch.library.opcheck(torch.ops.gatedrnn.conv2d_backward.default,
                          (grad_y, x.detach(), weight.detach().contiguous(memory_format=last), [2, 1], [1, 1, 0, 1],
                           [1, 1], 2, backend, [True, True, True]))


def check_memory_format_follows_torch(backend):
    """y, grad_x and grad_w come back with the strides torch's conv2d gives them (channels_last
    when x or w is channels_last, else contiguous), on every backend; the op's fake says the same."""
    torch.manual_seed(0)
    last = torch.channels_last
    dtype = torch.float32 if backend == "triton" else torch.float64   # Triton: no float64 kernels
    for x_last, w_last in itertools.product((False, True), repeat=2):
        x = torch.randn(2, 16, 6, 7, dtype=dtype)
        w = torch.randn(24, 16, 3, 3, dtype=dtype)
        x = (x.contiguous(memory_format=last) if x_last else x).requires_grad_()
        w = (w.contiguous(memory_format=last) if w_last else w).requires_grad_()
        reference = [x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()]
        y = conv2d(x, w, padding=1, backend=backend)
        expected = F.conv2d(*reference, padding=1)
        grad_y = torch.randn_like(expected)
        ours = (y, *torch.autograd.grad(y, (x, w), grad_y))
        theirs = (expected, *torch.autograd.grad(expected, reference, grad_y))
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake = torch.ops.gatedrnn.conv2d(mode.from_tensor(x), mode.from_tensor(w), None, [1, 1], [1, 1, 1, 1],
                                             [1, 1], 1, backend)
        for name, a, b in zip(("y", "grad_x", "grad_w"), ours, theirs):
            assert a.stride() == b.stride(), (backend, x_last, w_last, name, a.stride(), b.stride())
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
        assert fake.stride() == expected.stride(), (x_last, w_last)


@pytest.mark.parametrize("backend", BACKENDS)
def test_memory_format_follows_torch(backend):
    check_memory_format_follows_torch(backend)


def test_eager_call_only_where_nothing_needs_the_dispatch():
    """gatedrnn.ops._recurrence.eager_call: plain tensors with nothing for autograd to record may skip
    the custom op; autograd, fake tensors, functorch transforms and torch-function modes may not."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.overrides import TorchFunctionMode

    from gatedrnn.ops._recurrence import eager_call

    x, leaf = torch.randn(2, 3), torch.randn(2, 3, requires_grad=True)
    assert eager_call(x, None)
    assert not eager_call(x, leaf)
    with torch.no_grad():
        assert eager_call(x, leaf)
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(x)
        assert not eager_call(fake)
    assert torch.func.vmap(lambda row: torch.tensor(float(eager_call(row))))(x).eq(0).all()

    class Passthrough(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        assert not eager_call(x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv2d_calls_its_custom_op_only_when_something_needs_it(backend):
    """An eager call without autograd runs the op's body directly (same numbers), from a module
    too (its parameters are plain tensors to the dispatcher); an eager call autograd records runs
    it in the autograd.Function built from the op's own autograd registration (the same outputs
    and gradients as through the op, bitwise); one on fake tensors goes through gatedrnn::conv2d."""
    torch.manual_seed(2)
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    weight = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, dtype=torch.float64)
    expected = F.conv2d(x, weight.detach(), bias, 1, 1, 1, 2)

    def run():
        return conv2d(x, weight, bias, padding=1, groups=2, backend=backend)

    with torch.no_grad():
        assert ops_dispatched(run) == []
        direct = run()
    torch.testing.assert_close(direct, expected, rtol=1e-10, atol=1e-10)
    check_eager_autograd(run, [weight], "conv2d")
    recorded = run()
    assert recorded.grad_fn is not None
    torch.testing.assert_close(recorded.detach(), expected, rtol=1e-10, atol=1e-10)
    from torch._subclasses.fake_tensor import FakeTensorMode
    plain_weight = weight.detach()
    with FakeTensorMode() as mode, torch.no_grad():
        # the op's fake implementation (the body itself cannot run on fake tensors)
        fake = conv2d(mode.from_tensor(x), mode.from_tensor(plain_weight), None, padding=1, groups=2,
                      backend=backend)
    assert fake.shape == expected.shape
    module = Conv2d(4, 6, 3, padding=1, groups=2, backend=backend).double()
    with torch.no_grad():
        module.weight.copy_(plain_weight)
        module.bias.copy_(bias)
        assert ops_dispatched(lambda: module(x)) == []
        from_module = module(x)
    torch.testing.assert_close(from_module, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_returns_only_the_gradients_asked_for(backend):
    """output_mask (input, weight, bias): an unwanted gradient is an empty (0,) tensor, the wanted
    ones match the full backward's (without a bias, autograd asks for no bias gradient)."""
    torch.manual_seed(1)
    x = torch.randn(2, 6, 7, 5, dtype=torch.float64)
    weight = torch.randn(10, 3, 1, 3, dtype=torch.float64)
    grad_y = torch.randn(2, 10, 4, 3, dtype=torch.float64)
    geometry = ([2, 1], [0, 1, 0, 0], [1, 1], 2, backend)
    full = torch.ops.gatedrnn.conv2d_backward(grad_y, x, weight, *geometry, [True, True, True])
    for mask in itertools.product([False, True], repeat=3):
        parts = torch.ops.gatedrnn.conv2d_backward(grad_y, x, weight, *geometry, list(mask))
        for wanted, part, whole in zip(mask, parts, full):
            if wanted:
                torch.testing.assert_close(part, whole, rtol=1e-12, atol=1e-12)
            else:
                assert part.shape == (0,)


# --- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(weight=torch.randn(6, 3, 3, 3)), ValueError, r"input has 4 channels but weight \(6, 3, 3, 3\) with groups=2"),
        (dict(groups=4), ValueError, r"weight.shape\[0\] \(out_channels\) = 6 must be divisible by groups=4"),
        (dict(groups=0), ValueError, "groups must be a positive int"),
        (dict(stride=0), ValueError, r"stride must be positive, got stride=\(0, 0\)"),
        (dict(dilation=(1, 0)), ValueError, "dilation must be positive"),
        (dict(padding=-1), ValueError, "padding must be non-negative"),
        (dict(padding="full"), ValueError, "padding must be 'same', 'valid'"),
        (dict(padding="same", stride=2), ValueError, "padding='same' needs stride 1"),
        (dict(weight=torch.randn(6, 2, 9, 3)), ValueError, r"kernel size \(9, 3\) .* larger than the padded input"),
        (dict(dilation=4), ValueError, "larger than the padded input"),
        (dict(input=torch.ones(2, 4, 7, 8, dtype=torch.int64)), TypeError, "input must be a floating-point tensor"),
        (dict(weight=torch.randn(6, 2, 3, 3, dtype=torch.float64)), TypeError, "weight must have the input's dtype"),
        (dict(bias=torch.randn(5)), ValueError, r"bias must have shape \(out_channels,\) = \(6,\), got \(5,\)"),
        (dict(input=torch.randn(4, 7)), ValueError, "input must be 4-D"),
        (dict(weight=torch.randn(6, 2, 3)), ValueError, "weight must be 4-D"),
        (dict(stride=(1, 2, 3)), TypeError, "stride must be an int or a sequence of 2 ints"),
        (dict(stride=True), TypeError, "stride must be an int or a sequence of 2 ints"),
        (dict(groups=2.0), ValueError, "groups must be a positive int"),
        (dict(input=[1.0]), TypeError, "input must be a torch.Tensor"),
        (dict(backend="cudnn"), ValueError, "unknown backend"),
    ],
)
@pytest.mark.parametrize("after_valid_call", [False, True], ids=["cold", "after-valid-call"])
def test_bad_input_names_the_argument(change, error, message, after_valid_call):
    arguments = dict(input=torch.randn(2, 4, 7, 8), weight=torch.randn(6, 2, 3, 3), bias=None, stride=1,
                     padding=0, dilation=1, groups=2, backend="numpy")
    if after_valid_call:
        # the valid call's geometry is cached (conv._GEOMETRY_CACHE); the bad one must still fail
        conv2d(**arguments)
    else:
        conv_ops._GEOMETRY_CACHE.clear()
    arguments.update(change)
    with pytest.raises(error, match=message):
        conv2d(**arguments)


def test_geometry_cache_gives_the_checked_geometry():
    """A repeated call takes its geometry from the cache: the same output as the first, the
    entry equal to what the checks compute, and no entry for a tensor subclass."""
    conv_ops._GEOMETRY_CACHE.clear()
    x, weight = torch.randn(2, 4, 9, 8), torch.randn(6, 4, 3, 2)
    first = conv2d(x, weight, None, (2, 1), "valid", [1, 2])
    assert len(conv_ops._GEOMETRY_CACHE) == 1
    (geometry,) = conv_ops._GEOMETRY_CACHE.values()
    assert geometry == conv_ops._checked_geometry("conv2d", x, weight, None, (2, 1), "valid", [1, 2], 1, 2)
    assert torch.equal(conv2d(x, weight, None, (2, 1), "valid", [1, 2]), first)
    padded = conv2d(x, weight, None, (2, 1), 1, [1, 2])   # another padding: another entry
    assert len(conv_ops._GEOMETRY_CACHE) == 2 and padded.shape != first.shape

    class Marked(torch.Tensor):
        pass

    conv2d(x.as_subclass(Marked), weight, None, (2, 1), "valid", [1, 2])
    assert len(conv_ops._GEOMETRY_CACHE) == 2


@needs_cython("conv")
def test_half_types_rejected_on_cython():
    with pytest.raises(TypeError, match="does not compute in torch.bfloat16"):
        conv2d(torch.randn(1, 2, 4, 4, dtype=torch.bfloat16), torch.randn(2, 2, 3, 3, dtype=torch.bfloat16),
               backend="cython")


# --- modules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2),
    dict(in_channels=3, out_channels=5, kernel_size=(2, 3), padding="same", dilation=2, bias=False),
    dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect", groups=4),
    dict(in_channels=4, out_channels=2, kernel_size=3, padding=(2, 1), padding_mode="circular"),
], ids=["grouped", "same-nobias", "reflect-depthwise", "circular"])
def test_conv2d_module_matches_torch(backend, options):
    torch.manual_seed(0)
    ours = Conv2d(**options, backend=backend)
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(**options)
    # Same initialisation from the same seed, same names and shapes.
    assert list(ours.state_dict()) == list(reference.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, options["in_channels"], 7, 6, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for (name, p), p_ref in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-4, msg=name)
    assert isinstance(ours, torch.nn.Conv2d) and f"backend='{backend}'" in repr(ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv1d_module_matches_torch(backend):
    torch.manual_seed(0)
    ours = Conv1d(4, 6, 3, stride=2, padding=1, groups=2, backend=backend).double()
    reference = torch.nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2).double()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 10, dtype=torch.float64)
    torch.testing.assert_close(ours(x), reference(x))
    torch.testing.assert_close(ours(x[0]), reference(x[0]))


def test_module_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        Conv2d(3, 4, 3, backend="mkl")


@pytest.mark.parametrize("backend", BACKENDS)
def test_modules_trace_with_torch_compile_fullgraph(backend):
    from gatedrnn.nn.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
    from gatedrnn.nn.sparse import Embedding

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        Conv2d(3, 8, 3, padding=1, backend=backend), torch.nn.ReLU(), MaxPool2d(2, backend=backend),
        AvgPool2d(2, ceil_mode=True, backend=backend), Conv2d(8, 4, 1, groups=2, backend=backend),
        AdaptiveAvgPool2d(1, backend=backend))
    table = Embedding(10, 4, padding_idx=0, backend=backend)

    def model(x, indices):
        return (net(x).flatten(1) + table(indices).sum(1)).square().sum()

    x = torch.randn(2, 3, 9, 9, requires_grad=True)
    indices = torch.tensor([[1, 2], [0, 3]])
    params = [x, *net.parameters(), table.weight]
    # Eager first: the dispatcher's one-time extension probe must not run inside the trace.
    eager_loss = model(x, indices)
    eager_grads = torch.autograd.grad(eager_loss, params)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled_loss = compiled(x, indices)
    compiled_grads = torch.autograd.grad(compiled_loss, params)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


def check_autocast_like_torch(device, autocast_dtype, backend, expected_dtype):
    """Under torch.autocast, conv2d/conv1d (functional and modules) cast input, weight and bias
    to the dtype the call computes in, as torch's convolutions do (the autocast dtype; float32
    on the Cython backend, which has no 16-bit kernels), from float32 or 16-bit input; the
    float32 parameters get float32 gradients. The ops inside run with autocast off (their
    float32 sums stay the backend's)."""
    torch.manual_seed(0)
    module = Conv2d(4, 6, 3, padding=1, backend=backend).to(device)
    reference = torch.nn.Conv2d(4, 6, 3, padding=1).to(device)
    reference.load_state_dict(module.state_dict())
    x = torch.randn(2, 4, 9, 7, device=device)
    for given in (x, x.to(autocast_dtype), x.contiguous(memory_format=torch.channels_last)):
        with torch.autocast(device, dtype=autocast_dtype):
            y, y_ref = module(given), reference(given)
            line = conv1d(given[:, :, 0], module.weight[:, :, 0], module.bias, padding=1, backend=backend)
        assert y.dtype == line.dtype == expected_dtype and y_ref.dtype == autocast_dtype
        torch.testing.assert_close(y.float(), y_ref.float(), rtol=3e-2, atol=3e-2)
        grads = torch.autograd.grad(y.float().square().sum(), list(module.parameters()))
        grads_ref = torch.autograd.grad(y_ref.float().square().sum(), list(reference.parameters()))
        for a, b in zip(grads, grads_ref):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2 * b.abs().max().item())


def test_autocast_like_torch_numpy():
    check_autocast_like_torch("cpu", torch.bfloat16, "numpy", torch.bfloat16)


@needs_cython("conv")
def test_autocast_cython_computes_in_float32():
    check_autocast_like_torch("cpu", torch.bfloat16, "cython", torch.float32)


@needs_cython("conv")
@pytest.mark.parametrize("budget", [(7, 1), (40, 3)], ids=["tile-1", "tile-3"])
def test_cython_tiles_that_split_output_rows(budget):
    """A tiny im2col budget cuts small problems into many tiles whose edges fall inside output
    rows and inside the padding; every tile must unfold and fold back exactly."""
    extension = conv_ops.cpu_module("conv")
    previous = extension.set_tile_budget(*budget)
    try:
        for name in ("3x3-pad1", "batch1-odd", "stride2-dilation2", "depthwise-multiplier", "same-even-kernel",
                     "kernel-equals-padded-input", "1x1-stride2", "narrow-wide-padding"):
            run_against_oracle("cython", torch.float64, CASES[name])
    finally:
        extension.set_tile_budget(*previous)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_geometries_match_torch(backend):
    """Seeded random strides, paddings, dilations, groups and odd sizes against F.conv2d (float64)."""
    rng = np.random.default_rng(7)
    done = 0
    while done < 25:
        groups = int(rng.choice([1, 1, 2, 3]))
        c_in, c_out = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        kernel, stride, dilation, padding = (tuple(int(v) for v in rng.integers(low, high, 2))
                                             for low, high in ((1, 5), (1, 4), (1, 4), (0, 4)))
        size = tuple(int(v) for v in rng.integers(1, 12, 2))
        if any(d * (k - 1) + 1 > s + 2 * p for d, k, s, p in zip(dilation, kernel, size, padding)):
            continue
        done += 1
        x = torch.randn((int(rng.integers(1, 3)), c_in) + size, dtype=torch.float64, requires_grad=True)
        weight = torch.randn((c_out, c_in // groups) + kernel, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
        arguments = (stride, padding, dilation, groups)
        y, expected = conv2d(x, weight, bias, *arguments, backend=backend), F.conv2d(x, weight, bias, *arguments)
        torch.testing.assert_close(y, expected, msg=lambda m: f"{arguments} {tuple(x.shape)}: {m}")
        grad_y = torch.randn_like(y)
        for a, b in zip(torch.autograd.grad(y, (x, weight, bias), grad_y),
                        torch.autograd.grad(expected, (x, weight, bias), grad_y)):
            torch.testing.assert_close(a, b, msg=lambda m: f"{arguments} {tuple(x.shape)}: {m}")


@needs_cython("conv")
def test_cython_extension_checks_its_own_arguments():
    extension = conv_ops.cpu_module("conv")
    x, w = np.zeros((1, 2, 4, 4), np.float32), np.zeros((2, 1, 3, 3), np.float32)
    y, bias = np.zeros((1, 2, 2, 2), np.float32), np.zeros(2, np.float32)
    for groups in (0, 3):  # would divide by zero / read past w
        with pytest.raises(ValueError, match="do not fit groups"):
            extension.conv2d_forward(x, w, bias, 1, 1, 0, 0, 1, 1, groups, y, 1)
    with pytest.raises(ValueError, match="stride and dilation must be positive"):
        extension.conv2d_forward(x, w, bias, 0, 1, 0, 0, 1, 1, 2, y, 1)


# --- triton (kernels/conv.py) ---------------------------------------------------------------------
# CASES above mostly have fewer than 16 channels per group, so they run the flattened-reduction
# (FLAT_K) dense kernels or the direct kernels; these reach the per-tap dense path (Cg >= 16).
TRITON_CASES = {
    "dense-3x3-s2": (2, 20, 9, 8, 18, 3, 2, 1, 1, 1, True),
    # Asymmetric (top 1, bottom 2 / left 1, right 2) padding of an even dilated kernel.
    "dense-same-even-dilated": (1, 17, 6, 7, 19, (2, 4), 1, "same", (1, 2), 1, True),
    "dense-grouped-s2x3-d2": (1, 34, 7, 6, 36, 3, (2, 3), (2, 1), (2, 1), 2, False),
    # Stride 3 > kernel 2: the input-gradient phase (ih % 3 == 2) that no tap reaches is zeros.
    "dense-k2-s3": (2, 16, 8, 9, 16, 2, 3, 0, 1, 1, True),
    # Two channel blocks in the reduction and 130 output channels: two channel tiles.
    "dense-1x1-s2-wide": (1, 33, 5, 7, 130, 1, 2, 0, 1, 1, True),
}
ALL_CASES = {**CASES, **TRITON_CASES}
needs_interpreter = pytest.mark.skipif(
    not (INTERPRETING and HAS_TRITON_KERNELS),
    reason="runs in the TRITON_INTERPRET=1 subprocess (test_triton_interpreter_subprocess)")
needs_kernels = pytest.mark.skipif(not HAS_TRITON_KERNELS, reason="Triton or gatedrnn.kernels not installed")


def conv_kernels():
    return importlib.import_module("gatedrnn.kernels.conv")


@needs_interpreter
@pytest.mark.parametrize("name", list(ALL_CASES))
def test_triton_interpreted_matches_oracle(name):
    run_against_oracle("triton", torch.float32, ALL_CASES[name])


@needs_interpreter
@pytest.mark.parametrize("name", ["3x3-pad1", "depthwise", "dense-3x3-s2"])
def test_triton_interpreted_channels_last_is_not_copied(name):
    """channels_last input reaches the kernels with its strides (no .contiguous() copy)."""
    kernels = conv_kernels()
    seen = []

    def forward(x, *args):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return kernels.conv2d_forward(x, *args)

    def backward(grad_y, x, *args):
        seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return kernels.conv2d_backward(grad_y, x, *args)

    loaded = conv_ops._implementations.loaded
    previous = loaded.get("triton")
    loaded["triton"] = (forward, backward)
    try:
        run_against_oracle("triton", torch.float32, ALL_CASES[name], channels_last=True)
    finally:
        if previous is None:
            loaded.pop("triton")
        else:
            loaded["triton"] = previous
    assert seen == [True, True]


@needs_interpreter
@pytest.mark.parametrize("requires", [(False, True, True), (True, False, False), (False, False, True)],
                         ids=["no-input-grad", "input-grad-only", "bias-only"])
def test_triton_interpreted_partial_gradients(requires):
    for name in ("batch1-odd", "dense-3x3-s2", "depthwise"):
        run_against_oracle("triton", torch.float32, ALL_CASES[name], requires=requires)


@needs_interpreter
def test_triton_interpreted_weight_grad_split_reduction(monkeypatch):
    """The weight gradient summed from several pixel chunks (as on a GPU with many SMs)."""
    kernels = conv_kernels()
    monkeypatch.setattr(kernels, "MIN_BLOCKS_PER_SPLIT", 1)
    monkeypatch.setattr(kernels, "INTERPRETER_SM_COUNT", 64)
    splits = []
    split_pixels = kernels._split_pixels

    def recorded(*args):
        splits.append(split_pixels(*args)[0])
        return split_pixels(*args)

    monkeypatch.setattr(kernels, "_split_pixels", recorded)
    for name in ("multi-tile", "stem-7x7-s2", "depthwise", "dense-3x3-s2"):
        run_against_oracle("triton", torch.float32, ALL_CASES[name], requires=(False, True, False))
    run_against_oracle("triton", torch.float32, NHWC_CASES["nhwc-3x3-pad1"], requires=(False, True, False),
                       channels_last=True)
    assert len(splits) == 5 and min(splits) > 1, splits


@needs_interpreter
def test_triton_interpreted_other_tile_orientation(monkeypatch):
    """The (pixels x channels) load orientation that Triton 3.6 builds (see _gather_tile)."""
    monkeypatch.setattr(conv_kernels(), "PIXELS_LAST", not conv_kernels().PIXELS_LAST)
    for name in ("3x3-pad1", "depthwise-multiplier", "dense-grouped-s2x3-d2", "dense-k2-s3"):
        run_against_oracle("triton", torch.float32, ALL_CASES[name])


@needs_interpreter
def test_triton_interpreted_strided_views():
    """Permuted input, sliced weight, every-other-element bias and the zero-stride grad_y that
    y.sum() sends back: read through their strides, against torch in float64."""
    torch.manual_seed(0)
    image = torch.randn(2, 9, 7, 20, dtype=torch.float64).permute(0, 3, 1, 2)  # (2, 20, 9, 7)
    kernel = torch.randn(18, 10, 3, 5, dtype=torch.float64)[..., 1:4]  # (18, 10, 3, 3), groups=2
    bias = torch.randn(36, dtype=torch.float64)[::2]
    options = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    ours = [t.float().requires_grad_() for t in (image, kernel, bias)]
    ours[0] = ours[0].detach().permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2).requires_grad_()
    reference = [t.clone().requires_grad_() for t in (image, kernel, bias)]
    y = conv2d(*ours, **options, backend="triton")
    expected = F.conv2d(*reference, **options)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    expected.sum().backward()
    for name, a, b in zip(("input", "weight", "bias"), ours, reference):
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-4, msg=name)


@needs_interpreter
def test_triton_interpreted_float16():
    for name in ("3x3-pad1", "depthwise", "dense-3x3-s2"):
        run_against_oracle("triton", torch.float16, ALL_CASES[name], tolerance=1e-2)


# Channel counts the NHWC kernels take (>= 16 per group, multiples of 4 in float32 and 8 in
# 16-bit types); with a channels_last input the launchers pick them (conv_layout).
NHWC_CASES = {
    # 162 output pixels: two 128-pixel tiles.
    "nhwc-3x3-pad1": (2, 16, 9, 9, 24, 3, 1, 1, 1, 1, True),
    "nhwc-grouped-s2x1-d2": (2, 32, 11, 10, 32, (3, 2), (2, 1), (2, 0), (2, 1), 2, False),
    # 48 channels: a full and a masked reduction block (float32 forward); 136 out: channel tiles
    # of 64 (float32) / 128 (16-bit) with a masked last one.
    "nhwc-1x1-s2-wide": (1, 48, 5, 7, 136, 1, 2, 0, 1, 1, True),
    "nhwc-same-even-dilated": (1, 24, 6, 8, 16, (2, 4), 1, "same", (1, 2), 1, True),
    # Stride 3 > kernel 2: an input-gradient phase no tap reaches (zeros).
    "nhwc-k2-s3": (2, 16, 8, 7, 16, 2, 3, 0, 1, 1, False),
}
NHWC_KERNELS = {"conv2d_forward_nhwc_kernel", "conv2d_input_grad_nhwc_kernel", "conv2d_weight_grad_nhwc_kernel"}


class _LaunchRecorder:
    """Stands in for a @triton.jit kernel of kernels/conv.py: records its name at each launch."""

    def __init__(self, name, kernel, launched):
        self.name, self.kernel, self.launched = name, kernel, launched

    def __getitem__(self, grid):
        self.launched.append(self.name)
        return self.kernel[grid]


def record_launches(monkeypatch):
    """The list of conv kernel names launched from now on (in order)."""
    kernels = conv_kernels()
    launched = []
    for name, value in vars(kernels).copy().items():
        if name.startswith("conv2d_") and name.endswith("_kernel"):
            monkeypatch.setattr(kernels, name, _LaunchRecorder(name, value, launched))
    return launched


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("name", list(NHWC_CASES))
def test_triton_interpreted_nhwc_matches_oracle(monkeypatch, name, dtype):
    launched = record_launches(monkeypatch)
    run_against_oracle("triton", dtype, NHWC_CASES[name], channels_last=True,
                       tolerance=1e-2 if dtype == torch.float16 else None)
    assert set(launched) == NHWC_KERNELS, launched


@needs_interpreter
def test_triton_interpreted_nhwc_tf32_weight_packing(monkeypatch):
    """The NHWC input gradient's TF32 path, which reads the weight packed K-major (groups, KH, KW,
    Cg, Cog) (the interpreter picks "ieee" dots by itself; here the launcher is told TF32)."""
    kernels = conv_kernels()
    monkeypatch.setattr(kernels, "dot_precision", lambda dtype: "tf32" if dtype == torch.float32 else "ieee")
    packed = []
    pack = kernels._input_grad_weight

    def recorded(w, groups, precision):
        packed.append(precision)
        return pack(w, groups, precision)

    monkeypatch.setattr(kernels, "_input_grad_weight", recorded)
    for name in ("nhwc-grouped-s2x1-d2", "nhwc-1x1-s2-wide", "nhwc-same-even-dilated"):
        run_against_oracle("triton", torch.float32, NHWC_CASES[name], channels_last=True, tolerance=5e-3)
    assert packed == ["tf32"] * 3, packed


@needs_interpreter
def test_triton_interpreted_nhwc_forced_on_contiguous_input(monkeypatch):
    """GATEDRNN_TRITON_CONV_LAYOUT=nhwc: NCHW x and grad_y are copied to channels_last for the
    NHWC kernels; y and the gradients still come back in x's layout (contiguous)."""
    monkeypatch.setenv("GATEDRNN_TRITON_CONV_LAYOUT", "nhwc")
    launched = record_launches(monkeypatch)
    for name in ("nhwc-grouped-s2x1-d2", "nhwc-k2-s3"):
        run_against_oracle("triton", torch.float32, NHWC_CASES[name])
    assert set(launched) == NHWC_KERNELS, launched
    x = torch.randn(1, 16, 5, 5, requires_grad=True)
    y = conv2d(x, torch.randn(16, 16, 3, 3), padding=1, backend="triton")
    y.sum().backward()   # grad_y: an expanded (zero-stride) tensor
    assert y.is_contiguous() and x.grad.is_contiguous()


@needs_interpreter
def test_triton_interpreted_nhwc_channel_slice(monkeypatch):
    """Channels 8..39 of a channels_last tensor: unit channel stride, 32-byte offset; the NHWC
    kernels read the view as it is (no copy), against torch in float64."""
    launched = record_launches(monkeypatch)
    torch.manual_seed(3)
    wide = torch.randn(2, 48, 7, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    kernel = torch.randn(32, 16, 3, 3, dtype=torch.float64) / 12
    ours = wide.float()[:, 8:40].detach().requires_grad_()
    assert conv_kernels().nhwc_strides_ok(ours) and not ours.is_contiguous(memory_format=torch.channels_last)
    weight = kernel.float().requires_grad_()
    reference = [wide[:, 8:40].clone().requires_grad_(), kernel.clone().requires_grad_()]
    options = dict(stride=(1, 2), padding=1, groups=2)
    y = conv2d(ours, weight, **options, backend="triton")
    expected = F.conv2d(*reference, **options)
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    grad_y = torch.randn_like(expected)
    y.backward(grad_y.float())
    expected.backward(grad_y)
    torch.testing.assert_close(ours.grad.double(), reference[0].grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), reference[1].grad, rtol=1e-5, atol=1e-4)
    assert set(launched) == NHWC_KERNELS, launched


@needs_interpreter
def test_triton_interpreted_memory_format_follows_torch():
    check_memory_format_follows_torch("triton")


@outside_interpreter
@needs_kernels
def test_triton_interpreter_subprocess():
    """Runs the test_triton_interpreted_* cases above under TRITON_INTERPRET=1 (~30 s, 2 cores)."""
    run_interpreted(__file__, "triton_interpreted", timeout=600)


@needs_kernels
def test_triton_launcher_configs_are_in_the_gate_listing():
    """Every (kernel, constexprs, warps, stages) the launchers pick, over channel counts, groups,
    dtypes and TF32 on/off, is one of gate_configs(80/90); each entry names every argument."""
    kernels = conv_kernels()
    rng = np.random.default_rng(5)
    shapes = [(3, 64, 1), (64, 64, 1), (256, 64, 1), (2048, 1000, 1), (17, 130, 1), (144, 144, 144),
              (32, 64, 32), (128, 128, 32), (64, 64, 2), (34, 36, 2), (1, 8, 1), (5, 7, 1)]
    shapes += [(int(g * rng.integers(1, 300)), int(g * rng.integers(1, 300)), int(g))
               for g in rng.choice([1, 1, 2, 4, 8], 40)]
    checked = set()
    layouts_seen = set()
    for capability in (80, 90):
        listing = kernels.gate_configs(capability)
        for entry in listing:
            fn = getattr(kernels, entry["kernel"])
            assert list(entry["signature"]) == list(fn.arg_names), entry["label"]
            assert {n for n, t in entry["signature"].items() if t == "constexpr"} == set(entry["constexprs"])
        # Every kernel's first argument is a pointer to the tensors' dtype.
        keys = {(e["kernel"], next(iter(e["signature"].values())), tuple(sorted(e["constexprs"].items())),
                 e["num_warps"], e["num_stages"]) for e in listing}
        assert len(keys) == len(listing), "duplicate entries"
        for (c_in, c_out, groups), dtype, tf32, memory_format in itertools.product(
                shapes, (torch.float32, torch.bfloat16, torch.float16), (False, True),
                (torch.contiguous_format, torch.channels_last)):
                    x = torch.empty(2, c_in, 9, 9, dtype=dtype, device="meta", memory_format=memory_format)
                    w = torch.empty(c_out, c_in // groups, 3, 3, dtype=dtype, device="meta")
                    layout = kernels.conv_layout(x, w, groups)
                    layouts_seen.add(layout)
                    with torch.backends.cudnn.flags(allow_tf32=tf32):
                        for which in ("forward", "input_grad", "weight_grad"):
                            plan = kernels.launch_plan(x, w, groups, which, capability=(capability // 10, 0))
                            assert ("nhwc" in plan.kernel) == (layout == "nhwc")
                            pointer = "*" + {torch.float32: "fp32", torch.bfloat16: "bf16",
                                             torch.float16: "fp16"}[dtype]
                            key = (plan.kernel, pointer, tuple(sorted(plan.constexprs.items())), plan.num_warps,
                                   plan.num_stages)
                            assert key in keys, (capability, c_in, c_out, groups, dtype, which, key)
                            checked.add(key)
    # The spread reaches every kernel of the module, both FLAT_K modes and every channel tile.
    assert {k[0] for k in checked} == {e["kernel"] for e in kernels.gate_configs(90)}
    assert layouts_seen == {"strided", "nhwc"}
    assert len(kernels.gate_configs(90)) <= 80, "keep the compile gate small (CI compiles it twice on 2 cores)"


@needs_kernels
@pytest.mark.parametrize("mode", ["auto", "strided", "nhwc"])
def test_triton_conv_layout_choice(monkeypatch, mode):
    """Which kernels a conv runs: NHWC where the channels allow it and x has a unit channel stride
    and 16-byte aligned strides (or always, copying x, under GATEDRNN_TRITON_CONV_LAYOUT=nhwc);
    never under "strided"; an unknown mode is an error naming the variable."""
    kernels = conv_kernels()
    monkeypatch.setenv("GATEDRNN_TRITON_CONV_LAYOUT", mode)
    last = torch.channels_last

    def layout(c_in, c_out, groups=1, dtype=torch.bfloat16, memory_format=last, size=(9, 9), narrow=None):
        x = torch.empty(2, c_in, *size, dtype=dtype, device="meta", memory_format=memory_format)
        if narrow is not None:   # a channel slice of a wider channels_last tensor
            x = torch.empty(2, c_in + 8, *size, dtype=dtype, device="meta", memory_format=last)[:, narrow:narrow + c_in]
        w = torch.empty(c_out, c_in // groups, 3, 3, dtype=dtype, device="meta")
        return kernels.conv_layout(x, w, groups)

    eligible = {"auto": "nhwc", "strided": "strided", "nhwc": "nhwc"}[mode]
    assert layout(64, 128) == eligible
    assert layout(64, 128, dtype=torch.float32) == eligible
    assert layout(48, 32, groups=2) == eligible            # 24 -> 16 channels per group
    assert layout(64, 128, size=(1, 1)) == eligible        # size-1 dimensions: any stride there
    # A 1x1 image is both layouts at once: NCHW-contiguous reads as NHWC.
    assert layout(64, 128, memory_format=torch.contiguous_format, size=(1, 1)) == eligible
    assert layout(64, 128, narrow=8) == eligible           # channels 8.. of a channels_last tensor: aligned
    assert layout(64, 128, narrow=4) == ("strided" if mode == "auto" else eligible)   # 8-byte offset
    assert layout(64, 128, memory_format=torch.contiguous_format) == ("nhwc" if mode == "nhwc" else "strided")
    # Channel counts no NHWC kernel takes, whatever the mode and layout:
    assert layout(3, 64) == "strided"                      # the stem: < 16 channels per group
    assert layout(64, 20) == "strided"                     # 20 output channels: not a multiple of 8
    assert layout(32, 32, groups=4) == "strided"           # 8 channels per group: direct kernels
    with monkeypatch.context() as patched:
        patched.setenv("GATEDRNN_TRITON_CONV_LAYOUT", "NHWC ")
        with pytest.raises(ValueError, match="GATEDRNN_TRITON_CONV_LAYOUT"):
            layout(64, 128)


# --- triton on a GPU ------------------------------------------------------------------------------
# ResNet-50 / ResNeXt / MobileNetV2 layers at batch 2 (the oracle is NumPy; the spatial sizes are
# the real ones except the stem's, halved). Each: forward and both gradients against the oracle.
GPU_CASES = {
    "resnet-stem-7x7-s2": (2, 3, 112, 112, 64, 7, 2, 3, 1, 1, False),
    "resnet-3x3-64": (2, 64, 56, 56, 64, 3, 1, 1, 1, 1, False),
    "resnet-1x1-256-64": (2, 256, 56, 56, 64, 1, 1, 0, 1, 1, False),
    "resnet-3x3-128-s2": (2, 128, 56, 56, 128, 3, 2, 1, 1, 1, False),
    "resnet-1x1-512-1024-s2": (2, 512, 28, 28, 1024, 1, 2, 0, 1, 1, False),
    "resnet-3x3-512-7x7": (2, 512, 7, 7, 512, 3, 1, 1, 1, 1, True),
    "resnext-3x3-g32": (2, 128, 28, 28, 128, 3, 1, 1, 1, 32, False),
    "mobilenet-depthwise-s2": (2, 144, 56, 56, 144, 3, 2, 1, 1, 144, False),
    "dilated-odd-3x3-d2": (2, 96, 33, 47, 80, 3, 1, 2, 2, 1, True),
}

@pytest.mark.parametrize("name", list(GPU_CASES))
@pytest.mark.gpu
@needs_kernels
def test_gpu_float32_ieee_matches_oracle(name):
    with torch.backends.cudnn.flags(allow_tf32=False):
        run_against_oracle("triton", torch.float32, GPU_CASES[name], device="cuda", tolerance=1e-5)


@pytest.mark.parametrize("name", ["resnet-stem-7x7-s2", "resnet-3x3-64", "resnet-3x3-128-s2", "resnext-3x3-g32"])
@pytest.mark.gpu
@needs_kernels
def test_gpu_float32_tf32_matches_oracle(name):
    with torch.backends.cudnn.flags(allow_tf32=True):
        run_against_oracle("triton", torch.float32, GPU_CASES[name], device="cuda", tolerance=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", list(GPU_CASES))
@pytest.mark.gpu
@needs_kernels
def test_gpu_half_matches_oracle(name, dtype):
    run_against_oracle("triton", dtype, GPU_CASES[name], device="cuda", tolerance=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "f32"])
@pytest.mark.parametrize("name", ["resnet-3x3-64", "resnet-3x3-128-s2", "resnet-1x1-512-1024-s2", "dilated-odd-3x3-d2",
                                  "resnet-stem-7x7-s2", "mobilenet-depthwise-s2"])
@pytest.mark.gpu
@needs_kernels
def test_gpu_channels_last(name, dtype):
    """channels_last tensors: the NHWC kernels (16-byte vector loads, cp.async) where the channels
    allow (all but the 3-channel stem and the depthwise conv, which read NHWC through strides)."""
    x, weight, _, options = draw_case(GPU_CASES[name])
    layout = conv_kernels().conv_layout(torch.empty(x.shape, dtype=dtype, device="meta").contiguous(
        memory_format=torch.channels_last), torch.empty(weight.shape, dtype=dtype, device="meta"), options["groups"])
    assert layout == ("strided" if name in ("resnet-stem-7x7-s2", "mobilenet-depthwise-s2") else "nhwc")
    with torch.backends.cudnn.flags(allow_tf32=False):
        run_against_oracle("triton", dtype, GPU_CASES[name], device="cuda", channels_last=True,
                           tolerance=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.gpu
@needs_kernels
def test_gpu_autocast_like_cudnn(dtype):
    check_autocast_like_torch("cuda", dtype, "triton", dtype)


@pytest.mark.parametrize("name", ["resnet-3x3-64", "resnet-stem-7x7-s2", "mobilenet-depthwise-s2"])
@pytest.mark.gpu
@needs_kernels
def test_gpu_weight_gradient_is_deterministic(name):
    """Split pixel reduction, partial sums added in a fixed order: bitwise equal reruns."""
    kernels = conv_kernels()
    x, weight, _, options = draw_case(GPU_CASES[name])
    x = torch.tensor(x, dtype=torch.float32, device="cuda")
    weight = torch.tensor(weight, dtype=torch.float32, device="cuda")
    padding = conv_ops._padding(options["padding"], 2, weight.shape[2:], (options["dilation"],) * 2,
                                (options["stride"],) * 2, "conv2d")
    stride, dilation = [options["stride"]] * 2, [options["dilation"]] * 2
    y = kernels.conv2d_forward(x, weight, None, stride, list(padding), dilation, options["groups"])
    grad_y = torch.randn_like(y)
    plan = kernels.launch_plan(x, weight, options["groups"], "weight_grad")
    pixel_blocks = y.shape[0] * y.shape[2] * y.shape[3] // plan.constexprs["BLOCK_P"]
    assert pixel_blocks >= 2 * kernels.MIN_BLOCKS_PER_SPLIT  # long enough to be split
    first = kernels.conv2d_backward(grad_y, x, weight, stride, list(padding), dilation, options["groups"],
                                    [False, True, False])[1]
    for _ in range(3):
        again = kernels.conv2d_backward(grad_y, x, weight, stride, list(padding), dilation, options["groups"],
                                        [False, True, False])[1]
        assert torch.equal(first, again)
