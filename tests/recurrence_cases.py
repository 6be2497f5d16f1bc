"""Shared checks of a recurrent op (lstm, gru, rnn) on one backend against the NumPy oracle.

Each case draws fresh random inputs, runs ``gatedrnn.<cell>`` with autograd on the backend and
the oracle's forward and explicit BPTT backward in float64, and compares the outputs, final
states and every gradient with a relative (norm-wise) tolerance.
"""
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

import gatedrnn
from gatedrnn import oracle

GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# Norm-wise relative tolerances: float64 agrees to rounding; float32 to ~1e-5 over a sequence.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 1e-2}


@dataclass
class Case:
    cell: str
    seq_len: int
    batch: int
    input_size: int
    hidden_size: int
    lengths: Optional[Sequence[int]] = None
    reverse: bool = False
    batch_first: bool = False
    with_hx: bool = True
    with_bias: bool = True
    options: dict = field(default_factory=dict)  # reset_after / nonlinearity

    @property
    def id(self) -> str:
        parts = [self.cell, f"T{self.seq_len}B{self.batch}I{self.input_size}H{self.hidden_size}"]
        if self.lengths is not None:
            parts.append("len")
        for flag in ("reverse", "batch_first"):
            if getattr(self, flag):
                parts.append(flag)
        if not self.with_hx:
            parts.append("nohx")
        if not self.with_bias:
            parts.append("nobias")
        parts += [f"{k}={v}" for k, v in self.options.items()]
        return "-".join(parts)


def relative_error(actual: torch.Tensor, expected: np.ndarray) -> float:
    actual = actual.detach().cpu().to(torch.float64).numpy()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.all(np.isfinite(actual)), "non-finite values (an entry the kernel did not write?)"
    scale = max(np.linalg.norm(expected), 1e-30)
    return float(np.linalg.norm(actual - expected) / scale)


def run_case(case: Case, backend: str, dtype: torch.dtype, device: str = "cpu", seed: int = 0,
             inference: bool = False):
    """Run ``case`` on ``backend`` and assert agreement with the oracle; with ``inference`` the
    forward alone, under ``torch.no_grad()`` (the path that writes no workspace)."""
    rng = np.random.default_rng(seed)
    T, B, I, H = case.seq_len, case.batch, case.input_size, case.hidden_size
    G = GATES[case.cell]
    scale = 1.0 / np.sqrt(H)

    def draw(*shape, s=1.0):
        return rng.uniform(-s, s, size=shape)

    x = draw(T, B, I)
    states = [draw(B, H, s=0.5) for _ in range(2 if case.cell == "lstm" else 1)]
    w_ih, w_hh = draw(G * H, I, s=scale), draw(G * H, H, s=scale)
    b_ih, b_hh = (draw(G * H, s=scale), draw(G * H, s=scale)) if case.with_bias else (None, None)
    if not case.with_hx:
        states = [np.zeros((B, H)) for _ in states]
    lengths = None if case.lengths is None else np.asarray(case.lengths, dtype=np.int64)

    # Oracle in float64 on the inputs rounded to the tested dtype.
    def rounded(a):
        return None if a is None else torch.from_numpy(a).to(dtype).to(torch.float64).numpy()

    x, w_ih, w_hh, b_ih, b_hh = map(rounded, (x, w_ih, w_hh, b_ih, b_hh))
    states = [rounded(s) for s in states]
    grad_output = rng.standard_normal((T, B, H))
    grad_finals = [rng.standard_normal((B, H)) for _ in states]
    grad_output, grad_finals = rounded(grad_output), [rounded(g) for g in grad_finals]

    if case.cell == "lstm":
        out, h_n, c_n, cache = oracle.lstm_forward(x, *states, w_ih, w_hh, b_ih, b_hh, lengths, case.reverse)
        expected_finals = [h_n, c_n]
        expected_grads = oracle.lstm_backward(grad_output, *grad_finals, cache)
    elif case.cell == "gru":
        out, h_n, cache = oracle.gru_forward(x, *states, w_ih, w_hh, b_ih, b_hh, lengths, case.reverse, **case.options)
        expected_finals = [h_n]
        expected_grads = oracle.gru_backward(grad_output, *grad_finals, cache)
    else:
        out, h_n, cache = oracle.rnn_forward(x, *states, w_ih, w_hh, b_ih, b_hh, lengths, case.reverse, **case.options)
        expected_finals = [h_n]
        expected_grads = oracle.rnn_backward(grad_output, *grad_finals, cache)

    def tensor(a, grad=True):
        if a is None:
            return None
        t = torch.from_numpy(a).to(device=device, dtype=dtype)
        return t.requires_grad_(grad)

    x_t = tensor(x)
    # batch_first input as a non-contiguous (B, T, I) view of a time-major leaf.
    x_in = x_t.transpose(0, 1) if case.batch_first else x_t
    state_t = [tensor(s, grad=case.with_hx) for s in states]
    params = [tensor(w_ih), tensor(w_hh), tensor(b_ih), tensor(b_hh)]
    hx = None
    if case.with_hx:
        hx = tuple(state_t) if case.cell == "lstm" else state_t[0]
    length_arg = None if lengths is None else torch.from_numpy(lengths)
    fn = getattr(gatedrnn, case.cell)
    with torch.set_grad_enabled(not inference):
        result = fn(x_in, hx, *params, lengths=length_arg, reverse=case.reverse,
                    batch_first=case.batch_first, backend=backend, **case.options)
    output, finals = result[0], result[1]
    finals = list(finals) if case.cell == "lstm" else [finals]
    if case.batch_first:
        assert output.shape == (B, T, H)
        output_tm = output.transpose(0, 1)
    else:
        output_tm = output
    assert output.dtype == dtype and output.device.type == torch.device(device).type

    tol = TOLERANCE[dtype]
    checks = {"output": (output_tm, out)}
    for k, (f, e) in enumerate(zip(finals, expected_finals)):
        checks[("h_n", "c_n")[k]] = (f, e)
    for name, (actual, expected) in checks.items():
        err = relative_error(actual, expected)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"
    if inference:
        return

    upstream = [output_tm, *finals]
    grads = [tensor(grad_output, False), *[tensor(g, False) for g in grad_finals]]
    torch.autograd.backward(upstream, grads)
    x_grad = x_t.grad
    names = ["grad_input"] + [f"grad_{n}" for n in ("h0", "c0")[: len(states)]] + [
        "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh"]
    actual_grads = [x_grad, *[s.grad for s in state_t], *[p.grad if p is not None else None for p in params]]
    for name, actual, expected in zip(names, actual_grads, expected_grads):
        if actual is None:
            # Parameters that were not passed (no hx, no bias) receive nothing.
            assert (name.startswith("grad_bias") and not case.with_bias) or (
                name[5:] in ("h0", "c0") and not case.with_hx), name
            continue
        err = relative_error(actual, expected)
        assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def standard_cases(cell: str, options_list: Sequence[dict]) -> list:
    """The parametrized grid every backend runs for one cell."""
    cases = []
    for options in options_list:
        cases += [
            Case(cell, 7, 3, 13, 9, options=options),
            Case(cell, 1, 1, 5, 7, options=options),
            Case(cell, 33, 1, 13, 47, options=options),
            Case(cell, 9, 5, 11, 17, lengths=[9, 0, 4, 1, 7], options=options),
            Case(cell, 9, 5, 11, 17, lengths=[3, 9, 0, 6, 9], reverse=True, options=options),
            Case(cell, 6, 4, 7, 10, reverse=True, batch_first=True, options=options),
            Case(cell, 5, 2, 3, 8, with_hx=False, with_bias=False, options=options),
            Case(cell, 12, 6, 19, 23, lengths=[12, 5, 1, 12, 0, 8], with_hx=False, options=options),
        ]
    return cases


def blocked_weight_grad_cases(cell: str, options_list: Sequence[dict]) -> list:
    """Sizes whose input and/or hidden size are whole 32-column blocks, so the CPU backward
    computes those weight gradients on its register kernel (weight_grad_blocked): T * B above
    its 256-step block (later blocks add to the gradient), remainder panels of rows, lengths
    with zeros, reverse, and one block-sized side at a time."""
    cases = []
    for options in options_list:
        cases += [
            Case(cell, 33, 9, 64, 32, lengths=[33, 0, 17, 1, 33, 5, 29, 2, 30], options=options),
            Case(cell, 29, 11, 32, 64, lengths=[1, 29, 28, 0, 3, 29, 14, 9, 29, 7, 21], reverse=True,
                 options=options),
            Case(cell, 7, 3, 32, 17, options=options),
            Case(cell, 7, 3, 13, 32, with_hx=False, with_bias=False, options=options),
        ]
    return cases


def run_case_with_threads(case: Case, backend: str, dtype: torch.dtype, threads: int):
    """run_case with torch (and so the CPU backends) on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run_case(case, backend, dtype)
    finally:
        torch.set_num_threads(previous)
