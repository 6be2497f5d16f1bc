"""``gatedrnn.rnn``: one Elman RNN layer, one direction, on every backend, with autograd.

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

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

NONLINEARITIES = ("tanh", "relu")

# The workspace holds h_t in state precision (the activation's derivative is a function of it).
RNN = Recurrence(name="rnn", num_gates=1, num_states=1, option_schema="str nonlinearity",
                 workspace_width=lambda nonlinearity: 1)


# --- numpy backend: the float64 oracle --------------------------------------------------------

def _oracle_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity):
    return oracle.rnn_forward(
        *map(to_numpy64, (x, h0, w_ih, w_hh, b_ih, b_hh, lengths)), reverse=reverse, nonlinearity=nonlinearity
    )


def _numpy_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity):
    output, h_n, cache = _oracle_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity)
    workspace = from_numpy(oracle.workspace("rnn", cache), x, state_dtype(x.dtype))
    return from_numpy(output, x), from_numpy(h_n, x), workspace


def _numpy_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                    nonlinearity, output, workspace):
    # The oracle recomputes its own forward rather than trusting another backend's workspace.
    *_, cache = _oracle_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity)
    grads = oracle.rnn_backward(to_numpy64(grad_output), to_numpy64(grad_h_n), cache)
    likes = (x, h0, w_ih, w_hh, w_hh, w_hh)
    return tuple(from_numpy(g, like) for g, like in zip(grads, likes))


# --- cython backend -----------------------------------------------------------------------------

def _cython_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity):
    seq_len, batch, _ = x.shape
    hidden_size = w_hh.shape[1]
    output = new_output((seq_len, batch, hidden_size), x.dtype, x.device)
    h_n = new_output((batch, hidden_size), x.dtype, x.device)
    workspace = new_output((seq_len, batch, hidden_size), x.dtype, x.device)
    bias = combined_bias(b_ih, b_hh, hidden_size, w_hh)
    run_cpu_kernel(cpu_extension("rnn").rnn_forward, x, h0, w_ih, w_hh, bias, lengths, reverse,
                   nonlinearity == "relu", output, h_n, workspace)
    return output, h_n, workspace


def _cython_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                     nonlinearity, output, workspace):
    grad_x = new_output(x.shape, x.dtype, x.device)
    grad_h0 = new_output(h0.shape, x.dtype, x.device)
    grad_w_ih = new_output(w_ih.shape, x.dtype, x.device)
    grad_w_hh = new_output(w_hh.shape, x.dtype, x.device)
    grad_bias = new_output((w_hh.shape[0],), x.dtype, x.device)
    run_cpu_kernel(cpu_extension("rnn").rnn_backward, grad_output, grad_h_n, x, h0, w_ih, w_hh,
                   lengths, reverse, nonlinearity == "relu", output, workspace,
                   grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_bias)
    # b_ih and b_hh enter as a sum: they get the same gradient.
    return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_bias, grad_bias.clone()


def _triton():
    from ..kernels import rnn as kernels

    return kernels.rnn_forward, kernels.rnn_backward


_rnn_op = define_ops(RNN, {
    "numpy": lambda: (_numpy_forward, _numpy_backward),
    "cython": lambda: (_cython_forward, _cython_backward),
    "triton": _triton,
})


def rnn(
    input: Tensor,
    hx: Optional[Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Optional[Tensor] = None,
    bias_hh: Optional[Tensor] = None,
    *,
    nonlinearity: str = "tanh",
    lengths: Optional[Union[Tensor, Sequence[int]]] = None,
    reverse: bool = False,
    batch_first: bool = False,
    backend: Optional[str] = None,
):
    """One Elman RNN layer over a whole sequence, in one direction (``torch.nn.RNN`` semantics).

    Args:
        input: (T, B, I), or (B, T, I) with ``batch_first=True``.
        hx: h0 (B, H), or None for zeros.
        weight_ih: (H, I). weight_hh: (H, H). bias_ih, bias_hh: (H,) or None.
        nonlinearity: "tanh" or "relu".
        lengths: int tensor or sequence (B,) of valid lengths in [0, T] (any order), or None;
            outputs past a length are 0 and the state is frozen (PackedSequence semantics).
        reverse: run each sequence backwards within its own length.
        batch_first: input and output are (B, T, .) instead of (T, B, .).
        backend: "triton", "cython" or "numpy"; None picks one (see ``gatedrnn.backends``).

    Returns:
        ``(output, h_n)``: output (T, B, H) (or (B, T, H)), h_n (B, H).
    """
    if not isinstance(nonlinearity, str):
        raise TypeError(f"nonlinearity must be a str, one of {NONLINEARITIES}, got {type(nonlinearity).__name__}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {NONLINEARITIES}, got {nonlinearity!r}")
    args = prepare(RNN, input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, batch_first, backend)
    output, h_n, _workspace = args.call(_rnn_op, nonlinearity)
    return finish_output(output, batch_first), h_n
