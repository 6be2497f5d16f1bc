"""Triton kernels for 2-D pooling (max, average, adaptive average), NCHW contiguous.

Semantics are torch's, stated in ``gatedrnn/oracle/pool.py``: output sizes (with ``ceil_mode``)
come from the ops layer; max pooling takes the first maximum in row-major window order, a NaN
replaces any value (so NaN propagates), indices are flat ``h * W + w`` within the plane and a
window that misses the input gives -inf with torch's index; average pooling divides by
``divisor_override``, the padded window size (``count_include_pad``) or the clipped one;
adaptive windows are ``[floor(i*L/O), ceil((i+1)*L/O))``.

Work split: forward kernels run one lane per output element (flattened over N*C*OH*OW, int64
offsets so any tensor size works); backward kernels run one lane per *input* element and gather
the gradient of every window that contains it, in ascending (oh, ow) order, so the sum is
deterministic without atomics (the order the CPU backends scatter in). Max-pool backward keeps
a window's gradient only where the saved index equals the element. A window that misses the
input has no element, so its gradient goes nowhere.

Window sizes, strides, padding and dilation are runtime ints (not specialised: one compile per
kernel and dtype serves every geometry); they are small, so the window loops are short. All
accumulation is float32; float32/bfloat16/float16 tensors. Launchers validate nothing (the ops
layer did) and allocate outputs through ``_launch.empty`` (NaN-poisoned under
``GATEDRNN_POISON_OUTPUTS=1``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import empty

# Elements (outputs forward, inputs backward) per program, and warps: 512 over 4 warps is 4 lanes
# per thread, 4 independent loads in flight per window step and thread. 1024 (8 lanes) needed
# 168-222 registers and spilled in max-pool forward (compile gate, sm_90); 512 stays <= 91.
BLOCK = 512
NUM_WARPS = 4
NUM_STAGES = 1  # no software-pipelined tl.range loops here; stages are irrelevant

# Integer runtime arguments are not specialised (Triton would otherwise compile a variant per
# "== 1" / "divisible by 16" pattern of kernel, stride, padding and sizes): the compile gate
# then sees exactly the compiles the launchers make.
_MAX_INTS = ["total", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PH", "PW", "DH", "DW"]
_AVG_INTS = ["total", "H", "W", "OH", "OW", "KH", "KW", "SH", "SW", "PH", "PW", "DIVISOR",
             "COUNT_PAD"]


@triton.jit
def _decompose(offs, W, H):
    """Flat int64 NCHW offsets -> (plane int64, row int32, column int32) of a (.., H, W) tensor.
    Coordinates within a plane are int32 (a plane has < 2**31 elements): the window arithmetic
    then costs one register per lane instead of two."""
    rest = offs // W
    plane = rest // H
    return plane, (rest - plane * H).to(tl.int32), (offs - rest * W).to(tl.int32)


@triton.jit(do_not_specialize=_MAX_INTS)
def max_pool_forward_kernel(x_ptr, y_ptr, indices_ptr, total, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                            DH, DW, BLOCK: tl.constexpr):
    """y, indices (P, OH, OW) from x (P, H, W); one lane per output element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    plane, oh, ow = _decompose(offs, OW, OH)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    # torch's index for a window with no input element: its first non-negative row and column.
    first_h = h0 + ((tl.maximum(-h0, 0) + DH - 1) // DH) * DH
    first_w = w0 + ((tl.maximum(-w0, 0) + DW - 1) // DW) * DW
    best_index = first_h * W + first_w
    best = tl.full([BLOCK], float("-inf"), tl.float32)
    x_plane = x_ptr + plane * H * W
    for kh in range(0, KH):
        r = h0 + kh * DH
        row_ok = valid & (r >= 0) & (r < H)
        for kw in range(0, KW):
            c = w0 + kw * DW
            inside = row_ok & (c >= 0) & (c < W)
            value = tl.load(x_plane + r * W + c, mask=inside, other=float("-inf")).to(tl.float32)
            # strictly greater keeps the first of equal maxima; value != value is NaN
            replace = inside & ((value > best) | (value != value))
            best = tl.where(replace, value, best)
            best_index = tl.where(replace, r * W + c, best_index)
    tl.store(y_ptr + offs, best.to(y_ptr.dtype.element_ty), mask=valid)
    tl.store(indices_ptr + offs, best_index.to(tl.int64), mask=valid)


@triton.jit(do_not_specialize=_MAX_INTS)
def max_pool_backward_kernel(grad_y_ptr, indices_ptr, grad_x_ptr, total, H, W, OH, OW, KH, KW, SH,
                             SW, PH, PW, DH, DW, BLOCK: tl.constexpr):
    """grad_x (P, H, W): each element sums grad_y of the windows containing it whose saved index
    is this element, in ascending (oh, ow) order; one lane per input element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    plane, r, c = _decompose(offs, W, H)
    here = r * W + c
    out_plane = plane * OH * OW
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
            at = out_plane + oh * OW + ow
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
def avg_pool_forward_kernel(x_ptr, y_ptr, total, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DIVISOR,
                            COUNT_PAD, BLOCK: tl.constexpr):
    """y (P, OH, OW) from x (P, H, W); one lane per output element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    plane, oh, ow = _decompose(offs, OW, OH)
    h0 = oh * SH - PH
    w0 = ow * SW - PW
    x_plane = x_ptr + plane * H * W
    acc = tl.zeros([BLOCK], tl.float32)
    for kh in range(0, KH):
        r = h0 + kh
        row_ok = valid & (r >= 0) & (r < H)
        for kw in range(0, KW):
            c = w0 + kw
            inside = row_ok & (c >= 0) & (c < W)
            acc += tl.load(x_plane + r * W + c, mask=inside, other=0.0).to(tl.float32)
    y = acc / _avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DIVISOR, COUNT_PAD)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=_AVG_INTS)
def avg_pool_backward_kernel(grad_y_ptr, grad_x_ptr, total, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                             DIVISOR, COUNT_PAD, BLOCK: tl.constexpr):
    """grad_x (P, H, W): each element sums grad_y / divisor over the windows containing it, in
    ascending (oh, ow) order; one lane per input element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    plane, r, c = _decompose(offs, W, H)
    out_plane = plane * OH * OW
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
            g = tl.load(grad_y_ptr + out_plane + oh * OW + ow, mask=hit, other=0.0).to(tl.float32)
            acc += g / _avg_divisor(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DIVISOR, COUNT_PAD)
    tl.store(grad_x_ptr + offs, acc.to(grad_x_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _adaptive_window(i, L, O):
    """Adaptive window of output i along an axis of length L with O outputs: [start, end).
    The products are formed in int64 (i * L can pass 2**31 for large L and O)."""
    wide = i.to(tl.int64)
    return ((wide * L) // O).to(tl.int32), (((wide + 1) * L + O - 1) // O).to(tl.int32)


@triton.jit(do_not_specialize=["total", "H", "W", "OH", "OW", "MAX_KH", "MAX_KW"])
def adaptive_avg_forward_kernel(x_ptr, y_ptr, total, H, W, OH, OW, MAX_KH, MAX_KW,
                                BLOCK: tl.constexpr):
    """y (P, OH, OW) from x (P, H, W); MAX_KH/MAX_KW bound the window extents."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    plane, oh, ow = _decompose(offs, OW, OH)
    r0, r1 = _adaptive_window(oh, H, OH)
    c0, c1 = _adaptive_window(ow, W, OW)
    x_plane = x_ptr + plane * H * W
    acc = tl.zeros([BLOCK], tl.float32)
    for kh in range(0, MAX_KH):
        r = r0 + kh
        row_ok = valid & (r < r1)
        for kw in range(0, MAX_KW):
            c = c0 + kw
            acc += tl.load(x_plane + r * W + c, mask=row_ok & (c < c1), other=0.0).to(tl.float32)
    y = acc / ((r1 - r0) * (c1 - c0)).to(tl.float32)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["total", "H", "W", "OH", "OW", "MAX_WH", "MAX_WW"])
def adaptive_avg_backward_kernel(grad_y_ptr, grad_x_ptr, total, H, W, OH, OW, MAX_WH, MAX_WW,
                                 BLOCK: tl.constexpr):
    """grad_x (P, H, W): each element sums grad_y / window size over the windows containing it,
    ascending; MAX_WH/MAX_WW bound how many windows along an axis contain one element."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    plane, r, c = _decompose(offs, W, H)
    # Windows i containing r: floor(r*O/L) <= i < ceil((r+1)*O/L).
    first_i, last_i = _adaptive_window(r, OH, H)  # same formula, axes swapped; last is exclusive
    first_j, last_j = _adaptive_window(c, OW, W)
    out_plane = plane * OH * OW
    acc = tl.zeros([BLOCK], tl.float32)
    for di in range(0, MAX_WH):
        i = first_i + di
        row_ok = valid & (i < last_i)
        r0, r1 = _adaptive_window(i, H, OH)
        for dj in range(0, MAX_WW):
            j = first_j + dj
            hit = row_ok & (j < last_j)
            c0, c1 = _adaptive_window(j, W, OW)
            g = tl.load(grad_y_ptr + out_plane + i * OW + j, mask=hit, other=0.0).to(tl.float32)
            acc += g / ((r1 - r0) * (c1 - c0)).to(tl.float32)
    tl.store(grad_x_ptr + offs, acc.to(grad_x_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------------------------
# Launchers (backend contract of gatedrnn/ops/pool.py; tensors contiguous, geometry validated)
# ----------------------------------------------------------------------------------------------
def launch_config(kernel: str, dtype: torch.dtype) -> dict:
    """The one launch configuration of ``kernel`` (any dtype): constexprs, warps, stages."""
    return {"constexprs": {"BLOCK": BLOCK}, "num_warps": NUM_WARPS, "num_stages": NUM_STAGES}


def _launch(kernel, dtype, total, *args):
    config = launch_config(kernel.__name__, dtype)
    grid = (triton.cdiv(total, config["constexprs"]["BLOCK"]),)
    kernel[grid](*args, **config["constexprs"], num_warps=config["num_warps"],
                 num_stages=config["num_stages"])


def _output_size(size, kernel, stride, pad, dilation, ceil_mode):
    """torch's pooling output length (same rule as gatedrnn/ops/pool.py::pool_output_size)."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _adaptive_max_extent(L: int, O: int) -> int:
    """Largest adaptive window length along an axis (L inputs, O outputs)."""
    return max(-(-(i + 1) * L // O) - (i * L) // O for i in range(O))


def _adaptive_max_cover(L: int, O: int) -> int:
    """Most adaptive windows that contain one input element along an axis."""
    return max(-(-(r + 1) * O // L) - (r * O) // L for r in range(L))


class TritonPool:
    """The triton backend of gatedrnn/ops/pool.py: same methods as the Cython backend's class.

    x / grad tensors are (N, C, H, W) contiguous float32/bfloat16/float16; geometry pairs are
    (h, w) lists as the ops layer passes them."""

    @staticmethod
    def max_forward(x, kernel, stride, padding, dilation, ceil_mode):
        """-> (y (N, C, OH, OW), indices int64 (N, C, OH, OW), flat h*W + w in the plane)."""
        n, c, h, w = x.shape
        oh, ow = (_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], dilation[a],
                               ceil_mode) for a in range(2))
        y = empty(n, c, oh, ow, dtype=x.dtype, device=x.device)
        indices = empty(n, c, oh, ow, dtype=torch.int64, device=x.device)
        total = y.numel()
        _launch(max_pool_forward_kernel, x.dtype, total, x, y, indices, total, h, w, oh, ow,
                *kernel, *stride, *padding, *dilation)
        return y, indices

    @staticmethod
    def max_backward(grad_y, indices, input_size, kernel, stride, padding, dilation):
        """grad_y, indices (N, C, OH, OW) -> grad_x (input_size)."""
        grad_x = empty(*input_size, dtype=grad_y.dtype, device=grad_y.device)
        total = grad_x.numel()
        _launch(max_pool_backward_kernel, grad_y.dtype, total, grad_y, indices, grad_x, total,
                input_size[2], input_size[3], grad_y.shape[2], grad_y.shape[3], *kernel, *stride,
                *padding, *dilation)
        return grad_x

    @staticmethod
    def avg_forward(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        """-> y (N, C, OH, OW)."""
        n, c, h, w = x.shape
        oh, ow = (_output_size(x.shape[2 + a], kernel[a], stride[a], padding[a], 1, ceil_mode)
                  for a in range(2))
        y = empty(n, c, oh, ow, dtype=x.dtype, device=x.device)
        total = y.numel()
        _launch(avg_pool_forward_kernel, x.dtype, total, x, y, total, h, w, oh, ow, *kernel,
                *stride, *padding, int(divisor_override or 0), int(count_include_pad))
        return y

    @staticmethod
    def avg_backward(grad_y, input_size, kernel, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
        """grad_y (N, C, OH, OW) -> grad_x (input_size)."""
        grad_x = empty(*input_size, dtype=grad_y.dtype, device=grad_y.device)
        total = grad_x.numel()
        _launch(avg_pool_backward_kernel, grad_y.dtype, total, grad_y, grad_x, total,
                input_size[2], input_size[3], grad_y.shape[2], grad_y.shape[3], *kernel, *stride,
                *padding, int(divisor_override or 0), int(count_include_pad))
        return grad_x

    @staticmethod
    def adaptive_forward(x, output_size):
        """-> y (N, C, *output_size)."""
        n, c, h, w = x.shape
        oh, ow = output_size
        y = empty(n, c, oh, ow, dtype=x.dtype, device=x.device)
        total = y.numel()
        _launch(adaptive_avg_forward_kernel, x.dtype, total, x, y, total, h, w, oh, ow,
                _adaptive_max_extent(h, oh), _adaptive_max_extent(w, ow))
        return y

    @staticmethod
    def adaptive_backward(grad_y, input_size):
        """grad_y (N, C, OH, OW) -> grad_x (input_size)."""
        grad_x = empty(*input_size, dtype=grad_y.dtype, device=grad_y.device)
        h, w = input_size[2:]
        oh, ow = grad_y.shape[2:]
        total = grad_x.numel()
        _launch(adaptive_avg_backward_kernel, grad_y.dtype, total, grad_y, grad_x, total, h, w,
                oh, ow, _adaptive_max_cover(h, oh), _adaptive_max_cover(w, ow))
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


KERNELS = (max_pool_forward_kernel, max_pool_backward_kernel, avg_pool_forward_kernel,
           avg_pool_backward_kernel, adaptive_avg_forward_kernel, adaptive_avg_backward_kernel)


def gate_configs(capability: int) -> list:
    """Every compile the launchers of this module can request on a GPU of this capability (80 or
    90), over all dtypes and shapes: one configuration per kernel and dtype (geometry is runtime)."""
    configs = []
    for dtype, tt in TRITON_TYPES.items():
        for fn in KERNELS:
            name = fn.__name__
            config = launch_config(name, dtype)
            pointers = {arg: "*i64" if arg == "indices_ptr" else "*" + tt
                        for arg in fn.arg_names if arg.endswith("_ptr")}
            configs.append({
                "kernel": name,
                "signature": gate_signature(fn, pointers, config["constexprs"]),
                "constexprs": dict(config["constexprs"]),
                "num_warps": config["num_warps"],
                "num_stages": config["num_stages"],
                "label": f"{name.replace('_kernel', '')} {tt} BLOCK{config['constexprs']['BLOCK']}",
            })
    return configs
