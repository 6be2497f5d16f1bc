"""gatedrnn.nn.LSTM / GRU / RNN against torch.nn itself, with the same state dict.

Random configurations (layers 1-3, bidirectional, proj_size, batch_first, packed sorted or
unsorted, unbatched, hx given or not, bias or not): outputs, final states and every parameter
and input gradient, in float64 and float32, on each CPU backend this machine has (numpy always,
cython when built) and on triton under its interpreter (in a subprocess, when gatedrnn.kernels
is installed). Plus: the module surface (names, shapes, init, state dicts both ways,
from_torch), dropout, GRU reset_after=False, torch.compile, and bad input.
"""
import importlib.util
import math
import os
import pickle
import random
import sys
import time

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import gatedrnn
import gatedrnn.nn as gnn

from interpreter import INTERPRETING as INTERPRETING_TRITON, outside_interpreter, run_interpreted

HAS_CYTHON = gatedrnn.available_backends()["cython"].available
CPU_BACKENDS = ["numpy"] + (["cython"] if HAS_CYTHON else [])
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _find_kernels() -> bool:
    """Whether the Triton kernels can be imported as ``gatedrnn.kernels``: installed, or in
    this checkout's ``kernels/`` (which only an install maps there; alias it when testing)."""
    if importlib.util.find_spec("gatedrnn.kernels") is not None:
        return True
    if not os.path.exists(os.path.join(ROOT, "kernels", "lstm.py")) or importlib.util.find_spec("triton") is None:
        return False
    if INTERPRETING_TRITON:
        spec = importlib.util.spec_from_file_location(
            "gatedrnn.kernels", os.path.join(ROOT, "kernels", "__init__.py"),
            submodule_search_locations=[os.path.join(ROOT, "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gatedrnn.kernels"] = module
        spec.loader.exec_module(module)
        gatedrnn.kernels = module
    return True


HAS_KERNELS = _find_kernels()

# (our class, torch class, extra constructor keywords) per cell variant.
CELLS = {
    "lstm": (gnn.LSTM, torch.nn.LSTM, {}),
    "lstm_proj": (gnn.LSTM, torch.nn.LSTM, {"proj_size": 3}),
    "gru": (gnn.GRU, torch.nn.GRU, {}),
    "rnn_tanh": (gnn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (gnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}
INPUT_KINDS = ("padded", "packed_unsorted", "packed_sorted", "unbatched")
TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def random_configs(cell, count, seed, max_size=9):
    """``count`` random configurations of ``cell``; every input kind appears."""
    rng = random.Random(f"{cell}-{seed}")
    configs = []
    for index in range(count):
        configs.append(dict(
            cell=cell,
            num_layers=rng.randint(1, 3),
            bidirectional=rng.random() < 0.5,
            batch_first=rng.random() < 0.5,
            bias=rng.random() < 0.75,
            hx_given=rng.random() < 0.5,
            input_kind=INPUT_KINDS[index % len(INPUT_KINDS)],
            input_size=rng.randint(1, max_size),
            hidden_size=rng.randint(4, max_size),  # > proj_size=3
            seq_len=rng.randint(1, 7),
            batch=rng.randint(1, 5),
            seed=rng.randrange(1 << 30),
        ))
    return configs


def config_id(config):
    return (f"{config['cell']}-L{config['num_layers']}{'-bi' if config['bidirectional'] else ''}"
            f"{'-bf' if config['batch_first'] else ''}{'' if config['bias'] else '-nobias'}"
            f"{'-hx' if config['hx_given'] else ''}-{config['input_kind']}"
            f"-I{config['input_size']}H{config['hidden_size']}T{config['seq_len']}B{config['batch']}")


def build_pair(config, dtype, backend):
    """(torch module, our module) with one state dict."""
    ours_cls, torch_cls, extra = CELLS[config["cell"]]
    torch.manual_seed(config["seed"])
    reference = torch_cls(config["input_size"], config["hidden_size"], num_layers=config["num_layers"],
                          bias=config["bias"], batch_first=config["batch_first"],
                          bidirectional=config["bidirectional"], dtype=dtype, **extra)
    ours = ours_cls(config["input_size"], config["hidden_size"], num_layers=config["num_layers"],
                    bias=config["bias"], batch_first=config["batch_first"],
                    bidirectional=config["bidirectional"], dtype=dtype, backend=backend, **extra)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def make_inputs(config, module, dtype):
    """(leaf input, hx leaves or None, a function building the module input from the leaf)."""
    g = torch.Generator().manual_seed(config["seed"] + 1)
    T, B, I = config["seq_len"], config["batch"], config["input_size"]
    kind = config["input_kind"]
    if kind == "unbatched":
        x = torch.randn(T, I, generator=g, dtype=dtype)
    elif config["batch_first"]:
        x = torch.randn(B, T, I, generator=g, dtype=dtype)
    else:
        x = torch.randn(T, B, I, generator=g, dtype=dtype)
    x.requires_grad_()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[torch.randint(0, B, (1,), generator=g)] = T  # the padded length is used
    if kind == "packed_sorted":
        lengths = lengths.sort(descending=True).values

    def as_module_input(leaf):
        if kind.startswith("packed"):
            return pack_padded_sequence(leaf, lengths, batch_first=config["batch_first"],
                                        enforce_sorted=kind == "packed_sorted")
        return leaf

    hx = None
    if config["hx_given"]:
        num_directions = 2 if config["bidirectional"] else 1
        batch_dims = () if kind == "unbatched" else (B,)
        out_size = module.proj_size or module.hidden_size
        h0 = torch.randn(config["num_layers"] * num_directions, *batch_dims, out_size, generator=g, dtype=dtype)
        if isinstance(module, torch.nn.LSTM):
            c0 = torch.randn(config["num_layers"] * num_directions, *batch_dims, module.hidden_size,
                             generator=g, dtype=dtype)
            hx = (h0.requires_grad_(), c0.requires_grad_())
        else:
            hx = h0.requires_grad_()
    return x, hx, as_module_input


def run_and_grad(module, x, hx, as_module_input, seed):
    """Outputs (output tensor, final states) and the gradients of a random linear loss with
    respect to the input, hx and every parameter."""
    output, finals = module(as_module_input(x), hx)
    if isinstance(output, PackedSequence):
        output = output.data
    finals = list(finals) if isinstance(finals, tuple) else [finals]
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in [output, *finals])
    leaves = [x] + ([] if hx is None else (list(hx) if isinstance(hx, tuple) else [hx]))
    params = [p for _, p in module.named_parameters()]
    grads = torch.autograd.grad(loss, leaves + params)
    return [output, *finals], grads


def check_against_torch(config, dtype, backend):
    reference, ours = build_pair(config, dtype, backend)
    x, hx, as_module_input = make_inputs(config, reference, dtype)
    expected, expected_grads = run_and_grad(reference, x, hx, as_module_input, config["seed"] + 2)
    got, got_grads = run_and_grad(ours, x, hx, as_module_input, config["seed"] + 2)
    names = ["output", "h_n", "c_n"]
    for name, a, b in zip(names, got, expected):
        torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=lambda m, n=name: f"{n}: {m}")
    state_names = [] if hx is None else ["h_0", "c_0"][: len(hx) if isinstance(hx, tuple) else 1]
    grad_names = ["input"] + state_names + [n for n, _ in ours.named_parameters()]
    assert len(grad_names) == len(got_grads) == len(expected_grads)
    for name, a, b in zip(grad_names, got_grads, expected_grads):
        torch.testing.assert_close(a, b, **TOLERANCES[dtype], msg=lambda m, n=name: f"grad {n}: {m}")


# Random ones, plus per cell a fixed config with everything on (unsorted pack of 5 sequences).
CONFIGS = [c for cell in CELLS for c in random_configs(cell, 8, seed=0)] + [
    dict(cell=cell, num_layers=2, bidirectional=True, batch_first=True, bias=True, hx_given=True,
         input_kind="packed_unsorted", input_size=5, hidden_size=7, seq_len=8, batch=5, seed=17)
    for cell in CELLS
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_matches_torch_nn(backend, config, dtype):
    check_against_torch(config, dtype, backend)


# --- triton under the interpreter ---------------------------------------------------------------
# Triton chooses the interpreter when the kernels are imported, so these run in a subprocess
# with TRITON_INTERPRET=1 (the outer test below); in that subprocess they run directly.

TRITON_CONFIGS = [c for cell in CELLS for c in random_configs(cell, 2, seed=1, max_size=5)]


@pytest.mark.skipif(not (INTERPRETING_TRITON and HAS_KERNELS), reason="runs inside the TRITON_INTERPRET=1 subprocess")
@pytest.mark.parametrize("config", TRITON_CONFIGS, ids=config_id)
def test_matches_torch_nn_triton_interpreted(config):
    check_against_torch(config, torch.float32, "triton")


@pytest.mark.skipif(not HAS_KERNELS, reason="gatedrnn.kernels (Triton) not installed in this checkout")
@outside_interpreter
def test_triton_interpreter_subprocess():
    run_interpreted(__file__, "triton_interpreted", timeout=600)


# --- the module surface -------------------------------------------------------------------------

SURFACE = [
    ("lstm", dict(num_layers=3, bidirectional=True)),
    ("lstm_proj", dict(num_layers=2, bidirectional=True, bias=False)),
    ("gru", dict(num_layers=2)),
    ("rnn_relu", dict(num_layers=2, bidirectional=True, batch_first=True)),
]


@pytest.mark.parametrize("cell,options", SURFACE, ids=[c for c, _ in SURFACE])
def test_parameters_names_shapes_init_and_state_dicts(cell, options):
    ours_cls, torch_cls, extra = CELLS[cell]
    reference = torch_cls(7, 11, **options, **extra)
    ours = ours_cls(7, 11, **options, **extra)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in reference.named_parameters()]
    assert list(ours.state_dict()) == list(reference.state_dict())
    assert ours._flat_weights_names == reference._flat_weights_names
    assert [[p.shape for p in layer] for layer in ours.all_weights] == \
        [[p.shape for p in layer] for layer in reference.all_weights]
    bound = 1 / math.sqrt(11)
    for name, p in ours.named_parameters():
        assert p.abs().max() <= bound, name
        assert p.abs().max() > 0.5 * bound, name  # U(-b, b), not zeros or a narrower range
    assert repr(ours) == repr(reference)
    # Both ways.
    reference.load_state_dict(ours.state_dict())
    ours.load_state_dict(reference.state_dict())
    for (n, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("cell,options", SURFACE, ids=[c for c, _ in SURFACE])
def test_from_torch_and_to_torch(cell, options):
    ours_cls, torch_cls, extra = CELLS[cell]
    reference = torch_cls(5, 6, dropout=0.25 if options.get("num_layers", 1) > 1 else 0.0,
                          **options, **extra).double().eval()
    converted = ours_cls.from_torch(reference, backend="numpy")
    assert type(converted) is ours_cls and not converted.training and converted.backend == "numpy"
    assert converted.dropout == reference.dropout and converted.weight_ih_l0.dtype == torch.float64
    for (n, a), (_, b) in zip(converted.named_parameters(), reference.named_parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), n
    back = converted.to_torch()
    assert type(back) is torch_cls and repr(back) == repr(reference)
    assert all(torch.equal(a, b) for a, b in zip(back.parameters(), reference.parameters()))
    with pytest.raises(TypeError, match="from_torch expects a torch.nn"):
        ours_cls.from_torch(torch.nn.Linear(2, 2))


def test_repr_shows_our_options_and_module_pickles():
    assert repr(gnn.GRU(3, 4, reset_after=False, backend="numpy")) == \
        "GRU(3, 4, backend='numpy', reset_after=False)"
    assert repr(gnn.RNN(3, 4, 2, "relu")) == repr(torch.nn.RNN(3, 4, 2, "relu"))  # torch omits nonlinearity
    module = gnn.LSTM(3, 4, 2, proj_size=2, backend="numpy").double()
    clone = pickle.loads(pickle.dumps(module))
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(clone(x)[0], module(x)[0], rtol=0, atol=0)


def test_dtype_and_functional_call_follow_the_parameters():
    module = gnn.GRU(3, 4, backend="numpy")
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    module.double()  # Module._apply -> the float64 parameters are what forward reads
    out, _ = module(x)
    assert out.dtype == torch.float64
    zeros = {n: torch.zeros_like(p) for n, p in module.named_parameters()}
    out, h_n = torch.func.functional_call(module, zeros, (x,))
    assert torch.equal(out, torch.zeros_like(out))  # n = tanh(0) = 0, h stays 0


# --- GRU reset_after=False (no torch.nn counterpart): against a step-by-step reference --------

def gru_reset_before_reference(module, x, h0, lengths):
    """Plain-PyTorch loop over time steps (test-only reference), time-major x (T, B, I)."""
    T = x.shape[0]
    num_directions = 2 if module.bidirectional else 1
    layer_input, finals = x, []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(num_directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix)
            b_ih, b_hh = getattr(module, "bias_ih" + suffix), getattr(module, "bias_hh" + suffix)
            h = h0[layer * num_directions + direction]
            out = torch.zeros(T, x.shape[1], module.hidden_size, dtype=x.dtype)
            steps = range(T - 1, -1, -1) if direction else range(T)
            for t in steps:
                gi = layer_input[t] @ w_ih.t() + b_ih
                r = torch.sigmoid(gi[:, :module.hidden_size] + h @ w_hh[:module.hidden_size].t()
                                  + b_hh[:module.hidden_size])
                z = torch.sigmoid(gi[:, module.hidden_size:-module.hidden_size]
                                  + h @ w_hh[module.hidden_size:-module.hidden_size].t()
                                  + b_hh[module.hidden_size:-module.hidden_size])
                n = torch.tanh(gi[:, -module.hidden_size:] + (r * h) @ w_hh[-module.hidden_size:].t()
                               + b_hh[-module.hidden_size:])
                new_h = (1 - z) * n + z * h
                valid = (t < lengths).unsqueeze(1)
                h = torch.where(valid, new_h, h)
                out[t] = torch.where(valid, new_h, torch.zeros_like(new_h))
            outputs.append(out)
            finals.append(h)
        layer_input = torch.cat(outputs, dim=-1)
    return layer_input, torch.stack(finals)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gru_reset_before_stack(backend):
    torch.manual_seed(3)
    module = gnn.GRU(5, 7, num_layers=2, bidirectional=True, reset_after=False, backend=backend).double()
    x = torch.randn(6, 4, 5, dtype=torch.float64)
    lengths = torch.tensor([3, 6, 1, 5])
    h0 = torch.randn(4, 4, 7, dtype=torch.float64)
    packed_out, h_n = module(pack_padded_sequence(x, lengths, enforce_sorted=False), h0)
    expected_out, expected_h = gru_reset_before_reference(module, x, h0, lengths)
    padded, _ = torch.nn.utils.rnn.pad_packed_sequence(packed_out)
    torch.testing.assert_close(padded, expected_out)
    torch.testing.assert_close(h_n, expected_h)


@pytest.mark.skipif(not HAS_CYTHON, reason="cython extensions not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gru_reset_before_cython_matches_numpy(dtype):
    torch.manual_seed(4)
    numpy_module = gnn.GRU(6, 9, num_layers=3, bidirectional=True, batch_first=True, reset_after=False,
                           backend="numpy", dtype=dtype)
    cython_module = gnn.GRU(6, 9, num_layers=3, bidirectional=True, batch_first=True, reset_after=False,
                            backend="cython", dtype=dtype)
    cython_module.load_state_dict(numpy_module.state_dict())
    x = torch.randn(3, 7, 6, dtype=dtype, requires_grad=True)
    results = []
    for module in (numpy_module, cython_module):
        out, h_n = module(pack_padded_sequence(x, torch.tensor([2, 7, 5]), batch_first=True, enforce_sorted=False))
        grads = torch.autograd.grad(out.data.square().sum() + h_n.sum(), [x, *module.parameters()])
        results.append((out.data, h_n, *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **TOLERANCES[dtype])


# --- dropout ------------------------------------------------------------------------------------

def identity_relu_stack(dropout, size=64):
    """A 2-layer relu RNN whose layers pass a positive input straight through (W_ih = I,
    W_hh = 0, no bias), so its output is relu(dropout(x)) = dropout(x)."""
    module = gnn.RNN(size, size, num_layers=2, nonlinearity="relu", bias=False, dropout=dropout,
                     backend="numpy").double()
    with torch.no_grad():
        for layer in range(2):
            getattr(module, f"weight_ih_l{layer}").copy_(torch.eye(size))
            getattr(module, f"weight_hh_l{layer}").zero_()
    return module


@pytest.mark.parametrize("rate", [0.2, 0.5], ids=["p0.2", "p0.5"])
def test_dropout_rate_scaling_reproducibility_and_eval(rate):
    module = identity_relu_stack(rate)
    x = torch.rand(50, 8, 64, dtype=torch.float64) + 0.5
    torch.manual_seed(11)
    out, _ = module(x)
    ratio = out / x
    dropped = ratio == 0
    kept = ~dropped
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 1 / (1 - rate)))
    assert abs(dropped.double().mean().item() - rate) < 0.02  # 25600 draws: sd ~ 0.003
    torch.manual_seed(11)
    assert torch.equal(module(x)[0], out)  # same seed, same mask
    assert not torch.equal(module(x)[0], out)  # the generator moved on
    module.eval()
    torch.testing.assert_close(module(x)[0], x, rtol=0, atol=0)


def test_dropout_is_not_applied_after_the_last_layer():
    module = identity_relu_stack(0.0)
    module.dropout = 0.9
    single = gnn.RNN(64, 64, nonlinearity="relu", bias=False, dropout=0.0, backend="numpy").double()
    with torch.no_grad():
        single.weight_ih_l0.copy_(torch.eye(64))
        single.weight_hh_l0.zero_()
    single.dropout = 0.9
    x = torch.rand(3, 2, 64, dtype=torch.float64) + 0.5
    assert torch.equal(single(x)[0], x)  # one layer: nothing between layers
    assert (module(x)[0] == 0).double().mean() > 0.8


# --- torch.compile ------------------------------------------------------------------------------

class TwoRecurrentLayers(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.lstm = gnn.LSTM(5, 6, num_layers=2, bidirectional=True, batch_first=True, backend=backend)
        self.gru = gnn.GRU(12, 4, backend=backend)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x, hx):
        out, (h, c) = self.lstm(x, hx)
        out2, h2 = self.gru(out.transpose(0, 1))
        return self.head(out2).square().mean() + h.sum() + c.square().sum() + h2.sum()


def compiled_matches_eager(backend, compile_backend):
    torch._dynamo.reset()
    torch.manual_seed(5)
    model = TwoRecurrentLayers(backend).double()
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(4, 3, 6, dtype=torch.float64), torch.randn(4, 3, 6, dtype=torch.float64))
    params = [x, *model.parameters()]
    eager_loss = model(x, hx)
    eager_grads = torch.autograd.grad(eager_loss, params)
    compiled = torch.compile(model, fullgraph=True, backend=compile_backend)
    compiled_loss = compiled(x, hx)
    compiled_grads = torch.autograd.grad(compiled_loss, params)
    torch.testing.assert_close(compiled_loss, eager_loss)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph_aot_eager(backend):
    compiled_matches_eager(backend, "aot_eager")


def test_torch_compile_fullgraph_inductor():
    start = time.perf_counter()
    compiled_matches_eager(CPU_BACKENDS[-1], "inductor")
    assert time.perf_counter() - start < 120  # a regression guard on compile time, not a benchmark


# --- autocast -------------------------------------------------------------------------------------

def check_autocast_like_torch(device, autocast_dtype, backend, tolerance):
    """Under torch.autocast the modules compute as torch's RNNs do: float32 parameters, float32
    or 16-bit input, cast to the autocast dtype where torch's autocast casts that cell on that
    device (on the CPU not GRU, which runs in its input's dtype), in torch's output dtype; the
    Cython backend, without 16-bit kernels, computes in float32 instead. Close to torch's under
    the same autocast; float32 gradients for the float32 parameters."""
    for name, (ours_class, torch_class, extra) in CELLS.items():
        torch.manual_seed(0)
        reference = torch_class(5, 7, num_layers=2, bidirectional=True, **extra).to(device)
        ours = ours_class(5, 7, num_layers=2, bidirectional=True, backend=backend, **extra).to(device)
        ours.load_state_dict(reference.state_dict())
        x = torch.randn(4, 3, 5, device=device)
        for given in (x, x.to(autocast_dtype)):
            with torch.autocast(device, dtype=autocast_dtype):
                (y_ref, finals_ref), (y, finals) = reference(given), ours(given)
            finals_ref = finals_ref if isinstance(finals_ref, tuple) else (finals_ref,)
            finals = finals if isinstance(finals, tuple) else (finals,)
            expected_dtype = torch.float32 if backend == "cython" else y_ref.dtype
            assert y.dtype == expected_dtype and all(f.dtype == expected_dtype for f in finals), (name, y.dtype)
            gru_on_cpu = device == "cpu" and name.startswith("gru")  # torch's lists: see autocast_dtype
            assert y_ref.dtype == (given.dtype if gru_on_cpu else autocast_dtype), (name, y_ref.dtype)
            for a, b in zip((y, *finals), (y_ref, *finals_ref)):
                torch.testing.assert_close(a.float(), b.float(), rtol=tolerance, atol=tolerance)
            grads = torch.autograd.grad(y.float().square().sum(), list(ours.parameters()))
            grads_ref = torch.autograd.grad(y_ref.float().square().sum(), list(reference.parameters()))
            for a, b in zip(grads, grads_ref):
                assert a.dtype == torch.float32
                torch.testing.assert_close(a, b, rtol=5 * tolerance, atol=5 * tolerance)


def test_autocast_like_torch_numpy():
    check_autocast_like_torch("cpu", torch.bfloat16, "numpy", 3e-2)


@pytest.mark.skipif(not HAS_CYTHON, reason="the cython backend is not built")
def test_autocast_cython_computes_in_float32():
    check_autocast_like_torch("cpu", torch.bfloat16, "cython", 3e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_autocast_like_cudnn(dtype):
    check_autocast_like_torch("cuda", dtype, "triton", 3e-2)


# --- bad input: torch.nn's exception types, messages naming what is wrong ----------------------

def torch_error(fn):
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - we want whatever torch raises
        return error
    pytest.fail("torch.nn did not raise")


CONSTRUCTOR_CASES = [
    ("dropout_negative", "lstm", dict(dropout=-0.1), r"dropout.*\[0, 1\].*-0\.1"),
    ("dropout_above_one", "gru", dict(dropout=1.5), r"dropout.*1\.5"),
    ("dropout_str", "rnn_tanh", dict(dropout="0.5"), r"dropout.*'0\.5'"),
    ("bias_not_bool", "lstm", dict(bias="yes"), r"bias should be of type bool, got: str"),
    ("batch_first_not_bool", "gru", dict(batch_first=1), r"batch_first should be of type bool"),
    ("input_size_float", "lstm", dict(input_size=4.0), r"input_size should be of type int, got: float"),
    ("hidden_size_str", "rnn_relu", dict(hidden_size="8"), r"hidden_size should be of type int, got: str"),
    ("input_size_zero", "gru", dict(input_size=0), r"input_size must be greater than zero, got 0"),
    ("hidden_size_negative", "lstm", dict(hidden_size=-3), r"hidden_size must be greater than zero, got -3"),
    ("num_layers_zero", "rnn_tanh", dict(num_layers=0), r"num_layers must be greater than zero, got 0"),
    ("num_layers_float", "lstm", dict(num_layers=2.0), r"num_layers should be of type int, got: float"),
    ("proj_size_negative", "lstm", dict(proj_size=-1), r"proj_size.*got -1"),
    ("proj_size_equal_hidden", "lstm", dict(proj_size=8), r"proj_size has to be smaller than hidden_size.*8 >= .*8"),
    ("proj_size_float", "lstm", dict(proj_size=2.5), r"proj_size should be of type int, got: float"),
    ("proj_size_on_gru", "gru", dict(proj_size=2), r"proj_size argument is only supported for LSTM"),
    ("unknown_nonlinearity", "rnn_tanh", dict(nonlinearity="sigmoid"), r"nonlinearity 'sigmoid'.*'tanh' or 'relu'"),
]


@pytest.mark.parametrize("cell,overrides,pattern", [c[1:] for c in CONSTRUCTOR_CASES],
                         ids=[c[0] for c in CONSTRUCTOR_CASES])
def test_constructor_errors_match_torch(cell, overrides, pattern):
    ours_cls, torch_cls, extra = CELLS[cell]
    kwargs = dict(dict(input_size=4, hidden_size=8, num_layers=2), **extra)
    kwargs.update(overrides)
    expected = torch_error(lambda: torch_cls(**kwargs))
    with pytest.raises(type(expected), match=pattern):
        ours_cls(**kwargs)


@pytest.mark.parametrize("value", ["yes", 2], ids=["str", "int2"])
def test_bidirectional_must_be_a_bool(value):
    with pytest.raises(TypeError, match="bidirectional should be of type bool"):
        gnn.LSTM(3, 4, bidirectional=value)


def test_unknown_backend_and_reset_after_type():
    with pytest.raises(ValueError, match="unknown backend 'cudnn'"):
        gnn.LSTM(3, 4, backend="cudnn")
    with pytest.raises(TypeError, match="reset_after should be of type bool"):
        gnn.GRU(3, 4, reset_after=1)


def _forward_cases():
    """(id, cell, module options, input, hx, message pattern) for forward calls torch rejects."""
    x = torch.randn(5, 3, 4)
    h = torch.randn(2, 3, 6)
    return [
        ("input_4d", "gru", {}, torch.randn(5, 3, 4, 1), None, r"Expected input to be 2D or 3D, got 4D"),
        ("input_size", "lstm", {}, torch.randn(5, 3, 7), None, r"input_size. Expected 4, got 7"),
        ("input_dtype", "rnn_tanh", {}, x.double(), None, r"input dtype \(torch.float64\) does not match weight"),
        ("hx_2d_batched", "gru", {}, x, torch.randn(2, 6), r"batched 3-D input, hx should also be 3-D.*2-D"),
        ("hx_3d_unbatched", "rnn_relu", {}, torch.randn(5, 4), h, r"unbatched 2-D input, hx should also be 2-D"),
        ("hx_layers", "gru", {}, x, torch.randn(3, 3, 6), r"hx \(h_0\).*\(2, 3, 6\), got \(3, 3, 6\)"),
        ("hx_batch_mismatch", "rnn_tanh", {}, x, torch.randn(2, 2, 6), r"\(2, 3, 6\), got \(2, 2, 6\)"),
        ("hx_hidden", "gru", {}, x, torch.randn(2, 3, 5), r"\(2, 3, 6\), got \(2, 3, 5\)"),
        ("unbatched_hx_shape", "gru", {}, torch.randn(5, 4), torch.randn(2, 5), r"= \(2, 6\), got \(2, 5\)"),
        ("lstm_c0_batch", "lstm", {}, x, (h, torch.randn(2, 4, 6)), r"hx\[1\] \(c_0\).*\(2, 3, 6\), got \(2, 4, 6\)"),
        ("lstm_h0_not_projected", "lstm_proj", {}, x, (h, h), r"hx\[0\] \(h_0\).*\(2, 3, 3\), got \(2, 3, 6\)"),
        ("lstm_hx_2d", "lstm", {}, x, (h[0], h[0]), r"hx should also be 3-D but got \(2-D, 2-D\)"),
        ("packed_input_size", "rnn_tanh", {}, PackedSequence(torch.randn(6, 5), torch.tensor([3, 2, 1])), None,
         r"input_size. Expected 4, got 5"),
        ("packed_batch_mismatch", "gru", {},
         pack_padded_sequence(x, torch.tensor([5, 2, 3]), enforce_sorted=False), torch.randn(2, 2, 6),
         r"\(2, 3, 6\), got \(2, 2, 6\)"),
    ]


FORWARD_CASES = _forward_cases()


@pytest.mark.parametrize("case", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_errors_match_torch(case):
    _, cell, options, inp, hx, pattern = case
    ours_cls, torch_cls, extra = CELLS[cell]
    reference = torch_cls(4, 6, num_layers=2, **options, **extra)
    ours = ours_cls.from_torch(reference, backend="numpy")
    expected = torch_error(lambda: reference(inp, hx))
    with pytest.raises(type(expected), match=pattern):
        ours(inp, hx)


def test_lstm_hx_must_be_a_pair():
    module = gnn.LSTM(4, 6, backend="numpy")
    with pytest.raises(TypeError, match=r"hx must be None or a tuple \(h_0, c_0\)"):
        module(torch.randn(5, 3, 4), torch.randn(1, 3, 6))
    with pytest.raises(TypeError, match="input must be a Tensor or a PackedSequence"):
        module([[1.0]])


def test_hx_dtype_must_match_the_input():
    # torch.nn fails inside a matmul ("mat1 and mat2 must have the same dtype"); we name hx.
    module = gnn.GRU(4, 6, backend="numpy")
    with pytest.raises(ValueError, match=r"hx \(h_0\) dtype \(torch.float64\) does not match the input dtype"):
        module(torch.randn(5, 3, 4), torch.randn(1, 3, 6, dtype=torch.float64))


@pytest.mark.parametrize("proj_size", [0, 2], ids=["plain", "proj"])
def test_empty_batch_matches_torch_and_empty_sequence_keeps_hx(proj_size):
    reference = torch.nn.LSTM(3, 4, 2, bidirectional=True, proj_size=proj_size).double()
    ours = gnn.LSTM.from_torch(reference, backend="numpy")
    no_batch = torch.randn(5, 0, 3, dtype=torch.float64)
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(no_batch)),
                    torch.utils._pytree.tree_leaves(reference(no_batch))):
        assert a.shape == b.shape
    # torch.nn rejects T = 0; the functional ops define it: every sequence keeps its hx.
    h0 = torch.randn(4, 2, proj_size or 4, dtype=torch.float64)
    c0 = torch.randn(4, 2, 4, dtype=torch.float64)
    output, (h_n, c_n) = ours(torch.randn(0, 2, 3, dtype=torch.float64), (h0, c0))
    assert output.shape == (0, 2, 2 * (proj_size or 4))
    assert torch.equal(h_n, h0) and torch.equal(c_n, c0)


def test_torch_compile_packed_input_matches_eager():
    # pack_padded_sequence itself is not traceable (dynamo skips it), so a packed model compiles
    # with graph breaks; it must still give eager's results.
    torch._dynamo.reset()
    torch.manual_seed(6)
    module = gnn.GRU(3, 4, num_layers=2, bidirectional=True, backend="numpy").double()
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def loss(inp):
        out, h_n = module(pack_padded_sequence(inp, lengths, enforce_sorted=False))
        return out.data.square().sum() + h_n.sum()

    eager = torch.autograd.grad(loss(x), [x, *module.parameters()])
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager")(x), [x, *module.parameters()])
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
