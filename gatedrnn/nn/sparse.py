"""Drop-in ``torch.nn.Embedding`` on gatedrnn's embedding op.

A subclass of torch's module: same arguments, parameter name (``weight``), initialisation
(N(0, 1) with the ``padding_idx`` row zeroed), ``from_pretrained``, ``extra_repr`` and
``load_state_dict`` both ways. ``max_norm`` renormalises the looked-up rows in place,
``scale_grad_by_freq`` scales each row's gradient by 1 / its occurrences and ``sparse`` gives
a sparse COO weight gradient, as torch does (all three through :func:`gatedrnn.embedding`).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..backends import _check_name
from ..ops.embedding import embedding

__all__ = ["Embedding"]


class Embedding(torch.nn.Embedding):
    """``torch.nn.Embedding`` plus ``backend``: integer indices of shape S -> (*S, embedding_dim)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                 scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None, dtype=None,
                 *, backend: Optional[str] = None):
        super().__init__(num_embeddings, embedding_dim, padding_idx, max_norm, norm_type, scale_grad_by_freq,
                         sparse, _weight, _freeze, device, dtype)
        self.backend = None if backend is None else _check_name(backend, "backend")

    def forward(self, input: Tensor) -> Tensor:
        return embedding(input, self.weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                         self.sparse, backend=self.backend)

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None, norm_type=2.0,
                        scale_grad_by_freq=False, sparse=False, *, backend: Optional[str] = None):
        """``torch.nn.Embedding.from_pretrained`` plus ``backend``: embeddings (V, D) become the weight."""
        if embeddings.dim() != 2:
            raise ValueError(f"Embeddings parameter is expected to be 2-dimensional, got shape "
                             f"{tuple(embeddings.shape)}")
        rows, cols = embeddings.shape
        return cls(rows, cols, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse, _weight=embeddings,
                   _freeze=freeze, backend=backend)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (f", backend={self.backend!r}" if self.backend is not None else "")
