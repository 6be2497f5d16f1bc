"""perf/bench_embedding.py at tiny settings: it runs, the table has a row per case and mode with
positive figures, and the drawn lookups have the distributions it names."""
import os
import re
import subprocess
import sys

import pytest

import gatedrnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "perf", "bench_embedding.py")


@pytest.mark.skipif(not gatedrnn.available_backends()["cython"].available, reason="the cython backend is not built")
def test_cpu_table():
    result = subprocess.run([sys.executable, SCRIPT, "--cases", "chars,one-row", "--repeats", "1", "--warmup", "0"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if re.match(r"\| (chars|one-row) \|", line)]
    assert len(rows) == 4, result.stdout
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[6] in ("forward", "fwd+bwd")
        assert all(float(value) > 0 for value in cells[7:10]), row
    assert "| one-row | 1000 | 256 | 32768 | 100% |" in result.stdout


def test_bad_case_is_refused():
    result = subprocess.run([sys.executable, SCRIPT, "--cases", "nope"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2 and "unknown cases" in result.stderr


def test_distributions():
    sys.path.insert(0, os.path.join(ROOT, "perf"))
    try:
        from bench_embedding import draw_indices
    finally:
        sys.path.pop(0)
    space = draw_indices(97, (64, 1024), "space").reshape(-1)
    assert 0.2 < (space == 1).float().mean().item() < 0.23  # a fifth, plus its uniform share
    zipf = draw_indices(50021, (64, 512), "zipf").reshape(-1)
    assert (zipf == 0).float().mean().item() > 0.05 and int(zipf.max()) < 50021
    assert draw_indices(1000, (2, 3), "one").unique().numel() == 1
