"""perf/bench_rnn.py's CPU table at tiny settings: the --small set runs and prints one row per
configuration and mode with positive figures; --quick and --small together are refused."""
import os
import re
import subprocess
import sys

import pytest

import gatedrnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "perf", "bench_rnn.py")


@pytest.mark.skipif(not gatedrnn.available_backends()["cython"].available, reason="the cython backend is not built")
def test_small_table():
    result = subprocess.run([sys.executable, SCRIPT, "--small", "--cells", "rnn", "--repeats", "1", "--warmup", "0"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| RNN |")]
    sys.path.insert(0, os.path.join(ROOT, "perf"))
    try:
        from bench_rnn import SMALL_CONFIGS
    finally:
        sys.path.pop(0)
    expected = [(T, B, H, mode) for T, B, H in SMALL_CONFIGS for mode in ("inference", "fwd+bwd")]
    found = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        found.append((int(cells[1]), int(cells[2]), int(cells[3]), cells[4]))
        assert all(float(value) > 0 for value in cells[5:8]), row
    assert found == expected, result.stdout


def test_quick_and_small_are_refused_together():
    result = subprocess.run([sys.executable, SCRIPT, "--quick", "--small"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert result.returncode == 2 and re.search("--quick and --small", result.stderr), result.stderr


@pytest.mark.parametrize("flag", ["--gpu", "--modules"])
def test_small_is_for_the_cpu_table(flag):
    result = subprocess.run([sys.executable, SCRIPT, flag, "--small"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 2 and f"--small selects the CPU table's sizes; {flag} has its own" in result.stderr

