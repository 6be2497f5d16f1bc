"""gatedrnn.lstm on the CPU backends (cython, numpy) against the NumPy oracle, forward and every gradient."""
import pytest
import torch

import gatedrnn
from recurrence_cases import run_case, standard_cases

CASES = standard_cases("lstm", [{}])
CYTHON = pytest.mark.skipif(
    not gatedrnn.available_backends()["cython"].available, reason="cython extensions not built"
)


@CYTHON
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cython_matches_oracle(case, dtype):
    run_case(case, "cython", dtype)


@CYTHON
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cython_inference_matches_oracle(case, dtype):
    # Under no_grad the eager call runs the forward that writes no workspace (its own cell
    # function, and the zeroing past each length without the workspace rows).
    run_case(case, "cython", dtype, inference=True)


@CYTHON
def test_cython_inference_skips_the_workspace():
    from gatedrnn.ops.lstm import _lstm_op

    T, B, I, H = 6, 3, 5, 17
    x, h0, c0 = torch.randn(T, B, I), torch.randn(B, H), torch.randn(B, H)
    w_ih, w_hh, b = torch.randn(4 * H, I), torch.randn(4 * H, H), torch.randn(4 * H)
    lengths = torch.tensor([6, 2, 0])
    args = (x, h0, c0, w_ih, w_hh, b, b, lengths, False, "cython")
    with torch.no_grad():
        inferred = _lstm_op(*args)
    recorded = _lstm_op(*(a.requires_grad_() if a is w_hh else a for a in args))
    assert inferred[3].numel() == 0 and recorded[3].shape == (T, B, 5 * H)
    for name, a, e in zip(("output", "h_n", "c_n"), inferred[:3], recorded[:3]):
        torch.testing.assert_close(a, e.detach(), rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", CASES[:4], ids=[c.id for c in CASES[:4]])
def test_numpy_backend_matches_oracle(case):
    # The numpy backend is the oracle behind the op machinery: this checks that plumbing.
    run_case(case, "numpy", torch.float64)


# --- weight_hr (torch's proj_size): h' = W_hr (o * tanh(c')) ----------------------------------

import itertools  # noqa: E402

from torch.func import functional_call  # noqa: E402

# id, T, B, I, H, P, lengths, reverse, batch_first, bias
PROJ_CASES = [
    ("full", 6, 3, 5, 7, 3, None, False, False, True),
    ("full_reverse_nobias", 6, 3, 5, 7, 3, None, True, False, False),
    ("unsorted_zeros", 7, 5, 4, 6, 2, [3, 0, 7, 1, 5], False, False, True),
    ("unsorted_zeros_reverse", 7, 5, 4, 6, 2, [3, 0, 7, 1, 5], True, False, True),
    ("unsorted_zeros_reverse_batch_first", 7, 5, 4, 6, 5, [0, 7, 2, 7, 1], True, True, True),
    ("batch_first_P_above_H", 4, 2, 3, 3, 5, None, False, True, True),
    ("T1_B1", 1, 1, 3, 4, 1, None, False, False, True),
    ("T0", 0, 3, 3, 4, 2, None, False, False, True),
]
PROJ_BACKENDS = [
    "numpy",
    pytest.param("cython", marks=CYTHON),
]


def proj_leaves(T, B, I, H, P, bias, seed):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.5):
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    leaves = dict(x=rand(T, B, I, scale=1.0), h0=rand(B, P), c0=rand(B, H), w_ih=rand(4 * H, I),
                  w_hh=rand(4 * H, P), w_hr=rand(P, H))
    if bias:
        leaves.update(b_ih=rand(4 * H), b_hh=rand(4 * H))
    return leaves


def torch_projected(leaves, lengths, reverse):
    """torch.nn.LSTM(I, H, proj_size=P) on each sequence (flipped within its length for
    reverse), time-major; a length-0 sequence keeps (h0, c0) and outputs zeros. The module
    refuses P >= H; torch's functional kernel behind it (torch._VF.lstm) takes it, so that
    is called directly then."""
    x, h0, c0, w_hr = leaves["x"], leaves["h0"], leaves["c0"], leaves["w_hr"]
    T, B, I = x.shape
    P, H = w_hr.shape
    bias = "b_ih" in leaves
    module = torch.nn.LSTM(I, H, proj_size=P, bias=bias).double() if P < H else None
    params = dict(weight_ih_l0=leaves["w_ih"], weight_hh_l0=leaves["w_hh"])
    if bias:
        params.update(bias_ih_l0=leaves["b_ih"], bias_hh_l0=leaves["b_hh"])
    params.update(weight_hr_l0=w_hr)  # torch's flat order: w_ih, w_hh, b_ih, b_hh, w_hr
    outputs, h_n, c_n = [], [], []
    for b in range(B):
        length = T if lengths is None else lengths[b]
        if length == 0:
            outputs.append(x.new_zeros(T, P))
            h_n.append(h0[b])
            c_n.append(c0[b])
            continue
        sequence = x[:length, b].flip(0) if reverse else x[:length, b]
        if module is not None:
            out, (h, c) = functional_call(module, params, (sequence, (h0[b:b + 1], c0[b:b + 1])))
        else:
            out, h, c = torch._VF.lstm(sequence[:, None], (h0[None, b:b + 1], c0[None, b:b + 1]),
                                       list(params.values()), bias, 1, 0.0, False, False, False)
            out, h, c = out[:, 0], h[0], c[0]
        out = out.flip(0) if reverse else out
        outputs.append(torch.cat([out, x.new_zeros(T - length, P)]))
        h_n.append(h[0])
        c_n.append(c[0])
    return torch.stack(outputs, 1), (torch.stack(h_n), torch.stack(c_n))


def proj_forward_backward(fn, leaves, upstream_seed):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    output, (h_n, c_n) = fn(leaves)
    generator = torch.Generator().manual_seed(upstream_seed)
    loss = sum((t * torch.randn(t.shape, generator=generator, dtype=torch.float64).to(t.dtype)).sum()
               for t in (output, h_n, c_n))
    loss.backward()
    grads = {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in leaves.items()}
    return output.detach(), h_n.detach(), c_n.detach(), grads


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", PROJ_BACKENDS)
@pytest.mark.parametrize("case", PROJ_CASES, ids=[c[0] for c in PROJ_CASES])
def test_weight_hr_matches_torch_proj_size(case, backend, dtype):
    _, T, B, I, H, P, lengths, reverse, batch_first, bias = case
    leaves = proj_leaves(T, B, I, H, P, bias, seed=T * 100 + B * 10 + P)
    tolerance = 1e-10 if dtype == torch.float64 else 2e-5

    def ours(l):
        x = l["x"].to(dtype)
        x = x.transpose(0, 1) if batch_first else x
        output, (h_n, c_n) = gatedrnn.lstm(
            x, (l["h0"].to(dtype), l["c0"].to(dtype)), l["w_ih"].to(dtype), l["w_hh"].to(dtype),
            l["b_ih"].to(dtype) if bias else None, l["b_hh"].to(dtype) if bias else None,
            weight_hr=l["w_hr"].to(dtype), lengths=lengths, reverse=reverse, batch_first=batch_first,
            backend=backend,
        )
        assert output.dtype == dtype
        assert output.shape == ((B, T, P) if batch_first else (T, B, P))
        assert h_n.shape == (B, P) and c_n.shape == (B, H)
        return (output.transpose(0, 1) if batch_first else output), (h_n, c_n)

    actual = proj_forward_backward(ours, leaves, upstream_seed=1)
    expected = proj_forward_backward(lambda l: torch_projected(l, lengths, reverse), leaves, upstream_seed=1)
    for name, a, e in itertools.chain(zip(("output", "h_n", "c_n"), actual[:3], expected[:3]),
                                      ((f"grad_{k}", actual[3][k], expected[3][k]) for k in leaves)):
        torch.testing.assert_close(a.double(), e, rtol=tolerance, atol=tolerance, msg=lambda m: f"{name}: {m}")
    if lengths is not None:  # exactly zero past each length
        past = torch.arange(T)[:, None] >= torch.tensor(lengths)[None, :]
        assert not actual[0][past].any()


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("backend", PROJ_BACKENDS)
def test_weight_hr_matches_batched_torch_module_and_hx_none(backend):
    T, B, I, H, P = 5, 4, 3, 6, 2
    reference = torch.nn.LSTM(I, H, proj_size=P).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    weights = [getattr(reference, n + "_l0") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    output, (h_n, c_n) = gatedrnn.lstm(x, None, *weights, weight_hr=reference.weight_hr_l0, backend=backend)
    expected, (h_e, c_e) = reference(x)
    torch.testing.assert_close(output, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_n, h_e[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c_n, c_e[0], rtol=1e-10, atol=1e-10)


def test_weight_hr_empty_batch():
    x = torch.randn(4, 0, 3, dtype=torch.float64)
    w_hr = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    output, (h_n, c_n) = gatedrnn.lstm(x, None, torch.randn(20, 3, dtype=torch.float64),
                                       torch.randn(20, 2, dtype=torch.float64), weight_hr=w_hr, backend="numpy")
    assert output.shape == (4, 0, 2) and h_n.shape == (0, 2) and c_n.shape == (0, 5)


def _proj_call(**overrides):
    T, B, I, H, P = 3, 2, 4, 5, 2
    arguments = dict(input=torch.randn(T, B, I), hx=(torch.randn(B, P), torch.randn(B, H)),
                     weight_ih=torch.randn(4 * H, I), weight_hh=torch.randn(4 * H, P),
                     weight_hr=torch.randn(P, H), backend="numpy")
    arguments.update(overrides)
    return gatedrnn.lstm(arguments.pop("input"), arguments.pop("hx"), arguments.pop("weight_ih"),
                         arguments.pop("weight_hh"), **arguments)


@pytest.mark.parametrize("overrides,error,pattern", [
    (dict(weight_hr=torch.randn(5)), ValueError, r"weight_hr must be 2-D \(proj_size, hidden_size\).*got shape \(5,\)"),
    (dict(weight_hr=torch.randn(0, 5)), ValueError, r"weight_hr must be 2-D.*got shape \(0, 5\)"),
    (dict(weight_hr=torch.randn(2, 4)), ValueError,
     r"weight_hh must have shape \(4\*hidden_size, proj_size\) = \(16, 2\).*got \(20, 2\)"),
    (dict(weight_hh=torch.randn(20, 5)), ValueError,
     r"weight_hh must have shape \(4\*hidden_size, proj_size\) = \(20, 2\).*got \(20, 5\)"),
    (dict(weight_ih=torch.randn(20, 3)), ValueError, r"weight_ih must have shape .* = \(20, 4\), got \(20, 3\)"),
    (dict(hx=(torch.randn(2, 5), torch.randn(2, 5))), ValueError,
     r"hx \(h0\) must have shape \(batch, proj_size\) = \(2, 2\).*got \(2, 5\)"),
    (dict(hx=(torch.randn(2, 2), torch.randn(2, 2))), ValueError,
     r"hx \(c0\) must have shape \(batch, hidden_size\) = \(2, 5\).*got \(2, 2\)"),
    (dict(hx=torch.randn(2, 2)), TypeError, r"hx must be None or a tuple \(h0, c0\)"),
    (dict(weight_hr=torch.randn(2, 5, dtype=torch.float64)), TypeError,
     r"weight_hr must have the input's dtype torch.float32, got torch.float64"),
    (dict(weight_hr=[[1.0]]), TypeError, r"weight_hr must be a torch.Tensor, got list"),
    (dict(bias_ih=torch.randn(5)), ValueError, r"bias_ih must have shape \(4\*hidden_size,\) = \(20,\), got \(5,\)"),
    (dict(lengths=[1, 4]), ValueError, r"lengths must lie in \[0, T\] = \[0, 3\]"),
])
def test_weight_hr_bad_arguments(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        _proj_call(**overrides)
