"""Triton recurrences on a CUDA device (marked ``gpu``; skipped without CUDA).

* Oracle checks (forward, workspace, every gradient) at realistic sizes, all cells and
  conventions, float32 (IEEE dots), bfloat16 and float16, every mode: split-hidden persistent
  with its real grid barrier (the default), single-program, per-step, GEMM per-step; at B <= 16
  with W_hh held on-chip (the launcher's choice there) and streamed.
* Every hidden size class 32..2048 and batch 1..1024 runs (forward + backward, finite, against
  cuDNN in float64 for full-length sequences).
* Barrier stress: hundreds of split-hidden launches, results bitwise identical (the kernels use
  no float atomics; a race in the exchange would show as a difference); the GEMM per-step mode
  repeated likewise.
"""
import importlib.util
import os

import pytest
import torch

pytestmark = pytest.mark.gpu
HERE = os.path.dirname(os.path.abspath(__file__))

if not torch.cuda.is_available():  # the conftest also skips by marker; keep imports cheap
    pytest.skip("needs a CUDA device", allow_module_level=True)

_spec = importlib.util.spec_from_file_location("_triton_cases",
                                               os.path.join(HERE, "test_triton_interpret.py"))
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)
kernel_module = cases.kernel_module

CELLS = cases.CELLS
# Relative-norm tolerances: float32 with IEEE dots is far below 1e-4; half types carry the
# rounding of h to the dot dtype every step (fp16 10 bits, bf16 7 bits of mantissa).
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def _ieee_float32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # our float32 dots follow this flag
    yield
    torch.backends.cudnn.allow_tf32 = old


def _lengths(B, T, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 2:
        lengths[1] = 0
    return lengths.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("mode", [None, "single", "per_step", "gemm", "gemm_per_step"],
                         ids=["split", "single", "step", "gemm", "gemm_step"])
@pytest.mark.parametrize("cell,option", CELLS)
def test_oracle_realistic(cell, option, mode, dtype):
    T, B, I, H = 24, 40, 96, 200 if mode != "single" else 64
    # relu in half precision: a rounding that flips the sign of a pre-activation switches its
    # derivative between 0 and 1, so gradients differ more (seen: 1.3% fp16, 4% bf16).
    tol = TOL[dtype] * (3 if option == "relu" and dtype != torch.float32 else 1)
    for reverse in (False, True):
        cases.check_case(cell, option, T, B, I, H, _lengths(B, T, 1), reverse, mode,
                         dtype=dtype, device="cuda", tol=tol, seed=3)


@pytest.mark.parametrize("weights", ["resident", "streamed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cell,option", CELLS)
def test_oracle_resident_weights(cell, option, dtype, weights, monkeypatch):
    """B = 12 (one 16-row batch tile), the split mode with W_hh on-chip where it fits and, for
    comparison, streamed (GATEDRNN_TRITON_RESIDENT=0): H = 200 (K padded 208 -> 256, both
    directions resident), then H = 1000 in half types (the forward's 128 KB slice resident,
    the backward's too large: streamed) and H = 250 in float32 (64 KB slices, both resident)."""
    C = kernel_module("_common")
    monkeypatch.setenv("GATEDRNN_TRITON_RESIDENT", "1" if weights == "resident" else "0")
    sms, cap = C.device_properties(torch.cuda.current_device())
    tol = TOL[dtype] * (3 if option == "relu" and dtype != torch.float32 else 1)
    T, B, I = 24, 12, 96
    for H in (200, 250 if dtype == torch.float32 else 1000):
        cfg = C.choose_config(C.CELL_LSTM, H, B, dtype, sms, capability=cap)
        assert bool(cfg.resident) == (weights == "resident"), cfg
        for reverse in (False, True):
            cases.check_case(cell, option, T, B, I, H, _lengths(B, T, 2), reverse, None,
                             dtype=dtype, device="cuda", tol=tol, seed=5)


def test_split_mode_is_chosen():
    from importlib import import_module
    C = import_module(kernel_module("lstm").__name__.rsplit(".", 1)[0] + "._common")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cfg = C.choose_config(C.CELL_LSTM, 200, 40, torch.float32, sms)
    assert cfg.mode == "persistent" and cfg.sync == C.SYNC_GRID and cfg.n_htiles > 1


_TORCH = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


@pytest.mark.parametrize("H", [32, 48, 100, 256, 768, 1024, 2048])
@pytest.mark.parametrize("B", [1, 8, 64, 256, 1024])
def test_all_sizes_run(H, B):
    """Every size class picks a config that runs and matches cuDNN in float64 (full lengths,
    LSTM forward + backward, bf16 forward), within the half-precision tolerance."""
    T, I = 6, 32
    dev = "cuda"
    torch.manual_seed(H * 7 + B)
    ref = torch.nn.LSTM(I, H).to(dev, torch.float64)
    x = torch.randn(T, B, I, device=dev, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, H, device=dev, dtype=torch.float64) * 0.5
    c0 = torch.randn(1, B, H, device=dev, dtype=torch.float64) * 0.5
    out_ref, (hn_ref, cn_ref) = ref(x, (h0, c0))
    go = torch.randn_like(out_ref)
    gx_ref, gw_ref = torch.autograd.grad(out_ref, (x, ref.weight_hh_l0), go)
    mod = kernel_module("lstm")
    lengths = torch.full((B,), T, dtype=torch.int64, device=dev)
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):
        p = [t.detach().to(dtype) for t in (x, h0[0], c0[0], ref.weight_ih_l0, ref.weight_hh_l0,
                                            ref.bias_ih_l0, ref.bias_hh_l0)]
        out, hn, cn, ws = mod.lstm_forward(*p, lengths, False)
        rel = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # noqa: E731
        assert rel(out, out_ref) < tol and rel(cn, cn_ref[0]) < tol
        if dtype == torch.float32:
            z = torch.zeros(B, H, device=dev, dtype=dtype)
            grads = mod.lstm_backward(go.to(dtype), z, z, *p, lengths, False, out, ws)
            assert rel(grads[0], gx_ref) < tol and rel(grads[4], gw_ref) < tol


@pytest.mark.parametrize("cell,option,mode,repeats,dtype",
                         [("lstm", None, None, 300, torch.float32),
                          ("gru", False, None, 300, torch.float32),
                          ("lstm", None, None, 300, torch.bfloat16),
                          ("gru", False, None, 300, torch.bfloat16),
                          ("lstm", None, "gemm", 300, torch.float32),
                          ("gru", False, "gemm", 300, torch.float32),
                          ("lstm", None, "gemm_per_step", 30, torch.float32)],
                         ids=["lstm-split", "gru_reset_before-split", "lstm-split-bf16",
                              "gru_reset_before-split-bf16", "lstm-gemm",
                              "gru_reset_before-gemm", "lstm-gemm_step"])
def test_barrier_stress_bitwise(cell, option, mode, repeats, dtype):
    """Forward+backward launches on the same inputs, bitwise identical: 300 each of the split
    mode (float32: W_hh streamed, its slices too large at H = 512; bf16: on-chip in both
    directions) and the one-launch gemm mode (grid barriers; GEMMs with no split reduction), 30 of
    the gemm mode's two-launches-a-step form."""
    T, B, I, H = 16, 8, 64, 512
    dev = "cuda"
    torch.manual_seed(0)
    G = cases.NUM_GATES[cell]
    mod = kernel_module(cell)
    x = torch.randn(T, B, I, device=dev, dtype=dtype)
    h0 = torch.randn(B, H, device=dev, dtype=dtype)
    c0 = torch.randn(B, H, device=dev, dtype=dtype)
    w_ih = (torch.randn(G * H, I, device=dev) / H ** 0.5).to(dtype)
    w_hh = (torch.randn(G * H, H, device=dev) / H ** 0.5).to(dtype)
    b = (torch.randn(G * H, device=dev) * 0.1).to(dtype)
    lengths = torch.tensor([16, 3, 0, 9, 16, 1, 12, 7], device=dev)
    go = torch.randn(T, B, H, device=dev, dtype=dtype)
    gh = torch.randn(B, H, device=dev, dtype=dtype)

    def once():
        if cell == "lstm":
            out, hn, cn, ws = mod.lstm_forward(x, h0, c0, w_ih, w_hh, b, b, lengths, True,
                                               mode=mode)
            g = mod.lstm_backward(go, gh, gh, x, h0, c0, w_ih, w_hh, b, b, lengths, True, out,
                                  ws, mode=mode)
            return (out, hn, cn, ws) + tuple(g)
        out, hn, ws = mod.gru_forward(x, h0, w_ih, w_hh, b, b, lengths, True, option, mode=mode)
        g = mod.gru_backward(go, gh, x, h0, w_ih, w_hh, b, b, lengths, True, option, out, ws,
                             mode=mode)
        return (out, hn, ws) + tuple(g)

    first = once()
    for _ in range(repeats):
        again = once()
        for a, b_ in zip(first, again):
            assert torch.equal(a, b_)
    torch.cuda.synchronize()
