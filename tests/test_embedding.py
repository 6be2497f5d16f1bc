"""embedding: the oracle against torch.nn.functional (float64), every CPU backend against the
oracle, deterministic accumulation, out-of-range indices, the custom ops' registration, and
the Embedding module against torch.nn."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedrnn import oracle
from gatedrnn.nn.sparse import Embedding
from gatedrnn.ops import embedding as embedding_ops
from gatedrnn.ops.embedding import embedding

from spatial_checks import assert_close, cpu_backends, needs_cython, rounded

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


@pytest.mark.parametrize("name", list(CASES))
def test_oracle_matches_torch(name):
    indices, weight, padding_idx = draw(CASES[name])
    weight_t = torch.tensor(weight, requires_grad=True)
    y = F.embedding(torch.tensor(indices), weight_t, padding_idx=padding_idx)
    grad_y = torch.randn(y.shape, dtype=torch.float64)
    y.backward(grad_y)
    assert_close({"y": (y, oracle.embedding_forward(indices, weight)),
                  "grad_weight": (weight_t.grad, oracle.embedding_backward(grad_y.numpy(), indices, weight.shape[0],
                                                                           padding_idx))}, torch.float64)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_backend_matches_oracle(backend, dtype, index_dtype, name):
    indices, weight, padding_idx = draw(CASES[name])
    weight = rounded(weight, dtype)
    weight_t = torch.tensor(weight, dtype=dtype, requires_grad=True)
    y = embedding(torch.tensor(indices, dtype=index_dtype), weight_t, padding_idx, backend=backend)
    assert y.dtype == dtype and y.shape == indices.shape + (weight.shape[1],)
    grad_y = rounded(np.random.default_rng(1).standard_normal(tuple(y.shape)), dtype)
    y.backward(torch.tensor(grad_y, dtype=dtype))
    expected_grad = oracle.embedding_backward(grad_y, indices, weight.shape[0], padding_idx)
    assert_close({"y": (y, oracle.embedding_forward(indices, weight)), "grad_weight": (weight_t.grad, expected_grad)},
                 dtype)
    if padding_idx is not None:
        assert torch.count_nonzero(weight_t.grad[padding_idx]) == 0


@needs_cython("embedding")
def test_cython_backward_is_deterministic_across_threads():
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
            embedding(indices, weight, backend="cython").backward(grad_y)
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
    torch.library.opcheck(torch.ops.gatedrnn.embedding.default, (weight, indices, 3, backend))
    torch.library.opcheck(torch.ops.gatedrnn.embedding.default, (weight, indices, -1, backend))
    torch.library.opcheck(torch.ops.gatedrnn.embedding_backward.default,
                          (torch.randn(5, 5, dtype=torch.float64), indices, 7, 3, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [7, -1, 100])
def test_out_of_range_indices_are_an_error(backend, bad):
    weight = torch.randn(7, 3)
    with pytest.raises(IndexError, match=r"input indices must lie in \[0, num_embeddings\) = \[0, 7\)"):
        embedding(torch.tensor([0, bad, 2]), weight, backend=backend)


@needs_cython("embedding")
def test_cython_kernel_checks_indices_itself():
    extension = embedding_ops.cpu_module("embedding")
    weight = np.zeros((4, 3), np.float32)
    output = np.zeros((2, 3), np.float32)
    with pytest.raises(IndexError, match=r"index 4 at position 1 is outside \[0, 4\)"):
        extension.embedding_forward(weight, np.array([0, 4], np.int64), output, 1)
    with pytest.raises(IndexError, match="outside"):
        extension.embedding_backward(output, np.array([-1, 0], np.int64), -1, weight, 1)


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
    ],
)
def test_bad_input_names_the_argument(arguments, error, message):
    call = dict(input=torch.tensor([0, 1]), weight=torch.randn(5, 3), backend="numpy")
    call.update(arguments)
    with pytest.raises(error, match=message):
        embedding(**call)


def test_triton_slot_names_the_fix():
    with pytest.raises(RuntimeError, match="not implemented yet for backend 'triton'.*backend='numpy'"):
        embedding_ops._implementations("triton")


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
    with pytest.raises(NotImplementedError, match="sparse=True is not implemented"):
        Embedding(4, 2, sparse=True)
