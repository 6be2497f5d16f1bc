"""``gatedrnn.lstm``: one LSTM layer, one direction, on every backend, with autograd.

Equations (PyTorch gate order i, f, g, o; s = sigmoid)::

    i = s(W_ii x + b_ii + W_hi h + b_hi)      f = s(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = s(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g                        h' = o * tanh(c')

With a projection ``weight_hr`` (torch's ``proj_size``): h' = W_hr (o * tanh(c')).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import oracle
from ._recurrence import (
    Recurrence,
    _check_bool,
    _check_tensor,
    _prepare_lengths,
    _shape,
    autocast_cast,
    call_autocast_dtype,
    check_like_input,
    combined_bias,
    cpu_extension,
    define_ops,
    finish_output,
    from_numpy,
    new_output,
    prepare,
    run_cpu_kernel,
    state_dtype,
    time_major_input,
    to_numpy64,
)

LSTM = Recurrence(name="lstm", num_gates=4, num_states=2, option_schema="", workspace_width=lambda: 5)


# --- numpy backend: the float64 oracle --------------------------------------------------------

def _numpy_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    output, h_n, c_n, cache = oracle.lstm_forward(
        *map(to_numpy64, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)), reverse=reverse
    )
    workspace = from_numpy(oracle.workspace("lstm", cache), x, state_dtype(x.dtype))
    return from_numpy(output, x), from_numpy(h_n, x), from_numpy(c_n, x), workspace


def _numpy_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                    lengths, reverse, output, workspace):
    # The oracle recomputes its own forward rather than trusting another backend's workspace.
    *_, cache = oracle.lstm_forward(
        *map(to_numpy64, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)), reverse=reverse
    )
    grads = oracle.lstm_backward(*map(to_numpy64, (grad_output, grad_h_n, grad_c_n)), cache)
    likes = (x, h0, c0, w_ih, w_hh, w_hh, w_hh)
    return tuple(from_numpy(g, like) for g, like in zip(grads, likes))


# --- cython backend -----------------------------------------------------------------------------

def _cython_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, need_workspace=True):
    seq_len, batch, _ = x.shape
    hidden_size = w_hh.shape[1]
    output = new_output((seq_len, batch, hidden_size), x.dtype, x.device)
    h_n = new_output((batch, hidden_size), x.dtype, x.device)
    c_n = new_output((batch, hidden_size), x.dtype, x.device)
    # Inference (no backward follows) skips the workspace: 5 H values a row not written.
    workspace = new_output((seq_len if need_workspace else 0, batch, 5 * hidden_size), x.dtype, x.device)
    bias = combined_bias(b_ih, b_hh, 4 * hidden_size, w_hh)
    # The forward runs every product on its register kernel, never BLAS.
    run_cpu_kernel(cpu_extension("lstm").lstm_forward, x, h0, c0, w_ih, w_hh, bias, lengths, reverse,
                   output, h_n, c_n, workspace, calls_blas=False)
    return output, h_n, c_n, workspace


def _cython_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                     lengths, reverse, output, workspace):
    grad_x = new_output(x.shape, x.dtype, x.device)
    grad_h0 = new_output(h0.shape, x.dtype, x.device)
    grad_c0 = new_output(c0.shape, x.dtype, x.device)
    grad_w_ih = new_output(w_ih.shape, x.dtype, x.device)
    grad_w_hh = new_output(w_hh.shape, x.dtype, x.device)
    grad_bias = new_output((w_hh.shape[0],), x.dtype, x.device)
    run_cpu_kernel(cpu_extension("lstm").lstm_backward, grad_output, grad_h_n, grad_c_n, x, h0, c0,
                   w_ih, w_hh, lengths, reverse, output, workspace,
                   grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias)
    # b_ih and b_hh enter the gates as a sum: they get the same gradient.
    return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_bias, grad_bias.clone()


def _triton():
    from ..kernels import lstm as kernels

    return kernels.lstm_forward, kernels.lstm_backward


_lstm_op = define_ops(LSTM, {
    "numpy": lambda: (_numpy_forward, _numpy_backward),
    "cython": lambda: (_cython_forward, _cython_backward, functools.partial(_cython_forward, need_workspace=False)),
    "triton": _triton,
})


def lstm(
    input: Tensor,
    hx: Optional[Union[Tuple[Tensor, Tensor], Sequence[Tensor]]],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    *,
    weight_hr: Optional[Tensor] = None,
    lengths: Optional[Union[Tensor, Sequence[int]]] = None,
    reverse: bool = False,
    batch_first: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer over a whole sequence, in one direction (``torch.nn.LSTM`` semantics).

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first=True``.
        hx: ``(h0, c0)``, h0 (B, H) (or (B, P) with ``weight_hr``) and c0 (B, H), or None
            for zeros.
        weight_ih: (4H, I), gate rows in PyTorch's order i, f, g, o.
        weight_hh: (4H, H), or (4H, P) with ``weight_hr``.
        bias_ih, bias_hh: (4H,) or None.
        weight_hr: (P, H) projection (``torch.nn.LSTM(proj_size=P)``'s ``weight_hr_l*``), or
            None. With it h' = W_hr (o * tanh(c')), and h0, h_n and the output have P features.
            Computed exactly by rewriting onto the unprojected op (see
            :func:`_lstm_with_projection`), on every backend.
        lengths: int tensor or sequence (B,) of valid lengths in [0, T], any order, or None
            for all T. Outputs past a sequence's length are 0 and its state is frozen, so
            ``h_n``/``c_n`` hold the state after its last valid step (PackedSequence semantics).
        reverse: run each sequence backwards within its own length (the reverse half of a
            bidirectional layer).
        batch_first: input and output are (B, T, .) instead of (T, B, .).
        backend: "triton", "cython" or "numpy"; None picks one (see ``gatedrnn.backends``).

    Returns:
        ``(output, (h_n, c_n))``: output (T, B, H) (or (B, T, H) with ``batch_first``), h_n and
        c_n (B, H); with ``weight_hr`` output (T, B, P) and h_n (B, P), c_n still (B, H).
        Differentiable with respect to input, hx, weights (``weight_hr`` included) and biases.
    """
    if weight_hr is not None:
        return _lstm_with_projection(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                     lengths, reverse, batch_first, backend)
    args = prepare(LSTM, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, batch_first, backend)
    output, h_n, c_n, _workspace = args.call(_lstm_op)
    return finish_output(output, batch_first), (h_n, c_n)


def _check_projected(input, hx, weight_ih, weight_hh, weight_hr, reverse, batch_first):
    """Validate the arguments whose shapes the projection changes; return (x, h0, c0).

    ``x`` is time-major; h0/c0 are None when ``hx`` is None. What the unprojected call checks
    anyway (biases, lengths, backend and its dtypes) is left to :func:`prepare`.
    """
    input = _check_tensor(input, "input")
    weight_ih = _check_tensor(weight_ih, "weight_ih")
    weight_hh = _check_tensor(weight_hh, "weight_hh")
    weight_hr = _check_tensor(weight_hr, "weight_hr")
    _check_bool(reverse, "reverse")
    batch_first = _check_bool(batch_first, "batch_first")
    x = time_major_input(input, batch_first)
    _, batch, input_size = x.shape
    if weight_hr.dim() != 2 or weight_hr.shape[0] < 1 or weight_hr.shape[1] < 1:
        raise ValueError(
            f"weight_hr must be 2-D (proj_size, hidden_size) with both sizes >= 1, got shape {_shape(weight_hr)}"
        )
    proj_size, hidden_size = weight_hr.shape
    if _shape(weight_hh) != (4 * hidden_size, proj_size):
        raise ValueError(
            f"weight_hh must have shape (4*hidden_size, proj_size) = {(4 * hidden_size, proj_size)} "
            f"with weight_hr of shape {_shape(weight_hr)}, got {_shape(weight_hh)}"
        )
    if input_size < 1:
        raise ValueError(f"input_size (input.shape[2]) must be >= 1, got {input_size}")
    if _shape(weight_ih) != (4 * hidden_size, input_size):
        raise ValueError(
            f"weight_ih must have shape (4*hidden_size, input_size) = {(4 * hidden_size, input_size)}, "
            f"got {_shape(weight_ih)}"
        )
    named = [("weight_ih", weight_ih), ("weight_hh", weight_hh), ("weight_hr", weight_hr)]
    h0 = c0 = None
    if hx is not None:
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(
                f"hx must be None or a tuple (h0, c0) of two tensors for lstm, got {type(hx).__name__}"
                + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
            )
        h0, c0 = hx
        for argument, state, size, what in (("h0", h0, proj_size, "proj_size"), ("c0", c0, hidden_size, "hidden_size")):
            _check_tensor(state, f"hx ({argument})")
            if _shape(state) != (batch, size):
                raise ValueError(
                    f"hx ({argument}) must have shape (batch, {what}) = {(batch, size)} with weight_hr, "
                    f"got {_shape(state)}"
                )
            named.append((f"hx ({argument})", state))
    check_like_input(named, input)
    return x, h0, c0


def _lstm_with_projection(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                          lengths, reverse, batch_first, backend):
    """One LSTM layer with a projection, h_t = W_hr (o_t * tanh(c_t)), on the unprojected op.

    With m_t = o_t * tanh(c_t) the recurrent term is W_hh h_{t-1} = (W_hh W_hr) m_{t-1}, so the
    unprojected LSTM with recurrent weight W_hh W_hr (4H, H) produces m_t and c_t exactly
    (same equations; only the rounding order of the products differs). Its initial m_0 is 0;
    the initial h_0 (B, P), which is not a projection of anything, enters the first processed
    step (t = 0, or t = len-1 in reverse) through extra input features [x_t, [t first] * h_0]
    with input weight [W_ih, W_hh]. Output and h_n are m @ W_hr^T; autograd through these
    products gives every gradient.
    """
    autocast = call_autocast_dtype(input, backend, "lstm")
    if autocast is not None:
        # As prepare() does for the unprojected call: everything in the dtype the op computes
        # in, and the projection's products in it too (not autocast's own choice for them).
        input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr = (
            autocast_cast(autocast, t) for t in (input, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr))
        if isinstance(hx, (tuple, list)):
            hx = tuple(autocast_cast(autocast, t) for t in hx)
        with torch.autocast(input.device.type, enabled=False):
            return _lstm_with_projection(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                                         lengths, reverse, batch_first, backend)
    x, h0, c0 = _check_projected(input, hx, weight_ih, weight_hh, weight_hr, reverse, batch_first)
    reverse, batch_first = bool(reverse), bool(batch_first)
    seq_len, batch, _ = x.shape
    proj_size, hidden_size = weight_hr.shape
    lengths = _prepare_lengths(lengths, seq_len, batch)  # (the lstm op checks its values)
    if h0 is None:
        h0 = x.new_zeros(batch, proj_size)
    if c0 is None:
        c0 = x.new_zeros(batch, hidden_size)
    steps = torch.arange(seq_len, device=x.device).unsqueeze(1)
    lengths_here = lengths.to(x.device)
    first = lengths_here - 1 if reverse else torch.zeros_like(lengths_here)
    is_first = (steps == first.unsqueeze(0)).to(x.dtype).unsqueeze(-1)  # (T, B, 1)
    x_with_h0 = torch.cat([x, is_first * h0.unsqueeze(0)], dim=-1)
    m, (m_n, c_n) = lstm(
        x_with_h0, (x.new_zeros(batch, hidden_size), c0), torch.cat([weight_ih, weight_hh], dim=1),
        weight_hh @ weight_hr, bias_ih, bias_hh, lengths=lengths, reverse=reverse, backend=backend,
    )
    output = m @ weight_hr.t()  # zero past each length, as m is
    # A sequence that ran no step keeps h_0 (m_n = m_0 = 0 would project to 0).
    h_n = torch.where((lengths_here > 0).unsqueeze(1), m_n @ weight_hr.t(), h0)
    return finish_output(output, batch_first), (h_n, c_n)
