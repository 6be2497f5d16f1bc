# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""2-D pooling on the CPU (torch semantics, NCHW), float32/float64: max (with indices), average,
adaptive average; forward and backward.

Every N*C plane is independent: OpenMP splits the planes statically, and each plane's outputs
(forward) or input gradient (backward) is written by one thread only, so backward scatters need
no atomics and sum in a fixed order. The window arithmetic follows torch's CPU kernels line by
line (see gatedrnn/oracle/pool.py for the definitions).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY
from libc.stdint cimport int64_t
from libc.string cimport memset


cdef inline Py_ssize_t _first_inside(Py_ssize_t start, Py_ssize_t step) noexcept nogil:
    """The first of start, start + step, ... that is >= 0 (the window's first in-bounds row)."""
    while start < 0:
        start = start + step
    return start


cdef int _check_window(int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) except -1:
    """The window loops step by stride and dilation: a zero step would never end."""
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"pooling: kernel ({kh}, {kw}), stride ({sh}, {sw}) and dilation ({dh}, {dw}) must be "
                         f"positive and padding ({ph}, {pw}) non-negative")
    return 0


cdef void _max_plane(const floating* x, Py_ssize_t height, Py_ssize_t width, floating* y, int64_t* indices,
                     Py_ssize_t out_height, Py_ssize_t out_width, int kh, int kw, int sh, int sw, int ph, int pw,
                     int dh, int dw) noexcept nogil:
    cdef Py_ssize_t oh, ow, h_first, h_end, w_first, w_end, ih, iw, best_index
    cdef floating best, value
    for oh in range(out_height):
        h_first = oh * sh - ph
        h_end = h_first + (kh - 1) * dh + 1
        if h_end > height:
            h_end = height
        h_first = _first_inside(h_first, dh)
        for ow in range(out_width):
            w_first = ow * sw - pw
            w_end = w_first + (kw - 1) * dw + 1
            if w_end > width:
                w_end = width
            w_first = _first_inside(w_first, dw)
            best = -INFINITY
            best_index = h_first * width + w_first
            ih = h_first
            while ih < h_end:
                iw = w_first
                while iw < w_end:
                    value = x[ih * width + iw]
                    # strictly greater: the first of equal maxima wins; NaN always takes over
                    if value > best or value != value:
                        best = value
                        best_index = ih * width + iw
                    iw = iw + dw
                ih = ih + dh
            y[oh * out_width + ow] = best
            indices[oh * out_width + ow] = best_index


def max_pool2d_forward(const floating[:, :, :, ::1] x, int kernel_h, int kernel_w, int stride_h, int stride_w,
                       int pad_h, int pad_w, int dilation_h, int dilation_w, floating[:, :, :, ::1] y,
                       int64_t[:, :, :, ::1] indices, int num_threads):
    """y, indices (N, C, H_out, W_out) = max pooling of x (N, C, H, W); indices are h * W + w."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t out_height = y.shape[2], out_width = y.shape[3]
    cdef Py_ssize_t plane
    if y.shape[0] != x.shape[0] or y.shape[1] != x.shape[1] or indices.shape[2] != out_height \
            or indices.shape[3] != out_width or indices.shape[0] != x.shape[0] or indices.shape[1] != x.shape[1]:
        raise ValueError("max_pool2d_forward: y and indices must be (N, C, H_out, W_out) for x (N, C, H, W)")
    _check_window(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w)
    if planes == 0 or out_height == 0 or out_width == 0:
        return
    with nogil:
        for plane in prange(planes, schedule="static", num_threads=num_threads):
            _max_plane(&x[0, 0, 0, 0] + plane * height * width, height, width,
                       &y[0, 0, 0, 0] + plane * out_height * out_width,
                       &indices[0, 0, 0, 0] + plane * out_height * out_width,
                       out_height, out_width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                       dilation_h, dilation_w)


def max_pool2d_backward(const floating[:, :, :, ::1] grad_y, const int64_t[:, :, :, ::1] indices,
                        floating[:, :, :, ::1] grad_x, int num_threads):
    """grad_x (N, C, H, W): each output's gradient added at its winner's index."""
    cdef Py_ssize_t planes = grad_x.shape[0] * grad_x.shape[1]
    cdef Py_ssize_t plane_size = grad_x.shape[2] * grad_x.shape[3]
    cdef Py_ssize_t outputs = grad_y.shape[2] * grad_y.shape[3]
    cdef Py_ssize_t plane, k, index
    cdef floating* grad_plane
    cdef const floating* grad_out
    cdef const int64_t* winners
    if grad_y.shape[0] * grad_y.shape[1] != planes or indices.shape[0] * indices.shape[1] != planes \
            or indices.shape[2] * indices.shape[3] != outputs:
        raise ValueError("max_pool2d_backward: grad_y, indices and grad_x do not match")
    if planes == 0:
        return
    with nogil:
        for plane in prange(planes, schedule="static", num_threads=num_threads):
            grad_plane = &grad_x[0, 0, 0, 0] + plane * plane_size
            grad_out = &grad_y[0, 0, 0, 0] + plane * outputs
            winners = &indices[0, 0, 0, 0] + plane * outputs
            memset(grad_plane, 0, plane_size * sizeof(floating))
            for k in range(outputs):
                index = winners[k]
                # A window that missed the input has an index past the plane (torch's value);
                # its gradient goes nowhere, and nothing is ever written outside the plane.
                if 0 <= index < plane_size:
                    grad_plane[index] += grad_out[k]


cdef void _avg_plane(const floating* x, Py_ssize_t height, Py_ssize_t width, floating* y, floating* grad_x,
                     Py_ssize_t out_height, Py_ssize_t out_width, int kh, int kw, int sh, int sw, int ph, int pw,
                     bint count_include_pad, int divisor_override, bint backward) noexcept nogil:
    """Forward (x -> y) or backward (y holds grad_y, added into grad_x) of one plane."""
    cdef Py_ssize_t oh, ow, h0, h1, w0, w1, ih, iw, pool_size
    cdef floating total, divisor, share
    for oh in range(out_height):
        for ow in range(out_width):
            h0 = oh * sh - ph
            w0 = ow * sw - pw
            h1 = h0 + kh
            if h1 > height + ph:
                h1 = height + ph
            w1 = w0 + kw
            if w1 > width + pw:
                w1 = width + pw
            pool_size = (h1 - h0) * (w1 - w0)
            if h0 < 0:
                h0 = 0
            if w0 < 0:
                w0 = 0
            if h1 > height:
                h1 = height
            if w1 > width:
                w1 = width
            if h0 >= h1 or w0 >= w1:
                if not backward:
                    y[oh * out_width + ow] = 0
                continue
            if divisor_override != 0:
                divisor = divisor_override
            elif count_include_pad:
                divisor = pool_size
            else:
                divisor = (h1 - h0) * (w1 - w0)
            if backward:
                share = y[oh * out_width + ow] / divisor
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        grad_x[ih * width + iw] += share
            else:
                total = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        total = total + x[ih * width + iw]
                y[oh * out_width + ow] = total / divisor


def avg_pool2d_forward(const floating[:, :, :, ::1] x, int kernel_h, int kernel_w, int stride_h, int stride_w,
                       int pad_h, int pad_w, bint count_include_pad, int divisor_override,
                       floating[:, :, :, ::1] y, int num_threads):
    """y (N, C, H_out, W_out) = average pooling of x (N, C, H, W); divisor_override 0 means none."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t out_height = y.shape[2], out_width = y.shape[3]
    cdef Py_ssize_t plane
    if y.shape[0] != x.shape[0] or y.shape[1] != x.shape[1]:
        raise ValueError("avg_pool2d_forward: y must be (N, C, H_out, W_out) for x (N, C, H, W)")
    _check_window(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, 1, 1)
    if planes == 0:
        return
    with nogil:
        for plane in prange(planes, schedule="static", num_threads=num_threads):
            _avg_plane(&x[0, 0, 0, 0] + plane * height * width, height, width,
                       &y[0, 0, 0, 0] + plane * out_height * out_width, NULL, out_height, out_width,
                       kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad,
                       divisor_override, False)


def avg_pool2d_backward(floating[:, :, :, ::1] grad_y, int kernel_h, int kernel_w, int stride_h, int stride_w,
                        int pad_h, int pad_w, bint count_include_pad, int divisor_override,
                        floating[:, :, :, ::1] grad_x, int num_threads):
    """grad_x (N, C, H, W) of average pooling, from grad_y (N, C, H_out, W_out)."""
    cdef Py_ssize_t planes = grad_x.shape[0] * grad_x.shape[1]
    cdef Py_ssize_t height = grad_x.shape[2], width = grad_x.shape[3]
    cdef Py_ssize_t out_height = grad_y.shape[2], out_width = grad_y.shape[3]
    cdef Py_ssize_t plane
    if grad_y.shape[0] != grad_x.shape[0] or grad_y.shape[1] != grad_x.shape[1]:
        raise ValueError("avg_pool2d_backward: grad_y and grad_x do not match")
    _check_window(kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, 1, 1)
    if planes == 0:
        return
    with nogil:
        for plane in prange(planes, schedule="static", num_threads=num_threads):
            memset(&grad_x[0, 0, 0, 0] + plane * height * width, 0, height * width * sizeof(floating))
            _avg_plane(NULL, height, width, &grad_y[0, 0, 0, 0] + plane * out_height * out_width,
                       &grad_x[0, 0, 0, 0] + plane * height * width, out_height, out_width,
                       kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, count_include_pad,
                       divisor_override, True)


cdef inline Py_ssize_t _adaptive_start(Py_ssize_t i, Py_ssize_t size, Py_ssize_t out) noexcept nogil:
    return (i * size) // out


cdef inline Py_ssize_t _adaptive_end(Py_ssize_t i, Py_ssize_t size, Py_ssize_t out) noexcept nogil:
    return ((i + 1) * size + out - 1) // out


cdef void _adaptive_plane(const floating* x, Py_ssize_t height, Py_ssize_t width, floating* y,
                          floating* grad_x, Py_ssize_t out_height, Py_ssize_t out_width,
                          bint backward) noexcept nogil:
    cdef Py_ssize_t oh, ow, h0, h1, w0, w1, ih, iw
    cdef floating total, share
    for oh in range(out_height):
        h0 = _adaptive_start(oh, height, out_height)
        h1 = _adaptive_end(oh, height, out_height)
        for ow in range(out_width):
            w0 = _adaptive_start(ow, width, out_width)
            w1 = _adaptive_end(ow, width, out_width)
            if backward:
                share = y[oh * out_width + ow] / ((h1 - h0) * (w1 - w0))
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        grad_x[ih * width + iw] += share
            else:
                total = 0
                for ih in range(h0, h1):
                    for iw in range(w0, w1):
                        total = total + x[ih * width + iw]
                y[oh * out_width + ow] = total / ((h1 - h0) * (w1 - w0))


def adaptive_avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, int num_threads):
    """y (N, C, OH, OW): output (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH)), columns likewise."""
    cdef Py_ssize_t planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t height = x.shape[2], width = x.shape[3]
    cdef Py_ssize_t out_height = y.shape[2], out_width = y.shape[3]
    cdef Py_ssize_t plane
    if y.shape[0] != x.shape[0] or y.shape[1] != x.shape[1]:
        raise ValueError("adaptive_avg_pool2d_forward: y must be (N, C, OH, OW) for x (N, C, H, W)")
    if planes == 0 or height == 0 or width == 0:
        return
    with nogil:
        for plane in prange(planes, schedule="static", num_threads=num_threads):
            _adaptive_plane(&x[0, 0, 0, 0] + plane * height * width, height, width,
                            &y[0, 0, 0, 0] + plane * out_height * out_width, NULL, out_height, out_width, False)


def adaptive_avg_pool2d_backward(floating[:, :, :, ::1] grad_y, floating[:, :, :, ::1] grad_x, int num_threads):
    """grad_x (N, C, H, W) of adaptive average pooling, from grad_y (N, C, OH, OW)."""
    cdef Py_ssize_t planes = grad_x.shape[0] * grad_x.shape[1]
    cdef Py_ssize_t height = grad_x.shape[2], width = grad_x.shape[3]
    cdef Py_ssize_t out_height = grad_y.shape[2], out_width = grad_y.shape[3]
    cdef Py_ssize_t plane
    if grad_y.shape[0] != grad_x.shape[0] or grad_y.shape[1] != grad_x.shape[1]:
        raise ValueError("adaptive_avg_pool2d_backward: grad_y and grad_x do not match")
    if planes == 0:
        return
    with nogil:
        for plane in prange(planes, schedule="static", num_threads=num_threads):
            memset(&grad_x[0, 0, 0, 0] + plane * height * width, 0, height * width * sizeof(floating))
            _adaptive_plane(NULL, height, width, &grad_y[0, 0, 0, 0] + plane * out_height * out_width,
                            &grad_x[0, 0, 0, 0] + plane * height * width, out_height, out_width, True)
