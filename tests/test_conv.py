"""conv2d / conv1d: the oracle against torch.nn.functional (float64), every CPU backend against
the oracle (forward and every gradient), the custom ops' registration, bad input, and the
Conv2d/Conv1d modules against torch.nn with the same weights."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import oracle
from gatedrnn.nn.conv import Conv1d, Conv2d
from gatedrnn.ops import conv as conv_ops
from gatedrnn.ops.conv import conv1d, conv2d

from spatial_checks import assert_close, cpu_backends, needs_cython, rounded

BACKENDS = cpu_backends("conv")
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


def run_against_oracle(backend, dtype, case, requires=(True, True, True), seed=0):
    x, weight, bias, options = draw_case(case, seed)
    x, weight = rounded(x, dtype), rounded(weight, dtype)
    bias = rounded(bias, dtype) if bias is not None else None
    tensors = [torch.tensor(a, dtype=dtype).requires_grad_(r) if a is not None else None
               for a, r in zip((x, weight, bias), requires)]
    y = conv2d(*tensors, **options, backend=backend)
    assert y.dtype == dtype
    grad_y = rounded(np.random.default_rng(seed + 1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype))
    grad_x, grad_w, grad_b = oracle.conv2d_backward(grad_y, x, weight, **options)
    named = {"y": (y, oracle.conv2d_forward(x, weight, bias, **options))}
    for name, tensor, expected in zip(("grad_x", "grad_w", "grad_b"), tensors, (grad_x, grad_w, grad_b)):
        if tensor is not None and tensor.requires_grad:
            named[name] = (tensor.grad, expected)
        elif tensor is not None:
            assert tensor.grad is None, name
    assert_close(named, dtype)


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
                          (grad_y, x.detach(), weight.detach(), [2, 1], [1, 1, 0, 1], [1, 1], 2, backend, [True, False]))


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
        (dict(input=[1.0]), TypeError, "input must be a torch.Tensor"),
        (dict(backend="cudnn"), ValueError, "unknown backend"),
    ],
)
def test_bad_input_names_the_argument(change, error, message):
    arguments = dict(input=torch.randn(2, 4, 7, 8), weight=torch.randn(6, 2, 3, 3), bias=None, stride=1,
                     padding=0, dilation=1, groups=2, backend="numpy")
    arguments.update(change)
    with pytest.raises(error, match=message):
        conv2d(**arguments)


def test_half_types_rejected_on_cython_and_triton_slot_names_the_fix():
    if "cython" in BACKENDS:
        with pytest.raises(TypeError, match="does not compute in torch.bfloat16"):
            conv2d(torch.randn(1, 2, 4, 4, dtype=torch.bfloat16), torch.randn(2, 2, 3, 3, dtype=torch.bfloat16),
                   backend="cython")
    with pytest.raises(RuntimeError, match="not implemented yet for backend 'triton'.*backend='cython'"):
        conv_ops._implementations("triton")


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
