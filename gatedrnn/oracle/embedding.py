"""NumPy float64 reference for embedding lookup (``torch.nn.functional.embedding``).

Forward gathers rows: ``y[..., :] = weight[indices[...], :]``. Backward accumulates: every
occurrence of index ``k`` adds its output gradient to row ``k``, in order of appearance; the
row ``padding_idx`` (if given) gets no gradient. With ``scale_grad_by_freq`` each occurrence's
gradient is first divided by how often its index occurs in the batch.
"""

import numpy as np

__all__ = ["embedding_forward", "embedding_backward"]


def _check_indices(indices, num_embeddings):
    indices = np.asarray(indices)
    if not np.issubdtype(indices.dtype, np.integer):
        raise TypeError(f"indices: expected an integer array, got {indices.dtype}")
    if indices.size and (indices.min() < 0 or indices.max() >= num_embeddings):
        raise IndexError(f"indices: every entry must lie in [0, {num_embeddings}), "
                         f"got values in [{indices.min()}, {indices.max()}]")
    return indices.astype(np.int64)


def embedding_forward(indices, weight):
    """indices: integer array of any shape S; weight (V, D). Returns (*S, D) float64."""
    weight = np.asarray(weight, np.float64)
    indices = _check_indices(indices, weight.shape[0])
    return weight[indices]


def embedding_backward(grad_y, indices, num_embeddings, padding_idx=None, scale_grad_by_freq=False):
    """Gradient of :func:`embedding_forward` with respect to the weight.

    Args:
        grad_y: (*S, D). indices: (*S). num_embeddings: V. padding_idx: row that gets no
            gradient (negative counts from the end), or None. scale_grad_by_freq: scale each
            occurrence's gradient by 1 / (the number of occurrences of its index in ``indices``).

    Returns:
        grad_weight (V, D) float64.
    """
    grad_y = np.asarray(grad_y, np.float64)
    indices = _check_indices(indices, num_embeddings).reshape(-1)
    grad_y = grad_y.reshape(indices.size, -1)
    if scale_grad_by_freq:
        frequency = np.bincount(indices, minlength=num_embeddings)
        grad_y = grad_y / frequency[indices][:, None]
    grad_weight = np.zeros((num_embeddings, grad_y.shape[1]))
    np.add.at(grad_weight, indices, grad_y)  # unbuffered: repeated indices accumulate
    if padding_idx is not None:
        grad_weight[padding_idx % num_embeddings] = 0.0
    return grad_weight
