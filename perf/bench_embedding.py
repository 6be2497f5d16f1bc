#!/usr/bin/env python
"""Benchmark gatedrnn.embedding against torch.nn.functional.embedding, forward and backward.

Lookup tables as the sequence models use them, with index distributions from uniform to very
skewed (the backward sums each row's lookups deterministically, so a frequent row is where it
can serialise; kernels/embedding.py cuts such rows into pieces of PIECE lookups):

- words: V = 50021, D = 512, B x T = 64 x 512 lookups, uniform and Zipf (s = 1.1, the most
  frequent row about 14% of the lookups);
- chars: V = 97, D = 200, 64 x 1024 lookups, a fifth of them one row (a character model's space);
- one-row: V = 1000, D = 256, 64 x 512 lookups all of the same row (the worst case).

CPU (default): the ``cython`` backend against torch in float32, the same threads, alternated runs,
medians. ``--gpu``: the ``triton`` backend against torch (CUDA) in float32 and bfloat16,
``triton.testing.do_bench`` medians, alternated. ``--no-split`` runs ours with the pieces turned
off (PIECE larger than any N: one program per row, the old kernel's schedule), to weigh them.
The table gives forward and forward+backward (weight gradient for a fixed upstream gradient)
times and the ratio torch time / ours (> 1: gatedrnn is faster).

    python perf/bench_embedding.py                 # CPU
    python perf/bench_embedding.py --gpu           # Triton vs torch on CUDA
    python perf/bench_embedding.py --gpu --no-split
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Callable, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

import gatedrnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rnn import machine_description, time_alternating  # noqa: E402

# name -> (num_embeddings, embedding_dim, lookups (B, T), distribution)
CASES = {
    "words uniform": (50021, 512, (64, 512), "uniform"),
    "words zipf": (50021, 512, (64, 512), "zipf"),
    "chars": (97, 200, (64, 1024), "space"),
    "one-row": (1000, 256, (64, 512), "one"),
}


def draw_indices(num_embeddings: int, shape: Tuple[int, int], distribution: str, seed: int = 0) -> torch.Tensor:
    """int64 lookups of ``shape`` in [0, num_embeddings) drawn from ``distribution``."""
    rng = np.random.default_rng(seed)
    count = shape[0] * shape[1]
    if distribution == "uniform":
        values = rng.integers(0, num_embeddings, count)
    elif distribution == "zipf":
        ranks = np.arange(1, num_embeddings + 1)
        weights = ranks ** -1.1
        values = rng.choice(num_embeddings, size=count, p=weights / weights.sum())
    elif distribution == "space":
        values = np.where(rng.random(count) < 0.2, 1, rng.integers(0, num_embeddings, count))
    elif distribution == "one":
        values = np.full(count, 7)
    else:
        raise ValueError(f"unknown distribution {distribution!r}")
    return torch.from_numpy(values.reshape(shape))


def timer(gpu: bool, repeats: int, warmup: int) -> Callable[[Callable, Callable], Tuple[float, float]]:
    """Median milliseconds of (torch call, our call), alternated."""
    if not gpu:
        def cpu(first, second):
            a, b = time_alternating(first, second, repeats, warmup)
            return a * 1e3, b * 1e3
        return cpu
    from triton.testing import do_bench

    def device(first, second):
        times = ([], [])
        for _ in range(max(repeats // 2, 3)):
            for which, fn in enumerate((first, second)):
                times[which].append(do_bench(fn, warmup=10, rep=50, return_mode="median"))
        return statistics.median(times[0]), statistics.median(times[1])
    return device


def bench(device: str, dtype: torch.dtype, backend: str, repeats: int, warmup: int, cases: List[str]) -> List[dict]:
    time_pair = timer(device == "cuda", repeats, warmup)
    rows = []
    for name in cases:
        num_embeddings, dim, shape, distribution = CASES[name]
        indices = draw_indices(num_embeddings, shape, distribution).to(device)
        generator = torch.Generator().manual_seed(0)
        weight = torch.randn(num_embeddings, dim, generator=generator).to(device, dtype).requires_grad_()
        grad_y = torch.randn(shape + (dim,), generator=generator).to(device, dtype)
        top_share = torch.bincount(indices.reshape(-1).cpu()).max().item() / indices.numel()

        def torch_forward():
            with torch.no_grad():
                F.embedding(indices, weight)

        def our_forward():
            with torch.no_grad():
                gatedrnn.embedding(indices, weight, backend=backend)

        def torch_step():
            torch.autograd.grad(F.embedding(indices, weight), weight, grad_y)

        def our_step():
            torch.autograd.grad(gatedrnn.embedding(indices, weight, backend=backend), weight, grad_y)

        for mode, pair in (("forward", (torch_forward, our_forward)), ("fwd+bwd", (torch_step, our_step))):
            torch_ms, our_ms = time_pair(*pair)
            rows.append({"case": name, "V": num_embeddings, "D": dim, "lookups": indices.numel(),
                         "top row share": top_share, "dtype": str(dtype).replace("torch.", ""),
                         "mode": mode, "torch ms": torch_ms, "ours ms": our_ms, "ratio": torch_ms / our_ms})
            print(f"  {name:14s} {rows[-1]['dtype']:8s} {mode:8s} torch {torch_ms:8.3f} ms  "
                  f"ours {our_ms:8.3f} ms  ratio {torch_ms / our_ms:5.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="CUDA: the triton backend against torch")
    parser.add_argument("--no-split", action="store_true",
                        help="ours without the pieces (one program per row in the Triton backward)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA device")
    if args.no_split:
        from gatedrnn.kernels import embedding as kernels
        kernels.PIECE = 2**31 - 1  # still an i32 argument: the kernel the compile gate lists
    device, backend = ("cuda", "triton") if args.gpu else ("cpu", "cython")
    dtypes = (torch.float32, torch.bfloat16) if args.gpu else (torch.float32,)
    print(f"# {machine_description() if not args.gpu else torch.cuda.get_device_name()}; torch {torch.__version__}; "
          f"{backend} vs torch; {'no pieces; ' if args.no_split else ''}threads {torch.get_num_threads()}")
    rows = []
    for dtype in dtypes:
        rows += bench(device, dtype, backend, args.repeats, args.warmup, cases)
    print("\n| case | V | D | lookups | top row | dtype | mode | torch (ms) | gatedrnn (ms) | ratio torch/ours |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['V']} | {r['D']} | {r['lookups']} | {r['top row share']:.0%} | {r['dtype']} | "
              f"{r['mode']} | {r['torch ms']:.3f} | {r['ours ms']:.3f} | {r['ratio']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
