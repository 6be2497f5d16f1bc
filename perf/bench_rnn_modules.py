#!/usr/bin/env python
"""Module-level benchmark: gatedrnn.nn.LSTM / GRU against torch.nn.LSTM / GRU on the CPU.

The modules issue's bar: a 2-layer bidirectional stack, T=100, B=16, I=H=256, float32, the
same thread count for both, forward+backward (loss = sum of the output; gradients for the input
and every parameter) and inference (no_grad), on a padded batch and on a packed batch with
lengths uniform in [20, 100] (unsorted, ``enforce_sorted=False``; packing is inside the timed
region for both). Runs alternate after a warm-up; the table gives the median of ``--repeats``
and the ratio torch / ours (> 1: we are faster) next to the bar.

    python perf/bench_rnn_modules.py                 # the full table (cython backend)
    python perf/bench_rnn_modules.py --quick         # fewer repeats
    python perf/bench_rnn_modules.py --backend numpy --seq-len 10   # smoke run anywhere
    python perf/bench_rnn_modules.py --device cuda   # triton backend against cuDNN
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import List

import torch
from torch.nn.utils.rnn import pack_padded_sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rnn import machine_description, time_alternating  # noqa: E402

import gatedrnn  # noqa: E402
import gatedrnn.nn  # noqa: E402

CELLS = ("lstm", "gru")
# Ratio torch / ours the issue asks for, fwd+bwd: (cell, packed) -> bar.
BARS = {("lstm", False): 1.0, ("gru", False): 1.5, ("lstm", True): 1.2, ("gru", True): 1.2}


@dataclass
class Row:
    cell: str
    batch_kind: str  # "padded" or "packed"
    mode: str  # "inference" or "fwd+bwd"
    torch_ms: float
    ours_ms: float
    bar: float  # the ratio for fwd+bwd; 0 where none is set

    @property
    def ratio(self) -> float:
        return self.torch_ms / self.ours_ms


def make_modules(cell: str, size: int, num_layers: int, backend: str, device: str = "cpu"):
    torch_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    torch.manual_seed(0)
    reference = torch_cls(size, size, num_layers=num_layers, bidirectional=True).to(device)
    ours = getattr(gatedrnn.nn, cell.upper()).from_torch(reference, backend=backend)
    return reference, ours


def synchronized(fn, device: str):
    """``fn`` followed by a device synchronisation, so host timers see the whole GPU work."""
    if device == "cpu":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()
    return run


def bench_cell(cell: str, seq_len: int, batch: int, size: int, num_layers: int, backend: str,
               repeats: int, warmup: int, packed: bool, device: str = "cpu") -> List[Row]:
    reference, ours = make_modules(cell, size, num_layers, backend, device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(seq_len, batch, size, generator=generator).to(device)
    low = min(20, seq_len)
    lengths = torch.randint(low, seq_len + 1, (batch,), generator=generator)  # stays on the CPU
    kind = "packed" if packed else "padded"
    # The bars are the modules issue's, set for the CPU.
    bar = BARS[(cell, packed)] if device == "cpu" else 0.0

    def module_input(inp):
        return pack_padded_sequence(inp, lengths, enforce_sorted=False) if packed else inp

    def output_of(result):
        output = result[0]
        return output.data if packed else output

    rows = []
    with torch.no_grad():
        torch_s, ours_s = time_alternating(synchronized(lambda: reference(module_input(x)), device),
                                           synchronized(lambda: ours(module_input(x)), device), repeats, warmup)
    rows.append(Row(cell, kind, "inference", torch_s * 1e3, ours_s * 1e3, 0.0))

    x_grad = x.clone().requires_grad_()

    def train(module):
        def step():
            module.zero_grad(set_to_none=True)
            x_grad.grad = None
            output_of(module(module_input(x_grad))).sum().backward()
        return synchronized(step, device)

    torch_s, ours_s = time_alternating(train(reference), train(ours), repeats, warmup)
    rows.append(Row(cell, kind, "fwd+bwd", torch_s * 1e3, ours_s * 1e3, bar))
    return rows


def format_table(rows: List[Row], seq_len: int, batch: int, size: int, num_layers: int) -> str:
    lines = [
        f"2-layer bidirectional stacks: num_layers={num_layers}, T={seq_len}, B={batch}, I=H={size}, float32",
        "",
        "| cell | batch | mode | torch.nn (ms) | gatedrnn (ms) | ratio torch/ours | bar |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bar = f">= {r.bar:.1f} ({'met' if r.ratio >= r.bar else 'SHORT'})" if r.bar else "-"
        lines.append(f"| {r.cell.upper()} | {r.batch_kind} | {r.mode} | {r.torch_ms:.2f} | {r.ours_ms:.2f} | "
                     f"{r.ratio:.2f} | {bar} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated: lstm,gru")
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="input_size = hidden_size")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and gatedrnn")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where both run (default cpu)")
    parser.add_argument("--backend", default=None,
                        help="gatedrnn backend (default: cython on the CPU, triton on CUDA)")
    parser.add_argument("--json", help="write the raw figures to this file")
    args = parser.parse_args(argv)

    if args.quick:
        args.repeats, args.warmup = 3, 1
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if min(args.seq_len, args.batch, args.size, args.num_layers) < 1:
        parser.error("--seq-len, --batch, --size and --num-layers must be >= 1")
    cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"--cells: unknown {unknown}; choose from {CELLS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible", file=sys.stderr)
        return 2
    if args.backend is None:
        args.backend = "triton" if args.device == "cuda" else "cython"
    status = gatedrnn.available_backends().get(args.backend)
    if status is not None and not status.available:
        print(f"backend {args.backend!r} cannot run here: {status.reason}", file=sys.stderr)
        return 2

    where = torch.cuda.get_device_name() if args.device == "cuda" else machine_description()
    print(f"# gatedrnn {gatedrnn.__version__} nn modules ({args.backend}) vs torch.nn, {args.device}", flush=True)
    print(f"# {where}; median of {args.repeats} alternated runs", flush=True)
    rows: List[Row] = []
    for cell in cells:
        for packed in (False, True):
            new = bench_cell(cell, args.seq_len, args.batch, args.size, args.num_layers, args.backend,
                             args.repeats, args.warmup, packed, args.device)
            for r in new:
                print(f"  {cell} {r.batch_kind:6s} {r.mode:9s}: torch {r.torch_ms:8.2f} ms  ours {r.ours_ms:8.2f} ms"
                      f"  ratio {r.ratio:5.2f}", flush=True)
            rows += new
    print()
    print(format_table(rows, args.seq_len, args.batch, args.size, args.num_layers))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_description(), "args": vars(args),
                       "rows": [dict(asdict(r), ratio=r.ratio) for r in rows]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
