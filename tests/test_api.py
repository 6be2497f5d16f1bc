"""The functional API around the kernels: dispatch, input checks, empty inputs, custom-op
registration (opcheck, torch.compile), and gradcheck through the compiled CPU backend."""
import os

import numpy as np
import pytest
import torch

import gatedrnn
from gatedrnn import oracle

from spatial_checks import check_eager_autograd, ops_dispatched

HAS_CYTHON = gatedrnn.available_backends()["cython"].available
needs_cython = pytest.mark.skipif(not HAS_CYTHON, reason="cython extensions not built")
CPU_BACKENDS = ["numpy"] + (["cython"] if HAS_CYTHON else [])
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def make_args(cell, T=4, B=3, I=5, H=6, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return (torch.rand(*shape, generator=g, dtype=dtype) * 2 - 1).requires_grad_(requires_grad)

    G = GATES[cell]
    x = rand(T, B, I)
    hx = (rand(B, H), rand(B, H)) if cell == "lstm" else rand(B, H)
    return x, hx, rand(G * H, I), rand(G * H, H), rand(G * H), rand(G * H)


def call(cell, *args, **kwargs):
    return getattr(gatedrnn, cell)(*args, **kwargs)


# --- dispatch ------------------------------------------------------------------------------------

def test_available_backends_reports_every_backend_with_a_reason():
    status = gatedrnn.available_backends()
    assert set(status) == {"triton", "cython", "numpy"}
    assert status["numpy"].available
    for name, entry in status.items():
        assert isinstance(entry.reason, str) and entry.reason, name
        if not entry.available:
            assert "Fix" in entry.reason, name


def test_backend_precedence(monkeypatch):
    args = make_args("rnn")
    monkeypatch.setenv("GATEDRNN_BACKEND", "numpy")
    assert gatedrnn.current_backend() == "numpy"
    with gatedrnn.use_backend("NumPy"):
        assert gatedrnn.current_backend() == "numpy"
    monkeypatch.delenv("GATEDRNN_BACKEND")
    assert gatedrnn.current_backend() is None
    with gatedrnn.use_backend("numpy"):
        with gatedrnn.use_backend("cython"):
            assert gatedrnn.current_backend() == "cython"
        assert gatedrnn.current_backend() == "numpy"
        # An explicit backend= wins over the context: an unknown one is rejected even here.
        with pytest.raises(ValueError, match="backend"):
            gatedrnn.rnn(*args, backend="cudnn")
    assert gatedrnn.current_backend() is None


def test_unknown_backend_everywhere(monkeypatch):
    args = make_args("gru")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        gatedrnn.gru(*args, backend="fast")
    with pytest.raises(ValueError, match="use_backend"):
        with gatedrnn.use_backend("fast"):
            pass
    monkeypatch.setenv("GATEDRNN_BACKEND", "fast")
    with pytest.raises(ValueError, match="GATEDRNN_BACKEND"):
        gatedrnn.gru(*args)
    with pytest.raises(TypeError, match="backend"):
        gatedrnn.gru(*args, backend=3)


def test_triton_on_cpu_tensors_names_the_fix():
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        pytest.skip("the interpreter runs Triton on CPU tensors")
    with pytest.raises((RuntimeError, ValueError), match="Fix|\\.cuda\\(\\)|TRITON_INTERPRET"):
        gatedrnn.lstm(*make_args("lstm", dtype=torch.float32), backend="triton")


@needs_cython
def test_cython_rejects_half_types_with_the_fix():
    args = make_args("lstm", dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="does not compute in torch.bfloat16"):
        gatedrnn.lstm(*args, backend="cython")


def test_numpy_backend_keeps_the_input_dtype():
    args = make_args("gru", dtype=torch.float32)
    output, h_n = gatedrnn.gru(*args, backend="numpy")
    assert output.dtype == torch.float32 and h_n.dtype == torch.float32


@needs_cython
def test_automatic_choice_on_cpu_is_cython(monkeypatch):
    monkeypatch.delenv("GATEDRNN_BACKEND", raising=False)
    args = make_args("rnn")
    auto, _ = gatedrnn.rnn(*args)
    explicit, _ = gatedrnn.rnn(*args, backend="cython")
    torch.testing.assert_close(auto, explicit, rtol=0, atol=0)


# --- bad input -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bad_shapes_name_the_argument(cell):
    x, hx, w_ih, w_hh, b_ih, b_hh = make_args(cell)
    G = GATES[cell]
    with pytest.raises(ValueError, match=r"input must be 3-D .*got shape \(4, 3\)"):
        call(cell, x[:, :, 0], hx, w_ih, w_hh, b_ih, b_hh, backend="numpy")
    with pytest.raises(ValueError, match="weight_ih must have shape"):
        call(cell, x, hx, w_ih[:, :-1], w_hh, b_ih, b_hh, backend="numpy")
    with pytest.raises(ValueError, match="weight_hh must be 2-D"):
        call(cell, x, hx, w_ih, w_hh[:-1], b_ih, b_hh, backend="numpy")
    with pytest.raises(ValueError, match=rf"bias_hh must have shape \({G}\*hidden_size,\)"):
        call(cell, x, hx, w_ih, w_hh, b_ih, b_hh[:-1], backend="numpy")
    bad_hx = (hx[0][:2], hx[1]) if cell == "lstm" else hx[:2]
    with pytest.raises(ValueError, match=r"hx \(h0\) must have shape \(batch, hidden_size\) = \(3, 6\), got \(2, 6\)"):
        call(cell, x, bad_hx, w_ih, w_hh, b_ih, b_hh, backend="numpy")
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        call(cell, x.long(), hx, w_ih, w_hh, b_ih, b_hh, backend="numpy")
    with pytest.raises(TypeError, match="weight_hh must have the input's dtype"):
        call(cell, x, hx, w_ih, w_hh.float(), b_ih, b_hh, backend="numpy")
    with pytest.raises(TypeError, match="weight_ih must be a torch.Tensor"):
        call(cell, x, hx, w_ih.numpy(), w_hh, b_ih, b_hh, backend="numpy")


def test_lstm_hx_must_be_a_pair():
    x, (h0, c0), *weights = make_args("lstm")
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        gatedrnn.lstm(x, h0, *weights, backend="numpy")
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\).*length 3"):
        gatedrnn.lstm(x, (h0, c0, c0), *weights, backend="numpy")
    x, h0, *weights = make_args("gru")
    with pytest.raises(TypeError, match="hx must be None or a tensor"):
        gatedrnn.gru(x, (h0,), *weights, backend="numpy")


@pytest.mark.parametrize(
    "lengths, error, message",
    [
        ([4, 5, 1], ValueError, r"lengths must lie in \[0, T\] = \[0, 4\], got values in \[1, 5\]"),
        ([4, -1, 1], ValueError, r"got values in \[-1, 4\]"),
        ([4, 1], ValueError, r"lengths must have shape \(batch,\) = \(3,\), got \(2,\)"),
        (torch.tensor([1.0, 2.0, 3.0]), TypeError, "integer dtype"),
        (torch.tensor([True, False, True]), TypeError, "integer dtype"),
        ([1, 2.5, 3], TypeError, "ints only"),
        ("abc", TypeError, "lengths must be an integer tensor"),
    ],
    ids=["too-long", "negative", "wrong-shape", "float", "bool", "float-in-list", "string"],
)
def test_bad_lengths(lengths, error, message):
    with pytest.raises(error, match=message):
        gatedrnn.rnn(*make_args("rnn"), lengths=lengths, backend="numpy")


def test_bad_options():
    args = make_args("rnn")
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        gatedrnn.rnn(*args, nonlinearity="sigmoid", backend="numpy")
    with pytest.raises(TypeError, match="reverse must be a bool"):
        gatedrnn.rnn(*args, reverse="yes", backend="numpy")
    with pytest.raises(TypeError, match="reset_after must be a bool"):
        gatedrnn.gru(*make_args("gru"), reset_after=1, backend="numpy")
    with pytest.raises(TypeError, match="batch_first must be a bool"):
        gatedrnn.gru(*make_args("gru"), batch_first=None, backend="numpy")


@needs_cython
def test_cpu_kernels_hold_blas_to_one_thread_from_any_python_thread():
    """The Cython kernels call BLAS from inside their OpenMP threads, so run_cpu_kernel holds
    scipy's BLAS to one thread for the call, from whichever Python thread calls (threadpoolctl
    >= 3.8 would let only its first caller set a pthreads OpenBLAS; the second thread's BLAS
    then ran threaded inside OpenMP, and OpenBLAS warned that this may hang)."""
    import threading

    from gatedrnn.ops import _recurrence

    controllers = _recurrence._scipy_blas_controllers()
    seen = []

    def kernel(num_threads):
        seen.append([lib.num_threads for lib in controllers])

    _recurrence.run_cpu_kernel(kernel)  # this (main) thread first: threadpoolctl's controller
    workers = [threading.Thread(target=_recurrence.run_cpu_kernel, args=(kernel,)) for _ in range(2)]
    for worker in workers:
        worker.start()
        worker.join()
    assert seen == [[1] * len(controllers)] * 3, seen


@needs_cython
def test_cuda_like_device_mismatch_on_cython_is_clear():
    x, hx, w_ih, w_hh, b_ih, b_hh = make_args("rnn")
    meta = w_hh.to("meta")
    with pytest.raises(ValueError, match="weight_hh must be on the input's device"):
        gatedrnn.rnn(x, hx, w_ih, meta, b_ih, b_hh, backend="cython")


# --- empty and unusual layouts ----------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("T, B", [(0, 3), (4, 0), (0, 0)], ids=["T0", "B0", "T0B0"])
def test_empty_sequences(cell, backend, T, B):
    x, hx, *weights = make_args(cell, T=max(T, 1), B=max(B, 1), requires_grad=False)
    x = x[:T, :B].clone().requires_grad_()
    states = [s[:B].clone().requires_grad_() for s in (hx if cell == "lstm" else (hx,))]
    hx = tuple(states) if cell == "lstm" else states[0]
    weights = [w.clone().requires_grad_() for w in weights]
    output, finals = call(cell, x, hx, *weights, backend=backend)
    finals = list(finals) if cell == "lstm" else [finals]
    assert output.shape == (T, B, 6)
    for final, state in zip(finals, states):
        torch.testing.assert_close(final, state, rtol=0, atol=0)
    (output.sum() + sum(f.sum() for f in finals)).backward()
    assert x.grad.shape == x.shape
    for state in states:
        torch.testing.assert_close(state.grad, torch.ones_like(state))
    for w in weights:
        assert w.grad is not None and not w.grad.any()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_all_lengths_zero_returns_hx(backend):
    x, hx, *weights = make_args("lstm")
    output, (h_n, c_n) = gatedrnn.lstm(x, hx, *weights, lengths=[0, 0, 0], backend=backend)
    assert not output.any()
    torch.testing.assert_close(h_n, hx[0], rtol=0, atol=0)
    torch.testing.assert_close(c_n, hx[1], rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_inputs(backend):
    x, h0, w_ih, w_hh, b_ih, b_hh = make_args("gru", T=5, B=4, I=6, H=7)
    wide = torch.randn(5, 4, 12, dtype=torch.float64)[:, :, ::2]  # strided last dim
    w_hh_t = w_hh.t().contiguous().t()  # column-major view
    out_a, h_a = gatedrnn.gru(wide, h0, w_ih, w_hh_t, b_ih, b_hh, backend=backend)
    out_b, h_b = gatedrnn.gru(wide.contiguous(), h0, w_ih, w_hh.contiguous(), b_ih, b_hh, backend=backend)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    torch.testing.assert_close(h_a, h_b, rtol=0, atol=0)


def test_lengths_accept_lists_and_int32():
    args = make_args("lstm")
    a, _ = gatedrnn.lstm(*args, lengths=[4, 2, 3], backend="numpy")
    b, _ = gatedrnn.lstm(*args, lengths=torch.tensor([4, 2, 3], dtype=torch.int32), backend="numpy")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not a[2:, 1].any() and not a[3:, 2].any()


# --- custom ops ---------------------------------------------------------------------------------

def _op_args(cell, backend, reverse=False):
    x, hx, w_ih, w_hh, b_ih, b_hh = make_args(cell, requires_grad=True)
    states = list(hx) if cell == "lstm" else [hx]
    lengths = torch.tensor([4, 0, 2])
    options = {"lstm": [], "gru": [True], "rnn": ["tanh"]}[cell]
    return (x, *states, w_ih, w_hh, b_ih, b_hh, lengths, reverse, *options, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_opcheck(cell, backend):
    op = getattr(torch.ops.gatedrnn, cell).default
    torch.library.opcheck(op, _op_args(cell, backend))
    torch.library.opcheck(op, _op_args(cell, backend, reverse=True))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph_matches_eager(backend):
    torch._dynamo.reset()
    x, (h0, c0), w_ih, w_hh, b_ih, b_hh = make_args("lstm", requires_grad=True)
    g_x, g_h, *g_weights = make_args("gru", I=6, H=5, requires_grad=True)

    def model(x, lengths):
        out, (h, c) = gatedrnn.lstm(x, (h0, c0), w_ih, w_hh, b_ih, b_hh, lengths=lengths, backend=backend)
        out2, h2 = gatedrnn.gru(out, None, *g_weights, reverse=True, lengths=lengths, backend=backend)
        return out2.square().sum() + h.sum() + c.sum() + h2.sum()

    lengths = torch.tensor([4, 1, 3])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    params = [x, h0, c0, w_ih, w_hh, b_ih, b_hh, *g_weights]
    eager_loss = model(x, lengths)
    eager_grads = torch.autograd.grad(eager_loss, params)
    compiled_loss = compiled(x, lengths)
    compiled_grads = torch.autograd.grad(compiled_loss, params)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_lengths_checked_inside_compiled_graphs_and_direct_op_calls(cell, backend):
    """The kernels index time by lengths; a compiled graph skips the functional API's
    data-dependent checks, and a direct call of the op skips the API altogether. The ops' bodies
    check the values themselves (a clear error, not a read or write out of bounds), forward and
    backward."""
    torch._dynamo.reset()
    x, hx, *weights = make_args(cell)  # T = 4, B = 3

    def last_state(x, lengths):
        return call(cell, x, hx, *weights, lengths=lengths, reverse=True, backend=backend)[1]

    compiled = torch.compile(last_state, fullgraph=True, backend="aot_eager")
    compiled(x, torch.tensor([4, 2, 0]))  # valid lengths run
    for bad, values in (([7, 2, 1], r"\[1, 7\]"), ([4, -5, 1], r"\[-5, 4\]"), ([10**7, 2, 1], r"\[1, 10000000\]")):
        with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 4\], got values in " + values):
            compiled(x, torch.tensor(bad))
    op = getattr(torch.ops.gatedrnn, cell).default
    args = list(_op_args(cell, backend, reverse=True))
    lengths_at = 1 + (2 if cell == "lstm" else 1) + 4  # after input, the states, 2 weights, 2 biases
    args[lengths_at] = torch.tensor([4, 9, 2])
    with pytest.raises(ValueError, match=r"got values in \[2, 9\]"):
        op(*args)
    args[lengths_at] = torch.tensor([4, 2])
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(3,\), got \(2,\)"):
        op(*args)
    args[lengths_at] = torch.tensor([4, 2, 1])
    output, *finals, workspace = op(*args)
    backward = getattr(torch.ops.gatedrnn, f"{cell}_backward").default
    grads = [torch.randn_like(output)] + [torch.randn_like(f) for f in finals]
    forward_args = args[:-1]
    forward_args[lengths_at] = torch.tensor([4, 2, 5])
    with pytest.raises(ValueError, match=r"got values in \[2, 5\]"):
        backward(*grads, *forward_args, output, workspace, backend)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_op_bodies_trust_only_what_the_api_checked(backend):
    """The op bodies skip their checks only inside a plain call the functional API checked: not
    for the backward of a direct op call (which saved the caller's own lengths tensor), not for
    an op a dispatch mode calls from inside a checked call, and the API itself runs under fake
    tensors and make_fx (leaving the value checks to the op's body)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils._python_dispatch import TorchDispatchMode

    x, (h0, c0), w_ih, w_hh, b_ih, b_hh = make_args("lstm", requires_grad=True)  # T = 4, B = 3
    op = torch.ops.gatedrnn.lstm.default
    # backward of a direct call: its lengths changed in place after the forward (autograd's
    # version counter does not see a NumPy write) are checked again
    lengths = torch.tensor([4, 3, 2])
    output = op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, False, backend)[0]
    lengths.numpy()[2] = -7
    with pytest.raises(ValueError, match=r"got values in \[-7, 4\]"):
        output.sum().backward()
    # ... and int32 lengths reach the backward converted
    output = op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, torch.tensor([4, 3, 2], dtype=torch.int32), False, backend)[0]
    output.sum().backward()

    class Reentrant(TorchDispatchMode):
        """Calls the op again, with bad lengths, from inside the API's checked call."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is op:
                bad = list(args)
                bad[7] = torch.tensor([4, 9, -3])
                func(*bad)
            return func(*args, **(kwargs or {}))

    with pytest.raises(ValueError, match=r"got values in \[-3, 9\]"), Reentrant():
        gatedrnn.lstm(x.detach(), (h0.detach(), c0.detach()), w_ih.detach(), w_hh.detach(), lengths=[4, 3, 2],
                      backend=backend)
    plain = [t.detach() for t in (x, h0, c0, w_ih, w_hh)]

    def traced(x, h0, c0, w_ih, w_hh, lengths):
        return gatedrnn.lstm(x, (h0, c0), w_ih, w_hh, lengths=lengths, backend=backend)[0]

    graph = make_fx(traced, tracing_mode="fake")(*plain, torch.tensor([4, 3, 2]))
    with pytest.raises(ValueError, match=r"got values in \[2, 5\]"):
        graph(*plain, torch.tensor([4, 5, 2]))
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in plain]
        assert traced(*fakes, mode.from_tensor(torch.tensor([4, 3, 2]))).shape == (4, 3, 6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_compiled_list_lengths_are_checked(backend):
    """Lengths given as a list inside a fullgraph compile: a bad value is the op body's
    ValueError, not an exception in the traced Python (which fullgraph would refuse)."""
    torch._dynamo.reset()
    x, hx, *weights = make_args("gru")
    compiled = torch.compile(lambda x, lengths: gatedrnn.gru(x, hx, *weights, lengths=lengths, backend=backend)[0],
                             fullgraph=True, backend="aot_eager")
    compiled(x, [4, 3, 2])
    with pytest.raises(ValueError, match=r"got values in \[2, 9\]"):
        compiled(x, [4, 9, 2])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_direct_op_calls_check_shapes(cell, backend):
    """torch.ops.gatedrnn.<cell> skips the functional API: its body still refuses tensors whose
    shapes, dtypes or devices the kernels would read past (e.g. h0 with a row too few)."""
    op = getattr(torch.ops.gatedrnn, cell).default
    backward = getattr(torch.ops.gatedrnn, f"{cell}_backward").default
    args = list(_op_args(cell, backend))  # T = 4, B = 3, I = 5, H = 6
    rows = GATES[cell] * 6
    first_weight = 1 + (2 if cell == "lstm" else 1)
    for at, bad, message in (
        (1, torch.randn(2, 6, dtype=torch.float64), r"h0 must have shape \(3, 6\), got \(2, 6\)"),
        (first_weight, torch.randn(rows, 12, dtype=torch.float64), rf"weight_ih must have shape \({rows}, 5\)"),
        (first_weight + 2, torch.randn(2, dtype=torch.float64), rf"bias_ih must have shape \({rows},\)"),
        (first_weight + 1, torch.randn(rows, 6), "weight_hh must have dtype torch.float64, got torch.float32"),
        (0, torch.randn(4, 3, dtype=torch.float64), "must be 3-D, 2-D and 2-D"),
    ):
        broken = list(args)
        broken[at] = bad
        with pytest.raises((ValueError, TypeError), match=message):
            op(*broken)
    output, *finals, workspace = op(*args)
    grads = [torch.randn_like(output)] + [torch.randn_like(f) for f in finals]
    forward_args = args[:-1]
    with pytest.raises(ValueError, match=r"grad_output must have shape \(4, 3, 6\), got \(4, 3, 5\)"):
        backward(grads[0][..., :5], *grads[1:], *forward_args, output, workspace, backend)
    with pytest.raises(ValueError, match="workspace must be the forward's"):
        backward(*grads, *forward_args, output, workspace[:2], backend)
    backward(*grads, *forward_args, output, workspace, backend)  # the consistent call runs


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_eager_inference_skips_the_custom_op(cell, backend):
    """Without anything for autograd to record (no_grad, or no input requiring grad; parameters
    of a module count as plain tensors) the op's body runs directly, with the same outputs; an
    eager call autograd records runs it in the autograd.Function built from the op's autograd
    registration: bitwise the outputs and gradients of the call through gatedrnn::<cell>."""
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](6, 6).double()
    x, hx, *_ = make_args(cell, I=6, H=6)
    weights = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]

    def run():
        return call(cell, x, hx, *weights, backend=backend)

    layered = tuple(h.unsqueeze(0) for h in hx) if cell == "lstm" else hx.unsqueeze(0)
    with torch.no_grad():
        assert ops_dispatched(run) == []
        expected = module(x, layered)
        direct = run()
    torch.testing.assert_close(direct[0], expected[0], rtol=1e-10, atol=1e-10)
    check_eager_autograd(run, weights, cell)  # the parameters require grad
    recorded = run()
    assert recorded[0].grad_fn is not None
    torch.testing.assert_close(recorded[0].detach(), expected[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph_in_inference(backend):
    """Under no_grad the eager calls skip the custom ops; a compiled graph still holds them (the
    checks that pick the direct path trace without a break)."""
    torch._dynamo.reset()
    conv = gatedrnn.nn.Conv2d(3, 4, 3, padding=1, backend=backend).double()
    lstm = gatedrnn.nn.LSTM(5, 6, backend=backend).double()

    def model(x, sequence):
        return conv(x).sum() + lstm(sequence)[0].sum()

    x, sequence = torch.randn(2, 3, 7, 7, dtype=torch.float64), torch.randn(4, 2, 5, dtype=torch.float64)
    with torch.no_grad():
        eager = model(x, sequence)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(x, sequence)
    torch.testing.assert_close(compiled, eager)


@needs_cython
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_gradcheck_through_cython(cell):
    x, hx, w_ih, w_hh, b_ih, b_hh = make_args(cell, T=5, B=3, I=4, H=5, requires_grad=True)
    states = tuple(hx) if cell == "lstm" else (hx,)
    options = {"lstm": {}, "gru": {"reset_after": False}, "rnn": {"nonlinearity": "tanh"}}[cell]

    def fn(x, *rest):
        states, weights = rest[: len(rest) - 4], rest[-4:]
        hx = tuple(states) if cell == "lstm" else states[0]
        output, finals = call(cell, x, hx, *weights, lengths=[5, 2, 0], reverse=True, backend="cython", **options)
        finals = finals if cell == "lstm" else (finals,)
        return (output, *finals)

    assert torch.autograd.gradcheck(fn, (x, *states, w_ih, w_hh, b_ih, b_hh), eps=1e-6, atol=1e-7)


def test_seed_gru_mapping_runs_through_the_op():
    """The seed document's GRU (z on the candidate) equals ours after flipping the z rows."""
    rng = np.random.default_rng(3)
    H, I, T, B = 5, 4, 6, 2
    w_z, w_r, w_n = (rng.uniform(-0.5, 0.5, (H, H + I)) for _ in range(3))
    b_z, b_r, b_n = (rng.uniform(-0.5, 0.5, H) for _ in range(3))
    w_ih, w_hh, b_ih, b_hh = oracle.seed_gru_to_ours(w_z, w_r, w_n, b_z, b_r, b_n)
    x = rng.uniform(-1, 1, (T, B, I))
    h = np.zeros((B, H))
    outputs = []
    sigmoid = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    for t in range(T):
        hx = np.concatenate([h, x[t]], axis=1)
        z = sigmoid(hx @ w_z.T + b_z)
        r = sigmoid(hx @ w_r.T + b_r)
        n = np.tanh(np.concatenate([r * h, x[t]], axis=1) @ w_n.T + b_n)
        h = (1 - z) * h + z * n
        outputs.append(h)
    to = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    out, _ = gatedrnn.gru(to(x), None, to(w_ih), to(w_hh), to(b_ih), to(b_hh), reset_after=False, backend="numpy")
    np.testing.assert_allclose(out.numpy(), np.stack(outputs), rtol=1e-12, atol=1e-12)


# --- huge pages for large CPU outputs ------------------------------------------------------------

def _vm_flags(address: int) -> list:
    """The VmFlags of the mapping that holds ``address`` (/proc/self/smaps)."""
    current = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(part, 16) for part in head.split("-"))
                current = start <= address < end
            elif head == "VmFlags:" and current:
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@needs_cython
@pytest.mark.skipif(not os.path.isdir("/sys/kernel/mm/transparent_hugepage"),
                    reason="needs Linux with transparent huge pages")
def test_large_cpu_outputs_are_advised_huge_pages(monkeypatch):
    from gatedrnn.ops._recurrence import new_output

    monkeypatch.delenv("GATEDRNN_HUGE_PAGES", raising=False)
    # 64 MiB: above glibc's largest mmap threshold, so fresh memory of its own; a page inside
    # (the advice covers the 2 MiB-aligned interior).
    advised = new_output((16 << 20,), torch.float32, torch.device("cpu"))
    assert "hg" in _vm_flags(advised.data_ptr() + (4 << 20))
    assert torch.isnan(advised[: 1 << 10]).all()  # still poisoned for the tests after the advice
    monkeypatch.setenv("GATEDRNN_HUGE_PAGES", "0")
    plain = new_output((16 << 20,), torch.float32, torch.device("cpu"))
    assert "hg" not in _vm_flags(plain.data_ptr() + (4 << 20))
