#!/usr/bin/env python
"""Benchmark gatedrnn's recurrences against torch.nn on the CPU (and, with --gpu, on CUDA).

CPU: the ``cython`` backend against ``torch.nn.LSTM/GRU/RNN`` with the same weights and the
same thread count, inference (``torch.no_grad``) and forward+backward (loss = sum of the
output, gradients for the input and every parameter). The two are run alternately, after a
warm-up, and the table reports the median of ``--repeats`` runs and the ratio torch / ours
(> 1 means we are faster).

    python perf/bench_rnn.py                  # the full CPU table
    python perf/bench_rnn.py --quick          # a one-minute subset
    python perf/bench_rnn.py --small          # small models: T, B, H of 10-50, 1-32, 64-128
    python perf/bench_rnn.py --gpu [...]      # perf/bench_rnn_gpu.py: Triton against cuDNN
    python perf/bench_rnn.py --modules [...]  # perf/bench_rnn_modules.py: whole nn modules
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, List

import torch

import gatedrnn

# The configurations of the foundation issue's performance bar: (T, B, I=H).
CONFIGS = [(100, 1, 256), (100, 16, 256), (100, 64, 512)]
QUICK_CONFIGS = [(100, 1, 256), (100, 16, 256)]
# Small models (--small), where the fixed cost of a call (argument checks, allocations, the
# autograd engine: about 0.3 ms a forward + backward for torch and for us) is a large share.
SMALL_CONFIGS = [(10, 1, 64), (50, 4, 128), (20, 32, 64)]
CELLS = ("lstm", "gru", "rnn")


@dataclass
class Row:
    cell: str
    seq_len: int
    batch: int
    hidden_size: int
    mode: str  # "inference" or "fwd+bwd"
    torch_ms: float
    ours_ms: float

    @property
    def ratio(self) -> float:
        return self.torch_ms / self.ours_ms


def time_alternating(first: Callable[[], None], second: Callable[[], None], repeats: int, warmup: int):
    """Median seconds of ``first`` and ``second``, run alternately (ABAB.., then BABA..)."""
    for _ in range(warmup):
        first()
        second()
    times = ([], [])
    for run in range(repeats):
        order = (0, 1) if run % 2 == 0 else (1, 0)
        for which in order:
            fn = (first, second)[which]
            start = time.perf_counter()
            fn()
            times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def make_module(cell: str, hidden_size: int) -> torch.nn.Module:
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    torch.manual_seed(0)
    return cls(hidden_size, hidden_size)


def bench_cpu_config(cell: str, seq_len: int, batch: int, hidden_size: int, repeats: int, warmup: int,
                     backend: str = "cython") -> List[Row]:
    module = make_module(cell, hidden_size)
    weights = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]
    function = getattr(gatedrnn, cell)
    x = torch.randn(seq_len, batch, hidden_size)

    def ours(inp):
        return function(inp, None, *weights, backend=backend)

    rows = []
    with torch.no_grad():
        torch_s, ours_s = time_alternating(lambda: module(x), lambda: ours(x), repeats, warmup)
    rows.append(Row(cell, seq_len, batch, hidden_size, "inference", torch_s * 1e3, ours_s * 1e3))

    x_grad = x.clone().requires_grad_()

    def torch_train():
        module.zero_grad(set_to_none=True)
        x_grad.grad = None
        module(x_grad)[0].sum().backward()

    def ours_train():
        module.zero_grad(set_to_none=True)
        x_grad.grad = None
        ours(x_grad)[0].sum().backward()

    torch_s, ours_s = time_alternating(torch_train, ours_train, repeats, warmup)
    rows.append(Row(cell, seq_len, batch, hidden_size, "fwd+bwd", torch_s * 1e3, ours_s * 1e3))
    return rows


def format_table(rows: List[Row]) -> str:
    lines = [
        "| cell | T | B | I=H | mode | torch.nn (ms) | gatedrnn (ms) | ratio torch/ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.cell.upper()} | {r.seq_len} | {r.batch} | {r.hidden_size} | {r.mode} | "
            f"{r.torch_ms:.2f} | {r.ours_ms:.2f} | {r.ratio:.2f} |"
        )
    return "\n".join(lines)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads (torch and gatedrnn), Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="run perf/bench_rnn_gpu.py (Triton vs cuDNN) instead")
    parser.add_argument("--modules", action="store_true",
                        help="run perf/bench_rnn_modules.py (2-layer bidirectional nn modules) instead")
    parser.add_argument("--quick", action="store_true", help="a small subset (LSTM and GRU at two sizes)")
    parser.add_argument("--small", action="store_true", help="small models instead (SMALL_CONFIGS)")
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated cells (default: all)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and gatedrnn")
    parser.add_argument("--backend", default="cython", help="gatedrnn backend to time (default cython)")
    parser.add_argument("--json", help="write the raw figures to this file")
    argv = list(sys.argv[1:] if argv is None else argv)
    # --gpu / --modules hand every other argument to the benchmark they select.
    for flag, module_name in (("--gpu", "bench_rnn_gpu"), ("--modules", "bench_rnn_modules")):
        if flag in argv and "-h" not in argv and "--help" not in argv:
            if "--small" in argv:
                parser.error(f"--small selects the CPU table's sizes; {flag} has its own")
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            module = __import__(module_name)
            return module.main([a for a in argv if a != flag])
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"--cells: unknown {unknown}; choose from {CELLS}")
    if args.quick and args.small:
        parser.error("--quick and --small are two different sets; choose one")
    configs = QUICK_CONFIGS if args.quick else SMALL_CONFIGS if args.small else CONFIGS
    if args.quick:
        cells = [c for c in cells if c != "rnn"] or cells

    print(f"# gatedrnn {gatedrnn.__version__} ({args.backend}) vs torch.nn, CPU", flush=True)
    print(f"# {machine_description()}; median of {args.repeats} alternated runs", flush=True)
    rows: List[Row] = []
    for cell in cells:
        for seq_len, batch, hidden_size in configs:
            new = bench_cpu_config(cell, seq_len, batch, hidden_size, args.repeats, args.warmup, args.backend)
            for r in new:
                print(f"  {cell} T={seq_len} B={batch} H={hidden_size} {r.mode:9s}: torch {r.torch_ms:8.2f} ms"
                      f"  ours {r.ours_ms:8.2f} ms  ratio {r.ratio:5.2f}", flush=True)
            rows += new
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_description(), "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
