"""gatedrnn.rnn on the CPU backends (cython, numpy) against the NumPy oracle, forward and every gradient."""
import os

import pytest
import torch

import gatedrnn
from recurrence_cases import run_case, standard_cases

CASES = standard_cases("rnn", [{"nonlinearity": "tanh"}, {"nonlinearity": "relu"}])
CYTHON = pytest.mark.skipif(
    not gatedrnn.available_backends()["cython"].available, reason="cython extensions not built"
)


@CYTHON
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cython_matches_oracle(case, dtype):
    run_case(case, "cython", dtype)


@pytest.mark.parametrize("case", CASES[:4], ids=[c.id for c in CASES[:4]])
def test_numpy_backend_matches_oracle(case):
    # The numpy backend is the oracle behind the op machinery: this checks that plumbing.
    run_case(case, "numpy", torch.float64)


@CYTHON
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the process's size from /proc")
def test_cython_forward_does_not_leak():
    """Repeated forwards at sizes that take the backward's blocked weight gradients (H a multiple
    of 32) keep the process's memory flat: each thread's buffers are freed (a forward once
    allocated the backward's 64 KB panels per thread and never freed them: 64 MB over these calls,
    untouched, so it showed in the virtual size, not the resident set)."""
    def size_kb():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE") // 1024

    x, w_ih, w_hh = torch.randn(5, 3, 32), torch.randn(64, 32), torch.randn(64, 64)
    with torch.no_grad():
        for _ in range(20):
            gatedrnn.rnn(x, None, w_ih, w_hh, backend="cython")
        before = size_kb()
        for _ in range(500):
            gatedrnn.rnn(x, None, w_ih, w_hh, backend="cython")
    assert size_kb() - before < 16 * 1024
