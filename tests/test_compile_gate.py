"""Compile gate (no GPU): every Triton kernel configuration the launchers can choose (the
recurrences for H 1..2048, B 1..1024; conv, pooling and embedding from their gate_configs),
float32/bfloat16/float16, on sm_80 and sm_90, compiles, does not spill and fits the target's
registers and shared memory. Logic and table: perf/compile_report.py.

Runtime on 2 cores: ~6-8 min with a cold Triton cache (~1000 recurrence compiles plus the ops'), ~15 s warm
(cache TRITON_CACHE_DIR between CI runs). Run under each Triton version CI tests (3.9, 3.6).
"""
import importlib
import os
import sys

import pytest

pytest.importorskip("triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report_module():
    # Imported by name (not from a file spec): the worker processes unpickle compile_one by it.
    perf = os.path.join(ROOT, "perf")
    if perf not in sys.path:
        sys.path.insert(0, perf)
    return importlib.import_module("compile_report")


def test_every_config_compiles_without_spills():
    report = _report_module()
    results = report.run(archs=(80, 90), verbose=True)
    assert results, "no configuration enumerated"
    bad = [r for r in results if not r["ok"]]
    assert not bad, "\n".join(
        f"sm_{r['cap']} {r['dtype']} {r['kernel']} {r['detail']} warps={r['warps']}: {r['error']}"
        for r in bad[:20])


def test_enumeration_covers_every_mode():
    """The enumerated grid reaches the split-hidden (grid barrier) mode and the gemm mode in
    both forms (one launch; two a step), and W_hh both streamed and on-chip, so the gate
    compiles each kernel body variant, the step GEMM and the one-launch gemm kernels."""
    report = _report_module()
    rows = report.enumerate_configs((90,), quick=True)
    cell_rows = [dict(r[2]) for r in rows if r[1] in ("recurrent_forward_kernel",
                                                     "recurrent_backward_kernel")]
    syncs = {cx["SYNC"] for cx in cell_rows}
    phases = {cx["PHASES"] for cx in cell_rows}
    assert {0, 2} <= syncs          # per-step (the GEMM mode) and split-hidden
    assert {1, 2, 3} <= phases      # GRU reset_before: both phases separately and fused
    assert {0, 1} <= {cx["RECURRENT"] for cx in cell_rows}   # product in-kernel / from the GEMM
    # W_hh streamed, and on-chip in 2, 4 and 8 chunks (small H; from H = 65 on)
    assert {0, 2, 4, 8} <= {cx["RESIDENT"] for cx in cell_rows}
    matmuls = {dict(r[2])["W_TRANSPOSED"] for r in rows if r[1] == "recurrent_matmul_kernel"}
    assert matmuls == {True, False}  # forward h @ W^T and backward gradients @ W
    one_launch = {(r[1], dict(r[2])["CELL"]) for r in rows if r[1].startswith("recurrent_gemm_")}
    assert one_launch == {(k, cell) for k in ("recurrent_gemm_forward_kernel",
                                              "recurrent_gemm_backward_kernel")
                          for cell in range(5)}
    assert all(dict(r[2])["SYNC"] == 2 for r in rows if r[1].startswith("recurrent_gemm_"))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_launcher_falls_back_to_the_gemm_mode(cell):
    """Where no co-resident split fits on an H200's 132 SMs (B=256 with H >= 768 for the gated
    cells, H = 2048 for the Elman RNN; B=1024) the launcher picks the gemm mode, with its GEMM
    tiles, in one cooperative launch of at most one program per SM; small sizes stay
    persistent."""
    import torch

    C = _report_module()._common()
    code = {"lstm": C.CELL_LSTM, "gru": C.CELL_GRU, "rnn": C.CELL_RNN_TANH}[cell]
    sizes = [(2048, 256), (2048, 1024)] + ([(768, 256)] if cell != "rnn" else [])
    for H, B in sizes:
        cfg = C.choose_config(code, H, B, torch.float32, 132)
        assert cfg.mode == "gemm" and len(cfg.matmul) == 5, (H, B, cfg)
        assert cfg.sync == C.SYNC_GRID and 0 < cfg.grid[0] <= 132, (H, B, cfg)
        step = C.gemm_per_step(cfg)   # its two-launches-a-step form
        assert step.sync == C.SYNC_NONE and step.grid == (cfg.n_btiles * cfg.n_htiles,)
    assert C.choose_config(code, 512, 8, torch.bfloat16, 132).mode == "persistent"


@pytest.mark.parametrize("module", _report_module().op_modules())
def test_every_op_kernel_is_listed(module):
    """Each @triton.jit kernel (a name ending in ``_kernel``; other jitted names are device
    helpers they inline) of kernels/<module>.py appears in its gate_configs for both targets, with
    a type or constexpr value for every argument: no kernel escapes the gate."""
    import triton

    report = _report_module()
    kernels = report._kernel_module(module)
    jitted = {name for name, value in vars(kernels).items() if isinstance(value, triton.runtime.JITFunction) and name.endswith("_kernel")}
    assert jitted, f"kernels/{module}.py defines no @triton.jit kernel"
    for cap in (80, 90):
        configs = kernels.gate_configs(cap)
        listed = {cfg["kernel"] for cfg in configs}
        assert jitted <= listed, f"sm_{cap}: not in gate_configs: {sorted(jitted - listed)}"
        for cfg in configs:
            fn = getattr(kernels, cfg["kernel"])
            for name in fn.arg_names:
                kind = cfg["signature"].get(name)
                assert kind is not None, f"{cfg['kernel']}: no type for argument {name}"
                if kind == "constexpr":
                    assert name in cfg["constexprs"], f"{cfg['kernel']}: constexpr {name} has no value"


def _loads_around_time_loop(ttgir: str):
    """Shapes of the rank-3 tensors that tt.load reads before and inside the first scf.for (the
    time loop: with W_hh resident, the recurrence kernels have no other loop)."""
    import re

    loop = ttgir.index("scf.for")
    shape = re.compile(r"tt\.load .*?: tensor<(\d+)x(\d+)x(\d+)x!tt\.ptr")
    before, inside = [], []
    for match in shape.finditer(ttgir):
        (before if match.start() < loop else inside).append(tuple(int(g) for g in match.groups()))
    return before, inside


@pytest.mark.parametrize("cap", [80, 90])
def test_resident_weights_are_loaded_once(cap):
    """With W_hh on-chip (LSTM, GRU reset_before, RNN at H = 512, B = 8, bf16: the launcher's
    pick), every program loads its W_hh slices, (chunks, chunk rows, columns), before the time
    loop, and the only rank-3 loads inside the loop are the step's exchanged state (chunks, 16
    batch rows, chunk rows): no step reads W_hh from memory."""
    import torch

    report = _report_module()
    C = report._common()
    for cell in (C.CELL_LSTM, C.CELL_GRU_RESET_BEFORE, C.CELL_RNN_TANH):
        cfg = C.choose_config(cell, 512, 8, torch.bfloat16, report.TARGETS[cap][0],
                              capability=(cap // 10, cap % 10))
        assert cfg.resident[0] and cfg.resident[2], cfg
        for kernel, cx, warps, stages in C.expand_config(cell, cfg, torch.bfloat16):
            backward = "backward" in kernel
            chunks, block_k = cfg.resident[2:] if backward else cfg.resident[:2]
            if backward:
                slices = {(chunks, block_k, cfg.block_h)}
                if cell == C.CELL_GRU_RESET_BEFORE:
                    slices.add((chunks // 2, block_k, cfg.block_h))
            else:
                slices = {(chunks, block_k, {C.CELL_LSTM: 4, C.CELL_GRU_RESET_BEFORE: 2}.get(
                    cell, 1) * cfg.block_h)}
                if cell == C.CELL_GRU_RESET_BEFORE:
                    slices.add((chunks, block_k, cfg.block_h))
            row = (cap, kernel, tuple(sorted(cx.items())), warps, stages, "bfloat16")
            before, inside = _loads_around_time_loop(report.compile_row(row).asm["ttgir"])
            what = f"sm_{cap} {C.CELL_NAMES[cell]} {kernel}"
            assert slices <= set(before), f"{what}: slices {slices} not loaded before: {before}"
            operands = {(c, cfg.block_b, block_k) for c in (chunks, chunks // 2)}
            assert inside and set(inside) <= operands, f"{what}: loads in the time loop: {inside}"


def test_launcher_holds_w_hh_where_it_fits(monkeypatch):
    """W_hh on-chip per direction exactly where the slice fits (kernels/_common.py
    with_resident_weights): 16-row batch tiles only, 128 KB half / 64 KB float32 slices, the
    slice and its operand within the target's shared memory; GATEDRNN_TRITON_RESIDENT=0 turns
    it off (the streamed configs are in the compile gate's enumeration too)."""
    import torch

    C = _report_module()._common()
    bf16, f32 = torch.bfloat16, torch.float32
    pick = lambda cell, H, B, dtype, cap=(9, 0): C.choose_config(  # noqa: E731
        cell, H, B, dtype, 132 if cap == (9, 0) else 108, capability=cap).resident
    # LSTM bf16, B = 8: both directions to H = 512; the forward alone at 1024 (its backward
    # slice, 4096 rows x 16 units, and operand exceed shared memory); nothing at 2048
    assert pick(C.CELL_LSTM, 512, 8, bf16) == (8, 64, 8, 256)
    assert pick(C.CELL_LSTM, 1024, 8, bf16) == (8, 128, 0, 0)
    assert pick(C.CELL_LSTM, 2048, 8, bf16) == ()
    # float32 stops at 64 KB: H = 256 both, 512 none
    assert pick(C.CELL_LSTM, 256, 1, f32) == (8, 32, 8, 128)
    assert pick(C.CELL_LSTM, 512, 1, f32) == ()
    # batch tiles above 16 rows stream W_hh
    assert pick(C.CELL_LSTM, 256, 16, bf16) and not pick(C.CELL_LSTM, 256, 17, bf16)
    # GRU reset_before: n's slice beside r, z's; the backward's n in half the chunks
    assert pick(C.CELL_GRU_RESET_BEFORE, 1024, 8, bf16) == (8, 128, 8, 256)
    # the RNN at H = 2048 bf16: 128 hidden tiles fit sm_90's 132 SMs (64 KB slice + 64 KB
    # operand); on sm_80's 108 SMs the tiles double to 32 units and 192 KB exceeds 163 KB
    assert pick(C.CELL_RNN_TANH, 2048, 8, bf16) == (8, 256, 8, 256)
    assert pick(C.CELL_RNN_TANH, 2048, 8, bf16, (8, 0)) == ()
    # small H: fewer chunks of at least 16 rows
    assert pick(C.CELL_RNN_TANH, 16, 1, f32) == (1, 16, 1, 16)
    # a device with less shared memory (consumer Ampere/Ada: about 100 KB a block): H = 512's
    # 64 + 16 KB forward fits, its backward's 64 + 64 KB and H = 1024's forward do not
    small = dict(capability=(8, 9), shared_bytes=99 * 1024)
    assert C.choose_config(C.CELL_LSTM, 512, 8, bf16, 128, **small).resident == (8, 64, 0, 0)
    assert C.choose_config(C.CELL_LSTM, 1024, 8, bf16, 128, **small).resident == ()
    monkeypatch.setenv("GATEDRNN_TRITON_RESIDENT", "0")
    assert pick(C.CELL_LSTM, 512, 8, bf16) == ()


def _async_copy_sizes(ptx: str):
    """Bytes moved by each cp.async (global -> shared) of a kernel's PTX."""
    import re

    copy = re.compile(r"cp\.async\.c[ag]\.shared\.global \[[^\]]*\], \[[^\]]*\], (0x[0-9a-f]+|\d+)")
    return [int(match.group(1), 0) for match in copy.finditer(ptx)]


@pytest.mark.parametrize("cap", [80, 90])
def test_nhwc_conv_kernels_copy_16_byte_vectors(cap):
    """Every configuration of the channels-last conv kernels moves its tiles to shared memory with
    asynchronous copies (cp.async, which the software pipeliner overlaps with the dots) of 16
    bytes: the alignment the launcher checks reaches the compiler through the VEC-scaled
    arguments, and the input gradient's packed weight is K-major, as TF32 dots need to take
    float32 tiles in 16-byte copies. The one exception is the TF32 weight gradient, whose two
    operands are not K-major (the pixels it reduces over are the activations' outer dimension):
    it copies 4 bytes at a time to transpose them. The strided kernels' 16-bit loads make no
    16-byte copy."""
    report = _report_module()
    rows = [row for row in report.enumerate_op_configs((cap,)) if row[2] == "conv"]
    nhwc = [row for row in rows if "nhwc" in row[3]]
    assert len(nhwc) >= 3 * 3
    for row in nhwc:
        label = row[8]
        sizes = _async_copy_sizes(report.compile_row(row).asm["ptx"])
        assert sizes, f"sm_{cap} {label}: no cp.async"
        if not label.startswith("weight_grad_nhwc fp32 tf32"):
            assert set(sizes) == {16}, f"sm_{cap} {label}: cp.async sizes {sorted(set(sizes))}"
    strided = next(row for row in rows if row[3] == "conv2d_forward_kernel" and " bf16 " in row[8])
    assert 16 not in _async_copy_sizes(report.compile_row(strided).asm["ptx"])
