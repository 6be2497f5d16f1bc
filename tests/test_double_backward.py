"""Double backward (gradients of gradients) of conv2d/conv1d, the pools and embedding.

Each backward op has its own autograd (the double backward), built from the same ops, so
``create_graph=True`` works as with torch.nn.functional: gradient penalties (WGAN-GP),
Hessian-vector products. Checked with ``torch.autograd.gradgradcheck`` (float64, every CPU
backend), against torch on a gradient-penalty step of a small CNN, on the Triton backend under
TRITON_INTERPRET=1 against the numpy backend, and (``gpu``) on the device against torch's cuDNN
path in float32 and bfloat16. The recurrences have none (as cuDNN's RNNs).
"""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradgradcheck

import gatedrnn

from interpreter import INTERPRETING, in_interpreter, outside_interpreter, run_interpreted
from spatial_checks import cpu_backends

BACKENDS = cpu_backends("conv")

# (input shape, weight shape, keyword arguments): odd sizes, every geometry option.
CONV_CASES = {
    "bias": ((2, 3, 6, 5), (4, 3, 3, 2), dict()),
    "stride-padding": ((1, 3, 7, 6), (5, 3, 3, 3), dict(stride=2, padding=1)),
    "dilation-groups": ((2, 4, 7, 5), (6, 2, 3, 2), dict(padding=(1, 2), dilation=(2, 1), groups=2)),
    "depthwise": ((2, 3, 5, 5), (3, 1, 3, 3), dict(padding=1, groups=3)),
    "same-even-kernel": ((1, 2, 5, 6), (3, 2, 2, 4), dict(padding="same")),
}

POOL_CASES = {
    "max-2": ("max", dict(kernel_size=2)),
    "max-ceil": ("max", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    "max-dilated": ("max", dict(kernel_size=(3, 2), dilation=(3, 2), padding=1)),
    "avg-2": ("avg", dict(kernel_size=2)),
    "avg-ceil-exclude-pad": ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    "avg-divisor": ("avg", dict(kernel_size=3, divisor_override=5)),
    "adaptive": ("adaptive", dict(output_size=(3, 4))),
}

EMBEDDING_CASES = {
    "plain": dict(),
    "padding": dict(padding_idx=3),
    "scale-by-freq": dict(scale_grad_by_freq=True, padding_idx=2),
}


def pool(kind, backend, **options):
    function = {"max": gatedrnn.max_pool2d, "avg": gatedrnn.avg_pool2d, "adaptive": gatedrnn.adaptive_avg_pool2d}[kind]
    return lambda x: function(x, backend=backend, **options)


def conv_arguments(case, dtype=torch.float64, device="cpu", seed=0):
    input_shape, weight_shape, options = case
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator, dtype=dtype).to(device).requires_grad_()
               for shape in (input_shape, weight_shape, weight_shape[:1])]
    return tensors, options


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_gradgradcheck(backend, name):
    (x, w, b), options = conv_arguments(CONV_CASES[name])
    assert gradgradcheck(lambda x, w, b: gatedrnn.conv2d(x, w, b, backend=backend, **options), (x, w, b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv1d_gradgradcheck(backend):
    generator = torch.Generator().manual_seed(1)
    x, w = (torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_()
            for shape in ((2, 4, 9), (6, 2, 3)))
    assert gradgradcheck(lambda x, w: gatedrnn.conv1d(x, w, stride=2, padding=1, groups=2, backend=backend), (x, w))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(POOL_CASES))
def test_pool_gradgradcheck(backend, name):
    kind, options = POOL_CASES[name]
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_()
    assert gradgradcheck(pool(kind, backend, **options), (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_double_backward_of_empty_windows(backend):
    """Windows that hold no input element (dilation steps over it: the output is -inf) pass no
    gradient, first or second order: zeros, not NaN, although their indices point nowhere."""
    x = torch.randn(2, 3, 2, 5, dtype=torch.float64, requires_grad=True)
    y = gatedrnn.max_pool2d(x, (2, 2), stride=1, padding=(1, 0), dilation=(3, 1), backend=backend)
    assert torch.isneginf(y).all()
    grad_output = torch.randn(y.shape, dtype=torch.float64, requires_grad=True)
    (grad_input,) = torch.autograd.grad(y, x, grad_output, create_graph=True)
    assert torch.count_nonzero(grad_input) == 0
    (second,) = torch.autograd.grad(grad_input, grad_output, torch.randn_like(grad_input))
    assert second.shape == y.shape and torch.count_nonzero(second) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["max", "avg", "adaptive"])
def test_pool_double_backward_of_an_empty_batch(backend, kind):
    options = dict(output_size=(2, 2)) if kind == "adaptive" else dict(kernel_size=2)
    x = torch.randn(0, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    (grad_input,) = torch.autograd.grad(pool(kind, backend, **options)(x).square().sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad_input.square().sum(), x)
    assert second.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(EMBEDDING_CASES))
def test_embedding_gradgradcheck(backend, name):
    weight = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([[0, 3, 3], [6, 2, 3]])
    assert gradgradcheck(lambda w: gatedrnn.embedding(indices, w, backend=backend, **EMBEDDING_CASES[name]),
                         (weight,))


def critic(x, parameters, functional):
    """A small CNN critic on either torch.nn.functional or gatedrnn (same call signatures)."""
    w1, b1, w2, w3 = parameters
    h = functional.conv2d(x, w1, b1, padding=1).relu()
    h = functional.max_pool2d(h, 2)
    h = functional.conv2d(h, w2, None, stride=2, padding=1, groups=2).tanh()
    h = functional.avg_pool2d(h, 3, stride=1, padding=1)
    return (functional.adaptive_avg_pool2d(h, (2, 2)).flatten(1) * w3).sum(1)


class _Ours:
    def __init__(self, backend):
        self.backend = backend

    def __getattr__(self, name):
        function = getattr(gatedrnn, name)
        return lambda *args, **kwargs: function(*args, backend=self.backend, **kwargs)


def gradient_penalty_step(functional, x, parameters):
    """WGAN-GP's critic loss: the gradient of the critic's score with respect to its input,
    its norm's distance from 1 squared, backpropagated (through the input gradient) to the
    parameters."""
    score = critic(x, parameters, functional)
    (grad_x,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    penalty = (grad_x.flatten(1).norm(dim=1) - 1).square().mean()
    loss = score.mean() + 10 * penalty
    return torch.autograd.grad(loss, parameters)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_matches_torch(backend):
    generator = torch.Generator().manual_seed(3)
    shapes = [(4, 3, 3, 3), (4,), (6, 2, 3, 3), (24,)]
    parameters = [torch.randn(shape, generator=generator, dtype=torch.float64).requires_grad_() for shape in shapes]
    x = torch.randn(2, 3, 9, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    ours = gradient_penalty_step(_Ours(backend), x, parameters)
    reference = gradient_penalty_step(F, x, parameters)
    for name, actual, expected in zip(("w1", "b1", "w2", "w3"), ours, reference):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_second_order_through_the_weight_gradient(backend):
    """A first gradient with respect to the weight only (the backward computes no input
    gradient), then the gradient of its norm with respect to the input and the weight: the
    double backward's input term (the input gradient of the weight's gradient) as torch's."""
    (x, w, _), options = conv_arguments(CONV_CASES["stride-padding"], seed=4)
    results = []
    for conv in (lambda x, w: gatedrnn.conv2d(x, w, backend=backend, **options),
                 lambda x, w: F.conv2d(x, w, **options)):
        (grad_w,) = torch.autograd.grad(conv(x, w).sin().sum(), w, create_graph=True)
        results.append(torch.autograd.grad(grad_w.square().sum(), (x, w)))
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_recurrences_have_no_double_backward():
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    weights = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in ((16, 4), (16, 4))]
    output, _ = gatedrnn.lstm(x, None, *weights, backend="numpy")
    (grad_x,) = torch.autograd.grad(output.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="lstm_backward"):
        grad_x.sum().backward()


# --- triton backend (interpreter) ------------------------------------------------------------------

def second_order(run, tensors, seed):
    """Gradients of <v, grad of run's output . u> with respect to ``tensors`` (random u, v)."""
    generator = torch.Generator().manual_seed(seed)
    output = run(*tensors)
    firsts = torch.autograd.grad(output, tensors, torch.randn(output.shape, generator=generator), create_graph=True)
    total = sum((g * torch.randn(g.shape, generator=generator)).sum() for g in firsts)
    return torch.autograd.grad(total, tensors, allow_unused=True, materialize_grads=True)  # (the bias: none)


@in_interpreter
@pytest.mark.parametrize("name", ["bias", "dilation-groups"])
def test_triton_interpreter_conv2d_double_backward(name):
    (x, w, b), options = conv_arguments(CONV_CASES[name], dtype=torch.float32)
    results = [second_order(lambda x, w, b: gatedrnn.conv2d(x, w, b, backend=backend, **options), (x, w, b), seed=5)
               for backend in ("triton", "numpy")]
    for actual, expected in zip(*results):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@in_interpreter
@pytest.mark.parametrize("name", ["max-ceil", "avg-ceil-exclude-pad", "adaptive"])
def test_triton_interpreter_pool_double_backward(name):
    kind, options = POOL_CASES[name]
    x = torch.randn(2, 3, 7, 6, generator=torch.Generator().manual_seed(6)).requires_grad_()
    results = [second_order(lambda x: pool(kind, backend, **options)(x).square(), (x,), seed=7)
               for backend in ("triton", "numpy")]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)


@in_interpreter
def test_triton_interpreter_embedding_double_backward():
    indices = torch.tensor([[0, 3, 3], [6, 2, 3]])
    weight = torch.randn(7, 5, generator=torch.Generator().manual_seed(8)).requires_grad_()
    results = [second_order(lambda w: gatedrnn.embedding(indices, w, 2, scale_grad_by_freq=True,
                                                         backend=backend).square(), (weight,), seed=9)
               for backend in ("triton", "numpy")]
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)


@outside_interpreter
def test_triton_interpreter_subprocess():
    run_interpreted(__file__, "triton_interpreter and not subprocess", timeout=600)


# --- triton on a GPU -----------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_gpu_second_order_matches_torch(dtype):
    """Second-order gradients through conv2d, the pools and embedding on the device (Triton)
    against torch.nn.functional's (cuDNN) in the same dtype, TF32 off for float32."""
    tolerance = {torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    generator = torch.Generator().manual_seed(10)
    x = torch.randn(4, 16, 15, 13, generator=generator).to("cuda", dtype).requires_grad_()
    w = (torch.randn(32, 8, 3, 3, generator=generator) * 0.2).to("cuda", dtype).requires_grad_()
    table = torch.randn(50, 16, generator=generator).to("cuda", dtype).requires_grad_()
    tokens = torch.randint(0, 50, (4, 7), generator=generator).to("cuda")

    def network(functional, **backend):
        h = functional.conv2d(x, w, None, stride=1, padding=1, groups=2, **backend).tanh()
        h = functional.max_pool2d(h, 3, stride=2, padding=1, **backend)
        h = functional.avg_pool2d(h, 2, ceil_mode=True, **backend)
        h = functional.adaptive_avg_pool2d(h, (2, 2), **backend).flatten(1)
        e = functional.embedding(tokens, table, 3, scale_grad_by_freq=False, **backend).mean(1)
        return (h[:, :16] * e).sum()

    results = []
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # (our float32 convolutions do not use TF32 either)
    try:
        for functional, backend in ((gatedrnn, dict(backend="triton")), (F, {})):
            grad_x, grad_table = torch.autograd.grad(network(functional, **backend), (x, table), create_graph=True)
            penalty = grad_x.float().square().sum() + grad_table.float().square().sum()
            results.append(torch.autograd.grad(penalty, (x, w, table)))
    finally:
        torch.backends.cudnn.allow_tf32 = previous
    for name, actual, expected in zip(("x", "w", "table"), *results):
        error = ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()
        assert error <= tolerance, f"{name}: relative error {error:.2e}"
