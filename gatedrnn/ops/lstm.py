"""``gatedrnn.lstm``: one LSTM layer, one direction, on every backend, with autograd.

Equations (PyTorch gate order i, f, g, o; s = sigmoid)::

    i = s(W_ii x + b_ii + W_hi h + b_hi)      f = s(W_if x + b_if + W_hf h + b_hf)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)   o = s(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g                        h' = o * tanh(c')
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import oracle
from ._recurrence import (
    Recurrence,
    combined_bias,
    cpu_extension,
    define_ops,
    finish_output,
    from_numpy,
    new_output,
    prepare,
    run_cpu_kernel,
    state_dtype,
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

def _cython_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse):
    seq_len, batch, _ = x.shape
    hidden_size = w_hh.shape[1]
    output = new_output((seq_len, batch, hidden_size), x.dtype, x.device)
    h_n = new_output((batch, hidden_size), x.dtype, x.device)
    c_n = new_output((batch, hidden_size), x.dtype, x.device)
    workspace = new_output((seq_len, batch, 5 * hidden_size), x.dtype, x.device)
    bias = combined_bias(b_ih, b_hh, 4 * hidden_size, w_hh)
    run_cpu_kernel(cpu_extension("lstm").lstm_forward, x, h0, c0, w_ih, w_hh, bias, lengths, reverse,
                   output, h_n, c_n, workspace)
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
    "cython": lambda: (_cython_forward, _cython_backward),
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
    lengths: Optional[Union[Tensor, Sequence[int]]] = None,
    reverse: bool = False,
    batch_first: bool = False,
    backend: Optional[str] = None,
) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
    """One LSTM layer over a whole sequence, in one direction (``torch.nn.LSTM`` semantics).

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first=True``.
        hx: ``(h0, c0)``, each (B, H), or None for zeros.
        weight_ih: (4H, I), gate rows in PyTorch's order i, f, g, o.
        weight_hh: (4H, H).
        bias_ih, bias_hh: (4H,) or None.
        lengths: int tensor or sequence (B,) of valid lengths in [0, T], any order, or None
            for all T. Outputs past a sequence's length are 0 and its state is frozen, so
            ``h_n``/``c_n`` hold the state after its last valid step (PackedSequence semantics).
        reverse: run each sequence backwards within its own length (the reverse half of a
            bidirectional layer).
        batch_first: input and output are (B, T, .) instead of (T, B, .).
        backend: "triton", "cython" or "numpy"; None picks one (see ``gatedrnn.backends``).

    Returns:
        ``(output, (h_n, c_n))``: output (T, B, H) (or (B, T, H) with ``batch_first``), h_n and
        c_n (B, H). Differentiable with respect to input, hx, weights and biases.
    """
    args = prepare(LSTM, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, batch_first, backend)
    output, h_n, c_n, _workspace = _lstm_op(*args.op_arguments())
    return finish_output(output, batch_first), (h_n, c_n)
