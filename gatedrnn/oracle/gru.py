"""GRU reference in NumPy float64: forward and explicit BPTT backward, both conventions.

Gate order r, z, n (rows of ``w_ih`` (3H, I), ``w_hh`` (3H, H), biases (3H,)); s = sigmoid.

reset_after=True (PyTorch / cuDNN):

    r  = s(W_ir x + b_ir + W_hr h + b_hr)
    z  = s(W_iz x + b_iz + W_hz h + b_hz)
    n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

reset_after=False (reset applied to h *before* the recurrent product), same r and z:

    n  = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
    h' = (1 - z) * n + z * h

The seed document (GRU section) writes the reset_after=False cell with concatenated
weights acting on [h, x] and the opposite update convention:

    z_s = s(W_z [h, x] + b_z),  r = s(W_r [h, x] + b_r),
    n   = tanh(W [r * h, x] + b),  h' = (1 - z_s) * h + z_s * n.

Its z_s is our 1 - z. Because s(-a) = 1 - s(a), the seed cell equals ours after
negating the z rows of the weights and biases; :func:`seed_gru_to_ours` does that
mapping (and splits [h, x] into W_hh / W_ih columns).

``lengths`` and ``reverse`` behave as described in :mod:`.rnn`.
"""

import numpy as np

from .lstm import sigmoid
from ._common import (as_float64, bias_or_zeros, check_layer_shapes, prepare_lengths,
                      previous_state, step_time_index)

__all__ = ["gru_forward", "gru_backward", "seed_gru_to_ours"]


def gru_forward(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False,
                reset_after=True):
    """GRU forward over a whole sequence.

    Args:
        x: (T, B, I) input, time-major.
        h0: (B, H) initial hidden state.
        w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,) or None (= zero).
        lengths: int (B,), 0 <= lengths[b] <= T, any order; None = all T.
        reverse: run each sequence backwards within its own length.
        reset_after: True for the PyTorch/cuDNN cell, False for r applied before W_hn.

    Returns:
        output (T, B, H): h right after processing x[t] (0 past a length);
        h_n (B, H): the state after each sequence's last valid step (h0 if length 0);
        cache: dict with the inputs, "output", and per time index (T, B, H), 0 past a
        length: the post-activation gates "r", "z", "n" and, when reset_after,
        "hn" = W_hn h_prev + b_hn.
    """
    x, h0, w_ih, w_hh, b_ih, b_hh = (as_float64(a, n) for a, n in zip(
        (x, h0, w_ih, w_hh, b_ih, b_hh), ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")))
    T, B, I, H = check_layer_shapes(x, h0, w_ih, w_hh, b_ih, b_hh, gates=3)
    lengths = prepare_lengths(lengths, T, B)
    bias_ih, bias_hh = bias_or_zeros(b_ih, 3 * H), bias_or_zeros(b_hh, 3 * H)
    rows_r, rows_z, rows_n = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    batch = np.arange(B)

    names = ("r", "z", "n", "hn", "output") if reset_after else ("r", "z", "n", "output")
    per_time = {name: np.zeros((T, B, H)) for name in names}
    h = h0.copy()
    for s in range(T):
        t, active = step_time_index(s, lengths, reverse)
        x_s = x[t, batch]                                    # (B, I)
        input_part = x_s @ w_ih.T + bias_ih                  # (B, 3H): W_i* x + b_i*
        r = sigmoid(input_part[:, rows_r] + h @ w_hh[rows_r].T + bias_hh[rows_r])
        z = sigmoid(input_part[:, rows_z] + h @ w_hh[rows_z].T + bias_hh[rows_z])
        if reset_after:
            hn = h @ w_hh[rows_n].T + bias_hh[rows_n]
            n = np.tanh(input_part[:, rows_n] + r * hn)
        else:
            n = np.tanh(input_part[:, rows_n] + (r * h) @ w_hh[rows_n].T + bias_hh[rows_n])
        h_new = (1.0 - z) * n + z * h
        # Inactive sequences keep their state and write nothing (arrays stay 0).
        h = np.where(active[:, None], h_new, h)
        values = {"r": r, "z": z, "n": n, "output": h_new}
        if reset_after:
            values["hn"] = hn
        for name, value in values.items():
            per_time[name][t[active], batch[active]] = value[active]

    cache = dict(cell="gru" if reset_after else "gru_reset_before", x=x, h0=h0, w_ih=w_ih,
                 w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, lengths=lengths, reverse=bool(reverse),
                 reset_after=bool(reset_after), **per_time)
    return per_time["output"].copy(), h, cache


def gru_backward(grad_output, grad_h_n, cache):
    """GRU backward (explicit BPTT), either convention (taken from the cache).

    Args:
        grad_output: (T, B, H) gradient w.r.t. ``output`` (ignored past a length, where
            the output is the constant 0).
        grad_h_n: (B, H) gradient w.r.t. ``h_n``.
        cache: the dict returned by :func:`gru_forward`.

    Returns:
        (grad_x (T, B, I), grad_h0 (B, H), grad_w_ih (3H, I), grad_w_hh (3H, H),
         grad_b_ih (3H,), grad_b_hh (3H,)); bias gradients are returned even when the
        forward had no bias.
    """
    x, h0, w_ih, w_hh = cache["x"], cache["h0"], cache["w_ih"], cache["w_hh"]
    lengths, reverse, reset_after = cache["lengths"], cache["reverse"], cache["reset_after"]
    T, B, _ = x.shape
    H = h0.shape[1]
    rows_r, rows_z, rows_n = slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H)
    grad_output = as_float64(grad_output, "grad_output")
    batch = np.arange(B)

    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(w_ih)
    grad_w_hh = np.zeros_like(w_hh)
    grad_b_ih = np.zeros(3 * H)
    grad_b_hh = np.zeros(3 * H)
    # Gradient w.r.t. the running state after the current step; a frozen (inactive)
    # step passes it through unchanged, so a length-0 sequence hands grad_h_n to h0.
    grad_h = as_float64(grad_h_n, "grad_h_n").copy()
    for s in reversed(range(T)):
        t, active = step_time_index(s, lengths, reverse)
        mask = active[:, None]
        h_prev = previous_state(cache["output"], h0, s, lengths, reverse)
        r, z, n = (cache[k][t, batch] for k in ("r", "z", "n"))

        # h' is both this step's output and the carried state.
        grad_h_new = grad_h + grad_output[t, batch]
        # h' = (1 - z) * n + z * h
        grad_n = grad_h_new * (1.0 - z)
        grad_z = grad_h_new * (h_prev - n)
        grad_h_prev = grad_h_new * z
        # n = tanh(a_n): gradient w.r.t. a_n, which is also the gradient of W_in x + b_in.
        grad_a_n = grad_n * (1.0 - n * n)
        if reset_after:
            # a_n = W_in x + b_in + r * hn,  hn = W_hn h + b_hn
            hn = cache["hn"][t, batch]
            grad_r = grad_a_n * hn
            grad_hn = grad_a_n * r                           # gradient of W_hn h + b_hn
        else:
            # a_n = W_in x + b_in + W_hn (r * h) + b_hn
            grad_reset_h = grad_a_n @ w_hh[rows_n]           # gradient w.r.t. r * h
            grad_r = grad_reset_h * h_prev
            grad_h_prev = grad_h_prev + grad_reset_h * r
        grad_a_r = grad_r * r * (1.0 - r)                    # s'(a) = s (1 - s)
        grad_a_z = grad_z * z * (1.0 - z)

        # Gradient of the input-side pre-activations W_i* x + b_i*, rows r, z, n.
        grad_input_part = np.where(mask, np.concatenate([grad_a_r, grad_a_z, grad_a_n], axis=1), 0.0)
        grad_w_ih += grad_input_part.T @ x[t, batch]
        grad_b_ih += grad_input_part.sum(axis=0)
        grad_x[t[active], batch[active]] = (grad_input_part @ w_ih)[active]

        # Hidden side: rows r and z see h directly; row n sees h (reset_after, through
        # grad_hn) or r * h (reset_before, through grad_a_n).
        if reset_after:
            grad_hidden_part = np.where(mask, np.concatenate([grad_a_r, grad_a_z, grad_hn], axis=1), 0.0)
            grad_w_hh += grad_hidden_part.T @ h_prev
            grad_b_hh += grad_hidden_part.sum(axis=0)
            grad_h_prev = grad_h_prev + grad_hidden_part @ w_hh
        else:
            grad_hidden_part = grad_input_part                # same pre-activation gradients
            grad_w_hh[rows_r] += grad_hidden_part[:, rows_r].T @ h_prev
            grad_w_hh[rows_z] += grad_hidden_part[:, rows_z].T @ h_prev
            grad_w_hh[rows_n] += grad_hidden_part[:, rows_n].T @ (r * h_prev)
            grad_b_hh += grad_hidden_part.sum(axis=0)
            # The n row's path to h already went through grad_reset_h above.
            grad_h_prev = (grad_h_prev + grad_hidden_part[:, rows_r] @ w_hh[rows_r]
                           + grad_hidden_part[:, rows_z] @ w_hh[rows_z])
        grad_h = np.where(mask, grad_h_prev, grad_h)

    return grad_x, grad_h, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def seed_gru_to_ours(w_z, w_r, w_n, b_z, b_r, b_n):
    """Map the seed document's GRU parameters to ours (use with ``reset_after=False``).

    The seed cell is ``z_s = s(W_z [h, x] + b_z)``, ``r = s(W_r [h, x] + b_r)``,
    ``n = tanh(W [r * h, x] + b)``, ``h' = (1 - z_s) * h + z_s * n``. Its ``z_s`` is our
    ``1 - z``, and ``1 - s(a) = s(-a)``, so our z rows are the negated seed z rows.

    Args:
        w_z, w_r, w_n: (H, H + I) seed weights acting on the concatenation [h, x]
            (``w_n`` is the seed's ``W``).
        b_z, b_r, b_n: (H,) seed biases (``b_n`` is the seed's ``b``).

    Returns:
        (w_ih (3H, I), w_hh (3H, H), b_ih (3H,), b_hh (3H,)) in our r, z, n row order;
        the seed has one bias per gate, so it goes into b_ih and b_hh is zero.
    """
    w_z, w_r, w_n, b_z, b_r, b_n = (np.asarray(a, dtype=np.float64)
                                    for a in (w_z, w_r, w_n, b_z, b_r, b_n))
    H = w_z.shape[0]
    # Columns [:H] multiply h (or r * h), columns [H:] multiply x.
    w_hh = np.concatenate([w_r[:, :H], -w_z[:, :H], w_n[:, :H]], axis=0)
    w_ih = np.concatenate([w_r[:, H:], -w_z[:, H:], w_n[:, H:]], axis=0)
    b_ih = np.concatenate([b_r, -b_z, b_n])
    b_hh = np.zeros(3 * H)
    return w_ih, w_hh, b_ih, b_hh
