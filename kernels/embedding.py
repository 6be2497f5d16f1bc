"""Triton kernels for embedding lookup (``torch.nn.functional.embedding``) and its weight gradient.

Forward: ``output[n, :] = weight[indices[n], :]``, one program per (block of rows, block of
columns). Indices were range-checked by the ops layer, and lanes past N or D are masked (no load,
no store), so valid input never reads outside ``weight``.

Backward, deterministic without atomics: the indices are sorted (stable), so the occurrences of
each row form one segment of the sorted order, located per row with ``searchsorted`` (no host
synchronisation). One program per (row of the weight, block of columns) sums its row's segment
in sorted order, BLOCK_OCC occurrences per step (each lane adds its own occurrences in order, then
one fixed-shape ``tl.sum`` combines the lanes), and writes the row: 0 for a row never referenced
or for ``padding_idx``. A frequent row (a character model's space, a word model's "the": thousands
of lookups) would serialise on its program, so once N exceeds PIECE lookups the segments are cut
into pieces of PIECE occurrences: a row with more than one piece has its later pieces summed by
extra programs of the same launch into a float32 buffer of partial sums (one slot per piece, at
most N // PIECE), and a second kernel sums its first piece and then those partials, in order,
into the row. The cut depends only on the indices, so the result is bitwise reproducible. Every
row is written exactly once, so the output can be NaN-poisoned. With ``scale_grad_by_freq`` the
program that writes a row divides its sum by the row's number of occurrences (its segment's
length) as it writes it.

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
# Occurrences a backward program sums at most, once N > PIECE: 32 steps of 32 rows (64-column
# blocks) or 8 of 128 (16-column blocks), so the busiest row costs about two such programs in
# sequence (one of its further pieces, then the combine: its first piece and its partials)
# instead of count / BLOCK_OCC steps: 2048 for a row that takes a quarter of B = 64 x T = 4096
# lookups at D > 16. Not yet timed on a GPU; up to N = PIECE the backward is the one launch it was.
PIECE = 1024
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


@triton.jit
def _sum_occurrences(grad_output_ptr, order_ptr, first, end, cols, col_ok, D,
                     BLOCK_OCC: tl.constexpr, BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """Float32 sum over sorted positions [first, end) of grad_output[order[j], cols]: lane l
    adds positions first + l, first + l + BLOCK_OCC, ... in order, then one tl.sum (fixed shape,
    so fixed order) combines the lanes. Nothing when end <= first."""
    acc = tl.zeros((BLOCK_OCC, BLOCK_D), tl.float32)
    for step in range(first, end, BLOCK_OCC):
        positions = step + tl.arange(0, BLOCK_OCC)
        occ_ok = positions < end
        source = tl.load(order_ptr + positions, mask=occ_ok, other=0)
        source_base = source * D
        if ALIGN > 1:
            source_base = tl.multiple_of(source_base, ALIGN)
        acc += tl.load(grad_output_ptr + source_base[:, None] + cols[None, :],
                       mask=occ_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
    return tl.sum(acc, axis=0)


@triton.jit
def _row_total(total, start, end, scale_by_freq):
    """total, divided by the row's number of occurrences end - start when scale_by_freq != 0
    (scale_grad_by_freq: by at least 1, so a row never looked up stays 0)."""
    count = tl.maximum(end - start, 1).to(tl.float32)
    # (start * 0 + scale_by_freq): a tensor condition (the interpreter passes ints as ints)
    return tl.where((start * 0 + scale_by_freq) != 0, total / count, total)


@triton.jit(do_not_specialize=["D", "padding_idx", "num_weights", "piece", "split", "scale_by_freq"])
def embedding_backward_kernel(grad_output_ptr, order_ptr, starts_ptr, extra_ptr, extra_end_ptr,
                              extra_row_ptr, grad_weight_ptr, partials_ptr, D, padding_idx,
                              num_weights, piece, scale_by_freq, split, BLOCK_OCC: tl.constexpr,
                              BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """Programs [0, num_weights) of axis 0 own a row each: a row of one piece (every row when
    split == 0) is summed and written here, grad_weight[row] = its occurrences' sum (0 for
    padding_idx; divided by their number when scale_by_freq != 0); a longer row's first piece
    is left to embedding_backward_combine_kernel.
    Program num_weights + e (split == 1) sums extra piece e, piece k >= 1 of row extra_row[e]
    (k = e - its first slot + 1), into partials[e]; slots past the last piece do nothing."""
    program = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    is_extra = program >= num_weights
    slot = tl.where(is_extra, program - num_weights, 0)
    extra_row = tl.load(extra_row_ptr + slot, mask=is_extra, other=0)
    row = tl.where(is_extra, extra_row, program)
    valid = row < num_weights  # extra_row is num_weights for slots past the last piece
    row = tl.where(valid, row, 0)
    # (row * 0 + split): a tensor condition, as masks must be (the interpreter passes ints as ints)
    n_extra = tl.load(extra_ptr + row, mask=(row * 0 + split) != 0, other=0)
    piece_index = tl.where(is_extra, slot - (tl.load(extra_end_ptr + row, mask=is_extra, other=0)
                                              - n_extra) + 1, 0)
    start = tl.load(starts_ptr + row)
    end = tl.load(starts_ptr + row + 1)
    end = tl.where(row == padding_idx, start, end)  # the padding row gets no gradient
    first = start + piece_index * piece
    last = tl.where(is_extra, tl.minimum(first + piece, end), end)
    to_row = valid & ~is_extra & (n_extra == 0)
    to_partial = valid & is_extra
    last = tl.where(to_row | to_partial, last, first)  # nothing to sum for the others
    total = _sum_occurrences(grad_output_ptr, order_ptr, first, last, cols, col_ok, D,
                             BLOCK_OCC, BLOCK_D, ALIGN)
    target_base = row * D
    if ALIGN > 1:
        target_base = tl.multiple_of(target_base, ALIGN)
    # (the partials stay unscaled: the combine kernel divides the row's whole sum)
    row_total = _row_total(total, start, end, scale_by_freq)
    # tl.where, not col_ok & to_row: the interpreter makes an int32 mask of a scalar & a vector
    tl.store(grad_weight_ptr + target_base + cols, row_total.to(grad_weight_ptr.dtype.element_ty),
             mask=tl.where(to_row, col_ok, False))
    tl.store(partials_ptr + slot * D + cols, total, mask=tl.where(to_partial, col_ok, False))


@triton.jit(do_not_specialize=["D", "padding_idx", "num_weights", "piece", "scale_by_freq"])
def embedding_backward_combine_kernel(grad_output_ptr, order_ptr, starts_ptr, extra_ptr,
                                      extra_end_ptr, extra_row_ptr, grad_weight_ptr,
                                      partials_ptr, D, padding_idx, num_weights, piece,
                                      scale_by_freq, BLOCK_OCC: tl.constexpr,
                                      BLOCK_D: tl.constexpr, ALIGN: tl.constexpr):
    """The rows of several pieces, one program per partial-sum slot of axis 0: the program of a
    row's first slot writes grad_weight[row] = (its first piece's sum) + partials of its slots
    in order (0 for padding_idx; divided by the row's occurrences when scale_by_freq != 0); the
    others do nothing."""
    slot = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_ok = cols < D
    row = tl.load(extra_row_ptr + slot)
    valid = row < num_weights
    row = tl.where(valid, row, 0)
    n_extra = tl.load(extra_ptr + row)
    first_slot = tl.load(extra_end_ptr + row) - n_extra
    owner = valid & (slot == first_slot)
    start = tl.load(starts_ptr + row)
    end = tl.load(starts_ptr + row + 1)
    end = tl.where(row == padding_idx, start, end)
    last = tl.where(owner, tl.minimum(start + piece, end), start)
    total = _sum_occurrences(grad_output_ptr, order_ptr, start, last, cols, col_ok, D,
                             BLOCK_OCC, BLOCK_D, ALIGN)
    n_partials = tl.where(owner, n_extra, 0)
    acc = tl.zeros((BLOCK_OCC, BLOCK_D), tl.float32)
    for step in range(0, n_partials, BLOCK_OCC):
        offsets = step + tl.arange(0, BLOCK_OCC)
        slot_ok = offsets < n_partials
        acc += tl.load(partials_ptr + (first_slot + offsets)[:, None] * D + cols[None, :],
                       mask=slot_ok[:, None] & col_ok[None, :], other=0.0)
    total = _row_total(total + tl.sum(acc, axis=0), start, end, scale_by_freq)
    target_base = row * D
    if ALIGN > 1:
        target_base = tl.multiple_of(target_base, ALIGN)
    tl.store(grad_weight_ptr + target_base + cols, total.to(grad_weight_ptr.dtype.element_ty),
             mask=tl.where(owner, col_ok, False))


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
    rows = constexprs.get("BLOCK_N", 1)  # backward: one program per row or piece of axis 0
    grid = (triton.cdiv(grid_rows, rows), triton.cdiv(D, constexprs["BLOCK_D"]))
    kernel[grid](*args, **constexprs, num_warps=config["num_warps"],
                 num_stages=config["num_stages"])


def embedding_forward(weight, indices, padding_idx):
    """weight (V, D), indices int64 (N,) in [0, V) -> output (N, D) in weight's dtype."""
    N, D = indices.shape[0], weight.shape[1]
    output = empty(N, D, dtype=weight.dtype, device=weight.device)
    _launch(embedding_forward_kernel, N, D, weight.dtype, weight, indices, output, N, D)
    return output


def embedding_backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq=False):
    """grad_output (N, D), indices int64 (N,) in [0, V), V = num_weights, padding_idx in [0, V)
    or -1 -> grad_weight (V, D): each row's occurrences summed in their order of appearance, in
    pieces of PIECE once N > PIECE (see the module docstring); with ``scale_grad_by_freq`` each
    row's sum is divided by its number of occurrences."""
    N, D = grad_output.shape
    device = indices.device
    sorted_indices, order = torch.sort(indices, stable=True)
    rows = torch.arange(num_weights + 1, dtype=torch.int64, device=device)
    starts = torch.searchsorted(sorted_indices, rows)  # segment of row v: [starts[v], starts[v+1])
    grad_weight = empty(num_weights, D, dtype=grad_output.dtype, device=grad_output.device)
    piece = PIECE
    # Pieces past a row's first: floor((count - 1) / piece) for each row, at most N // piece in
    # all. Tables on the device, so the host never waits for the sort.
    max_extra = N // piece if N > piece else 0
    if max_extra:
        counts = starts[1:] - starts[:-1]
        extra = (counts - 1).clamp_(min=0).div_(piece, rounding_mode="floor")
        extra_end = extra.cumsum(0)  # row v's slots: [extra_end[v] - extra[v], extra_end[v])
        slots = torch.arange(max_extra, dtype=torch.int64, device=device)
        extra_row = torch.searchsorted(extra_end, slots, right=True)  # num_weights: no piece
        partials = empty(max_extra, D, dtype=torch.float32, device=device)
    else:
        extra = extra_end = extra_row = starts  # never read: every row is one piece
        partials = empty(1, D, dtype=torch.float32, device=device)
    tables = (grad_output, order, starts, extra, extra_end, extra_row, grad_weight, partials, D,
              padding_idx, num_weights, piece, 1 if scale_grad_by_freq else 0)
    _launch(embedding_backward_kernel, num_weights + max_extra, D, grad_output.dtype, *tables,
            1 if max_extra else 0)
    if max_extra:
        _launch(embedding_backward_combine_kernel, max_extra, D, grad_output.dtype, *tables)
    return grad_weight


# ----------------------------------------------------------------------------------------------
# Compile-gate listing
# ----------------------------------------------------------------------------------------------
KERNELS = (embedding_forward_kernel, embedding_backward_kernel, embedding_backward_combine_kernel)
_INDEX_POINTERS = ("indices_ptr", "order_ptr", "starts_ptr", "extra_ptr", "extra_end_ptr", "extra_row_ptr")


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
                pointers = {arg: "*i64" if arg in _INDEX_POINTERS else "*fp32" if arg == "partials_ptr" else "*" + tt
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
