"""Tests of the NumPy float64 oracle (gatedrnn.oracle) itself.

- Against PyTorch autograd in float64 (torch.nn.LSTM/GRU/RNN, one layer, same weights):
  forward output, h_n, c_n and every gradient. lengths go through
  pack_padded_sequence(enforce_sorted=False) (length-0 sequences, which torch cannot
  pack, are checked against their definition: output 0, state and gradient passed
  through); reverse is the reverse half of a bidirectional torch module.
- GRU reset_after=False has no torch equivalent: forward against a per-sequence,
  per-step loop written here from the equations, gradients by finite differences.
- Finite differences for one small case of every cell, so the backward is shown to be
  the derivative of this forward, not merely consistent with torch.
- The seed document's GRU convention, mapped with seed_gru_to_ours.
"""

import zlib

import numpy as np
import pytest
import torch

from gatedrnn import oracle

torch.set_num_threads(1)

# name -> (oracle family, gate count, extra keyword arguments)
CELLS = {
    "lstm": ("lstm", 4, {}),
    "gru": ("gru", 3, {"reset_after": True}),
    "gru_reset_before": ("gru", 3, {"reset_after": False}),
    "rnn_tanh": ("rnn", 1, {"nonlinearity": "tanh"}),
    "rnn_relu": ("rnn", 1, {"nonlinearity": "relu"}),
}
GRAD_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def make_case(cell, T, B, I, H, bias, seed):
    """Random inputs, parameters and upstream gradients (never zeros) for one case."""
    rng = np.random.default_rng(seed)
    family, gates, _ = CELLS[cell]
    scale = 1.0 / np.sqrt(H)  # torch's init range: keeps the activations away from saturation
    case = {
        "x": rng.standard_normal((T, B, I)),
        "h0": 0.5 * rng.standard_normal((B, H)),
        "c0": 0.5 * rng.standard_normal((B, H)) if family == "lstm" else None,
        "w_ih": rng.uniform(-scale, scale, (gates * H, I)),
        "w_hh": rng.uniform(-scale, scale, (gates * H, H)),
        "b_ih": rng.uniform(-scale, scale, gates * H) if bias else None,
        "b_hh": rng.uniform(-scale, scale, gates * H) if bias else None,
    }
    upstream = {
        "grad_output": rng.standard_normal((T, B, H)),
        "grad_h_n": rng.standard_normal((B, H)),
        "grad_c_n": rng.standard_normal((B, H)) if family == "lstm" else None,
    }
    return case, upstream


def run_oracle(cell, case, upstream, lengths, reverse):
    """Oracle forward + backward; returns a dict of outputs and gradients by name."""
    family, _, extra = CELLS[cell]
    params = (case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"])
    if family == "lstm":
        output, h_n, c_n, cache = oracle.lstm_forward(case["x"], case["h0"], case["c0"], *params,
                                                      lengths=lengths, reverse=reverse)
        grads = oracle.lstm_backward(upstream["grad_output"], upstream["grad_h_n"],
                                     upstream["grad_c_n"], cache)
        names = GRAD_NAMES
    else:
        forward = oracle.gru_forward if family == "gru" else oracle.rnn_forward
        backward = oracle.gru_backward if family == "gru" else oracle.rnn_backward
        output, h_n, cache = forward(case["x"], case["h0"], *params, lengths=lengths,
                                     reverse=reverse, **extra)
        grads = backward(upstream["grad_output"], upstream["grad_h_n"], cache)
        c_n = None
        names = tuple(n for n in GRAD_NAMES if n != "c0")
    result = {"output": output, "h_n": h_n, "c_n": c_n, "cache": cache}
    result.update({"grad_" + n: g for n, g in zip(names, grads)})
    return result


def run_torch(cell, case, upstream, lengths, reverse):
    """The same computation through torch.nn in float64 autograd."""
    family, _, extra = CELLS[cell]
    T, B, I = case["x"].shape
    H = case["h0"].shape[1]
    module_class = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[family]
    torch.manual_seed(0)  # the unused forward direction of a bidirectional module
    torch_extra = {"nonlinearity": extra["nonlinearity"]} if family == "rnn" else {}
    assert extra.get("reset_after", True), "torch's GRU is the reset_after=True cell only"
    module = module_class(I, H, num_layers=1, bias=True, bidirectional=reverse, **torch_extra).double()
    direction = 1 if reverse else 0
    suffix = "_l0_reverse" if reverse else "_l0"
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            # A missing bias is a zero bias, which also defines its (returned) gradient.
            value = case[name] if case[name] is not None else np.zeros(getattr(module, "bias_ih" + suffix).shape)
            torch_name = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh"}[name]
            getattr(module, torch_name + suffix).copy_(torch.from_numpy(value))

    x = torch.tensor(case["x"], requires_grad=True)
    h0 = torch.tensor(case["h0"], requires_grad=True)
    c0 = torch.tensor(case["c0"], requires_grad=True) if family == "lstm" else None

    def module_state(state):
        # (B', H) -> (directions, B', H); the forward direction of a bidirectional
        # module starts from zeros and is ignored.
        return torch.stack([torch.zeros_like(state), state]) if reverse else state[None]

    keep = np.arange(B) if lengths is None else np.flatnonzero(np.asarray(lengths) > 0)
    output = torch.zeros(T, B, H, dtype=torch.float64)
    h_n, c_n = h0, c0  # length-0 sequences: state passed through
    if keep.size:
        keep_t = torch.from_numpy(keep)
        inputs = x[:, keep_t]
        if lengths is not None:
            inputs = torch.nn.utils.rnn.pack_padded_sequence(
                inputs, torch.as_tensor(np.asarray(lengths)[keep]), enforce_sorted=False)
        if family == "lstm":
            result, (h_all, c_all) = module(inputs, (module_state(h0[keep_t]), module_state(c0[keep_t])))
            c_n = c0.index_copy(0, keep_t, c_all[direction])
        else:
            result, h_all = module(inputs, module_state(h0[keep_t]))
        if lengths is not None:
            result, _ = torch.nn.utils.rnn.pad_packed_sequence(result, total_length=T)
        output = output.index_copy(1, keep_t, result[..., direction * H:(direction + 1) * H])
        h_n = h0.index_copy(0, keep_t, h_all[direction])

    loss = (output * torch.from_numpy(upstream["grad_output"])).sum() \
        + (h_n * torch.from_numpy(upstream["grad_h_n"])).sum()
    if family == "lstm":
        loss = loss + (c_n * torch.from_numpy(upstream["grad_c_n"])).sum()
    loss.backward()

    def grad_of(tensor):
        return np.zeros(tuple(tensor.shape)) if tensor.grad is None else tensor.grad.numpy()

    expected = {"output": output.detach().numpy(), "h_n": h_n.detach().numpy(),
                "grad_x": grad_of(x), "grad_h0": grad_of(h0)}
    if family == "lstm":
        expected.update(c_n=c_n.detach().numpy(), grad_c0=grad_of(c0))
    for name, torch_name in (("w_ih", "weight_ih"), ("w_hh", "weight_hh"),
                             ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
        expected["grad_" + name] = grad_of(getattr(module, torch_name + suffix))
    return expected


def assert_all_close(actual, expected, rtol, atol):
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=atol, err_msg=name)


# ----------------------------------------------------------------------------
# Against torch autograd
# ----------------------------------------------------------------------------

TORCH_CONFIGS = [
    # id, T, B, I, H, lengths, reverse, bias
    ("T33_B5_H47_full", 33, 5, 13, 47, None, False, True),
    ("T33_B5_H47_lengths_reverse", 33, 5, 13, 47, [33, 0, 12, 1, 30], True, True),
    ("T7_B5_H9_unsorted_zeros", 7, 5, 13, 9, [3, 0, 7, 1, 0], False, True),
    ("T7_B5_H9_unsorted_zeros_reverse", 7, 5, 13, 9, [3, 0, 7, 1, 0], True, True),
    ("T7_B5_H9_all_full_reverse_nobias", 7, 5, 13, 9, [7, 7, 7, 7, 7], True, False),
    ("T7_B5_H9_unsorted_nobias", 7, 5, 13, 9, [2, 7, 5, 1, 6], False, False),
    ("T1_B1_H9_nobias", 1, 1, 13, 9, None, False, False),
    ("T7_B1_H9_length0", 7, 1, 13, 9, [0], True, True),
]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("T,B,I,H,lengths,reverse,bias",
                         [c[1:] for c in TORCH_CONFIGS], ids=[c[0] for c in TORCH_CONFIGS])
def test_matches_torch_autograd(cell, T, B, I, H, lengths, reverse, bias):
    case, upstream = make_case(cell, T, B, I, H, bias, seed=zlib.crc32(f"{cell}-{T}-{B}-{H}-{reverse}".encode()))
    actual = run_oracle(cell, case, upstream, lengths, reverse)
    expected = run_torch(cell, case, upstream, lengths, reverse)
    assert_all_close(actual, expected, rtol=1e-10, atol=1e-10)
    # Past a length the output is exactly 0, not merely close.
    if lengths is not None:
        past = np.arange(T)[:, None] >= np.asarray(lengths)[None, :]
        assert not actual["output"][past].any()


# ----------------------------------------------------------------------------
# GRU reset_after=False (no torch equivalent)
# ----------------------------------------------------------------------------

def gru_reset_before_by_hand(case, lengths, reverse):
    """One sequence at a time, one step at a time, straight from the equations."""
    x, h0, w_ih, w_hh = case["x"], case["h0"], case["w_ih"], case["w_hh"]
    T, B, _ = x.shape
    H = h0.shape[1]
    b_ih = case["b_ih"] if case["b_ih"] is not None else np.zeros(3 * H)
    b_hh = case["b_hh"] if case["b_hh"] is not None else np.zeros(3 * H)
    W_ir, W_iz, W_in = w_ih[:H], w_ih[H:2 * H], w_ih[2 * H:]
    W_hr, W_hz, W_hn = w_hh[:H], w_hh[H:2 * H], w_hh[2 * H:]
    b_ir, b_iz, b_in = b_ih[:H], b_ih[H:2 * H], b_ih[2 * H:]
    b_hr, b_hz, b_hn = b_hh[:H], b_hh[H:2 * H], b_hh[2 * H:]
    output = np.zeros((T, B, H))
    h_n = np.zeros((B, H))
    for b in range(B):
        length = T if lengths is None else lengths[b]
        h = h0[b]
        times = range(length - 1, -1, -1) if reverse else range(length)
        for t in times:
            r = sigmoid(W_ir @ x[t, b] + b_ir + W_hr @ h + b_hr)
            z = sigmoid(W_iz @ x[t, b] + b_iz + W_hz @ h + b_hz)
            n = np.tanh(W_in @ x[t, b] + b_in + W_hn @ (r * h) + b_hn)
            h = (1 - z) * n + z * h
            output[t, b] = h
        h_n[b] = h
    return output, h_n


@pytest.mark.parametrize("T,B,I,H,lengths,reverse,bias", [
    (33, 5, 13, 47, None, False, True),
    (7, 5, 13, 9, [3, 0, 7, 1, 0], False, True),
    (7, 5, 13, 9, [3, 0, 7, 1, 0], True, False),
    (1, 1, 13, 9, None, True, True),
], ids=["T33_B5_H47_full", "T7_B5_H9_unsorted_zeros", "T7_B5_H9_unsorted_zeros_reverse_nobias",
        "T1_B1_H9_reverse"])
def test_gru_reset_before_forward_by_hand(T, B, I, H, lengths, reverse, bias):
    case, upstream = make_case("gru_reset_before", T, B, I, H, bias, seed=T * 100 + B)
    actual = run_oracle("gru_reset_before", case, upstream, lengths, reverse)
    output, h_n = gru_reset_before_by_hand(case, lengths, reverse)
    np.testing.assert_allclose(actual["output"], output, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(actual["h_n"], h_n, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------
# Finite differences: the backward is the derivative of this forward
# ----------------------------------------------------------------------------

def scalar_loss(cell, case, upstream, lengths, reverse):
    """sum(output * grad_output) + sum(h_n * grad_h_n) (+ sum(c_n * grad_c_n))."""
    result = run_oracle_forward_only(cell, case, lengths, reverse)
    loss = np.sum(result[0] * upstream["grad_output"]) + np.sum(result[1] * upstream["grad_h_n"])
    if CELLS[cell][0] == "lstm":
        loss += np.sum(result[2] * upstream["grad_c_n"])
    return loss


def run_oracle_forward_only(cell, case, lengths, reverse):
    family, _, extra = CELLS[cell]
    params = (case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"])
    if family == "lstm":
        return oracle.lstm_forward(case["x"], case["h0"], case["c0"], *params,
                                   lengths=lengths, reverse=reverse)[:3]
    forward = oracle.gru_forward if family == "gru" else oracle.rnn_forward
    return forward(case["x"], case["h0"], *params, lengths=lengths, reverse=reverse, **extra)[:2]


FD_CASES = [(cell, reverse) for cell in CELLS for reverse in (False, True)]


@pytest.mark.parametrize("cell,reverse", FD_CASES,
                         ids=[f"{c}-{'reverse' if r else 'forward'}" for c, r in FD_CASES])
def test_backward_matches_finite_differences(cell, reverse):
    T, B, I, H = 4, 4, 3, 5
    lengths = [3, 0, 4, 1]  # unsorted, one empty, one full
    case, upstream = make_case(cell, T, B, I, H, bias=True, seed=7 + reverse)
    analytic = run_oracle(cell, case, upstream, lengths, reverse)
    eps = 1e-6
    for name in GRAD_NAMES:
        if case[name] is None:
            continue
        numeric = np.zeros_like(case[name])
        for index in np.ndindex(case[name].shape):
            original = case[name][index]
            case[name][index] = original + eps
            plus = scalar_loss(cell, case, upstream, lengths, reverse)
            case[name][index] = original - eps
            minus = scalar_loss(cell, case, upstream, lengths, reverse)
            case[name][index] = original
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(analytic["grad_" + name], numeric, rtol=1e-7, atol=1e-9,
                                   err_msg=name)


# ----------------------------------------------------------------------------
# Bias None, cache / workspace layout, seed convention, validation
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("cell", list(CELLS))
def test_bias_none_is_zero_bias(cell):
    case, upstream = make_case(cell, 5, 3, 4, 6, bias=False, seed=11)
    without = run_oracle(cell, case, upstream, [5, 2, 0], True)
    gates = CELLS[cell][1]
    case_zero = dict(case, b_ih=np.zeros(gates * 6), b_hh=np.zeros(gates * 6))
    with_zero = run_oracle(cell, case_zero, upstream, [5, 2, 0], True)
    for name, value in with_zero.items():
        if name != "cache" and value is not None:
            np.testing.assert_array_equal(without[name], value, err_msg=name)
    assert without["grad_b_ih"].shape == (gates * 6,) and without["grad_b_ih"].any()


@pytest.mark.parametrize("cell,workspace_cell,entries", [
    ("lstm", "lstm", ("i", "f", "g", "o", "c")),
    ("gru", "gru", ("r", "z", "n", "hn")),
    ("gru_reset_before", "gru_reset_before", ("r", "z", "n")),
    ("rnn_tanh", "rnn", ("h",)),
])
def test_cache_and_workspace_layout(cell, workspace_cell, entries):
    T, B, H = 6, 4, 5
    lengths = np.array([6, 0, 3, 1])
    case, upstream = make_case(cell, T, B, 3, H, bias=True, seed=3)
    result = run_oracle(cell, case, upstream, lengths, True)
    work = oracle.workspace(workspace_cell, result["cache"])
    assert work.shape == (T, B, len(entries) * H) and work.dtype == np.float64
    past = np.arange(T)[:, None] >= lengths[None, :]
    assert not work[past].any()          # zeros past a length
    assert np.all(work[~past] != 0.0)     # every valid entry written
    for k, name in enumerate(entries):
        np.testing.assert_array_equal(work[..., k * H:(k + 1) * H], result["cache"][name])
    # The last state entry ("c" for LSTM, the new h for RNN) at a valid time is the
    # state right after processing x[t].
    if cell == "rnn_tanh":
        np.testing.assert_array_equal(result["cache"]["h"], result["output"])
    if cell == "lstm":
        c_last = result["cache"]["c"][0, np.arange(B)]  # reverse: time 0 is the last step
        np.testing.assert_array_equal(c_last[lengths > 0], result["c_n"][lengths > 0])
    with pytest.raises(ValueError):
        oracle.workspace("lstm" if workspace_cell != "lstm" else "rnn", result["cache"])


def test_seed_gru_convention_maps_to_ours():
    """The seed's h' = (1 - z) h + z n cell, with [h, x] weights, equals ours after mapping."""
    rng = np.random.default_rng(2024)
    T, B, I, H = 5, 3, 4, 6
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H))
    W_z, W_r, W = (rng.uniform(-0.5, 0.5, (H, H + I)) for _ in range(3))
    b_z, b_r, b = (rng.uniform(-0.5, 0.5, H) for _ in range(3))

    # Seed cell, written exactly as in the seed document, one sample at a time.
    seed_output = np.zeros((T, B, H))
    for batch in range(B):
        h = h0[batch]
        for t in range(T):
            hx = np.concatenate([h, x[t, batch]])
            z = sigmoid(W_z @ hx + b_z)
            r = sigmoid(W_r @ hx + b_r)
            h_tilde = np.tanh(W @ np.concatenate([r * h, x[t, batch]]) + b)
            h = (1 - z) * h + z * h_tilde
            seed_output[t, batch] = h

    w_ih, w_hh, b_ih, b_hh = oracle.seed_gru_to_ours(W_z, W_r, W, b_z, b_r, b)
    output, h_n, _ = oracle.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, reset_after=False)
    np.testing.assert_allclose(output, seed_output, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(h_n, seed_output[-1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lengths,error", [([1, 4], ValueError), ([-1, 1], ValueError),
                                            ([1.0, 2.0], TypeError), ([1, 2, 3], ValueError)],
                         ids=["too_long", "negative", "float", "wrong_shape"])
def test_bad_lengths_rejected(lengths, error):
    case, _ = make_case("rnn_tanh", 3, 2, 2, 2, bias=True, seed=0)
    with pytest.raises(error, match="lengths"):
        oracle.rnn_forward(case["x"], case["h0"], case["w_ih"], case["w_hh"],
                           lengths=np.array(lengths))


def test_unknown_nonlinearity_rejected():
    case, _ = make_case("rnn_tanh", 3, 2, 2, 2, bias=True, seed=0)
    with pytest.raises(ValueError, match="nonlinearity"):
        oracle.rnn_forward(case["x"], case["h0"], case["w_ih"], case["w_hh"], nonlinearity="gelu")


# ----------------------------------------------------------------------------
# LSTM with a projection w_hr (torch's proj_size)
# ----------------------------------------------------------------------------

PROJ_NAMES = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def make_proj_case(T, B, I, H, P, seed):
    rng = np.random.default_rng(seed)
    shapes = dict(x=(T, B, I), h0=(B, P), c0=(B, H), w_ih=(4 * H, I), w_hh=(4 * H, P),
                  b_ih=(4 * H,), b_hh=(4 * H,), w_hr=(P, H))
    case = {name: 0.5 * rng.standard_normal(shape) for name, shape in shapes.items()}
    upstream = dict(grad_output=rng.standard_normal((T, B, P)), grad_h_n=rng.standard_normal((B, P)),
                    grad_c_n=rng.standard_normal((B, H)))
    return case, upstream


def torch_proj_reference(case, upstream, lengths, reverse):
    """torch.nn.LSTM(I, H, proj_size=P) on each sequence (flipped within its length for reverse)."""
    T, B, I = case["x"].shape
    P, H = case["w_hr"].shape
    leaves = {name: torch.tensor(case[name], requires_grad=True) for name in PROJ_NAMES}
    module = torch.nn.LSTM(I, H, proj_size=P).double()
    params = {torch_name + "_l0": leaves[name] for name, torch_name in (
        ("w_ih", "weight_ih"), ("w_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh"), ("w_hr", "weight_hr"))}
    x, h0, c0 = leaves["x"], leaves["h0"], leaves["c0"]
    outputs, h_n, c_n = [], [], []
    for b in range(B):
        length = T if lengths is None else lengths[b]
        out, h, c = x.new_zeros(0, P), h0[b:b + 1], c0[b:b + 1]
        if length:
            sequence = x[:length, b].flip(0) if reverse else x[:length, b]
            out, (h, c) = torch.func.functional_call(module, params, (sequence, (h, c)))
            out = out.flip(0) if reverse else out
        outputs.append(torch.cat([out, x.new_zeros(T - length, P)]))
        h_n.append(h[0])
        c_n.append(c[0])
    output, h_n, c_n = torch.stack(outputs, 1), torch.stack(h_n), torch.stack(c_n)
    loss = sum((value * torch.from_numpy(upstream[key])).sum()
               for value, key in ((output, "grad_output"), (h_n, "grad_h_n"), (c_n, "grad_c_n")))
    loss.backward()
    expected = dict(output=output.detach().numpy(), h_n=h_n.detach().numpy(), c_n=c_n.detach().numpy())
    expected.update({"grad_" + name: leaves[name].grad.numpy() for name in PROJ_NAMES})
    return expected


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("lengths,reverse", [(None, False), (None, True), ([3, 0, 7, 1, 5], False),
                                             ([3, 0, 7, 1, 5], True)],
                         ids=["full", "full_reverse", "unsorted_zeros", "unsorted_zeros_reverse"])
def test_lstm_projection_matches_torch_proj_size(lengths, reverse):
    T, B, I, H, P = 7, 5, 4, 6, 3
    case, upstream = make_proj_case(T, B, I, H, P, seed=5 + reverse)
    output, h_n, c_n, cache = oracle.lstm_forward(
        case["x"], case["h0"], case["c0"], case["w_ih"], case["w_hh"], case["b_ih"], case["b_hh"],
        lengths=lengths, reverse=reverse, w_hr=case["w_hr"])
    grads = oracle.lstm_backward(upstream["grad_output"], upstream["grad_h_n"], upstream["grad_c_n"], cache)
    actual = dict(output=output, h_n=h_n, c_n=c_n)
    actual.update({"grad_" + name: grad for name, grad in zip(PROJ_NAMES, grads)})
    assert len(grads) == 8 and output.shape == (T, B, P) and h_n.shape == (B, P)
    assert_all_close(actual, torch_proj_reference(case, upstream, lengths, reverse), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,shape", [("w_hr", (3, 5)), ("w_hh", (24, 6)), ("h0", (5, 6))])
def test_lstm_projection_bad_shapes_rejected(name, shape):
    case, _ = make_proj_case(2, 5, 4, 6, 3, seed=1)
    case[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=name):
        oracle.lstm_forward(case["x"], case["h0"], case["c0"], case["w_ih"], case["w_hh"], w_hr=case["w_hr"])
