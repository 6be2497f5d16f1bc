"""embedding: the oracle against torch.nn.functional (float64), every CPU backend against the
oracle (also with scale_grad_by_freq), deterministic accumulation, out-of-range indices, the
custom ops' registration, and the Embedding module against torch.nn (max_norm,
scale_grad_by_freq, sparse gradients and an optimiser step on them).

Triton backend: the kernels under TRITON_INTERPRET=1 (float32, CPU tensors; in a fresh
subprocess, ``test_triton_interpreter_subprocess``, ~10 s on 2 cores) against the oracle with
repeated indices, padding_idx, unreferenced rows, odd sizes; bitwise determinism; launch
configurations in ``gate_configs``. ``gpu`` cases: realistic sizes in float32/bfloat16/float16
against torch in float64, and the sequence models' CUDA lookup going through gatedrnn.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import oracle
from gatedrnn.nn.sparse import Embedding
from gatedrnn.ops import embedding as embedding_ops
from gatedrnn.ops.embedding import embedding

from interpreter import INTERPRETING, outside_interpreter, run_interpreted
from spatial_checks import (assert_close, check_eager_autograd, cpu_backends, needs_cython, ops_dispatched,
                            relative_error, rounded)

BACKENDS = cpu_backends("embedding")

# (index shape, num_embeddings, embedding_dim, padding_idx)
CASES = {
    "matrix": ((4, 7), 11, 5, None),
    "padding": ((3, 9), 6, 13, 2),
    "negative-padding": ((20,), 5, 3, -1),
    "wide-rows": ((2, 3, 4), 9, 150, 0),  # 150 columns: three column blocks of the Cython kernel
    "scalar-index": ((), 4, 6, None),
    "one-row": ((5,), 1, 7, None),
}


def draw(case, seed=0):
    shape, rows, dim, padding_idx = case
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, rows, size=shape)
    if indices.size:
        indices.reshape(-1)[0] = (padding_idx or 0) % rows  # make sure the padding row appears
    return indices, rng.standard_normal((rows, dim)), padding_idx


@pytest.mark.parametrize("scale", [False, True], ids=["sum", "scale-by-freq"])
@pytest.mark.parametrize("name", list(CASES))
def test_oracle_matches_torch(name, scale):
    indices, weight, padding_idx = draw(CASES[name])
    weight_t = torch.tensor(weight, requires_grad=True)
    y = F.embedding(torch.tensor(indices), weight_t, padding_idx=padding_idx, scale_grad_by_freq=scale)
    grad_y = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad_y)
    assert_close({"y": (y, oracle.embedding_forward(indices, weight)),
                  "grad_weight": (weight_t.grad, oracle.embedding_backward(grad_y.numpy(), indices, weight.shape[0],
                                                                           padding_idx, scale))}, torch.float64)


@pytest.mark.parametrize("scale", [False, True], ids=["sum", "scale-by-freq"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_oracle(backend, dtype, index_dtype, name, scale):
    indices, weight, padding_idx = draw(CASES[name])
    weight = rounded(weight, dtype)
    weight_t = torch.tensor(weight, dtype=dtype, requires_grad=True)
    y = embedding(torch.tensor(indices, dtype=index_dtype), weight_t, padding_idx, scale_grad_by_freq=scale,
                  backend=backend)
    assert y.dtype == dtype and y.shape == indices.shape + (weight.shape[1],)
    grad_y = rounded(np.random.default_rng(1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype))
    expected_grad = oracle.embedding_backward(grad_y, indices, weight.shape[0], padding_idx, scale)
    assert_close({"y": (y, oracle.embedding_forward(indices, weight)), "grad_weight": (weight_t.grad, expected_grad)},
                 dtype)
    if padding_idx is not None:
        assert torch.count_nonzero(weight_t.grad[padding_idx]) == 0


@needs_cython("embedding")
@pytest.mark.parametrize("scale", [False, True], ids=["sum", "scale-by-freq"])
def test_cython_backward_is_deterministic_across_threads(scale):
    rng = np.random.default_rng(0)
    indices = torch.tensor(rng.integers(0, 3, size=5000))  # many repeats of few rows
    weight = torch.randn(3, 200, requires_grad=True)
    grad_y = torch.randn(5000, 200)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            weight.grad = None
            embedding(indices, weight, scale_grad_by_freq=scale, backend="cython").backward(grad_y)
            results.append(weight.grad.clone())
    finally:
        torch.set_num_threads(previous)
    for result in results[1:]:
        torch.testing.assert_close(result, results[0], rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_noncontiguous(backend):
    weight = torch.randn(5, 4, requires_grad=True)
    y = embedding(torch.zeros(0, 3, dtype=torch.int64), weight, backend=backend)
    assert y.shape == (0, 3, 4)
    y.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0
    indices = torch.tensor([[1, 2, 3], [4, 0, 1]]).t()  # not contiguous
    torch.testing.assert_close(embedding(indices, weight, backend=backend), F.embedding(indices, weight))
    columns = torch.randn(4, 5).t()  # (5, 4) weight, not contiguous
    torch.testing.assert_close(embedding(indices, columns, backend=backend), F.embedding(indices, columns))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck(backend):
    weight = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    indices = torch.tensor([0, 3, 3, 6, 1])
    for padding_idx, scale in ((3, False), (-1, False), (3, True)):
        torch.library.opcheck(torch.ops.gatedrnn.embedding.default,
                              (weight, indices, padding_idx, scale, False, backend))
        torch.library.opcheck(torch.ops.gatedrnn.embedding_backward.default,
                              (torch.randn(5, 5, dtype=torch.float64), indices, 7, padding_idx, scale, backend))
    torch.library.opcheck(torch.ops.gatedrnn.embedding_renorm.default, (weight.detach().clone(), indices, 1.0, 2.0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [7, -1, 100])
def test_out_of_range_indices_are_an_error(backend, bad):
    weight = torch.randn(7, 3)
    with pytest.raises(IndexError, match=r"input indices must lie in \[0, num_embeddings\) = \[0, 7\)"):
        embedding(torch.tensor([0, bad, 2]), weight, backend=backend)


def check_indices_checked_when_compiled_and_called_directly(backend):
    """A compiled graph skips the functional API's data-dependent checks and a direct call of the
    op skips the API: the op's body checks the indices itself (the Triton kernels trust it)."""
    torch._dynamo.reset()
    weight = torch.arange(12.0).reshape(4, 3)
    compiled = torch.compile(lambda i, w: embedding(i, w, backend=backend), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(torch.tensor([3, 1]), weight), weight[[3, 1]])
    for bad in ([7, 1], [-1, 1], [4, 1]):
        with pytest.raises(IndexError, match=r"input indices must lie in \[0, num_embeddings\) = \[0, 4\)"):
            compiled(torch.tensor(bad), weight)
    with pytest.raises(IndexError, match=r"got values in \[0, 9\]"):
        torch.ops.gatedrnn.embedding.default(weight, torch.tensor([0, 9]), -1, False, False, backend)
    # the backward reads grad_output's row of every occurrence: its rows must match the indices
    with pytest.raises(ValueError, match=r"grad_output must be \(N, D\) for indices \(N,\), got \(2, 3\) and \(3,\)"):
        torch.ops.gatedrnn.embedding_backward.default(torch.randn(2, 3), torch.tensor([0, 1, 2]), 4, -1, False,
                                                      backend)
    with pytest.raises(ValueError, match="padding_idx in"):
        torch.ops.gatedrnn.embedding_backward.default(torch.randn(3, 3), torch.tensor([0, 1, 2]), 4, 7, False,
                                                      backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_checked_when_compiled_and_called_directly(backend):
    check_indices_checked_when_compiled_and_called_directly(backend)


@needs_cython("embedding")
def test_cython_kernel_checks_indices_itself():
    extension = embedding_ops.cpu_module("embedding")
    weight = np.zeros((4, 3), np.float32)
    output = np.zeros((2, 3), np.float32)
    with pytest.raises(IndexError, match=r"index 4 at position 1 is outside \[0, 4\)"):
        extension.embedding_forward(weight, np.array([0, 4], np.int64), output, 1)
    with pytest.raises(IndexError, match="outside"):
        extension.embedding_backward(output, np.array([-1, 0], np.int64), -1, False, weight, 1)


@pytest.mark.parametrize(
    "arguments, error, message",
    [
        (dict(input=torch.tensor([0.0, 1.0])), TypeError, "input must hold indices as int64 or int32"),
        (dict(weight=torch.ones(5, 3, dtype=torch.int64)), TypeError, "weight must be a floating-point tensor"),
        (dict(weight=torch.randn(5)), ValueError, r"weight must be 2-D \(num_embeddings, embedding_dim\)"),
        (dict(padding_idx=5), ValueError, r"padding_idx must lie in \[-num_embeddings, num_embeddings\) = \[-5, 5\)"),
        (dict(padding_idx=-6), ValueError, "padding_idx must lie in"),
        (dict(padding_idx=1.0), TypeError, "padding_idx must be an int or None"),
        (dict(input=[0, 1]), TypeError, "input must be a torch.Tensor"),
        (dict(scale_grad_by_freq=1), TypeError, "scale_grad_by_freq must be a bool, got 1"),
        (dict(sparse="yes"), TypeError, "sparse must be a bool, got 'yes'"),
        (dict(max_norm="1"), TypeError, "max_norm must be a real number, got '1'"),
        (dict(max_norm=float("nan")), TypeError, "max_norm must be a real number"),
        (dict(max_norm=True), TypeError, "max_norm must be a real number, got True"),
        (dict(max_norm=-1.0), ValueError, "max_norm must be >= 0, got -1.0"),
        (dict(max_norm=1.0, norm_type=None), TypeError, "norm_type must be a real number, got None"),
        (dict(max_norm=1.0, input=torch.tensor([0, -1])), IndexError, r"got values in \[-1, 0\]"),
    ],
)
def test_bad_input_names_the_argument(arguments, error, message):
    call = dict(input=torch.tensor([0, 1]), weight=torch.randn(5, 3), backend="numpy")
    call.update(arguments)
    with pytest.raises(error, match=message):
        embedding(**call)


def test_triton_slot_is_wired():
    pytest.importorskip("triton")
    forward, backward = embedding_ops._implementations("triton")
    assert (forward.__module__.endswith("kernels.embedding") and backward.__name__ == "embedding_backward")


# --- module ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_module_matches_torch(backend):
    torch.manual_seed(0)
    ours = Embedding(10, 6, padding_idx=3, backend=backend)
    torch.manual_seed(0)
    reference = torch.nn.Embedding(10, 6, padding_idx=3)
    torch.testing.assert_close(ours.weight, reference.weight, rtol=0, atol=0)  # same init, padding row zero
    assert list(ours.state_dict()) == ["weight"]
    reference.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    indices = torch.tensor([[1, 3, 3], [9, 0, 1]])
    y, y_ref = ours(indices), reference(indices)
    torch.testing.assert_close(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    assert isinstance(ours, torch.nn.Embedding) and f"backend='{backend}'" in repr(ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_max_norm_and_from_pretrained(backend):
    weights = torch.randn(6, 4) * 3
    ours = Embedding.from_pretrained(weights.clone(), max_norm=1.0, backend=backend)
    reference = torch.nn.Embedding.from_pretrained(weights.clone(), max_norm=1.0)
    indices = torch.tensor([0, 2, 2, 5])
    torch.testing.assert_close(ours(indices), reference(indices))
    torch.testing.assert_close(ours.weight, reference.weight)  # the same rows renormalised in place
    assert not ours.weight.requires_grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("options", [dict(scale_grad_by_freq=True), dict(sparse=True),
                                     dict(max_norm=1.5, norm_type=1.0), dict(max_norm=0.5, scale_grad_by_freq=True),
                                     dict(max_norm=2.0, sparse=True)],
                         ids=["scale-by-freq", "sparse", "max-norm-L1", "max-norm-scale", "max-norm-sparse"])
def test_module_options_match_torch(backend, options):
    """scale_grad_by_freq, sparse and max_norm: outputs, the renormalised weight and the
    gradient (sparse: the same layout and entries) as torch.nn.Embedding's, then one optimiser
    step (SparseAdam for sparse) leaves both weights equal."""
    torch.manual_seed(0)
    ours = Embedding(13, 6, padding_idx=4, backend=backend, **options).double()
    reference = torch.nn.Embedding(13, 6, padding_idx=4, **options).double()
    with torch.no_grad():
        ours.weight.mul_(2.0)
    reference.load_state_dict(ours.state_dict())
    indices = torch.tensor([[1, 4, 4, 12], [4, 7, 1, 1], [0, 1, 11, 7]])
    optimizers = [(torch.optim.SparseAdam if options.get("sparse") else torch.optim.Adam)(m.parameters(), lr=0.1)
                  for m in (ours, reference)]
    grad_y = torch.randn(3, 4, 6, dtype=torch.float64)
    outputs = [m(indices) for m in (ours, reference)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    torch.testing.assert_close(ours.weight, reference.weight, rtol=0, atol=0)  # max_norm: renormalised alike
    for output in outputs:
        output.backward(grad_y)
    ours_grad, reference_grad = ours.weight.grad, reference.weight.grad
    assert ours_grad.layout == reference_grad.layout
    if options.get("sparse"):
        assert torch.equal(ours_grad._indices(), reference_grad._indices())  # uncoalesced, padding left out
        torch.testing.assert_close(ours_grad._values(), reference_grad._values(), rtol=0, atol=0)
        assert not (ours_grad._indices() == 4).any()
    else:
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-12, atol=1e-12)
        if options.get("scale_grad_by_freq"):  # row 1, looked up four times: its mean, not its sum
            torch.testing.assert_close(ours_grad[1], grad_y.reshape(-1, 6)[indices.reshape(-1) == 1].mean(0))
    for optimizer in optimizers:
        optimizer.step()
    torch.testing.assert_close(ours.weight, reference.weight, rtol=1e-12, atol=1e-12)
    assert f"backend='{backend}'" in repr(ours)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_norm_renormalises_in_place_as_torch(backend):
    """The functional max_norm: only the looked-up rows whose norm exceeds it change, exactly as
    F.embedding changes them; the gradient is the plain lookup's; a bad index changes nothing."""
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(9, 5, generator=generator, dtype=torch.float64) * 2
    ours, reference = weight.clone().requires_grad_(), weight.clone().requires_grad_()
    indices = torch.tensor([[0, 3], [3, 8]], dtype=torch.int32)
    for norm_type in (2.0, 3.5):
        y = embedding(indices, ours, max_norm=1.25, norm_type=norm_type, backend=backend)
        y_ref = F.embedding(indices, reference, max_norm=1.25, norm_type=norm_type)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)
        y.sum().backward()
        y_ref.sum().backward()
        torch.testing.assert_close(ours.grad, reference.grad, rtol=0, atol=0)
    untouched = torch.tensor([1, 2, 4, 5, 6, 7])
    torch.testing.assert_close(ours.detach()[untouched], weight[untouched], rtol=0, atol=0)
    assert not torch.equal(ours.detach()[[0, 3, 8]], weight[[0, 3, 8]])
    before = ours.detach().clone()
    with pytest.raises(IndexError, match=r"\[0, 9\)"):
        embedding(torch.tensor([8, -1]), ours, max_norm=0.1, backend=backend)
    assert torch.equal(ours.detach(), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_and_max_norm_compile(backend):
    """torch.compile(fullgraph=True) traces sparse=True (its backward builds the COO gradient)
    and max_norm (the renormalisation is a mutating custom op, checked inside the graph too)."""
    torch._dynamo.reset()
    weight = (torch.randn(6, 4, dtype=torch.float64) * 3).requires_grad_()
    reference = weight.detach().clone().requires_grad_()
    compiled = torch.compile(lambda i, w: embedding(i, w, 2, max_norm=1.0, sparse=True, backend=backend),
                             fullgraph=True, backend="aot_eager")
    indices = torch.tensor([1, 2, 5, 1])
    compiled(indices, weight).sum().backward()
    F.embedding(indices, reference, 2, max_norm=1.0, sparse=True).sum().backward()
    torch.testing.assert_close(weight, reference, rtol=0, atol=0)
    assert weight.grad.layout == torch.sparse_coo
    torch.testing.assert_close(weight.grad.to_dense(), reference.grad.to_dense(), rtol=0, atol=0)
    with pytest.raises(IndexError, match=r"got values in \[-1, 1\]"):
        compiled(torch.tensor([1, -1]), weight)


def test_scale_and_sparse_refused_in_the_backward():
    """torch refuses scale_grad_by_freq with sparse only in the backward: the lookup itself runs
    (an evaluation loop outside no_grad), its backward raises."""
    weight = torch.randn(5, 3, requires_grad=True)
    output = embedding(torch.tensor([4, 0]), weight, scale_grad_by_freq=True, sparse=True)
    torch.testing.assert_close(output, weight.detach()[[4, 0]])
    with pytest.raises(RuntimeError, match=r"scale_grad_by_freq=True has no sparse gradient \(sparse=True\)"):
        output.sum().backward()


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_norm_values_torch_accepts(backend):
    """norm_type=inf (the largest magnitude), negative p, and one-element tensors as max_norm
    and norm_type, as F.embedding takes them."""
    for max_norm, norm_type in ((1.0, float("inf")), (0.5, -1.0), (torch.tensor(1.5), torch.tensor(3.0)),
                                (float("inf"), 2.0)):
        weight = torch.randn(6, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
        ours, reference = weight.clone(), weight.clone()
        indices = torch.tensor([5, 0, 5, 2])
        torch.testing.assert_close(embedding(indices, ours, max_norm=max_norm, norm_type=norm_type, backend=backend),
                                   F.embedding(indices, reference, max_norm=max_norm, norm_type=norm_type),
                                   rtol=0, atol=0)
        torch.testing.assert_close(ours, reference, rtol=0, atol=0)


# --- triton backend -------------------------------------------------------------------------------

in_interpreter = pytest.mark.skipif(
    not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 subprocess (test_triton_interpreter_subprocess)")
TRITON_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRITON_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}

# (index shape, num_embeddings, embedding_dim, padding_idx): repeats, unreferenced rows (V > N),
# odd widths on both sides of the column buckets (16, 64, 256) and of the 8-element alignment.
TRITON_CASES = dict(CASES, **{
    "odd-batch-47": ((47,), 33, 24, 3),              # aligned row width, many repeats
    "unreferenced-rows": ((5, 3), 300, 33, None),    # most rows never looked up: gradient 0
    "few-rows-many-repeats": ((9, 13), 3, 70, 1),    # 117 lookups of 3 rows, 2 column blocks
    "wide-odd": ((7,), 20, 301, -3),                 # two 256-column blocks, the second partial
    "one-column": ((11,), 6, 1, 0),
})


def embedding_kernels():
    import gatedrnn.kernels.embedding as module  # imports triton: only inside triton tests
    return module


def _gate_listing(module, capability):
    keys = set()
    for entry in module.gate_configs(capability):
        pointer_types = {t for name, t in entry["signature"].items()
                         if name.endswith("_ptr") and t != "*i64" and name != "partials_ptr"}  # always fp32
        assert len(pointer_types) == 1, entry
        keys.add((entry["kernel"], tuple(sorted(entry["constexprs"].items())), entry["num_warps"],
                  entry["num_stages"], pointer_types.pop()[1:]))
    return keys


def _gate_key(module, kernel, D, dtype):
    config = module.launch_config(kernel, D, dtype)
    return (kernel, tuple(sorted(config["constexprs"].items())), config["num_warps"], config["num_stages"],
            module.TRITON_TYPES[dtype])


@pytest.fixture
def recorded_launches(monkeypatch):
    """Every launch configuration picked during the test; each must be in gate_configs(80/90)."""
    module = embedding_kernels()
    picks = []
    choose = module.launch_config

    def recording(kernel, D, dtype):
        picks.append((kernel, D, dtype))
        return choose(kernel, D, dtype)

    monkeypatch.setattr(module, "launch_config", recording)
    yield picks
    assert picks, "no triton launch recorded"
    monkeypatch.setattr(module, "launch_config", choose)
    for capability in (80, 90):
        listing = _gate_listing(module, capability)
        missing = {pick for pick in picks if _gate_key(module, *pick) not in listing}
        assert not missing, f"launches not in gate_configs({capability}): {missing}"


def check_triton_embedding(case, dtype, device, seed=0, indices=None, scale=False):
    """``case`` drawn (or its weight only, with these ``indices``) on the Triton backend, forward
    and weight gradient (``scale``: scale_grad_by_freq) against a float64 reference."""
    drawn, weight, padding_idx = draw(case, seed)
    indices = drawn if indices is None else indices
    weight_t = torch.tensor(weight, dtype=dtype, device=device, requires_grad=True)
    indices_t = torch.tensor(indices, device=device)
    y = embedding(indices_t, weight_t, padding_idx, scale_grad_by_freq=scale, backend="triton")
    assert y.dtype == dtype and y.shape == indices.shape + (weight.shape[1],)
    grad_y = torch.tensor(np.random.default_rng(seed + 1).standard_normal(tuple(y.shape)), dtype=dtype, device=device)
    y.backward(grad_y)
    # Reference in float64 on what the kernel saw (the rounded weight and gradient).
    expected = weight_t.detach().double()[indices_t]
    expected_grad = torch.zeros(weight.shape, dtype=torch.float64, device=device)
    expected_grad.index_add_(0, indices_t.reshape(-1), grad_y.double().reshape(-1, weight.shape[1]))
    if scale:
        counts = torch.bincount(indices_t.reshape(-1), minlength=weight.shape[0]).clamp(min=1)
        expected_grad /= counts[:, None]
    if padding_idx is not None:
        expected_grad[padding_idx] = 0
        assert torch.count_nonzero(weight_t.grad[padding_idx]) == 0
    assert torch.equal(y, weight_t.detach()[indices_t])  # a copy: exact in every dtype
    for name, actual, reference in (("y", y, expected), ("grad_weight", weight_t.grad, expected_grad)):
        error = relative_error(actual, reference.cpu().numpy())
        assert error <= TRITON_TOLERANCE[dtype], f"{name}: relative error {error:.3e}"
    unreferenced = torch.ones(weight.shape[0], dtype=torch.bool, device=device)
    unreferenced[indices_t.reshape(-1)] = False
    assert torch.count_nonzero(weight_t.grad[unreferenced]) == 0


def check_triton_deterministic(rows, dim, lookups, dtype, device):
    """Many repeats of few rows: two backward runs are bitwise equal."""
    generator = torch.Generator().manual_seed(0)
    indices = torch.randint(0, rows, (lookups,), generator=generator).to(device)
    weight = torch.randn(rows, dim, generator=generator).to(device, dtype).requires_grad_()
    grad_y = torch.randn(lookups, dim, generator=generator).to(device, dtype)
    grads = [torch.autograd.grad(embedding(indices, weight, backend="triton"), weight, grad_y)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


@in_interpreter
@pytest.mark.parametrize("name", list(TRITON_CASES))
def test_triton_interpreter_matches_oracle(name, recorded_launches):
    check_triton_embedding(TRITON_CASES[name], torch.float32, "cpu")


@in_interpreter
@pytest.mark.parametrize("name", ["padding", "few-rows-many-repeats", "unreferenced-rows"])
def test_triton_interpreter_scale_grad_by_freq(name, recorded_launches):
    check_triton_embedding(TRITON_CASES[name], torch.float32, "cpu", scale=True)


@in_interpreter
def test_triton_interpreter_against_oracle_int32_indices(recorded_launches):
    indices, weight, padding_idx = draw(TRITON_CASES["odd-batch-47"], seed=5)
    weight_t = torch.tensor(weight, dtype=torch.float32, requires_grad=True)
    y = embedding(torch.tensor(indices, dtype=torch.int32), weight_t, padding_idx, backend="triton")
    grad_y = np.random.default_rng(6).standard_normal(tuple(y.shape)).astype(np.float32)
    y.backward(torch.tensor(grad_y))
    assert_close({"y": (y, oracle.embedding_forward(indices, weight.astype(np.float32))),
                  "grad_weight": (weight_t.grad, oracle.embedding_backward(grad_y, indices, weight.shape[0],
                                                                           padding_idx))}, torch.float32)


@in_interpreter
def test_triton_interpreter_indices_checked_when_compiled_and_called_directly(recorded_launches):
    check_indices_checked_when_compiled_and_called_directly("triton")


@in_interpreter
def test_triton_interpreter_deterministic(recorded_launches):
    check_triton_deterministic(3, 37, 301, torch.float32, "cpu")


# Lookups drawn so that, with pieces of 7 occurrences, rows have 0, 1, 7 (one whole piece), 8
# (a piece and one), 14, 15 and 60 (nine pieces) occurrences, and the padding row 20 (its
# pieces summed to nothing).
SPLIT_COUNTS = {0: 60, 1: 1, 2: 7, 3: 8, 5: 14, 6: 15, 8: 20}


def _split_indices(seed=0):
    indices = np.concatenate([np.full(count, row) for row, count in SPLIT_COUNTS.items()])
    return np.random.default_rng(seed).permutation(indices).reshape(5, -1)


@in_interpreter
@pytest.mark.parametrize("dim", [3, 24, 70], ids=["D3", "D24-aligned", "D70-two-blocks"])
def test_triton_interpreter_frequent_rows_in_pieces(dim, monkeypatch, recorded_launches):
    """With PIECE lowered to 7, rows of several pieces go through the extra programs and the
    combine kernel: gradients match the float64 reference, the padding row and unreferenced
    rows get 0, and two runs are bitwise equal."""
    module = embedding_kernels()
    monkeypatch.setattr(module, "PIECE", 7)
    launched = []
    combine = module.embedding_backward_combine_kernel
    monkeypatch.setattr(module, "embedding_backward_combine_kernel", _Recording(combine, launched))
    indices = _split_indices()
    for scale in (False, True):  # scale_grad_by_freq: the combine kernel divides whole sums
        check_triton_embedding((indices.shape, 11, dim, 8), torch.float32, "cpu", indices=indices, scale=scale)
    assert launched, "the combine kernel never ran"
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(11, dim, generator=generator).requires_grad_()
    grad_y = torch.randn(indices.shape + (dim,), generator=generator)
    index_tensor = torch.tensor(indices)
    grads = [torch.autograd.grad(embedding(index_tensor, weight, 8, backend="triton"), weight, grad_y)[0]
             for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


@in_interpreter
def test_triton_interpreter_default_piece(recorded_launches):
    """Past PIECE (1024) lookups the default cut applies: 1300 lookups, most of them one row."""
    module = embedding_kernels()
    rng = np.random.default_rng(5)
    indices = np.where(rng.random(1300) < 0.9, 2, rng.integers(0, 6, 1300)).reshape(13, 100)
    assert np.count_nonzero(indices == 2) > module.PIECE
    check_triton_embedding((indices.shape, 6, 5, None), torch.float32, "cpu", indices=indices)


class _Recording:
    """A kernel stand-in that records its launches (kernel[grid](...)) and runs the kernel."""

    def __init__(self, kernel, launched):
        self.kernel, self.launched, self.__name__ = kernel, launched, kernel.__name__

    def __getitem__(self, grid):
        self.launched.append(grid)
        return self.kernel[grid]


@outside_interpreter
def test_triton_interpreter_subprocess():
    run_interpreted(__file__, "triton_interpreter and not subprocess", timeout=600)


@pytest.mark.parametrize("dtype", list(TRITON_DTYPES.values()), ids=list(TRITON_DTYPES))
def test_triton_launch_configs_are_in_gate_configs(dtype):
    """For widths 1..5000 (every bucket, aligned or not) the launchers' configuration of both
    kernels is listed by gate_configs for both targets; signatures name every argument."""
    pytest.importorskip("triton")
    module = embedding_kernels()
    for capability in (80, 90):
        listing = _gate_listing(module, capability)
        for fn in module.KERNELS:
            for D in list(range(1, 600)) + [767, 768, 1000, 1024, 4096, 4099, 5000]:
                assert _gate_key(module, fn.__name__, D, dtype) in listing, (fn.__name__, D)
        for entry in module.gate_configs(capability):
            fn = getattr(module, entry["kernel"])
            assert list(entry["signature"]) == list(fn.arg_names)
            assert {n for n, t in entry["signature"].items() if t == "constexpr"} == set(entry["constexprs"])
        assert len(listing) <= 48  # the compile gate builds each, twice, on 2 cores


# --- triton on a GPU --------------------------------------------------------------------------------

GPU_CASES = {
    "words-50k-x512": ((32, 257), 50021, 512, 0),
    "chars-97-x200": ((64, 255), 97, 200, None),    # few rows, hundreds of repeats each
    "narrow-1000-x13": ((4099,), 1000, 13, 7),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TRITON_DTYPES.values()), ids=list(TRITON_DTYPES))
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_triton_gpu_matches_reference(name, dtype):
    check_triton_embedding(GPU_CASES[name], dtype, "cuda")
    check_triton_embedding(GPU_CASES[name], dtype, "cuda", seed=1, scale=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TRITON_DTYPES.values()), ids=list(TRITON_DTYPES))
def test_triton_gpu_deterministic(dtype):
    check_triton_deterministic(5, 300, 100003, dtype, "cuda")


@pytest.mark.gpu
def test_sequence_model_looks_up_with_gatedrnn_on_cuda(monkeypatch):
    """The sequence models' CUDA embedding goes through gatedrnn.embedding (no F.embedding
    fallback), with gradients."""
    from gatedrnn.models.sequence import CharLanguageModel

    model = CharLanguageModel(vocab_size=37, hidden_size=32).cuda()
    tokens = torch.randint(0, 37, (5, 19), device="cuda")

    def refuse(*args, **kwargs):
        raise AssertionError("F.embedding called")

    monkeypatch.setattr(F, "embedding", refuse)  # torch.nn.functional, where the old fallback called it
    embedded = model.embed(tokens)
    torch.testing.assert_close(embedded, model.embedding.weight[tokens], rtol=0, atol=0)
    embedded.square().sum().backward()
    assert model.embedding.weight.grad is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_eager_inference_skips_the_custom_op(backend):
    """A lookup that autograd does not record (no_grad, a module's parameter) runs the op's body
    directly; one it records runs it in the autograd.Function built from the op's autograd
    registration, bitwise as through gatedrnn::embedding."""
    table = Embedding(11, 5, padding_idx=2, backend=backend).double()
    indices = torch.tensor([[1, 2, 10], [0, 2, 7]])
    expected = F.embedding(indices, table.weight.detach(), padding_idx=2)
    with torch.no_grad():
        assert ops_dispatched(lambda: table(indices)) == []
        torch.testing.assert_close(table(indices), expected, rtol=0, atol=0)
    check_eager_autograd(lambda: table(indices), [table.weight], "embedding")
