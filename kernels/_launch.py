"""Launcher-side helpers shared by every Triton kernel module (nothing here imports Triton).

* ``empty``: ``torch.empty``, filled with NaN when ``GATEDRNN_POISON_OUTPUTS=1`` (the test suite
  sets it) so that an entry a kernel fails to write shows up as NaN instead of stale memory.
* ``interpreting``: whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``:
  CPU tensors, programs run one after another, no launch options).
* ``dot_precision``: the ``input_precision`` of float32 ``tl.dot``s, following
  ``torch.backends.cudnn.allow_tf32`` as cuDNN's RNNs and convolutions do.
"""
import os

import torch


def poisoning() -> bool:
    return os.environ.get("GATEDRNN_POISON_OUTPUTS", "0") == "1"


def empty(*shape, dtype: torch.dtype, device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """torch.empty(*shape, dtype=dtype, device=device, memory_format=memory_format), NaN-filled
    (floating dtypes) when poisoning."""
    tensor = torch.empty(*shape, dtype=dtype, device=device, memory_format=memory_format)
    if poisoning() and tensor.is_floating_point():
        tensor.fill_(float("nan"))
    return tensor


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    """"tf32" for float32 when torch.backends.cudnn.allow_tf32 (and not interpreting: the
    interpreter computes in full precision), else "ieee" (bf16/fp16 dots are exact products)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"
