"""Triton recurrences against torch.nn.LSTM / torch.nn.GRU (cuDNN), in one process.

Medians of ``triton.testing.do_bench`` (milliseconds), forward-only and forward+backward,
float32 / bfloat16 / float16, B in {1, 8, 64, 256}, H in {256, 512, 768, 1024, 2048}, T = 512,
input size I = H, plus packed variable lengths (uniform in [T/2, T]). Ratio = cuDNN time / ours
(> 1: we are faster). Also the per-step latency floor: a kernel doing only the grid barrier of
the B=1, H=512 persistent configuration, against our forward per step at that size.

float32 runs with torch.backends.cudnn.allow_tf32 as torch sets it (True: both sides use TF32).

``--mode`` forces one launcher mode for every case (single, split, per_step, gemm,
gemm_per_step) to compare them where the default choice is in doubt, e.g. the gemm mode against
the split one at float32 B = 64, or its one launch against its two launches a step.

Usage: python perf/bench_rnn_gpu.py [--quick] [--plot out.png] [--csv out.csv] [--mode M]
       (perf/bench_rnn.py --gpu calls main(argv))
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

FULL = dict(cells=("lstm", "gru"), dtypes=("float32", "bfloat16", "float16"),
            batches=(1, 8, 64, 256), hiddens=(256, 512, 768, 1024, 2048), T=512)
QUICK = dict(cells=("lstm", "gru"), dtypes=("bfloat16", "float32"), batches=(1, 64),
             hiddens=(512, 1024), T=256)


def _kernels(name):
    try:
        return importlib.import_module(f"gatedrnn.kernels.{name}")
    except ImportError:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        return importlib.import_module(f"kernels.{name}")


def _bench(fn):
    from triton.testing import do_bench
    return do_bench(fn, warmup=5, rep=40, return_mode="median")


def bench_case(cell, dtype, B, H, T, packed, ours_only=False, mode=None):
    """Returns dict with ours/cudnn fwd and fwd+bwd times (ms); mode: the launcher's (None:
    its own choice)."""
    import torch
    dev = "cuda"
    I = H
    torch.manual_seed(0)
    mod = _kernels(cell)
    ref = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(I, H).to(dev, dtype)
    ref.flatten_parameters()
    x = torch.randn(T, B, I, device=dev, dtype=dtype)
    h0 = torch.randn(B, H, device=dev, dtype=dtype)
    c0 = torch.randn(B, H, device=dev, dtype=dtype)
    if packed:
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[0] = T
    else:
        lengths = torch.full((B,), T, dtype=torch.int64)
    lengths_d = lengths.to(dev)
    w = [ref.weight_ih_l0.detach(), ref.weight_hh_l0.detach(), ref.bias_ih_l0.detach(),
         ref.bias_hh_l0.detach()]
    go = torch.randn(T, B, H, device=dev, dtype=dtype)
    gh = torch.randn(B, H, device=dev, dtype=dtype)
    res = {}

    if cell == "lstm":
        def ours_fwd():
            return mod.lstm_forward(x, h0, c0, *w, lengths_d, False, mode=mode)

        def ours_fwdbwd():
            out, hn, cn, ws = mod.lstm_forward(x, h0, c0, *w, lengths_d, False, mode=mode)
            return mod.lstm_backward(go, gh, gh, x, h0, c0, *w, lengths_d, False, out, ws,
                                     mode=mode)
    else:
        def ours_fwd():
            return mod.gru_forward(x, h0, *w, lengths_d, False, True, mode=mode)

        def ours_fwdbwd():
            out, hn, ws = mod.gru_forward(x, h0, *w, lengths_d, False, True, mode=mode)
            return mod.gru_backward(go, gh, x, h0, *w, lengths_d, False, True, out, ws,
                                    mode=mode)

    xr = x.detach().clone().requires_grad_(True)
    hx = (h0[None].contiguous(), c0[None].contiguous()) if cell == "lstm" else h0[None].contiguous()

    def ref_in():
        if packed:
            return torch.nn.utils.rnn.pack_padded_sequence(xr, lengths, enforce_sorted=False)
        return xr

    def ref_fwd():
        with torch.no_grad():
            return ref(ref_in(), hx)

    def ref_fwdbwd():
        out, _ = ref(ref_in(), hx)
        if packed:
            out = out.data
            torch.autograd.backward(out, torch.ones_like(out))
        else:
            torch.autograd.backward(out, go)

    nan = float("nan")
    res["ours_fwd"] = _bench(ours_fwd)
    res["cudnn_fwd"] = nan if ours_only else _bench(ref_fwd)
    res["ours_fwdbwd"] = _bench(ours_fwdbwd)
    res["cudnn_fwdbwd"] = nan if ours_only else _bench(ref_fwdbwd)
    return res


def latency_floor(T=512, ours_only=False):
    """(ours fwd per step, barrier-only per step) in microseconds at B=1, H=512, bf16 LSTM."""
    import torch
    C = importlib.import_module(_kernels("lstm").__name__.rsplit(".", 1)[0] + "._common")
    dev = "cuda"
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cfg = C.choose_config(C.CELL_LSTM, 512, 1, torch.bfloat16, sms)
    floor = _bench(lambda: C.barrier_floor(cfg, T, dev)) * 1e3 / T
    r = bench_case("lstm", torch.bfloat16, 1, 512, T, False, ours_only)
    return r["ours_fwd"] * 1e3 / T, floor, cfg


def main(argv=None):
    p = argparse.ArgumentParser(description="Triton vs cuDNN recurrences")
    p.add_argument("--quick", action="store_true", help="a small subset of the grid")
    p.add_argument("--plot", default=None, help="write a PNG of the ratios")
    p.add_argument("--csv", default=None, help="write all numbers as CSV")
    p.add_argument("--no-packed", action="store_true")
    p.add_argument("--ours-only", action="store_true", help="skip cuDNN (tuning runs)")
    p.add_argument("--cells", default=None, help="comma list, e.g. lstm")
    p.add_argument("--dtypes", default=None, help="comma list, e.g. float32,bfloat16")
    p.add_argument("--batches", default=None, help="comma list")
    p.add_argument("--hiddens", default=None, help="comma list")
    p.add_argument("--mode", default=None,
                   choices=("single", "split", "per_step", "gemm", "gemm_per_step"),
                   help="force one launcher mode (default: the launcher's choice per size)")
    a = p.parse_args(argv)
    import torch
    grid = dict(QUICK if a.quick else FULL)
    for key in ("cells", "dtypes"):
        if getattr(a, key):
            grid[key] = tuple(getattr(a, key).split(","))
    for key in ("batches", "hiddens"):
        if getattr(a, key):
            grid[key] = tuple(int(v) for v in getattr(a, key).split(","))
    T = grid["T"]
    rows = []
    t0 = time.time()
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}, T={T}, "
          f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, mode={a.mode or 'launcher'}, "
          f"W_hh resident where it fits={os.environ.get('GATEDRNN_TRITON_RESIDENT', '1') != '0'}",
          flush=True)
    hdr = (f"{'cell':<5} {'dtype':<9} {'pack':<4} {'B':>4} {'H':>5} | {'ours fwd':>9} "
           f"{'cudnn fwd':>9} {'ratio':>6} | {'ours f+b':>9} {'cudnn f+b':>9} {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr), flush=True)
    for cell in grid["cells"]:
        for dt_name in grid["dtypes"]:
            dtype = getattr(torch, dt_name)
            for packed in ((False, True) if not a.no_packed else (False,)):
                for B in grid["batches"]:
                    for H in grid["hiddens"]:
                        if packed and B == 1:
                            continue
                        try:
                            r = bench_case(cell, dtype, B, H, T, packed, a.ours_only, a.mode)
                        except Exception as e:  # noqa: BLE001 - report and continue
                            print(f"{cell:<5} {dt_name:<9} {'y' if packed else 'n':<4} {B:>4} "
                                  f"{H:>5} | ERROR {type(e).__name__}: {str(e)[:120]}",
                                  flush=True)
                            torch.cuda.empty_cache()
                            continue
                        r.update(cell=cell, dtype=dt_name, packed=packed, B=B, H=H)
                        r["ratio_fwd"] = r["cudnn_fwd"] / r["ours_fwd"]
                        r["ratio_fwdbwd"] = r["cudnn_fwdbwd"] / r["ours_fwdbwd"]
                        rows.append(r)
                        print(f"{cell:<5} {dt_name:<9} {'y' if packed else 'n':<4} {B:>4} "
                              f"{H:>5} | {r['ours_fwd']:9.3f} {r['cudnn_fwd']:9.3f} "
                              f"{r['ratio_fwd']:6.2f} | {r['ours_fwdbwd']:9.3f} "
                              f"{r['cudnn_fwdbwd']:9.3f} {r['ratio_fwdbwd']:6.2f}", flush=True)
                        torch.cuda.empty_cache()
    ours_step, floor_step, cfg = latency_floor(T, a.ours_only)
    print(f"\nper-step latency B=1 H=512 bf16 LSTM fwd: ours {ours_step:.2f} us, barrier-only "
          f"floor {floor_step:.2f} us (x{ours_step / floor_step:.2f}); config {cfg}")
    if rows:
        import statistics
        print(f"geomean ratio fwd {statistics.geometric_mean(r['ratio_fwd'] for r in rows):.2f}, "
              f"fwd+bwd {statistics.geometric_mean(r['ratio_fwdbwd'] for r in rows):.2f}; "
              f"min fwd {min(r['ratio_fwd'] for r in rows):.2f}, "
              f"min fwd+bwd {min(r['ratio_fwdbwd'] for r in rows):.2f}; {time.time() - t0:.0f} s")
    if a.csv:
        import csv
        with open(a.csv, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
            wr.writeheader()
            wr.writerows(rows)
    if a.plot and rows:
        _plot(rows, a.plot)
    return rows


def _plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, key in zip(axes, ("ratio_fwd", "ratio_fwdbwd")):
        labels = [f"{r['cell']}/{r['dtype'][:4]}/{'p' if r['packed'] else 'u'}/B{r['B']}/H{r['H']}"
                  for r in rows]
        ax.bar(range(len(rows)), [r[key] for r in rows],
               color=["tab:green" if r[key] >= 1 else "tab:red" for r in rows])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"cuDNN time / Triton time ({'forward' if key == 'ratio_fwd' else 'fwd+bwd'})")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(labels, rotation=90, fontsize=4)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    print(f"plot written to {path}")


if __name__ == "__main__":
    main()
