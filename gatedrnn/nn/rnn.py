"""Drop-in ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` built on gatedrnn's functional ops.

The modules subclass :class:`torch.nn.RNNBase`, which gives them torch's parameter names
(``weight_ih_l{k}{_reverse}``, ``weight_hh_l..``, ``bias_ih_l..``, ``bias_hh_l..``,
``weight_hr_l..``), shapes, initialisation U(-1/sqrt(H), 1/sqrt(H)), ``all_weights``,
``extra_repr``, pickling and DataParallel replication exactly. ``flatten_parameters`` is a no-op:
the cuDNN flat weight buffer is never used, the kernels read each parameter as it is.
(They do not subclass ``torch.nn.LSTM`` itself: torch.compile refuses to trace those classes,
and code testing ``isinstance(m, torch.nn.LSTM)`` would take our module for cuDNN's.)

``forward`` follows torch's contract: batched (3-D) or unbatched (2-D) input, or a
``PackedSequence`` (sorted or not); optional hx; the same output types, shapes and ordering.
A stack is one functional call per layer and direction (``reverse=True`` for the reverse
half), a packed batch becomes padded input plus ``lengths``; no Python loop over time steps.
"""
from __future__ import annotations

import numbers
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from ..backends import BACKENDS
from ..ops.gru import gru as gru_op
from ..ops.lstm import lstm as lstm_op
from ..ops.rnn import rnn as rnn_op

__all__ = ["LSTM", "GRU", "RNN"]


# ---------------------------------------------------------------------------------------------
# Constructor checks: the same exception types as torch.nn, with the offending value named.
# ---------------------------------------------------------------------------------------------

def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_constructor(cls_name: str, input_size, hidden_size, num_layers, bias, batch_first,
                       dropout, bidirectional, proj_size) -> None:
    """Raise what ``torch.nn.RNNBase.__init__`` raises, in its order, with clearer messages.

    Also rejects what torch lets through by accident: bool or float sizes (``num_layers=2.0``
    fails in torch with "'float' object cannot be interpreted as an integer").
    """
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError(
            f"{cls_name}: dropout should be a number in range [0, 1] representing the probability "
            f"of an element being zeroed, got {dropout!r}"
        )
    if not isinstance(bias, bool):
        raise TypeError(f"{cls_name}: bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"{cls_name}: batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not (isinstance(bidirectional, bool) or (_is_int(bidirectional) and bidirectional in (0, 1))):
        raise TypeError(f"{cls_name}: bidirectional should be of type bool, got: {bidirectional!r}")
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers),
                        ("proj_size", proj_size)):
        if not _is_int(value):
            raise TypeError(f"{cls_name}: {name} should be of type int, got: {type(value).__name__} ({value!r})")
    if input_size <= 0:
        raise ValueError(f"{cls_name}: input_size must be greater than zero, got {input_size}")
    if hidden_size <= 0:
        raise ValueError(f"{cls_name}: hidden_size must be greater than zero, got {hidden_size}")
    if num_layers <= 0:
        raise ValueError(f"{cls_name}: num_layers must be greater than zero, got {num_layers}")
    if proj_size < 0:
        raise ValueError(
            f"{cls_name}: proj_size should be a positive integer or zero to disable projections, got {proj_size}"
        )
    if proj_size >= hidden_size:
        raise ValueError(
            f"{cls_name}: proj_size has to be smaller than hidden_size, got proj_size={proj_size} "
            f">= hidden_size={hidden_size}"
        )


def _check_backend(backend) -> Optional[str]:
    if backend is None:
        return None
    if not isinstance(backend, str):
        raise TypeError(f"backend must be None or a str naming one of {BACKENDS}, got {type(backend).__name__}")
    key = backend.strip().lower()
    if key not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS} or None (automatic)")
    return key


def _reject_kwargs(cls_name: str, kwargs: dict) -> None:
    if "proj_size" in kwargs:
        # torch.nn.GRU / RNN raise exactly this (a ValueError, not a TypeError).
        raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
    if kwargs:
        raise TypeError(f"{cls_name}.__init__() got unexpected keyword argument(s) {sorted(kwargs)}")


# ---------------------------------------------------------------------------------------------
# PackedSequence <-> padded, without a loop over time
# ---------------------------------------------------------------------------------------------

def _packed_layout(batch_sizes: Tensor, num_rows: int, device: torch.device) -> Tuple[Tensor, Tensor, int]:
    """Where each packed row lives in a (T*B,) flattened padded batch, and the lengths.

    A packed batch stores step t of the sorted sequences 0..batch_sizes[t]-1 in rows
    ``starts[t] .. starts[t] + batch_sizes[t] - 1``. Returns ``(flat_index (N,), lengths (B,),
    B)`` in the *sorted* order of the pack (as torch computes): flat_index on ``device``, lengths
    on the CPU, where the ops take them.
    """
    batch_sizes = batch_sizes.to("cpu", torch.int64)
    batch = int(batch_sizes[0])
    ends = batch_sizes.cumsum(0)
    starts = ends - batch_sizes
    rows = torch.arange(num_rows, dtype=torch.int64)
    step = torch.searchsorted(ends, rows, right=True)
    flat_index = step * batch + (rows - starts[step])
    # Sequence b (sorted) is valid at every step whose batch size exceeds b.
    lengths = (batch_sizes.unsqueeze(0) > torch.arange(batch).unsqueeze(1)).sum(1)
    return flat_index.to(device), lengths, batch


def _pad(data: Tensor, flat_index: Tensor, seq_len: int, batch: int) -> Tensor:
    """Packed rows (N, F) -> zero-padded time-major (T, B, F)."""
    padded = data.new_zeros(seq_len * batch, data.shape[-1])
    return padded.index_copy(0, flat_index, data).view(seq_len, batch, data.shape[-1])


def _pack(padded: Tensor, flat_index: Tensor) -> Tensor:
    """Time-major (T, B, F) -> packed rows (N, F) (the inverse of :func:`_pad`)."""
    return padded.reshape(-1, padded.shape[-1]).index_select(0, flat_index)


# ---------------------------------------------------------------------------------------------
# The shared module
# ---------------------------------------------------------------------------------------------

class _GatedRNNBase(torch.nn.RNNBase):
    """What LSTM, GRU and RNN share: checks, hx handling, the layer/direction stack."""

    _torch_class: type = torch.nn.RNNBase  # the torch.nn module this one replaces
    _num_states = 1  # 2 for LSTM: (h, c)

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: Optional[str] = None) -> None:
        cls_name = type(self).__name__
        _check_constructor(cls_name, input_size, hidden_size, num_layers, bias, batch_first, dropout,
                           bidirectional, proj_size)
        backend = _check_backend(backend)
        super().__init__(mode, int(input_size), int(hidden_size), int(num_layers), bias, batch_first,
                         float(dropout), bool(bidirectional), int(proj_size), device=device, dtype=dtype)
        self.backend = backend

    def flatten_parameters(self) -> None:
        """No-op: gatedrnn's kernels take each parameter as it is (no cuDNN flat buffer)."""

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.backend is not None:
            text += f", backend={self.backend!r}"
        return text

    # -- conversion ------------------------------------------------------------------------------

    def _config(self) -> dict:
        """Constructor keywords shared with the torch.nn module of the same configuration."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
                    bias=self.bias, batch_first=self.batch_first, dropout=self.dropout,
                    bidirectional=self.bidirectional)

    @classmethod
    def _config_of(cls, module) -> dict:
        return dict(input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
                    bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                    bidirectional=bool(module.bidirectional))

    @classmethod
    def from_torch(cls, module: torch.nn.Module, *, backend: Optional[str] = None):
        """A gatedrnn module with ``module``'s configuration, parameters (copied), device,
        dtype and training mode. ``module`` is the matching ``torch.nn`` class (or ours)."""
        if not isinstance(module, (cls._torch_class, cls)):
            raise TypeError(
                f"{cls.__name__}.from_torch expects a torch.nn.{cls._torch_class.__name__}, "
                f"got {type(module).__name__}"
            )
        reference = next(iter(module.parameters()))
        converted = cls(**cls._config_of(module), device=reference.device, dtype=reference.dtype, backend=backend)
        converted.load_state_dict(module.state_dict())
        converted.train(module.training)
        return converted

    def to_torch(self) -> torch.nn.Module:
        """The ``torch.nn`` module of this configuration with a copy of these parameters."""
        reference = next(iter(self.parameters()))
        module = self._torch_class(**self._config(), device=reference.device, dtype=reference.dtype)
        module.load_state_dict(self.state_dict())
        module.train(self.training)
        return module

    # -- forward ---------------------------------------------------------------------------------

    def _state_sizes(self) -> List[int]:
        """Feature size of each recurrent state in hx: [H] ([P or H, H] for LSTM)."""
        return [self.hidden_size]

    def _check_hx(self, hx, batch: int, is_batched: bool, dtype: torch.dtype, device) -> Optional[List[Tensor]]:
        """hx as a list of (L*D, B, size) tensors (unbatched ones get B=1), or None."""
        name = type(self).__name__
        if hx is None:
            return None
        if self._num_states == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not all(isinstance(s, Tensor) for s in hx):
                raise TypeError(f"{name}: hx must be None or a tuple (h_0, c_0) of two tensors, got "
                                f"{type(hx).__name__}")
            states, labels = list(hx), ["hx[0] (h_0)", "hx[1] (c_0)"]
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{name}: hx must be None or a tensor h_0, got {type(hx).__name__}")
            states, labels = [hx], ["hx (h_0)"]
        want_dim = 3 if is_batched else 2
        if any(s.dim() != want_dim for s in states):
            dims = ", ".join(f"{s.dim()}-D" for s in states)
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise RuntimeError(f"{name}: for {kind} input, hx should also be {want_dim}-D but got ({dims}) "
                               f"tensor{'s' if len(states) > 1 else ''}")
        if not is_batched:
            states = [s.unsqueeze(1) for s in states]
        num_directions = 2 if self.bidirectional else 1
        for label, state, size in zip(labels, states, self._state_sizes()):
            expected = (self.num_layers * num_directions, batch, size)
            if tuple(state.shape) != expected:
                shown = tuple(state.shape) if is_batched else (state.shape[0], state.shape[2])
                want = expected if is_batched else (expected[0], expected[2])
                raise RuntimeError(
                    f"{name}: expected {label} of shape (num_layers * num_directions, "
                    f"{'batch, ' if is_batched else ''}hidden) = {want}, got {shown}"
                )
            if state.dtype != dtype and not torch._C._is_any_autocast_enabled():  # (autocast casts)
                raise ValueError(f"{name}: {label} dtype ({state.dtype}) does not match the input dtype ({dtype})")
            if state.device != device:
                raise ValueError(f"{name}: {label} is on {state.device}, the input on {device}")
        return states

    def _check_input_features(self, x: Tensor) -> None:
        name = type(self).__name__
        weight_dtype = self.weight_ih_l0.dtype
        if x.dtype != weight_dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"{name}: input dtype ({x.dtype}) does not match weight dtype ({weight_dtype}). Convert input: "
                f"input.to({weight_dtype}), or convert model: model.to({x.dtype})"
            )
        if x.shape[-1] != self.input_size:
            raise RuntimeError(
                f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, got {x.shape[-1]}"
            )

    def forward(self, input: Union[Tensor, PackedSequence], hx=None):
        """Run the stack. Shapes (L = num_layers, D = 2 if bidirectional else 1, H_out =
        proj_size or hidden_size):

        - input: (T, B, input_size), (B, T, input_size) with ``batch_first``, (T, input_size)
          unbatched, or a ``PackedSequence``.
        - hx: None (zeros) or h_0 (L*D, B, H_out) ((L*D, H_out) unbatched); LSTM takes
          (h_0, c_0) with c_0 (L*D, B, hidden_size).
        - returns (output, h_n) (LSTM: (output, (h_n, c_n))): output (T, B, D*H_out) in the
          input's layout (a ``PackedSequence`` for packed input), h_n like h_0.
        """
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = None
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if data.dim() != 2:
                raise RuntimeError(f"{name}: a PackedSequence's data must have 2 dimensions, got {data.dim()}")
            self._check_input_features(data)
            flat_index, lengths, batch = _packed_layout(batch_sizes, data.shape[0], data.device)
            seq_len = batch_sizes.shape[0]
            x = _pad(data, flat_index, seq_len, batch)
            is_batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a Tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
            self._check_input_features(input)
            is_batched = input.dim() == 3
            if not is_batched:
                # torch's convention: batch_first does not apply to unbatched input.
                x = input.unsqueeze(1)
            else:
                x = input.transpose(0, 1) if self.batch_first else input
            lengths = None
            batch = x.shape[1]

        states = self._check_hx(hx, batch, is_batched, x.dtype, x.device)
        if states is not None and sorted_indices is not None:
            # hx is given in the caller's order; the pack runs in sorted order (as torch does).
            states = [s.index_select(1, sorted_indices) for s in states]

        output, finals = self._run_stack(x, states, lengths)

        if unsorted_indices is not None:
            finals = [f.index_select(1, unsorted_indices) for f in finals]
        if packed:
            result = PackedSequence(_pack(output, flat_index), batch_sizes, sorted_indices, unsorted_indices)
        elif not is_batched:
            result = output.squeeze(1)
            finals = [f.squeeze(1) for f in finals]
        else:
            result = output.transpose(0, 1) if self.batch_first else output
        if self._num_states == 2:
            return result, (finals[0], finals[1])
        return result, finals[0]

    def _run_stack(self, x: Tensor, states: Optional[List[Tensor]], lengths: Optional[Tensor]):
        """All layers and directions on time-major ``x`` (T, B, I).

        Returns the last layer's output (T, B, D*H_out) and the final states, each
        (L*D, B, size), indexed layer * D + direction as torch does.
        """
        num_directions = 2 if self.bidirectional else 1
        finals: List[List[Tensor]] = [[] for _ in range(self._num_states)]
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(num_directions):
                index = layer * num_directions + direction
                weights = {n.rsplit("_l", 1)[0]: getattr(self, n) for n in self._all_weights[index]}
                initial = None if states is None else [s[index] for s in states]
                output, final = self._run_direction(layer_input, initial, weights, lengths, reverse=direction == 1)
                outputs.append(output)
                for collected, state in zip(finals, final):
                    collected.append(state)
            layer_output = outputs[0] if num_directions == 1 else torch.cat(outputs, dim=-1)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_output = F.dropout(layer_output, p=self.dropout, training=True)
            layer_input = layer_output
        return layer_input, [torch.stack(collected) for collected in finals]

    def _run_direction(self, x, initial, weights, lengths, reverse):  # pragma: no cover - abstract
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------
# LSTM
# ---------------------------------------------------------------------------------------------

class LSTM(_GatedRNNBase):
    """Drop-in ``torch.nn.LSTM`` (same arguments, parameters, forward contract).

    Args: as ``torch.nn.LSTM`` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None),
    plus keyword ``backend`` ("triton", "cython", "numpy" or None for automatic).

    ``forward(input, hx=None) -> (output, (h_n, c_n))``: input (T, B, input_size) ((B, T, .)
    with batch_first, (T, input_size) unbatched, or a PackedSequence); h_0 / h_n
    (L*D, B, proj_size or hidden_size), c_0 / c_n (L*D, B, hidden_size); output
    (T, B, D * (proj_size or hidden_size)).
    """

    _torch_class = torch.nn.LSTM
    _num_states = 2

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, backend: Optional[str] = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype, backend=backend)

    def _config(self) -> dict:
        return dict(super()._config(), proj_size=self.proj_size)

    @classmethod
    def _config_of(cls, module) -> dict:
        return dict(super()._config_of(module), proj_size=module.proj_size)

    def _state_sizes(self) -> List[int]:
        return [self.proj_size if self.proj_size > 0 else self.hidden_size, self.hidden_size]

    def _run_direction(self, x, initial, weights, lengths, reverse):
        # proj_size: the functional op's weight_hr (an exact rewrite onto the unprojected LSTM).
        return lstm_op(
            x, None if initial is None else tuple(initial), weights["weight_ih"], weights["weight_hh"],
            weights.get("bias_ih"), weights.get("bias_hh"), weight_hr=weights.get("weight_hr"),
            lengths=lengths, reverse=reverse, backend=self.backend,
        )


# ---------------------------------------------------------------------------------------------
# GRU
# ---------------------------------------------------------------------------------------------

class GRU(_GatedRNNBase):
    """Drop-in ``torch.nn.GRU`` (same arguments, parameters, forward contract).

    Args: as ``torch.nn.GRU`` (input_size, hidden_size, num_layers=1, bias=True,
    batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None), plus keywords
    ``reset_after`` (True: torch/cuDNN's n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); False:
    the reset applied before the recurrent product, n = tanh(W_in x + b_in + W_hn (r * h) + b_hn);
    the same parameters either way) and ``backend``.

    ``forward(input, hx=None) -> (output, h_n)``: shapes as ``torch.nn.GRU``.
    """

    _torch_class = torch.nn.GRU

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, device=None,
                 dtype=None, *, reset_after: bool = True, backend: Optional[str] = None, **kwargs) -> None:
        _reject_kwargs("GRU", kwargs)
        if not isinstance(reset_after, bool):
            raise TypeError(f"GRU: reset_after should be of type bool, got: {type(reset_after).__name__}")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype, backend=backend)
        self.reset_after = reset_after

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("reset_after", True)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (", reset_after=False" if not self.reset_after else "")

    def to_torch(self) -> torch.nn.Module:
        if not self.reset_after:
            raise ValueError("GRU.to_torch: torch.nn.GRU has no reset_after=False variant (it always applies "
                             "the reset after the recurrent product)")
        return super().to_torch()

    def _run_direction(self, x, initial, weights, lengths, reverse):
        output, h_n = gru_op(
            x, None if initial is None else initial[0], weights["weight_ih"], weights["weight_hh"],
            weights.get("bias_ih"), weights.get("bias_hh"), lengths=lengths, reverse=reverse,
            reset_after=self.reset_after, backend=self.backend,
        )
        return output, (h_n,)


# ---------------------------------------------------------------------------------------------
# RNN
# ---------------------------------------------------------------------------------------------

class RNN(_GatedRNNBase):
    """Drop-in ``torch.nn.RNN`` (Elman, tanh or relu; same arguments, parameters, contract).

    Args: as ``torch.nn.RNN`` (input_size, hidden_size, num_layers=1, nonlinearity='tanh',
    bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None),
    plus keyword ``backend``.

    ``forward(input, hx=None) -> (output, h_n)``: shapes as ``torch.nn.RNN``.
    """

    _torch_class = torch.nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None, *, backend: Optional[str] = None, **kwargs) -> None:
        _reject_kwargs("RNN", kwargs)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: Unknown nonlinearity {nonlinearity!r}. Select from 'tanh' or 'relu'.")
        self.nonlinearity = nonlinearity  # set before RNNBase.__init__, as torch.nn.RNN does
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype, backend=backend)

    def _config(self) -> dict:
        return dict(super()._config(), nonlinearity=self.nonlinearity)

    @classmethod
    def _config_of(cls, module) -> dict:
        return dict(super()._config_of(module), nonlinearity=module.nonlinearity)

    def _run_direction(self, x, initial, weights, lengths, reverse):
        output, h_n = rnn_op(
            x, None if initial is None else initial[0], weights["weight_ih"], weights["weight_hh"],
            weights.get("bias_ih"), weights.get("bias_hh"), nonlinearity=self.nonlinearity, lengths=lengths,
            reverse=reverse, backend=self.backend,
        )
        return output, (h_n,)
