"""``gatedrnn.conv2d`` and ``gatedrnn.conv1d``: convolution on every backend, with autograd.

Semantics are exactly ``torch.nn.functional.conv2d``/``conv1d`` (a cross-correlation, NCHW)::

    y[n, o, i, j] = b[o] + sum_{c, kh, kw} w[o, c, kh, kw] * x_pad[n, g(o)*C_in/groups + c, i*sh + kh*dh, j*sw + kw*dw]

Custom ops (all arguments explicit; ``padding`` is (top, bottom, left, right), which also
covers the asymmetric ``"same"`` padding of an even kernel)::

    gatedrnn::conv2d(input, weight, bias?, stride[2], padding[4], dilation[2], groups, backend) -> output
    gatedrnn::conv2d_backward(grad_output, input, weight, stride, padding, dilation, groups,
                              backend, output_mask[3]) -> (grad_input, grad_weight, grad_bias)

``output_mask`` = (input gradient wanted, weight gradient wanted, bias gradient wanted); an
unwanted gradient comes back as an empty tensor of shape (0,). The backward op has an autograd
of its own (the double backward, on these two ops), so ``create_graph=True`` works. (The bias gradient is a pass over
grad_output, 0.03 ms of the 1.2 ms CPU backward of a ResNet 1x1/2 layer: skipped without a bias.)

Output layout: as torch's conv2d, the output and the input and weight gradients are
channels_last when the input or the weight is channels_last (and not plainly contiguous too),
else contiguous, on every backend (the fake implementations say the same); a backend's result
in another layout is copied into that one.

Backend contract (tensors of one dtype and device, N >= 1; contiguous for the CPU backends,
as given for ``triton``, whose kernels read through strides, so channels_last input is not copied):
    conv2d_forward(x, w, b, stride, padding, dilation, groups) -> y
    conv2d_backward(grad_y, x, w, stride, padding, dilation, groups, output_mask) -> (gx, gw, gb)
        (an unwanted gradient may come back as anything: the op replaces it by an empty tensor)
The Triton kernels are ``kernels/conv.py`` (implicit GEMM; direct kernels for depthwise).
The Cython extension ``gatedrnn._cpu.conv`` takes NumPy arrays with outputs preallocated::
    conv2d_forward(x, w, bias, sh, sw, pad_top, pad_left, dh, dw, groups, y, num_threads)
    conv2d_backward(grad_y, x, w, sh, sw, pad_top, pad_left, dh, dw, groups,
                    grad_x, grad_w, grad_b, bint need_input, bint need_weight, bint need_bias, num_threads)
(the bottom/right padding is implied by y's size).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .. import oracle
from ._recurrence import (autocast_cast, call_autocast_dtype, call_without_autocast, eager_or_op, from_numpy,
                          new_output, run_cpu_kernel, to_numpy64)
from ._spatial import (Implementations, check_same, check_tensor, cpu_module, empty_in_format, in_format, int_tuple,
                       is_channels_last, is_int, pick_backend)

__all__ = ["conv2d", "conv1d"]


def output_size(size: int, kernel: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def _output_shape(input: Tensor, weight: Tensor, stride, padding, dilation) -> Tuple[int, int, int, int]:
    return (
        input.shape[0], weight.shape[0],
        output_size(input.shape[2], weight.shape[2], stride[0], dilation[0], padding[0], padding[1]),
        output_size(input.shape[3], weight.shape[3], stride[1], dilation[1], padding[2], padding[3]),
    )


# --- numpy backend: the float64 oracle --------------------------------------------------------

def _numpy_forward(x, w, b, stride, padding, dilation, groups):
    y = oracle.conv2d_forward(to_numpy64(x), to_numpy64(w), to_numpy64(b), stride, tuple(padding), dilation, groups)
    return from_numpy(y, x)


def _numpy_backward(grad_y, x, w, stride, padding, dilation, groups, output_mask):
    gx, gw, gb = oracle.conv2d_backward(to_numpy64(grad_y), to_numpy64(x), to_numpy64(w), stride,
                                        tuple(padding), dilation, groups)
    return from_numpy(gx, x), from_numpy(gw, w), from_numpy(gb, w)


# --- cython backend -----------------------------------------------------------------------------

def _cython():
    extension = cpu_module("conv")

    def forward(x, w, b, stride, padding, dilation, groups):
        y = new_output(_output_shape(x, w, stride, padding, dilation), x.dtype, x.device)
        bias = b if b is not None else x.new_zeros(w.shape[0])
        # float32 on the register kernel never reaches BLAS in the forward
        calls_blas = not (extension.REGISTER_KERNEL and x.dtype == torch.float32)
        run_cpu_kernel(extension.conv2d_forward, x, w, bias, stride[0], stride[1], padding[0], padding[2],
                       dilation[0], dilation[1], groups, y, calls_blas=calls_blas)
        return y

    def backward(grad_y, x, w, stride, padding, dilation, groups, output_mask):
        grad_x = new_output(x.shape if output_mask[0] else (0,), x.dtype, x.device)
        grad_w = new_output(w.shape if output_mask[1] else (0,), w.dtype, w.device)
        grad_b = new_output((w.shape[0],) if output_mask[2] else (0,), w.dtype, w.device)
        # The extension takes the two big gradients flattened, so an unwanted one can be empty.
        run_cpu_kernel(extension.conv2d_backward, grad_y, x, w, stride[0], stride[1], padding[0], padding[2],
                       dilation[0], dilation[1], groups, grad_x.view(-1), grad_w.view(-1), grad_b,
                       bool(output_mask[0]), bool(output_mask[1]), bool(output_mask[2]))
        return grad_x, grad_w, grad_b

    return forward, backward


# --- triton backend -----------------------------------------------------------------------------

def _triton():
    from ..kernels import conv as kernels

    return kernels.conv2d_forward, kernels.conv2d_backward


_implementations = Implementations("conv2d", {
    "numpy": lambda: (_numpy_forward, _numpy_backward),
    "cython": _cython,
    "triton": _triton,
})


def _memory_format(input: Tensor, weight: Tensor) -> torch.memory_format:
    """The layout of the output and of the input and weight gradients, as torch's conv2d picks it
    (CPU and CUDA): channels_last when the input or the weight is, else contiguous."""
    return torch.channels_last if is_channels_last(input) or is_channels_last(weight) else torch.contiguous_format


def _as_backend_reads(backend: str, *tensors):
    """The tensors as the backend reads them: the Triton kernels take any strides (channels_last
    input without a copy); the CPU backends want contiguous arrays."""
    if backend == "triton":
        return tensors
    return tuple(t.contiguous() if t is not None else None for t in tensors)


# --- custom ops ---------------------------------------------------------------------------------

def _conv2d_forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
                    padding: Sequence[int], dilation: Sequence[int], groups: int, backend: str) -> Tensor:
    """The forward on a backend: gatedrnn::conv2d's body, which an eager call with nothing for
    autograd to record runs directly (``eager_or_op``)."""
    memory_format = _memory_format(input, weight)
    input, weight, bias = _as_backend_reads(backend, input, weight, bias)
    if input.shape[0] == 0:
        return empty_in_format(_output_shape(input, weight, stride, padding, dilation), input, memory_format).zero_()
    forward, _ = _implementations(backend)
    return in_format(forward(input, weight, bias, list(stride), list(padding), list(dilation), groups),
                      memory_format)


_conv2d_op = torch.library.custom_op("gatedrnn::conv2d", _conv2d_forward, mutates_args=())


@_conv2d_op.register_fake
def _(input, weight, bias, stride, padding, dilation, groups, backend):
    return empty_in_format(_output_shape(input, weight, stride, padding, dilation), input,
                           _memory_format(input, weight))


def _conv2d_backward_body(grad_output: Tensor, input: Tensor, weight: Tensor, stride: Sequence[int],
                          padding: Sequence[int], dilation: Sequence[int], groups: int, backend: str,
                          output_mask: Sequence[bool]) -> Tuple[Tensor, Tensor, Tensor]:
    memory_format = _memory_format(input, weight)
    grad_output, input, weight = _as_backend_reads(backend, grad_output, input, weight)
    if input.shape[0] == 0:
        grad_input = empty_in_format(input.shape, input, memory_format).zero_() if output_mask[0] else None
        grad_weight = empty_in_format(weight.shape, weight, memory_format).zero_() if output_mask[1] else None
        return (grad_input if grad_input is not None else input.new_zeros((0,)),
                grad_weight if grad_weight is not None else weight.new_zeros((0,)),
                weight.new_zeros(weight.shape[0] if output_mask[2] else 0))
    _, backward = _implementations(backend)
    grad_input, grad_weight, grad_bias = backward(grad_output, input, weight, list(stride), list(padding),
                                                  list(dilation), groups, list(output_mask))
    # The numpy backend computes every gradient; the op returns only what was asked for.
    grad_input = in_format(grad_input, memory_format) if output_mask[0] else input.new_empty((0,))
    grad_weight = in_format(grad_weight, memory_format) if output_mask[1] else weight.new_empty((0,))
    if not output_mask[2]:
        grad_bias = weight.new_empty((0,))
    return grad_input, grad_weight, grad_bias


_conv2d_backward_op = torch.library.custom_op("gatedrnn::conv2d_backward", _conv2d_backward_body, mutates_args=())
# (differentiable too: its autograd, the double backward, is registered below)
_conv2d_backward = eager_or_op(_conv2d_backward_op, _conv2d_backward_body)


@_conv2d_backward_op.register_fake
def _(grad_output, input, weight, stride, padding, dilation, groups, backend, output_mask):
    memory_format = _memory_format(input, weight)
    return (empty_in_format(input.shape, input, memory_format) if output_mask[0] else input.new_empty((0,)),
            empty_in_format(weight.shape, weight, memory_format) if output_mask[1] else weight.new_empty((0,)),
            weight.new_empty(weight.shape[0] if output_mask[2] else 0))


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, backend = inputs
    ctx.save_for_backward(input, weight)
    ctx.arguments = (stride, padding, dilation, groups, backend)


def _backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    need_input, need_weight, need_bias = ctx.needs_input_grad[:3]
    grad_input, grad_weight, grad_bias = call_without_autocast(
        input.device.type, _conv2d_backward, grad_output, input, weight, *ctx.arguments,
        [need_input, need_weight, need_bias])
    return (grad_input if need_input else None, grad_weight if need_weight else None,
            grad_bias if need_bias else None, None, None, None, None, None)


_conv2d_op.register_autograd(_backward, setup_context=_setup_context)
# what the public functions call: the op, or its body where nothing needs the dispatch
_conv2d = eager_or_op(_conv2d_op, _conv2d_forward, _setup_context, _backward)


# --- double backward: the backward op is linear in grad_output and bilinear with input/weight ---

def _backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, stride, padding, dilation, groups, backend, output_mask = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.arguments = (stride, padding, dilation, groups, backend)
    ctx.output_mask = list(output_mask)


def _double_backward(ctx, grad_grad_input, grad_grad_weight, grad_grad_bias):
    """Gradients of <gg_x, grad_input> + <gg_w, grad_weight> + <gg_b, grad_bias>, where
    grad_input = conv_input_grad(grad_output, weight), grad_weight = conv_weight_grad(input,
    grad_output), grad_bias = grad_output summed over N, H, W:
        d/d grad_output = conv2d(gg_x, weight) + conv2d(input, gg_w) + gg_b (broadcast)
        d/d input = conv_input_grad(grad_output, gg_w),  d/d weight = conv_weight_grad(gg_x, grad_output)
    all on the same ops (so they are differentiable again)."""
    grad_output, input, weight = ctx.saved_tensors
    stride, padding, dilation, groups, backend = ctx.arguments
    # A gradient the backward did not compute (its output_mask entry off: an empty tensor) or
    # that nothing used (None) contributes nothing.
    grad_grad_input, grad_grad_weight, grad_grad_bias = (
        g if wanted and g is not None and g.numel() else None
        for g, wanted in zip((grad_grad_input, grad_grad_weight, grad_grad_bias), ctx.output_mask))
    need_grad_output, need_input, need_weight = ctx.needs_input_grad[:3]

    def run():
        result_grad_output = result_input = result_weight = None
        if need_grad_output:
            terms = []
            if grad_grad_input is not None:
                terms.append(_conv2d(grad_grad_input, weight, None, stride, padding, dilation, groups, backend))
            if grad_grad_weight is not None:
                terms.append(_conv2d(input, grad_grad_weight, None, stride, padding, dilation, groups, backend))
            if grad_grad_bias is not None:
                terms.append(grad_grad_bias.reshape(1, -1, 1, 1).expand(grad_output.shape))
            result_grad_output = sum(terms[1:], terms[0]) if terms else torch.zeros_like(grad_output)
        if need_input and grad_grad_weight is not None:
            result_input = _conv2d_backward(grad_output, input, grad_grad_weight, stride, padding, dilation, groups,
                                            backend, [True, False, False])[0]
        if need_weight and grad_grad_input is not None:
            result_weight = _conv2d_backward(grad_output, grad_grad_input, weight, stride, padding, dilation, groups,
                                             backend, [False, True, False])[1]
        return result_grad_output, result_input, result_weight

    return call_without_autocast(input.device.type, run) + (None,) * 6


_conv2d_backward_op.register_autograd(_double_backward, setup_context=_backward_setup_context)


# --- public functions ---------------------------------------------------------------------------

def _padding(padding, spatial: int, kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int],
             op: str) -> Tuple[int, ...]:
    """Explicit (begin, end) padding per spatial axis, flattened: (top, bottom, left, right) in 2-D."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * spatial)
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}: padding='same' needs stride 1 (torch's rule), got stride={tuple(stride)}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)  # the odd element goes at the end, as torch does
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"{op}: padding must be 'same', 'valid', an int or a sequence of {spatial} ints, "
                         f"got {padding!r}")
    pads = int_tuple(padding, spatial, "padding", op)
    if any(p < 0 for p in pads):
        raise ValueError(f"{op}: padding must be non-negative, got padding={padding!r}")
    return tuple(p for p in pads for _ in range(2))


# Validated geometry of recent calls, keyed by everything _checked_geometry reads: a repeated
# call (every layer of a network, every step) skips ~10 us of checks (more with cold caches:
# ~70 us of a 1x1/2 forward's 110 us of Python in perf/bench_conv.py's alternation). Bounded;
# cleared when full.
_GEOMETRY_CACHE: dict = {}
_GEOMETRY_CACHE_SIZE = 1024
_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def _geometry_value(value):
    """``value`` as part of a cache key, or None when it is not a plain int, str or sequence of
    ints: exact types, so that ``True`` (rejected by the checks) never looks up the entry of
    ``1``."""
    kind = type(value)
    if kind is int or kind is str:
        return value
    if (kind is tuple or kind is list) and all(type(v) is int for v in value):
        return tuple(value)
    return None


def _geometry_key(op, input, weight, bias, stride, padding, dilation, groups):
    """The cache key of a call, or None (plain tensors only: no subclass, fake or symbolic
    shapes, nothing while torch.compile traces)."""
    if type(input) not in _PLAIN_TENSORS or type(weight) not in _PLAIN_TENSORS:
        return None
    if bias is None:
        bias_key = None
    elif type(bias) in _PLAIN_TENSORS:
        bias_key = (bias.shape, bias.dtype, bias.device)
    else:
        return None
    geometry = (_geometry_value(stride), _geometry_value(padding), _geometry_value(dilation))
    if None in geometry or type(groups) is not int or torch.compiler.is_compiling():
        return None
    return (op, input.shape, input.dtype, input.device, weight.shape, weight.dtype, weight.device,
            bias_key, groups) + geometry


def _checked_geometry(op, input, weight, bias, stride, padding, dilation, groups, spatial):
    """Every check of a conv{spatial}d call but the backend's; returns (stride, pads, dilation)
    as tuples, pads explicit (begin, end) per axis."""
    input = check_tensor(input, "input", op)
    weight = check_tensor(weight, "weight", op)
    if not input.is_floating_point():
        raise TypeError(f"{op}: input must be a floating-point tensor, got dtype {input.dtype}")
    layout = "(N, C_in, H, W) or (C_in, H, W)" if spatial == 2 else "(N, C_in, L) or (C_in, L)"
    if input.dim() not in (spatial + 1, spatial + 2):
        raise ValueError(f"{op}: input must be {spatial + 2}-D {layout}, got shape {tuple(input.shape)}")
    if weight.dim() != spatial + 2:
        kernel_dims = "KH, KW" if spatial == 2 else "K"
        raise ValueError(f"{op}: weight must be {spatial + 2}-D (C_out, C_in/groups, {kernel_dims}), "
                         f"got shape {tuple(weight.shape)}")
    check_same(input, weight, "weight", op)
    if not is_int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    stride = int_tuple(stride, spatial, "stride", op)
    dilation = int_tuple(dilation, spatial, "dilation", op)
    if any(s < 1 for s in stride):
        raise ValueError(f"{op}: stride must be positive, got stride={tuple(stride)}")
    if any(d < 1 for d in dilation):
        raise ValueError(f"{op}: dilation must be positive, got dilation={tuple(dilation)}")
    c_out, c_group = weight.shape[:2]
    c_in = input.shape[-spatial - 1]
    if c_out % groups:
        raise ValueError(f"{op}: weight.shape[0] (out_channels) = {c_out} must be divisible by groups={groups}")
    if c_in != c_group * groups:
        raise ValueError(
            f"{op}: input has {c_in} channels but weight {tuple(weight.shape)} with groups={groups} expects "
            f"weight.shape[1] * groups = {c_group * groups}"
        )
    if bias is not None:
        check_tensor(bias, "bias", op)
        if tuple(bias.shape) != (c_out,):
            raise ValueError(f"{op}: bias must have shape (out_channels,) = ({c_out},), got {tuple(bias.shape)}")
        check_same(input, bias, "bias", op)
    kernel = tuple(weight.shape[2:])
    pads = _padding(padding, spatial, kernel, dilation, stride, op)
    spatial_size = tuple(input.shape[-spatial:])
    for axis in range(spatial):
        padded = spatial_size[axis] + pads[2 * axis] + pads[2 * axis + 1]
        extent = dilation[axis] * (kernel[axis] - 1) + 1
        if extent > padded:
            raise ValueError(
                f"{op}: kernel size {kernel} (extent {extent} with dilation {dilation[axis]}) is larger than "
                f"the padded input along spatial axis {axis} ({spatial_size[axis]} + padding "
                f"{pads[2 * axis]} + {pads[2 * axis + 1]} = {padded})"
            )
    return stride, pads, dilation


def _prepare(op, input, weight, bias, stride, padding, dilation, groups, backend, spatial):
    """Validate a conv{spatial}d call; return 4-D input/weight and explicit 2-D geometry.

    Under autocast, input, weight and bias first go to the dtype the call computes in, as torch's
    convolutions (on autocast's lower-precision list) do: the autocast dtype, or float32 on the
    Cython backend, which has no 16-bit kernels."""
    autocast = call_autocast_dtype(input, backend, "conv2d")
    if autocast is not None:
        input, weight, bias = (autocast_cast(autocast, t) for t in (input, weight, bias))
    key = _geometry_key(op, input, weight, bias, stride, padding, dilation, groups)
    geometry = _GEOMETRY_CACHE.get(key) if key is not None else None
    if geometry is None:
        geometry = _checked_geometry(op, input, weight, bias, stride, padding, dilation, groups, spatial)
        if key is not None:
            if len(_GEOMETRY_CACHE) >= _GEOMETRY_CACHE_SIZE:
                _GEOMETRY_CACHE.clear()
            _GEOMETRY_CACHE[key] = geometry
    stride, pads, dilation = geometry
    name = pick_backend(backend, input.dtype, input.device)
    unbatched = input.dim() == spatial + 1
    if unbatched:
        input = input.unsqueeze(0)
    if spatial == 1:
        input, weight = input.unsqueeze(2), weight.unsqueeze(2)
        stride, dilation, pads = (1,) + stride, (1,) + dilation, (0, 0) + pads
    return input, weight, bias, list(stride), list(pads), list(dilation), groups, name, unbatched


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int], str] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """2-D convolution with ``torch.nn.functional.conv2d`` semantics, on any backend.

    Args:
        input: (N, C_in, H, W), or (C_in, H, W) unbatched.
        weight: (C_out, C_in/groups, KH, KW).
        bias: (C_out,) or None.
        stride, dilation: int or (h, w), positive.
        padding: int or (h, w), non-negative, or "valid" (none) or "same" (output size = input
            size; stride 1 only; an odd total padding puts the extra row/column at the end).
        groups: C_in and C_out are divisible by it; groups = C_in is depthwise.
        backend: "triton", "cython" or "numpy"; None picks one (see ``gatedrnn.backends``).

    Returns:
        (N, C_out, H_out, W_out) (no N when unbatched), with
        H_out = (H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1) // stride_h + 1.
        Differentiable with respect to input, weight and bias.
    """
    op = "conv2d"
    input, weight, bias, stride, pads, dilation, groups, name, unbatched = _prepare(
        op, input, weight, bias, stride, padding, dilation, groups, backend, spatial=2)
    output = call_without_autocast(input.device.type, _conv2d, input, weight, bias, stride, pads, dilation, groups,
                                   name)
    return output.squeeze(0) if unbatched else output


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: Union[int, Sequence[int]] = 1,
    padding: Union[int, Sequence[int], str] = 0,
    dilation: Union[int, Sequence[int]] = 1,
    groups: int = 1,
    *,
    backend: Optional[str] = None,
) -> Tensor:
    """1-D convolution with ``torch.nn.functional.conv1d`` semantics (a conv2d of height 1).

    Args:
        input: (N, C_in, L), or (C_in, L) unbatched. weight: (C_out, C_in/groups, K).
        bias: (C_out,) or None. stride, padding, dilation, groups: as for :func:`conv2d`
        (ints or 1-tuples; padding also "same"/"valid").

    Returns:
        (N, C_out, L_out) (no N when unbatched), L_out = (L + 2*padding - dilation*(K-1) - 1) // stride + 1.
    """
    op = "conv1d"
    input, weight, bias, stride, pads, dilation, groups, name, unbatched = _prepare(
        op, input, weight, bias, stride, padding, dilation, groups, backend, spatial=1)
    output = call_without_autocast(input.device.type, _conv2d, input, weight, bias, stride, pads, dilation, groups,
                                   name).squeeze(2)
    return output.squeeze(0) if unbatched else output
