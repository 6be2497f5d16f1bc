"""NumPy float64 reference for 2-D (and 1-D) convolution, forward and backward.

Written from the definition of ``torch.nn.functional.conv2d`` (a cross-correlation), NCHW::

    x_pad = x zero-padded by (top, bottom) rows and (left, right) columns
    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw]
                           * x_pad[n, g(o) * C_in/groups + c, i*sh + kh*dh, j*sw + kw*dw]

with ``g(o) = o // (C_out/groups)`` the group of output channel ``o`` and ``c`` running over that
group's C_in/groups input channels. The loops run over the kernel offsets (kh, kw); each offset
is one strided slice of ``x_pad`` contracted with one (C_out, C_in/groups) slice of ``w``.
Backward is the same sum read the other way:

    grad_w[o, c, kh, kw] = sum_{n, i, j} grad_y[n, o, i, j] * x_pad[n, g(o)*Cg + c, i*sh+kh*dh, j*sw+kw*dw]
    grad_x_pad[n, g(o)*Cg + c, i*sh+kh*dh, j*sw+kw*dw] += grad_y[n, o, i, j] * w[o, c, kh, kw]
    grad_b[o] = sum_{n, i, j} grad_y[n, o, i, j]

and grad_x is grad_x_pad without its padding.
"""

import numpy as np

from ._common import pair

__all__ = ["conv2d_forward", "conv2d_backward", "conv1d_forward", "conv1d_backward",
           "conv2d_padding", "conv_output_size"]


def conv_output_size(size, kernel, stride, dilation, pad_begin, pad_end):
    """Output length of a convolution/pooling window along one axis (floor division)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def conv2d_padding(padding, kernel_size, dilation):
    """Explicit (top, bottom, left, right) padding from an int, a pair, a 4-tuple, or a string.

    ``"valid"`` is no padding. ``"same"`` (stride 1) pads a total of ``dilation * (k - 1)``
    along each axis, the odd element at the end (bottom/right), as torch does.
    """
    kh, kw = kernel_size
    dh, dw = dilation
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            total_h, total_w = dh * (kh - 1), dw * (kw - 1)
            return total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2
        raise ValueError(f"padding: expected 'same', 'valid', an int or a pair, got {padding!r}")
    if not isinstance(padding, (int, np.integer)) and len(tuple(padding)) == 4:
        return tuple(int(p) for p in padding)
    ph, pw = pair(padding, "padding")
    return ph, ph, pw, pw


def _geometry(x, w, stride, padding, dilation, groups):
    if x.ndim != 4:
        raise ValueError(f"x: expected (N, C_in, H, W), got shape {x.shape}")
    if w.ndim != 4:
        raise ValueError(f"w: expected (C_out, C_in/groups, KH, KW), got shape {w.shape}")
    stride, dilation = pair(stride, "stride"), pair(dilation, "dilation")
    pads = conv2d_padding(padding, w.shape[2:], dilation)
    n, c_in, h, wd = x.shape
    c_out, c_group, kh, kw = w.shape
    if c_in != c_group * groups or c_out % groups:
        raise ValueError(f"channels: C_in={c_in}, C_out={c_out} do not fit groups={groups} and w {w.shape}")
    h_out = conv_output_size(h, kh, stride[0], dilation[0], pads[0], pads[1])
    w_out = conv_output_size(wd, kw, stride[1], dilation[1], pads[2], pads[3])
    if h_out < 1 or w_out < 1:
        raise ValueError(f"kernel {(kh, kw)} (dilation {dilation}) is larger than the padded input")
    return stride, pads, dilation, (h_out, w_out)


def _window(x_pad, kh, kw, stride, dilation, out_size):
    """The slice of ``x_pad`` that kernel offset (kh, kw) meets: (N, C, H_out, W_out)."""
    top, left = kh * dilation[0], kw * dilation[1]
    return x_pad[:, :, top: top + stride[0] * (out_size[0] - 1) + 1: stride[0],
                 left: left + stride[1] * (out_size[1] - 1) + 1: stride[1]]


def conv2d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation with ``torch.nn.functional.conv2d`` semantics.

    Args:
        x: (N, C_in, H, W). w: (C_out, C_in/groups, KH, KW). b: (C_out,) or None.
        stride, dilation: int or pair. padding: int, pair, (top, bottom, left, right),
            "same" or "valid". groups: C_in and C_out are both divisible by it.

    Returns:
        y (N, C_out, H_out, W_out), float64.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    stride, pads, dilation, out_size = _geometry(x, w, stride, padding, dilation, groups)
    n = x.shape[0]
    c_out, c_group, kh_size, kw_size = w.shape
    out_group = c_out // groups
    x_pad = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    y = np.zeros((n, c_out) + out_size)
    for g in range(groups):
        x_g = x_pad[:, g * c_group:(g + 1) * c_group]
        w_g = w[g * out_group:(g + 1) * out_group]
        for kh in range(kh_size):
            for kw in range(kw_size):
                window = _window(x_g, kh, kw, stride, dilation, out_size)
                y[:, g * out_group:(g + 1) * out_group] += np.einsum("nchw,oc->nohw", window, w_g[:, :, kh, kw])
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y


def conv2d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of :func:`conv2d_forward` with respect to x, w and b.

    Args:
        grad_y: (N, C_out, H_out, W_out); the other arguments as for the forward.

    Returns:
        (grad_x (N, C_in, H, W), grad_w (C_out, C_in/groups, KH, KW), grad_b (C_out,)).
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    grad_y = np.asarray(grad_y, np.float64)
    stride, pads, dilation, out_size = _geometry(x, w, stride, padding, dilation, groups)
    if grad_y.shape != (x.shape[0], w.shape[0]) + out_size:
        raise ValueError(f"grad_y: expected shape {(x.shape[0], w.shape[0]) + out_size}, got {grad_y.shape}")
    c_out, c_group, kh_size, kw_size = w.shape
    out_group = c_out // groups
    x_pad = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    grad_x_pad = np.zeros_like(x_pad)
    grad_w = np.zeros_like(w)
    for g in range(groups):
        x_g = x_pad[:, g * c_group:(g + 1) * c_group]
        grad_x_g = grad_x_pad[:, g * c_group:(g + 1) * c_group]
        grad_y_g = grad_y[:, g * out_group:(g + 1) * out_group]
        w_g = w[g * out_group:(g + 1) * out_group]
        for kh in range(kh_size):
            for kw in range(kw_size):
                window = _window(x_g, kh, kw, stride, dilation, out_size)
                grad_w[g * out_group:(g + 1) * out_group, :, kh, kw] = np.einsum("nohw,nchw->oc", grad_y_g, window)
                # The window is a view of grad_x_pad: += scatters into the padded gradient.
                _window(grad_x_g, kh, kw, stride, dilation, out_size)[...] += np.einsum(
                    "nohw,oc->nchw", grad_y_g, w_g[:, :, kh, kw])
    grad_x = grad_x_pad[:, :, pads[0]: pads[0] + x.shape[2], pads[2]: pads[2] + x.shape[3]]
    return np.ascontiguousarray(grad_x), grad_w, grad_y.sum(axis=(0, 2, 3))


def _conv1d_arguments(stride, padding, dilation):
    def single(value, name):
        if isinstance(value, (int, np.integer)):
            return int(value)
        value = tuple(value)
        if len(value) != 1:
            raise ValueError(f"{name}: expected an int or a 1-tuple, got {value}")
        return int(value[0])

    stride, dilation = single(stride, "stride"), single(dilation, "dilation")
    if not isinstance(padding, str):
        if not isinstance(padding, (int, np.integer)) and len(tuple(padding)) == 2:
            left, right = (int(p) for p in padding)
            padding = (0, 0, left, right)
        else:
            padding = (0, single(padding, "padding"))
    return (1, stride), padding, (1, dilation)


def conv1d_forward(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution as a 2-D one with height 1: x (N, C_in, L), w (C_out, C_in/groups, K)."""
    stride, padding, dilation = _conv1d_arguments(stride, padding, dilation)
    y = conv2d_forward(np.asarray(x)[:, :, None, :], np.asarray(w)[:, :, None, :], b, stride, padding, dilation, groups)
    return y[:, :, 0, :]


def conv1d_backward(grad_y, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of :func:`conv1d_forward`: (grad_x (N, C_in, L), grad_w (C_out, C_in/groups, K), grad_b)."""
    stride, padding, dilation = _conv1d_arguments(stride, padding, dilation)
    grad_x, grad_w, grad_b = conv2d_backward(
        np.asarray(grad_y)[:, :, None, :], np.asarray(x)[:, :, None, :], np.asarray(w)[:, :, None, :],
        stride, padding, dilation, groups)
    return grad_x[:, :, 0, :], grad_w[:, :, 0, :], grad_b
