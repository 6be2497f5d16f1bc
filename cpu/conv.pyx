# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""2-D convolution (torch.nn.functional.conv2d semantics, NCHW) on the CPU: forward and both
gradients, float32/float64.

Method: im2col by tile + BLAS GEMM. The output pixels of one (sample, group) are cut into
tiles of T consecutive pixels; a tile's im2col block (K = C_in/groups * KH * KW rows, T columns)
is unfolded into a per-thread buffer of at most COL_BUDGET elements (so the memory for the
unfolded input is bounded whatever the batch), then one GEMM per tile:

    forward      y[n, g, :, tile] = w_g (Og x K) @ col (K x T)              (+ bias)
    grad input   grad_col = w_g^T (K x Og) @ grad_y[n, g, :, tile]; col2im adds it into grad_x
    grad weight  grad_w_g += grad_y[n, g, :, tile] (Og x T) @ col^T (T x K)

A 1x1 kernel with stride 1 and no padding needs no unfolding: x[n, g] (Cg x H*W) is already
the col matrix, so those calls are direct GEMMs.

Parallelism: OpenMP regions with per-thread buffers. The forward and the weight gradient split
(sample, group, tile) items; weight gradients accumulate in per-thread buffers summed in thread
order afterwards (deterministic for a given thread count). The input gradient splits (sample,
group, block of input channels) items: col2im of neighbouring tiles overlaps in grad_x, but the
rows of one channel block fold back into that block only, so no two threads write one element.
BLAS runs single-threaded inside the threads (the caller limits OpenBLAS).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
cimport openmp

from _common cimport gemm

# Elements of one thread's im2col buffer (512 KiB in float32): about an L2's worth.
cdef Py_ssize_t COL_BUDGET = 131072
# Fewest pixels in a tile, so the GEMM stays efficient when K is large.
cdef Py_ssize_t MIN_TILE = 32


def set_tile_budget(Py_ssize_t col_budget, Py_ssize_t min_tile):
    """Set the im2col buffer budget (elements) and the smallest tile; return the previous pair.

    For tests: a tiny budget makes small problems span many tiles, tile edges falling inside
    output rows, so the tiling is checked without large inputs.
    """
    global COL_BUDGET, MIN_TILE
    if col_budget < 1 or min_tile < 1:
        raise ValueError("set_tile_budget: col_budget and min_tile must be positive")
    previous = (COL_BUDGET, MIN_TILE)
    COL_BUDGET, MIN_TILE = col_budget, min_tile
    return previous


cdef struct Geometry:
    Py_ssize_t batch, channels, height, width       # input
    Py_ssize_t out_channels, out_height, out_width  # output
    Py_ssize_t group_channels, group_out             # C_in/groups, C_out/groups
    Py_ssize_t kernel_h, kernel_w, reduction         # reduction = group_channels * KH * KW
    Py_ssize_t stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w, groups
    Py_ssize_t pixels, tile                          # out_height * out_width, tile length
    bint direct                                      # 1x1, stride 1, no padding: no im2col


cdef Geometry _geometry(Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                        Py_ssize_t out_channels, Py_ssize_t kernel_h, Py_ssize_t kernel_w,
                        Py_ssize_t out_height, Py_ssize_t out_width, int sh, int sw, int pt, int pl,
                        int dh, int dw, int groups):
    """The call's sizes, checked before anything divides by them (cdivision: no Python checks)."""
    cdef Geometry g
    if groups < 1 or channels % groups or out_channels % groups or channels == 0:
        raise ValueError(f"conv2d: channels C_in={channels}, C_out={out_channels} do not fit groups={groups}")
    if kernel_h < 1 or kernel_w < 1 or out_height < 1 or out_width < 1:
        raise ValueError(f"conv2d: kernel {kernel_h}x{kernel_w} and output {out_height}x{out_width} must be non-empty")
    g.batch, g.channels, g.height, g.width = batch, channels, height, width
    g.out_channels, g.out_height, g.out_width = out_channels, out_height, out_width
    g.groups = groups
    g.group_channels = channels // groups
    g.group_out = out_channels // groups
    g.kernel_h, g.kernel_w = kernel_h, kernel_w
    g.reduction = g.group_channels * kernel_h * kernel_w
    g.stride_h, g.stride_w, g.pad_top, g.pad_left, g.dilation_h, g.dilation_w = sh, sw, pt, pl, dh, dw
    g.pixels = out_height * out_width
    g.tile = COL_BUDGET // g.reduction
    if g.tile < MIN_TILE:
        g.tile = MIN_TILE
    if g.tile > g.pixels:
        g.tile = g.pixels
    g.direct = (kernel_h == 1 and kernel_w == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
                and out_height == height and out_width == width)
    return g


cdef inline void _valid_columns(Py_ssize_t offset, Py_ssize_t stride, Py_ssize_t width, Py_ssize_t out_width,
                                Py_ssize_t* low, Py_ssize_t* high) noexcept nogil:
    """[low, high): the output columns ow whose input column ow * stride + offset lies in [0, width)."""
    low[0] = 0 if offset >= 0 else (-offset + stride - 1) // stride
    high[0] = 0 if width - 1 - offset < 0 else (width - 1 - offset) // stride + 1
    if high[0] > out_width:
        high[0] = out_width
    if low[0] > high[0]:
        low[0] = high[0]


cdef void _im2col(const Geometry* g, const floating* x_group, Py_ssize_t first, Py_ssize_t count,
                  floating* col) noexcept nogil:
    """col (K x count) = the input values that output pixels [first, first + count) meet.

    Row r = (c, kh, kw) of col holds x_group[c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw] for
    each pixel p = oh * W_out + ow, or 0 where that falls in the padding. The tile is walked one
    output row at a time: a row either lies in the vertical padding (zeros) or reads one input
    row, of which the in-bounds columns [low, high) are known in advance (a plain copy at stride 1).
    """
    cdef Py_ssize_t c, kh, kw, k, j, oh, ow, segment, ih, offset, low, high, start, stop
    cdef const floating* source
    cdef floating* row
    for c in range(g.group_channels):
        for kh in range(g.kernel_h):
            for kw in range(g.kernel_w):
                row = col + ((c * g.kernel_h + kh) * g.kernel_w + kw) * count
                offset = kw * g.dilation_w - g.pad_left
                _valid_columns(offset, g.stride_w, g.width, g.out_width, &low, &high)
                oh = first // g.out_width
                ow = first - oh * g.out_width
                k = 0
                while k < count:
                    segment = g.out_width - ow
                    if segment > count - k:
                        segment = count - k
                    ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h
                    if ih < 0 or ih >= g.height:
                        memset(row + k, 0, segment * sizeof(floating))
                    else:
                        source = x_group + (c * g.height + ih) * g.width + offset
                        # in-bounds columns of this segment: [start, stop), ow <= start <= stop <= ow + segment
                        start = low if low > ow else ow
                        if start > ow + segment:
                            start = ow + segment
                        stop = high if high < ow + segment else ow + segment
                        if stop < start:
                            stop = start
                        # row[k + (q - ow)] for output columns q in [ow, ow + segment)
                        if start > ow:
                            memset(row + k, 0, (start - ow) * sizeof(floating))
                        if g.stride_w == 1:
                            memcpy(row + k + (start - ow), source + start, (stop - start) * sizeof(floating))
                        else:
                            for j in range(start, stop):
                                row[k + j - ow] = source[j * g.stride_w]
                        if ow + segment > stop:
                            memset(row + k + (stop - ow), 0, (ow + segment - stop) * sizeof(floating))
                    k = k + segment
                    oh = oh + 1
                    ow = 0


cdef void _col2im(const Geometry* g, const floating* col, Py_ssize_t first, Py_ssize_t count,
                  floating* grad_x_channels, Py_ssize_t channels) noexcept nogil:
    """The transpose of :func:`_im2col` for ``channels`` input channels: add col
    (channels * KH * KW x count) into grad_x_channels (channels, H, W), padding dropped."""
    cdef Py_ssize_t c, kh, kw, k, j, oh, ow, segment, ih, offset, low, high, start, stop
    cdef floating* target
    cdef const floating* row
    for c in range(channels):
        for kh in range(g.kernel_h):
            for kw in range(g.kernel_w):
                row = col + ((c * g.kernel_h + kh) * g.kernel_w + kw) * count
                offset = kw * g.dilation_w - g.pad_left
                _valid_columns(offset, g.stride_w, g.width, g.out_width, &low, &high)
                oh = first // g.out_width
                ow = first - oh * g.out_width
                k = 0
                while k < count:
                    segment = g.out_width - ow
                    if segment > count - k:
                        segment = count - k
                    ih = oh * g.stride_h - g.pad_top + kh * g.dilation_h
                    if 0 <= ih < g.height:
                        target = grad_x_channels + (c * g.height + ih) * g.width + offset
                        start = low if low > ow else ow
                        stop = high if high < ow + segment else ow + segment
                        for j in range(start, stop):
                            target[j * g.stride_w] += row[k + j - ow]
                    k = k + segment
                    oh = oh + 1
                    ow = 0


cdef void _forward_item(const Geometry* g, const floating* x, const floating* w, const floating* bias,
                        floating* y, Py_ssize_t item, floating* col) noexcept nogil:
    """One (sample, group, tile) of the forward."""
    cdef Py_ssize_t tiles = (g.pixels + g.tile - 1) // g.tile
    cdef Py_ssize_t tile = item % tiles
    cdef Py_ssize_t group = (item // tiles) % g.groups
    cdef Py_ssize_t sample = item // (tiles * g.groups)
    cdef Py_ssize_t first = tile * g.tile
    cdef Py_ssize_t count = g.pixels - first
    cdef Py_ssize_t o, p
    if count > g.tile:
        count = g.tile
    cdef const floating* x_group = x + (sample * g.channels + group * g.group_channels) * g.height * g.width
    cdef const floating* w_group = w + group * g.group_out * g.reduction
    cdef floating* y_tile = y + (sample * g.out_channels + group * g.group_out) * g.pixels + first
    cdef floating* y_row
    if g.direct:
        gemm(False, False, <int> g.group_out, <int> count, <int> g.reduction, <floating> 1.0, w_group,
             <int> g.reduction, x_group + first, <int> g.pixels, <floating> 0.0, y_tile, <int> g.pixels)
    else:
        _im2col(g, x_group, first, count, col)
        gemm(False, False, <int> g.group_out, <int> count, <int> g.reduction, <floating> 1.0, w_group,
             <int> g.reduction, col, <int> count, <floating> 0.0, y_tile, <int> g.pixels)
    for o in range(g.group_out):
        y_row = y_tile + o * g.pixels
        for p in range(count):
            y_row[p] = y_row[p] + bias[group * g.group_out + o]


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] bias,
                   int stride_h, int stride_w, int pad_top, int pad_left, int dilation_h, int dilation_w,
                   int groups, floating[:, :, :, ::1] y, int num_threads):
    """y (N, C_out, H_out, W_out) = conv2d(x (N, C_in, H, W), w (C_out, C_in/groups, KH, KW)) + bias (C_out,).

    The bottom/right padding is implied by y's spatial size. All arrays one dtype, C-contiguous.
    """
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2],
                                w.shape[3], y.shape[2], y.shape[3], stride_h, stride_w, pad_top, pad_left,
                                dilation_h, dilation_w, groups)
    _check(&g, w.shape[1], y.shape[0], y.shape[1], bias.shape[0])
    cdef Py_ssize_t tiles = (g.pixels + g.tile - 1) // g.tile
    cdef Py_ssize_t items = g.batch * g.groups * tiles
    cdef Py_ssize_t item
    cdef floating* col
    if items == 0:
        return
    if num_threads < 1:
        num_threads = 1
    # One im2col buffer per thread, allocated here so a failure can raise (not inside the region).
    cdef Py_ssize_t buffer_size = 0 if g.direct else g.reduction * g.tile
    cdef floating* buffers = <floating*> malloc((num_threads * buffer_size + 1) * sizeof(floating))
    if buffers == NULL:
        raise MemoryError("conv2d_forward: could not allocate the im2col buffers")
    try:
        with nogil, parallel(num_threads=num_threads):
            col = buffers + openmp.omp_get_thread_num() * buffer_size
            for item in prange(items, schedule="static"):
                _forward_item(&g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], &bias[0], &y[0, 0, 0, 0], item, col)
    finally:
        free(buffers)


cdef int _check(const Geometry* g, Py_ssize_t w_channels, Py_ssize_t y_batch, Py_ssize_t y_channels,
                Py_ssize_t bias_size) except -1:
    if g.groups < 1 or g.channels != w_channels * g.groups or g.out_channels % g.groups:
        raise ValueError(f"conv2d: channels C_in={g.channels}, C_out={g.out_channels} do not fit groups={g.groups}")
    if y_batch != g.batch or y_channels != g.out_channels or bias_size != g.out_channels:
        raise ValueError("conv2d: output or bias shape does not match the input and weight")
    if g.stride_h < 1 or g.stride_w < 1 or g.dilation_h < 1 or g.dilation_w < 1 or g.pad_top < 0 or g.pad_left < 0:
        raise ValueError("conv2d: stride and dilation must be positive, padding non-negative")
    return 0


cdef void _grad_weight_item(const Geometry* g, const floating* grad_y, const floating* x, floating* grad_w,
                            Py_ssize_t item, floating* col) noexcept nogil:
    """One (sample, group, tile) of the weight gradient, added into this thread's grad_w buffer:
    grad_w_g (Og x K) += grad_y[n, g, :, tile] (Og x T) @ col^T (T x K)."""
    cdef Py_ssize_t tiles = (g.pixels + g.tile - 1) // g.tile
    cdef Py_ssize_t tile = item % tiles
    cdef Py_ssize_t group = (item // tiles) % g.groups
    cdef Py_ssize_t sample = item // (tiles * g.groups)
    cdef Py_ssize_t first = tile * g.tile
    cdef Py_ssize_t count = g.pixels - first
    if count > g.tile:
        count = g.tile
    cdef const floating* x_group = x + (sample * g.channels + group * g.group_channels) * g.height * g.width
    cdef const floating* grad_y_tile = grad_y + (sample * g.out_channels + group * g.group_out) * g.pixels + first
    cdef floating* grad_w_group = grad_w + group * g.group_out * g.reduction
    if g.direct:
        # x[n, g] (Cg x HW) is its own col matrix
        gemm(False, True, <int> g.group_out, <int> g.reduction, <int> count, <floating> 1.0, grad_y_tile,
             <int> g.pixels, x_group + first, <int> g.pixels, <floating> 1.0, grad_w_group, <int> g.reduction)
    else:
        _im2col(g, x_group, first, count, col)
        gemm(False, True, <int> g.group_out, <int> g.reduction, <int> count, <floating> 1.0, grad_y_tile,
             <int> g.pixels, col, <int> count, <floating> 1.0, grad_w_group, <int> g.reduction)


cdef void _grad_input_item(const Geometry* g, const floating* grad_y, const floating* w, floating* grad_x,
                           Py_ssize_t item, Py_ssize_t blocks, floating* grad_col) noexcept nogil:
    """One (sample, group, block of input channels) of the input gradient.

    The rows of grad_col = w_g^T @ grad_y that belong to input channels [c0, c1) fold back into
    those channels only, so blocks of one sample never write the same memory and a batch of one
    still spreads over the threads.
    """
    cdef Py_ssize_t block = item % blocks
    cdef Py_ssize_t group = (item // blocks) % g.groups
    cdef Py_ssize_t sample = item // (blocks * g.groups)
    cdef Py_ssize_t c0 = block * g.group_channels // blocks
    cdef Py_ssize_t c1 = (block + 1) * g.group_channels // blocks
    cdef Py_ssize_t window = g.kernel_h * g.kernel_w
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t first, count
    cdef const floating* w_rows = w + group * g.group_out * g.reduction + c0 * window
    cdef const floating* grad_y_group = grad_y + (sample * g.out_channels + group * g.group_out) * g.pixels
    cdef floating* grad_x_block = grad_x + (sample * g.channels + group * g.group_channels + c0) * plane
    if c1 <= c0:
        return
    if g.direct:
        # grad_x[n, g, c0:c1] (cb x HW) = w_g[:, c0:c1]^T (cb x Og) @ grad_y[n, g] (Og x HW)
        gemm(True, False, <int> (c1 - c0), <int> g.pixels, <int> g.group_out, <floating> 1.0, w_rows,
             <int> g.reduction, grad_y_group, <int> g.pixels, <floating> 0.0, grad_x_block, <int> g.pixels)
        return
    memset(grad_x_block, 0, (c1 - c0) * plane * sizeof(floating))
    first = 0
    while first < g.pixels:
        count = g.pixels - first
        if count > g.tile:
            count = g.tile
        gemm(True, False, <int> ((c1 - c0) * window), <int> count, <int> g.group_out, <floating> 1.0, w_rows,
             <int> g.reduction, grad_y_group + first, <int> g.pixels, <floating> 0.0, grad_col, <int> count)
        _col2im(g, grad_col, first, count, grad_x_block, c1 - c0)
        first = first + count


def conv2d_backward(const floating[:, :, :, ::1] grad_y, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, int stride_h, int stride_w, int pad_top, int pad_left,
                    int dilation_h, int dilation_w, int groups, floating[::1] grad_x_flat,
                    floating[::1] grad_w_flat, floating[::1] grad_b, bint need_input, bint need_weight,
                    int num_threads):
    """Gradients of :func:`conv2d_forward`.

    grad_x_flat: x's size (flattened, written when need_input); grad_w_flat: w's size (written
    when need_weight); grad_b (C_out,) always written. Unneeded outputs may be empty arrays.
    """
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2],
                                w.shape[3], grad_y.shape[2], grad_y.shape[3], stride_h, stride_w, pad_top,
                                pad_left, dilation_h, dilation_w, groups)
    _check(&g, w.shape[1], grad_y.shape[0], grad_y.shape[1], grad_b.shape[0])
    cdef Py_ssize_t weight_size = g.out_channels * g.reduction
    if need_input and grad_x_flat.shape[0] != g.batch * g.channels * g.height * g.width:
        raise ValueError("conv2d_backward: grad_x has the wrong size")
    if need_weight and grad_w_flat.shape[0] != weight_size:
        raise ValueError("conv2d_backward: grad_w has the wrong size")
    cdef Py_ssize_t tiles = (g.pixels + g.tile - 1) // g.tile
    cdef Py_ssize_t item, o, n, p, t, i, blocks
    cdef floating* col
    cdef floating* grad_w_mine
    cdef floating total
    cdef const floating* row
    if num_threads < 1:
        num_threads = 1
    # Input channels per input-gradient item: enough items for two per thread even at batch 1.
    blocks = (2 * num_threads + g.batch * g.groups - 1) // (g.batch * g.groups)
    if blocks > g.group_channels:
        blocks = g.group_channels
    if blocks < 1:
        blocks = 1
    # Per thread: grad_w partial sums (reduced in thread order afterwards, so the result does not
    # depend on timing) and one tile buffer, the unfolded input in the weight pass and the
    # unfolded input gradient in the input pass. Allocated here so a failure can raise.
    cdef Py_ssize_t buffer_size = 0 if g.direct else g.reduction * g.tile
    cdef Py_ssize_t partial_size = weight_size if need_weight else 0
    cdef Py_ssize_t per_thread = partial_size + buffer_size
    cdef floating* buffers = <floating*> malloc((num_threads * per_thread + 1) * sizeof(floating))
    if buffers == NULL:
        raise MemoryError("conv2d_backward: could not allocate the per-thread buffers")
    cdef floating* grad_x_ptr = &grad_x_flat[0] if need_input else NULL
    try:
        with nogil:
            if need_weight:
                memset(buffers, 0, num_threads * per_thread * sizeof(floating))
                with parallel(num_threads=num_threads):
                    grad_w_mine = buffers + openmp.omp_get_thread_num() * per_thread
                    col = grad_w_mine + partial_size
                    for item in prange(g.batch * g.groups * tiles, schedule="static"):
                        _grad_weight_item(&g, &grad_y[0, 0, 0, 0], &x[0, 0, 0, 0], grad_w_mine, item, col)
                for i in range(weight_size):
                    total = 0
                    for t in range(num_threads):
                        total = total + buffers[t * per_thread + i]
                    grad_w_flat[i] = total
            if need_input:
                with parallel(num_threads=num_threads):
                    col = buffers + openmp.omp_get_thread_num() * per_thread + partial_size
                    for item in prange(g.batch * g.groups * blocks, schedule="static"):
                        _grad_input_item(&g, &grad_y[0, 0, 0, 0], &w[0, 0, 0, 0], grad_x_ptr, item, blocks, col)
    finally:
        free(buffers)
    # grad_b[o] = sum over samples and pixels of grad_y[:, o]
    with nogil:
        for o in prange(g.out_channels, schedule="static", num_threads=num_threads):
            total = 0
            for n in range(g.batch):
                row = &grad_y[n, o, 0, 0]
                for p in range(g.pixels):
                    total = total + row[p]
            grad_b[o] = total
