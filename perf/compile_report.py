"""Compile gate for the Triton recurrences (no GPU needed).

Compiles every kernel at every configuration the launchers can choose for H in 32..2048,
B in 1..1024, dtypes float32/bfloat16/float16, for sm_80 (A100, 108 SMs) and sm_90 (H100/H200,
132 SMs), with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cap, 32))``, reads
registers, stack (spills) and shared memory from the cubin with the ``cuobjdump
--dump-resource-usage`` shipped in Triton's ``backends/nvidia/bin``, prints the table and fails
(exit 1) when a configuration does not compile, spills (stack > 0), needs more registers than
fit with its num_warps (regs * 32 * num_warps <= 65536, regs <= 255), or more shared memory than
the target offers (sm_80: 163 KB, sm_90: 227 KB per block, opt-in).

Works with Triton 3.6 and 3.9 (same ASTSource(fn, signature, constexprs, attrs) API).
Compiles go through Triton's cache (TRITON_CACHE_DIR), so a warm rerun takes seconds.

Usage: python perf/compile_report.py [--arch 80,90] [--jobs N] [--quick]
"""
from __future__ import annotations

import argparse
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
H_RANGE = range(32, 2049)


def _common():
    try:
        from gatedrnn.kernels import _common
    except ImportError:
        sys.path.insert(0, ROOT)
        from kernels import _common
    return _common


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
    hs = H_RANGE if not quick else [32, 48, 256, 768, 1024, 2048]
    out = set()
    for cap in archs:
        sms = TARGETS[cap][0]
        for dt_name in DTYPES:
            dt = getattr(torch, dt_name)
            for cell in C.CELL_NAMES:
                cfgs = {C.choose_config(cell, H, B, dt, sms, capability=(cap // 10, cap % 10))
                        for H in hs for B in bs}
                for cfg in cfgs:
                    for kernel, cx, warps, stages in C.expand_config(cell, cfg, dt):
                        out.add((cap, kernel, tuple(sorted(cx.items())), warps, stages, dt_name))
    return sorted(out, key=lambda r: (r[0], r[5], r[1], r[2], r[3], r[4]))


_POINTERS = {
    # name -> element type; "X" = input dtype, "WS" = workspace dtype
    "xproj_ptr": "X", "w_hh_ptr": "X", "b_hn_ptr": "X", "lengths_ptr": "i64",
    "h_state_ptr": "fp32", "h_exchange_ptr": "X", "c_state_ptr": "fp32", "exchange_ptr": "X",
    "out_ptr": "X",
    "ws_ptr": "WS", "sem_ptr": "i32", "grad_out_ptr": "X", "h0_ptr": "X", "c0_ptr": "X",
    "dh_state_ptr": "fp32", "dc_state_ptr": "fp32", "dh_total_ptr": "fp32",
    "dgate_ptr": "X", "dgate_n_ptr": "X",
}
_TT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _cuobjdump():
    import triton
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")
    return path if os.path.exists(path) else "cuobjdump"


def compile_one(row):
    """Compile one configuration; returns a result dict (never raises)."""
    cap, kernel, cx_items, warps, stages, dt_name = row
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
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
            if name == "HP":   # always a multiple of 16: Triton specialises it at launch
                attrs[(i,)] = [["tt.divisibility", 16]]
    res = dict(cap=cap, kernel=kernel, dtype=dt_name, warps=warps, stages=stages, cx=cx,
               ok=False, error="", regs=-1, stack=-1, shared=-1, seconds=0.0)
    t0 = time.time()
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=cx, attrs=attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                                  options={"num_warps": warps, "num_stages": stages,
                                           "maxnreg": C.max_registers(warps)})
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
        if regs > MAX_REGS_PER_THREAD or regs * 32 * warps > REGS_PER_SM:
            problems.append(f"{regs} regs x {warps} warps do not fit")
        if shared > TARGETS[cap][1]:
            problems.append(f"shared {shared} B > {TARGETS[cap][1]}")
        res["ok"] = not problems
        res["error"] = "; ".join(problems)
    except Exception as e:  # noqa: BLE001 - a failing compile is a gate failure, reported
        res["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    res["seconds"] = time.time() - t0
    return res


def run(archs=(80, 90), jobs=None, quick=False, verbose=True):
    import triton
    t0 = time.time()
    rows = enumerate_configs(archs, quick)
    t_enum = time.time() - t0
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            results = list(ex.map(compile_one, rows))
    else:
        results = [compile_one(r) for r in rows]
    cell_names = _common().CELL_NAMES
    if verbose:
        print(f"triton {triton.__version__}: {len(rows)} configurations "
              f"(enumerated in {t_enum:.1f} s, compiled in {time.time() - t0 - t_enum:.1f} s)")
        hdr = (f"{'sm':>3} {'dtype':<8} {'kernel':<9} {'cell':<16} {'ph':>2} {'BB':>3} {'BH':>4} "
               f"{'BK':>3} {'sync':>4} {'w':>2} {'regs':>4} {'stack':>5} {'shared':>7}  status")
        print(hdr)
        print("-" * len(hdr))
        for r in results:
            cx = r["cx"]
            print(f"{r['cap']:>3} {r['dtype']:<8} {r['kernel'].split('_')[1]:<9} "
                  f"{cell_names[cx['CELL']]:<16} {cx['PHASES']:>2} {cx['BLOCK_B']:>3} "
                  f"{cx['BLOCK_H']:>4} {cx['BLOCK_K']:>3} {cx['SYNC']:>4} {r['warps']:>2} "
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
    a = p.parse_args(argv)
    results = run(tuple(int(c) for c in a.arch.split(",")), a.jobs, a.quick)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
