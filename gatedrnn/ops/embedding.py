"""``gatedrnn.embedding``: row lookup on every backend, with autograd.

Forward gathers ``weight[input]``; backward adds each occurrence's output gradient to its row,
deterministically (a fixed summation order, no float atomics); the ``padding_idx`` row gets no
gradient. Indices are range-checked in the forward op's body, before any backend runs (and
again inside the Cython kernel), so a bad index is an error, never a read outside ``weight``:
also inside a torch.compile graph (a custom op's body runs eagerly there) and on a direct call
of the op.

Custom ops (indices flattened to int64 (N,); ``padding_idx`` normalised to [0, V) or -1 for none)::

    gatedrnn::embedding(weight (V, D), indices (N,), padding_idx, backend) -> (N, D)
    gatedrnn::embedding_backward(grad_output (N, D), indices, num_weights, padding_idx, backend) -> (V, D)

The Cython extension ``gatedrnn._cpu.embedding`` (NumPy arrays, outputs preallocated)::
    embedding_forward(weight, indices, output, num_threads)                # OpenMP over rows of output
    embedding_backward(grad_output, indices, padding_idx, grad_weight, num_threads)
        # OpenMP over column blocks of D: each thread walks all indices in order for its columns
Both raise IndexError on an index outside [0, V).

The triton backend (``gatedrnn.kernels.embedding``) has the same forward/backward pair; its
backward sorts the indices (stable) and sums each row's occurrences in sorted order, one
program per (row, column block): deterministic, no atomics. It trusts the range check here.
"""
from __future__ import annotations

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

    def backward(grad_output, indices, num_weights, padding_idx):
        grad_weight = oracle.embedding_backward(to_numpy64(grad_output), to_numpy64(indices), num_weights,
                                                None if padding_idx < 0 else padding_idx)
        return from_numpy(grad_weight, grad_output)

    return forward, backward


def _cython():
    extension = cpu_module("embedding")

    def forward(weight, indices, padding_idx):
        output = new_output((indices.shape[0], weight.shape[1]), weight.dtype, weight.device)
        run_cpu_kernel(extension.embedding_forward, weight, indices, output)
        return output

    def backward(grad_output, indices, num_weights, padding_idx):
        grad_weight = new_output((num_weights, grad_output.shape[1]), grad_output.dtype, grad_output.device)
        run_cpu_kernel(extension.embedding_backward, grad_output, indices, padding_idx, grad_weight)
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


def _embedding_forward(weight: Tensor, indices: Tensor, padding_idx: int, backend: str) -> Tensor:
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
def _(weight, indices, padding_idx, backend):
    return weight.new_empty((indices.shape[0], weight.shape[1]))


def _embedding_backward_body(grad_output: Tensor, indices: Tensor, num_weights: int, padding_idx: int,
                             backend: str) -> Tensor:
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
    return backward(grad_output, indices, num_weights, padding_idx)


_embedding_backward_op = torch.library.custom_op(
    "gatedrnn::embedding_backward", _embedding_backward_body, mutates_args=())
_embedding_backward = eager_or_op(_embedding_backward_op, _embedding_backward_body)


@_embedding_backward_op.register_fake
def _(grad_output, indices, num_weights, padding_idx, backend):
    return grad_output.new_empty((num_weights, grad_output.shape[1]))


def _setup_context(ctx, inputs, output):
    weight, indices, padding_idx, backend = inputs
    ctx.save_for_backward(indices)
    ctx.num_weights = weight.shape[0]
    ctx.padding_idx = padding_idx
    ctx.backend = backend


def _backward(ctx, grad_output):
    (indices,) = ctx.saved_tensors
    grad_weight = _embedding_backward(grad_output, indices, ctx.num_weights, ctx.padding_idx, ctx.backend)
    return grad_weight, None, None, None


_embedding_op.register_autograd(_backward, setup_context=_setup_context)
_embedding = eager_or_op(_embedding_op, _embedding_forward, _setup_context, _backward)


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: Optional[int] = None,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """Look up rows of ``weight`` (``torch.nn.functional.embedding`` semantics).

    Args:
        input: integer tensor (int64 or int32) of indices, any shape S, each in [0, V).
        weight: (V, D) floating-point embedding matrix.
        padding_idx: a row in [-V, V) that receives no gradient (negative counts from the end),
            or None. The forward still returns that row as it is.
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
    indices = input.reshape(-1).to(torch.int64)  # (their values: checked in the op's body)
    name = pick_backend(backend, weight.dtype, weight.device)
    output = _embedding(weight, indices, padding, name)
    return output.reshape(tuple(input.shape) + (weight.shape[1],))
