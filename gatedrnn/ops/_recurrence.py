"""Machinery shared by the recurrent ops (``lstm``, ``gru``, ``rnn``).

Each cell module (``gatedrnn/ops/lstm.py`` ...) describes its cell with a :class:`Recurrence`
and hands it, with one forward/backward pair per backend, to :func:`define_ops`, which
registers two ``torch.library`` custom ops (``gatedrnn::<cell>`` and
``gatedrnn::<cell>_backward``) with fake (meta) implementations and autograd, so the ops trace
under ``torch.compile(fullgraph=True)``.

Argument layout of the ops (all positional; ``states`` is ``h0, c0`` for LSTM, ``h0`` otherwise;
``options`` is ``reset_after`` for GRU, ``nonlinearity`` for RNN, nothing for LSTM)::

    gatedrnn::<cell>(input, *states, weight_ih, weight_hh, bias_ih?, bias_hh?, lengths, reverse,
                     *options, backend) -> (output, *final_states, workspace)
    gatedrnn::<cell>_backward(grad_output, *grad_final_states, input, *states, weight_ih,
                     weight_hh, bias_ih?, bias_hh?, lengths, reverse, *options, output,
                     workspace, backend) -> (grad_input, *grad_states, grad_weight_ih,
                     grad_weight_hh, grad_bias_ih, grad_bias_hh)

A backend's forward/backward take the same arguments minus ``backend``, on contiguous tensors
of one dtype and device, with T >= 1 and B >= 1: the empty cases are answered here and never
reach a kernel. Biases may be None; bias gradients are always returned (dropped here).
"""
from __future__ import annotations

import functools
import importlib
import numbers
import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..backends import resolve_backend

POISON_ENV = "GATEDRNN_POISON_OUTPUTS"

# Dtypes each backend computes in; others get a TypeError that names the fix.
_BACKEND_DTYPES = {
    "cython": (torch.float32, torch.float64),
    "triton": (torch.float32, torch.bfloat16, torch.float16),
    "numpy": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


@dataclass(frozen=True)
class Recurrence:
    """What distinguishes one recurrent cell from another, for the shared machinery."""

    name: str  # op name, "lstm"
    num_gates: int  # gate rows per hidden unit in the weights (G in G*H)
    num_states: int  # 2 for LSTM (h, c), 1 otherwise
    option_schema: str  # schema of the cell's options after `reverse` ("" if none)
    workspace_width: Callable[..., int]  # (*options) -> W, the workspace is (T, B, W*H)


# ---------------------------------------------------------------------------------------------
# Allocation and conversion helpers used by the backend adapters
# ---------------------------------------------------------------------------------------------


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of recurrent state and accumulation: float32 for the half types, else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def new_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Allocate a tensor a kernel is about to fill.

    A large one on the CPU is advised to use huge pages first (``advise_huge_pages``). With
    ``GATEDRNN_POISON_OUTPUTS=1`` (the test suite sets it) it is filled with NaN, so an entry the
    kernel forgets to write shows up as NaN instead of stale memory.
    """
    tensor = advise_huge_pages(torch.empty(tuple(shape), dtype=dtype, device=device))
    if os.environ.get(POISON_ENV, "0") not in ("", "0"):
        tensor.fill_(float("nan"))
    return tensor


# Tensors of at least this size get the huge-page advice: glibc serves them from mmap whatever
# its (moving) threshold, so they are always fresh memory; below it a block may come from the
# heap, already touched, where the advice would only mark memory malloc hands out again later.
HUGE_PAGE_MIN_BYTES = 32 << 20
HUGE_PAGES_ENV = "GATEDRNN_HUGE_PAGES"


@functools.lru_cache(maxsize=None)
def _huge_page_advice():
    """``advise(address, nbytes)`` from ``gatedrnn._cpu.memory``, or None when that extension is
    not built."""
    try:
        return importlib.import_module("gatedrnn._cpu.memory").advise_huge_pages_at
    except ImportError:
        return None


def advise_huge_pages(tensor: Tensor) -> Tensor:
    """``tensor`` (just allocated, not yet written), after asking Linux to back it with 2 MiB
    pages when it is a CPU tensor of at least HUGE_PAGE_MIN_BYTES: fresh memory that 4 KiB pages
    would fault in one by one on first touch, 23 ms of a 170 ms LSTM forward at T=100, B=64,
    H=512 here (cpu/_huge_pages.h). ``GATEDRNN_HUGE_PAGES=0`` turns the advice off. Does nothing
    elsewhere."""
    if tensor.device.type != "cpu" or type(tensor) is not Tensor:
        return tensor
    nbytes = tensor.numel() * tensor.element_size()
    if nbytes < HUGE_PAGE_MIN_BYTES or os.environ.get(HUGE_PAGES_ENV, "1") == "0":
        return tensor
    advise = _huge_page_advice()
    if advise is not None:
        advise(tensor.data_ptr(), nbytes)
    return tensor


def to_numpy64(tensor: Optional[Tensor]) -> Optional[np.ndarray]:
    """A float64 (or int64 for integer tensors) NumPy copy of ``tensor`` on the CPU."""
    if tensor is None:
        return None
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
        return tensor.to(torch.float64).numpy()
    return tensor.to(torch.int64).numpy()


def from_numpy(array: np.ndarray, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """``array`` as a tensor on ``like``'s device, in ``dtype`` (default ``like``'s dtype)."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(device=like.device, dtype=dtype or like.dtype)


def combined_bias(bias_ih: Optional[Tensor], bias_hh: Optional[Tensor], size: int, like: Tensor) -> Tensor:
    """``bias_ih + bias_hh`` (either may be None) as one contiguous vector of ``size``."""
    bias = torch.zeros(size, dtype=like.dtype, device=like.device)
    if bias_ih is not None:
        bias += bias_ih
    if bias_hh is not None:
        bias += bias_hh
    return bias


def bias_or_zeros(bias: Optional[Tensor], size: int, like: Tensor) -> Tensor:
    return bias if bias is not None else torch.zeros(size, dtype=like.dtype, device=like.device)


_blas_lock = threading.Lock()
_blas_controllers = None


def _scipy_blas_controllers():
    """threadpoolctl's handle on the BLAS that ``scipy.linalg.cython_blas`` calls (found once)."""
    global _blas_controllers
    if _blas_controllers is None:
        import scipy.linalg  # noqa: F401  (loads scipy's BLAS so threadpoolctl can see it)
        from threadpoolctl import ThreadpoolController

        blas = ThreadpoolController().select(user_api="blas")
        scipy_own = [lib for lib in blas.lib_controllers if "scipy" in os.path.basename(os.path.dirname(lib.filepath))]
        _blas_controllers = scipy_own or blas.lib_controllers
    return _blas_controllers


def _set_blas_threads(lib, count: int) -> None:
    """Set ``lib``'s thread count for the whole process. threadpoolctl >= 3.8 lets only its first
    ("controlling") Python thread change a pthreads OpenBLAS and silently ignores the others, so
    a kernel called from a second Python thread would run BLAS threaded inside its OpenMP
    threads (OpenBLAS warns that this may hang). ``_blas_lock`` already serialises our callers:
    use the library's own setter where threadpoolctl has one, else its public call (older
    versions have no such rule)."""
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(count)


def _plain_call(present: Sequence[Tensor]) -> bool:
    """Whether nothing but autograd may need to see an op called on ``present``: plain tensors, and
    no compiler, tracer, mode or functorch transform."""
    # nn.Parameter is a plain tensor to the dispatcher; FakeTensor, functional tensors and other
    # subclasses are not
    if any(type(t) is not Tensor and type(t) is not torch.nn.Parameter for t in present):
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0:
        return False
    return torch._C._functorch.peek_interpreter_stack() is None  # vmap, grad, jvp


def _records(present: Sequence[Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in present)


def eager_call(*tensors: Optional[Tensor]) -> bool:
    """Whether an op may call its backend directly instead of through its ``torch.library`` custom
    op: plain tensors, nothing for autograd to record, and no compiler, tracer, mode or functorch
    transform that has to see the op. The custom op's dispatch costs about 30 us a call (5% of
    a ResNet 1x1/2 convolution's CPU forward, a third of a one-step LSTM call); where this says
    False the op goes through it (or, for a call autograd records, :func:`eager_or_op`'s
    autograd.Function)."""
    present = [t for t in tensors if t is not None]
    return not _records(present) and _plain_call(present)


def _eager_autograd(name: str, body: Callable, setup_context: Callable, backward: Callable) -> type:
    """An autograd.Function that runs an op's body and the very ``setup_context`` and ``backward``
    registered with ``op.register_autograd``, as the autograd kernel torch generates for the op
    does (torch/_library/autograd.py: the forward, under no grad, calls setup_context with the
    inputs and the output; the backward calls the registered backward), minus the dispatch."""
    def forward(ctx, *args):
        output = body(*args)
        setup_context(ctx, args, output)
        return output

    return type(f"Eager_{name}", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def eager_or_op(op: Callable, body: Callable, setup_context: Optional[Callable] = None,
                backward: Optional[Callable] = None, inference: Optional[Callable] = None) -> Callable:
    """A function with ``op``'s arguments that runs ``body`` (the custom op's own Python function)
    where :func:`eager_call` allows it, else ``op`` through the dispatcher.

    Given the ``setup_context`` and ``backward`` registered for the op, a plain eager call that
    autograd records runs ``body`` in an autograd.Function built from them (same saved tensors,
    same backward, so the same gradients), skipping the op's dispatch and its generated autograd
    wrapper (a tiny conv2d's forward + backward: 255 -> 145 us; torch's own takes 42). Compilers,
    tracers, modes, functorch and fake tensors still see the op. ``inference``, where given, runs
    instead of ``body`` for a call nothing records: a variant whose outputs that only the
    backward reads (a recurrence's workspace) may come back empty."""
    function = None if backward is None else _eager_autograd(getattr(op, "_name", body.__name__),
                                                               body, setup_context, backward)

    def run(*args):
        present = [a for a in args if isinstance(a, Tensor)]
        if eager_call(*present):
            return (inference or body)(*args)
        if function is not None and _records(present) and _plain_call(present):
            return function.apply(*args)
        return op(*args)

    return run


def run_cpu_kernel(function: Callable, *arguments, calls_blas: bool = True) -> None:
    """Call a ``gatedrnn._cpu`` extension function on tensors (converted to NumPy views).

    The extensions parallelise with OpenMP (``torch.get_num_threads()`` threads) and call BLAS
    from inside their threads, so scipy's BLAS is held to one thread for the call: a threaded
    BLAS inside OpenMP threads would oversubscribe the cores. ``calls_blas=False`` (a call that
    never reaches BLAS) skips that: setting and restoring the thread count costs about 12 us,
    2% of a small convolution.
    """
    converted = [a.detach().numpy() if isinstance(a, Tensor) else a for a in arguments]
    num_threads = torch.get_num_threads()
    if not calls_blas:
        function(*converted, num_threads)
        return
    controllers = _scipy_blas_controllers()
    with _blas_lock:
        previous = [lib.num_threads for lib in controllers]
        for lib in controllers:
            _set_blas_threads(lib, 1)
        try:
            function(*converted, num_threads)
        finally:
            for lib, count in zip(controllers, previous):
                _set_blas_threads(lib, count)


def cpu_extension(name: str):
    """The compiled module ``gatedrnn._cpu.<name>`` (availability was checked by the dispatcher)."""
    return importlib.import_module(f"gatedrnn._cpu.{name}")


# ---------------------------------------------------------------------------------------------
# Input validation shared by the public functions
# ---------------------------------------------------------------------------------------------


def _shape(tensor: Tensor) -> Tuple[int, ...]:
    return tuple(tensor.shape)


def _check_tensor(value, argument: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _check_bool(value, argument: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be a bool, got {type(value).__name__}")
    return bool(value)


def time_major_input(input: Tensor, batch_first: bool) -> Tensor:
    """Check that ``input`` is a 3-D floating tensor; return it as a (T, B, I) view."""
    layout = "(B, T, input_size)" if batch_first else "(T, B, input_size)"
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() != 3:
        raise ValueError(f"input must be 3-D {layout}, got shape {_shape(input)}")
    return input.transpose(0, 1) if batch_first else input


def check_like_input(named: Sequence[Tuple[str, Tensor]], input: Tensor) -> None:
    """Every ``(argument, tensor)`` must share the input's dtype and device."""
    for argument, tensor in named:
        if tensor.dtype != input.dtype:
            raise TypeError(f"{argument} must have the input's dtype {input.dtype}, got {tensor.dtype}")
        if tensor.device != input.device:
            raise ValueError(f"{argument} must be on the input's device {input.device}, got {tensor.device}")


@dataclass
class Prepared:
    """Validated, time-major arguments of one recurrent call, ready for the custom op."""

    input: Tensor
    states: List[Tensor]
    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Optional[Tensor]
    bias_hh: Optional[Tensor]
    lengths: Tensor
    reverse: bool
    backend: str

    def op_arguments(self, *options) -> tuple:
        return (self.input, *self.states, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh,
                self.lengths, self.reverse, *options, self.backend)

    def call(self, op, *options):
        """op on these arguments (and the cell's options), autocast off around it; the op's body
        trusts them (:func:`checked_call`)."""
        return call_without_autocast(self.input.device.type, checked_call, op, *self.op_arguments(*options))


def prepare(spec: Recurrence, input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
            lengths, reverse, batch_first, backend) -> Prepared:
    """Check the arguments of ``gatedrnn.<cell>`` and bring them into the ops' layout.

    Raises TypeError/ValueError naming the argument, what was expected and what was given.
    """
    name = spec.name
    input = _check_tensor(input, "input")
    weight_ih = _check_tensor(weight_ih, "weight_ih")
    weight_hh = _check_tensor(weight_hh, "weight_hh")
    reverse = _check_bool(reverse, "reverse")
    batch_first = _check_bool(batch_first, "batch_first")

    x = time_major_input(input, batch_first)
    seq_len, batch, input_size = x.shape
    dtype, device = input.dtype, input.device

    # Sizes come from weight_hh: (G*H, H).
    if weight_hh.dim() != 2 or weight_hh.shape[0] != spec.num_gates * weight_hh.shape[1]:
        raise ValueError(
            f"weight_hh must be 2-D ({spec.num_gates}*hidden_size, hidden_size) for {name}, "
            f"got shape {_shape(weight_hh)}"
        )
    hidden_size = weight_hh.shape[1]
    gate_rows = spec.num_gates * hidden_size
    if hidden_size < 1:
        raise ValueError(f"hidden_size (weight_hh.shape[1]) must be >= 1, got {hidden_size}")
    if input_size < 1:
        raise ValueError(f"input_size (input.shape[2]) must be >= 1, got {input_size}")
    if _shape(weight_ih) != (gate_rows, input_size):
        raise ValueError(
            f"weight_ih must have shape ({spec.num_gates}*hidden_size, input_size) = "
            f"{(gate_rows, input_size)}, got {_shape(weight_ih)}"
        )
    named = [("weight_ih", weight_ih), ("weight_hh", weight_hh)]
    for argument, bias in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if bias is None:
            continue
        _check_tensor(bias, argument)
        if _shape(bias) != (gate_rows,):
            raise ValueError(
                f"{argument} must have shape ({spec.num_gates}*hidden_size,) = ({gate_rows},), "
                f"got {_shape(bias)}"
            )
        named.append((argument, bias))

    # Initial state(s).
    state_names = ["h0", "c0"][: spec.num_states]
    if hx is None:
        states = [torch.zeros(batch, hidden_size, dtype=dtype, device=device) for _ in state_names]
    else:
        if spec.num_states == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(
                    f"hx must be None or a tuple (h0, c0) of two tensors for {name}, got {type(hx).__name__}"
                    + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else "")
                )
            states = list(hx)
        else:
            if isinstance(hx, (tuple, list)):
                raise TypeError(f"hx must be None or a tensor h0 for {name}, got a {type(hx).__name__}")
            states = [hx]
        for argument, state in zip(state_names, states):
            _check_tensor(state, f"hx ({argument})")
            if _shape(state) != (batch, hidden_size):
                raise ValueError(
                    f"hx ({argument}) must have shape (batch, hidden_size) = {(batch, hidden_size)}, "
                    f"got {_shape(state)}"
                )
            named.append((f"hx ({argument})", state))

    backend_name = resolve_backend(backend, device)
    autocast = autocast_dtype(input, backend_name, name)
    if autocast is not None:
        # each tensor cast once (named holds the same weights, biases and given states; h0 may be c0)
        casts = {id(t): autocast_cast(autocast, t) for t in (x, weight_ih, weight_hh, bias_ih, bias_hh, *states)}
        x, weight_ih, weight_hh, bias_ih, bias_hh = (casts[id(t)] for t in (x, weight_ih, weight_hh, bias_ih,
                                                                            bias_hh))
        states = [casts[id(state)] for state in states]
        named = [(argument, casts[id(tensor)]) for argument, tensor in named]
        input, dtype = x, x.dtype
    check_like_input(named, input)

    lengths = _prepare_lengths(lengths, seq_len, batch)
    if dtype not in _BACKEND_DTYPES[backend_name]:
        supported = ", ".join(str(d) for d in _BACKEND_DTYPES[backend_name])
        raise TypeError(
            f"backend {backend_name!r} does not compute in {dtype} (it supports {supported}); "
            "convert the tensors with .to(...) or choose another backend"
        )
    return Prepared(x, states, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, backend_name)


# The ops torch's autocast runs in its lower precision, where its lists differ by device: on
# CUDA every RNN (cuDNN's), on the CPU lstm and rnn_tanh/rnn_relu but not gru, which runs in
# its input's dtype there (float32 weights and all). (torch's CPU list also leaves a packed
# LSTM alone; our lstm cannot tell packed input from lengths, and casts it.) Convolutions are on
# both lists.
_AUTOCAST_LOW_PRECISION = {"cpu": frozenset({"lstm", "rnn", "conv2d"})}


def call_autocast_dtype(input, backend: Optional[str], op: str) -> Optional[torch.dtype]:
    """:func:`autocast_dtype` for a public call's arguments as given (``backend`` the caller's
    choice or None): None without resolving the backend when input is not a tensor or autocast
    is off on its device (the common case costs one check)."""
    if not isinstance(input, Tensor) or not torch.is_autocast_enabled(input.device.type):
        return None
    return autocast_dtype(input, resolve_backend(backend, input.device), op)


def autocast_dtype(input: Tensor, backend: str, op: str) -> Optional[torch.dtype]:
    """The dtype ``op`` (a cell name or "conv2d") computes in under autocast on input's device,
    or None (autocast off, or a float64 input). The autocast dtype (the input's own for an op
    torch's autocast leaves alone on that device) where ``backend`` computes in it; float32 on
    the Cython backend, which has no 16-bit kernels (16-bit inputs are cast up rather than
    refused)."""
    kind = input.device.type
    if input.dtype == torch.float64 or not torch.is_autocast_enabled(kind):
        return None
    if op in _AUTOCAST_LOW_PRECISION.get(kind, (op,)):
        target = torch.get_autocast_dtype(kind)
    else:
        target = input.dtype
    return target if target in _BACKEND_DTYPES[backend] else torch.float32


class _CheckedCalls(threading.local):
    """How many calls with arguments the functional API has checked this thread is inside."""

    depth = 0


_checked_calls = _CheckedCalls()


def checked_call(fn, *args):
    """fn(*args), telling the recurrent ops' bodies that the functional API has checked these
    arguments (shapes, dtypes, devices, lengths values), so they skip their own checks (about
    10 us a body). The bodies still check every other call: a torch.compile graph (whose traced
    Python does not run again, and skips the data-dependent checks when it did), direct calls of
    ``torch.ops.gatedrnn.*``, and any call under a compiler, tracer, mode, functorch transform or
    tensor subclass (:func:`_plain_call`), whose own code could call an op inside this one."""
    if not _plain_call([a for a in args if isinstance(a, Tensor)]):
        return fn(*args)
    _checked_calls.depth += 1
    try:
        return fn(*args)
    finally:
        _checked_calls.depth -= 1


def call_without_autocast(device_type: str, fn, *args):
    """fn(*args), with autocast off for ``device_type`` around it where it is on. The ops'
    arguments are already in the dtype they compute in (``autocast_dtype``), and the backends'
    own torch products and sums (float32 accumulators, bias gradients) must stay in the dtypes
    the backend chose, not autocast's (it would run a bf16 sum in float32)."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return fn(*args)
    return fn(*args)


def autocast_cast(dtype: torch.dtype, tensor):
    """``tensor`` as autocast hands it to an op computing in ``dtype``: float32 and 16-bit
    tensors cast (differentiably), float64 ones and anything else (None) as they are."""
    if isinstance(tensor, Tensor) and tensor.is_floating_point() and tensor.dtype != torch.float64:
        return tensor.to(dtype)
    return tensor


def _prepare_lengths(lengths, seq_len: int, batch: int) -> Tensor:
    """``lengths`` as a private int64 CPU tensor (B,), checked (the values where not compiling:
    a data-dependent check would break the graph, and the ops' bodies check them there). A
    copy, so the values checked are the values the kernels read (the caller's tensor may be
    pinned and change while the Triton launcher's asynchronous copy is in flight); on the CPU
    whatever the input's device, so the check costs no device synchronisation."""
    if lengths is None:
        return torch.full((batch,), seq_len, dtype=torch.int64)
    if not isinstance(lengths, Tensor):
        if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence):
            raise TypeError(f"lengths must be an integer tensor or a sequence of ints, got {type(lengths).__name__}")
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in lengths):
            raise TypeError("lengths must hold ints only")
        values = [int(v) for v in lengths]  # checked here, as Python ints: no tensor op
        if len(values) != batch:
            raise ValueError(f"lengths must have shape (batch,) = ({batch},), got ({len(values)},)")
        # (while compiling, the op's body checks them: an exception here would break a fullgraph)
        if values and not torch.compiler.is_compiling() and (min(values) < 0 or max(values) > seq_len):
            raise ValueError(f"lengths must lie in [0, T] = [0, {seq_len}], got values in "
                             f"[{min(values)}, {max(values)}]")
        return torch.tensor(values, dtype=torch.int64)
    # (values not while compiling, tracing or faking: there the op's body checks them)
    return copy_lengths(lengths, seq_len, batch, "cpu", values=_plain_call([lengths]))


def copy_lengths(lengths: Tensor, seq_len: int, batch: int, device=None, values: bool = True) -> Tensor:
    """A private int64 copy of ``lengths`` (on ``device``, default its own), checked by
    :func:`check_lengths`: the dtype before the copy converts it, the values (where ``values``)
    on the copy, so the values checked are the values the kernels read."""
    check_lengths(lengths, seq_len, batch, values=False)
    lengths = lengths.to(device=device if device is not None else lengths.device, dtype=torch.int64, copy=True)
    if values:
        check_lengths(lengths, seq_len, batch)
    return lengths


def check_lengths(lengths: Tensor, seq_len: int, batch: int, values: bool = True) -> None:
    """ValueError unless ``lengths`` is an integer tensor (B,) with values in [0, T] (the values
    only where ``values``).

    The functional API runs it where not compiling, and the ops' bodies for every call it did not
    check (:func:`checked_call`): a custom op's body runs eagerly even inside a torch.compile
    graph, and every kernel indexes time by these values, so an unchecked length would read and
    write out of bounds. Direct calls of ``torch.ops.gatedrnn.*`` get the same check."""
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must have an integer dtype, got {lengths.dtype}")
    if _shape(lengths) != (batch,):
        raise ValueError(f"lengths must have shape (batch,) = ({batch},), got {_shape(lengths)}")
    if values and batch:
        low, high = (int(v) for v in torch.aminmax(lengths))
        if low < 0 or high > seq_len:
            raise ValueError(f"lengths must lie in [0, T] = [0, {seq_len}], got values in [{low}, {high}]")


def check_op_tensors(op: str, expected: Sequence[Tuple[str, Optional[Tensor], Tuple[int, ...]]],
                     like: Tensor) -> None:
    """ValueError/TypeError unless each (argument, tensor or None, shape) has that shape and
    like's device (and floating tensors like's dtype).

    Metadata only (no device work): the ops' bodies run it so that a direct call of
    ``torch.ops.gatedrnn.*``, which skips the functional API's checks, cannot make a kernel read
    or write outside a tensor. The functional API has checked all of it with friendlier words."""
    for argument, tensor, shape in expected:
        if tensor is None:
            continue
        if _shape(tensor) != tuple(shape):
            raise ValueError(f"{op}: {argument} must have shape {tuple(shape)}, got {_shape(tensor)}")
        if tensor.device != like.device:
            raise ValueError(f"{op}: {argument} must be on {like.device}, got {tensor.device}")
        if tensor.is_floating_point() and tensor.dtype != like.dtype:
            raise TypeError(f"{op}: {argument} must have dtype {like.dtype}, got {tensor.dtype}")


# ---------------------------------------------------------------------------------------------
# Custom ops
# ---------------------------------------------------------------------------------------------

ForwardFn = Callable[..., Tuple[Tensor, ...]]
BackwardFn = Callable[..., Tuple[Tensor, ...]]


def define_ops(spec: Recurrence, implementations: Dict[str, Callable[[], Tuple[ForwardFn, BackwardFn]]]):
    """Register ``gatedrnn::<name>`` and ``gatedrnn::<name>_backward`` with fake and autograd.

    ``implementations`` maps a backend name to a function returning its (forward, backward)
    pair, called when the backend first runs (so ``triton`` is imported only when used), or a
    triple whose third is an inference forward (the forward's arguments and outputs, the
    workspace empty and not written). Returns a function with the forward op's arguments that
    calls the op, or the op's body directly where nothing needs the dispatch (eager inference:
    :func:`eager_call`, which runs the inference forward where there is one).
    """
    num_states = spec.num_states
    num_options = 1 if spec.option_schema else 0
    state_names = ["h0", "c0"][:num_states]
    options = f", {spec.option_schema}" if spec.option_schema else ""
    common = ("Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, "
              "Tensor lengths, bool reverse" + options)
    forward_schema = (
        "(Tensor input, " + "".join(f"Tensor {s}, " for s in state_names) + common
        + ", str backend) -> (" + ", ".join(["Tensor"] * (num_states + 2)) + ")"
    )
    backward_schema = (
        "(Tensor grad_output, " + "".join(f"Tensor grad_{s[0]}_n, " for s in state_names)
        + "Tensor input, " + "".join(f"Tensor {s}, " for s in state_names) + common
        + ", Tensor output, Tensor workspace, str backend) -> ("
        + ", ".join(["Tensor"] * (num_states + 5)) + ")"
    )
    loaded: Dict[str, Tuple[ForwardFn, BackwardFn]] = {}

    def backend_pair(backend: str) -> Tuple[ForwardFn, BackwardFn]:
        if backend not in loaded:
            if backend not in implementations:
                raise ValueError(f"backend {backend!r} does not implement {spec.name}")
            loaded[backend] = implementations[backend]()
        return loaded[backend]

    def split_forward(args):
        """(input, states, weights/biases/lengths/reverse tuple, options, backend)."""
        states = list(args[1:1 + num_states])
        rest = args[1 + num_states:]
        return args[0], states, rest[:6], list(rest[6:6 + num_options]), rest[-1]

    def workspace_shape(x: Tensor, hidden_size: int, opts) -> Tuple[int, int, int]:
        return (x.shape[0], x.shape[1], spec.workspace_width(*opts) * hidden_size)

    def check_forward_arguments(op, x, states, w_ih, w_hh, b_ih, b_hh, lengths) -> Tensor:
        """The shapes the kernels assume (T, B, I from x, H from weight_hh), and the lengths;
        returns the lengths as a private int64 copy, the values checked being the values the
        kernels read (the caller's tensor may be pinned, and change while a copy to the device
        is in flight), in the dtype every backend takes."""
        if x.dim() != 3 or w_hh.dim() != 2 or w_ih.dim() != 2:
            raise ValueError(f"{op}: input (T, B, I), weight_ih and weight_hh must be 3-D, 2-D and 2-D, got "
                             f"{x.dim()}-D, {w_ih.dim()}-D and {w_hh.dim()}-D")
        seq_len, batch, input_size = x.shape
        hidden_size = w_hh.shape[1]
        rows = spec.num_gates * hidden_size
        check_op_tensors(op, [
            *[(name, state, (batch, hidden_size)) for name, state in zip(state_names, states)],
            ("weight_ih", w_ih, (rows, input_size)), ("weight_hh", w_hh, (rows, hidden_size)),
            ("bias_ih", b_ih, (rows,)), ("bias_hh", b_hh, (rows,)),
        ], x)
        return copy_lengths(lengths, seq_len, batch)

    # Where lengths sit among the forward op's arguments (after input, the states, the weights
    # and biases): the bodies replace them by the int64 copy they checked.
    lengths_at = 1 + num_states + 4

    def check_backward_arguments(grads, forward_args, output, workspace) -> None:
        """check_forward_arguments (its lengths copy put in forward_args), and the gradients,
        output and workspace against the forward's shapes."""
        x, states, (w_ih, w_hh, b_ih, b_hh, lengths, reverse), opts, backend = split_forward(forward_args)
        op = f"gatedrnn::{spec.name}_backward"
        forward_args[lengths_at] = check_forward_arguments(op, x, states, w_ih, w_hh, b_ih, b_hh, lengths)
        hidden_size = w_hh.shape[1]
        sequence_shape = (x.shape[0], x.shape[1], hidden_size)
        check_op_tensors(op, [
            ("grad_output", grads[0], sequence_shape), ("output", output, sequence_shape),
            *[(f"grad_{name[0]}_n", grad, (x.shape[1], hidden_size)) for name, grad in zip(state_names, grads[1:])],
        ], x)
        expected = (workspace_shape(x, hidden_size, opts), x.device, state_dtype(x.dtype))
        if (_shape(workspace), workspace.device, workspace.dtype) != expected:
            raise ValueError(f"{op}: workspace must be the forward's, shape {expected[0]} on {expected[1]} in "
                             f"{expected[2]}, got {_shape(workspace)} on {workspace.device} in {workspace.dtype}")

    def forward(*args):
        return run_forward(args, without_workspace=False)

    def inference(*args):
        """forward for an eager call nothing records: a backend with an inference forward (the
        third of its implementations) writes no workspace and returns an empty one."""
        return run_forward(args, without_workspace=True)

    def run_forward(args, without_workspace: bool):
        args = [a.contiguous() if isinstance(a, Tensor) else a for a in args]
        x, states, (w_ih, w_hh, b_ih, b_hh, lengths, reverse), opts, backend = split_forward(args)
        if not _checked_calls.depth:
            args[lengths_at] = check_forward_arguments(f"gatedrnn::{spec.name}", x, states, w_ih, w_hh, b_ih,
                                                       b_hh, lengths)
        hidden_size = w_hh.shape[1]
        if x.shape[0] == 0 or x.shape[1] == 0:
            # Nothing to run: every sequence keeps its initial state.
            output = x.new_zeros((x.shape[0], x.shape[1], hidden_size))
            workspace = x.new_zeros(workspace_shape(x, hidden_size, opts), dtype=state_dtype(x.dtype))
            return (output, *[s.clone() for s in states], workspace)
        functions = backend_pair(backend)
        forward_fn = functions[2] if without_workspace and len(functions) > 2 else functions[0]
        return tuple(forward_fn(*args[:-1]))

    def forward_fake(*args):
        x, states, (w_ih, w_hh, *_), opts, _backend = split_forward(args)
        hidden_size = w_hh.shape[1]
        return (
            x.new_empty((x.shape[0], x.shape[1], hidden_size)),
            *[s.new_empty(s.shape) for s in states],
            x.new_empty(workspace_shape(x, hidden_size, opts), dtype=state_dtype(x.dtype)),
        )

    def split_backward(args):
        grads = list(args[:1 + num_states])
        forward_args = list(args[1 + num_states:-3]) + [args[-1]]
        return grads, forward_args, args[-3], args[-2]

    def backward(*args):
        args = [a.contiguous() if isinstance(a, Tensor) else a for a in args]
        grads, forward_args, output, workspace = split_backward(args)
        x, states, (w_ih, w_hh, b_ih, b_hh, lengths, reverse), opts, backend = split_forward(forward_args)
        if not _checked_calls.depth:
            check_backward_arguments(grads, forward_args, output, workspace)
        if x.shape[0] == 0 or x.shape[1] == 0:
            # The final states are the initial states: their gradients pass straight through.
            gate_rows = w_hh.shape[0]
            return (
                torch.zeros_like(x), *[g.clone() for g in grads[1:]],
                torch.zeros_like(w_ih), torch.zeros_like(w_hh),
                w_hh.new_zeros(gate_rows), w_hh.new_zeros(gate_rows),
            )
        backward_fn = backend_pair(backend)[1]
        return tuple(backward_fn(*grads, *forward_args[:-1], output, workspace))

    def backward_fake(*args):
        grads, forward_args, _output, _workspace = split_backward(args)
        x, states, (w_ih, w_hh, *_), _opts, _backend = split_forward(forward_args)
        gate_rows = w_hh.shape[0]
        return (
            x.new_empty(x.shape), *[s.new_empty(s.shape) for s in states],
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
            w_hh.new_empty(gate_rows), w_hh.new_empty(gate_rows),
        )

    forward_op = torch.library.custom_op(f"gatedrnn::{spec.name}", forward, mutates_args=(), schema=forward_schema)
    forward_op.register_fake(forward_fake)
    backward_op = torch.library.custom_op(
        f"gatedrnn::{spec.name}_backward", backward, mutates_args=(), schema=backward_schema
    )
    backward_op.register_fake(backward_fake)
    backward_call = eager_or_op(backward_op, backward)

    def setup_context(ctx, inputs, output):
        x, states, (w_ih, w_hh, b_ih, b_hh, lengths, reverse), opts, backend = split_forward(list(inputs))
        ctx.save_for_backward(x, *states, w_ih, w_hh, b_ih, b_hh, lengths, output[0], output[-1])
        # Whether the functional API checked these inputs (checked_call): only then may the
        # backward body trust them (a direct call saves the caller's own lengths tensor).
        ctx.checked = bool(_checked_calls.depth)
        ctx.reverse = reverse
        ctx.options = opts
        ctx.backend = backend

    def autograd_backward(ctx, grad_output, *grad_rest):
        saved = ctx.saved_tensors
        x, states = saved[0], list(saved[1:1 + num_states])
        w_ih, w_hh, b_ih, b_hh, lengths, output, workspace = saved[1 + num_states:]
        # Outputs the loss did not use arrive as None; the kernels want real zeros.
        if grad_output is None:
            grad_output = torch.zeros_like(output)
        grad_finals = [torch.zeros_like(s) if g is None else g for g, s in zip(grad_rest[:num_states], states)]
        # Inputs the functional API checked (its private lengths copy among them), and gradients
        # autograd shaped like the outputs: the backward body can trust them. Otherwise it checks.
        run = (lambda *args: checked_call(backward_call, *args)) if ctx.checked else backward_call
        grads = call_without_autocast(
            x.device.type, run, grad_output, *grad_finals, x, *states, w_ih, w_hh, b_ih, b_hh, lengths,
            ctx.reverse, *ctx.options, output, workspace, ctx.backend,
        )
        grad_x, *grad_states = grads[:1 + num_states]
        grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh = grads[1 + num_states:]
        return (
            grad_x, *grad_states, grad_w_ih, grad_w_hh,
            grad_b_ih if b_ih is not None else None,
            grad_b_hh if b_hh is not None else None,
            None, None, *([None] * num_options), None,
        )

    forward_op.register_autograd(autograd_backward, setup_context=setup_context)
    return eager_or_op(forward_op, forward, setup_context, autograd_backward, inference=inference)


def finish_output(output: Tensor, batch_first: bool) -> Tensor:
    """The (T, B, H) output in the caller's layout."""
    return output.transpose(0, 1) if batch_first else output
