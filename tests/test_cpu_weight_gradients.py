"""The CPU backward's weight gradients on the register kernel (``weight_grad_blocked`` in
cpu/_register_gemm.pxd), taken where the input and/or hidden size are whole 32-column blocks:
every cell and convention against the oracle over 1-3 threads, both dtypes. The standard grids
of test_lstm/gru/rnn have no such sizes (they run the BLAS path)."""
import pytest
import torch

import gatedrnn
from recurrence_cases import blocked_weight_grad_cases, run_case_with_threads

CASES = (blocked_weight_grad_cases("lstm", [{}])
         + blocked_weight_grad_cases("gru", [{"reset_after": True}, {"reset_after": False}])
         + blocked_weight_grad_cases("rnn", [{"nonlinearity": "tanh"}]))
pytestmark = pytest.mark.skipif(not gatedrnn.available_backends()["cython"].available,
                                reason="cython extensions not built")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_blocked_weight_gradients_match_oracle(case, dtype, threads):
    run_case_with_threads(case, "cython", dtype, threads)
