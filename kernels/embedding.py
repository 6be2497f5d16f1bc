"""Triton kernels for embedding lookup (``torch.nn.functional.embedding``) and its weight gradient.

Forward: ``output[n, :] = weight[indices[n], :]``, one program per (block of rows, block of
columns). Indices were range-checked by the ops layer, and lanes past N or D are masked (no load,
no store), so valid input never reads outside ``weight``.

Backward, deterministic without atomics: the indices are sorted (stable), so the occurrences of
each row form one segment of the sorted order, located per row with ``searchsorted`` (no host
synchronisation: the grid is one program per (row of the weight, block of columns)). A program
sums its row's segment in sorted order, BLOCK_OCC occurrences per step (each lane adds its own
occurrences in order, then one fixed-shape ``tl.sum`` combines the lanes), and writes the row:
0 for a row never referenced or for ``padding_idx``. Every row is written exactly once, so the
output can be NaN-poisoned. Limitation: a row with very many occurrences is summed by one
program per column block (BLOCK_OCC rows per step), so heavily skewed index distributions
serialise on it.

All accumulation is float32; float32/bfloat16/float16 weights. Launchers validate nothing.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import empty
from .pool import TRITON_TYPES, gate_signature

# Column block buckets (the first that holds D, else the last: several blocks). Forward: narrow
# (<= 16), medium (<= 64), wide (256 columns, 1 KB of float32 per row: full 128-byte transactions
# in every dtype). Backward stops at 64 columns so that a program holds more occurrences per
# step (BLOCK_OCC rows in flight): a row's occurrences are summed by its programs in sequence,
# and frequent rows (a character model's space: thousands of lookups) set the time; more column
# blocks also mean more programs when V is small. 64 columns is 128 bytes in bf16/fp16.
FORWARD_COLUMN_BLOCKS = (16, 64, 256)
BACKWARD_COLUMN_BLOCKS = (16, 64)
# Elements per program tile (rows x columns) with 4 warps, from the compile gate: 2048 forward
# (a pure copy, 16 per thread; 4096 spilled with unaligned 256-column bf16 rows), 2048 backward
# (16 fp32 accumulators + 16 loaded values per thread, <= 72 registers; 4096 took 168 registers
# with unaligned rows, whose scalar loads each carry a 64-bit address).
FORWARD_TILE = 2048
BACKWARD_TILE = 2048
NUM_WARPS = 4
NUM_STAGES = 1  # no pipelined loops
# Row alignment (in elements) promised to the compiler when D is a multiple of it: 8 elements
# make every row start 16-byte aligned in bf16/fp16 (32 bytes in fp32), enabling vector loads.
ROW_ALIGN = 8


@triton.jit(do_not_specialize=["N", "D"])
def embedding_forward_kernel(weight_ptr, indices_ptr, output_ptr, N, D, BLOCK_N: tl.constexpr,
                             BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """output (N, D) = weight[indices] for a (BLOCK_N, BLOCK_D) tile."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_ok = rows < N
    ok = row_ok[:, None] & (cols < D)[None, :]
    source = tl.load(indices_ptr + rows, mask=row_ok, other=0)
    source_base = source * D
    target_base = rows * D
    if ALIGN > 1:
        source_base = tl.multiple_of(source_base, ALIGN)
        target_base = tl.multiple_of(target_base, ALIGN)
    values = tl.load(weight_ptr + source_base[:, None] + cols[None, :], mask=ok)
    tl.store(output_ptr + target_base[:, None] + cols[None, :], values, mask=ok)


@triton.jit(do_not_specialize=["D", "padding_idx"])
def embedding_backward_kernel(grad_output_ptr, order_ptr, starts_ptr, grad_weight_ptr, D,
                              padding_idx, BLOCK_OCC: tl.constexpr, BLOCK_D: tl.constexpr,
                              ALIGN: tl.constexpr):
    """grad_weight[row, block] = sum of grad_output[order[j], block], j in [starts[row],
    starts[row+1]) in order (0 for padding_idx); one program per (row, column block)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    start = tl.load(starts_ptr + row)
    end = tl.load(starts_ptr + row + 1)
    end = tl.where(row == padding_idx, start, end)  # the padding row gets no gradient
    acc = tl.zeros((BLOCK_OCC, BLOCK_D), tl.float32)
    for first in range(start, end, BLOCK_OCC):
        positions = first + tl.arange(0, BLOCK_OCC)
        occ_ok = positions < end
        source = tl.load(order_ptr + positions, mask=occ_ok, other=0)
        source_base = source * D
        if ALIGN > 1:
            source_base = tl.multiple_of(source_base, ALIGN)
        acc += tl.load(grad_output_ptr + source_base[:, None] + cols[None, :],
                       mask=occ_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    target_base = row * D
    if ALIGN > 1:
        target_base = tl.multiple_of(target_base, ALIGN)
    tl.store(grad_weight_ptr + target_base + cols, total.to(grad_weight_ptr.dtype.element_ty),
             mask=col_ok)


# ----------------------------------------------------------------------------------------------
# Launch configuration (one source for the launchers and the compile gate)
# ----------------------------------------------------------------------------------------------
def launch_config(kernel: str, D: int, dtype: torch.dtype) -> dict:
    """Constexprs, warps and stages of ``kernel`` for rows of D columns (any dtype)."""
    forward = kernel == "embedding_forward_kernel"
    buckets = FORWARD_COLUMN_BLOCKS if forward else BACKWARD_COLUMN_BLOCKS
    block_d = next((b for b in buckets if D <= b), buckets[-1])
    tile = FORWARD_TILE if forward else BACKWARD_TILE
    rows = "BLOCK_N" if forward else "BLOCK_OCC"
    align = ROW_ALIGN if D % ROW_ALIGN == 0 else 1
    return {"constexprs": {rows: tile // block_d, "BLOCK_D": block_d, "ALIGN": align},
            "num_warps": NUM_WARPS, "num_stages": NUM_STAGES}


def _launch(kernel, grid_rows, D, dtype, *args):
    config = launch_config(kernel.__name__, D, dtype)
    constexprs = config["constexprs"]
    rows = constexprs.get("BLOCK_N", 1)  # backward: one program per weight row
    grid = (triton.cdiv(grid_rows, rows), triton.cdiv(D, constexprs["BLOCK_D"]))
    kernel[grid](*args, **constexprs, num_warps=config["num_warps"],
                 num_stages=config["num_stages"])


def embedding_forward(weight, indices, padding_idx):
    """weight (V, D), indices int64 (N,) in [0, V) -> output (N, D) in weight's dtype."""
    N, D = indices.shape[0], weight.shape[1]
    output = empty(N, D, dtype=weight.dtype, device=weight.device)
    _launch(embedding_forward_kernel, N, D, weight.dtype, weight, indices, output, N, D)
    return output


def embedding_backward(grad_output, indices, num_weights, padding_idx):
    """grad_output (N, D), indices int64 (N,) in [0, V), V = num_weights, padding_idx in [0, V)
    or -1 -> grad_weight (V, D): occurrences summed in their order of appearance."""
    D = grad_output.shape[1]
    sorted_indices, order = torch.sort(indices, stable=True)
    rows = torch.arange(num_weights + 1, dtype=torch.int64, device=indices.device)
    starts = torch.searchsorted(sorted_indices, rows)  # segment of row v: [starts[v], starts[v+1])
    grad_weight = empty(num_weights, D, dtype=grad_output.dtype, device=grad_output.device)
    _launch(embedding_backward_kernel, num_weights, D, grad_output.dtype, grad_output, order,
            starts, grad_weight, D, padding_idx)
    return grad_weight


# ----------------------------------------------------------------------------------------------
# Compile-gate listing
# ----------------------------------------------------------------------------------------------
KERNELS = (embedding_forward_kernel, embedding_backward_kernel)
_INDEX_POINTERS = ("indices_ptr", "order_ptr", "starts_ptr")


def gate_configs(capability: int) -> list:
    """Every compile the launchers of this module can request on a GPU of this capability (80 or
    90), over all dtypes and all D: the column bucket and row alignment are what vary."""
    # D = 1..2*largest bucket covers every bucket with and without alignment; beyond that the
    # choice repeats (the last bucket for every larger D).
    widths = range(1, 2 * FORWARD_COLUMN_BLOCKS[-1] + 1)
    configs = []
    for dtype, tt in TRITON_TYPES.items():
        for fn in KERNELS:
            name = fn.__name__
            seen = set()
            for D in widths:
                config = launch_config(name, D, dtype)
                key = tuple(sorted(config["constexprs"].items()))
                if key in seen:
                    continue
                seen.add(key)
                pointers = {arg: "*i64" if arg in _INDEX_POINTERS else "*" + tt
                            for arg in fn.arg_names if arg.endswith("_ptr")}
                cx = config["constexprs"]
                configs.append({
                    "kernel": name,
                    "signature": gate_signature(fn, pointers, cx),
                    "constexprs": dict(cx),
                    "num_warps": config["num_warps"],
                    "num_stages": config["num_stages"],
                    "label": (f"{name.replace('_kernel', '')} {tt} "
                              + " ".join(f"{k}{v}" for k, v in cx.items())),
                })
    return configs
