"""The bar chart every benchmark draws: one bar per row, reference time / ours, a line at 1.

Imported by perf/bench_conv.py and the ``gatedrnn bench`` command (gatedrnn/cli.py).
"""
from __future__ import annotations

from typing import Sequence


def ratio_bars(labels: Sequence[str], ratios: Sequence[float], path: str, title: str, ylabel: str,
               inches_per_bar: float = 0.55, height: float = 4.8, fontsize: int = 7) -> None:
    """Write a PNG to ``path``: bars of ``ratios`` (green >= 1, red below), each labelled with
    its value, x tick labels ``labels`` (one per bar). Needs matplotlib (Agg backend)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(6.0, inches_per_bar * len(ratios) + 2), height))
    axis.bar(range(len(ratios)), ratios, color=["tab:green" if v >= 1 else "tab:red" for v in ratios])
    axis.axhline(1.0, color="black", linewidth=0.8)
    for position, value in enumerate(ratios):
        axis.text(position, value, f"{value:.2f}", ha="center", va="bottom", fontsize=fontsize)
    axis.set_xticks(range(len(ratios)))
    axis.set_xticklabels(labels, fontsize=fontsize - 1, rotation=60 if len(ratios) > 12 else 45, ha="right")
    axis.set_ylabel(ylabel)
    axis.set_title(title, fontsize=fontsize + 1)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)
    print(f"plot written to {path}")
