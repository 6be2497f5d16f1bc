"""Launcher-side helpers shared by every Triton kernel module (nothing here imports Triton).

* ``empty``: ``torch.empty``, filled with NaN when ``GATEDRNN_POISON_OUTPUTS=1`` (the test suite
  sets it) so that an entry a kernel fails to write shows up as NaN instead of stale memory.
* ``interpreting``: whether Triton runs kernels in its interpreter (``TRITON_INTERPRET=1``:
  CPU tensors, programs run one after another, no launch options).
* ``is_channels_last``: whether a 4-D tensor is laid out channels_last and not plainly
  contiguous as well; the ops layer's rule for which outputs are channels_last, so the kernels
  and the ops share it.
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


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether t is a channels_last (N, C, H, W) tensor and not plainly contiguous as well (as a
    1x1 image or a single channel is): torch's ops keep such inputs' layout in their outputs."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    """"tf32" for float32 when torch.backends.cudnn.allow_tf32 (and not interpreting: the
    interpreter computes in full precision), else "ieee" (bf16/fp16 dots are exact products)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"
