"""Sequence models: Embedding + stacked LSTM / GRU / RNN + Linear head.

- :class:`CharLanguageModel`: next-token logits at every step (what ``gatedrnn train`` trains).
- :class:`SequenceClassifier`: one set of class logits per sequence, read at its last valid step.

Both are built either from gatedrnn's modules (``implementation="gatedrnn"``, the default) or
from the ``torch.nn`` modules of the same configuration (``implementation="torch"``). The
submodules are always named ``embedding``, ``rnn`` and ``head`` and gatedrnn's modules use
torch's parameter names, so a state dict moves between the two implementations, and into any
torch model with those three attributes, with ``load_state_dict(strict=True)``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import nn as gnn

__all__ = ["CELLS", "CharLanguageModel", "SequenceClassifier", "torch_char_language_model"]

CELLS = ("lstm", "gru", "rnn")
_IMPLEMENTATIONS = ("gatedrnn", "torch")


def _recurrent_class(cell: str, implementation: str):
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
    source = gnn if implementation == "gatedrnn" else torch.nn
    return getattr(source, cell.upper())


class _EmbeddingRecurrentStack(torch.nn.Module):
    """Embedding -> dropout -> stacked recurrence (batch-first) -> dropout; the head is the subclass's."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int, cell: str,
                 dropout: float, backend: Optional[str], implementation: str, nonlinearity: str) -> None:
        super().__init__()
        cell = cell.lower()
        recurrent_class = _recurrent_class(cell, implementation)
        if implementation == "torch" and backend is not None:
            raise ValueError("backend applies to implementation='gatedrnn' only; torch.nn modules have none")
        self.config = dict(vocab_size=vocab_size, embedding_dim=embedding_dim, hidden_size=hidden_size,
                           num_layers=num_layers, cell=cell, dropout=dropout)
        if cell == "rnn":
            self.config["nonlinearity"] = nonlinearity
        self.cell = cell
        self.implementation = implementation
        self.backend = backend
        extra = {"backend": backend} if implementation == "gatedrnn" else {}
        if implementation == "gatedrnn":
            self.embedding = gnn.Embedding(vocab_size, embedding_dim, **extra)
        else:
            self.embedding = torch.nn.Embedding(vocab_size, embedding_dim)
        rnn_kwargs = dict(num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        if cell == "rnn":
            rnn_kwargs["nonlinearity"] = nonlinearity
        self.rnn = recurrent_class(embedding_dim, hidden_size, **rnn_kwargs, **extra)
        self.dropout = torch.nn.Dropout(dropout)

    def embed(self, tokens: Tensor) -> Tensor:
        """The embedding lookup: tokens (B, T) -> (B, T, embedding_dim), on gatedrnn's embedding op
        (any backend, Triton on CUDA) or torch's module for ``implementation="torch"``."""
        return self.embedding(tokens)

    def features(self, tokens: Tensor, state=None):
        """tokens (B, T) int64 -> (recurrent output (B, T, H), final state)."""
        embedded = self.dropout(self.embed(tokens))
        output, state = self.rnn(embedded, state)
        return self.dropout(output), state

    def to_torch_state_dict(self) -> "OrderedDict[str, Tensor]":
        """A detached CPU copy of the parameters under torch's names (``embedding.weight``,
        ``rnn.weight_ih_l0``, ..., ``head.weight``, ``head.bias``): what ``train --save`` writes."""
        return OrderedDict((name, value.detach().cpu().clone()) for name, value in self.state_dict().items())

    def to_torch(self):
        """The same model built from ``torch.nn`` modules, with a copy of these parameters."""
        reference = next(iter(self.parameters()))
        twin = type(self)(**self.config, implementation="torch").to(reference.device, reference.dtype)
        twin.load_state_dict(self.state_dict(), strict=True)
        twin.train(self.training)
        return twin


class CharLanguageModel(_EmbeddingRecurrentStack):
    """Character (or any token) language model: logits for the next token at every step.

    Args:
        vocab_size: number of distinct tokens V.
        hidden_size: recurrent state size H (also the default embedding size).
        num_layers: stacked recurrent layers.
        cell: "lstm", "gru" or "rnn" (Elman, ``nonlinearity`` "tanh" or "relu").
        dropout: on the embedding, between recurrent layers and before the head.
        backend: gatedrnn backend for every layer (None: automatic).
        embedding_dim: embedding size (default ``hidden_size``).
        implementation: "gatedrnn" (gatedrnn.nn modules) or "torch" (torch.nn modules).

    ``forward(tokens (B, T), state=None) -> (logits (B, T, V), state)``.
    """

    def __init__(self, vocab_size: int, hidden_size: int = 256, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0, backend: Optional[str] = None, embedding_dim: Optional[int] = None,
                 implementation: str = "gatedrnn", nonlinearity: str = "tanh") -> None:
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        super().__init__(vocab_size, embedding_dim, hidden_size, num_layers, cell, dropout, backend,
                         implementation, nonlinearity)
        self.head = torch.nn.Linear(hidden_size, vocab_size)

    def forward(self, tokens: Tensor, state=None) -> Tuple[Tensor, object]:
        output, state = self.features(tokens, state)
        return self.head(output), state

    @torch.no_grad()
    def sample(self, prompt: Tensor, length: int, temperature: float = 0.8,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Continue the 1-D token tensor ``prompt`` by ``length`` sampled tokens (returned alone)."""
        was_training = self.training
        self.eval()
        try:
            logits, state = self(prompt.view(1, -1))
            sampled = []
            for _ in range(length):
                probabilities = F.softmax(logits[0, -1].float() / max(temperature, 1e-6), dim=-1)
                token = torch.multinomial(probabilities.cpu(), 1, generator=generator).to(prompt.device)
                sampled.append(token)
                logits, state = self(token.view(1, 1), state)
            return torch.cat(sampled) if sampled else prompt.new_empty(0)
        finally:
            self.train(was_training)


class SequenceClassifier(_EmbeddingRecurrentStack):
    """Sequence classifier: class logits from the recurrent output at each sequence's last valid step.

    Same arguments as :class:`CharLanguageModel` plus ``num_classes``.
    ``forward(tokens (B, T), lengths=None) -> logits (B, num_classes)``; ``lengths`` (B,) gives
    each sequence's valid length (padding after it is never read: the recurrence runs forward).
    """

    def __init__(self, vocab_size: int, num_classes: int, hidden_size: int = 256, num_layers: int = 1,
                 cell: str = "lstm", dropout: float = 0.0, backend: Optional[str] = None,
                 embedding_dim: Optional[int] = None, implementation: str = "gatedrnn",
                 nonlinearity: str = "tanh") -> None:
        embedding_dim = hidden_size if embedding_dim is None else embedding_dim
        super().__init__(vocab_size, embedding_dim, hidden_size, num_layers, cell, dropout, backend,
                         implementation, nonlinearity)
        self.config["num_classes"] = num_classes
        self.head = torch.nn.Linear(hidden_size, num_classes)

    def forward(self, tokens: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        output, _ = self.features(tokens)
        if lengths is None:
            last = output[:, -1]
        else:
            lengths = torch.as_tensor(lengths, device=output.device, dtype=torch.int64)
            if lengths.shape != (tokens.shape[0],) or bool((lengths < 1).any()) or bool((lengths > tokens.shape[1]).any()):
                raise ValueError(f"lengths must be (B,) = ({tokens.shape[0]},) in [1, {tokens.shape[1]}], "
                                 f"got {lengths.tolist()}")
            last = output[torch.arange(output.shape[0], device=output.device), lengths - 1]
        return self.head(last)


def torch_char_language_model(vocab_size: int, hidden_size: int = 256, num_layers: int = 1, cell: str = "lstm",
                              dropout: float = 0.0, embedding_dim: Optional[int] = None,
                              nonlinearity: str = "tanh", **_ignored) -> CharLanguageModel:
    """The ``torch.nn`` build of a :class:`CharLanguageModel` configuration (e.g. ``model.config``):
    loads the state dict ``gatedrnn train --save`` writes with ``strict=True``."""
    return CharLanguageModel(vocab_size, hidden_size, num_layers, cell, dropout, None, embedding_dim,
                             implementation="torch", nonlinearity=nonlinearity)
