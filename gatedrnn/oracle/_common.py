"""Helpers the NumPy references share: input conversion and checks, the per-step time index
that implements ``lengths`` and ``reverse`` (so the recurrent cells walk a sequence in exactly
the same way), and the int-or-pair argument parsing of the convolution and pooling references.

Sequence semantics (PackedSequence): sequence ``b`` is valid at time indices
``t < lengths[b]``. The forward loop runs steps ``s = 0 .. T-1``; at step ``s`` sequence ``b``
is *active* iff ``s < lengths[b]`` and then processes time index ``s`` (``reverse=False``) or
``lengths[b] - 1 - s`` (``reverse=True``). Inactive sequences keep their state and write
nothing, so outputs and cached per-step arrays stay 0 past a length.
"""

import numpy as np

# ----------------------------------------------------------------------------

def as_float64(array, name):
    """Return ``array`` as a float64 ndarray (None stays None)."""
    if array is None:
        return None
    return np.asarray(array, dtype=np.float64)


def prepare_lengths(lengths, T, B):
    """Validate ``lengths`` and return it as int64 (B,); None means every length is T."""
    if lengths is None:
        return np.full(B, T, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape ({B},), got {lengths.shape}")
    if not np.issubdtype(lengths.dtype, np.integer):
        raise TypeError(f"lengths: expected an integer array, got {lengths.dtype}")
    lengths = lengths.astype(np.int64)
    if B and (lengths.min() < 0 or lengths.max() > T):
        raise ValueError(f"lengths: every entry must lie in [0, {T}], got {lengths}")
    return lengths


def check_layer_shapes(x, h0, w_ih, w_hh, b_ih, b_hh, gates):
    """Check the shapes of one layer's inputs; return (T, B, I, H)."""
    if x.ndim != 3:
        raise ValueError(f"x: expected (T, B, I), got shape {x.shape}")
    T, B, I = x.shape
    if w_ih.ndim != 2 or w_ih.shape[0] % gates or w_ih.shape[1] != I:
        raise ValueError(f"w_ih: expected ({gates}*H, {I}), got {w_ih.shape}")
    H = w_ih.shape[0] // gates
    expected = {"h0": (h0, (B, H)), "w_hh": (w_hh, (gates * H, H)),
                "b_ih": (b_ih, (gates * H,)), "b_hh": (b_hh, (gates * H,))}
    for name, (array, shape) in expected.items():
        if array is not None and array.shape != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {array.shape}")
    return T, B, I, H


def bias_or_zeros(bias, size):
    """A missing bias behaves exactly like a zero bias."""
    return np.zeros(size) if bias is None else bias


def step_time_index(s, lengths, reverse):
    """Time index processed at step ``s`` by each sequence, and which sequences are active.

    Returns ``(time_index, active)``, both (B,). ``time_index`` is only meaningful where
    ``active``; elsewhere it is set to 0 so it can still be used as an index.
    """
    active = s < lengths
    time_index = (lengths - 1 - s) if reverse else np.full_like(lengths, s)
    return np.where(active, time_index, 0), active


def previous_state(per_time, initial, s, lengths, reverse):
    """State *before* step ``s`` (B, H): ``initial`` at s = 0, else the state after step s-1.

    ``per_time`` is a (T, B, H) array indexed by time index (the forward's outputs, or
    the LSTM cell states). Only rows active at step ``s`` are meaningful: a sequence
    active at step s was also active at step s-1, so its gathered row is a real state.
    """
    if s == 0:
        return initial
    time_index, _ = step_time_index(s - 1, lengths, reverse)
    return per_time[time_index, np.arange(per_time.shape[1])]


def pair(value, name):
    """``value`` as an (h, w) pair of ints: an int or a 1-sequence repeats, a 2-sequence stays."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) == 1:
        return value[0], value[0]
    if len(value) != 2:
        raise ValueError(f"{name}: expected an int or a pair, got {value}")
    return value
