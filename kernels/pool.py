"""Triton kernels for 2-D pooling (max, average, adaptive average), NCHW or channels_last.

Semantics are torch's, stated in ``gatedrnn/oracle/pool.py``: output sizes (with ``ceil_mode``)
come from the ops layer; max pooling takes the first maximum in row-major window order, a NaN
replaces any value (so NaN propagates), indices are flat ``h * W + w`` within the plane and a
window that misses the input gives -inf with torch's index; average pooling divides by
``divisor_override``, the padded window size (``count_include_pad``) or the clipped one;
adaptive windows are ``[floor(i*L/O), ceil((i+1)*L/O))``.

Layouts: every tensor of one launch is either contiguous NCHW or contiguous channels_last
(NHWC in memory), chosen by the constexpr CHANNELS_LAST. Lanes enumerate elements in memory
order, so channels_last lanes run along the channels: neighbouring lanes read neighbouring
addresses at every window tap (coalesced), and a channels_last network's pools need no copy
in or out.

Work split: forward kernels run one lane per output element (flattened over the N*C*OH*OW
elements in memory order, int64 offsets so any tensor size works; one int64 division per lane,
int32 coordinates within a plane or image); backward kernels run one lane per *input* element
and gather the gradient of every window that contains it, in ascending (oh, ow) order, so the
sum is deterministic without atomics (the order the CPU backends scatter in). Max-pool backward
keeps a window's gradient only where the saved index equals the element. A window that misses
the input has no element, so its gradient goes nowhere. Adaptive windows come from small int32
tables built on the host (``_adaptive_table``): no division in those kernels.

Window sizes, strides, padding and dilation are runtime ints (not specialised: one compile per
kernel, dtype and layout serves every geometry); they are small, so the window loops are short. All
accumulation is float32; float32/bfloat16/float16 tensors. Launchers validate nothing (the ops
layer did) and allocate outputs through ``_launch.empty`` (NaN-poisoned under
``GATEDRNN_POISON_OUTPUTS=1``).
"""
from __future__ import annotations

import functools
import itertools

import numpy as np
import torch
import triton
import triton.language as tl

from ._launch import empty, is_channels_last

# Elements (outputs forward, inputs backward) per program, and warps: 512 over 4 warps is 4 lanes
# per thread, 4 independent loads in flight per window step and thread. 1024 (8 lanes) needed
# 168-222 registers and spilled in max-pool forward (compile gate, sm_90); 512 stays <= 91.
BLOCK = 512
NUM_WARPS = 4
NUM_STAGES = 1  # no software-pipelined tl.range loops here; stages are irrelevant

# Integer runtime arguments are not specialised (Triton would otherwise compile a variant per
# "== 1" / "divisible by 16" pattern of kernel, stride, padding and sizes): the compile gate
# then sees exactly the compiles the launchers make.
_MAX_INTS = ["total", "C", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PH", "PW", "DH", "DW"]
_AVG_INTS = ["total", "C", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PH", "PW", "DIVISOR",
             "COUNT_PAD"]


@triton.jit
def _coordinates(offs, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Flat int64 offsets into an (N, C, H, W) tensor in memory order -> (outer int64, channel
    int32, row int32, column int32). outer and channel locate the (n, c) plane for
    ``_plane_start``: (n, c) channels_last, (n * C + c, 0) NCHW.

    One int64 division per lane (a subroutine call on the GPU: with three, Triton 3.6 needed
    stack for max-pool backward); the rest is int32 arithmetic within a plane (NCHW) or an
    image (channels_last), which the launchers keep under 2**31 elements. int32 coordinates
    also cost one register per lane instead of two in the window loops."""
    if CHANNELS_LAST:
        image_size = H * W * C
        outer = offs // image_size
        within = (offs - outer * image_size).to(tl.int32)
        pixel = within // C
        channel = within - pixel * C
    else:
        outer = offs // (H * W)
        pixel = (offs - outer * (H * W)).to(tl.int32)
        channel = 0
    row = pixel // W
    return outer, channel, row, pixel - row * W


@triton.jit
def _plane_start(outer, channel, C, H, W, CHANNELS_LAST: tl.constexpr):
    """Offset (int64) of element (n, c, 0, 0) of an (N, C, H, W) tensor, from
    ``_coordinates``' outer and channel (which may come from a tensor of another H and W)."""
    if CHANNELS_LAST:
        return outer * (H * W * C) + channel
    else:
        return outer * (H * W)


@triton.jit
def _pixel(row, column, C, W, CHANNELS_LAST: tl.constexpr):
    """Offset of pixel (row, column) from the plane's start (int32: within one image):
    neighbouring pixels are C apart channels_last, 1 apart NCHW."""
    if CHANNELS_LAST:
        return (row * W + column) * C
    else:
        return row * W + column


@triton.jit(do_not_specialize=_MAX_INTS)
def max_pool_forward_kernel(x_ptr, y_ptr, indices_ptr, total, C, H, W, OH, OW, KH, KW, SH, SW, PH,
                            PW, DH, DW, BLOCK: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """y, indices (N, C, OH, OW) from x (N, C, H, W); one lane per output element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    outer, channel, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    # torch's index for a window with no input element: its first non-negative row and column.
    first_h = h0 + ((tl.maximum(-h0, 0) + DH - 1) // DH) * DH
    first_w = w0 + ((tl.maximum(-w0, 0) + DW - 1) // DW) * DW
    best_index = first_h * W + first_w
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    x_plane = x_ptr + _plane_start(outer, channel, C, H, W, CHANNELS_LAST)
    for kh in range(0, KH):
        r = h0 + kh * DH
        row_ok = valid & (r >= 0) & (r < H)
        for kw in range(0, KW):
            c = w0 + kw * DW
            inside = row_ok & (c >= 0) & (c < W)
            value = tl.load(x_plane + _pixel(r, c, C, W, CHANNELS_LAST), mask=inside,
                            other=float("-inf")).to(tl.float32)
            # strictly greater keeps the first of equal maxima; value != value is NaN
            replace = inside & ((value > best) | (value != value))
            best = tl.where(replace, value, best)
            best_index = tl.where(replace, r * W + c, best_index)
    tl.store(y_ptr + offs, best.to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(indices_ptr + offs, best_index.to(tl.int64), mask=valid)


@triton.jit(do_not_specialize=_MAX_INTS)
def max_pool_backward_kernel(grad_y_ptr, indices_ptr, grad_x_ptr, total, C, H, W, OH, OW, KH, KW,
                             SH, SW, PH, PW, DH, DW, BLOCK: tl.constexpr,
                             CHANNELS_LAST: tl.constexpr):
    """grad_x (N, C, H, W): each element sums grad_y of the windows containing it whose saved
    index is this element, in ascending (oh, ow) order; one lane per input element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    outer, channel, r, c = _coordinates(offs, C, H, W, CHANNELS_LAST)
    here = r * W + c
    out_plane = _plane_start(outer, channel, C, OH, OW, CHANNELS_LAST)
    acc = tl.zeros([BLOCK], tl.float32)
    # Window oh contains row r through tap kh when oh*SH - PH + kh*DH == r. Taps run from the
    # last to the first, so oh (and ow) ascend: the CPU backends' summation order.
    for kh_back in range(0, KH):
        num_h = r + PH - (KH - 1 - kh_back) * DH
        safe_h = tl.maximum(num_h, 0)  # divide non-negatives only (C vs floor division)
        oh = safe_h // SH
        row_ok = valid & (num_h >= 0) & (safe_h - oh * SH == 0) & (oh < OH)
        for kw_back in range(0, KW):
            num_w = c + PW - (KW - 1 - kw_back) * DW
            safe_w = tl.maximum(num_w, 0)
            ow = safe_w // SW
            hit = row_ok & (num_w >= 0) & (safe_w - ow * SW == 0) & (ow < OW)
            at = out_plane + _pixel(oh, ow, C, OW, CHANNELS_LAST)
            winner = tl.load(indices_ptr + at, mask=hit, other=-1)
            take = hit & (winner == here)
            acc += tl.load(grad_y_ptr + at, mask=take, other=0.0).to(tl.float32)
    tl.store(grad_x_ptr + offs, acc.to(grad_x_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DIVISOR, COUNT_PAD):
    """float32 divisor of window (oh, ow) (torch's three rules; see module docstring)."""
    r0 = oh * SH - PH
    c0 = ow * SW - PW
    r1 = tl.minimum(r0 + KH, H + PH)
    c1 = tl.minimum(c0 + KW, W + PW)
    padded = (r1 - r0) * (c1 - c0)
    clipped = (tl.minimum(r1, H) - tl.maximum(r0, 0)) * (tl.minimum(c1, W) - tl.maximum(c0, 0))
    size = tl.where(COUNT_PAD != 0, padded, clipped)
    size = tl.where(DIVISOR != 0, DIVISOR, size)
    # A window with no input element (only clipped count 0) averages nothing: divisor 1, sum 0.
    return tl.where(size == 0, 1, size).to(tl.float32)


@triton.jit(do_not_specialize=_AVG_INTS)
def avg_pool_forward_kernel(x_ptr, y_ptr, total, C, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DIVISOR,
                            COUNT_PAD, BLOCK: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """y (N, C, OH, OW) from x (N, C, H, W); one lane per output element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    outer, channel, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    x_plane = x_ptr + _plane_start(outer, channel, C, H, W, CHANNELS_LAST)
    acc = tl.zeros([BLOCK], tl.float32)
    for kh in range(0, KH):
        r = h0 + kh
        row_ok = valid & (r >= 0) & (r < H)
        for kw in range(0, KW):
            c = w0 + kw
            inside = row_ok & (c >= 0) & (c < W)
            acc += tl.load(x_plane + _pixel(r, c, C, W, CHANNELS_LAST), mask=inside,
                           other=0.0).to(tl.float32)
    y = acc / _avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DIVISOR, COUNT_PAD)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=_AVG_INTS)
def avg_pool_backward_kernel(grad_y_ptr, grad_x_ptr, total, C, H, W, OH, OW, KH, KW, SH, SW, PH,
                             PW, DIVISOR, COUNT_PAD, BLOCK: tl.constexpr,
                             CHANNELS_LAST: tl.constexpr):
    """grad_x (N, C, H, W): each element sums grad_y / divisor over the windows containing it, in
    ascending (oh, ow) order; one lane per input element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    outer, channel, r, c = _coordinates(offs, C, H, W, CHANNELS_LAST)
    out_plane = _plane_start(outer, channel, C, OH, OW, CHANNELS_LAST)
    acc = tl.zeros([BLOCK], tl.float32)
    for kh_back in range(0, KH):
        num_h = r + PH - (KH - 1 - kh_back)
        safe_h = tl.maximum(num_h, 0)
        oh = safe_h // SH
        row_ok = valid & (num_h >= 0) & (safe_h - oh * SH == 0) & (oh < OH)
        for kw_back in range(0, KW):
            num_w = c + PW - (KW - 1 - kw_back)
            safe_w = tl.maximum(num_w, 0)
            ow = safe_w // SW
            hit = row_ok & (num_w >= 0) & (safe_w - ow * SW == 0) & (ow < OW)
            g = tl.load(grad_y_ptr + out_plane + _pixel(oh, ow, C, OW, CHANNELS_LAST), mask=hit,
                        other=0.0).to(tl.float32)
            acc += g / _avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DIVISOR, COUNT_PAD)
    tl.store(grad_x_ptr + offs, acc.to(grad_x_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _window(table_ptr, i, mask):
    """Row i of an adaptive table (see ``_adaptive_table``): the pair [first, last)."""
    return (tl.load(table_ptr + 2 * i, mask=mask, other=0),
            tl.load(table_ptr + 2 * i + 1, mask=mask, other=0))


@triton.jit(do_not_specialize=["total", "C", "H", "W", "OH", "OW", "MAX_KH", "MAX_KW"])
def adaptive_avg_forward_kernel(x_ptr, y_ptr, rows_ptr, columns_ptr, total, C, H, W, OH, OW,
                                MAX_KH, MAX_KW, BLOCK: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """y (N, C, OH, OW) from x (N, C, H, W); rows/columns: the adaptive tables of the two axes;
    MAX_KH/MAX_KW bound the window extents."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    outer, channel, oh, ow = _coordinates(offs, C, OH, OW, CHANNELS_LAST)
    r0, r1 = _window(rows_ptr, oh, valid)
    c0, c1 = _window(columns_ptr, ow, valid)
    x_plane = x_ptr + _plane_start(outer, channel, C, H, W, CHANNELS_LAST)
    acc = tl.zeros([BLOCK], tl.float32)
    for kh in range(0, MAX_KH):
        r = r0 + kh
        row_ok = valid & (r < r1)
        for kw in range(0, MAX_KW):
            c = c0 + kw
            acc += tl.load(x_plane + _pixel(r, c, C, W, CHANNELS_LAST), mask=row_ok & (c < c1),
                           other=0.0).to(tl.float32)
    y = acc / tl.maximum((r1 - r0) * (c1 - c0), 1).to(tl.float32)  # lanes past the end: 0 / 1
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["total", "C", "H", "W", "OH", "OW", "MAX_WH", "MAX_WW"])
def adaptive_avg_backward_kernel(grad_y_ptr, grad_x_ptr, rows_ptr, columns_ptr, total, C, H, W,
                                 OH, OW, MAX_WH, MAX_WW, BLOCK: tl.constexpr,
                                 CHANNELS_LAST: tl.constexpr):
    """grad_x (N, C, H, W): each element sums grad_y / window size over the windows containing
    it, ascending; rows/columns: the adaptive tables of the two axes; MAX_WH/MAX_WW bound how
    many windows along an axis contain one element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    outer, channel, r, c = _coordinates(offs, C, H, W, CHANNELS_LAST)
    first_i, last_i = _window(rows_ptr, OH + r, valid)  # the windows containing row r
    first_j, last_j = _window(columns_ptr, OW + c, valid)
    out_plane = _plane_start(outer, channel, C, OH, OW, CHANNELS_LAST)
    acc = tl.zeros([BLOCK], tl.float32)
    for di in range(0, MAX_WH):
        i = first_i + di
        row_ok = valid & (i < last_i)
        r0, r1 = _window(rows_ptr, i, row_ok)
        for dj in range(0, MAX_WW):
            j = first_j + dj
            hit = row_ok & (j < last_j)
            c0, c1 = _window(columns_ptr, j, hit)
            g = tl.load(grad_y_ptr + out_plane + _pixel(i, j, C, OW, CHANNELS_LAST), mask=hit,
                        other=0.0).to(tl.float32)
            acc += g / tl.maximum((r1 - r0) * (c1 - c0), 1).to(tl.float32)  # misses: 0 / 1
    tl.store(grad_x_ptr + offs, acc.to(grad_x_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------------------------
# Launchers (backend contract of gatedrnn/ops/pool.py; tensors contiguous NCHW or contiguous
# channels_last, geometry validated)
# ----------------------------------------------------------------------------------------------
def launch_config(kernel: str, dtype: torch.dtype, channels_last: bool) -> dict:
    """The launch configuration of ``kernel`` (any dtype) on NCHW or channels_last tensors:
    constexprs, warps, stages."""
    return {"constexprs": {"BLOCK": BLOCK, "CHANNELS_LAST": channels_last}, "num_warps": NUM_WARPS,
            "num_stages": NUM_STAGES}


def _launch(kernel, dtype, channels_last, total, *args):
    config = launch_config(kernel.__name__, dtype, channels_last)
    grid = (triton.cdiv(total, config["constexprs"]["BLOCK"]),)
    kernel[grid](*args, **config["constexprs"], num_warps=config["num_warps"],
                 num_stages=config["num_stages"])


def _format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


# The kernels index within one image (channels_last) or one plane (NCHW) in int32.
INT32_LIMIT = 2**31


def _kernel_layout(t: torch.Tensor, other_size) -> tuple:
    """(t as the kernels read it, channels_last): a channels_last t as it is where its images and
    those of the launch's other tensor (spatial size ``other_size``) have < 2**31 elements (the
    kernels' int32 range); otherwise t contiguous (NCHW)."""
    c, h, w = t.shape[1:]
    if is_channels_last(t) and c * max(h * w, other_size[0] * other_size[1]) < INT32_LIMIT:
        return t, True
    return t.contiguous(), False


def _output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling output length (same rule as gatedrnn/ops/pool.py::pool_output_size)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@functools.lru_cache(maxsize=64)
def _adaptive_table(L: int, O: int, device: torch.device) -> tuple:
    """The adaptive windows of one axis (L inputs, O outputs) as the kernels read them, with
    their bounds: (table, longest window, most windows containing one input).

    table: int32 (O + L, 2) on ``device``. Row i < O is output i's window [floor(i*L/O),
    ceil((i+1)*L/O)); row O + r the outputs [floor(r*O/L), ceil((r+1)*O/L)) whose windows
    contain input r (the same formula with the axes swapped). Integer arithmetic on the host,
    exact at any size: the kernels divide nothing (int64 divisions are subroutine calls on the
    GPU, and they put the backward kernel on the stack under Triton 3.6). Cached: a network
    pools the same sizes every step."""
    outputs, inputs = np.arange(O, dtype=np.int64), np.arange(L, dtype=np.int64)
    windows = np.stack([outputs * L // O, -(-(outputs + 1) * L // O)], axis=1)
    cover = np.stack([inputs * O // L, -(-(inputs + 1) * O // L)], axis=1)
    table = torch.from_numpy(np.concatenate([windows, cover]).astype(np.int32)).to(device)
    return (table, int((windows[:, 1] - windows[:, 0]).max()),
            int((cover[:, 1] - cover[:, 0]).max()))


class TritonPool:
    """The triton backend of gatedrnn/ops/pool.py: same methods as the Cython backend's class.

    x / grad tensors are (N, C, H, W) float32/bfloat16/float16, contiguous or channels_last
    (``is_channels_last``); outputs come in the layout the kernels ran in (``_kernel_layout``:
    the input's, or NCHW for channels_last images of 2**31 elements or more). Geometry pairs are
    (h, w) lists as the ops layer passes them."""

    @staticmethod
    def max_forward(x, kernel, stride, padding, dilation, ceil_mode):
        """-> (y (N, C, OH, OW), indices int64 (N, C, OH, OW), flat h*W + w in the plane)."""
        n, c, h, w = x.shape
        oh, ow = (_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a],
                               ceil_mode) for a in range(2))
        x, layout = _kernel_layout(x, (oh, ow))
        y = empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=_format(layout))
        indices = empty(n, c, oh, ow, dtype=torch.int64, device=x.device,
                        memory_format=_format(layout))
        total = y.numel()
        _launch(max_pool_forward_kernel, x.dtype, layout, total, x, y, indices, total, c, h, w,
                oh, ow, *kernel, *stride, *padding, *dilation)
        return y, indices

    @staticmethod
    def max_backward(grad_y, indices, input_size, kernel, stride, padding, dilation):
        """grad_y, indices (N, C, OH, OW) -> grad_x (input_size)."""
        grad_y, layout = _kernel_layout(grad_y, input_size[2:])
        indices = indices.contiguous(memory_format=_format(layout))  # read at grad_y's offsets
        grad_x = empty(*input_size, dtype=grad_y.dtype, device=grad_y.device,
                       memory_format=_format(layout))
        total = grad_x.numel()
        _launch(max_pool_backward_kernel, grad_y.dtype, layout, total, grad_y, indices, grad_x,
                total, *input_size[1:], grad_y.shape[2], grad_y.shape[3], *kernel, *stride,
                *padding, *dilation)
        return grad_x

    @staticmethod
    def avg_forward(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        """-> y (N, C, OH, OW)."""
        n, c, h, w = x.shape
        oh, ow = (_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], 1, ceil_mode)
                  for a in range(2))
        x, layout = _kernel_layout(x, (oh, ow))
        y = empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=_format(layout))
        total = y.numel()
        _launch(avg_pool_forward_kernel, x.dtype, layout, total, x, y, total, c, h, w, oh, ow,
                *kernel, *stride, *padding, int(divisor_override or 0), int(count_include_pad))
        return y

    @staticmethod
    def avg_backward(grad_y, input_size, kernel, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
        """grad_y (N, C, OH, OW) -> grad_x (input_size)."""
        grad_y, layout = _kernel_layout(grad_y, input_size[2:])
        grad_x = empty(*input_size, dtype=grad_y.dtype, device=grad_y.device,
                       memory_format=_format(layout))
        total = grad_x.numel()
        _launch(avg_pool_backward_kernel, grad_y.dtype, layout, total, grad_y, grad_x, total,
                *input_size[1:], grad_y.shape[2], grad_y.shape[3], *kernel, *stride, *padding,
                int(divisor_override or 0), int(count_include_pad))
        return grad_x

    @staticmethod
    def adaptive_forward(x, output_size):
        """-> y (N, C, *output_size)."""
        n, c, h, w = x.shape
        oh, ow = output_size
        x, layout = _kernel_layout(x, (oh, ow))
        y = empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=_format(layout))
        total = y.numel()
        rows, longest_h, _ = _adaptive_table(h, oh, x.device)
        columns, longest_w, _ = _adaptive_table(w, ow, x.device)
        _launch(adaptive_avg_forward_kernel, x.dtype, layout, total, x, y, rows, columns, total, c,
                h, w, oh, ow, longest_h, longest_w)
        return y

    @staticmethod
    def adaptive_backward(grad_y, input_size):
        """grad_y (N, C, OH, OW) -> grad_x (input_size)."""
        grad_y, layout = _kernel_layout(grad_y, input_size[2:])
        grad_x = empty(*input_size, dtype=grad_y.dtype, device=grad_y.device,
                       memory_format=_format(layout))
        c, h, w = input_size[1:]
        oh, ow = grad_y.shape[2:]
        total = grad_x.numel()
        rows, _, cover_h = _adaptive_table(h, oh, grad_y.device)
        columns, _, cover_w = _adaptive_table(w, ow, grad_y.device)
        _launch(adaptive_avg_backward_kernel, grad_y.dtype, layout, total, grad_y, grad_x, rows,
                columns, total, c, h, w, oh, ow, cover_h, cover_w)
        return grad_x


# ----------------------------------------------------------------------------------------------
# Compile-gate listing
# ----------------------------------------------------------------------------------------------
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def gate_signature(fn, pointer_types: dict, constexprs: dict) -> dict:
    """{argument: Triton type} for every argument of ``fn`` in order: pointers from
    ``pointer_types``, constexprs as "constexpr", every other argument "i32" (the launchers pass
    ints that fit 32 bits and keep them unspecialised)."""
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
        else:
            signature[name] = "i32"
    return signature


INDEX_TYPES = {"indices_ptr": "*i64", "rows_ptr": "*i32", "columns_ptr": "*i32"}
KERNELS = (max_pool_forward_kernel, max_pool_backward_kernel, avg_pool_forward_kernel,
           avg_pool_backward_kernel, adaptive_avg_forward_kernel, adaptive_avg_backward_kernel)


def gate_configs(capability: int) -> list:
    """Every compile the launchers of this module can request on a GPU of this capability (80 or
    90), over all dtypes and shapes: one configuration per kernel, dtype and layout (geometry is
    runtime)."""
    configs = []
    for dtype, tt in TRITON_TYPES.items():
        for fn, channels_last in itertools.product(KERNELS, (False, True)):
            name = fn.__name__
            config = launch_config(name, dtype, channels_last)
            pointers = {arg: INDEX_TYPES.get(arg, "*" + tt) for arg in fn.arg_names
                        if arg.endswith("_ptr")}
            configs.append({
                "kernel": name,
                "signature": gate_signature(fn, pointers, config["constexprs"]),
                "constexprs": dict(config["constexprs"]),
                "num_warps": config["num_warps"],
                "num_stages": config["num_stages"],
                "label": (f"{name.replace('_kernel', '')} {tt} BLOCK{config['constexprs']['BLOCK']}"
                          + (" NHWC" if channels_last else "")),
            })
    return configs
