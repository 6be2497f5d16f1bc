"""Shared machinery of the Triton recurrences: the fused persistent kernels, the grid barrier,
device queries, launch-configuration choice and the torch-side launch helpers.

All cells (LSTM, GRU in both reset conventions, Elman RNN tanh/relu) share one forward and one
backward kernel whose cell math is selected by the ``CELL`` constexpr: the persistent machinery
(batch/hidden tiling, the h exchange, the barrier, length/reverse masking) is identical for
every cell and written once here; ``lstm.py``, ``gru.py`` and ``rnn.py`` hold the launchers.

Execution modes (chosen by :func:`choose_config`, logged at debug level):

* ``persistent`` with ``SYNC_CTA``: one program owns every hidden unit of its batch tile and
  runs all T steps in one launch (single-program mode; interpreter-safe).
* ``persistent`` with ``SYNC_GRID``: the hidden units of a batch tile are split over
  co-resident programs that exchange h (forward) or the gate gradients (backward) through
  global memory with a spin barrier per step (split-hidden mode; needs a co-resident grid, so
  it is launched cooperatively and never on the interpreter).
* ``per_step``: the same kernel launched once per step (and phase); the launch boundary is the
  barrier. The interpreter-safe form of the split-hidden mode.
* ``gemm``: per step, the recurrent product as one tiled GEMM (128 x 128 tiles over all of
  B x G*H), then the fused gate math reading that product (the recurrence kernels' body with
  ``RECURRENT=1``): masking and carries only. Fallback when the split grid cannot be
  co-resident (B = 256 with H >= 768 and larger): there the per-step launches of the in-kernel
  product ran 64 x 64 tiles that re-read h and W_hh from L2 (forward 0.24-0.87 of cuDNN on the
  H200, most rows below 0.7), where a GEMM's tiles read each W_hh element once per step. All
  steps run in one cooperative launch (``recurrent_gemm_*_kernel``: one program per SM shares
  out the GEMM tiles, a grid barrier, the gate tiles, a grid barrier); the interpreter runs it
  with one program. Its two-launches-a-step form (``recurrent_matmul_kernel``, then the
  recurrence kernel; mode ``gemm_per_step``) stays for comparison. Not yet timed on a GPU.

State exchanged between programs (h forward, gate gradients backward) lives in global buffers
in the dot dtype (what the dot consumes), with row stride HP (H rounded up to the hidden tile,
a multiple of 16, for aligned vector loads), read with ``.cg`` loads (L2, bypassing a possibly
stale L1); each program's own carries (h, c, dh, dc) stay float32 in registers. All gates of a
program's units are stacked into one dot.

W_hh: where a program's slice fits (``with_resident_weights``: 16-row batch tiles, up to 128 KB
a direction, 64 KB in float32: the LSTM forward up to H = 1024 in bf16/fp16, 256 in float32),
the program loads it once, before the time loop, as RESIDENT chunks of K, and each step's
product is one batched dot over the chunks (a warp each) summed in order: the slice sits in
shared memory for the whole launch and no step reads W_hh from memory (``RESIDENT`` constexpr;
tests/test_compile_gate.py checks the loads' placement in the compiled kernel). Elsewhere W_hh
chunks are re-read every step from L2 (``evict_last``) in a pipelined K loop: per-gate
register-resident tiles spilled, and larger slices do not fit. Measurements behind the tile
choices: perf/RESULTS.md (the H200 table; the resident form is not yet timed).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ._launch import dot_precision, empty, interpreting

LOG = logging.getLogger("gatedrnn.kernels")

# Cell codes (the CELL constexpr).
CELL_LSTM = 0
CELL_GRU = 1                # reset_after=True (torch/cuDNN convention)
CELL_GRU_RESET_BEFORE = 2   # reset_after=False
CELL_RNN_TANH = 3
CELL_RNN_RELU = 4
CELL_NAMES = {CELL_LSTM: "lstm", CELL_GRU: "gru", CELL_GRU_RESET_BEFORE: "gru_reset_before",
              CELL_RNN_TANH: "rnn_tanh", CELL_RNN_RELU: "rnn_relu"}
NUM_GATES = {CELL_LSTM: 4, CELL_GRU: 3, CELL_GRU_RESET_BEFORE: 3, CELL_RNN_TANH: 1,
             CELL_RNN_RELU: 1}
WORKSPACE_WIDTH = {CELL_LSTM: 5, CELL_GRU: 4, CELL_GRU_RESET_BEFORE: 3, CELL_RNN_TANH: 1,
                   CELL_RNN_RELU: 1}

# SYNC constexpr: what separates two steps inside one launch.
SYNC_NONE = 0   # per-step launches: the kernel boundary is the barrier
SYNC_CTA = 1    # one program per batch tile owns all hidden units: a CTA barrier suffices
SYNC_GRID = 2   # split hidden: spin barrier among the programs of a batch tile

# Smallest tile edge tl.dot accepts on NVIDIA (M, N, K >= 16).
MIN_DOT_TILE = 16


# ----------------------------------------------------------------------------------------------
# Device-side helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh through exp: portable across Triton 3.6..3.9 and the interpreter (no libdevice).
    return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0


@triton.jit
def _sync(sem_ptr, group_size, is_leader, SYNC: tl.constexpr):
    """Barrier between two steps. SYNC_GRID: arrive/flip barrier on one uint32 word per batch
    tile (the scheme of torch/_inductor x_grid_barrier): every program adds 1 except the leader,
    which adds 0x80000000 - (group_size - 1), so the word's top bit flips exactly when all have
    arrived; the word is reusable without reset. Needs all programs of the group co-resident."""
    if SYNC == 1:
        tl.debug_barrier()
    if SYNC == 2:
        tl.debug_barrier()  # all threads' stores issued before one thread releases
        sem = sem_ptr.to(tl.pointer_type(tl.uint32))
        one = tl.full([], 1, tl.uint32)
        expected = group_size.to(tl.uint32)
        if is_leader:
            arrive = 0x80000000 - (expected - one)
        else:
            arrive = one
        old = tl.atomic_add(sem, arrive, sem="release")
        flipped = False
        while not flipped:
            now = tl.atomic_add(sem, 0, sem="acquire")
            flipped = ((old ^ now) & 0x80000000) != 0
        tl.debug_barrier()


@triton.jit
def _stacked_matmul(src_rows, src_ok, K, w_ptr, stride_k, col_offs, col_ok,
                    BLOCK_B: tl.constexpr, NCOL: tl.constexpr, BLOCK_K: tl.constexpr,
                    PRECISION: tl.constexpr):
    """acc[b, j] = sum_k src[b, k] * w[k * stride_k + col_offs[j]]  (float32 (BLOCK_B, NCOL)).

    src_rows: (BLOCK_B,) pointers to rows of the exchanged state (read through L2, .cg).
    All gates of the program's units are stacked along NCOL so that one dot covers them: with
    a narrow hidden tile, per-gate dots of N=16 left most warps computing replicated MMA tiles
    and holding replicated W operands (255 registers; perf/compile_report.py)."""
    acc = tl.zeros((BLOCK_B, NCOL), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(src_rows[:, None] + ks[None, :], mask=src_ok[:, None] & k_ok[None, :],
                    other=0.0, cache_modifier=".cg")
        w = tl.load(w_ptr + ks[:, None] * stride_k + col_offs[None, :],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0,
                    eviction_policy="evict_last")
        acc = tl.dot(a.to(w.dtype), w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _resident_weights(w_ptr, stride_k, K, col_offs, col_ok, CHUNKS: tl.constexpr,
                      BLOCK_K: tl.constexpr):
    """A program's slice of W_hh, w[k * stride_k + col_offs[j]] for k < K (zero past K and in
    invalid columns), as (CHUNKS, BLOCK_K, NCOL): chunk c holds rows c*BLOCK_K ... Loaded once,
    before the time loop. As a loop-invariant dot operand it stays in shared memory for the whole
    launch (the compiler hoists its allocation out of the loop; tests/test_compile_gate.py
    checks), so a step reads W_hh from shared memory instead of streaming it from L2."""
    ks = tl.arange(0, CHUNKS)[:, None, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :, None]
    return tl.load(w_ptr + ks * stride_k + col_offs[None, None, :],
                   mask=(ks < K) & col_ok[None, None, :], other=0.0)


@triton.jit
def _resident_matmul(src_rows, src_ok, K, w_res, CHUNKS: tl.constexpr, BLOCK_K: tl.constexpr,
                     PRECISION: tl.constexpr):
    """acc[b, j] = sum_k src[b, k] * W[k, j] (float32 (BLOCK_B, NCOL)) over the resident slice
    w_res (_resident_weights). One batched dot over the K chunks, then a sum over them: the MMA
    layout puts the chunks (the batch dimension) on different warps, so each warp holds its
    own chunk of W and of the exchanged state instead of every warp holding all of K. Chunks
    are summed in a fixed order (deterministic)."""
    ks = tl.arange(0, CHUNKS)[:, None, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, None, :]
    a = tl.load(src_rows[None, :, None] + ks, mask=src_ok[None, :, None] & (ks < K), other=0.0,
                cache_modifier=".cg")
    return tl.sum(tl.dot(a.to(w_res.dtype), w_res, input_precision=PRECISION), axis=0)


@triton.jit
def _recurrent_product(src_rows, src_ok, K, w_ptr, stride_k, col_offs, col_ok, w_res,
                       BLOCK_B: tl.constexpr, NCOL: tl.constexpr, BLOCK_K: tl.constexpr,
                       PRECISION: tl.constexpr, RESIDENT: tl.constexpr):
    """acc[b, j] = sum_k src[b, k] * w[k * stride_k + col_offs[j]] (float32 (BLOCK_B, NCOL)):
    from the on-chip slice w_res when RESIDENT (its number of K chunks) > 0, else streaming W
    from L2 chunk by chunk (_stacked_matmul; w_res unused)."""
    if RESIDENT > 0:
        acc = _resident_matmul(src_rows, src_ok, K, w_res, RESIDENT, BLOCK_K, PRECISION)
    else:
        acc = _stacked_matmul(src_rows, src_ok, K, w_ptr, stride_k, col_offs, col_ok, BLOCK_B,
                              NCOL, BLOCK_K, PRECISION)
    return acc


@triton.jit
def _store_gate_grad(dg_at, step_at, value, vmask, mask, RECURRENT: tl.constexpr):
    """Store a gate gradient (zero where the step lies past a row's length) at its time step
    and, in the GEMM per-step mode, also in the step's (B, G*HP) buffer that the next step's
    recurrent GEMM reads (row-indexed: with reverse and lengths, rows sit at different t)."""
    v = tl.where(vmask, value, 0.0).to(dg_at.dtype.element_ty)
    tl.store(dg_at, v, mask=mask)
    if RECURRENT == 1:
        tl.store(step_at, v, mask=mask)


@triton.jit
def _matmul_tile(tile, a_ptr, w_ptr, c_ptr, M, N, K, lda, ldw, ldc,
                 W_TRANSPOSED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """One (BLOCK_M, BLOCK_N) tile of c = a @ w^T or a @ w (see recurrent_matmul_kernel).

    Tiles are numbered M-fastest so those running together share one W tile: W_hh (64 MB in
    float32 at H = 2048, more than the H200's L2) streams from HBM once per step, while the
    small a (B rows) stays in L2. a is read through L2 (.cg): in the persistent GEMM mode other
    programs wrote it in this launch, after this SM may have cached an older copy in L1."""
    m_tiles = tl.cdiv(M, BLOCK_M)
    pid_m = tile % m_tiles
    pid_n = tile // m_tiles
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = ms < M
    n_ok = ns < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_ptr + ms[:, None] * lda + ks[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0, cache_modifier=".cg")
        if W_TRANSPOSED:
            w = tl.load(w_ptr + ns[None, :] * ldw + ks[:, None],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        else:
            w = tl.load(w_ptr + ks[:, None] * ldw + ns[None, :],
                        mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    tl.store(c_ptr + ms[:, None] * ldc + ns[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _matmul_tiles(first, stride, a_ptr, w_ptr, c_ptr, M, N, K, lda, ldw, ldc,
                  W_TRANSPOSED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """Tiles first, first + stride, ... of c = a @ w^T or a @ w: one program's share of the
    step's recurrent product in the persistent GEMM mode."""
    n_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    for tile in range(first, n_tiles, stride):
        _matmul_tile(tile, a_ptr, w_ptr, c_ptr, M, N, K, lda, ldw, ldc, W_TRANSPOSED, BLOCK_M,
                     BLOCK_N, BLOCK_K, PRECISION)


@triton.jit
def recurrent_matmul_kernel(a_ptr, w_ptr, c_ptr, M, N, K, lda, ldw, ldc,
                            W_TRANSPOSED: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            PRECISION: tl.constexpr):
    """c[m, n] = sum_k a[m, k] * w[n, k] (W_TRANSPOSED: w is (N, K)) or a[m, k] * w[k, n]
    (w is (K, N)), float32 out: the recurrent product of one step in the GEMM per-step mode
    (forward h @ W_hh^T; backward gate gradients @ W_hh). a, w: dot dtype, row-major with row
    strides lda, ldw; c: float32, row stride ldc. No split over K: deterministic. One program
    per (BLOCK_M, BLOCK_N) tile, M-fastest (_matmul_tile)."""
    _matmul_tile(tl.program_id(0), a_ptr, w_ptr, c_ptr, M, N, K, lda, ldw, ldc, W_TRANSPOSED,
                 BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)


@triton.jit
def _split4(acc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(BLOCK_B, 4*BLOCK_H) with gate-major columns -> four (BLOCK_B, BLOCK_H)."""
    x = tl.permute(tl.reshape(acc, (BLOCK_B, 4, BLOCK_H)), (0, 2, 1))
    x = tl.reshape(x, (BLOCK_B, BLOCK_H, 2, 2))   # [..., a, b] is gate 2a + b
    lo, hi = tl.split(x)
    g0, g2 = tl.split(lo)
    g1, g3 = tl.split(hi)
    return g0, g1, g2, g3


@triton.jit
def _split2(acc, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(BLOCK_B, 2*BLOCK_H) with gate-major columns -> two (BLOCK_B, BLOCK_H)."""
    x = tl.permute(tl.reshape(acc, (BLOCK_B, 2, BLOCK_H)), (0, 2, 1))
    return tl.split(x)


@triton.jit
def _gate_columns(unit0, H, HP, NG: tl.constexpr, NG_USED: tl.constexpr,
                  BLOCK_H: tl.constexpr):
    """Column offsets into W_hh (G, HP, HP) of NG stacked gates of the program's units (gate
    g, unit u -> g*HP*HP + u*HP; the K index adds 1 per element) and their validity."""
    j = tl.arange(0, NG * BLOCK_H)
    g = j // BLOCK_H
    u = unit0 + j % BLOCK_H
    return g * HP * HP + u * HP, (g < NG_USED) & (u < H)


@triton.jit
def _gate_products4(h_src_rows, row_ok, w_hh_ptr, w_res, hh_at, tile_ok, unit0, H, HP,
                    NG_USED: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr, RECURRENT: tl.constexpr,
                    RESIDENT: tl.constexpr):
    """The (BLOCK_B, BLOCK_H) tiles of h @ W_hh^T of the program's units for four gate slots
    (NG_USED of them real; the others zero): stacked dots over the exchanged h (RECURRENT 0;
    W from the resident slice w_res or streamed, see _recurrent_product) or the step GEMM's
    float32 result, gate g at hh_at + g*HP (RECURRENT 1)."""
    if RECURRENT == 0:
        cols, cols_ok = _gate_columns(unit0, H, HP, 4, NG_USED, BLOCK_H)
        acc = _recurrent_product(h_src_rows, row_ok, HP, w_hh_ptr, 1, cols, cols_ok, w_res,
                                 BLOCK_B, 4 * BLOCK_H, BLOCK_K, PRECISION, RESIDENT)
        m0, m1, m2, m3 = _split4(acc, BLOCK_B, BLOCK_H)
    else:
        m0 = tl.load(hh_at, mask=tile_ok, other=0.0, cache_modifier=".cg")
        m1 = tl.load(hh_at + HP, mask=tile_ok, other=0.0, cache_modifier=".cg")
        m2 = tl.load(hh_at + 2 * HP, mask=tile_ok, other=0.0, cache_modifier=".cg")
        if NG_USED == 4:
            m3 = tl.load(hh_at + 3 * HP, mask=tile_ok, other=0.0, cache_modifier=".cg")
        else:
            m3 = tl.zeros((BLOCK_B, BLOCK_H), tl.float32)
    return m0, m1, m2, m3


@triton.jit
def _time_index(s, lengths, valid, reverse):
    """Time index processed at step s, per batch row (int64). Valid rows: s (forward) or
    len-1-s (reverse). Invalid steps (s >= len) map to t = s, so over all T steps every
    (t, b) is visited exactly once and every output/workspace entry gets written."""
    s_vec = lengths * 0 + s
    return tl.where(valid & (reverse != 0), lengths - 1 - s_vec, s_vec)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _forward_tile(pid, xproj_ptr, w_hh_ptr, b_hn_ptr, lengths_ptr, h_state_ptr, h_exchange_ptr,
                  c_state_ptr, exchange_ptr, hh_ptr, out_ptr, ws_ptr, sem_ptr, step_begin,
                  step_end, B, H, HP, reverse, CELL: tl.constexpr, NUM_GATES: tl.constexpr,
                  WS_WIDTH: tl.constexpr, PHASES: tl.constexpr, BLOCK_B: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, SYNC: tl.constexpr,
                  PRECISION: tl.constexpr, RECURRENT: tl.constexpr, RESIDENT: tl.constexpr):
    """recurrent_forward_kernel's work for the tile numbered pid (see its docstring)."""
    n_htiles = tl.cdiv(H, BLOCK_H)
    pid_h = pid % n_htiles
    pid_b = pid // n_htiles
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    unit_ok = units < H
    tile_ok = row_ok[:, None] & unit_ok[None, :]
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    GH = NUM_GATES * H
    own = rows[:, None] * H + units[None, :]
    own_x = rows[:, None] * HP + units[None, :]   # in the HP-strided exchange buffers
    sem = sem_ptr + pid_b
    is_leader = pid_h == 0
    out_ty = out_ptr.dtype.element_ty
    ws_ty = ws_ptr.dtype.element_ty

    # Own units' state: carried in registers across the steps of this launch.
    xch_ty = h_exchange_ptr.dtype.element_ty
    h = tl.load(h_state_ptr + own, mask=tile_ok, other=0.0)
    if CELL == 0:
        c = tl.load(c_state_ptr + own, mask=tile_ok, other=0.0)
    # where this step's GEMM result for the program's units starts (read only if RECURRENT == 1)
    hh_at = hh_ptr + rows[:, None] * (NUM_GATES * HP) + units[None, :]
    if CELL == 1:
        b_hn = tl.load(b_hn_ptr + units, mask=unit_ok, other=0.0).to(tl.float32)
    # The program's W_hh slices, on-chip for the whole launch (RESIDENT > 0): all gates of its
    # units (GRU reset_before: r, z, and the n gate's apart, for the second phase).
    w_res = w_hh_ptr        # (unused unless RESIDENT > 0)
    w_res_n = w_hh_ptr
    if RESIDENT > 0:
        if CELL <= 1:
            cols, cols_ok = _gate_columns(pid_h * BLOCK_H, H, HP, 4, NUM_GATES, BLOCK_H)
            w_res = _resident_weights(w_hh_ptr, 1, HP, cols, cols_ok, RESIDENT, BLOCK_K)
        if CELL == 2:
            cols, cols_ok = _gate_columns(pid_h * BLOCK_H, H, HP, 2, 2, BLOCK_H)
            w_res = _resident_weights(w_hh_ptr, 1, HP, cols, cols_ok, RESIDENT, BLOCK_K)
            w_res_n = _resident_weights(w_hh_ptr + 2 * HP * HP, 1, HP, units * HP, unit_ok,
                                        RESIDENT, BLOCK_K)
        if CELL >= 3:
            w_res = _resident_weights(w_hh_ptr, 1, HP, units * HP, unit_ok, RESIDENT, BLOCK_K)

    for s in range(step_begin, step_end):
        valid = s < lengths
        vmask = valid[:, None]
        t = _time_index(s, lengths, valid, reverse)
        tb = t * B + rows                                  # int64 row index into (T, B, .)
        x_at = xproj_ptr + tb[:, None] * GH + units[None, :]
        out_at = out_ptr + tb[:, None] * H + units[None, :]
        ws_at = ws_ptr + tb[:, None] * (WS_WIDTH * H) + units[None, :]
        # The exchanged copy is in the dot dtype (what the dot consumes anyway: half the L2
        # traffic of float32 for half inputs); the own-unit carry h stays float32.
        h_src_rows = h_exchange_ptr + (s % 2) * B * HP + rows * HP
        h_dst = h_exchange_ptr + ((s + 1) % 2) * B * HP + own_x

        # x loads first: independent of the exchanged h, their latency hides under the matmul.
        if CELL == 0:
            x_i = tl.load(x_at, mask=tile_ok, other=0.0).to(tl.float32)
            x_f = tl.load(x_at + H, mask=tile_ok, other=0.0).to(tl.float32)
            x_g = tl.load(x_at + 2 * H, mask=tile_ok, other=0.0).to(tl.float32)
            x_o = tl.load(x_at + 3 * H, mask=tile_ok, other=0.0).to(tl.float32)
            m_i, m_f, m_g, m_o = _gate_products4(h_src_rows, row_ok, w_hh_ptr, w_res, hh_at,
                                                 tile_ok, pid_h * BLOCK_H, H, HP, 4, BLOCK_B,
                                                 BLOCK_H, BLOCK_K, PRECISION, RECURRENT,
                                                 RESIDENT)
            i = _sigmoid(x_i + m_i)
            f = _sigmoid(x_f + m_f)
            g = _tanh(x_g + m_g)
            o = _sigmoid(x_o + m_o)
            c_new = f * c + i * g
            h_new = o * _tanh(c_new)
            c = tl.where(vmask, c_new, c)
            h = tl.where(vmask, h_new, h)
            tl.store(ws_at, tl.where(vmask, i, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + H, tl.where(vmask, f, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + 2 * H, tl.where(vmask, g, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + 3 * H, tl.where(vmask, o, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + 4 * H, tl.where(vmask, c_new, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(out_at, tl.where(vmask, h_new, 0.0).to(out_ty), mask=tile_ok)
            tl.store(h_dst, h.to(xch_ty), mask=tile_ok)
            _sync(sem, n_htiles, is_leader, SYNC)
        if CELL == 1:
            x_r = tl.load(x_at, mask=tile_ok, other=0.0).to(tl.float32)
            x_z = tl.load(x_at + H, mask=tile_ok, other=0.0).to(tl.float32)
            x_n = tl.load(x_at + 2 * H, mask=tile_ok, other=0.0).to(tl.float32)
            m_r, m_z, m_n, _unused = _gate_products4(h_src_rows, row_ok, w_hh_ptr, w_res,
                                                     hh_at, tile_ok, pid_h * BLOCK_H, H, HP, 3,
                                                     BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
                                                     RECURRENT, RESIDENT)
            r = _sigmoid(x_r + m_r)
            z = _sigmoid(x_z + m_z)
            hn = m_n + b_hn[None, :]
            n = _tanh(x_n + r * hn)
            h_new = (1.0 - z) * n + z * h
            h = tl.where(vmask, h_new, h)
            tl.store(ws_at, tl.where(vmask, r, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + H, tl.where(vmask, z, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + 2 * H, tl.where(vmask, n, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(ws_at + 3 * H, tl.where(vmask, hn, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(out_at, tl.where(vmask, h_new, 0.0).to(out_ty), mask=tile_ok)
            tl.store(h_dst, h.to(xch_ty), mask=tile_ok)
            _sync(sem, n_htiles, is_leader, SYNC)
        if CELL == 2:
            rh_slot = exchange_ptr + (s % 2) * B * HP
            if PHASES % 2 == 1:
                # Phase 1: r, z of own units; publish r*h for everybody's n gate.
                if RECURRENT == 0:
                    cols, cols_ok = _gate_columns(pid_h * BLOCK_H, H, HP, 2, 2, BLOCK_H)
                    acc = _recurrent_product(h_src_rows, row_ok, HP, w_hh_ptr, 1, cols, cols_ok,
                                             w_res, BLOCK_B, 2 * BLOCK_H, BLOCK_K, PRECISION,
                                             RESIDENT)
                    m_r, m_z = _split2(acc, BLOCK_B, BLOCK_H)
                else:
                    m_r = tl.load(hh_at, mask=tile_ok, other=0.0, cache_modifier=".cg")
                    m_z = tl.load(hh_at + HP, mask=tile_ok, other=0.0, cache_modifier=".cg")
                r = _sigmoid(tl.load(x_at, mask=tile_ok, other=0.0).to(tl.float32) + m_r)
                z = _sigmoid(tl.load(x_at + H, mask=tile_ok, other=0.0).to(tl.float32) + m_z)
                tl.store(ws_at, tl.where(vmask, r, 0.0).to(ws_ty), mask=tile_ok)
                tl.store(ws_at + H, tl.where(vmask, z, 0.0).to(ws_ty), mask=tile_ok)
                tl.store(rh_slot + own_x, (r * h).to(xch_ty), mask=tile_ok)
                _sync(sem, n_htiles, is_leader, SYNC)
            if PHASES >= 2:
                # Phase 2: n = tanh(x_n + W_hn (r*h)); r, z read back from the workspace (this
                # program wrote them; the barrier above ordered it).
                if RECURRENT == 0:
                    m_n = _recurrent_product(rh_slot + rows * HP, row_ok, HP,
                                             w_hh_ptr + 2 * HP * HP, 1, units * HP, unit_ok,
                                             w_res_n, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
                                             RESIDENT)
                else:
                    m_n = tl.load(hh_at + 2 * HP, mask=tile_ok, other=0.0,
                                  cache_modifier=".cg")
                z = tl.load(ws_at + H, mask=tile_ok & vmask, other=0.0).to(tl.float32)
                n = _tanh(tl.load(x_at + 2 * H, mask=tile_ok, other=0.0).to(tl.float32) + m_n)
                h_new = (1.0 - z) * n + z * h
                h = tl.where(vmask, h_new, h)
                tl.store(ws_at + 2 * H, tl.where(vmask, n, 0.0).to(ws_ty), mask=tile_ok)
                tl.store(out_at, tl.where(vmask, h_new, 0.0).to(out_ty), mask=tile_ok)
                tl.store(h_dst, h.to(xch_ty), mask=tile_ok)
                _sync(sem, n_htiles, is_leader, SYNC)
        if CELL >= 3:
            x_a = tl.load(x_at, mask=tile_ok, other=0.0).to(tl.float32)
            if RECURRENT == 0:
                m_a = _recurrent_product(h_src_rows, row_ok, HP, w_hh_ptr, 1, units * HP,
                                         unit_ok, w_res, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
                                         RESIDENT)
            else:
                m_a = tl.load(hh_at, mask=tile_ok, other=0.0, cache_modifier=".cg")
            a = x_a + m_a
            if CELL == 3:
                h_new = _tanh(a)
            else:
                h_new = tl.maximum(a, 0.0)
            h = tl.where(vmask, h_new, h)
            tl.store(ws_at, tl.where(vmask, h_new, 0.0).to(ws_ty), mask=tile_ok)
            tl.store(out_at, tl.where(vmask, h_new, 0.0).to(out_ty), mask=tile_ok)
            tl.store(h_dst, h.to(xch_ty), mask=tile_ok)
            _sync(sem, n_htiles, is_leader, SYNC)

    tl.store(h_state_ptr + own, h, mask=tile_ok)
    if CELL == 0:
        tl.store(c_state_ptr + own, c, mask=tile_ok)


# Step bounds vary per launch in per-step mode: no specialisation on their values (a value of 1
# would otherwise compile a separate variant).
@triton.jit(do_not_specialize=["step_begin", "step_end", "reverse"])
def recurrent_forward_kernel(
        xproj_ptr,      # (T, B, G*H) input projection + biases (except b_hn of GRU reset_after)
        w_hh_ptr,       # (G, HP, HP) W_hh, zero-padded to HP (a multiple of 16 and BLOCK_H)
        b_hn_ptr,       # (H,) b_hh of the n gate (GRU reset_after; unused otherwise)
        lengths_ptr,    # (B,) int64
        h_state_ptr,    # (B, H) float32 own units' h carried between launches
        h_exchange_ptr,  # (2, B, HP) dot dtype; slot s % 2 holds h before step s (all units;
                         # zero past H)
        c_state_ptr,    # (B, H) float32 LSTM cell state carried between launches
        exchange_ptr,   # (2, B, HP) dot dtype: r*h exchanged between the GRU reset_before phases
        hh_ptr,         # (B, G*HP) float32: this step's h @ W_hh^T (RECURRENT == 1; the n
                        # columns of GRU reset_before hold (r*h) @ W_hn^T in phase 2)
        out_ptr,        # (T, B, H) input dtype
        ws_ptr,         # (T, B, WS_WIDTH*H) workspace
        sem_ptr,        # (n_batch_tiles,) int32 barrier words (SYNC_GRID)
        step_begin, step_end, B, H, HP, reverse,
        CELL: tl.constexpr, NUM_GATES: tl.constexpr, WS_WIDTH: tl.constexpr,
        PHASES: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        SYNC: tl.constexpr, PRECISION: tl.constexpr, RECURRENT: tl.constexpr,
        RESIDENT: tl.constexpr):
    """Steps [step_begin, step_end) of the forward recurrence for one (batch tile, hidden tile).

    Program id = batch_tile * n_hidden_tiles + hidden_tile. PHASES (bit mask) selects the
    phases run per step: GRU reset_before has two (r,z then n, with an exchange of r*h between
    them); every other cell has one (PHASES=1). RECURRENT: 0 computes h @ W_hh^T here (stacked
    dots over the exchanged h); 1 reads it from hh_ptr, written by recurrent_matmul_kernel
    before this launch (the GEMM per-step mode: one step per launch, the kernel is the fused
    gate math only). RESIDENT > 0 (with RECURRENT 0): each program loads its slice of W_hh once,
    as RESIDENT chunks of BLOCK_K rows covering HP, and keeps it on-chip for all steps of the
    launch; 0: the slice is streamed from L2 every step in BLOCK_K chunks."""
    _forward_tile(tl.program_id(0), xproj_ptr, w_hh_ptr, b_hn_ptr, lengths_ptr, h_state_ptr,
                  h_exchange_ptr, c_state_ptr, exchange_ptr, hh_ptr, out_ptr, ws_ptr, sem_ptr,
                  step_begin, step_end, B, H, HP, reverse, CELL, NUM_GATES, WS_WIDTH, PHASES,
                  BLOCK_B, BLOCK_H, BLOCK_K, SYNC, PRECISION, RECURRENT, RESIDENT)


# ----------------------------------------------------------------------------------------------
# Backward (BPTT)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _backward_tile(pid, grad_out_ptr, w_hh_ptr, lengths_ptr, h0_ptr, c0_ptr, out_ptr, ws_ptr,
                   dh_state_ptr, dc_state_ptr, dh_total_ptr, dgate_ptr, dgate_n_ptr, hh_ptr,
                   dgate_step_ptr, sem_ptr, iter_begin, iter_end, T, B, H, HP, reverse,
                   CELL: tl.constexpr, NUM_GATES: tl.constexpr, WS_WIDTH: tl.constexpr,
                   PHASES: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_K: tl.constexpr, SYNC: tl.constexpr, PRECISION: tl.constexpr,
                   RECURRENT: tl.constexpr, RESIDENT: tl.constexpr):
    """recurrent_backward_kernel's work for the tile numbered pid (see its docstring)."""
    n_htiles = tl.cdiv(H, BLOCK_H)
    pid_h = pid % n_htiles
    pid_b = pid // n_htiles
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    units = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = rows < B
    unit_ok = units < H
    tile_ok = row_ok[:, None] & unit_ok[None, :]
    lengths = tl.load(lengths_ptr + rows, mask=row_ok, other=0)
    own = rows[:, None] * H + units[None, :]
    sem = sem_ptr + pid_b
    is_leader = pid_h == 0

    dg_ty = dgate_ptr.dtype.element_ty
    GHP = NUM_GATES * HP
    # Gate-gradient stores cover the padding units too (zeros there): the hidden tiles tile
    # HP exactly, so the exchange needs no zero-fill.
    dg_ok = row_ok[:, None] & (units < HP)[None, :]
    dh = tl.load(dh_state_ptr + own, mask=tile_ok, other=0.0)
    if CELL == 0:
        dc = tl.load(dc_state_ptr + own, mask=tile_ok, other=0.0)
    step_at = dgate_step_ptr + rows[:, None] * GHP + units[None, :]
    if CELL == 2:
        k_red = 2 * HP   # the n rows go through phase 2
    else:
        k_red = GHP
    # The W_hh columns of the program's units, on-chip for the whole launch (RESIDENT > 0):
    # rows of every gate (GRU reset_before: r, z; the n gate's apart, half the chunks).
    w_res = w_hh_ptr        # (unused unless RESIDENT > 0)
    w_res_n = w_hh_ptr
    if RESIDENT > 0:
        w_res = _resident_weights(w_hh_ptr, HP, k_red, units, unit_ok, RESIDENT, BLOCK_K)
        if CELL == 2:
            w_res_n = _resident_weights(w_hh_ptr + 2 * HP * HP, HP, HP, units, unit_ok,
                                        RESIDENT // 2, BLOCK_K)

    for k in range(iter_begin, iter_end):
        if PHASES % 2 == 1:
            if k > 0:
                # (a) dh of step T-k += dgate @ W_hh[:, own]; rows invalid at that step have
                # all-zero gate gradients, so their carry passes through unchanged.
                s_b = T - k
                valid_b = s_b < lengths
                t_b = _time_index(s_b, lengths, valid_b, reverse)
                src = dgate_ptr + (t_b * B + rows) * GHP
                if RECURRENT == 0:
                    m_dh = _recurrent_product(src, row_ok, k_red, w_hh_ptr, HP, units, unit_ok,
                                              w_res, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
                                              RESIDENT)
                else:
                    m_dh = tl.load(hh_ptr + rows[:, None] * HP + units[None, :], mask=tile_ok,
                                   other=0.0, cache_modifier=".cg")
                dh = dh + m_dh
            if k < T:
                s = T - 1 - k
                valid = s < lengths
                vmask = valid[:, None]
                vtile = tile_ok & vmask
                t = _time_index(s, lengths, valid, reverse)
                tb = t * B + rows
                t_prev = t + tl.where(reverse != 0, 1, -1)
                s_vec = lengths * 0 + s  # vector form: scalar-bool masks break the interpreter
                first = vmask & (s_vec == 0)[:, None]
                later = vtile & (s_vec > 0)[:, None]
                ws_at = ws_ptr + tb[:, None] * (WS_WIDTH * H) + units[None, :]
                dg_at = dgate_ptr + tb[:, None] * GHP + units[None, :]
                g_out = tl.load(grad_out_ptr + tb[:, None] * H + units[None, :], mask=vtile,
                                other=0.0).to(tl.float32)
                dh_tot = dh + g_out
                if CELL == 0:
                    i = tl.load(ws_at, mask=vtile, other=0.0).to(tl.float32)
                    f = tl.load(ws_at + H, mask=vtile, other=0.0).to(tl.float32)
                    g = tl.load(ws_at + 2 * H, mask=vtile, other=0.0).to(tl.float32)
                    o = tl.load(ws_at + 3 * H, mask=vtile, other=0.0).to(tl.float32)
                    c_t = tl.load(ws_at + 4 * H, mask=vtile, other=0.0).to(tl.float32)
                    c_prev = tl.load(ws_ptr + (t_prev * B + rows)[:, None] * (WS_WIDTH * H)
                                     + 4 * H + units[None, :], mask=later, other=0.0)
                    c_prev = c_prev.to(tl.float32) + tl.load(c0_ptr + own, mask=tile_ok & first,
                                                             other=0.0).to(tl.float32)
                    tc = _tanh(c_t)
                    dc_tot = dc + dh_tot * o * (1.0 - tc * tc)
                    da_i = dc_tot * g * i * (1.0 - i)
                    da_f = dc_tot * c_prev * f * (1.0 - f)
                    da_g = dc_tot * i * (1.0 - g * g)
                    da_o = dh_tot * tc * o * (1.0 - o)
                    _store_gate_grad(dg_at, step_at, da_i, vmask, dg_ok, RECURRENT)
                    _store_gate_grad(dg_at + HP, step_at + HP, da_f, vmask, dg_ok, RECURRENT)
                    _store_gate_grad(dg_at + 2 * HP, step_at + 2 * HP, da_g, vmask, dg_ok,
                                     RECURRENT)
                    _store_gate_grad(dg_at + 3 * HP, step_at + 3 * HP, da_o, vmask, dg_ok,
                                     RECURRENT)
                    dc = tl.where(vmask, dc_tot * f, dc)
                    dh = tl.where(vmask, 0.0, dh_tot)
                if CELL == 1 or CELL == 2:
                    h_prev = tl.load(out_ptr + (t_prev * B + rows)[:, None] * H + units[None, :],
                                     mask=later, other=0.0).to(tl.float32)
                    h_prev = h_prev + tl.load(h0_ptr + own, mask=tile_ok & first,
                                              other=0.0).to(tl.float32)
                    z = tl.load(ws_at + H, mask=vtile, other=0.0).to(tl.float32)
                    n = tl.load(ws_at + 2 * H, mask=vtile, other=0.0).to(tl.float32)
                    da_n = dh_tot * (1.0 - z) * (1.0 - n * n)
                    da_z = dh_tot * (h_prev - n) * z * (1.0 - z)
                    _store_gate_grad(dg_at + HP, step_at + HP, da_z, vmask, dg_ok, RECURRENT)
                    if CELL == 1:
                        r = tl.load(ws_at, mask=vtile, other=0.0).to(tl.float32)
                        hn = tl.load(ws_at + 3 * H, mask=vtile, other=0.0).to(tl.float32)
                        da_r = da_n * hn * r * (1.0 - r)
                        _store_gate_grad(dg_at, step_at, da_r, vmask, dg_ok, RECURRENT)
                        _store_gate_grad(dg_at + 2 * HP, step_at + 2 * HP, da_n * r, vmask,
                                         dg_ok, RECURRENT)
                        tl.store(dgate_n_ptr + tb[:, None] * H + units[None, :],
                                 tl.where(vmask, da_n, 0.0).to(dg_ty), mask=tile_ok)
                        dh = tl.where(vmask, dh_tot * z, dh)
                    else:
                        _store_gate_grad(dg_at + 2 * HP, step_at + 2 * HP, da_n, vmask, dg_ok,
                                         RECURRENT)
                        tl.store(dh_total_ptr + own, dh_tot, mask=tile_ok)
                if CELL >= 3:
                    h_t = tl.load(ws_at, mask=vtile, other=0.0).to(tl.float32)
                    if CELL == 3:
                        da = dh_tot * (1.0 - h_t * h_t)
                    else:
                        da = tl.where(h_t > 0.0, dh_tot, 0.0)
                    _store_gate_grad(dg_at, step_at, da, vmask, dg_ok, RECURRENT)
                    dh = tl.where(vmask, 0.0, dh_tot)
            _sync(sem, n_htiles, is_leader, SYNC)
        if PHASES >= 2:
            # GRU reset_before phase 2: d(r*h)[own] = da_n (all units) @ W_hn[:, own];
            # then da_r, and the direct part of dh: dh_tot * z + d(r*h) * r.
            if k < T:
                s = T - 1 - k
                valid = s < lengths
                vmask = valid[:, None]
                vtile = tile_ok & vmask
                t = _time_index(s, lengths, valid, reverse)
                tb = t * B + rows
                t_prev = t + tl.where(reverse != 0, 1, -1)
                s_vec = lengths * 0 + s  # vector form: scalar-bool masks break the interpreter
                first = vmask & (s_vec == 0)[:, None]
                later = vtile & (s_vec > 0)[:, None]
                ws_at = ws_ptr + tb[:, None] * (WS_WIDTH * H) + units[None, :]
                dg_at = dgate_ptr + tb[:, None] * GHP + units[None, :]
                if RECURRENT == 0:
                    d_rh = _recurrent_product(dgate_ptr + (tb * GHP + 2 * HP), row_ok, HP,
                                              w_hh_ptr + 2 * HP * HP, HP, units, unit_ok,
                                              w_res_n, BLOCK_B, BLOCK_H, BLOCK_K, PRECISION,
                                              RESIDENT // 2)
                else:
                    d_rh = tl.load(hh_ptr + rows[:, None] * HP + units[None, :], mask=tile_ok,
                                   other=0.0, cache_modifier=".cg")
                h_prev = tl.load(out_ptr + (t_prev * B + rows)[:, None] * H + units[None, :],
                                 mask=later, other=0.0).to(tl.float32)
                h_prev = h_prev + tl.load(h0_ptr + own, mask=tile_ok & first,
                                          other=0.0).to(tl.float32)
                r = tl.load(ws_at, mask=vtile, other=0.0).to(tl.float32)
                z = tl.load(ws_at + H, mask=vtile, other=0.0).to(tl.float32)
                da_r = d_rh * h_prev * r * (1.0 - r)
                _store_gate_grad(dg_at, step_at, da_r, vmask, dg_ok, RECURRENT)
                dh_tot = tl.load(dh_total_ptr + own, mask=tile_ok, other=0.0)
                dh = tl.where(vmask, dh_tot * z + d_rh * r, dh)
            _sync(sem, n_htiles, is_leader, SYNC)

    tl.store(dh_state_ptr + own, dh, mask=tile_ok)
    if CELL == 0:
        tl.store(dc_state_ptr + own, dc, mask=tile_ok)


@triton.jit(do_not_specialize=["iter_begin", "iter_end", "reverse"])
def recurrent_backward_kernel(
        grad_out_ptr,   # (T, B, H) input dtype
        w_hh_ptr,       # (G*HP, HP) W_hh, zero-padded to HP
        lengths_ptr,    # (B,) int64
        h0_ptr,         # (B, H) input dtype
        c0_ptr,         # (B, H) input dtype (LSTM)
        out_ptr,        # (T, B, H) forward output (h_prev of GRU)
        ws_ptr,         # (T, B, WS_WIDTH*H) forward workspace
        dh_state_ptr,   # (B, H) float32 dh carry (the part not yet reduced over W_hh^T)
        dc_state_ptr,   # (B, H) float32 dc carry (LSTM)
        dh_total_ptr,   # (B, H) float32 dh of the step, between the GRU reset_before phases
        dgate_ptr,      # (T, B, G*HP) dot dtype: gate gradients (hh side), also the exchange
                        # (zero in the padding units: the dh reduction runs over G*HP)
        dgate_n_ptr,    # (T, B, H) dot dtype: GRU reset_after d(pre-activation of n), ih side
        hh_ptr,         # (B, HP) float32 (RECURRENT == 1): phase 1, the previous iteration's
                        # gate gradients @ W_hh; phase 2 (GRU reset_before), da_n @ W_hn
        dgate_step_ptr,  # (B, G*HP) dot dtype (RECURRENT == 1): this iteration's gate
                         # gradients by row, what the next recurrent GEMM reads
        sem_ptr,        # (n_batch_tiles,) int32 barrier words
        iter_begin, iter_end, T, B, H, HP, reverse,
        CELL: tl.constexpr, NUM_GATES: tl.constexpr, WS_WIDTH: tl.constexpr,
        PHASES: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
        SYNC: tl.constexpr, PRECISION: tl.constexpr, RECURRENT: tl.constexpr,
        RESIDENT: tl.constexpr):
    """Iterations [iter_begin, iter_end) of the reverse-time sweep; iteration k in 0..T:
    (a) finishes dh of step T-k (k > 0): dh += dgate[t] (all units) @ W_hh[:, own units];
    (b) computes the gate gradients of step T-1-k (k < T) for own units and writes them.
    A barrier follows (b), so (a) of the next iteration sees every program's gate gradients.
    GRU reset_before needs one more exchange per step (d(r*h) = W_hn^T da_n): phase 2.
    Afterwards dh_state holds grad h0 and dc_state grad c0. RECURRENT == 1 (GEMM per-step
    mode, one iteration per launch): the products over W_hh come from hh_ptr, computed by
    recurrent_matmul_kernel from dgate_step_ptr between launches. RESIDENT > 0 (with RECURRENT
    0): the program's columns of W_hh (all gates' rows, RESIDENT chunks of BLOCK_K covering
    them) stay on-chip for the launch, as in the forward."""
    _backward_tile(tl.program_id(0), grad_out_ptr, w_hh_ptr, lengths_ptr, h0_ptr, c0_ptr, out_ptr,
                   ws_ptr, dh_state_ptr, dc_state_ptr, dh_total_ptr, dgate_ptr, dgate_n_ptr,
                   hh_ptr, dgate_step_ptr, sem_ptr, iter_begin, iter_end, T, B, H, HP, reverse,
                   CELL, NUM_GATES, WS_WIDTH, PHASES, BLOCK_B, BLOCK_H, BLOCK_K, SYNC, PRECISION,
                   RECURRENT, RESIDENT)


# ----------------------------------------------------------------------------------------------
# The persistent GEMM mode: the per-step GEMM and the gate math in one launch
# ----------------------------------------------------------------------------------------------
# The GEMM mode's two launches a step cost Triton's Python launch path twice a step (T = 512:
# ~1000 launches), which at mid H would be most of the time. Here a co-resident grid (one
# program per SM, launched cooperatively) runs every step: each step the programs share the
# recurrent GEMM's tiles, meet at a grid barrier, share the gate-math tiles, meet again. The
# bodies are recurrent_matmul_kernel's and the recurrence kernels' (RECURRENT=1), so this mode
# computes exactly what the two-launch form does. Interpreter-safe form: the same kernel with a
# grid of one program (SYNC_CTA), which loops over every tile itself.
@triton.jit(do_not_specialize=["T", "reverse"])
def recurrent_gemm_forward_kernel(
        xproj_ptr, w_hh_ptr, b_hn_ptr, lengths_ptr, h_state_ptr, h_exchange_ptr, c_state_ptr,
        exchange_ptr, hh_ptr, out_ptr, ws_ptr,   # as recurrent_forward_kernel's
        sem_ptr,        # (1,) int32: the grid barrier's word
        T, B, H, HP, reverse,
        CELL: tl.constexpr, NUM_GATES: tl.constexpr, WS_WIDTH: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SYNC: tl.constexpr,
        PRECISION: tl.constexpr):
    """All T steps of the forward recurrence, the recurrent product of each step as a tiled
    GEMM: hh = h @ W_hh^T ((BLOCK_M, BLOCK_N) tiles; GRU reset_before: the r, z rows, then
    hh[:, n] = (r*h) @ W_hn^T between its two phases), then the fused gate math over
    (BLOCK_B, BLOCK_H) tiles, a grid barrier after each. Program p takes tiles p, p + P, ...
    of both kinds (P programs, all co-resident)."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_tiles = tl.cdiv(B, BLOCK_B) * tl.cdiv(H, BLOCK_H)
    leader = pid == 0
    if CELL == 2:
        first_rows = 2 * HP
    else:
        first_rows = NUM_GATES * HP
    for s in range(0, T):
        slot = (s % 2) * B * HP
        _matmul_tiles(pid, n_programs, h_exchange_ptr + slot, w_hh_ptr, hh_ptr, B, first_rows,
                      HP, HP, HP, NUM_GATES * HP, True, BLOCK_M, BLOCK_N, BLOCK_K, PRECISION)
        _sync(sem_ptr, n_programs, leader, SYNC)
        for tile in range(pid, n_tiles, n_programs):
            _forward_tile(tile, xproj_ptr, w_hh_ptr, b_hn_ptr, lengths_ptr, h_state_ptr,
                          h_exchange_ptr, c_state_ptr, exchange_ptr, hh_ptr, out_ptr, ws_ptr,
                          sem_ptr, s, s + 1, B, H, HP, reverse, CELL, NUM_GATES, WS_WIDTH, 1,
                          BLOCK_B, BLOCK_H, BLOCK_K, 0, PRECISION, 1, 0)
        _sync(sem_ptr, n_programs, leader, SYNC)
        if CELL == 2:
            _matmul_tiles(pid, n_programs, exchange_ptr + slot, w_hh_ptr + 2 * HP * HP,
                          hh_ptr + 2 * HP, B, HP, HP, HP, HP, NUM_GATES * HP, True, BLOCK_M,
                          BLOCK_N, BLOCK_K, PRECISION)
            _sync(sem_ptr, n_programs, leader, SYNC)
            for tile in range(pid, n_tiles, n_programs):
                _forward_tile(tile, xproj_ptr, w_hh_ptr, b_hn_ptr, lengths_ptr, h_state_ptr,
                              h_exchange_ptr, c_state_ptr, exchange_ptr, hh_ptr, out_ptr,
                              ws_ptr, sem_ptr, s, s + 1, B, H, HP, reverse, CELL, NUM_GATES,
                              WS_WIDTH, 2, BLOCK_B, BLOCK_H, BLOCK_K, 0, PRECISION, 1, 0)
            _sync(sem_ptr, n_programs, leader, SYNC)


@triton.jit(do_not_specialize=["T", "reverse"])
def recurrent_gemm_backward_kernel(
        grad_out_ptr, w_hh_ptr, lengths_ptr, h0_ptr, c0_ptr, out_ptr, ws_ptr, dh_state_ptr,
        dc_state_ptr, dh_total_ptr, dgate_ptr, dgate_n_ptr, hh_ptr,
        dgate_step_ptr,  # as recurrent_backward_kernel's
        sem_ptr,        # (1,) int32: the grid barrier's word
        T, B, H, HP, reverse,
        CELL: tl.constexpr, NUM_GATES: tl.constexpr, WS_WIDTH: tl.constexpr,
        BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SYNC: tl.constexpr,
        PRECISION: tl.constexpr):
    """All T + 1 iterations of the reverse-time sweep (recurrent_backward_kernel's), the
    products over W_hh as tiled GEMMs: iteration k > 0 first reduces the previous iteration's
    gate gradients (dgate_step, by row) over W_hh into hh, then the gate-gradient tiles;
    GRU reset_before then hh = da_n @ W_hn and its second phase. A grid barrier after each."""
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    n_tiles = tl.cdiv(B, BLOCK_B) * tl.cdiv(H, BLOCK_H)
    leader = pid == 0
    GHP = NUM_GATES * HP
    if CELL == 2:
        reduced_rows = 2 * HP    # the n rows go through phase 2
    else:
        reduced_rows = GHP
    for k in range(0, T + 1):
        if k > 0:
            _matmul_tiles(pid, n_programs, dgate_step_ptr, w_hh_ptr, hh_ptr, B, HP,
                          reduced_rows, GHP, HP, HP, False, BLOCK_M, BLOCK_N, BLOCK_K,
                          PRECISION)
            _sync(sem_ptr, n_programs, leader, SYNC)
        for tile in range(pid, n_tiles, n_programs):
            _backward_tile(tile, grad_out_ptr, w_hh_ptr, lengths_ptr, h0_ptr, c0_ptr, out_ptr,
                           ws_ptr, dh_state_ptr, dc_state_ptr, dh_total_ptr, dgate_ptr,
                           dgate_n_ptr, hh_ptr, dgate_step_ptr, sem_ptr, k, k + 1, T, B, H, HP,
                           reverse, CELL, NUM_GATES, WS_WIDTH, 1, BLOCK_B, BLOCK_H, BLOCK_K,
                           0, PRECISION, 1, 0)
        _sync(sem_ptr, n_programs, leader, SYNC)
        if CELL == 2:
            if k < T:
                _matmul_tiles(pid, n_programs, dgate_step_ptr + 2 * HP, w_hh_ptr + 2 * HP * HP,
                              hh_ptr, B, HP, HP, GHP, HP, HP, False, BLOCK_M, BLOCK_N,
                              BLOCK_K, PRECISION)
                _sync(sem_ptr, n_programs, leader, SYNC)
                for tile in range(pid, n_tiles, n_programs):
                    _backward_tile(tile, grad_out_ptr, w_hh_ptr, lengths_ptr, h0_ptr, c0_ptr,
                                   out_ptr, ws_ptr, dh_state_ptr, dc_state_ptr, dh_total_ptr,
                                   dgate_ptr, dgate_n_ptr, hh_ptr, dgate_step_ptr, sem_ptr, k,
                                   k + 1, T, B, H, HP, reverse, CELL, NUM_GATES, WS_WIDTH, 2,
                                   BLOCK_B, BLOCK_H, BLOCK_K, 0, PRECISION, 1, 0)
                _sync(sem_ptr, n_programs, leader, SYNC)


# ----------------------------------------------------------------------------------------------
# Device queries and configuration
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def device_properties(index: int):
    """(sm_count, capability) of a CUDA device."""
    p = torch.cuda.get_device_properties(index)
    return p.multi_processor_count, (p.major, p.minor)


@functools.lru_cache(maxsize=None)
def shared_memory_per_block(index: int) -> int:
    """Shared memory a block of a CUDA device may opt into, in bytes (163 KB on an A100, 227 KB
    on an H100/H200, about 100 KB on consumer Ampere/Ada parts)."""
    p = torch.cuda.get_device_properties(index)
    return int(getattr(p, "shared_memory_per_block_optin", 0) or p.shared_memory_per_block)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class LaunchConfig:
    mode: str           # "persistent" | "per_step" | "gemm"
    sync: int           # SYNC_* between steps (per_step and the gemm mode's per-step form:
                        # SYNC_NONE, the launch boundary)
    block_b: int
    block_h: int
    block_k: int
    num_warps: int
    n_btiles: int
    n_htiles: int
    num_stages: int = 3
    num_warps_bwd: int = 4
    # gemm mode: recurrent_matmul_kernel's (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages)
    matmul: tuple = ()
    # persistent gemm mode: its grid (co-resident programs sharing the tiles); 0 otherwise
    programs: int = 0
    # W_hh on-chip for the whole launch: (chunks, chunk rows) of the forward's slice, then the
    # backward's (the RESIDENT and BLOCK_K constexprs; 0 chunks: that direction streams W_hh
    # from L2 every step, in block_k chunks); () streams it in both
    resident: tuple = ()

    @property
    def grid(self):
        return (self.programs or self.n_btiles * self.n_htiles,)

    def kernel_shape(self, backward: bool = False):
        """(RESIDENT, BLOCK_K, num_warps, num_stages) of the forward or backward recurrence
        kernel's launch: with W_hh resident, RESIDENT_WARPS warps (a chunk each) and one stage
        (no inner K loop is left to pipeline, and pipelining the time loop would prefetch the
        exchanged state before the barrier that publishes it)."""
        chunks, block_k = (self.resident[2:] if backward else self.resident[:2]) or (0, 0)
        if chunks:
            return chunks, block_k, RESIDENT_WARPS, 1
        return 0, self.block_k, self.num_warps_bwd if backward else self.num_warps, self.num_stages


# Register budget per program: BLOCK_B * BLOCK_H <= 2048 state values (c, h, the gate tiles,
# the loaded x: each one such tile) and NG * BLOCK_B * BLOCK_H <= 4096 stacked-accumulator
# values (16 per thread at 8 warps). Larger tiles spilled in perf/compile_report.py (64x128
# RNN float32: 255 regs + 1.5 KB stack; 64x32 LSTM/GRU: 255 regs + 8-96 B stack at any
# BLOCK_K), so B=256 with H >= 768 runs the GEMM per-step mode (no co-resident split fits).
MAX_TILE_VALUES = 2048
MAX_ACC_VALUES = 4096
# The split-hidden grid must be co-resident: one program per SM is what we assume fits
# (cooperative launch verifies it at launch time).
PROGRAMS_PER_SM = 1
# W_hh on-chip (the RESIDENT constexpr): a program's slice of W_hh, per direction, held as
# RESIDENT_CHUNKS chunks of K (one a warp, RESIDENT_WARPS warps) in shared memory, beside the
# step's exchanged-state operand (16 rows x K). Compile gate (perf/compile_report.py, sm_80 and
# sm_90, 8 warps, Triton 3.9 / 3.6): 128 KB half-type slices (LSTM forward at H = 1024) take
# 202-222 registers without spills; the float32 LSTM forward's 128 KB slice (H = 512) took
# 226 under 3.9 but spilled 8 B under 3.6, so float32 slices stop at 64 KB (forward
# 230-242). The backward's 128 KB bf16 slice (4 gates' rows x 16 units, 512-row chunks)
# spilled 40-56 B at 255 (hence chunks of at most 256 rows), and 256 KB with its operand
# exceeds shared memory; a 64-row batch tile spilled 368-488 B already in a stripped-down
# kernel (8 chunks of 64 rows x 64 columns: the batched dot's accumulator is chunks x rows x
# columns), so only 16-row batch tiles hold W_hh.
# Shared memory per block: what compiled.metadata.shared reports, the slice plus the
# operand, within the target's opt-in limit (sm_80 163 KB, sm_90 227 KB). Not yet timed.
RESIDENT_MAX_BYTES = {2: 128 * 1024, 4: 64 * 1024}   # by element size
RESIDENT_MAX_CHUNK_ROWS = 256
RESIDENT_CHUNKS = 8
RESIDENT_WARPS = 8
# Launches use the device's own opt-in limit (shared_memory_per_block); the compile gate, with
# no device, these (the A100's and the H100/H200's).
RESIDENT_SHARED_BYTES = {8: 163 * 1024, 9: 227 * 1024}   # by major capability


def choose_config(cell: int, H: int, B: int, dtype: torch.dtype, sm_count: int,
                  interpret: bool = False, mode: str | None = None,
                  capability: tuple = (9, 0), shared_bytes: int | None = None) -> LaunchConfig:
    """Pick mode and tiles for a (cell, H, B, dtype) on a device with sm_count SMs.

    mode forces "single" (one program per batch tile owns all units), "split" (split hidden,
    persistent with the grid barrier; on the interpreter per-step instead), "per_step", "gemm"
    (the recurrent product as a GEMM a step, all steps in one launch) or "gemm_per_step" (the
    same, two launches a step). Default: the widest co-resident split; the gemm mode where it
    does not fit. The single, split and per-step modes hold W_hh on-chip where a program's
    slice fits in shared_bytes of shared memory (the device's; None: the sm_80 / sm_90 limits
    by capability), see with_resident_weights (GATEDRNN_TRITON_RESIDENT=0 streams it)."""
    G = NUM_GATES[cell]
    ng = 4 if G >= 3 else G
    # BLOCK_K: the K loop is latency-bound (an L2 round trip per iteration), so few, wide
    # chunks win: on the H200, LSTM B=1 H=512 T=256 bf16 forward took 2.10 / 2.49 / 8.9 ms at
    # BLOCK_K 64 / 32 / 16 (float32: 2.63 / 4.17 ms at 64 / 16) with per-gate dots. With the
    # gates stacked into one dot the W operand is no longer replicated across warps, so 128
    # (halves) / 64 (float32: twice the bytes) fit in registers and shared memory.
    block_k = 64 if dtype == torch.float32 else 128
    # Tuning overrides for experiments on a device (perf/bench_rnn_gpu.py), not for users.
    block_k = int(os.environ.get("GATEDRNN_TRITON_BLOCK_K", block_k))
    stages = int(os.environ.get("GATEDRNN_TRITON_STAGES", 3))
    block_b = min(max(_pow2_at_least(B), MIN_DOT_TILE), 64)
    # GATEDRNN_TRITON_BLOCK_B=16 at B = 17..64: more batch tiles, so more programs, and W_hh
    # on-chip (to be timed: perf/gpu_session.sh rnn-resident)
    block_b = int(os.environ.get("GATEDRNN_TRITON_BLOCK_B") or block_b)
    n_btiles = -(-B // block_b)
    h_pad = max(_pow2_at_least(H), MIN_DOT_TILE)

    def mma_warps(rows, cols):
        # One warp per m16n8 MMA tile of the output, 2..8: more warps would only compute
        # replicated tiles (and hold replicated operands).
        return max(2, min(8, (rows // 16) * (cols // 8)))

    elt = 4 if dtype == torch.float32 else 2

    def make(mode_, sync, bb, bh):
        nbt = -(-B // bb)
        nht = -(-H // bh)
        # The K loop's pipeline buffers (stages x (A chunk + W chunk)) stay within 128 KB of
        # shared memory (sm_80 offers 163 KB; the rest stays L1 for the re-read W slice).
        bk = block_k
        while bk > MIN_DOT_TILE and stages * bk * (bb + ng * bh) * elt > 128 * 1024:
            bk //= 2
        pre_hopper = tuple(capability) < (9, 0)
        if pre_hopper and ng * bb * bh >= 4096:
            # Triton 3.6 on sm_80 spilled 8-24 B at 255 regs for these tiles (64x16, 32x32 with
            # 4 gates) with the full chunk; half of it fits (perf/compile_report.py).
            bk = min(bk, 64 // elt)
        warps = int(os.environ.get("GATEDRNN_TRITON_WARPS", mma_warps(bb, ng * bh)))
        # Backward: at least 4 warps for its elementwise work over G gate tiles (2 warps:
        # GRU reset_before float32 16x16 took 255 regs + 16 B stack).
        min_bwd = 8 if (pre_hopper and ng * bb * bh >= 2048) else 4  # 3.6/sm_80: 8 B spill
        warps_bwd = int(os.environ.get("GATEDRNN_TRITON_WARPS", max(min_bwd, mma_warps(bb, bh))))
        return LaunchConfig(mode_, sync, bb, bh, bk, warps, nbt, nht, stages, warps_bwd)

    if mode == "single" or (mode is None and interpret):
        # One program per batch tile holds all units: accumulators NG*BB*H_PAD; use the
        # smallest batch tile so the interpreter and small H stay cheap.
        bb = MIN_DOT_TILE if interpret else block_b
        return with_resident_weights(cell, H, make("persistent", SYNC_CTA, bb, h_pad), dtype,
                                     capability, shared_bytes)
    if mode == "per_step" or (mode == "split" and interpret):
        bh = max(MIN_DOT_TILE, min(h_pad // 2 if mode == "split" else 32, 32))
        bb = MIN_DOT_TILE if interpret else block_b
        return with_resident_weights(cell, H, make("per_step", SYNC_NONE, bb, bh), dtype,
                                     capability, shared_bytes)
    if mode == "gemm":
        return _gemm_config(cell, H, B, dtype, sm_count, interpret)
    if mode == "gemm_per_step":
        return gemm_per_step(_gemm_config(cell, H, B, dtype, sm_count, interpret))
    # Split hidden: smallest hidden tile that keeps the grid co-resident.
    max_programs = sm_count * PROGRAMS_PER_SM
    bh = MIN_DOT_TILE
    while bh < h_pad and (-(-H // bh)) * n_btiles > max_programs:
        bh *= 2
    cfg = make("persistent", SYNC_GRID if -(-H // bh) > 1 else SYNC_CTA, block_b, bh)
    if (cfg.n_btiles * cfg.n_htiles <= max_programs and block_b * bh <= MAX_TILE_VALUES
            and block_b * bh * ng <= MAX_ACC_VALUES):
        return with_resident_weights(cell, H, cfg, dtype, capability, shared_bytes)
    if mode == "split":
        raise ValueError("split-hidden mode does not fit co-resident on this device")
    return _gemm_config(cell, H, B, dtype, sm_count, interpret)


def with_resident_weights(cell: int, H: int, cfg: LaunchConfig, dtype: torch.dtype,
                          capability: tuple = (9, 0),
                          shared_bytes: int | None = None) -> LaunchConfig:
    """cfg with W_hh held on-chip for the whole launch, in each direction where a program's
    slice fits: batch tiles of 16 rows, at most RESIDENT_MAX_BYTES of W_hh and chunks of at
    most RESIDENT_MAX_CHUNK_ROWS rows (registers), the slice plus the step's operand (16 rows
    of the exchanged state over all of K) within shared_bytes (the device's opt-in shared
    memory; None: RESIDENT_SHARED_BYTES of the capability's major). The forward's
    slice: the hidden tile's units, every gate, all of K = HP; the backward's: the same units'
    columns over every gate's rows (K = G*HP; GRU reset_before r, z, and n's rows apart).
    K is padded to a power of two (tensor shapes) and split into at most RESIDENT_CHUNKS
    chunks of at least 16 rows. Elsewhere, and under GATEDRNN_TRITON_RESIDENT=0, W_hh is
    streamed from L2 every step."""
    if (cfg.block_b != MIN_DOT_TILE
            or os.environ.get("GATEDRNN_TRITON_RESIDENT", "1") == "0"):
        return cfg
    elt = 4 if dtype == torch.float32 else 2
    hp = padded_hidden(H, cfg)
    bh = cfg.block_h
    shared = shared_bytes or RESIDENT_SHARED_BYTES[8 if tuple(capability) < (9, 0) else 9]

    def fit(k, cols, extra_cols=0, extra_k=0):
        """(chunks, chunk rows) of a K x cols slice (plus one of extra_k x extra_cols beside it,
        GRU reset_before's second phase), or (0, 0) where it does not fit."""
        n = min(RESIDENT_CHUNKS, k // MIN_DOT_TILE)
        slice_bytes = (k * cols + extra_k * extra_cols) * elt
        operand_bytes = cfg.block_b * k * elt
        if (slice_bytes > RESIDENT_MAX_BYTES[elt] or k // n > RESIDENT_MAX_CHUNK_ROWS
                or slice_bytes + operand_bytes > shared):
            return 0, 0
        return n, k // n

    fwd_k = _pow2_at_least(hp)
    if cell == CELL_GRU_RESET_BEFORE:
        # forward: r, z stacked, n apart (same K); backward: r, z rows, n's in half the chunks
        bwd_k = _pow2_at_least(2 * hp)
        fwd = fit(fwd_k, 2 * bh, bh, fwd_k)
        bwd = fit(bwd_k, bh, bh, bwd_k // 2)
    else:
        # forward: four gate slots stacked (LSTM; GRU with one unused), one for the RNN
        bwd_k = _pow2_at_least(NUM_GATES[cell] * hp)
        fwd = fit(fwd_k, (4 if NUM_GATES[cell] >= 3 else 1) * bh)
        bwd = fit(bwd_k, bh)
    if fwd[0] == 0 and bwd[0] == 0:
        return cfg
    return replace(cfg, resident=fwd + bwd)


def _gemm_config(cell: int, H: int, B: int, dtype: torch.dtype, sm_count: int,
                 interpret: bool) -> LaunchConfig:
    """The gemm mode's tiles: the gate math's and the recurrent GEMM's, and its grid.

    Not yet timed on a GPU (no device in the sessions since this mode was written): the GEMM
    tiles are the usual Ampere/Hopper Triton matmul shapes, 128 x 128 (64 x 128 for B <= 64,
    where a 128-row tile would be half padding) with a K chunk of 32 float32 / 64 half
    elements (up to 32 KB a pipeline stage, 3 stages within sm_80's shared memory), 8 warps on
    128-row tiles (64 accumulator registers a thread). The gate math has no dot: 16 x 64 tiles at
    8 warps, 4 units a thread (16-byte vectors); at 4 warps the LSTM forward took 255 registers
    and spilled 16-64 B (its 64-bit pointer tiles for x, hh, out, the workspace and the
    exchange), the others 150-255 (perf/compile_report.py). Both are for perf/bench_rnn_gpu.py
    to tune on the next device.

    One launch (recurrent_gemm_*_kernel) with one program per SM, as many as there are tiles
    of either kind: the co-resident grid that a cooperative launch guarantees (8 warps at up
    to 255 registers: one program an SM). On the interpreter one program (SYNC_CTA) runs every
    tile."""
    if interpret:
        # Small tiles so that several programs' worth of tiles, and the masked edges of M, N
        # and H, are exercised at the interpreter's sizes.
        bb, bh, matmul = MIN_DOT_TILE, MIN_DOT_TILE, (16, 32, 16, 4, 1)
    else:
        block_m = 64 if B <= 64 else 128
        matmul = (block_m, 128, 32 if dtype == torch.float32 else 64, 4 if block_m == 64 else 8, 3)
        bb, bh = 16, 64
    warps = 4 if interpret else 8
    n_btiles, n_htiles = -(-B // bb), -(-H // bh)
    hp = n_htiles * bh
    gemm_tiles = -(-B // matmul[0]) * -(-(NUM_GATES[cell] * hp) // matmul[1])
    programs = 1 if interpret else min(sm_count * PROGRAMS_PER_SM,
                                       max(gemm_tiles, n_btiles * n_htiles))
    return LaunchConfig("gemm", SYNC_CTA if interpret else SYNC_GRID, bb, bh, matmul[2], warps,
                        n_btiles, n_htiles, matmul[4], warps, matmul, programs)


def gemm_per_step(cfg: LaunchConfig) -> LaunchConfig:
    """The two-launches-a-step form of a gemm-mode config: recurrent_matmul_kernel, then the
    recurrence kernel with RECURRENT=1 (its gate math without stages: no dot)."""
    return replace(cfg, sync=SYNC_NONE, block_k=MIN_DOT_TILE, num_stages=1, programs=0)


def workspace_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


# ----------------------------------------------------------------------------------------------
# Launch helpers (torch side)
# ----------------------------------------------------------------------------------------------
def max_registers(num_warps: int) -> int:
    """Register cap per thread passed to ptxas (.maxnreg). Without it ptxas picked 96-128
    registers for some configs and spilled a few bytes (perf/compile_report.py); the persistent
    kernels run one program per SM anyway, so allow everything that fits one program."""
    return min(255, 65536 // (32 * num_warps))


def _launch_kwargs(cfg: LaunchConfig, backward: bool = False):
    if interpreting():
        return {}
    _, _, warps, stages = cfg.kernel_shape(backward)
    kw = {"num_warps": warps, "num_stages": stages, "maxnreg": max_registers(warps)}
    if cfg.sync == SYNC_GRID:   # a spin barrier: the grid must be co-resident
        kw["launch_cooperative_grid"] = True
    return kw


def _empty(*shape, dtype, device):
    """NaN-poisoned (under GATEDRNN_POISON_OUTPUTS=1) torch.empty: see kernels/_launch.py."""
    return empty(*shape, dtype=dtype, device=device)


def _device_info(t: torch.Tensor):
    """(sm_count, capability, opt-in shared memory per block) of t's device; (1, (9, 0), None)
    on the CPU (interpreter)."""
    if t.is_cuda:
        index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        return device_properties(index) + (shared_memory_per_block(index),)
    return 1, (9, 0), None


def _config_for(cell, H, B, dtype, t, mode):
    sms, cap, shared = _device_info(t)
    cfg = choose_config(cell, H, B, dtype, sms, interpreting(), mode, cap, shared)
    LOG.debug("%s H=%d B=%d %s: %s", CELL_NAMES[cell], H, B, dtype, cfg)
    return cfg


def _input_projection(cell, x, w_ih, b_ih, b_hh, H):
    """x @ W_ih^T + b_ih + b_hh for all steps at once (one GEMM through torch/cuBLAS).
    GRU reset_after keeps b_hn out (it sits inside r * (W_hn h + b_hn))."""
    T, B, I = x.shape
    G = NUM_GATES[cell]
    bias = torch.zeros(G * H, dtype=x.dtype, device=x.device)
    if b_ih is not None:
        bias = bias + b_ih
    if b_hh is not None:
        if cell == CELL_GRU:
            bias[: 2 * H] += b_hh[: 2 * H]
        else:
            bias = bias + b_hh
    return torch.addmm(bias, x.reshape(T * B, I), w_ih.t()).reshape(T, B, G * H)


def recurrent_forward(cell, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, mode=None):
    """Returns (output (T,B,H), h_n (B,H), c_n (B,H) or None, workspace (T,B,W*H))."""
    T, B, _ = x.shape
    H = h0.shape[1]
    G = NUM_GATES[cell]
    dev = x.device
    cfg = _config_for(cell, H, B, x.dtype, x, mode)
    xproj = _input_projection(cell, x, w_ih, b_ih, b_hh, H)
    out = _empty(T, B, H, dtype=x.dtype, device=dev)
    ws = _empty(T, B, WORKSPACE_WIDTH[cell] * H, dtype=workspace_dtype(x.dtype), device=dev)
    h_state = h0.to(torch.float32).clone()
    HP = padded_hidden(H, cfg)
    w_pad = _padded_weight(w_hh, G, H, HP)
    h_exchange = torch.zeros(2, B, HP, dtype=x.dtype, device=dev)   # zero padding units
    h_exchange[0, :, :H] = h0
    c_state = (c0.float().clone() if cell == CELL_LSTM
               else torch.empty(1, dtype=torch.float32, device=dev))
    exchange = (torch.zeros(2, B, HP, dtype=x.dtype, device=dev)
                if cell == CELL_GRU_RESET_BEFORE else h_exchange)
    b_hn = (b_hh[2 * H:] if (cell == CELL_GRU and b_hh is not None)
            else torch.zeros(H, dtype=x.dtype, device=dev))
    sem = torch.zeros(cfg.n_btiles, dtype=torch.int32, device=dev)
    # The ops pass lengths on the CPU (checked there without a device sync); a pageable-memory
    # copy with non_blocking=True does not wait for the stream either (non_blocking=False would).
    lengths = lengths.to(device=dev, dtype=torch.int64, non_blocking=True)
    two_phase = cell == CELL_GRU_RESET_BEFORE
    gemm = cfg.mode == "gemm"
    precision = dot_precision(x.dtype)
    # unused outside the gemm mode: any float32 tensor (the pointer type the gate compiles)
    hh = _empty(B, G * HP, dtype=torch.float32, device=dev) if gemm else h_state
    common = dict(cell_kernel_constexprs(cell, cfg, precision), **_launch_kwargs(cfg))
    args = (xproj, w_pad, b_hn, lengths, h_state, h_exchange, c_state, exchange, hh, out, ws,
            sem)
    if cfg.mode == "persistent":
        recurrent_forward_kernel[cfg.grid](*args, 0, T, B, H, HP, int(reverse),
                                           PHASES=3 if two_phase else 1, SYNC=cfg.sync,
                                           **common)
    elif gemm and cfg.sync != SYNC_NONE:
        recurrent_gemm_forward_kernel[cfg.grid](*args, T, B, H, HP, int(reverse),
                                                **gemm_kernel_constexprs(cell, cfg, precision),
                                                **_launch_kwargs(cfg))
    elif gemm:
        # Per step: hh = h @ W_hh^T (for GRU reset_before only the r, z rows), the gate math;
        # GRU reset_before then hh[:, n] = (r*h) @ W_hn^T and its second phase.
        w_rows = w_pad.reshape(G * HP, HP)
        first_rows = (2 if two_phase else G) * HP
        for s in range(T):
            slot = s % 2
            _step_matmul(cfg, h_exchange[slot], w_rows, hh, B, first_rows, HP, HP, G * HP,
                         True, precision)
            recurrent_forward_kernel[cfg.grid](*args, s, s + 1, B, H, HP, int(reverse),
                                               PHASES=1, SYNC=SYNC_NONE, **common)
            if two_phase:
                _step_matmul(cfg, exchange[slot], w_rows[2 * HP:], hh[:, 2 * HP:], B, HP, HP,
                             HP, G * HP, True, precision)
                recurrent_forward_kernel[cfg.grid](*args, s, s + 1, B, H, HP, int(reverse),
                                                   PHASES=2, SYNC=SYNC_NONE, **common)
    else:
        for s in range(T):
            for phases in ((1, 2) if two_phase else (1,)):
                recurrent_forward_kernel[cfg.grid](*args, s, s + 1, B, H, HP, int(reverse),
                                                   PHASES=phases, SYNC=SYNC_NONE, **common)
    h_n = h_state.to(x.dtype)
    c_n = c_state.to(x.dtype) if cell == CELL_LSTM else None
    return out, h_n, c_n, ws


def _step_matmul(cfg: LaunchConfig, a, w, c, M: int, N: int, K: int, ldw: int, ldc: int,
                 w_transposed: bool, precision: str) -> None:
    """c[:M, :N] = a[:M, :K] @ (w[:N, :K]^T if w_transposed else w[:K, :N]) in float32 with
    recurrent_matmul_kernel (a's row stride is its own, w's is ldw, c's ldc)."""
    block_m, block_n, block_k, warps, stages = cfg.matmul
    grid = (-(-M // block_m) * -(-N // block_n),)
    kwargs = {} if interpreting() else {"num_warps": warps, "num_stages": stages}
    recurrent_matmul_kernel[grid](a, w, c, M, N, K, a.stride(0), ldw, ldc,
                                  W_TRANSPOSED=w_transposed, BLOCK_M=block_m, BLOCK_N=block_n,
                                  BLOCK_K=block_k, PRECISION=precision, **kwargs)


def padded_hidden(H: int, cfg: LaunchConfig) -> int:
    """Row stride of W_hh and of the exchange buffers: H rounded up to the hidden tile (itself a
    multiple of 16), so every exchanged row is 16-element aligned (vector loads) and the hidden
    tiles cover the padding exactly. Equal to H for the usual sizes (multiples of 32)."""
    return -(-H // cfg.block_h) * cfg.block_h


def _padded_weight(w_hh, G, H, HP):
    """W_hh as (G, HP, HP), zero-padded (no copy when HP == H)."""
    if HP == H:
        return w_hh
    w = torch.zeros(G, HP, HP, dtype=w_hh.dtype, device=w_hh.device)
    w[:, :H, :H] = w_hh.view(G, H, H)
    return w


def _previous_states(output, h0, lengths, reverse):
    """h_prev[t, b]: the state before processing time t (h0 at a sequence's first step)."""
    T = output.shape[0]
    if not reverse:
        return torch.cat([h0[None], output[:-1]], 0)
    shifted = torch.cat([output[1:], torch.zeros_like(h0)[None]], 0)
    t = torch.arange(T, device=output.device)[:, None]
    first = (t == (lengths.to(output.device)[None, :] - 1))[:, :, None]
    return torch.where(first, h0[None], shifted)


def recurrent_backward(cell, grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh,
                       lengths, reverse, output, workspace, mode=None):
    """Returns (grad_x, grad_h0, grad_c0 or None, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh).

    The kernel computes the per-step gate gradients (T,B,G*H) and the dh/dc carries; dx, dW_ih,
    dW_hh and the bias gradients are GEMMs/sums over all steps (deterministic, no atomics)."""
    T, B, I = x.shape
    H = h0.shape[1]
    G = NUM_GATES[cell]
    dev = x.device
    cfg = _config_for(cell, H, B, x.dtype, x, mode)
    f32 = torch.float32
    dh_state = grad_h_n.to(f32).clone()
    dc_state = (grad_c_n.to(f32).clone() if cell == CELL_LSTM
                else torch.empty(1, dtype=f32, device=dev))
    dh_total = (torch.empty(B, H, dtype=f32, device=dev) if cell == CELL_GRU_RESET_BEFORE
                else dh_state)
    # Gate gradients in the input dtype: the weight GEMMs consume them in that dtype anyway,
    # and the per-step exchange moves half the bytes for half inputs.
    HP = padded_hidden(H, cfg)
    w_pad = _padded_weight(w_hh, G, H, HP)
    dgate = _empty(T, B, G * HP, dtype=x.dtype, device=dev)
    dgate_n = (_empty(T, B, H, dtype=x.dtype, device=dev) if cell == CELL_GRU else dgate)
    sem = torch.zeros(cfg.n_btiles, dtype=torch.int32, device=dev)
    lengths_d = lengths.to(device=dev, dtype=torch.int64, non_blocking=True)  # (as in the forward)
    c0_arg = c0 if c0 is not None else h0
    two_phase = cell == CELL_GRU_RESET_BEFORE
    gemm = cfg.mode == "gemm"
    precision = dot_precision(x.dtype)
    hh = _empty(B, HP, dtype=f32, device=dev) if gemm else dh_state   # (as in the forward)
    dgate_step = _empty(B, G * HP, dtype=x.dtype, device=dev) if gemm else dgate
    common = dict(cell_kernel_constexprs(cell, cfg, precision, backward=True),
                  **_launch_kwargs(cfg, backward=True))
    args = (grad_output, w_pad, lengths_d, h0, c0_arg, output, workspace, dh_state, dc_state,
            dh_total, dgate, dgate_n, hh, dgate_step, sem)
    if cfg.mode == "persistent":
        recurrent_backward_kernel[cfg.grid](*args, 0, T + 1, T, B, H, HP, int(reverse),
                                            PHASES=3 if two_phase else 1, SYNC=cfg.sync,
                                            **common)
    elif gemm and cfg.sync != SYNC_NONE:
        recurrent_gemm_backward_kernel[cfg.grid](*args, T, B, H, HP, int(reverse),
                                                 **gemm_kernel_constexprs(cell, cfg, precision),
                                                 **_launch_kwargs(cfg, backward=True))
    elif gemm:
        # Iteration k: hh = (gate gradients of step T-k, by row) @ W_hh (for GRU reset_before
        # only the r, z rows), then dh of step T-k and the gate gradients of step T-1-k; GRU
        # reset_before then hh = da_n @ W_hn and its second phase (da_r).
        w_rows = w_pad.reshape(G * HP, HP)
        reduced_rows = (2 if two_phase else G) * HP
        for k in range(T + 1):
            if k > 0:
                _step_matmul(cfg, dgate_step, w_rows, hh, B, HP, reduced_rows, HP, HP, False,
                             precision)
            recurrent_backward_kernel[cfg.grid](*args, k, k + 1, T, B, H, HP, int(reverse),
                                                PHASES=1, SYNC=SYNC_NONE, **common)
            if two_phase and k < T:
                _step_matmul(cfg, dgate_step[:, 2 * HP:], w_rows[2 * HP:], hh, B, HP, HP, HP,
                             HP, False, precision)
                recurrent_backward_kernel[cfg.grid](*args, k, k + 1, T, B, H, HP,
                                                    int(reverse), PHASES=2, SYNC=SYNC_NONE,
                                                    **common)
    else:
        for k in range(T + 1):
            for phases in ((1, 2) if two_phase else (1,)):
                recurrent_backward_kernel[cfg.grid](*args, k, k + 1, T, B, H, HP, int(reverse),
                                                    PHASES=phases, SYNC=SYNC_NONE, **common)

    # Weight-side reductions over all T*B rows as GEMMs, in the input dtype for half types
    # (cuBLAS accumulates in float32) and float32 otherwise.
    gemm_dtype = x.dtype
    dg_hh = dgate.view(T * B, G, HP)[:, :, :H].reshape(T * B, G * H)  # a view when HP == H
    if cell == CELL_GRU:
        dg_ih = torch.cat([dg_hh[:, : 2 * H], dgate_n.reshape(T * B, H)], -1)
    else:
        dg_ih = dg_hh
    h_prev = _previous_states(output, h0, lengths_d, reverse).reshape(T * B, H)
    x2 = x.reshape(T * B, I)
    grad_x = (dg_ih.to(gemm_dtype) @ w_ih).reshape(T, B, I)
    grad_w_ih = (dg_ih.to(gemm_dtype).t() @ x2).to(w_ih.dtype)
    if cell == CELL_GRU_RESET_BEFORE:
        r = workspace[..., :H].reshape(T * B, H)
        grad_w_hh = torch.cat([
            dg_hh[:, : 2 * H].to(gemm_dtype).t() @ h_prev,
            dg_hh[:, 2 * H:].to(gemm_dtype).t() @ (r * h_prev.to(r.dtype)).to(gemm_dtype)], 0)
    else:
        grad_w_hh = dg_hh.to(gemm_dtype).t() @ h_prev
    grad_w_hh = grad_w_hh.to(w_hh.dtype)
    grad_b_hh = dg_hh.sum(0, dtype=f32).to(w_hh.dtype)
    grad_b_ih = dg_ih.sum(0, dtype=f32).to(w_ih.dtype)
    grad_h0 = dh_state.to(x.dtype)
    grad_c0 = dc_state.to(x.dtype) if cell == CELL_LSTM else None
    return grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


# ----------------------------------------------------------------------------------------------
# Enumeration for the compile gate
# ----------------------------------------------------------------------------------------------
def kernel_configs(cell: int, H: int, B: int, dtype: torch.dtype, sm_count: int,
                   capability: tuple = (9, 0)):
    """Every (kernel name, constexprs, num_warps, num_stages) the launchers can compile for
    (cell, H, B, dtype) on a device with sm_count SMs in default mode: forward and backward,
    every PHASES value. Used by perf/compile_report.py."""
    return expand_config(cell, choose_config(cell, H, B, dtype, sm_count,
                                             capability=capability), dtype)


def cell_kernel_constexprs(cell: int, cfg: LaunchConfig, precision: str, backward: bool = False) -> dict:
    """The constexprs recurrent_forward_kernel / recurrent_backward_kernel take from cfg, all but
    PHASES and SYNC (which each launch sets): one place for the launchers and expand_config (what
    the compile gate compiles), so the two cannot drift apart."""
    resident, block_k, _, _ = cfg.kernel_shape(backward)
    return dict(CELL=cell, NUM_GATES=NUM_GATES[cell], WS_WIDTH=WORKSPACE_WIDTH[cell],
                BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=block_k, PRECISION=precision,
                RECURRENT=int(cfg.mode == "gemm"), RESIDENT=resident)


def gemm_kernel_constexprs(cell: int, cfg: LaunchConfig, precision: str) -> dict:
    """The constexprs of recurrent_gemm_forward_kernel / recurrent_gemm_backward_kernel (the gemm
    mode in one launch), for the launchers and expand_config alike."""
    block_m, block_n, block_k, _, _ = cfg.matmul
    return dict(CELL=cell, NUM_GATES=NUM_GATES[cell], WS_WIDTH=WORKSPACE_WIDTH[cell],
                BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_M=block_m, BLOCK_N=block_n,
                BLOCK_K=block_k, SYNC=cfg.sync, PRECISION=precision)


def expand_config(cell: int, cfg: LaunchConfig, dtype: torch.dtype):
    """The (kernel name, constexprs, num_warps, num_stages) launches of one LaunchConfig."""
    two_phase = cell == CELL_GRU_RESET_BEFORE
    precision = "tf32" if dtype == torch.float32 else "ieee"
    if cfg.mode == "gemm" and cfg.sync != SYNC_NONE:
        constexprs = gemm_kernel_constexprs(cell, cfg, precision)
        return [("recurrent_gemm_forward_kernel", constexprs, cfg.num_warps, cfg.num_stages),
                ("recurrent_gemm_backward_kernel", dict(constexprs), cfg.num_warps_bwd,
                 cfg.num_stages)]
    if cfg.mode in ("per_step", "gemm"):
        phases, sync = ((1, 2) if two_phase else (1,)), SYNC_NONE
    else:
        phases, sync = ((3,) if two_phase else (1,)), cfg.sync
    out = []
    for kernel in ("recurrent_forward_kernel", "recurrent_backward_kernel"):
        backward = "backward" in kernel
        _, _, warps, stages = cfg.kernel_shape(backward)
        for ph in phases:
            constexprs = dict(cell_kernel_constexprs(cell, cfg, precision, backward), PHASES=ph,
                              SYNC=sync)
            out.append((kernel, constexprs, warps, stages))
    if cfg.mode == "gemm":
        block_m, block_n, block_k, warps, stages = cfg.matmul
        for transposed in (True, False):   # forward h @ W^T, backward gate gradients @ W
            out.append(("recurrent_matmul_kernel",
                        dict(W_TRANSPOSED=transposed, BLOCK_M=block_m, BLOCK_N=block_n,
                             BLOCK_K=block_k, PRECISION=precision), warps, stages))
    return out


@triton.jit(do_not_specialize=["steps"])
def barrier_only_kernel(sem_ptr, steps, n_htiles, SYNC: tl.constexpr):
    """Only the per-step synchronisation of the persistent kernels (the per-step latency floor
    that perf/bench_rnn_gpu.py compares against); grid = n_batch_tiles * n_htiles."""
    pid = tl.program_id(0)
    for _ in range(steps):
        _sync(sem_ptr + pid // n_htiles, n_htiles, pid % n_htiles == 0, SYNC)


def barrier_floor(cfg: LaunchConfig, steps: int, device):
    """Launch barrier_only_kernel with cfg's grid for `steps` steps (returns nothing)."""
    sem = torch.zeros(cfg.n_btiles, dtype=torch.int32, device=device)
    kw = _launch_kwargs(cfg)
    kw.pop("num_stages", None)
    barrier_only_kernel[cfg.grid](sem, steps, cfg.n_htiles, SYNC=cfg.sync, **kw)
