"""``gatedrnn.max_pool2d``, ``avg_pool2d`` and ``adaptive_avg_pool2d`` on every backend, with autograd.

Semantics are exactly torch's (see ``gatedrnn/oracle/pool.py`` for the definitions: output
size with ``ceil_mode``, max-pool ties resolved to the first maximum in row-major window order
with NaN propagating, the three average-pool divisors, adaptive windows
[floor(i*L/O), ceil((i+1)*L/O))).

Custom ops (geometry explicit, stride already defaulted to the kernel)::

    gatedrnn::max_pool2d(input, kernel[2], stride[2], padding[2], dilation[2], ceil_mode, backend)
        -> (output, indices int64, flat h*W + w within the plane)
    gatedrnn::max_pool2d_backward(grad_output, indices, input_size[4], kernel[2], stride[2],
                                  padding[2], dilation[2], backend) -> grad_input
    gatedrnn::avg_pool2d(input, kernel, stride, padding, ceil_mode, count_include_pad,
                         divisor_override?, backend) -> output
    gatedrnn::avg_pool2d_backward(grad_output, input_size, kernel, stride, padding, ceil_mode,
                                  count_include_pad, divisor_override?, backend) -> grad_input
    gatedrnn::adaptive_avg_pool2d(input, output_size[2], backend) -> output
    gatedrnn::adaptive_avg_pool2d_backward(grad_output, input_size, backend) -> grad_input

Each backward op is linear in grad_output and has an autograd of its own (the double backward):
the average pools' is their forward op, max-pool's a gather at the saved indices.

The Cython extension ``gatedrnn._cpu.pool`` (NumPy arrays, outputs preallocated, GIL released,
OpenMP over the N*C planes)::
    max_pool2d_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, y, indices, num_threads)
    max_pool2d_backward(grad_y, indices, grad_x, num_threads)
    avg_pool2d_forward(x, kh, kw, sh, sw, ph, pw, bint count_include_pad, divisor_override (0: none), y, num_threads)
    avg_pool2d_backward(grad_y, kh, kw, sh, sw, ph, pw, bint count_include_pad, divisor_override, grad_x, num_threads)
    adaptive_avg_pool2d_forward(x, y, num_threads)
    adaptive_avg_pool2d_backward(grad_y, grad_x, num_threads)

The triton backend is ``gatedrnn.kernels.pool.TritonPool`` (same methods; it also takes
channels_last tensors as they are and returns its outputs in their layout). Its backward kernels
gather, per input element, the gradients of the windows that contain it (deterministic, no
atomics), so max-pool backward needs the window geometry besides the indices: every backend's
``max_backward`` receives it (the CPU backends scatter by index; they use it only to drop the
gradients of windows that hold no input element, whose indices are not theirs).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import oracle
from ._recurrence import eager_or_op, from_numpy, new_output, run_cpu_kernel, to_numpy64
from ._spatial import (Implementations, check_tensor, cpu_module, empty_in_format, in_format, int_tuple,
                       is_channels_last, is_int, pick_backend)

__all__ = ["max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"]


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output length: a ceil_mode window that would start in the end padding is dropped."""
    span = size + 2 * pad - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_shape(input_shape, kernel, stride, padding, dilation, ceil_mode) -> Tuple[int, int, int, int]:
    return (input_shape[0], input_shape[1]) + tuple(
        pool_output_size(input_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode)
        for a in range(2))


def _without_empty_windows(grad_y: Tensor, input_size, kernel, stride, padding, dilation) -> Tensor:
    """grad_y with zeros at the windows that hold no input element, for the backends that
    scatter by index. Such a window's output is -inf whatever the input, so its gradient goes
    nowhere; but its index (torch's: the first non-negative row and column) can point past the
    plane or alias an element of the next row. Only dilation can step every tap over the input
    (the padding is at most half the kernel), so undilated calls return grad_y itself."""
    if tuple(dilation) == (1, 1):
        return grad_y
    axes = []
    for a in range(2):
        starts = torch.arange(grad_y.shape[2 + a]) * stride[a] - padding[a]
        taps = starts[:, None] + torch.arange(kernel[a]) * dilation[a]
        axes.append(((taps >= 0) & (taps < input_size[2 + a])).any(dim=1))
    meets_input = axes[0][:, None] & axes[1][None, :]
    if bool(meets_input.all()):
        return grad_y
    return grad_y.masked_fill(~meets_input.to(grad_y.device), 0)  # (not a product: inf * 0 is NaN)


# --- numpy backend --------------------------------------------------------------------------------

class _NumpyPool:
    @staticmethod
    def max_forward(x, kernel, stride, padding, dilation, ceil_mode):
        y, indices = oracle.max_pool2d_forward(to_numpy64(x), kernel, stride, padding, dilation, ceil_mode)
        return from_numpy(y, x), from_numpy(indices, x, torch.int64)

    @staticmethod
    def max_backward(grad_y, indices, input_size, kernel, stride, padding, dilation):
        grad_y = _without_empty_windows(grad_y, input_size, kernel, stride, padding, dilation)
        return from_numpy(oracle.max_pool2d_backward(to_numpy64(grad_y), to_numpy64(indices), input_size), grad_y)

    @staticmethod
    def avg_forward(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        y = oracle.avg_pool2d_forward(to_numpy64(x), kernel, stride, padding, ceil_mode, count_include_pad,
                                      divisor_override)
        return from_numpy(y, x)

    @staticmethod
    def avg_backward(grad_y, input_size, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        grad_x = oracle.avg_pool2d_backward(to_numpy64(grad_y), input_size, kernel, stride, padding, ceil_mode,
                                            count_include_pad, divisor_override)
        return from_numpy(grad_x, grad_y)

    @staticmethod
    def adaptive_forward(x, output_size):
        return from_numpy(oracle.adaptive_avg_pool2d_forward(to_numpy64(x), tuple(output_size)), x)

    @staticmethod
    def adaptive_backward(grad_y, input_size):
        return from_numpy(oracle.adaptive_avg_pool2d_backward(to_numpy64(grad_y), input_size), grad_y)


# --- cython backend -------------------------------------------------------------------------------

class _CythonPool:
    def __init__(self):
        self.extension = cpu_module("pool")

    def max_forward(self, x, kernel, stride, padding, dilation, ceil_mode):
        shape = _pool_shape(x.shape, kernel, stride, padding, dilation, ceil_mode)
        y = new_output(shape, x.dtype, x.device)
        indices = torch.empty(shape, dtype=torch.int64, device=x.device)
        run_cpu_kernel(self.extension.max_pool2d_forward, x, *kernel, *stride, *padding, *dilation, y, indices)
        return y, indices

    def max_backward(self, grad_y, indices, input_size, kernel, stride, padding, dilation):
        grad_y = _without_empty_windows(grad_y, input_size, kernel, stride, padding, dilation)
        grad_x = new_output(input_size, grad_y.dtype, grad_y.device)
        run_cpu_kernel(self.extension.max_pool2d_backward, grad_y, indices, grad_x)
        return grad_x

    def avg_forward(self, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        y = new_output(_pool_shape(x.shape, kernel, stride, padding, (1, 1), ceil_mode), x.dtype, x.device)
        run_cpu_kernel(self.extension.avg_pool2d_forward, x, *kernel, *stride, *padding, count_include_pad,
                       divisor_override or 0, y)
        return y

    def avg_backward(self, grad_y, input_size, kernel, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
        grad_x = new_output(input_size, grad_y.dtype, grad_y.device)
        run_cpu_kernel(self.extension.avg_pool2d_backward, grad_y, *kernel, *stride, *padding, count_include_pad,
                       divisor_override or 0, grad_x)
        return grad_x

    def adaptive_forward(self, x, output_size):
        y = new_output(tuple(x.shape[:2]) + tuple(output_size), x.dtype, x.device)
        run_cpu_kernel(self.extension.adaptive_avg_pool2d_forward, x, y)
        return y

    def adaptive_backward(self, grad_y, input_size):
        grad_x = new_output(input_size, grad_y.dtype, grad_y.device)
        run_cpu_kernel(self.extension.adaptive_avg_pool2d_backward, grad_y, grad_x)
        return grad_x


# --- triton backend -------------------------------------------------------------------------------

def _triton():
    from ..kernels import pool as kernels

    return kernels.TritonPool()


_implementations = Implementations("pooling", {
    "numpy": _NumpyPool,
    "cython": _CythonPool,
    "triton": _triton,
})


# --- custom ops -------------------------------------------------------------------------------------
# As torch's pools, the forwards return channels_last outputs (and max-pool indices) for a
# channels_last input. The triton kernels read and write channels_last tensors as they are, and
# their input gradients come in grad_output's layout (as torch's, for a network that stays
# channels_last). The CPU backends compute on contiguous copies: their forward results are laid
# out again, their input gradients come back contiguous (autograd takes either).
_CHANNELS_LAST_BACKENDS = frozenset({"triton"})


def _memory_format(input: Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(input) else torch.contiguous_format


def _backend_layout(t: Tensor, backend: str) -> torch.memory_format:
    """The layout ``backend`` computes in for input (or grad_output) t, and returns."""
    if backend in _CHANNELS_LAST_BACKENDS:
        return _memory_format(t)
    return torch.contiguous_format


def _for_backend(t: Tensor, backend: str) -> Tensor:
    """t as ``backend`` reads it: contiguous, or channels_last where it computes in that layout."""
    return t if _backend_layout(t, backend) == torch.channels_last else t.contiguous()


def _input_gradient(grad_output: Tensor, input_size: Sequence[int], backend: str, compute) -> Tensor:
    """A backward body's input gradient, in the layout ``backend`` returns (``_backend_layout``):
    zeros for an empty grad_output, else ``compute(grad_output as the backend reads it, layout)``
    laid out so."""
    layout = _backend_layout(grad_output, backend)
    if grad_output.numel() == 0:
        return empty_in_format(input_size, grad_output, layout).zero_()
    return in_format(compute(_for_backend(grad_output, backend), layout), layout)


def _max_pool2d_forward(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int], ceil_mode: bool, backend: str) -> Tuple[Tensor, Tensor]:
    memory_format = _memory_format(input)
    input = _for_backend(input, backend)
    shape = _pool_shape(input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    if input.numel() == 0:
        return (empty_in_format(shape, input, memory_format).zero_(),
                empty_in_format(shape, input, memory_format, torch.int64).zero_())
    output, indices = _implementations(backend).max_forward(input, list(kernel_size), list(stride), list(padding),
                                                            list(dilation), ceil_mode)
    return in_format(output, memory_format), in_format(indices, memory_format)


_max_pool2d_op = torch.library.custom_op("gatedrnn::max_pool2d", _max_pool2d_forward, mutates_args=())


@_max_pool2d_op.register_fake
def _(input, kernel_size, stride, padding, dilation, ceil_mode, backend):
    shape = _pool_shape(input.shape, kernel_size, stride, padding, dilation, ceil_mode)
    memory_format = _memory_format(input)
    return empty_in_format(shape, input, memory_format), empty_in_format(shape, input, memory_format, torch.int64)


def _max_pool2d_backward_body(grad_output: Tensor, indices: Tensor, input_size: Sequence[int],
                              kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                              dilation: Sequence[int], backend: str) -> Tensor:
    # the indices are read at grad_output's offsets: the same layout
    return _input_gradient(grad_output, input_size, backend, lambda grad, layout: _implementations(
        backend).max_backward(grad, in_format(indices, layout), list(input_size), list(kernel_size), list(stride),
                              list(padding), list(dilation)))


_max_pool2d_backward_op = torch.library.custom_op(
    "gatedrnn::max_pool2d_backward", _max_pool2d_backward_body, mutates_args=())
_max_pool2d_backward = eager_or_op(_max_pool2d_backward_op, _max_pool2d_backward_body)


@_max_pool2d_backward_op.register_fake
def _(grad_output, indices, input_size, kernel_size, stride, padding, dilation, backend):
    return empty_in_format(input_size, grad_output, _backend_layout(grad_output, backend))


def _max_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.input_size = list(inputs[0].shape)
    ctx.geometry = inputs[1:5]  # kernel_size, stride, padding, dilation
    ctx.backend = inputs[-1]


def _max_backward(ctx, grad_output, _grad_indices):
    (indices,) = ctx.saved_tensors
    grad_input = _max_pool2d_backward(grad_output, indices, ctx.input_size, *ctx.geometry, ctx.backend)
    return grad_input, None, None, None, None, None, None


_max_pool2d_op.register_autograd(_max_backward, setup_context=_max_setup_context)
_max_pool2d = eager_or_op(_max_pool2d_op, _max_pool2d_forward, _max_setup_context, _max_backward)


def _max_backward_setup_context(ctx, inputs, output):
    grad_output, indices, input_size, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(indices)
    ctx.geometry = (input_size, kernel_size, stride, padding, dilation)


def _max_double_backward(ctx, grad_grad_input):
    """The backward scatters grad_output to the input by index (linear in grad_output): its
    gradient gathers grad_grad_input at the same indices (0 for a window that holds no input
    element, whose gradient the backward drops). A gather of saved indices: torch's gather."""
    (indices,) = ctx.saved_tensors
    input_size, kernel_size, stride, padding, dilation = ctx.geometry
    if indices.numel() == 0:
        return (grad_grad_input.new_zeros(indices.shape),) + (None,) * 7
    planes = grad_grad_input.reshape(indices.shape[0], indices.shape[1], input_size[2] * input_size[3])
    # an empty window's index may point past its plane: read a valid element, then zero it
    taken = indices.reshape(indices.shape[0], indices.shape[1], -1).clamp(0, planes.shape[2] - 1)
    gathered = planes.gather(2, taken).reshape(indices.shape)
    gathered = _without_empty_windows(gathered, input_size, kernel_size, stride, padding, dilation)
    return (gathered,) + (None,) * 7


_max_pool2d_backward_op.register_autograd(_max_double_backward, setup_context=_max_backward_setup_context)


def _avg_pool2d_forward(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                        ceil_mode: bool, count_include_pad: bool, divisor_override: Optional[int],
                        backend: str) -> Tensor:
    memory_format = _memory_format(input)
    input = _for_backend(input, backend)
    if input.numel() == 0:
        return empty_in_format(_pool_shape(input.shape, kernel_size, stride, padding, (1, 1), ceil_mode), input,
                               memory_format).zero_()
    return in_format(_implementations(backend).avg_forward(input, list(kernel_size), list(stride), list(padding),
                                                           ceil_mode, count_include_pad, divisor_override),
                     memory_format)


_avg_pool2d_op = torch.library.custom_op("gatedrnn::avg_pool2d", _avg_pool2d_forward, mutates_args=())


@_avg_pool2d_op.register_fake
def _(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend):
    return empty_in_format(_pool_shape(input.shape, kernel_size, stride, padding, (1, 1), ceil_mode), input,
                           _memory_format(input))


def _avg_pool2d_backward_body(grad_output: Tensor, input_size: Sequence[int], kernel_size: Sequence[int],
                              stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                              count_include_pad: bool, divisor_override: Optional[int], backend: str) -> Tensor:
    return _input_gradient(grad_output, input_size, backend, lambda grad, layout: _implementations(
        backend).avg_backward(grad, list(input_size), list(kernel_size), list(stride), list(padding), ceil_mode,
                              count_include_pad, divisor_override))


_avg_pool2d_backward_op = torch.library.custom_op(
    "gatedrnn::avg_pool2d_backward", _avg_pool2d_backward_body, mutates_args=())
_avg_pool2d_backward = eager_or_op(_avg_pool2d_backward_op, _avg_pool2d_backward_body)


@_avg_pool2d_backward_op.register_fake
def _(grad_output, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend):
    return empty_in_format(input_size, grad_output, _backend_layout(grad_output, backend))


def _avg_setup_context(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)
    ctx.arguments = inputs[1:]


def _avg_backward(ctx, grad_output):
    grad_input = _avg_pool2d_backward(grad_output, ctx.input_size, *ctx.arguments)
    return (grad_input,) + (None,) * 7


_avg_pool2d_op.register_autograd(_avg_backward, setup_context=_avg_setup_context)
_avg_pool2d = eager_or_op(_avg_pool2d_op, _avg_pool2d_forward, _avg_setup_context, _avg_backward)


def _avg_backward_setup_context(ctx, inputs, output):
    ctx.arguments = inputs[2:]  # kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override, backend


def _avg_double_backward(ctx, grad_grad_input):
    """The backward is the forward's adjoint (linear in grad_output): its gradient is the
    forward applied to grad_grad_input."""
    return (_avg_pool2d(grad_grad_input, *ctx.arguments),) + (None,) * 8


_avg_pool2d_backward_op.register_autograd(_avg_double_backward, setup_context=_avg_backward_setup_context)


def _adaptive_avg_pool2d_forward(input: Tensor, output_size: Sequence[int], backend: str) -> Tensor:
    memory_format = _memory_format(input)
    input = _for_backend(input, backend)
    if input.numel() == 0 or 0 in output_size:
        return empty_in_format(tuple(input.shape[:2]) + tuple(output_size), input, memory_format).zero_()
    return in_format(_implementations(backend).adaptive_forward(input, list(output_size)), memory_format)


_adaptive_avg_pool2d_op = torch.library.custom_op("gatedrnn::adaptive_avg_pool2d", _adaptive_avg_pool2d_forward,
                                                  mutates_args=())


@_adaptive_avg_pool2d_op.register_fake
def _(input, output_size, backend):
    return empty_in_format(tuple(input.shape[:2]) + tuple(output_size), input, _memory_format(input))


def _adaptive_avg_pool2d_backward_body(grad_output: Tensor, input_size: Sequence[int], backend: str) -> Tensor:
    return _input_gradient(grad_output, input_size, backend,
                           lambda grad, layout: _implementations(backend).adaptive_backward(grad, list(input_size)))


_adaptive_avg_pool2d_backward_op = torch.library.custom_op(
    "gatedrnn::adaptive_avg_pool2d_backward", _adaptive_avg_pool2d_backward_body, mutates_args=())
_adaptive_avg_pool2d_backward = eager_or_op(_adaptive_avg_pool2d_backward_op, _adaptive_avg_pool2d_backward_body)


@_adaptive_avg_pool2d_backward_op.register_fake
def _(grad_output, input_size, backend):
    return empty_in_format(input_size, grad_output, _backend_layout(grad_output, backend))


def _adaptive_setup_context(ctx, inputs, output):
    ctx.input_size = list(inputs[0].shape)
    ctx.backend = inputs[-1]


def _adaptive_backward(ctx, grad_output):
    return _adaptive_avg_pool2d_backward(grad_output, ctx.input_size, ctx.backend), None, None


_adaptive_avg_pool2d_op.register_autograd(_adaptive_backward, setup_context=_adaptive_setup_context)
_adaptive_avg_pool2d = eager_or_op(_adaptive_avg_pool2d_op, _adaptive_avg_pool2d_forward, _adaptive_setup_context,
                                   _adaptive_backward)


def _adaptive_backward_setup_context(ctx, inputs, output):
    ctx.output_size = list(inputs[0].shape[-2:])
    ctx.backend = inputs[-1]


def _adaptive_double_backward(ctx, grad_grad_input):
    """As avg_pool2d's: the forward (to grad_output's size) applied to grad_grad_input."""
    return _adaptive_avg_pool2d(grad_grad_input, ctx.output_size, ctx.backend), None, None


_adaptive_avg_pool2d_backward_op.register_autograd(_adaptive_double_backward,
                                                   setup_context=_adaptive_backward_setup_context)


# --- argument checks --------------------------------------------------------------------------------

def _check_input(input, op: str) -> Tensor:
    input = check_tensor(input, "input", op)
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be a floating-point tensor, got dtype {input.dtype}")
    if input.dim() not in (3, 4):
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W) or 3-D (C, H, W), got shape {tuple(input.shape)}")
    if input.shape[-1] == 0 or input.shape[-2] == 0:
        raise ValueError(f"{op}: input must have non-zero H and W, got shape {tuple(input.shape)}")
    return input


def _check_bool(value, argument: str, op: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{op}: {argument} must be a bool, got {value!r}")
    return value


def _window_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode, max_padding):
    """Checked (kernel, stride, padding, dilation) pairs; the output has at least one element."""
    kernel = int_tuple(kernel_size, 2, "kernel_size", op)
    if stride is None or (isinstance(stride, (tuple, list)) and len(stride) == 0):
        stride = kernel  # torch's default: non-overlapping windows
    stride = int_tuple(stride, 2, "stride", op)
    padding = int_tuple(padding, 2, "padding", op)
    dilation = int_tuple(dilation, 2, "dilation", op)
    for argument, values in (("kernel_size", kernel), ("stride", stride), ("dilation", dilation)):
        if any(v < 1 for v in values):
            raise ValueError(f"{op}: {argument} must be positive, got {argument}={values}")
    if any(p < 0 for p in padding):
        raise ValueError(f"{op}: padding must be non-negative, got padding={padding}")
    for a in range(2):
        if padding[a] > max_padding(kernel[a], dilation[a]):
            raise ValueError(
                f"{op}: padding must be at most half of the kernel size (torch's rule), got padding={padding} "
                f"for kernel_size={kernel}" + (f" and dilation={dilation}" if dilation != (1, 1) else "")
            )
    spatial = tuple(input.shape[-2:])
    for a in range(2):
        if pool_output_size(spatial[a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode) < 1:
            extent = dilation[a] * (kernel[a] - 1) + 1
            raise ValueError(
                f"{op}: kernel_size={kernel} (extent {extent} along axis {a}) is larger than the padded input: "
                f"input spatial size {spatial}, padding={padding}"
            )
    return kernel, stride, padding, dilation


def _batched(input: Tensor) -> Tuple[Tensor, bool]:
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


# --- public functions ---------------------------------------------------------------------------------

def max_pool2d(
    input: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
    *,
    backend: Optional[str] = None,
):
    """2-D max pooling with ``torch.nn.functional.max_pool2d`` semantics.

    Args:
        input: (N, C, H, W) or (C, H, W).
        kernel_size, stride (default: kernel_size), padding, dilation: int or (h, w). Padding is
            implicit -inf and at most half the dilated kernel.
        ceil_mode: round the output size up (a window starting in the end padding is dropped).
        return_indices: also return the flat index h * W + w of each maximum in its plane.
        backend: "triton", "cython" or "numpy"; None picks one.

    Returns:
        output (N, C, H_out, W_out), and with ``return_indices`` also indices (int64, same
        shape). Ties go to the first maximum in row-major window order; NaN propagates.
    """
    op = "max_pool2d"
    input = _check_input(input, op)
    ceil_mode = _check_bool(ceil_mode, "ceil_mode", op)
    return_indices = _check_bool(return_indices, "return_indices", op)
    # torch's max_pool2d_with_indices (the path autograd and return_indices take) allows at most
    # kernel_size // 2 of padding whatever the dilation; the same rule here keeps both paths alike.
    geometry = _window_geometry(op, input, kernel_size, stride, padding, dilation, ceil_mode,
                                lambda k, d: k // 2)
    name = pick_backend(backend, input.dtype, input.device)
    x, unbatched = _batched(input)
    output, indices = _max_pool2d(x, *map(list, geometry), ceil_mode, name)
    if unbatched:
        output, indices = output.squeeze(0), indices.squeeze(0)
    return (output, indices) if return_indices else output


def avg_pool2d(
    input: Tensor,
    kernel_size: Union[int, Sequence[int]],
    stride: Optional[Union[int, Sequence[int]]] = None,
    padding: Union[int, Sequence[int]] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """2-D average pooling with ``torch.nn.functional.avg_pool2d`` semantics.

    Args:
        input: (N, C, H, W) or (C, H, W).
        kernel_size, stride (default: kernel_size), padding (at most kernel_size // 2): int or (h, w).
        ceil_mode: round the output size up.
        count_include_pad: divide by the window size including zero padding (else only the
            input elements it covers).
        divisor_override: a non-zero int that replaces the divisor.
        backend: "triton", "cython" or "numpy"; None picks one.

    Returns:
        (N, C, H_out, W_out) (no N when unbatched).
    """
    op = "avg_pool2d"
    input = _check_input(input, op)
    ceil_mode = _check_bool(ceil_mode, "ceil_mode", op)
    count_include_pad = _check_bool(count_include_pad, "count_include_pad", op)
    if divisor_override is not None and (not is_int(divisor_override) or divisor_override == 0):
        raise ValueError(f"{op}: divisor_override must be None or a non-zero int, got {divisor_override!r}")
    kernel, stride, padding, _ = _window_geometry(op, input, kernel_size, stride, padding, 1, ceil_mode,
                                                  lambda k, d: k // 2)
    name = pick_backend(backend, input.dtype, input.device)
    x, unbatched = _batched(input)
    output = _avg_pool2d(x, list(kernel), list(stride), list(padding), ceil_mode, count_include_pad,
                            None if divisor_override is None else int(divisor_override), name)
    return output.squeeze(0) if unbatched else output


def adaptive_avg_pool2d(
    input: Tensor,
    output_size: Union[int, None, Sequence[Optional[int]]],
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """2-D adaptive average pooling with ``torch.nn.functional.adaptive_avg_pool2d`` semantics.

    Args:
        input: (N, C, H, W) or (C, H, W).
        output_size: int or (OH, OW); None (or a None entry) keeps that input size.
        backend: "triton", "cython" or "numpy"; None picks one.

    Returns:
        (N, C, OH, OW): output (i, j) averages input rows [floor(i*H/OH), ceil((i+1)*H/OH)) and
        the columns likewise.
    """
    op = "adaptive_avg_pool2d"
    input = _check_input(input, op)
    if output_size is None or is_int(output_size):
        output_size = (output_size, output_size)
    if not isinstance(output_size, (tuple, list, torch.Size)) or len(output_size) != 2 or not all(
            v is None or is_int(v) for v in output_size):
        raise TypeError(f"{op}: output_size must be an int, None, or a pair of ints/None, got {output_size!r}")
    size = [int(input.shape[-2 + a]) if output_size[a] is None else int(output_size[a]) for a in range(2)]
    if any(s < 0 for s in size):
        raise ValueError(f"{op}: output_size must be non-negative, got {tuple(output_size)}")
    name = pick_backend(backend, input.dtype, input.device)
    x, unbatched = _batched(input)
    output = _adaptive_avg_pool2d(x, size, name)
    return output.squeeze(0) if unbatched else output
