"""gatedrnn.lstm on the CPU backends (cython, numpy) against the NumPy oracle, forward and every gradient."""
import pytest
import torch

import gatedrnn
from recurrence_cases import run_case, standard_cases

CASES = standard_cases("lstm", [{}])
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
