"""LSTM reference in NumPy float64: forward and explicit BPTT backward.

Equations (one layer, one direction, PyTorch gate order i, f, g, o; s = sigmoid):

    i  = s(W_ii x + b_ii + W_hi h + b_hi)
    f  = s(W_if x + b_if + W_hf h + b_hf)
    g  = tanh(W_ig x + b_ig + W_hg h + b_hg)
    o  = s(W_io x + b_io + W_ho h + b_ho)
    c' = f * c + i * g
    h' = o * tanh(c')                 (or, with a projection w_hr (P, H): h' = W_hr (o * tanh(c')))

The rows of ``w_ih`` (4H, I), ``w_hh`` (4H, H) and the biases (4H,) are stacked in the
order i, f, g, o. ``lengths`` and ``reverse`` behave as described in :mod:`.rnn`.
"""

import numpy as np

from ._common import (as_float64, bias_or_zeros, check_layer_shapes, prepare_lengths,
                      previous_state, step_time_index)

__all__ = ["lstm_forward", "lstm_backward"]


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, lengths=None, reverse=False, w_hr=None):
    """LSTM forward over a whole sequence.

    Args:
        x: (T, B, I) input, time-major.
        h0, c0: (B, H) initial hidden and cell states.
        w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,) or None (= zero).
        lengths: int (B,), 0 <= lengths[b] <= T, any order; None = all T.
        reverse: run each sequence backwards within its own length.
        w_hr: (P, H) projection (torch's proj_size) or None. With it h0, h_n, the output
            and the recurrent input are P wide: w_hh is (4H, P), h0 (B, P).

    Returns:
        output (T, B, H) ((T, B, P) with w_hr): h right after processing x[t] (0 past a length);
        h_n, c_n (B, H) (h_n (B, P) with w_hr): the states after each sequence's last valid
        step (h0/c0 if its length is 0);
        cache: dict with the inputs, "output", and per time index (T, B, H), 0 past a
        length: the post-activation gates "i", "f", "g", "o", the cell state "c" and, with
        w_hr, the unprojected "m" = o * tanh(c).
    """
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr = (as_float64(a, n) for a, n in zip(
        (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr), ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")))
    if w_hr is None:
        T, B, I, H = check_layer_shapes(x, h0, w_ih, w_hh, b_ih, b_hh, gates=4)
    else:
        T, B, I, H = check_layer_shapes(x, None, w_ih, None, b_ih, b_hh, gates=4)
        P = w_hr.shape[0] if w_hr.ndim == 2 else -1
        for name, array, shape in (("w_hr", w_hr, (P, H)), ("w_hh", w_hh, (4 * H, P)), ("h0", h0, (B, P))):
            if P < 1 or array.shape != shape:
                raise ValueError(f"{name}: expected shape {shape} with a projection, got {array.shape}")
    if c0.shape != (B, H):
        raise ValueError(f"c0: expected shape {(B, H)}, got {c0.shape}")
    lengths = prepare_lengths(lengths, T, B)
    bias_ih, bias_hh = bias_or_zeros(b_ih, 4 * H), bias_or_zeros(b_hh, 4 * H)
    batch = np.arange(B)

    per_time = {name: np.zeros((T, B, H)) for name in ("i", "f", "g", "o", "c")}
    per_time["output"] = np.zeros((T, B, h0.shape[1]))
    if w_hr is not None:
        per_time["m"] = np.zeros((T, B, H))
    h, c = h0.copy(), c0.copy()
    for s in range(T):
        t, active = step_time_index(s, lengths, reverse)
        x_s = x[t, batch]                                    # (B, I)
        gates = x_s @ w_ih.T + bias_ih + h @ w_hh.T + bias_hh  # (B, 4H) pre-activations
        i = sigmoid(gates[:, 0 * H:1 * H])
        f = sigmoid(gates[:, 1 * H:2 * H])
        g = np.tanh(gates[:, 2 * H:3 * H])
        o = sigmoid(gates[:, 3 * H:4 * H])
        c_new = f * c + i * g
        m = o * np.tanh(c_new)
        h_new = m if w_hr is None else m @ w_hr.T
        # Inactive sequences keep their state and write nothing (arrays stay 0).
        mask = active[:, None]
        h = np.where(mask, h_new, h)
        c = np.where(mask, c_new, c)
        for name, value in (("i", i), ("f", f), ("g", g), ("o", o), ("c", c_new),
                            ("output", h_new)) + ((("m", m),) if w_hr is not None else ()):
            per_time[name][t[active], batch[active]] = value[active]

    cache = dict(cell="lstm", x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, w_hr=w_hr,
                 lengths=lengths, reverse=bool(reverse), **per_time)
    return per_time["output"].copy(), h, c, cache


def lstm_backward(grad_output, grad_h_n, grad_c_n, cache):
    """LSTM backward (explicit BPTT).

    Args:
        grad_output: (T, B, H) ((T, B, P) with a projection) gradient w.r.t. ``output`` (ignored past a length, where
            the output is the constant 0).
        grad_h_n, grad_c_n: gradients w.r.t. ``h_n`` (B, H or P) and ``c_n`` (B, H).
        cache: the dict returned by :func:`lstm_forward`.

    Returns:
        (grad_x (T, B, I), grad_h0 (B, H), grad_c0 (B, H), grad_w_ih (4H, I),
         grad_w_hh (4H, H), grad_b_ih (4H,), grad_b_hh (4H,)); bias gradients are
        returned even when the forward had no bias. With a projection, grad_h0 is (B, P),
        grad_w_hh (4H, P), and grad_w_hr (P, H) is appended as an eighth entry.
    """
    x, h0, c0, w_ih, w_hh, w_hr = (cache[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "w_hr"))
    lengths, reverse = cache["lengths"], cache["reverse"]
    T, B, _ = x.shape
    H = c0.shape[1]
    grad_output = as_float64(grad_output, "grad_output")
    batch = np.arange(B)

    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(w_ih)
    grad_w_hh = np.zeros_like(w_hh)
    grad_bias = np.zeros(4 * H)
    grad_w_hr = None if w_hr is None else np.zeros_like(w_hr)
    # Gradients w.r.t. the running (h, c) after the current step. A frozen (inactive)
    # step passes them through unchanged, so a length-0 sequence hands grad_h_n and
    # grad_c_n straight to h0 and c0.
    grad_h = as_float64(grad_h_n, "grad_h_n").copy()
    grad_c = as_float64(grad_c_n, "grad_c_n").copy()
    for s in reversed(range(T)):
        t, active = step_time_index(s, lengths, reverse)
        mask = active[:, None]
        h_prev = previous_state(cache["output"], h0, s, lengths, reverse)
        c_prev = previous_state(cache["c"], c0, s, lengths, reverse)
        i, f, g, o, c_new = (cache[k][t, batch] for k in ("i", "f", "g", "o", "c"))
        tanh_c = np.tanh(c_new)

        # h' is both this step's output and the carried state.
        grad_h_new = grad_h + grad_output[t, batch]
        if w_hr is None:
            grad_m = grad_h_new
        else:
            # h' = m W_hr^T (inactive rows: grad_h_new is a pass-through, m is 0, so mask).
            grad_w_hr += np.where(mask, grad_h_new, 0.0).T @ cache["m"][t, batch]
            grad_m = grad_h_new @ w_hr
        # m = o * tanh(c')
        grad_o = grad_m * tanh_c
        grad_c_new = grad_c + grad_m * o * (1.0 - tanh_c * tanh_c)
        # c' = f * c + i * g
        grad_f = grad_c_new * c_prev
        grad_i = grad_c_new * g
        grad_g = grad_c_new * i
        grad_c_prev = grad_c_new * f
        # Through the activations: s'(a) = s (1 - s), tanh'(a) = 1 - tanh^2.
        grad_gates = np.concatenate([grad_i * i * (1.0 - i),
                                     grad_f * f * (1.0 - f),
                                     grad_g * (1.0 - g * g),
                                     grad_o * o * (1.0 - o)], axis=1)   # (B, 4H)
        grad_gates = np.where(mask, grad_gates, 0.0)         # inactive: no contribution

        grad_w_ih += grad_gates.T @ x[t, batch]
        grad_w_hh += grad_gates.T @ h_prev
        grad_bias += grad_gates.sum(axis=0)
        grad_x[t[active], batch[active]] = (grad_gates @ w_ih)[active]
        grad_h = np.where(mask, grad_gates @ w_hh, grad_h)
        grad_c = np.where(mask, grad_c_prev, grad_c)

    # b_ih and b_hh enter the gate pre-activations identically: one shared gradient.
    grads = (grad_x, grad_h, grad_c, grad_w_ih, grad_w_hh, grad_bias, grad_bias.copy())
    return grads if w_hr is None else grads + (grad_w_hr,)
