"""NumPy float64 reference ("oracle") for the gatedrnn layers.

Pure NumPy, independent of torch and of every kernel, written from the equations in
docs/backend-contract.md: forward and explicit BPTT backward of one layer, one direction, with
PackedSequence-style ``lengths`` and ``reverse``. Each step is a plain loop over time,
vectorised over the batch, so it can be checked line by line against the equations.
"""

import numpy as np

from .gru import gru_backward, gru_forward, seed_gru_to_ours
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward
from .conv import conv1d_backward, conv1d_forward, conv2d_backward, conv2d_forward
from .embedding import embedding_backward, embedding_forward
from .pool import (adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, avg_pool2d_backward,
                   avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward)

__all__ = ["lstm_forward", "lstm_backward", "gru_forward", "gru_backward", "rnn_forward",
           "rnn_backward", "workspace", "seed_gru_to_ours", "WORKSPACE_ENTRIES"]
__all__ += ["conv2d_forward", "conv2d_backward", "conv1d_forward", "conv1d_backward",
            "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
            "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward",
            "embedding_forward", "embedding_backward"]

# What each backend saves for backward, in order along the last axis (docs/backend-contract.md).
WORKSPACE_ENTRIES = {
    "lstm": ("i", "f", "g", "o", "c"),
    "gru": ("r", "z", "n", "hn"),
    "gru_reset_before": ("r", "z", "n"),
    "rnn": ("h",),
}


def workspace(cell, cache):
    """Build the backends' (T, B, W*H) workspace from an oracle forward cache.

    Args:
        cell: "lstm" (W=5: i, f, g, o, c), "gru" (reset_after, W=4: r, z, n, hn),
            "gru_reset_before" (W=3: r, z, n) or "rnn" (W=1: h).
        cache: the cache dict returned by the matching ``*_forward``.

    Returns:
        float64 array (T, B, W*H), entry k of W in columns [k*H, (k+1)*H); 0 past a length.
    """
    if cell not in WORKSPACE_ENTRIES:
        raise ValueError(f"cell: expected one of {tuple(WORKSPACE_ENTRIES)}, got {cell!r}")
    if cache.get("cell") != cell:
        raise ValueError(f"cell: {cell!r} does not match the cache, which is from {cache.get('cell')!r}")
    return np.concatenate([cache[name] for name in WORKSPACE_ENTRIES[cell]], axis=-1)
