"""NumPy float64 reference for 2-D pooling (max, average, adaptive average), NCHW.

Written from torch's definitions (``torch.nn.functional.max_pool2d`` / ``avg_pool2d`` /
``adaptive_avg_pool2d``), one output window at a time where that is the clearest statement.

Output size along one axis (``ceil_mode`` rounds up, but a last window that would start in the
end padding is dropped)::

    out = floor_or_ceil((size + 2*pad - dilation*(kernel-1) - 1) / stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad: out -= 1

Max pooling: window of output (i, j) covers rows i*s - p + k*d, k < kernel, that lie inside
the input (padding never wins). The maximum is taken in row-major order over the window with
"replace if strictly greater, or if NaN", so among equal values the first one wins and a NaN
propagates: torch's rule. ``indices`` hold the winner's flat position h * W + w in its plane.
A window that misses the input entirely (possible with dilation and ceil_mode) gives -inf and
torch's index, which then lies past the plane; its gradient goes nowhere (torch's own backward
adds it into the next plane, a bug we do not copy).

Average pooling: window rows [i*s - p, min(i*s - p + k, H + p)) clipped to [0, H); the sum
over the clipped window is divided by ``divisor_override`` if given, else by the window size
before clipping to the input (``count_include_pad=True``) or after (``False``).

Adaptive average pooling: output i along an axis of length L averages input
[floor(i*L/O), ceil((i+1)*L/O)).
"""

import numpy as np

from ._common import pair

__all__ = ["pool_output_size", "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward",
           "avg_pool2d_backward", "adaptive_avg_pool2d_forward", "adaptive_avg_pool2d_backward"]


def pool_output_size(size, kernel, stride, pad, dilation=1, ceil_mode=False):
    """Output length of a pooling window along one axis (torch's rule, see module docstring)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_geometry(x, kernel_size, stride, padding, dilation, ceil_mode):
    if x.ndim != 4:
        raise ValueError(f"x: expected (N, C, H, W), got shape {x.shape}")
    kernel = pair(kernel_size, "kernel_size")
    stride = kernel if stride is None or (not isinstance(stride, (int, np.integer)) and len(stride) == 0) \
        else pair(stride, "stride")
    padding, dilation = pair(padding, "padding"), pair(dilation, "dilation")
    out = tuple(pool_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
                for a in range(2))
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"output size {out} is too small for input {x.shape}")
    return kernel, stride, padding, dilation, out


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Max pooling with torch semantics.

    Args:
        x: (N, C, H, W). kernel_size, stride (None = kernel_size), padding, dilation: int or pair.

    Returns:
        (y (N, C, H_out, W_out) float64, indices (N, C, H_out, W_out) int64, flat h*W + w).
    """
    x = np.asarray(x, np.float64)
    kernel, stride, padding, dilation, (h_out, w_out) = _pool_geometry(x, kernel_size, stride, padding,
                                                                       dilation, ceil_mode)
    n, c, h, w = x.shape
    y = np.empty((n, c, h_out, w_out))
    indices = np.empty((n, c, h_out, w_out), dtype=np.int64)
    for i in range(h_out):
        rows = [i * stride[0] - padding[0] + k * dilation[0] for k in range(kernel[0])]
        first_row = min(r for r in rows if r >= 0)  # torch's starting index, even if past the input
        rows = [r for r in rows if 0 <= r < h]
        for j in range(w_out):
            cols = [j * stride[1] - padding[1] + k * dilation[1] for k in range(kernel[1])]
            first_col = min(q for q in cols if q >= 0)
            cols = [q for q in cols if 0 <= q < w]
            best = np.full((n, c), -np.inf)
            # A window can miss the input entirely (dilation stepping over it near a ceil_mode
            # edge): it gives -inf and torch's index first_row * W + first_col, which may lie
            # outside the plane; backward gives such a window's gradient to nothing.
            best_index = np.full((n, c), first_row * w + first_col, dtype=np.int64)
            for r in rows:  # row-major: the first of equal maxima wins
                for q in cols:
                    value = x[:, :, r, q]
                    replace = (value > best) | np.isnan(value)
                    best = np.where(replace, value, best)
                    best_index = np.where(replace, r * w + q, best_index)
            y[:, :, i, j] = best
            indices[:, :, i, j] = best_index
    return y, indices


def max_pool2d_backward(grad_y, indices, input_shape):
    """Gradient of max pooling: each output's gradient goes to its winner (summed on repeats).

    Args:
        grad_y, indices: (N, C, H_out, W_out). input_shape: (N, C, H, W).

    Returns:
        grad_x (N, C, H, W) float64.
    """
    n, c, h, w = input_shape
    grad_x = np.zeros((n * c, h * w))
    planes = np.repeat(np.arange(n * c), grad_y.shape[2] * grad_y.shape[3])
    flat = np.asarray(indices).reshape(-1)
    inside = (flat >= 0) & (flat < h * w)  # an empty window's index points past its plane
    np.add.at(grad_x, (planes[inside], flat[inside]), np.asarray(grad_y, np.float64).reshape(-1)[inside])
    return grad_x.reshape(n, c, h, w)


def _avg_windows(shape, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """Per output (i, j): the clipped window (r0, r1, c0, c1) and its divisor."""
    x_stub = np.empty((1, 1) + tuple(shape[2:]))
    kernel, stride, padding, _, (h_out, w_out) = _pool_geometry(x_stub, kernel_size, stride, padding, 1, ceil_mode)
    h, w = shape[2:]
    windows = {}
    for i in range(h_out):
        r0 = i * stride[0] - padding[0]
        r1 = min(r0 + kernel[0], h + padding[0])
        for j in range(w_out):
            c0 = j * stride[1] - padding[1]
            c1 = min(c0 + kernel[1], w + padding[1])
            padded_size = (r1 - r0) * (c1 - c0)
            rc0, rc1, cc0, cc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
            if divisor_override:
                divisor = divisor_override
            elif count_include_pad:
                divisor = padded_size
            else:
                divisor = (rc1 - rc0) * (cc1 - cc0)
            windows[i, j] = (rc0, rc1, cc0, cc1, divisor)
    return (h_out, w_out), windows


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                       divisor_override=None):
    """Average pooling with torch semantics: x (N, C, H, W) -> y (N, C, H_out, W_out)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 4:
        raise ValueError(f"x: expected (N, C, H, W), got shape {x.shape}")
    out_size, windows = _avg_windows(x.shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                     divisor_override)
    y = np.zeros(x.shape[:2] + out_size)
    for (i, j), (r0, r1, c0, c1, divisor) in windows.items():
        if r0 < r1 and c0 < c1:  # a window entirely in the padding averages nothing: 0
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].sum(axis=(2, 3)) / divisor
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, divisor_override=None):
    """Gradient of :func:`avg_pool2d_forward`: grad_y (N, C, H_out, W_out) -> grad_x (N, C, H, W)."""
    grad_y = np.asarray(grad_y, np.float64)
    _, windows = _avg_windows(input_shape, kernel_size, stride, padding, ceil_mode, count_include_pad,
                              divisor_override)
    grad_x = np.zeros(tuple(input_shape))
    for (i, j), (r0, r1, c0, c1, divisor) in windows.items():
        grad_x[:, :, r0:r1, c0:c1] += (grad_y[:, :, i, j] / divisor)[:, :, None, None]
    return grad_x


def _adaptive_ranges(size, out):
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def adaptive_avg_pool2d_forward(x, output_size):
    """Adaptive average pooling: x (N, C, H, W) -> (N, C, OH, OW); output_size int or pair
    (None in a pair keeps that input size)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 4:
        raise ValueError(f"x: expected (N, C, H, W), got shape {x.shape}")
    out = (output_size, output_size) if isinstance(output_size, (int, np.integer)) else tuple(output_size)
    out = tuple(x.shape[2 + a] if out[a] is None else int(out[a]) for a in range(2))
    y = np.empty(x.shape[:2] + out)
    for i, (r0, r1) in enumerate(_adaptive_ranges(x.shape[2], out[0])):
        for j, (c0, c1) in enumerate(_adaptive_ranges(x.shape[3], out[1])):
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    """Gradient of :func:`adaptive_avg_pool2d_forward`: grad_y (N, C, OH, OW) -> grad_x (N, C, H, W)."""
    grad_y = np.asarray(grad_y, np.float64)
    grad_x = np.zeros(tuple(input_shape))
    h, w = input_shape[2:]
    for i, (r0, r1) in enumerate(_adaptive_ranges(h, grad_y.shape[2])):
        for j, (c0, c1) in enumerate(_adaptive_ranges(w, grad_y.shape[3])):
            grad_x[:, :, r0:r1, c0:c1] += (grad_y[:, :, i, j] / ((r1 - r0) * (c1 - c0)))[:, :, None, None]
    return grad_x
