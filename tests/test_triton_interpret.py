"""Triton kernels under TRITON_INTERPRET=1 (CPU tensors) against the float64 NumPy oracle.

Every cell and convention (LSTM, GRU reset_after / reset_before, RNN tanh / relu), forward
(output, h_n, c_n, workspace) and every gradient, in every mode: single-program (one program
owns all hidden units, all steps in one launch), split-hidden in its interpreter-safe form
(hidden units split over programs, one launch per step/phase) and the gemm mode (the recurrent
product as a tiled GEMM, then the gate math) in both forms: one launch (one program looping over
every tile, the grid barrier a CTA barrier) and two launches a step, with unsorted lengths
including 0 and T, reverse, missing biases and several batch and hidden tiles; W_hh held on-chip
for the whole launch (the launcher's choice for 16-row batch tiles) and streamed. float32 (no
bf16 in the interpreter). The GPU forms of the split and gemm modes (several programs meeting at
the spin barrier) run with their programs as concurrent threads (``concurrent_programs``):
without the barrier every such case fails; one barrier of the gemm forward left out failed the
LSTM case in the run tried (the interleaving is up to the thread scheduler).

Triton picks the interpreter when ``@triton.jit`` decorates, i.e. at import of the kernel
modules. Other test files may import them first (compiled mode), so the cases run in a fresh
subprocess (``pytest`` on this file with TRITON_INTERPRET=1); in that subprocess the cases run
directly. Runtime: ~65-85 s on 2 cores.
"""
import importlib
import os
import sys

import numpy as np
import pytest
import torch

from interpreter import INTERPRETING, concurrent_programs, outside_interpreter, run_interpreted

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CELLS = [("lstm", None), ("gru", True), ("gru", False), ("rnn", "tanh"), ("rnn", "relu")]
NUM_GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def kernel_module(name):
    """gatedrnn.kernels.<name> when installed, else kernels.<name> from the checkout."""
    try:
        return importlib.import_module(f"gatedrnn.kernels.{name}")
    except ImportError:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        return importlib.import_module(f"kernels.{name}")


def oracle_module():
    try:
        return importlib.import_module("gatedrnn.oracle")
    except ImportError:
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        return importlib.import_module("gatedrnn.oracle")


def _oracle_cell_name(cell, option):
    if cell == "gru":
        return "gru" if option else "gru_reset_before"
    return cell


def rel_err(got, ref):
    got = got.detach().double().cpu().numpy()
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.isfinite(got).all(), "non-finite entries (unwritten output?)"
    return np.linalg.norm(got - ref) / max(np.linalg.norm(ref), 1e-30)


def check_case(cell, option, T, B, I, H, lengths, reverse, mode, *, dtype=torch.float32,
               device="cpu", bias=True, tol=1e-5, seed=0):
    """Run forward + backward of one configuration and compare with the oracle.

    Returns the largest relative error seen (asserts each is below tol)."""
    oracle = oracle_module()
    mod = kernel_module(cell)
    rng = np.random.default_rng(seed)
    G = NUM_GATES[cell]
    scale = 1.0 / np.sqrt(H)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((B, H)) * 0.5
    c0 = rng.standard_normal((B, H)) * 0.5
    w_ih = rng.uniform(-scale, scale, (G * H, I))
    w_hh = rng.uniform(-scale, scale, (G * H, H))
    b_ih = rng.uniform(-scale, scale, G * H) if bias else None
    b_hh = rng.uniform(-scale, scale, G * H) if bias else None
    lengths = np.asarray(lengths, dtype=np.int64)
    grad_out = rng.standard_normal((T, B, H))
    grad_hn = rng.standard_normal((B, H))
    grad_cn = rng.standard_normal((B, H))

    def dev(a):
        return None if a is None else torch.tensor(a, dtype=dtype, device=device)

    def rounded(a):  # what the kernel sees, so the oracle gets the same inputs
        return None if a is None else torch.tensor(a).to(dtype).double().numpy()

    x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_out, grad_hn, grad_cn = map(
        rounded, (x, h0, c0, w_ih, w_hh, b_ih, b_hh, grad_out, grad_hn, grad_cn))
    tx, th0, tc0, twih, twhh, tbih, tbhh = map(dev, (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    tlen = torch.tensor(lengths, dtype=torch.int64, device=device)
    tgo, tghn, tgcn = map(dev, (grad_out, grad_hn, grad_cn))
    # The oracle zeroes outputs past a length, so their gradient must not matter either.
    errs = {}
    if cell == "lstm":
        ref_out, ref_hn, ref_cn, cache = oracle.lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                             lengths, reverse)
        refs_bwd = oracle.lstm_backward(grad_out, grad_hn, grad_cn, cache)
        out, hn, cn, ws = mod.lstm_forward(tx, th0, tc0, twih, twhh, tbih, tbhh, tlen, reverse,
                                           mode=mode)
        grads = mod.lstm_backward(tgo, tghn, tgcn, tx, th0, tc0, twih, twhh, tbih, tbhh, tlen,
                                  reverse, out, ws, mode=mode)
        errs["c_n"] = rel_err(cn, ref_cn)
        names = ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")
    elif cell == "gru":
        ref_out, ref_hn, cache = oracle.gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths,
                                                    reverse, option)
        refs_bwd = oracle.gru_backward(grad_out, grad_hn, cache)
        out, hn, ws = mod.gru_forward(tx, th0, twih, twhh, tbih, tbhh, tlen, reverse, option,
                                      mode=mode)
        grads = mod.gru_backward(tgo, tghn, tx, th0, twih, twhh, tbih, tbhh, tlen, reverse,
                                 option, out, ws, mode=mode)
        names = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    else:
        ref_out, ref_hn, cache = oracle.rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths,
                                                    reverse, option)
        refs_bwd = oracle.rnn_backward(grad_out, grad_hn, cache)
        out, hn, ws = mod.rnn_forward(tx, th0, twih, twhh, tbih, tbhh, tlen, reverse, option,
                                      mode=mode)
        grads = mod.rnn_backward(tgo, tghn, tx, th0, twih, twhh, tbih, tbhh, tlen, reverse,
                                 option, out, ws, mode=mode)
        names = ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")
    errs["output"] = rel_err(out, ref_out)
    errs["h_n"] = rel_err(hn, ref_hn)
    errs["workspace"] = rel_err(ws, oracle.workspace(_oracle_cell_name(cell, option), cache))
    # Past a length, outputs and workspace are exactly zero.
    t_idx = np.arange(T)[:, None]
    past = torch.tensor(t_idx >= lengths[None, :])
    assert (out.cpu()[past] == 0).all() and (ws.cpu()[past] == 0).all()
    for name, got, ref in zip(names, grads, refs_bwd):
        errs["grad_" + name] = rel_err(got, ref)
    bad = {k: v for k, v in errs.items() if not v < tol}
    assert not bad, f"relative errors above {tol}: {bad}"
    return errs


# ---------------------------------------------------------------------------------------------
# Cases (run in the interpreter subprocess)
# ---------------------------------------------------------------------------------------------
needs_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 subprocess (test_in_interpreter)")


def resident_weights(on, monkeypatch):
    """W_hh held on-chip (the launcher's choice for 16-row batch tiles) or streamed from memory
    every step (GATEDRNN_TRITON_RESIDENT=0)."""
    monkeypatch.setenv("GATEDRNN_TRITON_RESIDENT", "1" if on else "0")


@needs_interpreter
@pytest.mark.parametrize("mode,weights", [("single", "resident"), ("single", "streamed"),
                                          ("split", "resident"), ("split", "streamed"),
                                          ("gemm", "gemm"), ("gemm_per_step", "gemm")])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,option", CELLS)
def test_cell_against_oracle(cell, option, reverse, mode, weights, monkeypatch):
    # H=20: units masked in every mode; the split and both gemm modes use 2 hidden tiles of 16
    # (the gemm mode: one program looping over every GEMM and gate tile).
    # lengths unsorted, with 0 (returns h0/c0) and T. W_hh on-chip (the launcher's choice at
    # these sizes) or streamed; the gemm modes read the product from the step GEMM instead.
    resident_weights(weights != "streamed", monkeypatch)
    C = kernel_module("_common")
    cfg = C.choose_config(C.CELL_LSTM, 20, 3, torch.float32, 1, True, mode)
    assert bool(cfg.resident) == (weights == "resident"), cfg
    check_case(cell, option, T=5, B=3, I=4, H=20, lengths=[5, 0, 3], reverse=reverse,
               mode=mode)


@needs_interpreter
@pytest.mark.parametrize("cell,option", CELLS)
def test_resident_weights_several_chunks(cell, option):
    """W_hh on-chip with K padded past HP: H = 70 in the split form's three hidden tiles of 32
    (HP = 96), so the forward's slice is 8 chunks of 16 rows of which the last two lie past HP
    (masked), the backward's 8 chunks over the gates' rows (G*96 padded: 512 for LSTM and GRU,
    256 and n's 128 for GRU reset_before, 128 for the RNN); reverse and lengths, against the
    oracle."""
    C = kernel_module("_common")
    code = {"lstm": C.CELL_LSTM, "rnn": C.CELL_RNN_TANH}.get(
        cell, C.CELL_GRU if option else C.CELL_GRU_RESET_BEFORE)
    cfg = C.choose_config(code, 70, 5, torch.float32, 1, True, "split")
    assert cfg.resident[:2] == (8, 16) and cfg.n_htiles == 3, cfg
    check_case(cell, option, T=6, B=5, I=3, H=70, lengths=[6, 2, 0, 5, 6], reverse=True,
               mode="split")


@needs_interpreter
@pytest.mark.parametrize("mode", ["split", "gemm", "gemm_per_step"])
@pytest.mark.parametrize("cell,option", CELLS)
def test_two_batch_tiles_no_bias(cell, option, mode):
    # B=18 > 16: two batch tiles (two barrier groups in split mode, two GEMM row tiles); no
    # biases; H=33 needs 3 hidden tiles (HP=48: GEMM widths G*48, not multiples of its 32-wide
    # tiles, so their masked edges run).
    lengths = [4, 1, 0, 4, 2, 3, 4, 4, 0, 1, 2, 3, 4, 3, 2, 1, 4, 2]
    check_case(cell, option, T=4, B=18, I=3, H=33, lengths=lengths, reverse=True,
               mode=mode, bias=False)


@needs_interpreter
@pytest.mark.parametrize("mode", ["split", "gemm"])
@pytest.mark.parametrize("cell,option", CELLS)
def test_concurrent_programs_with_the_grid_barrier(cell, option, mode, monkeypatch):
    """The GPU forms of the split-hidden and gemm modes: several programs running at once (one
    thread each, tests/interpreter.py concurrent_programs) that meet at the real spin barrier
    every step. split: the launcher's GPU config for a 4-SM device (3 hidden tiles of 16 units,
    one batch tile of 32 rows); gemm: 3 programs sharing 6 gate tiles and 4-12 GEMM tiles."""
    from dataclasses import replace

    C = kernel_module("_common")

    def config(cell_code, H, B, dtype, t, _mode):
        if mode == "split":
            cfg = C.choose_config(cell_code, H, B, dtype, 4, False, "split")
        else:
            cfg = replace(C.choose_config(cell_code, H, B, dtype, 1, True, "gemm"),
                          sync=C.SYNC_GRID, programs=3)
        assert cfg.sync == C.SYNC_GRID and cfg.grid[0] == 3, cfg
        return cfg

    monkeypatch.setattr(C, "_config_for", config)
    lengths = [4, 1, 0, 4, 2, 3, 4, 4, 0, 1, 2, 3, 4, 3, 2, 1, 4, 2]
    with concurrent_programs():
        check_case(cell, option, T=4, B=18, I=3, H=33, lengths=lengths, reverse=True,
                   mode=None)


@needs_interpreter
@pytest.mark.parametrize("cell,option", CELLS)
def test_concurrent_split_resident_weights(cell, option, monkeypatch):
    """The split mode's GPU form with W_hh on-chip: the launcher's config for B = 9 (one batch
    tile of 16 rows) on a 4-SM device, 3 programs each holding its slice for the whole launch
    and meeting at the spin barrier every step, running at once."""
    C = kernel_module("_common")

    def config(cell_code, H, B, dtype, t, _mode):
        cfg = C.choose_config(cell_code, H, B, dtype, 4, False, "split")
        assert cfg.sync == C.SYNC_GRID and cfg.grid[0] == 3 and cfg.resident, cfg
        return cfg

    monkeypatch.setattr(C, "_config_for", config)
    with concurrent_programs():
        check_case(cell, option, T=4, B=9, I=3, H=33, lengths=[4, 1, 0, 4, 2, 3, 4, 4, 2],
                   reverse=False, mode=None)


@needs_interpreter
@pytest.mark.parametrize("cell,option", [("lstm", None), ("gru", False)])
def test_concurrent_split_two_barrier_groups(cell, option, monkeypatch):
    """B = 66: two batch tiles of 64 rows, each with its own barrier word and 3 programs (the
    launcher's GPU config for an 8-SM device), all 6 running at once."""
    C = kernel_module("_common")

    def config(cell_code, H, B, dtype, t, _mode):
        cfg = C.choose_config(cell_code, H, B, dtype, 8, False, "split")
        assert cfg.sync == C.SYNC_GRID and (cfg.n_btiles, cfg.n_htiles) == (2, 3), cfg
        return cfg

    monkeypatch.setattr(C, "_config_for", config)
    lengths = [(7 * b) % 5 for b in range(66)]
    with concurrent_programs():
        check_case(cell, option, T=4, B=66, I=3, H=33, lengths=lengths, reverse=False,
                   mode=None)


@needs_interpreter
def test_default_config_full_lengths():
    check_case("lstm", None, T=6, B=2, I=5, H=16, lengths=[6, 6], reverse=False, mode=None)


@needs_interpreter
def test_mode_choice_is_logged(caplog):
    import logging
    with caplog.at_level(logging.DEBUG, logger="gatedrnn.kernels"):
        check_case("rnn", "tanh", T=2, B=1, I=2, H=16, lengths=[2], reverse=False, mode=None)
    assert any("rnn_tanh" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------------------------------
# Entry point in an ordinary (non-interpreter) test session
# ---------------------------------------------------------------------------------------------
@outside_interpreter
def test_in_interpreter():
    run_interpreted(__file__, "not test_in_interpreter")
