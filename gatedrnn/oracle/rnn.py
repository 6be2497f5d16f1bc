"""Elman RNN reference in NumPy float64: forward and explicit BPTT backward.

Equation (one layer, one direction):

    h' = act(W_ih x + b_ih + W_hh h + b_hh),   act = tanh or relu

Sequence semantics (lengths, reverse): see ``_common``.
"""

import numpy as np

from ._common import (as_float64, bias_or_zeros, check_layer_shapes, prepare_lengths,
                      previous_state, step_time_index)

__all__ = ["rnn_forward", "rnn_backward"]

NONLINEARITIES = ("tanh", "relu")


# ----------------------------------------------------------------------------
# Elman RNN
# ----------------------------------------------------------------------------

def rnn_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
                nonlinearity="tanh"):
    """Elman RNN forward over a whole sequence.

    Args:
        x: (T, B, I) input, time-major.
        h0: (B, H) initial hidden state.
        w_ih: (H, I); w_hh: (H, H); b_ih, b_hh: (H,) or None (= zero).
        lengths: int (B,), 0 <= lengths[b] <= T, any order; None = all T.
        reverse: run each sequence backwards within its own length.
        nonlinearity: "tanh" or "relu".

    Returns:
        output (T, B, H): the state after processing x[t] (0 past a length);
        h_n (B, H): the state after each sequence's last valid step (h0 if length 0);
        cache: dict with the inputs and "h" (T, B, H), the post-activation state per
        time index (equal to ``output``), for :func:`rnn_backward`.
    """
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"nonlinearity: expected one of {NONLINEARITIES}, got {nonlinearity!r}")
    x, h0, w_ih, w_hh, b_ih, b_hh = (as_float64(a, n) for a, n in zip(
        (x, h0, w_ih, w_hh, b_ih, b_hh), ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")))
    T, B, I, H = check_layer_shapes(x, h0, w_ih, w_hh, b_ih, b_hh, gates=1)
    lengths = prepare_lengths(lengths, T, B)
    bias_ih, bias_hh = bias_or_zeros(b_ih, H), bias_or_zeros(b_hh, H)
    batch = np.arange(B)

    h_per_time = np.zeros((T, B, H))
    h = h0.copy()
    for s in range(T):
        t, active = step_time_index(s, lengths, reverse)
        x_s = x[t, batch]                                    # (B, I)
        pre_activation = x_s @ w_ih.T + bias_ih + h @ w_hh.T + bias_hh
        h_new = np.tanh(pre_activation) if nonlinearity == "tanh" else np.maximum(pre_activation, 0.0)
        # Inactive sequences keep their state and write nothing (output stays 0).
        h = np.where(active[:, None], h_new, h)
        h_per_time[t[active], batch[active]] = h_new[active]

    cache = dict(cell="rnn", x=x, h0=h0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh,
                 lengths=lengths, reverse=bool(reverse), nonlinearity=nonlinearity,
                 h=h_per_time)
    return h_per_time.copy(), h, cache


def rnn_backward(grad_output, grad_h_n, cache):
    """Elman RNN backward (explicit BPTT).

    Args:
        grad_output: (T, B, H) gradient w.r.t. ``output`` (ignored past a length, where
            the output is the constant 0).
        grad_h_n: (B, H) gradient w.r.t. ``h_n``.
        cache: the dict returned by :func:`rnn_forward`.

    Returns:
        (grad_x (T, B, I), grad_h0 (B, H), grad_w_ih (H, I), grad_w_hh (H, H),
         grad_b_ih (H,), grad_b_hh (H,)); bias gradients are returned even when the
        forward had no bias.
    """
    x, h0, w_ih, w_hh = cache["x"], cache["h0"], cache["w_ih"], cache["w_hh"]
    lengths, reverse, h_per_time = cache["lengths"], cache["reverse"], cache["h"]
    T, B, _ = x.shape
    H = h0.shape[1]
    grad_output = as_float64(grad_output, "grad_output")
    batch = np.arange(B)

    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(w_ih)
    grad_w_hh = np.zeros_like(w_hh)
    grad_bias = np.zeros(H)
    # Gradient w.r.t. the running state after the current step; for a sequence whose
    # state is frozen (inactive step) it passes through unchanged, so a length-0
    # sequence hands grad_h_n straight to h0.
    grad_h = as_float64(grad_h_n, "grad_h_n").copy()
    for s in reversed(range(T)):
        t, active = step_time_index(s, lengths, reverse)
        mask = active[:, None]
        h_prev = previous_state(h_per_time, h0, s, lengths, reverse)
        h_new = h_per_time[t, batch]
        # h_new is both this step's output and the state carried on.
        grad_h_new = grad_h + grad_output[t, batch]
        if cache["nonlinearity"] == "tanh":
            grad_pre = grad_h_new * (1.0 - h_new * h_new)
        else:
            # relu'(a) = 1 where a > 0; relu(a) > 0 exactly where a > 0.
            grad_pre = grad_h_new * (h_new > 0.0)
        grad_pre = np.where(mask, grad_pre, 0.0)             # inactive: no contribution

        grad_w_ih += grad_pre.T @ x[t, batch]
        grad_w_hh += grad_pre.T @ h_prev
        grad_bias += grad_pre.sum(axis=0)
        grad_x[t[active], batch[active]] = (grad_pre @ w_ih)[active]
        grad_h = np.where(mask, grad_pre @ w_hh, grad_h)

    # b_ih and b_hh enter the pre-activation identically, so they share one gradient.
    return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_bias, grad_bias.copy()
