"""Compile gate for every Triton kernel of gatedrnn (no GPU needed).

Compiles every kernel at every configuration the launchers can choose, for sm_80 (A100, 108 SMs)
and sm_90 (H100/H200, 132 SMs): the recurrences over H in 1..2048, B in 1..1024, dtypes
float32/bfloat16/float16 (enumerated here from ``kernels/_common.py``'s ``choose_config``), and the
convolution, pooling and embedding kernels from each module's ``gate_configs(capability)`` (the
listing their launchers pick from; the modules are ``OP_MODULES`` of the kernels package). Each
compile goes through ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))``; it reads
registers, stack (spills) and shared memory from the cubin with the ``cuobjdump
--dump-resource-usage`` shipped in Triton's ``backends/nvidia/bin``, prints the table and fails
(exit 1) when a configuration does not compile, spills (stack > 0), needs more registers than
fit with its num_warps (regs * 32 * num_warps <= 65536, regs <= 255), or more shared memory than
the target offers (sm_80: 163 KB, sm_90: 227 KB per block, opt-in).

Works with Triton 3.6 and 3.9 (same ASTSource(fn, signature, constexprs, attrs) API).
Compiles go through Triton's cache (TRITON_CACHE_DIR), so a warm rerun takes seconds.

Usage: python perf/compile_report.py [--arch 80,90] [--jobs N] [--quick] [--no-ops]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Targets: (capability, SM count of the reference part, max shared memory per block in bytes).
TARGETS = {80: (108, 163 * 1024), 90: (132, 227 * 1024)}
REGS_PER_SM = 65536
MAX_REGS_PER_THREAD = 255
DTYPES = ("float32", "bfloat16", "float16")
H_RANGE = range(1, 2049)   # every hidden size up to the 2048


def _package():
    """gatedrnn.kernels when installed, else the checkout's kernels/ package."""
    import importlib
    try:
        return importlib.import_module("gatedrnn.kernels")
    except ImportError:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        return importlib.import_module("kernels")


def _kernel_module(name):
    import importlib
    return importlib.import_module(f"{_package().__name__}.{name}")


def _common():
    return _kernel_module("_common")


def op_modules():
    """Names of the kernel modules (kernels/<name>.py) whose launchers expose
    gate_configs(capability) -> [{"kernel", "signature", "constexprs", "num_warps", "num_stages",
    "label"}]: the kernels package's OP_MODULES."""
    return _package().OP_MODULES


def _batch_classes(C):
    """One B per distinct (batch tile, number of batch tiles) over B in 1..1024: the launcher's
    choice depends on B only through these."""
    seen = {}
    for B in range(1, 1025):
        bb = min(max(C._pow2_at_least(B), C.MIN_DOT_TILE), 64)
        seen.setdefault((bb, -(-B // bb)), B)
    return sorted(seen.values())


def enumerate_configs(archs, quick=False):
    """Unique (cap, kernel, constexprs tuple, num_warps, dtype) over the whole size grid."""
    import torch
    C = _common()
    bs = _batch_classes(C)
    hs = H_RANGE if not quick else [16, 32, 48, 256, 768, 1024, 2048]
    out = set()
    for cap in archs:
        sms = TARGETS[cap][0]
        for dt_name in DTYPES:
            dt = getattr(torch, dt_name)
            for cell in C.CELL_NAMES:
                cfgs = {C.choose_config(cell, H, B, dt, sms, capability=(cap // 10, cap % 10))
                        for H in hs for B in bs}
                # the gemm mode's two-launches-a-step form (forced by mode="gemm_per_step")
                cfgs |= {C.gemm_per_step(cfg) for cfg in cfgs if cfg.mode == "gemm"}
                # W_hh streamed where it would be on-chip (GATEDRNN_TRITON_RESIDENT=0)
                cfgs |= {dataclasses.replace(cfg, resident=()) for cfg in cfgs if cfg.resident}
                for cfg in cfgs:
                    for kernel, cx, warps, stages in C.expand_config(cell, cfg, dt):
                        out.add((cap, kernel, tuple(sorted(cx.items())), warps, stages, dt_name))
    return sorted(out, key=lambda r: (r[0], r[5], r[1], r[2], r[3], r[4]))


def enumerate_op_configs(archs):
    """Rows ("op", cap, module, kernel, signature items, constexpr items, num_warps, num_stages,
    label) from every op_modules() module's gate_configs, deduplicated."""
    out = {}
    for cap in archs:
        for module in op_modules():
            for cfg in _kernel_module(module).gate_configs(cap):
                row = ("op", cap, module, cfg["kernel"], tuple(cfg["signature"].items()),
                       tuple(sorted(cfg["constexprs"].items())), cfg["num_warps"], cfg["num_stages"])
                out.setdefault(row, row + (cfg.get("label", ""),))
    return sorted(out.values(), key=lambda r: (r[1], r[2], r[3], r[8]))


_POINTERS = {
    # name -> element type; "X" = input dtype, "WS" = workspace dtype
    "xproj_ptr": "X", "w_hh_ptr": "X", "b_hn_ptr": "X", "lengths_ptr": "i64",
    "h_state_ptr": "fp32", "h_exchange_ptr": "X", "c_state_ptr": "fp32", "exchange_ptr": "X",
    "out_ptr": "X",
    "ws_ptr": "WS", "sem_ptr": "i32", "grad_out_ptr": "X", "h0_ptr": "X", "c0_ptr": "X",
    "dh_state_ptr": "fp32", "dc_state_ptr": "fp32", "dh_total_ptr": "fp32",
    "dgate_ptr": "X", "dgate_n_ptr": "X", "hh_ptr": "fp32", "dgate_step_ptr": "X",
    # recurrent_matmul_kernel: a (h or gate gradients), w (W_hh), c (float32 product)
    "a_ptr": "X", "w_ptr": "X", "c_ptr": "fp32",
}
# Integer arguments that are always multiples of 16 (Triton specialises them so at launch):
# the padded hidden size and the GEMM's row strides (multiples of it).
_DIVISIBLE_INTS = ("HP", "lda", "ldw", "ldc")
_TT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _cuobjdump():
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def _recurrence_source(row):
    """(fn, signature, constexprs, attrs, num_warps, num_stages, maxnreg) of a recurrence row."""
    cap, kernel, cx_items, warps, stages, dt_name = row
    C = _common()
    fn = getattr(C, kernel)
    cx = dict(cx_items)
    x_tt = _TT[dt_name]
    ws_tt = "fp32"
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in cx:
            signature[name] = "constexpr"
        elif name in _POINTERS:
            el = _POINTERS[name]
            signature[name] = "*" + {"X": x_tt, "WS": ws_tt}.get(el, el)
            attrs[(i,)] = [["tt.divisibility", 16]]   # torch allocations are 16-byte aligned
        else:
            signature[name] = "i32"
            if name in _DIVISIBLE_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return fn, signature, cx, attrs, warps, stages, C.max_registers(warps)


def _op_source(row):
    """The same for a gate_configs row of a conv/pool/embedding module."""
    _, cap, module, kernel, signature_items, cx_items, warps, stages, _label = row
    fn = getattr(_kernel_module(module), kernel)
    signature = dict(signature_items)
    missing = [name for name in fn.arg_names if name not in signature]
    if missing:
        raise ValueError(f"gate_configs of kernels/{module}.py lists no type for {missing}")
    signature = {name: signature[name] for name in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if signature[name].startswith("*")}   # torch allocations are 16-byte aligned
    return fn, signature, dict(cx_items), attrs, warps, stages, None


def describe(row):
    """The fields printed and reported for a row: cap, dtype, kernel, detail, num_warps."""
    if row[0] == "op":
        _, cap, module, kernel, _sig, _cx, warps, _stages, label = row
        return dict(cap=cap, dtype="", kernel=f"{module}.{kernel}", detail=label, warps=warps)
    cap, kernel, cx_items, warps, _stages, dt_name = row
    cx = dict(cx_items)
    if "BLOCK_M" in cx and "CELL" in cx:   # the persistent gemm mode's kernels
        detail = (f"{_common().CELL_NAMES[cx['CELL']]} BB={cx['BLOCK_B']} BH={cx['BLOCK_H']} "
                  f"BM={cx['BLOCK_M']} BN={cx['BLOCK_N']} BK={cx['BLOCK_K']} sync={cx['SYNC']}")
    elif "CELL" in cx:
        detail = (f"{_common().CELL_NAMES[cx['CELL']]} ph={cx['PHASES']} BB={cx['BLOCK_B']} "
                  f"BH={cx['BLOCK_H']} BK={cx['BLOCK_K']} sync={cx['SYNC']} rec={cx['RECURRENT']}"
                  f"{' res=' + str(cx['RESIDENT']) if cx.get('RESIDENT') else ''}")
    else:   # the GEMM per-step mode's recurrent_matmul_kernel
        detail = (f"{'h @ W^T' if cx['W_TRANSPOSED'] else 'dgate @ W'} BM={cx['BLOCK_M']} "
                  f"BN={cx['BLOCK_N']} BK={cx['BLOCK_K']}")
    return dict(cap=cap, dtype=dt_name, kernel=kernel, detail=detail, warps=warps)


def compile_row(row):
    """triton.compile one configuration (a recurrence row or an "op" row) for its target."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    cap = row[1] if row[0] == "op" else row[0]
    fn, signature, cx, attrs, warps, stages, maxnreg = (
        _op_source(row) if row[0] == "op" else _recurrence_source(row))
    # FMA contraction on, stated: it is what launches compile with under Triton 3.6 and 3.9
    # by default (3.9 warns when it is left implicit; its default flips in 3.10).
    options = {"num_warps": warps, "num_stages": stages, "enable_fp_fusion": True}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    src = ASTSource(fn=fn, signature=signature, constexprs=cx, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", cap, 32), options=options)


def compile_one(row):
    """Compile one configuration (a recurrence row or an "op" row); returns a result dict (never raises)."""
    res = dict(describe(row), ok=False, error="", regs=-1, stack=-1, shared=-1, seconds=0.0)
    if row[0] != "op":
        res["cx"] = dict(row[2])
    cap = res["cap"]
    t0 = time.time()
    try:
        compiled = compile_row(row)
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(compiled.asm["cubin"])
            path = f.name
        try:
            dump = subprocess.run([_cuobjdump(), "--dump-resource-usage", path],
                                  capture_output=True, text=True, check=True).stdout
        finally:
            os.unlink(path)
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)", dump)
        regs, stack, static_shared = (int(g) for g in m.groups())
        shared = max(static_shared, int(getattr(compiled.metadata, "shared", 0) or 0))
        res.update(regs=regs, stack=stack, shared=shared)
        problems = []
        if stack > 0:
            problems.append(f"spills (stack {stack} B)")
        if regs > MAX_REGS_PER_THREAD or regs * 32 * res["warps"] > REGS_PER_SM:
            problems.append(f"{regs} regs x {res['warps']} warps do not fit")
        if shared > TARGETS[cap][1]:
            problems.append(f"shared {shared} B > {TARGETS[cap][1]}")
        res["ok"] = not problems
        res["error"] = "; ".join(problems)
    except Exception as e:  # noqa: BLE001 - a failing compile is a gate failure, reported
        res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    res["seconds"] = time.time() - t0
    return res


def run(archs=(80, 90), jobs=None, quick=False, verbose=True, ops=True):
    """Compile every row (recurrences, then op_modules() when ``ops``); print the table when verbose."""
    import triton
    t0 = time.time()
    rows = enumerate_configs(archs, quick) + (enumerate_op_configs(archs) if ops else [])
    t_enum = time.time() - t0
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(compile_one, rows))
    else:
        results = [compile_one(r) for r in rows]
    if verbose:
        print(f"triton {triton.__version__}: {len(rows)} configurations "
              f"(enumerated in {t_enum:.1f} s, compiled in {time.time() - t0 - t_enum:.1f} s)")
        hdr = (f"{'sm':>3} {'dtype':<8} {'kernel':<34} {'configuration':<52} {'w':>2} {'regs':>4} "
               f"{'stack':>5} {'shared':>7}  status")
        print(hdr)
        print("-" * len(hdr))
        for r in results:
            print(f"{r['cap']:>3} {r['dtype']:<8} {r['kernel']:<34} {r['detail']:<52} {r['warps']:>2} "
                  f"{r['regs']:>4} {r['stack']:>5} {r['shared']:>7}  "
                  f"{'ok' if r['ok'] else 'FAIL ' + r['error']}")
        bad = [r for r in results if not r["ok"]]
        mx = max((r["regs"] for r in results), default=0)
        print(f"\n{len(results) - len(bad)}/{len(results)} ok; max regs {mx}; "
              f"max shared {max((r['shared'] for r in results), default=0)} B; "
              f"total {time.time() - t0:.1f} s")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="80,90", help="comma-separated capabilities (80, 90)")
    p.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: CPUs)")
    p.add_argument("--quick", action="store_true", help="a few H values only")
    p.add_argument("--no-ops", action="store_true", help="recurrences only (skip conv/pool/embedding)")
    a = p.parse_args(argv)
    results = run(tuple(int(c) for c in a.arch.split(",")), a.jobs, a.quick, ops=not a.no_ops)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
