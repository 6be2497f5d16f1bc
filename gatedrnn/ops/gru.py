"""``gatedrnn.gru``: one GRU layer, one direction, on every backend, with autograd.

Gate order r, z, n (PyTorch's); s = sigmoid::

    r = s(W_ir x + b_ir + W_hr h + b_hr)
    z = s(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))      reset_after=True (PyTorch, cuDNN)
    n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)      reset_after=False (the seed document)
    h' = (1 - z) * n + z * h

The seed document writes h' = (1 - z) * h + z * n: its z is our 1 - z, which is our z with the
sign of the z rows of the weights and biases flipped (``gatedrnn.oracle`` has the mapping).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor

from .. import oracle
from ._recurrence import (
    Recurrence,
    bias_or_zeros,
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

GRU = Recurrence(
    name="gru", num_gates=3, num_states=1, option_schema="bool reset_after",
    # [r, z, n] and, with reset_after, hn = W_hn h + b_hn (needed for the gradient of r).
    workspace_width=lambda reset_after: 4 if reset_after else 3,
)


def _workspace_name(reset_after: bool) -> str:
    return "gru" if reset_after else "gru_reset_before"


# --- numpy backend: the float64 oracle --------------------------------------------------------

def _oracle_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    return oracle.gru_forward(
        *map(to_numpy64, (x, h0, w_ih, w_hh, b_ih, b_hh, lengths)), reverse=reverse, reset_after=reset_after
    )


def _numpy_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    output, h_n, cache = _oracle_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    workspace = from_numpy(oracle.workspace(_workspace_name(reset_after), cache), x, state_dtype(x.dtype))
    return from_numpy(output, x), from_numpy(h_n, x), workspace


def _numpy_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                    reset_after, output, workspace):
    # The oracle recomputes its own forward rather than trusting another backend's workspace.
    *_, cache = _oracle_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after)
    grads = oracle.gru_backward(to_numpy64(grad_output), to_numpy64(grad_h_n), cache)
    likes = (x, h0, w_ih, w_hh, w_hh, w_hh)
    return tuple(from_numpy(g, like) for g, like in zip(grads, likes))


# --- cython backend -----------------------------------------------------------------------------

def _cython_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after):
    seq_len, batch, _ = x.shape
    hidden_size = w_hh.shape[1]
    output = new_output((seq_len, batch, hidden_size), x.dtype, x.device)
    h_n = new_output((batch, hidden_size), x.dtype, x.device)
    workspace = new_output((seq_len, batch, GRU.workspace_width(reset_after) * hidden_size), x.dtype, x.device)
    gate_rows = 3 * hidden_size
    # The two biases stay apart: with reset_after, b_hn sits inside r * (W_hn h + b_hn).
    run_cpu_kernel(cpu_extension("gru").gru_forward, x, h0, w_ih, w_hh,
                   bias_or_zeros(b_ih, gate_rows, w_hh), bias_or_zeros(b_hh, gate_rows, w_hh),
                   lengths, reverse, reset_after, output, h_n, workspace)
    return output, h_n, workspace


def _cython_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                     reset_after, output, workspace):
    grad_x = new_output(x.shape, x.dtype, x.device)
    grad_h0 = new_output(h0.shape, x.dtype, x.device)
    grad_w_ih = new_output(w_ih.shape, x.dtype, x.device)
    grad_w_hh = new_output(w_hh.shape, x.dtype, x.device)
    grad_b_ih = new_output((w_hh.shape[0],), x.dtype, x.device)
    grad_b_hh = new_output((w_hh.shape[0],), x.dtype, x.device)
    run_cpu_kernel(cpu_extension("gru").gru_backward, grad_output, grad_h_n, x, h0, w_ih, w_hh,
                   lengths, reverse, reset_after, output, workspace,
                   grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)
    return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _triton():
    from ..kernels import gru as kernels

    return kernels.gru_forward, kernels.gru_backward


_gru_op = define_ops(GRU, {
    "numpy": lambda: (_numpy_forward, _numpy_backward),
    "cython": lambda: (_cython_forward, _cython_backward),
    "triton": _triton,
})


def gru(
    input: Tensor,
    hx: Optional[Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    *,
    lengths: Optional[Union[Tensor, Sequence[int]]] = None,
    reverse: bool = False,
    batch_first: bool = False,
    reset_after: bool = True,
    backend: Optional[str] = None,
):
    """One GRU layer over a whole sequence, in one direction (``torch.nn.GRU`` semantics).

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first=True``.
        hx: h0 (B, H), or None for zeros.
        weight_ih: (3H, I), gate rows r, z, n.
        weight_hh: (3H, H).
        bias_ih, bias_hh: (3H,) or None.
        lengths: int tensor or sequence (B,) of valid lengths in [0, T] (any order), or None;
            outputs past a length are 0 and the state is frozen (PackedSequence semantics).
        reverse: run each sequence backwards within its own length.
        batch_first: input and output are (B, T, .) instead of (T, B, .).
        reset_after: True for PyTorch/cuDNN's n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
            False for the seed document's n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
        backend: "triton", "cython" or "numpy"; None picks one (see ``gatedrnn.backends``).

    Returns:
        ``(output, h_n)``: output (T, B, H) (or (B, T, H)), h_n (B, H).
    """
    if not isinstance(reset_after, bool):
        raise TypeError(f"reset_after must be a bool, got {type(reset_after).__name__}")
    args = prepare(GRU, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, batch_first, backend)
    output, h_n, _workspace = args.call(_gru_op, reset_after)
    return finish_output(output, batch_first), h_n
