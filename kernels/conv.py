"""Triton conv2d: forward, input gradient and weight gradient (backend ``triton`` of
``gatedrnn.conv2d``; contract in the docstring of ``gatedrnn/ops/conv.py``).

Semantics are ``torch.nn.functional.conv2d`` (NCHW cross-correlation) with explicit, possibly
asymmetric padding (top, bottom, left, right), stride, dilation and groups::

    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * x_pad[n, g(o)*Cg + c, i*sh + kh*dh, j*sw + kw*dw]

Every tensor is read through its strides (NCHW, channels_last or any other layout: no copy);
outputs are allocated contiguous NCHW, or channels_last where x or w is channels_last (torch's
choice) or the NHWC kernels run, NaN-poisoned under ``GATEDRNN_POISON_OUTPUTS=1``.
Accumulation is float32 for every dtype; float32 dots follow ``torch.backends.cudnn.allow_tf32``
(as cuDNN convolutions do), "ieee" under the interpreter.

Kernels (dense = tensor-core implicit GEMM, no im2col buffer; Cg = C_in/groups, Cog = C_out/groups):

* ``conv2d_forward_kernel``: GEMM (N*H_out*W_out pixels) x (Cog) reducing over Cg*KH*KW. One
  flattened loop over (tap, channel block) so Triton's pipeliner sees a single loop; with
  ``FLAT_K`` (Cg < 16, e.g. the RGB stem) the reduction index runs over (c, kh, kw) jointly, so
  a 3-channel 7x7 stem fills 147/160 of its K tiles instead of 3/16.
* ``conv2d_input_grad_kernel``: GEMM (input pixels) x (Cg) reducing over Cog*KH*KW with the
  transposed weight. Input pixels are split by stride phase (ih % sh, iw % sw), one phase per
  grid slice: within a phase the taps that reach an output pixel are the same for every pixel,
  so the loop visits only those (a stride-2 3x3 conv does 1/4 of the dense tap work, no masked
  MMAs) and no per-element divisibility test is needed.
* ``conv2d_weight_grad_kernel``: GEMM (Cog) x (Cg*KH*KW) reducing over the pixels. The pixel
  range is cut into SPLIT contiguous chunks; each program writes its float32 partial sum to
  its own slice of a (SPLIT, C_out, Cg*KH*KW) buffer, summed afterwards in a fixed order
  (deterministic: no atomics).
* ``conv2d_*_direct_kernel``: the same three without tl.dot, for grouped convolutions with
  fewer than 16 channels per group on either side (depthwise, channel multipliers, ResNeXt
  stems): a dot tile (edges >= 16) would waste most of its work there.
* ``conv2d_*_nhwc_kernel``: the three dense kernels for channels-last tensors (unit channel
  stride, 16-byte aligned strides, channels per group multiples of 16 bytes' worth): tiles
  (pixels x channels) read as 16-byte vectors along the channels, pipelined with cp.async, the
  weight as (C_out, KH, KW, Cg). :func:`conv_layout` picks them (GATEDRNN_TRITON_CONV_LAYOUT).

The bias gradient is a float32 torch sum of grad_y (deterministic on CUDA).

Configurations: :func:`choose_configs` is the one place that picks kernels and tiles;
:func:`gate_configs` enumerates everything it can return (perf/compile_report.py compiles the
list for sm_80/sm_90; compile it without ``maxnreg``, as the launchers do), and
:func:`launch_plan` says what a given call launches (the launchers and the tests use it).

Known limits (no GPU was available when this was written; nothing here is measured on one):

* The strided kernels' gathered tiles are read through runtime strides with integer
  specialisation off (so that a launch compiles exactly what the gate checked), hence element
  by element: no vector loads and no cp.async pipelining. The NHWC kernels are the fast path;
  whether copying NCHW tensors to channels_last for them pays (GATEDRNN_TRITON_CONV_LAYOUT=nhwc)
  is for a GPU run to say.
* float32 TF32 dots want K-major operands: the NHWC weight gradient's (both operands run along
  channels, the reduction along pixels) and the input gradient's weight tile are copied 4 bytes
  at a time to transpose them (16-bit types take either order).
* One sample (one N index) must have < 2**31 elements (strides are int32; the batch offset is
  int64, so whole tensors may be larger).
* ``PIXELS_LAST`` is chosen from the Triton version (see ``_gather_tile``); only 3.6 and 3.9
  were checked.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._launch import dot_precision, empty, interpreting, is_channels_last

__all__ = ["conv2d_forward", "conv2d_backward", "choose_configs", "launch_plan", "gate_configs", "Launch"]


# ----------------------------------------------------------------------------------------------
# Gathered tiles
# ----------------------------------------------------------------------------------------------
# Every kernel gathers (channels x pixels) tiles through runtime strides, so Triton cannot tell
# which axis is contiguous and picks its default: a warp's threads along the LAST axis of the
# load in Triton 3.9, along the FIRST axis in 3.6. The per-pixel vectors that live through a
# reduction loop (row addresses, ih/iw origins, masks) must lie along the threads, or each
# thread holds BLOCK_PIXELS / 8..32 copies of each: with them on the other axis every
# configuration spilled (72..904 B of stack, compile gate, sm_80/sm_90). _gather_tile puts the
# pixel axis where the running Triton spreads its threads and returns the tile as (channels x
# pixels) either way (tl.trans; the dot operands go through shared memory regardless).
PIXELS_LAST = tuple(int(p) for p in triton.__version__.split(".")[:2]) >= (3, 7)


@triton.jit
def _split_range(split, pixels_per_split, P):
    """[begin, end) of the output pixels one split of a weight-gradient reduction sums over
    (whole pixel tiles; the last split's range clipped to P)."""
    begin = split * pixels_per_split
    return begin, tl.minimum(begin + pixels_per_split, P)


@triton.jit
def _pixel_chunk(p0, p_end, W_out, H_out, BLOCK_P: tl.constexpr):
    """Output pixels p0 .. p0 + BLOCK_P - 1 of a weight-gradient reduction: (sample int64,
    row, column, whether the pixel is before p_end)."""
    ps = p0 + tl.arange(0, BLOCK_P)
    n, oh, ow = _unflatten(ps, W_out, H_out)
    return n.to(tl.int64), oh, ow, ps < p_end


@triton.jit
def _unflatten(flat, width, height):
    """(outer, row, column) of flat row-major indices over an (outer, height, width) grid: a flat
    pixel index gives (sample, h, w) with (W, H); a flat reduction index (c, kh, kw) with (KW, KH)."""
    rest = flat // width
    outer = rest // height
    return outer, rest - outer * height, flat - rest * width


@triton.jit
def _gather_tile(pix_ptr, chan_off, dh, dw, chan_ok, ih, iw, pix_ok, s_h, s_w, H, W,
                 PIXELS_LAST: tl.constexpr):
    """tile[k, m] = *(pix_ptr[m] + chan_off[k] + (ih[m] + dh[k]) * s_h + (iw[m] + dw[k]) * s_w),
    0 where chan_ok[k] or pix_ok[m] is false or the row/column falls outside [0, H) x [0, W).
    (K,) vectors: chan_off, dh, dw, chan_ok; (M,) vectors: pix_ptr, ih, iw, pix_ok. -> (K, M)."""
    if PIXELS_LAST:
        rows = dh[:, None] + ih[None, :]
        cols = dw[:, None] + iw[None, :]
        ok = chan_ok[:, None] & pix_ok[None, :] & (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
        return tl.load(pix_ptr[None, :] + chan_off[:, None] + rows * s_h + cols * s_w, mask=ok, other=0.0)
    else:
        rows = ih[:, None] + dh[None, :]
        cols = iw[:, None] + dw[None, :]
        ok = pix_ok[:, None] & chan_ok[None, :] & (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
        return tl.trans(tl.load(pix_ptr[:, None] + chan_off[None, :] + rows * s_h + cols * s_w, mask=ok,
                                other=0.0))


@triton.jit
def _store_tile(pix_ptr, chan_off, chan_ok, pix_ok, tile, PIXELS_LAST: tl.constexpr):
    """*(pix_ptr[m] + chan_off[k]) = tile[k, m] where chan_ok[k] & pix_ok[m]; tile (K, M)."""
    if PIXELS_LAST:
        tl.store(pix_ptr[None, :] + chan_off[:, None], tile, mask=chan_ok[:, None] & pix_ok[None, :])
    else:
        tl.store(pix_ptr[:, None] + chan_off[None, :], tl.trans(tile), mask=pix_ok[:, None] & chan_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Dense (tl.dot) kernels
# ----------------------------------------------------------------------------------------------
# Tiles keep pixels on their second axis (the forward computes y^T (channels x pixels) =
# w (channels x K) @ x^T (K x pixels)), so the stores of NCHW outputs run along pixels.
# Integer arguments are not specialised (do_not_specialize): Triton would otherwise turn a
# stride of 1 into a constant (and a multiple of 16 into an alignment hint) and compile a
# variant the compile gate never saw.


def _jit_unspecialized(fn):
    """triton.jit with every integer argument (not a pointer, not a constexpr) unspecialised."""
    integers = [name for name, parameter in inspect.signature(fn).parameters.items()
                if not name.endswith("_ptr") and parameter.annotation is inspect.Parameter.empty]
    return triton.jit(do_not_specialize=integers)(fn)


@_jit_unspecialized
def conv2d_forward_kernel(
        x_ptr, w_ptr, bias_ptr, y_ptr,
        H, W, H_out, W_out, M, C_group, C_out_group,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sxn, sxc, sxh, sxw, swo, swc, swh, sww, syn, syc, syh, syw,
        FLAT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        PRECISION: tl.constexpr, PIXELS_LAST: tl.constexpr):
    """y tile (BLOCK_N output channels of one group) x (BLOCK_M output pixels).
    grid = (cdiv(N*H_out*W_out, BLOCK_M), cdiv(Cog, BLOCK_N), groups)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    n, oh, ow = _unflatten(offs_m, W_out, H_out)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    x_pix = x_ptr + n.to(tl.int64) * sxn + group * C_group * sxc
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_out_group
    out_channel = group * C_out_group + offs_n
    w_rows = w_ptr + out_channel * swo
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if FLAT_K:
        taps = KH * KW
        K = C_group * taps
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + offs_k
            k_ok = ks < K
            c, kh, kw = _unflatten(ks, KW, KH)
            xt = _gather_tile(x_pix, c * sxc, kh * dil_h, kw * dil_w, k_ok, ih0, iw0, m_ok, sxh, sxw, H, W,
                              PIXELS_LAST)
            wt = tl.load(w_rows[:, None] + (c * swc + kh * swh + kw * sww)[None, :],
                         mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            acc = tl.dot(wt, xt, acc, input_precision=PRECISION)
    else:
        # One loop over (tap, channel block): taps outer, channels inner; a single loop (not
        # three nested ones) is what the software pipeliner overlaps across taps.
        n_cblocks = tl.cdiv(C_group, BLOCK_K)
        zero_k = tl.zeros((BLOCK_K,), dtype=tl.int32)
        for it in range(0, KH * KW * n_cblocks):
            tap = it // n_cblocks
            c0 = (it - tap * n_cblocks) * BLOCK_K
            kh = tap // KW
            kw = tap - kh * KW
            cs = c0 + offs_k
            c_ok = cs < C_group
            xt = _gather_tile(x_pix, cs * sxc, zero_k + kh * dil_h, zero_k + kw * dil_w, c_ok, ih0, iw0, m_ok,
                              sxh, sxw, H, W, PIXELS_LAST)
            wt = tl.load(w_rows[:, None] + (cs * swc)[None, :] + (kh * swh + kw * sww),
                         mask=n_ok[:, None] & c_ok[None, :], other=0.0)
            acc = tl.dot(wt, xt, acc, input_precision=PRECISION)
    bias = tl.load(bias_ptr + out_channel, mask=n_ok, other=0.0).to(tl.float32)
    acc += bias[:, None]
    y_pix = y_ptr + n.to(tl.int64) * syn + oh * syh + ow * syw
    _store_tile(y_pix, out_channel * syc, n_ok, m_ok, acc.to(y_ptr.dtype.element_ty), PIXELS_LAST)


@triton.jit
def _first_tap(phase, pad, stride, dil, K, step):
    """(first tap k >= 0 with (phase + pad - k*dil) % stride == 0, number of such taps < K).
    The valid taps are first, first + step, ... (step = stride / gcd(stride, dil)); the
    residues of 0..step-1 cover every class, so the search needs step candidates."""
    first = K + step  # "none" (counts to zero below)
    shifted = phase + pad + stride * K * dil  # keeps the dividend non-negative
    for r in range(0, step):
        hit = ((shifted - r * dil) % stride) == 0
        first = tl.minimum(first, tl.where(hit, r, K + step))
    count = tl.maximum(K - first + step - 1, 0) // step
    return first, count


@triton.jit
def _phase_pixels(pid_m, phase, M_phase, H_phase, W_phase, H, W, stride_h, stride_w, pad_top, pad_left,
                  dil_h, dil_w, KH, KW, step_h, step_w, BLOCK_M: tl.constexpr):
    """The input gradient's pixel tile pid_m of one stride phase (ph, pw), pixel (ph + stride_h*t,
    pw + stride_w*u), and the taps that reach the phase: (n, th, tw, ih, iw, m_ok, ph, pw,
    kh_first, n_kh, kw_first, n_kw) (see _first_tap)."""
    ph = phase // stride_w
    pw = phase - ph * stride_w
    kh_first, n_kh = _first_tap(ph, pad_top, stride_h, dil_h, KH, step_h)
    kw_first, n_kw = _first_tap(pw, pad_left, stride_w, dil_w, KW, step_w)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n, th, tw = _unflatten(offs_m, W_phase, H_phase)
    ih = ph + th * stride_h
    iw = pw + tw * stride_w
    m_ok = (offs_m < M_phase) & (ih < H) & (iw < W)
    return n, th, tw, ih, iw, m_ok, ph, pw, kh_first, n_kh, kw_first, n_kw


@triton.jit
def _phase_tap(tap, ph, pw, kh_first, kw_first, n_kw, step_h, step_w, stride_h, stride_w, pad_top, pad_left,
               dil_h, dil_w, KH, KW):
    """(kh, kw, dh, dw) of the tap-th tap reaching phase (ph, pw): through it, input pixel
    (ph + stride_h*t, pw + stride_w*u) receives output pixel (t + dh, u + dw)."""
    i_h = tap // n_kw
    kh = kh_first + i_h * step_h
    kw = kw_first + (tap - i_h * n_kw) * step_w
    # oh = (ih + pad - kh*dil) / stride = t + (ph + pad - kh*dil) / stride, exact in this phase;
    # the shifts keep the dividends non-negative (C-style // rounds towards zero).
    dh = (ph + pad_top + stride_h * KH * dil_h - kh * dil_h) // stride_h - KH * dil_h
    dw = (pw + pad_left + stride_w * KW * dil_w - kw * dil_w) // stride_w - KW * dil_w
    return kh, kw, dh, dw


@_jit_unspecialized
def conv2d_input_grad_kernel(
        gy_ptr, w_ptr, gx_ptr,
        H, W, H_out, W_out, M_phase, H_phase, W_phase, C_group, C_out_group,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW, step_h, step_w, n_ctiles,
        sgn, sgc, sgh, sgw, swo, swc, swh, sww, sxn, sxc, sxh, sxw,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
        PIXELS_LAST: tl.constexpr):
    """grad_x tile (BLOCK_N input channels of one group) x (BLOCK_M input pixels of one stride
    phase). grid = (cdiv(N*H_phase*W_phase, BLOCK_M), groups*n_ctiles, stride_h*stride_w),
    H_phase = cdiv(H, stride_h): pixel (ph + stride_h*t, pw + stride_w*u) of phase (ph, pw)."""
    group = tl.program_id(1) // n_ctiles
    pid_n = tl.program_id(1) - group * n_ctiles
    n, th, tw, ih, iw, m_ok, ph, pw, kh_first, n_kh, kw_first, n_kw = _phase_pixels(
        tl.program_id(0), tl.program_id(2), M_phase, H_phase, W_phase, H, W, stride_h, stride_w, pad_top, pad_left,
        dil_h, dil_w, KH, KW, step_h, step_w, BLOCK_M)
    gy_pix = gy_ptr + n.to(tl.int64) * sgn
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_group
    w_rows = w_ptr + offs_n * swc
    offs_k = tl.arange(0, BLOCK_K)
    zero_k = tl.zeros((BLOCK_K,), dtype=tl.int32)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    n_oblocks = tl.cdiv(C_out_group, BLOCK_K)
    for it in range(0, n_kh * n_kw * n_oblocks):
        tap = it // n_oblocks
        kh, kw, dh, dw = _phase_tap(tap, ph, pw, kh_first, kw_first, n_kw, step_h, step_w, stride_h, stride_w,
                                    pad_top, pad_left, dil_h, dil_w, KH, KW)
        out_in_group = (it - tap * n_oblocks) * BLOCK_K + offs_k
        o_ok = out_in_group < C_out_group
        out_channel = group * C_out_group + out_in_group
        gyt = _gather_tile(gy_pix, out_channel * sgc, zero_k + dh, zero_k + dw, o_ok, th, tw, m_ok, sgh, sgw,
                           H_out, W_out, PIXELS_LAST)
        wt = tl.load(w_rows[:, None] + (out_channel * swo)[None, :] + (kh * swh + kw * sww),
                     mask=n_ok[:, None] & o_ok[None, :], other=0.0)
        acc = tl.dot(wt, gyt, acc, input_precision=PRECISION)
    gx_pix = gx_ptr + n.to(tl.int64) * sxn + ih * sxh + iw * sxw
    _store_tile(gx_pix, (group * C_group + offs_n) * sxc, n_ok, m_ok, acc.to(gx_ptr.dtype.element_ty), PIXELS_LAST)


@_jit_unspecialized
def conv2d_weight_grad_kernel(
        gy_ptr, x_ptr, partial_ptr,
        H, W, H_out, W_out, P, pixels_per_split, C_group, C_out_group, C_out, n_ctiles,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
        FLAT_K: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
        PRECISION: tl.constexpr, PIXELS_LAST: tl.constexpr):
    """Partial grad_w tile (BLOCK_O output channels) x (BLOCK_C weight columns) over one chunk
    of pixels. Columns: FLAT_K: BLOCK_C consecutive flattened (c, kh, kw) entries; else one tap
    and BLOCK_C channels. grid = (column tiles, groups * cdiv(Cog, BLOCK_O), SPLIT);
    partial: float32 (SPLIT, C_out, Cg*KH*KW) contiguous."""
    pid_col = tl.program_id(0)
    n_otiles = tl.cdiv(C_out_group, BLOCK_O)
    group = tl.program_id(1) // n_otiles
    pid_o = tl.program_id(1) - group * n_otiles
    split = tl.program_id(2)
    taps = KH * KW
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < C_out_group
    out_channel = group * C_out_group + offs_o
    offs_col = tl.arange(0, BLOCK_C)
    if FLAT_K:
        cols = pid_col * BLOCK_C + offs_col
        col_ok = cols < C_group * taps
        c, kh, kw = _unflatten(cols, KW, KH)
    else:
        tap_s = pid_col // n_ctiles
        kh_s = tap_s // KW
        kw_s = tap_s - kh_s * KW
        c = (pid_col - tap_s * n_ctiles) * BLOCK_C + offs_col
        col_ok = c < C_group
        kh = tl.zeros_like(c) + kh_s
        kw = tl.zeros_like(c) + kw_s
        cols = c * taps + tap_s
    khd = kh * dil_h
    kwd = kw * dil_w
    col_x = (group * C_group + c) * sxc
    gy_chan = out_channel * sgc
    zero_o = tl.zeros((BLOCK_O,), dtype=tl.int32)
    p_begin, p_end = _split_range(split, pixels_per_split, P)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        n64, oh, ow, p_ok = _pixel_chunk(p0, p_end, W_out, H_out, BLOCK_P)
        gy = _gather_tile(gy_ptr + n64 * sgn, gy_chan, zero_o, zero_o, o_ok, oh, ow, p_ok, sgh, sgw, H_out, W_out,
                          PIXELS_LAST)
        xt = _gather_tile(x_ptr + n64 * sxn, col_x, khd, kwd, col_ok, oh * stride_h - pad_top,
                          ow * stride_w - pad_left, p_ok, sxh, sxw, H, W, PIXELS_LAST)
        acc = tl.dot(gy, tl.trans(xt), acc, input_precision=PRECISION)
    row = split.to(tl.int64) * C_out + out_channel
    tl.store(partial_ptr + (row * (C_group * taps))[:, None] + cols[None, :], acc,
             mask=o_ok[:, None] & col_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Direct (no-dot) kernels for few channels per group
# ----------------------------------------------------------------------------------------------
@_jit_unspecialized
def conv2d_forward_direct_kernel(
        x_ptr, w_ptr, bias_ptr, y_ptr,
        H, W, H_out, W_out, M, C_out, C_group, C_out_group,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sxn, sxc, sxh, sxw, swo, swc, swh, sww, syn, syc, syh, syw,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PIXELS_LAST: tl.constexpr):
    """y tile (BLOCK_N output channels, any groups) x (BLOCK_M pixels), elementwise FMAs.
    grid = (cdiv(N*H_out*W_out, BLOCK_M), cdiv(C_out, BLOCK_N))."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    n, oh, ow = _unflatten(offs_m, W_out, H_out)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_out
    in_channel0 = (offs_n // C_out_group) * C_group
    zero_n = tl.zeros((BLOCK_N,), dtype=tl.int32)
    x_pix = x_ptr + n.to(tl.int64) * sxn
    w_rows = w_ptr + offs_n * swo
    taps = KH * KW
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for it in range(0, C_group * taps):
        c, kh, kw = _unflatten(it, KW, KH)
        xv = _gather_tile(x_pix, (in_channel0 + c) * sxc, zero_n + kh * dil_h, zero_n + kw * dil_w, n_ok,
                          ih0, iw0, m_ok, sxh, sxw, H, W, PIXELS_LAST)
        wv = tl.load(w_rows + c * swc + kh * swh + kw * sww, mask=n_ok, other=0.0)
        acc += wv.to(tl.float32)[:, None] * xv.to(tl.float32)
    acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    y_pix = y_ptr + n.to(tl.int64) * syn + oh * syh + ow * syw
    _store_tile(y_pix, offs_n * syc, n_ok, m_ok, acc.to(y_ptr.dtype.element_ty), PIXELS_LAST)


@_jit_unspecialized
def conv2d_input_grad_direct_kernel(
        gy_ptr, w_ptr, gx_ptr,
        H, W, H_out, W_out, M, C_in, C_group, C_out_group,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sgn, sgc, sgh, sgw, swo, swc, swh, sww, sxn, sxc, sxh, sxw,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PIXELS_LAST: tl.constexpr):
    """grad_x tile (BLOCK_N input channels) x (BLOCK_M input pixels), elementwise FMAs over the
    group's Cog*KH*KW (output channel, tap) pairs; a tap reaches pixel ih iff
    (ih + pad - kh*dil) is a multiple of the stride. grid = (cdiv(N*H*W, BLOCK_M), cdiv(C_in, BLOCK_N))."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n, ih, iw = _unflatten(offs_m, W, H)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_in
    group = offs_n // C_group
    c_local = offs_n - group * C_group
    zero_n = tl.zeros((BLOCK_N,), dtype=tl.int32)
    gy_pix = gy_ptr + n.to(tl.int64) * sgn
    # Shifted so that the dividends below are non-negative (// and % round towards zero).
    num_h0 = ih + pad_top + stride_h * KH * dil_h
    num_w0 = iw + pad_left + stride_w * KW * dil_w
    taps = KH * KW
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for it in range(0, C_out_group * taps):
        j, kh, kw = _unflatten(it, KW, KH)
        num_h = num_h0 - kh * dil_h
        num_w = num_w0 - kw * dil_w
        # Pixels this tap does not reach get an out-of-range row, which the gather masks off.
        oh = tl.where((num_h % stride_h == 0) & (offs_m < M), num_h // stride_h - KH * dil_h, -1)
        ow = num_w // stride_w - KW * dil_w
        pix_ok = num_w % stride_w == 0
        out_channel = group * C_out_group + j
        g = _gather_tile(gy_pix, out_channel * sgc, zero_n, zero_n, n_ok, oh, ow, pix_ok, sgh, sgw, H_out, W_out,
                         PIXELS_LAST)
        wv = tl.load(w_ptr + out_channel * swo + c_local * swc + kh * swh + kw * sww, mask=n_ok, other=0.0)
        acc += wv.to(tl.float32)[:, None] * g.to(tl.float32)
    gx_pix = gx_ptr + n.to(tl.int64) * sxn + ih * sxh + iw * sxw
    _store_tile(gx_pix, offs_n * sxc, n_ok, offs_m < M, acc.to(gx_ptr.dtype.element_ty), PIXELS_LAST)


@_jit_unspecialized
def conv2d_weight_grad_direct_kernel(
        gy_ptr, x_ptr, partial_ptr,
        H, W, H_out, W_out, P, pixels_per_split, C_out, C_group, C_out_group,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sgn, sgc, sgh, sgw, sxn, sxc, sxh, sxw,
        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PIXELS_LAST: tl.constexpr):
    """Partial grad_w[o, c, kh, kw] for BLOCK_N output channels o and one (c, kh, kw) column
    over one chunk of pixels: elementwise products summed over the pixel axis at the end.
    grid = (cdiv(C_out, BLOCK_N), Cg*KH*KW, SPLIT); partial (SPLIT, C_out, Cg*KH*KW) float32."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_out
    col = tl.program_id(1)
    split = tl.program_id(2)
    taps = KH * KW
    c, kh, kw = _unflatten(col, KW, KH)
    in_channel = (offs_n // C_out_group) * C_group + c
    zero_n = tl.zeros((BLOCK_N,), dtype=tl.int32)
    p_begin, p_end = _split_range(split, pixels_per_split, P)
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        n64, oh, ow, p_ok = _pixel_chunk(p0, p_end, W_out, H_out, BLOCK_P)
        g = _gather_tile(gy_ptr + n64 * sgn, offs_n * sgc, zero_n, zero_n, n_ok, oh, ow, p_ok, sgh, sgw, H_out,
                         W_out, PIXELS_LAST)
        xv = _gather_tile(x_ptr + n64 * sxn, in_channel * sxc, zero_n + kh * dil_h, zero_n + kw * dil_w, n_ok,
                          oh * stride_h - pad_top, ow * stride_w - pad_left, p_ok, sxh, sxw, H, W, PIXELS_LAST)
        acc += g.to(tl.float32) * xv.to(tl.float32)
    total = tl.sum(acc, axis=1)
    row = split.to(tl.int64) * C_out + offs_n
    tl.store(partial_ptr + row * (C_group * taps) + col, total, mask=n_ok)


# ----------------------------------------------------------------------------------------------
# Channels-last (NHWC) dense kernels
# ----------------------------------------------------------------------------------------------
# For channels_last tensors whose channels per group are multiples of VEC (16 bytes of
# elements), which the launcher checks (see nhwc_eligible): every tile is read along its
# channels, which are contiguous, from rows that start on 16-byte boundaries. The kernels take
# the strides and channel counts as multiples of VEC (arguments ``*_v`` = value / VEC, scaled
# back by the constexpr VEC, so the compiler's alignment analysis sees the factor; the integer
# arguments stay unspecialised, as above), so a thread loads 16-byte vectors and the pipeliner
# can copy them asynchronously (cp.async) into shared memory: the strided kernels above issue
# one load per element through a 64-bit address each and cannot use cp.async for 16-bit types.
# Tiles are (pixels x channels), channels last, so stores run along channels too.
# The weight is read as (C_out, KH, KW, Cg) contiguous ("OHWI", channels_last's order: the
# launcher's permuted copy, none when the weight is channels_last already): contiguous along
# input channels, as the forward's (out channels x in channels) tile, transposed into its dot,
# and the input gradient's (out channels x in channels) tile both want.


@_jit_unspecialized
def conv2d_forward_nhwc_kernel(
        x_ptr, w_ptr, bias_ptr, y_ptr,
        H, W, H_out, W_out, M, C_group_v, C_out_group_v,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sxn_v, sxh_v, sxw_v, syn_v, syh_v, syw_v,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr,
        PRECISION: tl.constexpr):
    """y tile (BLOCK_M output pixels) x (BLOCK_N output channels of one group); x and y have a
    unit channel stride, w is (C_out, KH, KW, Cg) contiguous.
    grid = (cdiv(N*H_out*W_out, BLOCK_M), cdiv(Cog, BLOCK_N), groups)."""
    C_group = C_group_v * VEC
    C_out_group = C_out_group_v * VEC
    sxn = sxn_v * VEC
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    syn = syn_v * VEC
    syh = syh_v * VEC
    syw = syw_v * VEC
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    group = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < M
    n, oh, ow = _unflatten(offs_m, W_out, H_out)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    x_pix = x_ptr + n.to(tl.int64) * sxn + group * C_group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_out_group
    out_channel = group * C_out_group + offs_n
    taps = KH * KW
    w_rows = w_ptr + out_channel * (taps * C_group)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One loop over (tap, channel block), as in conv2d_forward_kernel.
    n_cblocks = tl.cdiv(C_group, BLOCK_K)
    for it in range(0, taps * n_cblocks):
        tap = it // n_cblocks
        cs = (it - tap * n_cblocks) * BLOCK_K + offs_k
        c_ok = cs < C_group
        kh = tap // KW
        ih = ih0 + kh * dil_h
        iw = iw0 + (tap - kh * KW) * dil_w
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xt = tl.load(x_pix[:, None] + (ih * sxh + iw * sxw)[:, None] + cs[None, :],
                     mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
        wt = tl.load(w_rows[:, None] + (tap * C_group + cs)[None, :], mask=n_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(xt, tl.trans(wt), acc, input_precision=PRECISION)
    acc += tl.load(bias_ptr + out_channel, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    y_pix = y_ptr + n.to(tl.int64) * syn + oh * syh + ow * syw
    tl.store(y_pix[:, None] + out_channel[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@_jit_unspecialized
def conv2d_input_grad_nhwc_kernel(
        gy_ptr, w_ptr, gx_ptr,
        H, W, H_out, W_out, M_phase, H_phase, W_phase, C_group_v, C_out_group_v,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW, step_h, step_w, n_ctiles,
        sgn_v, sgh_v, sgw_v, sxn_v, sxh_v, sxw_v,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr,
        PRECISION: tl.constexpr):
    """grad_x tile (BLOCK_M input pixels of one stride phase) x (BLOCK_N input channels of one
    group), as conv2d_input_grad_kernel (same phases and taps) with grad_y and grad_x of unit
    channel stride. The weight comes packed by ``_input_grad_weight``: for TF32 dots (K-major,
    which sm_90's wgmma needs to take float32 tiles by 16-byte copies) (groups, KH, KW, Cg, Cog)
    contiguous, the output channels the dot reduces over innermost; otherwise (C_out, KH, KW, Cg)
    (16-bit dots take either; the float32 "ieee" dot, on FMA units, spilled with the K-major
    tile under Triton 3.6).
    grid = (cdiv(N*H_phase*W_phase, BLOCK_M), groups*n_ctiles, stride_h*stride_w)."""
    C_group = C_group_v * VEC
    C_out_group = C_out_group_v * VEC
    sgn = sgn_v * VEC
    sgh = sgh_v * VEC
    sgw = sgw_v * VEC
    sxn = sxn_v * VEC
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    group = tl.program_id(1) // n_ctiles
    pid_n = tl.program_id(1) - group * n_ctiles
    n, th, tw, ih, iw, m_ok, ph, pw, kh_first, n_kh, kw_first, n_kw = _phase_pixels(
        tl.program_id(0), tl.program_id(2), M_phase, H_phase, W_phase, H, W, stride_h, stride_w, pad_top, pad_left,
        dil_h, dil_w, KH, KW, step_h, step_w, BLOCK_M)
    gy_pix = gy_ptr + n.to(tl.int64) * sgn + group * C_out_group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_group
    taps = KH * KW
    tap_size = C_group * C_out_group  # one group's weights for one tap
    if PRECISION == "tf32":
        w_cols = w_ptr + group * taps * tap_size + offs_n * C_out_group
    else:
        w_cols = w_ptr + group * C_out_group * (taps * C_group) + offs_n
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n_oblocks = tl.cdiv(C_out_group, BLOCK_K)
    for it in range(0, n_kh * n_kw * n_oblocks):
        tap = it // n_oblocks
        kh, kw, dh, dw = _phase_tap(tap, ph, pw, kh_first, kw_first, n_kw, step_h, step_w, stride_h, stride_w,
                                    pad_top, pad_left, dil_h, dil_w, KH, KW)
        out_in_group = (it - tap * n_oblocks) * BLOCK_K + offs_k
        o_ok = out_in_group < C_out_group
        oh = th + dh
        ow = tw + dw
        pix_ok = m_ok & (oh >= 0) & (oh < H_out) & (ow >= 0) & (ow < W_out)
        gyt = tl.load(gy_pix[:, None] + (oh * sgh + ow * sgw)[:, None] + out_in_group[None, :],
                      mask=pix_ok[:, None] & o_ok[None, :], other=0.0)
        if PRECISION == "tf32":
            w_rows = (kh * KW + kw) * tap_size + out_in_group
        else:
            w_rows = (out_in_group * taps + kh * KW + kw) * C_group
        wt = tl.load(w_cols[None, :] + w_rows[:, None], mask=o_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(gyt, wt, acc, input_precision=PRECISION)
    gx_pix = gx_ptr + n.to(tl.int64) * sxn + ih * sxh + iw * sxw
    tl.store(gx_pix[:, None] + (group * C_group + offs_n)[None, :], acc.to(gx_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@_jit_unspecialized
def conv2d_weight_grad_nhwc_kernel(
        gy_ptr, x_ptr, partial_ptr,
        H, W, H_out, W_out, P, pixels_per_split, C_group_v, C_out_group_v, C_out, n_ctiles,
        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, KH, KW,
        sgn_v, sgh_v, sgw_v, sxn_v, sxh_v, sxw_v,
        BLOCK_O: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, VEC: tl.constexpr,
        PRECISION: tl.constexpr):
    """Partial grad_w tile (BLOCK_O output channels) x (BLOCK_C input channels of one tap) over
    one chunk of pixels, grad_y and x of unit channel stride.
    grid = (KH*KW*n_ctiles, groups*cdiv(Cog, BLOCK_O), SPLIT); partial: float32
    (SPLIT, C_out, KH, KW, Cg) contiguous (the weight's OHWI order)."""
    C_group = C_group_v * VEC
    C_out_group = C_out_group_v * VEC
    sgn = sgn_v * VEC
    sgh = sgh_v * VEC
    sgw = sgw_v * VEC
    sxn = sxn_v * VEC
    sxh = sxh_v * VEC
    sxw = sxw_v * VEC
    pid_col = tl.program_id(0)
    n_otiles = tl.cdiv(C_out_group, BLOCK_O)
    group = tl.program_id(1) // n_otiles
    pid_o = tl.program_id(1) - group * n_otiles
    split = tl.program_id(2)
    tap = pid_col // n_ctiles
    kh = tap // KW
    kw = tap - kh * KW
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    o_ok = offs_o < C_out_group
    out_channel = group * C_out_group + offs_o
    offs_c = (pid_col - tap * n_ctiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C_group
    in_channel = group * C_group + offs_c
    p_begin, p_end = _split_range(split, pixels_per_split, P)
    acc = tl.zeros((BLOCK_O, BLOCK_C), dtype=tl.float32)
    for p0 in range(p_begin, p_end, BLOCK_P):
        n64, oh, ow, p_ok = _pixel_chunk(p0, p_end, W_out, H_out, BLOCK_P)
        gy = tl.load((gy_ptr + n64 * sgn + oh * sgh + ow * sgw)[:, None] + out_channel[None, :],
                     mask=p_ok[:, None] & o_ok[None, :], other=0.0)
        ih = oh * stride_h - pad_top + kh * dil_h
        iw = ow * stride_w - pad_left + kw * dil_w
        x_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xt = tl.load((x_ptr + n64 * sxn + ih * sxh + iw * sxw)[:, None] + in_channel[None, :],
                     mask=x_ok[:, None] & c_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(gy), xt, acc, input_precision=PRECISION)
    row = split.to(tl.int64) * C_out + out_channel
    tl.store(partial_ptr + (row * (KH * KW * C_group) + tap * C_group)[:, None] + offs_c[None, :], acc,
             mask=o_ok[:, None] & c_ok[None, :])


# ----------------------------------------------------------------------------------------------
# Configuration: the one place that picks kernels and tiles
# ----------------------------------------------------------------------------------------------
# tl.dot needs tile edges >= 16; below 16 channels per group on either GEMM side a grouped conv
# runs the direct kernels, and a dense conv with Cg < 16 flattens its reduction (FLAT_K).
MIN_DOT_TILE = 16
# Tiles per dtype, all checked by the compile gate (no spills, Triton 3.6 and 3.9, sm_80/90).
# The gathered x / grad_y tiles cost a 64-bit address per element (strides are runtime values,
# so nothing is provably contiguous), float32 "ieee" dots run on FMA units with their operands
# in registers, and Triton 3.6 lays the gathered tiles out with a warp's threads along the
# reduction axis (3.9: along pixels), so each thread holds BLOCK_PIXELS / 8..32 copies of the
# per-pixel vectors (addresses, masks) that live through the K loop:
# - BLOCK_PIXELS: output (input, for the input gradient) pixels per dense tile: 64. At 128
#   (the usual implicit-GEMM M tile) Triton 3.6 spilled 72-600 B in every 16-bit configuration
#   and float32 spilled under 3.9 too; 64 x 64 16-bit takes 174-211 registers under 3.6.
# - BLOCK_REDUCE: reduction tile of the forward / input-gradient dots, 64 B per row in both
#   (32 half or 16 single floats).
# - MAX_CHANNEL_TILE: widest output (input) channel tile (128 x 64 float32 spilled at 8 warps).
# - WGRAD_BLOCK_COLUMNS: weight columns per weight-gradient tile (flattened (c, kh, kw) for
#   small Cg, channels of one tap otherwise); float32 at 64 spilled, 32 takes 166-218 registers.
BLOCK_PIXELS = {torch.float32: 64, torch.bfloat16: 64, torch.float16: 64}
BLOCK_REDUCE = {torch.float32: 16, torch.bfloat16: 32, torch.float16: 32}
MAX_CHANNEL_TILE = {torch.float32: 64, torch.bfloat16: 128, torch.float16: 128}
WGRAD_BLOCK_COLUMNS = {torch.float32: 32, torch.bfloat16: 64, torch.float16: 64}
# Weight gradient pixel (reduction) tile: 32 for every dtype (64 spilled in 16-bit: two 64x64
# operand tiles with per-element addresses).
WGRAD_BLOCK_PIXELS = 32
# Stages of the software pipeline: at most 3 x (64x32 + 32x128) x 2 B = 36 KB of shared
# memory (16-bit), 3 x (64x16 + 16x64) x 4 B = 24 KB (float32), the gate's maximum being
# 36864 B: far inside sm_80's 163 KB, so sm_80 and sm_90 share every choice.
NUM_STAGES = 3
# Direct kernels: 64 pixels x 32 channels = 16 float32 accumulators per thread at 4 warps.
DIRECT_BLOCK_PIXELS = 64
DIRECT_BLOCK_CHANNELS = 32
DIRECT_WARPS = 4
# Weight-gradient split of the pixel reduction: aim at WGRAD_PROGRAMS_PER_SM programs per SM,
# each reducing at least MIN_BLOCKS_PER_SPLIT pixel tiles (below that the partial buffer's
# traffic rivals the reduction's). Tests lower MIN_BLOCKS_PER_SPLIT to exercise many splits.
WGRAD_PROGRAMS_PER_SM = 2
MIN_BLOCKS_PER_SPLIT = 8
# What the interpreter (CPU tensors) assumes as SM count, so that tests reach several splits.
INTERPRETER_SM_COUNT = 4


@dataclass(frozen=True)
class KernelConfig:
    """One compile of one kernel: its name, tile constexprs (dtype-independent), warps, stages."""

    kernel: str
    tiles: tuple  # ((constexpr name, value), ...) without PRECISION and PIXELS_LAST (VEC included)
    num_warps: int
    num_stages: int

    def constexprs(self, precision: str) -> dict:
        out = dict(self.tiles)
        if "direct" not in self.kernel:
            out["PRECISION"] = precision
        if "nhwc" not in self.kernel:   # the NHWC kernels' tiles are laid out by their contiguity
            out["PIXELS_LAST"] = PIXELS_LAST
        return out


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _channel_tile(channels: int) -> int:
    """GEMM N tile over a channel count: the next power of two within 32..128 (then capped per
    dtype by MAX_CHANNEL_TILE). Below 32 (dense convs with few channels, rare) a 16-wide tile
    would leave most warps' MMAs idle, so 32 is the floor; 128 matches the widest MMA tiles."""
    return min(128, max(32, _pow2_at_least(channels)))


def uses_direct_kernels(groups: int, c_group: int, c_out_group: int) -> bool:
    return groups > 1 and min(c_group, c_out_group) < MIN_DOT_TILE


# --- channels-last (NHWC) kernels ---
# Elements in 16 bytes: the vector width of their loads and stores, and what every channel count
# per group and every stride must be a multiple of.
VEC = {torch.float32: 4, torch.bfloat16: 8, torch.float16: 8}
# Tiles, all checked by the compile gate (Triton 3.6 and 3.9, sm_80 and sm_90, no spills); the
# register figures are Triton 3.9's (sm_80 / sm_90), from perf/compile_report.py:
# - forward / input gradient, 16-bit: 128 pixels x (32, 64 or 128 channels: the next power of
#   two of the channels per group) x 64-channel reduction steps (128 B rows), 8 warps (4 at
#   32 channels): 186/124 registers at 128 x 128. At 4 warps 128 x 64 took 255 + 16 B of stack
#   (sm_80).
# - float32 (TF32 or "ieee", which runs its dots on FMA units with the operands in registers,
#   so it sets the limits): 128 x 64 at 8 warps; forward 32-channel steps (ieee 212/158
#   registers; 128 x 128 spilled 16 B on sm_80), input gradient 16-channel steps (at 32, ieee
#   spilled 16 B (sm_90 under 3.9, sm_80 under 3.6) and TF32 8 B (sm_80 under 3.6)).
# - weight gradient: 64 out x 64 in channels x 64 pixels (16-bit) / 32 (float32), 4 warps
#   (79..217 registers); the pixel reduction is split over programs as in the strided kernel.
NHWC_BLOCK_PIXELS = 128
NHWC_BLOCK_REDUCE = {torch.float32: 32, torch.bfloat16: 64, torch.float16: 64}
NHWC_INPUT_GRAD_REDUCE_FP32 = 16
NHWC_WGRAD_TILE = 64
NHWC_WGRAD_PIXELS = {torch.float32: 32, torch.bfloat16: 64, torch.float16: 64}
# 3 stages: at most 3 x (128 x 64 + 128 x 64) x 2 B = 96 KB of shared memory (sm_90's wgmma
# layouts; 64 KB on sm_80), inside both targets' limits.
NHWC_STAGES = 3


def nhwc_channels_ok(groups: int, c_group: int, c_out_group: int, dtype: torch.dtype) -> bool:
    """Whether the channel counts allow the NHWC kernels: dense dots (>= 16 channels per group
    on both sides) and every group's channels starting on a 16-byte boundary."""
    vec = VEC.get(dtype)
    return (vec is not None and min(c_group, c_out_group) >= MIN_DOT_TILE
            and c_group % vec == 0 and c_out_group % vec == 0)


def choose_configs(c_group: int, c_out_group: int, groups: int, dtype: torch.dtype,
                   capability: tuple = (9, 0), layout: str = "strided") -> dict:
    """{"forward", "input_grad", "weight_grad"} -> KernelConfig for a conv with Cg input and Cog
    output channels per group, for the strided kernels (``layout="strided"``: any strides) or the
    channels-last ones (``"nhwc"``: channel counts as :func:`nhwc_channels_ok` says). Depends only
    on channel counts per group (through powers of two and the 16-channel threshold), groups > 1,
    the dtype and the layout; every choice fits sm_80 and sm_90, so ``capability`` does not change
    it today (kept for the gate's interface)."""
    del capability
    if layout == "nhwc":
        return _nhwc_configs(c_group, c_out_group, dtype)
    if layout != "strided":
        raise ValueError(f"layout must be 'strided' or 'nhwc', got {layout!r}")
    if uses_direct_kernels(groups, c_group, c_out_group):
        tiles = (("BLOCK_M", DIRECT_BLOCK_PIXELS), ("BLOCK_N", DIRECT_BLOCK_CHANNELS))
        return {
            "forward": KernelConfig("conv2d_forward_direct_kernel", tiles, DIRECT_WARPS, 2),
            "input_grad": KernelConfig("conv2d_input_grad_direct_kernel", tiles, DIRECT_WARPS, 2),
            "weight_grad": KernelConfig(
                "conv2d_weight_grad_direct_kernel",
                (("BLOCK_P", DIRECT_BLOCK_PIXELS), ("BLOCK_N", DIRECT_BLOCK_CHANNELS)), DIRECT_WARPS, 2),
        }
    flat = c_group < MIN_DOT_TILE
    cap = MAX_CHANNEL_TILE[dtype]
    fwd_n = min(cap, _channel_tile(c_out_group))
    dgrad_n = min(cap, _channel_tile(c_group))
    wgrad_o = min(64, _channel_tile(c_out_group))
    block_m, block_k, block_c = BLOCK_PIXELS[dtype], BLOCK_REDUCE[dtype], WGRAD_BLOCK_COLUMNS[dtype]

    def warps(tile_values, input_grad=False):
        # Measured with the compile gate (Triton 3.6 and 3.9, sm_80 and sm_90): 4 warps up to
        # 64 x 64 tiles and 8 for 64 x 128 (4 warps: 255 registers + 8 B of stack under 3.6,
        # sm_80), except for the input gradient: 2 warps at 64 x 32 (at 4, ptxas capped the
        # float32 kernel at 96 registers and spilled 8 B, 3.9 sm_80) and 8 for float32 64 x 64
        # (4 warps: capped at 128 registers, 8 B, 3.6 sm_80). The float32 forward at 64 x 64
        # stays at 4 (8 warps: capped at 80 registers, 8 B, 3.6 sm_90); the 16-bit FLAT_K
        # forward at 64 x 32 took 255 registers with 2 warps, 128-188 with 4.
        if input_grad and tile_values <= 64 * 32:
            return 2
        if tile_values >= 64 * 128 or (input_grad and dtype == torch.float32):
            return 8
        return 4

    return {
        "forward": KernelConfig(
            "conv2d_forward_kernel",
            (("FLAT_K", flat), ("BLOCK_M", block_m), ("BLOCK_N", fwd_n), ("BLOCK_K", block_k)),
            warps(block_m * fwd_n), NUM_STAGES),
        "input_grad": KernelConfig(
            "conv2d_input_grad_kernel",
            (("BLOCK_M", block_m), ("BLOCK_N", dgrad_n), ("BLOCK_K", block_k)),
            warps(block_m * dgrad_n, input_grad=True), NUM_STAGES),
        "weight_grad": KernelConfig(
            "conv2d_weight_grad_kernel",
            (("FLAT_K", flat), ("BLOCK_O", wgrad_o), ("BLOCK_C", block_c), ("BLOCK_P", WGRAD_BLOCK_PIXELS)),
            # 64 output channels at 4 warps: 252 registers (16-bit) or spills (float32 "ieee").
            8 if wgrad_o == 64 else 4, NUM_STAGES),
    }


def _nhwc_configs(c_group: int, c_out_group: int, dtype: torch.dtype) -> dict:
    if not nhwc_channels_ok(2, c_group, c_out_group, dtype):
        raise ValueError(f"no NHWC kernels for {c_group} -> {c_out_group} channels per group in {dtype}")
    vec = VEC[dtype]
    half = dtype != torch.float32

    def dense(kernel, channels, reduce):
        block_n = min(128, _channel_tile(channels)) if half else 64
        tiles = (("BLOCK_M", NHWC_BLOCK_PIXELS), ("BLOCK_N", block_n), ("BLOCK_K", reduce), ("VEC", vec))
        return KernelConfig(kernel, tiles, 4 if block_n == 32 else 8, NHWC_STAGES)

    return {
        "forward": dense("conv2d_forward_nhwc_kernel", c_out_group, NHWC_BLOCK_REDUCE[dtype]),
        "input_grad": dense("conv2d_input_grad_nhwc_kernel", c_group,
                            NHWC_BLOCK_REDUCE[dtype] if half else NHWC_INPUT_GRAD_REDUCE_FP32),
        "weight_grad": KernelConfig(
            "conv2d_weight_grad_nhwc_kernel",
            (("BLOCK_O", NHWC_WGRAD_TILE), ("BLOCK_C", NHWC_WGRAD_TILE), ("BLOCK_P", NHWC_WGRAD_PIXELS[dtype]),
             ("VEC", vec)), 4, NHWC_STAGES),
    }


# Channel counts that reach every branch of choose_configs: both sides of the 16 threshold and
# every power-of-two bucket of _channel_tile.
_CHANNEL_CLASSES = (1, 3, 15, 16, 17, 32, 33, 64, 65, 128, 129, 2048)
_TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Pointer arguments and their element types ("X": the tensors' dtype).
_POINTER_TYPES = {"x_ptr": "X", "w_ptr": "X", "bias_ptr": "X", "y_ptr": "X", "gy_ptr": "X",
                  "gx_ptr": "X", "partial_ptr": "fp32"}


def _precisions(dtype: torch.dtype):
    return ("ieee", "tf32") if dtype == torch.float32 else ("ieee",)


def gate_configs(capability: int) -> list:
    """Every compile the launchers of this module can request on a GPU of this capability (80 or
    90), over float32 (TF32 on and off), bfloat16 and float16 and every channel count.

    Each entry: {"kernel", "signature" (every argument in order, Triton types), "constexprs",
    "num_warps", "num_stages", "label"}. Compile without maxnreg (the launchers pass none)."""
    seen = {}
    for dtype, tt in _TRITON_TYPES.items():
        for groups in (1, 2):
            for c_group in _CHANNEL_CLASSES:
                for c_out_group in _CHANNEL_CLASSES:
                    configs = list(choose_configs(c_group, c_out_group, groups, dtype,
                                                  (capability // 10, capability % 10)).values())
                    if nhwc_channels_ok(groups, c_group, c_out_group, dtype):
                        configs += choose_configs(c_group, c_out_group, groups, dtype,
                                                  (capability // 10, capability % 10), "nhwc").values()
                    for cfg in configs:
                        # The direct kernels have no dot, hence no PRECISION variants.
                        for precision in (_precisions(dtype) if "direct" not in cfg.kernel else ("ieee",)):
                            seen.setdefault((tt, precision, cfg), None)
    out = []
    for tt, precision, cfg in seen:
        fn = globals()[cfg.kernel]
        constexprs = cfg.constexprs(precision)
        signature = {}
        for name in fn.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name in _POINTER_TYPES:
                element = _POINTER_TYPES[name]
                signature[name] = "*" + (tt if element == "X" else element)
            else:
                signature[name] = "i32"
        tiles = " ".join(f"{k.replace('BLOCK_', 'B')}{int(v)}" for k, v in cfg.tiles)
        label = f"{cfg.kernel.replace('conv2d_', '').replace('_kernel', '')} {tt}"
        label += f" {precision}" if "PRECISION" in constexprs and tt == "fp32" else ""
        out.append({"kernel": cfg.kernel, "signature": signature, "constexprs": constexprs,
                    "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                    "label": f"{label} {tiles} w{cfg.num_warps}"})
    return out


@functools.lru_cache(maxsize=None)
def _cuda_device_info(index: int):
    props = torch.cuda.get_device_properties(index)
    return props.multi_processor_count, (props.major, props.minor)


def _device_info(t: torch.Tensor):
    """(sm_count, capability) of t's device; the interpreter's stand-in on the CPU."""
    if t.is_cuda:
        return _cuda_device_info(t.device.index if t.device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SM_COUNT, (9, 0)


class Launch(NamedTuple):
    kernel: str
    constexprs: dict
    num_warps: int
    num_stages: int

    def options(self) -> dict:
        """Launch keywords besides the constexprs (the interpreter takes none). No maxnreg:
        with ptxas allowed 255 registers, float32 "ieee" configurations that fit in 96-218
        registers by default spilled 32-120 B (Triton 3.9, sm_80), so the gate compiles
        without it too."""
        return {} if interpreting() else {"num_warps": self.num_warps, "num_stages": self.num_stages}


# GATEDRNN_TRITON_CONV_LAYOUT: "auto" (default): the NHWC kernels wherever x already has a unit
# channel stride and aligned strides (channels_last tensors), the strided kernels elsewhere;
# "strided": never the NHWC kernels; "nhwc": also for other layouts, copying x (and grad_y) to
# channels_last first, an extra pass over them, which a GPU run has yet to weigh against the
# strided kernels' element-by-element loads (perf/bench_conv.py --gpu measures both).
LAYOUTS = ("auto", "strided", "nhwc")


def nhwc_strides_ok(t: torch.Tensor) -> bool:
    """Whether t (N, C, H, W) can be read by the NHWC kernels as it is: unit channel stride, the
    other strides and the start multiples of 16 bytes, every stride / VEC within int32."""
    vec = VEC.get(t.dtype)
    if vec is None or (t.stride(1) != 1 and t.shape[1] > 1):
        return False
    start = t.storage_offset() * t.element_size() if t.device.type == "meta" else t.data_ptr()
    return start % 16 == 0 and all(s % vec == 0 and 0 <= s // vec < 2 ** 31 for s in _nhwc_strides(t))


def _nhwc_strides(t: torch.Tensor) -> tuple:
    """(batch, row, column) strides of t (N, C, H, W), 0 for a dimension of size 1 (its index is
    always 0; torch leaves any stride there, e.g. 1 in a channels_last (N, C, 1, 1))."""
    return tuple(t.stride(d) if t.shape[d] > 1 else 0 for d in (0, 2, 3))


def conv_layout(x: torch.Tensor, w: torch.Tensor, groups: int) -> str:
    """"nhwc" or "strided": which kernels run a conv of x (N, C_in, H, W) by w (C_out, C_in/groups,
    KH, KW), following GATEDRNN_TRITON_CONV_LAYOUT (see LAYOUTS)."""
    mode = os.environ.get("GATEDRNN_TRITON_CONV_LAYOUT", "auto")
    if mode not in LAYOUTS:
        raise ValueError(f"GATEDRNN_TRITON_CONV_LAYOUT must be one of {LAYOUTS}, got {mode!r}")
    if mode == "strided" or not nhwc_channels_ok(groups, w.shape[1], w.shape[0] // groups, x.dtype):
        return "strided"
    return "nhwc" if mode == "nhwc" or nhwc_strides_ok(x) else "strided"


def launch_plan(x: torch.Tensor, w: torch.Tensor, groups: int, which: str, capability=None,
                layout=None) -> Launch:
    """What the launcher of ``which`` ("forward", "input_grad", "weight_grad") compiles for
    x (N, C_in, H, W) and w (C_out, C_in/groups, KH, KW): the launchers call this, so the tests
    can hold it against :func:`gate_configs`. ``capability`` overrides x's device's, ``layout``
    the choice of :func:`conv_layout`."""
    if capability is None:
        capability = _device_info(x)[1]
    layout = layout or conv_layout(x, w, groups)
    cfg = choose_configs(w.shape[1], w.shape[0] // groups, groups, x.dtype, capability, layout)[which]
    return Launch(cfg.kernel, cfg.constexprs(dot_precision(x.dtype)), cfg.num_warps, cfg.num_stages)


# ----------------------------------------------------------------------------------------------
# Launchers (the backend contract)
# ----------------------------------------------------------------------------------------------
def _output_size(size, kernel, stride, dilation, pad_begin, pad_end):
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _geometry(x, w, stride, padding, dilation):
    """Common integer arguments: (H, W, H_out, W_out) and the tuple passed to every kernel."""
    H, W = x.shape[2], x.shape[3]
    KH, KW = w.shape[2], w.shape[3]
    H_out = _output_size(H, KH, stride[0], dilation[0], padding[0], padding[1])
    W_out = _output_size(W, KW, stride[1], dilation[1], padding[2], padding[3])
    conv = (stride[0], stride[1], padding[0], padding[2], dilation[0], dilation[1], KH, KW)
    return H, W, H_out, W_out, conv


def _output_format(x: torch.Tensor, w: torch.Tensor, layout: str) -> torch.memory_format:
    """Layout of y and grad_x: channels_last where the NHWC kernels run or where torch's conv2d
    would return it (x or w channels_last: the op layer's rule, see gatedrnn/ops/conv.py), so
    that the op does not copy what the strided kernels can write in place."""
    if layout == "nhwc" or is_channels_last(x) or is_channels_last(w):
        return torch.channels_last
    return torch.contiguous_format


def _as_nhwc(t: torch.Tensor) -> torch.Tensor:
    """t as the NHWC kernels read it: itself where it already can be (nhwc_strides_ok), else a
    channels_last copy (a fresh allocation: aligned, whatever t's offset)."""
    return t if nhwc_strides_ok(t) else t.clone(memory_format=torch.channels_last)


def _nhwc_arguments(*tensors) -> tuple:
    """The kernels' ``s*_v`` arguments: each tensor's (batch, row, column) strides / VEC."""
    vec = VEC[tensors[0].dtype]
    return tuple(s // vec for t in tensors for s in _nhwc_strides(t))


def _ohwi(w: torch.Tensor) -> torch.Tensor:
    """w (C_out, Cg, KH, KW) as the NHWC kernels read it: (C_out, KH, KW, Cg) contiguous and
    16-byte aligned (a view of a channels_last weight, else a copy)."""
    packed = w.permute(0, 2, 3, 1).contiguous()
    return packed if packed.data_ptr() % 16 == 0 else packed.clone()


def _input_grad_weight(w: torch.Tensor, groups: int, precision: str) -> torch.Tensor:
    """w (C_out, Cg, KH, KW) as the NHWC input-gradient kernel reads it with dots of
    ``precision``: for "tf32" (groups, KH, KW, Cg, Cog) contiguous and 16-byte aligned, output
    channels innermost (a copy each call: the weight is small beside the activations), else as
    the other NHWC kernels (``_ohwi``)."""
    if precision != "tf32":
        return _ohwi(w)
    C_out, C_group, KH, KW = w.shape
    packed = w.view(groups, C_out // groups, C_group, KH, KW).permute(0, 3, 4, 2, 1).contiguous()
    return packed if packed.data_ptr() % 16 == 0 else packed.clone()


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """x (N, C_in, H, W), w (C_out, C_in/groups, KH, KW), b (C_out,) or None; stride/dilation
    (h, w), padding (top, bottom, left, right) -> y (N, C_out, H_out, W_out): channels_last where
    the NHWC kernels run (:func:`conv_layout`), else contiguous."""
    N = x.shape[0]
    C_out, C_group = w.shape[0], w.shape[1]
    C_out_group = C_out // groups
    H, W, H_out, W_out, conv = _geometry(x, w, stride, padding, dilation)
    layout = conv_layout(x, w, groups)
    y = empty(N, C_out, H_out, W_out, dtype=x.dtype, device=x.device, memory_format=_output_format(x, w, layout))
    if y.numel() == 0:
        return y
    # The kernels read the bias with unit stride (a strided view is copied: C_out values).
    bias = b.contiguous() if b is not None else torch.zeros(C_out, dtype=x.dtype, device=x.device)
    plan = launch_plan(x, w, groups, "forward", layout=layout)
    meta = plan.constexprs
    M = N * H_out * W_out
    if layout == "nhwc":
        vec = VEC[x.dtype]
        x = _as_nhwc(x)
        grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C_out_group, meta["BLOCK_N"]), groups)
        conv2d_forward_nhwc_kernel[grid](x, _ohwi(w), bias, y, H, W, H_out, W_out, M, C_group // vec,
                                         C_out_group // vec, *conv, *_nhwc_arguments(x, y), **meta,
                                         **plan.options())
        return y
    strides = (*x.stride(), *w.stride(), *y.stride())
    if plan.kernel == "conv2d_forward_direct_kernel":
        grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C_out, meta["BLOCK_N"]))
        conv2d_forward_direct_kernel[grid](x, w, bias, y, H, W, H_out, W_out, M, C_out, C_group, C_out_group,
                                           *conv, *strides, **meta, **plan.options())
    else:
        grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C_out_group, meta["BLOCK_N"]), groups)
        conv2d_forward_kernel[grid](x, w, bias, y, H, W, H_out, W_out, M, C_group, C_out_group,
                                    *conv, *strides, **meta, **plan.options())
    return y


def _input_grad(grad_y, x, w, stride, padding, dilation, groups, layout):
    """grad_x; with layout "nhwc", grad_y and x as the NHWC kernels read them (_as_nhwc)."""
    N, C_in = x.shape[0], x.shape[1]
    C_out, C_group = w.shape[0], w.shape[1]
    C_out_group = C_out // groups
    H, W, H_out, W_out, conv = _geometry(x, w, stride, padding, dilation)
    grad_x = empty(*x.shape, dtype=x.dtype, device=x.device, memory_format=_output_format(x, w, layout))
    plan = launch_plan(x, w, groups, "input_grad", layout=layout)
    meta = plan.constexprs
    strides = (*grad_y.stride(), *w.stride(), *grad_x.stride())
    if plan.kernel == "conv2d_input_grad_direct_kernel":
        M = N * H * W
        grid = (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(C_in, meta["BLOCK_N"]))
        conv2d_input_grad_direct_kernel[grid](grad_y, w, grad_x, H, W, H_out, W_out, M, C_in, C_group,
                                              C_out_group, *conv, *strides, **meta, **plan.options())
        return grad_x
    sh, sw = stride
    H_phase, W_phase = triton.cdiv(H, sh), triton.cdiv(W, sw)
    M_phase = N * H_phase * W_phase
    # Taps reaching one phase are spaced stride / gcd(stride, dilation) apart.
    step_h, step_w = sh // math.gcd(sh, dilation[0]), sw // math.gcd(sw, dilation[1])
    n_ctiles = triton.cdiv(C_group, meta["BLOCK_N"])
    grid = (triton.cdiv(M_phase, meta["BLOCK_M"]), groups * n_ctiles, sh * sw)
    if layout == "nhwc":
        vec = VEC[x.dtype]
        conv2d_input_grad_nhwc_kernel[grid](
            grad_y, _input_grad_weight(w, groups, meta["PRECISION"]), grad_x, H, W, H_out, W_out, M_phase,
            H_phase, W_phase, C_group // vec, C_out_group // vec, *conv, step_h, step_w, n_ctiles,
            *_nhwc_arguments(grad_y, grad_x), **meta, **plan.options())
        return grad_x
    conv2d_input_grad_kernel[grid](grad_y, w, grad_x, H, W, H_out, W_out, M_phase, H_phase, W_phase, C_group,
                                   C_out_group, *conv, step_h, step_w, n_ctiles, *strides, **meta,
                                   **plan.options())
    return grad_x


def _split_pixels(P: int, block_p: int, tiles: int, sm_count: int):
    """(SPLIT, pixels per split): enough programs to fill the device, each reducing at least
    MIN_BLOCKS_PER_SPLIT pixel tiles; chunks are whole pixel tiles."""
    blocks = triton.cdiv(P, block_p)
    wanted = triton.cdiv(WGRAD_PROGRAMS_PER_SM * sm_count, tiles)
    split = max(1, min(wanted, blocks // max(1, MIN_BLOCKS_PER_SPLIT)))
    per_split = triton.cdiv(blocks, split) * block_p
    return triton.cdiv(P, per_split), per_split


def _weight_grad(grad_y, x, w, stride, padding, dilation, groups, layout):
    """grad_w; with layout "nhwc", grad_y and x as the NHWC kernels read them (_as_nhwc)."""
    N = x.shape[0]
    C_out, C_group, KH, KW = w.shape
    C_out_group = C_out // groups
    H, W, H_out, W_out, conv = _geometry(x, w, stride, padding, dilation)
    P = N * H_out * W_out
    columns = C_group * KH * KW
    plan = launch_plan(x, w, groups, "weight_grad", layout=layout)
    meta = plan.constexprs
    sm_count = _device_info(x)[0]
    if layout == "nhwc":
        vec = VEC[x.dtype]
        n_ctiles = triton.cdiv(C_group, meta["BLOCK_C"])
        row_tiles = groups * triton.cdiv(C_out_group, meta["BLOCK_O"])
        split, per_split = _split_pixels(P, meta["BLOCK_P"], KH * KW * n_ctiles * row_tiles, sm_count)
        partial = empty(split, C_out, KH, KW, C_group, dtype=torch.float32, device=x.device)
        conv2d_weight_grad_nhwc_kernel[(KH * KW * n_ctiles, row_tiles, split)](
            grad_y, x, partial, H, W, H_out, W_out, P, per_split, C_group // vec, C_out_group // vec, C_out,
            n_ctiles, *conv, *_nhwc_arguments(grad_y, x), **meta, **plan.options())
        # Fixed-order sum, as below; (C_out, KH, KW, Cg) is the weight's channels_last order.
        total = partial[0] if split == 1 else partial.sum(dim=0)
        return total.to(w.dtype).permute(0, 3, 1, 2)
    strides = (*grad_y.stride(), *x.stride())
    if plan.kernel == "conv2d_weight_grad_direct_kernel":
        n_tiles = triton.cdiv(C_out, meta["BLOCK_N"])
        split, per_split = _split_pixels(P, meta["BLOCK_P"], n_tiles * columns, sm_count)
        partial = empty(split, C_out, columns, dtype=torch.float32, device=x.device)
        conv2d_weight_grad_direct_kernel[(n_tiles, columns, split)](
            grad_y, x, partial, H, W, H_out, W_out, P, per_split, C_out, C_group, C_out_group, *conv, *strides,
            **meta, **plan.options())
    else:
        if meta["FLAT_K"]:
            n_ctiles = triton.cdiv(columns, meta["BLOCK_C"])
            col_tiles = n_ctiles
        else:
            n_ctiles = triton.cdiv(C_group, meta["BLOCK_C"])
            col_tiles = KH * KW * n_ctiles
        row_tiles = groups * triton.cdiv(C_out_group, meta["BLOCK_O"])
        split, per_split = _split_pixels(P, meta["BLOCK_P"], col_tiles * row_tiles, sm_count)
        partial = empty(split, C_out, columns, dtype=torch.float32, device=x.device)
        conv2d_weight_grad_kernel[(col_tiles, row_tiles, split)](
            grad_y, x, partial, H, W, H_out, W_out, P, per_split, C_group, C_out_group, C_out, n_ctiles,
            *conv, *strides, **meta, **plan.options())
    # Fixed-order sum of the per-chunk partials (deterministic for a given device and shape).
    total = partial[0] if split == 1 else partial.sum(dim=0)
    return total.to(w.dtype).view(w.shape)


def conv2d_backward(grad_y, x, w, stride, padding, dilation, groups, output_mask):
    """grad_y (N, C_out, H_out, W_out), x, w as in :func:`conv2d_forward`; output_mask =
    (input gradient wanted, weight gradient wanted, bias gradient wanted) -> (grad_x (N, C_in, H, W)
    | empty (0,), grad_w (C_out, C_in/groups, KH, KW) | empty (0,), grad_b (C_out,) | empty (0,)).
    grad_x and grad_w are channels_last where the NHWC kernels run (:func:`conv_layout`)."""
    grad_b = w.new_empty((0,))
    if output_mask[2]:
        grad_b = grad_y.sum(dim=(0, 2, 3), dtype=torch.float32).to(w.dtype)
    empty_grad = grad_y.numel() == 0 or x.numel() == 0
    layout = conv_layout(x, w, groups)
    if not empty_grad and layout == "nhwc":
        grad_y, x = _as_nhwc(grad_y), _as_nhwc(x)   # once for both gradients
    grad_x = x.new_empty((0,))
    if output_mask[0]:
        grad_x = (torch.zeros_like(x, memory_format=torch.contiguous_format) if empty_grad else
                  _input_grad(grad_y, x, w, stride, padding, dilation, groups, layout))
    grad_w = w.new_empty((0,))
    if output_mask[1]:
        grad_w = (torch.zeros(w.shape, dtype=w.dtype, device=w.device) if empty_grad else
                  _weight_grad(grad_y, x, w, stride, padding, dilation, groups, layout))
    return grad_x, grad_w, grad_b
