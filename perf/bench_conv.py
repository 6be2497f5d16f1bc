#!/usr/bin/env python
"""Benchmark gatedrnn's conv2d against torch's on the ResNet-18 layer shapes (CPU; --gpu: CUDA).

CPU: the ``cython`` backend of ``gatedrnn.conv2d`` against ``torch.nn.functional.conv2d``
(oneDNN) in float32 with the same thread count, on every distinct convolution of ResNet-18 at
224x224 (batch 8 by default), forward (``torch.no_grad``) and forward+backward (input and
weight gradients for a fixed upstream gradient). The two are run alternately after a warm-up;
the table gives the median of ``--repeats`` runs, GFLOP/s for both (2 * N * C_out * H_out *
W_out * C_in/groups * KH * KW per forward; three times that for forward+backward) and the ratio
torch time / ours (> 1: gatedrnn is faster), with geometric means per mode.

Allocator: glibc hands blocks above its mmap threshold back to the kernel when they are freed,
so whether a call's large outputs (the stem's 26 MB) come back as fresh pages, each one faulted
in and zeroed on every call, depends on the process's allocation history: torch's stem forward
measured 10.6 ms in one state and 25-27 ms in the other (its own conv 10.6 ms plus 15 ms of page
faults on two 26 MB buffers), ours 11.2 ms in both. So that the table compares the convolutions,
the CPU runs first fix glibc's mmap threshold at 32 MiB (its maximum) and the trim threshold at
1 GiB (``mallopt``), for both sides alike; ``--system-malloc`` leaves glibc's defaults.

``--network`` adds one whole ResNet-18 training step (forward, cross-entropy, backward; train
mode) of ``gatedrnn.models.resnet18(backend=...)`` against the same network built from torch.nn
layers holding the same weights.

``--gpu``: the same shapes at batch 64 (``--batch`` to change) on CUDA, the ``triton`` backend
against cuDNN in float32 and bfloat16, timed with ``triton.testing.do_bench`` (median).
float32 runs with TF32 off on both sides unless ``--tf32``. ``--layout nhwc`` (or ``both``) gives
x, w and grad_y to both sides as channels_last tensors (rows marked NHWC): where the channel
counts allow, ours then runs its NHWC kernels (16-byte vector loads; see kernels/conv.py), and
cuDNN its channels_last kernels. ``GATEDRNN_TRITON_CONV_LAYOUT=nhwc`` also runs them on NCHW
tensors, after copying x and grad_y to channels_last (to weigh that copy). ``--gpu --network``
adds the ResNet-18 training step on the device, channels_last (network and input), in float32
and under ``torch.autocast`` bfloat16 (a mixed-precision step as people train it): every conv,
pool and the head on our kernels against the same network of torch.nn layers on cuDNN.

    python perf/bench_conv.py                      # the CPU table
    python perf/bench_conv.py --network            # ... and the whole-network training step
    python perf/bench_conv.py --quick              # a small subset (seconds)
    python perf/bench_conv.py --gpu [--quick]      # Triton vs cuDNN
    python perf/bench_conv.py --gpu --layout both  # ... on NCHW and channels_last tensors
    python perf/bench_conv.py --gpu --network      # ... and the ResNet-18 training step
    python perf/bench_conv.py --json out.json --plot out.png
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

import gatedrnn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rnn import machine_description, time_alternating  # noqa: E402  (shared with bench_rnn_modules)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass(frozen=True)
class Shape:
    """One convolution of ResNet-18 (no bias, groups 1): (N, c_in, size, size) -> (N, c_out, ...)."""
    name: str
    c_in: int
    c_out: int
    size: int      # input height = width
    kernel: int
    stride: int
    padding: int

    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    def forward_flop(self, batch: int) -> float:
        return 2.0 * batch * self.c_out * self.out_size() ** 2 * self.c_in * self.kernel ** 2


# Every distinct convolution of ResNet-18 at 224x224 (torchvision's layout).
SHAPES = [
    Shape("stem 7x7/2 3->64@224", 3, 64, 224, 7, 2, 3),
    Shape("3x3 64@56", 64, 64, 56, 3, 1, 1),
    Shape("3x3/2 64->128@56", 64, 128, 56, 3, 2, 1),
    Shape("3x3 128@28", 128, 128, 28, 3, 1, 1),
    Shape("3x3/2 128->256@28", 128, 256, 28, 3, 2, 1),
    Shape("3x3 256@14", 256, 256, 14, 3, 1, 1),
    Shape("3x3/2 256->512@14", 256, 512, 14, 3, 2, 1),
    Shape("3x3 512@7", 512, 512, 7, 3, 1, 1),
    Shape("1x1/2 64->128@56", 64, 128, 56, 1, 2, 0),
    Shape("1x1/2 128->256@28", 128, 256, 28, 1, 2, 0),
    Shape("1x1/2 256->512@14", 256, 512, 14, 1, 2, 0),
]
QUICK_NAMES = ("3x3 128@28", "3x3 512@7", "1x1/2 64->128@56")
MODES = ("forward", "fwd+bwd")


@dataclass
class Row:
    layer: str
    mode: str        # "forward", "fwd+bwd", or "train step" for the --network row
    batch: int
    dtype: str
    torch_ms: float
    ours_ms: float
    gflop: float     # work of one call (0 for the network row)

    @property
    def ratio(self) -> float:
        return self.torch_ms / self.ours_ms

    @property
    def torch_gflops(self) -> float:
        return self.gflop / (self.torch_ms * 1e-3) if self.gflop else float("nan")

    @property
    def ours_gflops(self) -> float:
        return self.gflop / (self.ours_ms * 1e-3) if self.gflop else float("nan")

    def as_dict(self) -> dict:
        return dict(asdict(self), ratio=self.ratio, torch_gflops=self.torch_gflops, ours_gflops=self.ours_gflops)


def _tensors(shape: Shape, batch: int, dtype: torch.dtype, device: str, channels_last: bool = False):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, shape.c_in, shape.size, shape.size, generator=generator)
    w = torch.randn(shape.c_out, shape.c_in, shape.kernel, shape.kernel, generator=generator)
    w = w * (2.0 / (shape.c_in * shape.kernel ** 2)) ** 0.5
    grad_y = torch.randn(batch, shape.c_out, shape.out_size(), shape.out_size(), generator=generator)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [t.to(device=device, dtype=dtype, memory_format=memory_format) for t in (x, w, grad_y)]


def _calls(shape: Shape, x, w, grad_y, backend: str):
    """{mode: (torch call, our call)} for one shape."""
    geometry = dict(stride=shape.stride, padding=shape.padding)
    x_grad, w_grad = x.clone().requires_grad_(), w.clone().requires_grad_()

    def torch_forward():
        with torch.no_grad():
            return F.conv2d(x, w, None, **geometry)

    def ours_forward():
        with torch.no_grad():
            return gatedrnn.conv2d(x, w, None, **geometry, backend=backend)

    def torch_train():
        y = F.conv2d(x_grad, w_grad, None, **geometry)
        return torch.autograd.grad(y, (x_grad, w_grad), grad_y)

    def ours_train():
        y = gatedrnn.conv2d(x_grad, w_grad, None, **geometry, backend=backend)
        return torch.autograd.grad(y, (x_grad, w_grad), grad_y)

    return {"forward": (torch_forward, ours_forward), "fwd+bwd": (torch_train, ours_train)}


def bench_cpu_shape(shape: Shape, batch: int, repeats: int, warmup: int, backend: str = "cython",
                    modes: Sequence[str] = MODES) -> List[Row]:
    x, w, grad_y = _tensors(shape, batch, torch.float32, "cpu")
    rows = []
    for mode, (torch_call, our_call) in _calls(shape, x, w, grad_y, backend).items():
        if mode not in modes:
            continue
        torch_s, ours_s = time_alternating(torch_call, our_call, repeats, warmup)
        work = shape.forward_flop(batch) * (1 if mode == "forward" else 3) / 1e9
        rows.append(Row(shape.name, mode, batch, "float32", torch_s * 1e3, ours_s * 1e3, work))
    return rows


def _torch_twin(ours: torch.nn.Module) -> torch.nn.Module:
    """The torch.nn ResNet holding ``ours``' weights: tests/test_models.py's reference network
    (an independent torch.nn build). Without the tests (or pytest, which they import): a copy of
    ``ours`` whose gatedrnn.nn layers are turned into the torch.nn classes they subclass."""
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        from test_models import BLOCKS, ReferenceResNet  # the reference lives with its tests
    except ImportError:
        import copy

        twin = copy.deepcopy(ours)
        for module in twin.modules():  # gatedrnn.nn layers -> their torch.nn parents; blocks stay
            torch_classes = [c for c in type(module).__mro__
                             if c.__module__.startswith("torch.nn.modules.") and c is not torch.nn.Module]
            if type(module).__module__.startswith("gatedrnn.nn") and torch_classes:
                module.__class__ = torch_classes[0]
        return twin
    reference = ReferenceResNet(BLOCKS["resnet18"], ours.fc.out_features)
    reference.load_state_dict(ours.state_dict(), strict=True)
    return reference


def bench_network(batch: int, size: int, repeats: int, warmup: int, backend: str = "cython") -> Row:
    """One ResNet-18 training step (forward, cross-entropy, backward; train mode), ours vs torch.nn."""
    from gatedrnn.models import resnet18

    torch.manual_seed(0)
    ours = resnet18(num_classes=1000, backend=backend)
    reference = _torch_twin(ours)
    ours.train()
    reference.train()
    x = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 1000, (batch,))

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels).backward()
        return run

    torch_s, ours_s = time_alternating(step(reference), step(ours), repeats, warmup)
    return Row(f"ResNet-18 {size}x{size}", "train step", batch, "float32", torch_s * 1e3, ours_s * 1e3, 0.0)


def format_table(rows: List[Row]) -> str:
    lines = [
        "| layer | mode | N | torch (ms) | gatedrnn (ms) | torch GFLOP/s | gatedrnn GFLOP/s | ratio torch/ours |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gflops = (f"{r.torch_gflops:.0f} | {r.ours_gflops:.0f}" if r.gflop else "- | -")
        dtype = "" if r.dtype == "float32" else f" {r.dtype}"
        lines.append(f"| {r.layer}{dtype} | {r.mode} | {r.batch} | {r.torch_ms:.2f} | {r.ours_ms:.2f} | "
                     f"{gflops} | {r.ratio:.2f} |")
    for dtype in dict.fromkeys(r.dtype for r in rows if r.gflop):
        for mode in MODES:
            ratios = [r.ratio for r in rows if r.mode == mode and r.dtype == dtype and r.gflop]
            if ratios:
                label = "geometric mean" + ("" if dtype == "float32" else f" {dtype}")
                lines.append(f"| **{label}** | {mode} | | | | | | **{statistics.geometric_mean(ratios):.2f}** "
                             f"(min {min(ratios):.2f}) |")
    return "\n".join(lines)


def plot(rows: List[Row], path: str, title: str) -> None:
    from plotting import ratio_bars

    labels = [f"{r.layer}{'' if r.dtype == 'float32' else ' ' + r.dtype}\n{r.mode}" for r in rows]
    ratios = [r.ratio for r in rows]
    ratio_bars(labels, ratios, path, title, "torch time / gatedrnn time (> 1: gatedrnn faster)")


# --- GPU: Triton against cuDNN ---------------------------------------------------------------------

def bench_gpu_shape(shape: Shape, batch: int, dtype: torch.dtype, channels_last: bool = False) -> List[Row]:
    from triton.testing import do_bench

    x, w, grad_y = _tensors(shape, batch, dtype, "cuda", channels_last)
    rows = []
    for mode, (torch_call, our_call) in _calls(shape, x, w, grad_y, "triton").items():
        # do_bench flushes the L2 between calls and synchronises; alternate the two sides.
        torch_ms, ours_ms = [], []
        for _ in range(3):
            torch_ms.append(do_bench(torch_call, warmup=10, rep=50, return_mode="median"))
            ours_ms.append(do_bench(our_call, warmup=10, rep=50, return_mode="median"))
        work = shape.forward_flop(batch) * (1 if mode == "forward" else 3) / 1e9
        label = str(dtype).replace("torch.", "") + (" NHWC" if channels_last else "")
        rows.append(Row(shape.name, mode, batch, label, statistics.median(torch_ms), statistics.median(ours_ms), work))
    return rows


def bench_network_step(batch: int, size: int, autocast_dtype: Optional[torch.dtype], device: str = "cuda",
                       backend: str = "triton", timer=None, rounds: int = 3) -> Row:
    """One ResNet-18 training step (forward, cross-entropy, backward; train mode; network and input
    channels_last), ``gatedrnn.models.resnet18(backend=...)`` against its torch.nn twin, under
    ``torch.autocast(device, autocast_dtype)`` unless that is None. ``timer(fn) -> ms`` (default
    ``triton.testing.do_bench``'s median); the two sides alternate ``rounds`` times, medians."""
    from gatedrnn.models import resnet18

    if timer is None:
        from triton.testing import do_bench

        def timer(fn):
            return do_bench(fn, warmup=25, rep=200, return_mode="median")
    torch.manual_seed(0)
    ours = resnet18(num_classes=1000, backend=backend)
    reference = _torch_twin(ours)
    ours, reference = (m.to(device).to(memory_format=torch.channels_last).train() for m in (ours, reference))
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step(model):
        def run():
            model.zero_grad(set_to_none=True)
            with torch.autocast(device, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(model(x), labels)
            loss.backward()
        return run

    torch_ms, ours_ms = [], []
    for _ in range(rounds):
        torch_ms.append(timer(step(reference)))
        ours_ms.append(timer(step(ours)))
    label = "float32 NHWC" if autocast_dtype is None else f"autocast {str(autocast_dtype).replace('torch.', '')} NHWC"
    return Row(f"ResNet-18 {size}x{size}", "train step", batch, label, statistics.median(torch_ms),
               statistics.median(ours_ms), 0.0)


def run_gpu(shapes: List[Shape], batch: int, tf32: bool, layouts: Sequence[str] = ("nchw",),
            network_size: Optional[int] = None) -> Tuple[str, List[Row]]:
    if not torch.cuda.is_available():
        raise SystemExit("bench_conv.py --gpu: no CUDA device")
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True  # cuDNN at its best algorithm per shape
    header = (f"# gatedrnn {gatedrnn.__version__} (triton) vs cuDNN {torch.backends.cudnn.version()}, "
              f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; TF32 {'on' if tf32 else 'off'}; "
              f"median of triton.testing.do_bench")
    print(header, flush=True)
    rows: List[Row] = []
    for layout, dtype in [(layout, dtype) for layout in layouts for dtype in (torch.float32, torch.bfloat16)]:
        for shape in shapes:
            new = bench_gpu_shape(shape, batch, dtype, channels_last=layout == "nhwc")
            for r in new:
                print(f"  {r.layer:22s} {r.dtype:8s} {r.mode:8s}: cuDNN {r.torch_ms:8.3f} ms  ours {r.ours_ms:8.3f} ms"
                      f"  ratio {r.ratio:5.2f}", flush=True)
            rows += new
    if network_size:
        for autocast in (None, torch.bfloat16):
            r = bench_network_step(batch, network_size, autocast)
            print(f"  {r.layer:22s} {r.dtype:22s}: cuDNN {r.torch_ms:8.2f} ms  ours {r.ours_ms:8.2f} ms"
                  f"  ratio {r.ratio:5.2f}", flush=True)
            rows.append(r)
    return header, rows


def steady_allocator() -> bool:
    """Keep freed blocks of up to 32 MiB in glibc's heap (no page faults on reuse); see the module
    docstring. False where glibc's mallopt is not available."""
    import ctypes
    import ctypes.util
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"a small subset: {', '.join(QUICK_NAMES)}")
    parser.add_argument("--layers", help="comma-separated substrings of layer names to keep (e.g. '3x3,stem')")
    parser.add_argument("--modes", default=",".join(MODES), help="forward, fwd+bwd or both")
    parser.add_argument("--batch", type=int, default=None, help="N (default 8 on the CPU, 64 with --gpu)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each first")
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and gatedrnn")
    parser.add_argument("--backend", default="cython", help="gatedrnn backend on the CPU (default cython)")
    parser.add_argument("--network", action="store_true", help="add a whole ResNet-18 training step")
    parser.add_argument("--network-only", action="store_true", help="only the whole-network row")
    parser.add_argument("--size", type=int, default=224, help="image size of the --network row")
    parser.add_argument("--gpu", action="store_true", help="Triton vs cuDNN in float32 and bfloat16")
    parser.add_argument("--tf32", action="store_true", help="--gpu: let float32 use TF32 (both sides)")
    parser.add_argument("--layout", choices=("nchw", "nhwc", "both"), default="nchw",
                        help="--gpu: x, w and grad_y contiguous (nchw) or channels_last (nhwc: our NHWC "
                             "kernels), both sides alike")
    parser.add_argument("--system-malloc", action="store_true",
                        help="CPU: leave glibc's allocation thresholds as they are (see above)")
    parser.add_argument("--json", help="write the raw figures to this file")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart of the ratios (needs matplotlib)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes):
        parser.error(f"--modes: choose from {MODES}")
    shapes = [s for s in SHAPES if s.name in QUICK_NAMES] if args.quick else list(SHAPES)
    if args.layers:
        keys = [k.strip() for k in args.layers.split(",") if k.strip()]
        shapes = [s for s in shapes if any(k in s.name for k in keys)]
    if args.network_only:
        shapes = []

    if args.gpu:
        header, rows = run_gpu(shapes, args.batch or 64, args.tf32,
                               ("nchw", "nhwc") if args.layout == "both" else (args.layout,),
                               network_size=args.size if args.network or args.network_only else None)
    else:
        batch = args.batch or 8
        allocator = "glibc defaults" if args.system_malloc or not steady_allocator() else \
            "glibc mmap threshold 32 MiB, trim threshold 1 GiB"
        header = (f"# gatedrnn {gatedrnn.__version__} ({args.backend}) vs torch.nn.functional.conv2d, CPU float32\n"
                  f"# {machine_description()}; median of {args.repeats} alternated runs; {allocator}")
        print(header, flush=True)
        rows = []
        for shape in shapes:
            for r in bench_cpu_shape(shape, batch, args.repeats, args.warmup, args.backend, modes):
                rows.append(r)
                print(f"  {r.layer:22s} {r.mode:8s}: torch {r.torch_ms:8.2f} ms ({r.torch_gflops:4.0f} GFLOP/s)"
                      f"  ours {r.ours_ms:8.2f} ms ({r.ours_gflops:4.0f} GFLOP/s)  ratio {r.ratio:5.2f}",
                      flush=True)
        if args.network or args.network_only:
            r = bench_network(batch, args.size, args.repeats, args.warmup, args.backend)
            print(f"  {r.layer:22s} {r.mode}: torch {r.torch_ms:8.1f} ms  ours {r.ours_ms:8.1f} ms"
                  f"  ratio {r.ratio:5.2f}", flush=True)
            rows.append(r)
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "machine": machine_description(), "torch": torch.__version__,
                       "gatedrnn": gatedrnn.__version__, "rows": [r.as_dict() for r in rows]}, f, indent=2)
        print(f"figures written to {args.json}")
    if args.plot and rows:
        plot(rows, args.plot, header.replace("# ", "").replace("\n", "; "))
    return rows


if __name__ == "__main__":
    main()
    sys.exit(0)
