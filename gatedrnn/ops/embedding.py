"""``gatedrnn.embedding``: row lookup on every backend, with autograd.

Forward gathers ``weight[input]``; backward adds each occurrence's output gradient to its row,
deterministically (a fixed summation order, no float atomics); the ``padding_idx`` row gets no
gradient; ``scale_grad_by_freq`` divides each row's gradient by its number of occurrences.
``sparse`` returns the weight gradient as an uncoalesced sparse COO tensor of the occurrences
(``padding_idx``'s left out), as torch does: no kernel runs for it. ``max_norm`` renormalises
the looked-up rows of ``weight`` in place first, with torch's ``embedding_renorm_``.

Indices are range-checked in the forward op's body, before any backend runs (and again inside
the Cython kernel), so a bad index is an error, never a read outside ``weight``: also inside a
torch.compile graph (a custom op's body runs eagerly there) and on a direct call of the op.

Custom ops (indices flattened to int64 (N,); ``padding_idx`` normalised to [0, V) or -1 for none)::

    gatedrnn::embedding(weight (V, D), indices (N,), padding_idx, scale_grad_by_freq, sparse, backend) -> (N, D)
    gatedrnn::embedding_backward(grad_output (N, D), indices, num_weights, padding_idx, scale_grad_by_freq,
                                 backend) -> (V, D)
    gatedrnn::embedding_renorm(weight (V, D) mutated, indices (N,), max_norm, norm_type) -> ()

(the forward op's ``scale_grad_by_freq`` and ``sparse`` only choose its gradient; the backward
op is differentiable in turn, through the forward op; the renorm op checks the indices itself,
because torch's kernel reads a negative index from the end).

The Cython extension ``gatedrnn._cpu.embedding`` (NumPy arrays, outputs preallocated)::
    embedding_forward(weight, indices, output, num_threads)                # OpenMP over rows of output
    embedding_backward(grad_output, indices, padding_idx, scale_grad_by_freq, grad_weight, num_threads)
        # OpenMP over column blocks of D: each thread walks all indices in order for its columns
Both raise IndexError on an index outside [0, V).

The triton backend (``gatedrnn.kernels.embedding``) has the same forward/backward pair; its
backward sorts the indices (stable) and sums each row's occurrences in sorted order, one
program per (row, column block): deterministic, no atomics. It trusts the range check here.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from .. import oracle
from ._recurrence import eager_or_op, from_numpy, new_output, run_cpu_kernel, to_numpy64
from ._spatial import Implementations, check_tensor, cpu_module, is_int, pick_backend

__all__ = ["embedding"]


def _numpy():
    def forward(weight, indices, padding_idx):
        return from_numpy(oracle.embedding_forward(to_numpy64(indices), to_numpy64(weight)), weight)

    def backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
        grad_weight = oracle.embedding_backward(to_numpy64(grad_output), to_numpy64(indices), num_weights,
                                                None if padding_idx < 0 else padding_idx, scale_grad_by_freq)
        return from_numpy(grad_weight, grad_output)

    return forward, backward


def _cython():
    extension = cpu_module("embedding")

    def forward(weight, indices, padding_idx):
        output = new_output((indices.shape[0], weight.shape[1]), weight.dtype, weight.device)
        run_cpu_kernel(extension.embedding_forward, weight, indices, output)
        return output

    def backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq):
        grad_weight = new_output((num_weights, grad_output.shape[1]), grad_output.dtype, grad_output.device)
        run_cpu_kernel(extension.embedding_backward, grad_output, indices, padding_idx, scale_grad_by_freq,
                       grad_weight)
        return grad_weight

    return forward, backward


def _triton():
    from ..kernels import embedding as kernels

    return kernels.embedding_forward, kernels.embedding_backward


_implementations = Implementations("embedding", {
    "numpy": _numpy,
    "cython": _cython,
    "triton": _triton,
})


def _check_indices(indices: Tensor, num_weights: int) -> None:
    """IndexError unless every index lies in [0, V) (the Triton kernels trust it)."""
    if indices.numel():
        low, high = (int(v) for v in torch.aminmax(indices))
        if low < 0 or high >= num_weights:
            raise IndexError(f"embedding: input indices must lie in [0, num_embeddings) = [0, {num_weights}), "
                             f"got values in [{low}, {high}]")


def _embedding_forward(weight: Tensor, indices: Tensor, padding_idx: int, scale_grad_by_freq: bool, sparse: bool,
                       backend: str) -> Tensor:
    if weight.dim() != 2 or indices.dim() != 1 or indices.dtype != torch.int64:
        raise ValueError(f"embedding: weight must be (V, D) and indices int64 (N,), got {tuple(weight.shape)} "
                         f"and {indices.dtype} {tuple(indices.shape)}")
    weight, indices = weight.contiguous(), indices.contiguous()
    _check_indices(indices, weight.shape[0])
    if indices.shape[0] == 0 or weight.shape[1] == 0:
        return weight.new_zeros((indices.shape[0], weight.shape[1]))
    forward, _ = _implementations(backend)
    return forward(weight, indices, padding_idx)


_embedding_op = torch.library.custom_op("gatedrnn::embedding", _embedding_forward, mutates_args=())


@_embedding_op.register_fake
def _(weight, indices, padding_idx, scale_grad_by_freq, sparse, backend):
    return weight.new_empty((indices.shape[0], weight.shape[1]))


def _embedding_backward_body(grad_output: Tensor, indices: Tensor, num_weights: int, padding_idx: int,
                             scale_grad_by_freq: bool, backend: str) -> Tensor:
    # Shapes checked for direct calls of the op: the Triton kernel reads grad_output's row of
    # every occurrence (out-of-range indices only never match a row).
    if grad_output.dim() != 2 or indices.dim() != 1 or grad_output.shape[0] != indices.shape[0]:
        raise ValueError(f"embedding_backward: grad_output must be (N, D) for indices (N,), got "
                         f"{tuple(grad_output.shape)} and {tuple(indices.shape)}")
    if indices.dtype != torch.int64 or num_weights < 0 or not -1 <= padding_idx < max(num_weights, 1):
        raise ValueError(f"embedding_backward: indices must be int64, num_weights >= 0 and padding_idx in "
                         f"[-1, num_weights), got {indices.dtype}, {num_weights} and {padding_idx}")
    grad_output, indices = grad_output.contiguous(), indices.contiguous()
    if indices.shape[0] == 0 or grad_output.shape[1] == 0:
        return grad_output.new_zeros((num_weights, grad_output.shape[1]))
    _, backward = _implementations(backend)
    return backward(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq)


_embedding_backward_op = torch.library.custom_op(
    "gatedrnn::embedding_backward", _embedding_backward_body, mutates_args=())
_embedding_backward = eager_or_op(_embedding_backward_op, _embedding_backward_body)


@_embedding_backward_op.register_fake
def _(grad_output, indices, num_weights, padding_idx, scale_grad_by_freq, backend):
    return grad_output.new_empty((num_weights, grad_output.shape[1]))


def _setup_context(ctx, inputs, output):
    weight, indices, padding_idx, scale_grad_by_freq, sparse, backend = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx = padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq
    ctx.sparse = sparse
    ctx.backend = backend


def _sparse_gradient(grad_output: Tensor, indices: Tensor, num_weights: int, padding_idx: int) -> Tensor:
    """The weight gradient as torch's sparse=True gives it: a (V, D) uncoalesced COO tensor with
    one entry per occurrence (index, its output gradient row), padding_idx's occurrences left out
    (an explicit zero entry would still step that row in SparseAdam)."""
    if padding_idx >= 0:
        kept = indices != padding_idx
        indices, grad_output = indices[kept], grad_output[kept]
    # The indices were range-checked by the forward op's body: the invariants hold.
    return torch.sparse_coo_tensor(indices.unsqueeze(0), grad_output, (num_weights, grad_output.shape[1]),
                                   check_invariants=False)


def _backward(ctx, grad_output):
    (indices,) = ctx.saved_tensors
    if ctx.sparse and ctx.scale_grad_by_freq:
        # torch refuses the pair here too, in the backward (the forward alone is fine)
        raise RuntimeError("gatedrnn.embedding: scale_grad_by_freq=True has no sparse gradient (sparse=True)")
    if ctx.sparse:
        grad_weight = _sparse_gradient(grad_output, indices, ctx.num_weights, ctx.padding_idx)
    else:
        grad_weight = _embedding_backward(grad_output, indices, ctx.num_weights, ctx.padding_idx,
                                          ctx.scale_grad_by_freq, ctx.backend)
    return grad_weight, None, None, None, None, None


_embedding_op.register_autograd(_backward, setup_context=_setup_context)
_embedding = eager_or_op(_embedding_op, _embedding_forward, _setup_context, _backward)


def _backward_setup_context(ctx, inputs, output):
    grad_output, indices, num_weights, padding_idx, scale_grad_by_freq, backend = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = num_weights
    ctx.padding_idx = padding_idx
    ctx.scale_grad_by_freq = scale_grad_by_freq
    ctx.backend = backend


def _double_backward(ctx, grad_grad_weight):
    """The backward sums grad_output rows into their index's row (linear in grad_output): its
    gradient looks grad_grad_weight up at the indices (the forward op), 0 at padding_idx's
    occurrences, divided by the index's count with scale_grad_by_freq. (torch 2.13's own
    double backward leaves that division out: gradgradcheck fails for F.embedding with
    scale_grad_by_freq=True and passes for this one.)"""
    (indices,) = ctx.saved_tensors
    result = _embedding(grad_grad_weight, indices, -1, False, False, ctx.backend)
    if ctx.padding_idx >= 0:
        result = result.masked_fill((indices == ctx.padding_idx).unsqueeze(1), 0)
    if ctx.scale_grad_by_freq:
        counts = torch.bincount(indices, minlength=ctx.num_weights)
        result = result / counts[indices].unsqueeze(1).to(result.dtype)
    return (result,) + (None,) * 5


_embedding_backward_op.register_autograd(_double_backward, setup_context=_backward_setup_context)


def _renorm_body(weight: Tensor, indices: Tensor, max_norm: float, norm_type: float) -> None:
    # A custom op so that its range check runs eagerly inside compiled graphs too: torch's kernel
    # takes a negative index as counting from the end.
    _check_indices(indices, weight.shape[0])
    with torch.no_grad():
        torch.embedding_renorm_(weight, indices, max_norm, norm_type)


_renorm_op = torch.library.custom_op("gatedrnn::embedding_renorm", _renorm_body, mutates_args=("weight",))


def _renormalize(weight: Tensor, indices: Tensor, max_norm, norm_type, op: str) -> None:
    """Rescale, in place and without autograd, the rows of ``weight`` that ``indices`` (int64,
    (N,)) name whose ``norm_type``-norm exceeds ``max_norm`` to norm ``max_norm`` (torch's
    ``embedding_renorm_``: each such row times max_norm / (norm + 1e-7))."""
    values = []
    for argument, value in (("max_norm", max_norm), ("norm_type", norm_type)):
        if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype.is_complex:
            value = value.item()  # torch takes a one-element tensor too
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value):
            raise TypeError(f"{op}: {argument} must be a real number, got {value!r}")
        values.append(float(value))
    max_norm, norm_type = values
    if max_norm < 0:
        raise ValueError(f"{op}: max_norm must be >= 0, got {max_norm}")
    with torch.no_grad():
        _renorm_op(weight, indices, max_norm, norm_type)


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: Optional[int] = None,
    max_norm: Optional[float] = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """Look up rows of ``weight`` (``torch.nn.functional.embedding`` semantics).

    Args:
        input: integer tensor (int64 or int32) of indices, any shape S, each in [0, V).
        weight: (V, D) floating-point embedding matrix.
        padding_idx: a row in [-V, V) that receives no gradient (negative counts from the end),
            or None. The forward still returns that row as it is.
        max_norm: if given, every row that ``input`` looks up whose ``norm_type``-norm exceeds
            ``max_norm`` is rescaled to norm ``max_norm``, in place in ``weight``, before the
            lookup (without autograd).
        norm_type: the p of the p-norm for ``max_norm``.
        scale_grad_by_freq: divide each row's gradient by the number of times ``input`` looks
            it up.
        sparse: the gradient of ``weight`` is a sparse COO tensor (for ``torch.optim.SparseAdam``,
            ``SGD``) holding only the looked-up rows. With ``scale_grad_by_freq`` too the backward
            raises, as torch's does.
        backend: "triton", "cython" or "numpy"; None picks one.

    Returns:
        (*S, D): ``weight[input]``. Differentiable with respect to ``weight``.
    """
    op = "embedding"
    input = check_tensor(input, "input", op)
    weight = check_tensor(weight, "weight", op)
    if input.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: input must hold indices as int64 or int32, got dtype {input.dtype}")
    if not weight.is_floating_point():
        raise TypeError(f"{op}: weight must be a floating-point tensor, got dtype {weight.dtype}")
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}")
    if input.device != weight.device:
        raise ValueError(f"{op}: input must be on weight's device {weight.device}, got {input.device}")
    num_weights = weight.shape[0]
    if padding_idx is None:
        padding = -1
    else:
        if not is_int(padding_idx):
            raise TypeError(f"{op}: padding_idx must be an int or None, got {padding_idx!r}")
        if not -num_weights <= padding_idx < num_weights:
            raise ValueError(f"{op}: padding_idx must lie in [-num_embeddings, num_embeddings) = "
                             f"[{-num_weights}, {num_weights}), got {padding_idx}")
        padding = padding_idx % num_weights
    for argument, value in (("scale_grad_by_freq", scale_grad_by_freq), ("sparse", sparse)):
        if not isinstance(value, bool):
            raise TypeError(f"{op}: {argument} must be a bool, got {value!r}")
    indices = input.reshape(-1).to(torch.int64)  # (their values: checked in the op's body)
    name = pick_backend(backend, weight.dtype, weight.device)
    if max_norm is not None:
        _renormalize(weight, indices, max_norm, norm_type, op)
    output = _embedding(weight, indices, padding, scale_grad_by_freq, sparse, name)
    return output.reshape(tuple(input.shape) + (weight.shape[1],))
