# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""2-D convolution (torch.nn.functional.conv2d semantics, NCHW) on the CPU: forward and both
gradients, float32/float64.

Method: im2col by tile + GEMM. Output pixels are cut into tiles of T consecutive pixels; a
tile's im2col block (K = C_in/groups * KH * KW rows, T columns, row stride ld) is unfolded into a
per-thread buffer of about COL_BUDGET elements (so the memory for the unfolded input is bounded
whatever the batch), then one GEMM per tile:

    forward      y[n, g, :, tile] = w_g (Og x K) @ col (K x T)              (+ bias)
    grad input   grad_col = w_g^T (K x Og) @ grad_y[n, g, :, tile]; col2im adds it into grad_x
    grad weight  grad_w_g += grad_y[n, g, :, tile] (Og x T) @ col^T (T x K)

The GEMM: float32 on a CPU with AVX-512 runs the register kernel of _conv_gemm.h (8 x 32
blocks, operands read in place; OpenBLAS's sgemm reached 73-98 GFLOP/s a core on these shapes,
the kernel 100-114 on a Zen 4 core whose FMA peak is about 112); float64, and any build without
AVX-512, calls BLAS (cython_blas, single-threaded inside our threads). On the kernel path:
- the forward of a 3x3 stride-1 layer (and its input gradient, which runs as a forward on the
  flipped weights: _flipped_input_gradient) runs Winograd F(2x2, 3x3) (_winograd_forward,
  _conv_winograd.h): 16 multiply-adds per 2x2 output tile and channel pair instead of 36, as 16
  GEMMs over transformed weights and input patches (ResNet-18's 3x3 layers, 2 threads: 1.1-1.9x the
  direct forward's speed); so does its weight gradient, the transposed scheme
  (_winograd_grad_weight: 16 GEMMs reducing over the tiles; 1.2-2.0x). At stride 2 both run a
  25-position form where the tiles fit the output (ResNet-18's 56 and 28 inputs: forward
  1.27-1.29x, weight gradient 1.14-1.30x);
- the forward of a 7-wide stride-2 kernel (ResNet's 7x7/2 stem) runs Winograd along the rows
  (_winograd_rows_forward, _conv_winograd_rows.h): tiles of 4 outputs of a row, the even taps as
  F(4, 4) and the odd ones as F(4, 3), 13 GEMMs over the input channels and kernel rows
  (the stem, 2 threads: 1.4x the direct forward's speed);
- other forward tiles run over the whole batch's pixels (sample-major) and may span samples (the 7x7
  outputs of a ResNet's last stage are 49 pixels a sample: 392 a batch fill whole blocks), the
  GEMM then writing to a buffer scattered to each sample; on such small images with padding,
  the output rows are grouped in bands (a 3x3 'same': top row, interior, bottom row) whose
  GEMM reduces over the kernel rows that stay inside the input (the others meet only zeros);
- the input gradient reads w_g^T packed into 8-row panels (contiguous broadcasts), computes
  grad_col eight rows at a time and folds those rows back at once (a buffer of 8 rows, so the
  tile can be a whole image), and for images under 64 pixels gathers several samples' grad_y
  into one GEMM;
- the weight gradient computes grad_w_g^T (K x Og) += col (K x T) @ grad_y_tile^T (T x Og),
  transposing only the small grad_y tile (into 32-column panels), the whole tile's reduction in
  one pass per block of grad_w_g^T (tiles span samples); the threads split the rows of K (input
  channels) of a layer with many channels, else the pixels, with per-thread partial sums. A 1x1
  kernel with more output than input channels (a ResNet's downsample, Og = 2 K) computes
  grad_w_g (Og x K) = grad_y (Og x T) @ col^T directly instead, transposing the smaller unfolded
  input, the threads splitting the input channels (no partial sums);
- a 1x1 kernel's input gradient writes each input plane once (zeros where no output pixel
  reads it) instead of a memset and a read-modify-write.
A 1x1 kernel with stride 1 and no padding needs no unfolding: x[n, g] (Cg x H*W) is already
the col matrix.

Parallelism: OpenMP regions with per-thread buffers. The forward and the kernel-path weight
gradient give each thread an equal share of the (group, pixel) columns, cut into tiles (or, for
the weight gradient of one group of at least 64 input channels a thread, an equal share of the
input channels); the BLAS weight gradient splits (sample, group, tile) items. Weight gradients
split by pixels accumulate in per-thread buffers summed in thread order afterwards
(deterministic for a given thread count; the kernel's forward sums each output in one fixed
order, so it does not depend on the tiling at all). The
input gradient splits (samples, group, block of input channels) items: col2im of neighbouring
tiles overlaps in grad_x, but the rows of one channel block fold back into that block only, so
no two threads write one element.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
cimport openmp

from _common cimport gemm

cdef extern from "_conv_gemm.h" nogil:
    int CONV_AVX512 "GATEDRNN_CONV_AVX512"
    void conv_sgemm "gatedrnn_conv_sgemm"(long m, long n, long k, const float* a, long a_row, long a_col,
                                          const float* b, long ldb, float* c, long ldc, int accumulate)
    void conv_sgemm_whole "gatedrnn_conv_sgemm_whole"(long m, long n, long k, const float* a, long a_row,
                                                      long a_col, const float* b, long ldb, long b_jump, float* c,
                                                      long ldc, int accumulate)
    void conv_sgemm_runs "gatedrnn_conv_sgemm_runs"(long m, long n, long k, const float* a, long a_row, long a_col,
                                                    long run, long period, const float* b, long ldb, float* c,
                                                    long ldc, int accumulate)
    void gather_stride2 "gatedrnn_gather_stride2"(float* dst, const float* src, long n)
    void expand_stride2 "gatedrnn_expand_stride2"(float* dst, long width, const float* src, long n)
    void transpose "gatedrnn_transpose"(const float* src, long rows, long cols, long lds, float* dst, long ldd)
    void conv_sgemm_packed "gatedrnn_conv_sgemm_packed"(long m, long n, long k, const float* a,
                                                        const float* b, long ldb, float* c, long ldc,
                                                        int accumulate)

cdef extern from "_conv_winograd.h" nogil:
    void winograd_weights "gatedrnn_winograd_weights"(long side, const float* g, long rows, float* u, long first,
                                                      long last)
    void winograd_input "gatedrnn_winograd_input"(const float* x, long sample_stride, long channels, long height,
                                                  long width, long pad_top, long pad_left, long tiles_h,
                                                  long tiles_w, long tile, long count, float* v, long ld)
    void winograd_grad_output "gatedrnn_winograd_grad_output"(const float* gy, long positions, long sample_stride,
                                                              long channels, long out_h, long out_w, long tiles_h,
                                                              long tiles_w, long tile, long count, float* zt,
                                                              long ldz)
    void winograd_grad_weights "gatedrnn_winograd_grad_weights"(const float* s, long positions, long rows, long lds,
                                                                long channels, float* grad_w, long o_stride)
    void winograd_output "gatedrnn_winograd_output"(const float* m, long positions, long ld, long count, long tile,
                                                    long tiles_h, long tiles_w, float* y, long sample_stride,
                                                    long out_h, long out_w, float shift)
    void winograd_input_s2 "gatedrnn_winograd_input_s2"(const float* x, long sample_stride, long channels,
                                                        long height, long width, long pad_top, long pad_left,
                                                        long tiles_h, long tiles_w, long tile, long count, float* v,
                                                        long ld)

cdef extern from "_conv_winograd_rows.h" nogil:
    int ROWS_POSITIONS "GATEDRNN_WINOGRAD_ROWS_POSITIONS"
    int ROWS_TILE "GATEDRNN_WINOGRAD_ROWS_TILE"
    void winograd_rows_weights "gatedrnn_winograd_rows_weights"(const float* w, long rows, float* u, long first,
                                                                long last)
    void winograd_rows_input "gatedrnn_winograd_rows_input"(const float* x, long sample_stride, long channels,
                                                            long height, long width, long kernel_h, long stride_h,
                                                            long dilation_h, long pad_top, long pad_left, long out_h,
                                                            long tiles_w, long tile, long count, float* v, long ld)
    void winograd_rows_output "gatedrnn_winograd_rows_output"(const float* m, long ld, long count, long tile,
                                                              long out_h, long tiles_w, float* y, long sample_stride,
                                                              long out_w, float shift)


cdef inline void _matmul(bint trans_a, long m, long n, long k, const floating* a, long lda,
                         const floating* b, long ldb, bint accumulate, floating* c, long ldc) noexcept nogil:
    """Row-major C (m x n) (+)= op(A) (m x k) @ B (k x n), op(A) = A or A^T (A stored with row stride lda).

    float32 on AVX-512 goes to the register kernel of _conv_gemm.h (it reads A and B in place;
    OpenBLAS reaches 75-98 GFLOP/s a core on these shapes, the kernel 100-112), everything else to BLAS.
    """
    if floating is float:
        if CONV_AVX512:
            if trans_a:
                conv_sgemm(m, n, k, a, 1, lda, b, ldb, c, ldc, accumulate)
            else:
                conv_sgemm(m, n, k, a, lda, 1, b, ldb, c, ldc, accumulate)
            return
    gemm(trans_a, False, <int> m, <int> n, <int> k, <floating> 1.0, a, <int> lda, b, <int> ldb,
         <floating> (1.0 if accumulate else 0.0), c, <int> ldc)

# Whether this build's float32 paths run the AVX-512 register kernel (else BLAS): the tests
# hold the kernel paths to their bitwise-determinism promises only where they run.
REGISTER_KERNEL = bool(CONV_AVX512)

# Elements of one thread's im2col buffer (512 KiB in float32): about an L2's worth.
cdef Py_ssize_t COL_BUDGET = 131072
# Fewest pixels in a tile when K is large (COL_BUDGET // K below it): one register block; 64,
# 128 and 256 were no faster on the 512@7 and 256@14 layers (K = 4608, 2304), 1 or 2 threads.
cdef Py_ssize_t MIN_TILE = 32
# Columns of the GEMM's register block (_conv_gemm.h): tiles are cut to a multiple of it so that
# only the last tile of a call has a partial (masked) block.
cdef Py_ssize_t PANEL = 32
# Forward tiles span samples only for images of fewer output pixels (7x7, 14x14: 49 and 196
# pixels would leave register blocks part empty) and, above 64 pixels, when the output (Og rows)
# is no larger than the unfolded input (K rows); otherwise they are cut at sample ends, which
# spares the copy of a spanning tile's output (on the 1x1/2 layers, Og = 2 K, that copy made the
# forward 10-30% slower at 28x28 and 14x14 outputs, while at 7x7 spanning stayed 10% faster).
cdef Py_ssize_t SPAN_BELOW = 256
# The forward by row bands (_forward: each band of output rows reduces over the kernel rows it
# meets inside the input) where that skips at least this share of the multiply-adds. Measured
# (forward alone, banded / plain time, 2 threads; 1 thread): 3x3 512@7, 2/21 skipped: 0.91-0.93;
# 0.95. 3x3 256@14, 2/42: 1.02; 0.99. 3x3/2 256->512 to 7x7, 1/21: 0.99; 0.98 (the bands' extra
# partial tiles each stream all the weights again). So only the 7x7-like cases.
cdef Py_ssize_t BAND_SAVING_PERCENT = 5
cdef bint ROW_BANDS = True
# Longest tail of a band the banded forward folds into the tile before it instead of running it
# as a tile of its own: a tile of 8 pixels streams every weight for a quarter of a register
# block's work (512@7, K = 4608, one core: 8 columns at 49 GFLOP/s, 0.55x the time of 32; the
# 40 of 32 + 8 in one tile cost 1.19x). (Folding the plain forward's tails changed nothing.)
cdef Py_ssize_t TAIL = 16
# Input channels per step of the weight flip of the stride-1 input gradient (_flipped_input_gradient).
cdef Py_ssize_t FLIP_BLOCK = 16
# Fewest input pixels (whole batch) for which the stride-1 input gradient runs as a flipped
# forward: measurements at conv2d_backward.
cdef Py_ssize_t FLIP_BELOW = 256
# Fewest pixels in a weight-gradient tile (its reduction length), so that each pass over the
# partial sums (K x Og) carries enough work: on the 512@7 layer (K = 4608, where COL_BUDGET
# alone gives 28) 64 was 5% slower than 128, 256 no better (2 shared cores: +-5% noise); with
# the whole-reduction GEMM (gatedrnn_conv_sgemm_whole), 200, 256 and 512 no better either.
cdef Py_ssize_t WEIGHT_TILE = 128
# Pixels per chunk of the wide weight gradient (_grad_weight_wide): at most one sample's (or
# whole samples of at most half of it), and no more than this, so that a thread's transposed chunk
# (WIDE_TILE x 128 channels, 128 KiB) stays in L2.
cdef Py_ssize_t WIDE_TILE = 256


# Winograd for the float32 forward and weight gradient of 3x3 layers (_winograd_positions) and
# for the forward of 7-wide stride-2 layers along the rows (_winograd_rows).
cdef bint WINOGRAD = True
# Fewest input channels a group for it: measured Winograd / direct time at batch 8, 2 threads:
# 4 -> 4 @56 1.16, 8 -> 8 @56 1.04, 8 -> 64 @56 1.42, 16 -> 16 @56 0.81, 16 -> 64 @28 0.72,
# 32 -> 32 @14 0.85 (the transforms cost a few adds per tile and channel, the GEMM saves 20
# multiply-adds per tile and channel pair). And 8 output channels a group: one register block.
cdef Py_ssize_t WINOGRAD_MIN_CHANNELS = 16
cdef Py_ssize_t WINOGRAD_MIN_OUT = 8
# Elements of one thread's transformed patches and GEMM results in the forward (P x (Cg + Og)
# x block tiles, P = 16 or 25 positions; along the rows 13 x (Cg KH + Og) x block: 128 tiles on
# the stem, where 64 .. 384 measured within 3%, 2 threads).
cdef Py_ssize_t WINOGRAD_BUDGET = 131072
# Tiles a block of the Winograd weight gradient: the reduction of its GEMMs (one KC block of the
# register kernel), S read and written once a block.
cdef Py_ssize_t WINOGRAD_WEIGHT_BLOCK = 128
# Winograd along the rows (7-wide stride-2 kernels) needs this many reduction terms (input
# channels a group times kernel rows): its 13 GEMMs reduce over them, and the transforms cost per
# term what a short GEMM cannot repay. Winograd / direct forward time, 2 threads, 7-wide kernels
# at stride 2: the stem (21 terms: 3 channels, 7 rows) 0.72-0.74, 16 channels 7 rows (112) 0.55,
# 64 channels (448) 0.51; 1 channel, 7 rows (7 terms), 16 outputs 0.96, 8 outputs 1.03; 3 channels
# 1 row (3) 1.13; 1 channel 1 row 1.62.
cdef Py_ssize_t WINOGRAD_ROWS_MIN_TERMS = 8
cdef inline Py_ssize_t _round_up(Py_ssize_t value, Py_ssize_t multiple) noexcept nogil:
    return (value + multiple - 1) // multiple * multiple


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
    Py_ssize_t pixels, tile, ld                      # out_height * out_width, tile length, its row stride
    Py_ssize_t in_tile, in_ld                        # the input gradient's tile on the register kernel
    Py_ssize_t in_spread                             # samples per input-gradient item (small images)
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
    # ... rounded to the nearest multiple of PANEL (the buffer then up to PANEL / 2 columns over
    # budget): rounded down, the 56 of K = 2304 made 32, a pass over the 2.4 MiB of weights per
    # 32 pixels. Rounded to nearest, 2 threads, forward: 256@14 (64) +1.5-6%, the stem (896
    # from 891) +3-4%, 128->256/2 (128 from 113) +1-2%, the others within +-1%.
    if g.tile >= PANEL:
        g.tile = (g.tile + PANEL // 2) // PANEL * PANEL
    if g.tile > batch * g.pixels:
        g.tile = batch * g.pixels
    # Rows of a tile buffer start on a cache line (16 floats), so the GEMM's vector loads of B never split one.
    g.ld = _round_up(g.tile, 16)
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


cdef void _im2col_same_width(const Geometry* g, const floating* x_group, Py_ssize_t first, Py_ssize_t count,
                             floating* col, Py_ssize_t ld, Py_ssize_t kh0, Py_ssize_t kh1) noexcept nogil:
    """:func:`_im2col` for stride 1 and W_out = W (a 'same'-width convolution, every 3x3 of a
    ResNet at stride 1). Pixel p = oh * W + ow then reads x_c[p + shift] with shift = (kh * dh -
    pt) * W + kw * dw - pl, so a row of col is one copy of a slice of x_c, then zeros where the
    read falls in the vertical padding or wraps around a row end (|kw * dw - pl| columns per
    output row): one copy per row of col instead of one per output row it crosses (5 a row of a
    32-pixel tile of 7x7 images, whose call overhead cost about as much as the copying)."""
    cdef Py_ssize_t c, kh, kw, offset, shift, low, high, oh, edge_low, edge_high, j, plane = g.height * g.width
    cdef Py_ssize_t width = g.width
    cdef const floating* x_channel
    cdef floating* row
    for c in range(g.group_channels):
        x_channel = x_group + c * plane
        for kh in range(kh0, kh1):
            for kw in range(g.kernel_w):
                row = col + ((c * (kh1 - kh0) + kh - kh0) * g.kernel_w + kw) * ld
                offset = kw * g.dilation_w - g.pad_left
                shift = (kh * g.dilation_h - g.pad_top) * width + offset
                # pixels [low, high) of the tile read inside x_c (outside: vertical padding, or
                # the first/last row's wrap, both zero)
                low = (g.pad_top - kh * g.dilation_h) * width
                high = low + plane
                if low < first:
                    low = first
                if low < -shift:
                    low = -shift
                if high > first + count:
                    high = first + count
                if high > plane - shift:
                    high = plane - shift
                if high <= low:
                    memset(row, 0, count * sizeof(floating))
                    continue
                if low > first:
                    memset(row, 0, (low - first) * sizeof(floating))
                memcpy(row + low - first, x_channel + low + shift, (high - low) * sizeof(floating))
                if first + count > high:
                    memset(row + high - first, 0, (first + count - high) * sizeof(floating))
                if offset == 0:
                    continue
                # zero the columns whose read wrapped to a neighbouring row: ow + offset outside [0, W)
                for oh in range(low // width, (high - 1) // width + 1):
                    if offset > 0:
                        edge_low = oh * width + width - offset
                        edge_high = oh * width + width
                    else:
                        edge_low = oh * width
                        edge_high = oh * width - offset
                    if edge_low < oh * width:
                        edge_low = oh * width
                    if edge_high > oh * width + width:
                        edge_high = oh * width + width
                    if edge_low < low:
                        edge_low = low
                    if edge_high > high:
                        edge_high = high
                    # |offset| elements (1 for a 3x3): a store, not a call to memset
                    for j in range(edge_low - first, edge_high - first):
                        row[j] = 0


cdef inline void _im2col(const Geometry* g, const floating* x_group, Py_ssize_t first, Py_ssize_t count,
                         floating* col, Py_ssize_t ld) noexcept nogil:
    """col (K x count, row stride ld) = the input values that output pixels [first, first + count)
    meet: :func:`_im2col_taps` over every tap."""
    _im2col_taps(g, x_group, first, count, col, ld, 0, g.kernel_h)


cdef void _im2col_taps(const Geometry* g, const floating* x_group, Py_ssize_t first, Py_ssize_t count,
                       floating* col, Py_ssize_t ld, Py_ssize_t kh0, Py_ssize_t kh1) noexcept nogil:
    """col ((C_in/groups * (kh1 - kh0) * KW) x count, row stride ld) = the input values that
    output pixels [first, first + count) meet through the kernel rows kh0 <= kh < kh1.

    Row r = (c, kh - kh0, kw) of col holds x_group[c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw]
    for each pixel p = oh * W_out + ow, or 0 where that falls in the padding. The tile is walked
    one output row at a time: a row either lies in the vertical padding (zeros) or reads one
    input row, of which the in-bounds columns [low, high) are known in advance (a plain copy at
    stride 1).
    """
    cdef Py_ssize_t c, kh, kw, k, j, oh, ow, segment, ih, offset, low, high, start, stop
    cdef const floating* source
    cdef floating* row
    if g.stride_h == 1 and g.stride_w == 1 and g.out_width == g.width:
        _im2col_same_width(g, x_group, first, count, col, ld, kh0, kh1)
        return
    for c in range(g.group_channels):
        for kh in range(kh0, kh1):
            for kw in range(g.kernel_w):
                row = col + ((c * (kh1 - kh0) + kh - kh0) * g.kernel_w + kw) * ld
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
                        elif floating is float and g.stride_w == 2:
                            gather_stride2(row + k + (start - ow), source + 2 * start, stop - start)
                        else:
                            for j in range(start, stop):
                                row[k + j - ow] = source[j * g.stride_w]
                        if ow + segment > stop:
                            memset(row + k + (stop - ow), 0, (ow + segment - stop) * sizeof(floating))
                    k = k + segment
                    oh = oh + 1
                    ow = 0


cdef void _col2im_rows(const Geometry* g, const floating* rows, Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t first, Py_ssize_t count, floating* grad_x_channels) noexcept nogil:
    """The transpose of :func:`_im2col` for the rows [r0, r1) of a block's unfolded gradient
    (row r = (c, kh, kw), c counted from the block's first channel; row r held at
    rows + (r - r0) * ld, ``count`` pixels from ``first``): add them into grad_x_channels
    (the block's channels, H, W), padding dropped."""
    cdef Py_ssize_t r, c, kh, kw, k, j, oh, ow, segment, ih, offset, low, high, start, stop
    cdef Py_ssize_t window = g.kernel_h * g.kernel_w
    cdef floating* target
    cdef const floating* row
    for r in range(r0, r1):
        c = r // window
        kh = (r - c * window) // g.kernel_w
        kw = r - c * window - kh * g.kernel_w
        row = rows + (r - r0) * ld
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
                if g.stride_w == 1:
                    target = target + start
                    row = row + k - ow + start
                    for j in range(stop - start):
                        target[j] += row[j]
                    row = row - (k - ow + start)
                else:
                    for j in range(start, stop):
                        target[j * g.stride_w] += row[k + j - ow]
            k = k + segment
            oh = oh + 1
            ow = 0


cdef struct Band:
    Py_ssize_t oh0, oh1       # output rows [oh0, oh1) of every sample
    Py_ssize_t kh0, kh1       # the kernel rows its pixels meet inside the input: kh0 <= kh < kh1
    Py_ssize_t start          # its first column among a group's batch x pixels ones (sample-major)


cdef void _forward_tile(const Geometry* g, const Band* band, const floating* x, const floating* w,
                        const floating* bias, floating* y, Py_ssize_t group, Py_ssize_t v, Py_ssize_t count,
                        floating* col, floating* out) noexcept nogil:
    """One tile of the forward: ``count`` <= g.ld consecutive columns of a band (its output rows
    of every sample, sample-major), from its column ``v``, for one group. A tile may span
    samples; then the GEMM writes to ``out`` (Og x count, row stride g.ld) and the rows are
    scattered to each sample's y. Only the band's kernel rows enter the reduction (the others
    meet only zero padding): the GEMM then reads their weights as runs of (kh1 - kh0) * KW in
    every KH * KW.

    The weights are read in place (strided broadcasts). Packing them once per call into the
    8-row panels of gatedrnn_conv_sgemm_packed (a pass over the weights) did not pay even where
    each weight meets many pixels (2 threads, whole forward, packed vs in place: stem +4%, 3x3
    64@56 +1%, 128@28 -0.5%, 256@14 -3%, 512@7 -18%, 3x3/2 -1..-23%, 1x1/2 -2..-27%), so
    the broadcasts' strided reads are not what holds the kernel at 80-88% of the FMA peak."""
    cdef Py_ssize_t band_pixels = (band.oh1 - band.oh0) * g.out_width
    cdef Py_ssize_t sample = v // band_pixels
    cdef Py_ssize_t first = band.oh0 * g.out_width + v - sample * band_pixels
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t o, p, done, segment
    cdef floating shift
    cdef const floating* w_group = w + group * g.group_out * g.reduction
    cdef const floating* x_group = x + (sample * g.channels + group * g.group_channels) * plane
    cdef floating* y_tile = y + (sample * g.out_channels + group * g.group_out) * g.pixels + first
    cdef floating* y_row
    cdef const floating* out_row
    if v - sample * band_pixels + count <= band_pixels:  # within one sample: the GEMM writes y in place
        if g.direct:
            _matmul(False, g.group_out, count, g.reduction, w_group, g.reduction, x_group + first, g.pixels,
                    False, y_tile, g.pixels)
        else:
            _im2col_taps(g, x_group, first, count, col, g.ld, band.kh0, band.kh1)
            _band_matmul(g, band, w_group, col, count, y_tile, g.pixels)
        if bias != NULL:
            for o in range(g.group_out):
                y_row = y_tile + o * g.pixels
                shift = bias[group * g.group_out + o]
                for p in range(count):
                    y_row[p] = y_row[p] + shift
        return
    done = 0
    while done < count:
        segment = band.oh1 * g.out_width - first
        if segment > count - done:
            segment = count - done
        _im2col_taps(g, x + (sample * g.channels + group * g.group_channels) * plane, first, segment, col + done,
                     g.ld, band.kh0, band.kh1)
        done = done + segment
        sample = sample + 1
        first = band.oh0 * g.out_width
    _band_matmul(g, band, w_group, col, count, out, g.ld)
    sample = v // band_pixels
    first = band.oh0 * g.out_width + v - sample * band_pixels
    done = 0
    while done < count:
        segment = band.oh1 * g.out_width - first
        if segment > count - done:
            segment = count - done
        for o in range(g.group_out):
            y_row = y + (sample * g.out_channels + group * g.group_out + o) * g.pixels + first
            out_row = out + o * g.ld + done
            shift = bias[group * g.group_out + o] if bias != NULL else 0
            for p in range(segment):
                y_row[p] = out_row[p] + shift
        done = done + segment
        sample = sample + 1
        first = band.oh0 * g.out_width


cdef inline void _band_matmul(const Geometry* g, const Band* band, const floating* w_group, const floating* col,
                              Py_ssize_t count, floating* c, Py_ssize_t ldc) noexcept nogil:
    """c (Og x count) = w_g restricted to the band's kernel rows @ col (their unfolded input)."""
    cdef Py_ssize_t run = (band.kh1 - band.kh0) * g.kernel_w
    if band.kh0 == 0 and band.kh1 == g.kernel_h:
        _matmul(False, g.group_out, count, g.reduction, w_group, g.reduction, col, g.ld, False, c, ldc)
    elif floating is float:  # partial bands only on the register kernel (_bands)
        if run == 0:  # the band's pixels meet only padding
            conv_sgemm(g.group_out, count, 0, w_group, g.reduction, 1, col, g.ld, c, ldc, 0)
        else:
            conv_sgemm_runs(g.group_out, count, g.group_channels * run, w_group + band.kh0 * g.kernel_w,
                            g.reduction, 1, run, g.kernel_h * g.kernel_w, col, g.ld, c, ldc, 0)


cdef inline Py_ssize_t _share_edge(Py_ssize_t work, Py_ssize_t total, Py_ssize_t thread,
                                   Py_ssize_t threads) noexcept nogil:
    """Where thread ``thread``'s share of the ``work`` (group, pixel) columns starts (``total``
    pixels a group): an equal split rounded to a multiple of PANEL within its group, so that a
    share is whole register blocks but for one tile (an unrounded split of the 392 columns of
    the 512@7 layer left each thread a 4-column tile, a full pass over the 9 MiB of weights for
    1% of the work)."""
    cdef Py_ssize_t position = thread * work // threads
    cdef Py_ssize_t group = position // total
    cdef Py_ssize_t flat = (position - group * total + PANEL // 2) // PANEL * PANEL
    if flat > total:
        flat = total
    return group * total + flat


cdef floating* _aligned(floating* base) noexcept nogil:
    """base rounded up to the next 64-byte boundary (a cache line; base has 64 spare bytes)."""
    return <floating*> ((<size_t> base + 63) & ~(<size_t> 63))


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
    if g.batch * g.pixels * g.groups == 0:
        return
    # A zero bias (the ops layer passes zeros for bias=None) skips the pass that adds it, a read
    # and write of the whole output (on a 1x1/2 layer twice the size of the unfolded input).
    cdef const floating* bias_or_null = NULL
    cdef Py_ssize_t o
    for o in range(g.out_channels):
        if bias[o] != 0:
            bias_or_null = &bias[0]
            break
    _forward(&g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], bias_or_null, &y[0, 0, 0, 0], num_threads)


cdef Py_ssize_t _bands(const Geometry* g, Band* bands) noexcept nogil:
    """Cut the output rows into bands of consecutive rows that meet the same kernel rows inside
    the input (a 3x3 'same' convolution: the top row, the interior, the bottom row); return
    how many. Each band's columns follow the previous band's among a group's columns."""
    cdef Py_ssize_t oh, low, high, number = 0
    for oh in range(g.out_height):
        # the kernel rows kh with input row (oh * sh - pt) + kh * dh in [0, H): the same
        # arithmetic as the output columns that read inside a row
        _valid_columns(oh * g.stride_h - g.pad_top, g.dilation_h, g.height, g.kernel_h, &low, &high)
        if number > 0 and bands[number - 1].kh0 == low and bands[number - 1].kh1 == high:
            bands[number - 1].oh1 = oh + 1
            continue
        bands[number].oh0, bands[number].oh1, bands[number].kh0, bands[number].kh1 = oh, oh + 1, low, high
        bands[number].start = 0 if number == 0 else (
            bands[number - 1].start + g.batch * (bands[number - 1].oh1 - bands[number - 1].oh0) * g.out_width)
        number = number + 1
    return number


cdef Py_ssize_t _plan_bands(const Geometry* g, Band* bands, bint register_kernel) noexcept nogil:
    """The bands the forward runs (bands holds out_height): the row bands on the register kernel
    for small images (tiles spanning samples) where they skip BAND_SAVING_PERCENT of the
    multiply-adds, else one band of every row and kernel row. Returns how many."""
    cdef Py_ssize_t band, number, meets = 0
    if register_kernel and ROW_BANDS and not g.direct and g.pixels < SPAN_BELOW:
        number = _bands(g, bands)
        for band in range(number):
            meets = meets + (bands[band].oh1 - bands[band].oh0) * (bands[band].kh1 - bands[band].kh0)
        if meets * 100 <= g.out_height * g.kernel_h * (100 - BAND_SAVING_PERCENT):
            return number
    bands[0].oh0, bands[0].oh1, bands[0].kh0, bands[0].kh1, bands[0].start = 0, g.out_height, 0, g.kernel_h, 0
    return 1


def forward_row_bands(Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                      Py_ssize_t out_channels, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t out_height,
                      Py_ssize_t out_width, int sh, int sw, int pt, int pl, int dh, int dw, int groups):
    """[(first row, end row, first kernel row, end kernel row)]: the bands the float32 forward of
    this geometry runs unless it runs Winograd (one band of everything where it does not band).
    For tests."""
    cdef Geometry g = _geometry(batch, channels, height, width, out_channels, kernel_h, kernel_w, out_height,
                                out_width, sh, sw, pt, pl, dh, dw, groups)
    cdef Band* bands = <Band*> malloc(out_height * sizeof(Band))
    if bands == NULL:
        raise MemoryError("forward_row_bands: out of memory")
    try:
        number = _plan_bands(&g, bands, CONV_AVX512)
        return [(bands[b].oh0, bands[b].oh1, bands[b].kh0, bands[b].kh1) for b in range(number)]
    finally:
        free(bands)


def set_row_bands(bint enabled):
    """Let the forward skip the kernel rows that meet only padding, by row bands (True, the
    default, where it pays) or never; return the previous setting. For tests and benchmarks:
    both ways give the same outputs (up to the order of the sums)."""
    global ROW_BANDS
    previous = ROW_BANDS
    ROW_BANDS = enabled
    return previous


cdef Py_ssize_t _winograd_positions(const Geometry* g) noexcept nogil:
    """The float32 forward of this geometry runs :func:`_winograd_forward` with this many
    transformed positions a tile: 16 (F(2x2, 3x3)) for a 3x3 stride-1 undilated convolution,
    25 for stride 2 (_conv_winograd.h); 0: not at all. On the register kernel, with at least
    WINOGRAD_MIN_CHANNELS input channels (below that the transforms cost more than the GEMM saves)
    and WINOGRAD_MIN_OUT output channels a group."""
    if not (CONV_AVX512 and WINOGRAD and g.kernel_h == 3 and g.kernel_w == 3 and g.dilation_h == 1
            and g.dilation_w == 1 and g.group_channels >= WINOGRAD_MIN_CHANNELS
            and g.group_out >= WINOGRAD_MIN_OUT):
        return 0
    if g.stride_h == 1 and g.stride_w == 1:
        return 16
    # Stride 2 saves less (25 multiply-adds a tile and channel pair instead of 36, against 16 at
    # stride 1), so not where the tiles' unused outputs or the transformed weights eat it: only
    # where the 2x2 tiles cover the output within 10% and the batch has 128 tiles. Measured,
    # Winograd / direct time, batch 8, 2 threads: 64 -> 128 @56 0.78, 128 -> 256 @28 0.79,
    # 256 -> 256 @28 0.79, 64 -> 64 @28 0.67, 16 -> 16 @56 0.77, 16 -> 32 @56 1.04; but 7x7
    # outputs (4x4 tiles: 31% unused) 256 -> 512 @14 1.4, and at batch 1 128 -> 256 @28 (49
    # tiles) 1.13, 64 -> 128 @56 (196) 0.97.
    cdef Py_ssize_t tiles = ((g.out_height + 1) // 2) * ((g.out_width + 1) // 2)
    if (g.stride_h == 2 and g.stride_w == 2 and 40 * tiles <= 11 * g.out_height * g.out_width
            and g.batch * tiles >= 128):
        return 25
    return 0


def forward_winograd(Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                     Py_ssize_t out_channels, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t out_height,
                     Py_ssize_t out_width, int sh, int sw, int pt, int pl, int dh, int dw, int groups):
    """How many transformed positions a tile the float32 forward of this geometry runs Winograd
    with (16: F(2x2, 3x3), 25: its stride-2 form), 0 where it does not. For tests."""
    cdef Geometry g = _geometry(batch, channels, height, width, out_channels, kernel_h, kernel_w, out_height,
                                out_width, sh, sw, pt, pl, dh, dw, groups)
    return _winograd_positions(&g)


def set_winograd(bint enabled):
    """Let the float32 forward and weight gradient of 3x3 convolutions and the forward of 7-wide
    stride-2 ones run Winograd (True, the default, where :func:`forward_winograd` and
    :func:`forward_winograd_rows` say it applies) or never; return the previous setting. For
    tests and benchmarks."""
    global WINOGRAD
    previous = WINOGRAD
    WINOGRAD = enabled
    return previous


cdef void _winograd_block(const Geometry* g, const float* x, const float* u, const float* bias, float* y,
                          Py_ssize_t group, Py_ssize_t o0, Py_ssize_t o1, Py_ssize_t flat, Py_ssize_t count,
                          float* v, float* m, Py_ssize_t ld) noexcept nogil:
    """Output channels [o0, o1) of group ``group`` for tiles [flat, flat + count) of the batch:
    transform the tiles' input patches into v (P Cg rows, P = 16 or 25 positions: stride 1 or 2),
    P GEMMs M_xi = U_xi @ V_xi into m (P (o1 - o0) rows) on the register kernel, then each
    channel's 2x2 outputs into y."""
    cdef Py_ssize_t tiles_h = (g.out_height + 1) // 2, tiles_w = (g.out_width + 1) // 2
    cdef Py_ssize_t per_sample = tiles_h * tiles_w
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t rows = g.out_channels * g.group_channels
    cdef Py_ssize_t sample = flat // per_sample
    cdef Py_ssize_t xi, o, channel
    cdef Py_ssize_t positions = 16 if g.stride_h == 1 else 25
    if positions == 16:
        winograd_input(x + group * g.group_channels * plane, g.channels * plane, g.group_channels, g.height,
                       g.width, g.pad_top, g.pad_left, tiles_h, tiles_w, flat, count, v, ld)
    else:
        winograd_input_s2(x + group * g.group_channels * plane, g.channels * plane, g.group_channels, g.height,
                          g.width, g.pad_top, g.pad_left, tiles_h, tiles_w, flat, count, v, ld)
    for xi in range(positions):
        conv_sgemm(o1 - o0, count, g.group_channels, u + xi * rows + (group * g.group_out + o0) * g.group_channels,
                   g.group_channels, 1, v + xi * ld, positions * ld, m + xi * ld, positions * ld, 0)
    for o in range(o0, o1):
        channel = group * g.group_out + o
        winograd_output(m + positions * (o - o0) * ld, positions, ld, count, flat - sample * per_sample, tiles_h,
                        tiles_w, y + (sample * g.out_channels + channel) * g.pixels, g.out_channels * g.pixels,
                        g.out_height, g.out_width, bias[channel] if bias != NULL else 0)


cdef float* _winograd_allocate(Py_ssize_t u_size, Py_ssize_t buffer_size, float** u, float** allocation) except NULL:
    """The Winograd forwards' memory: U (u_size floats) into u[0], and the threads' buffers
    (buffer_size floats, 64 spare bytes) into allocation[0]; returns the buffers' first 64-byte
    boundary. Raises MemoryError (nothing left allocated) if either fails."""
    u[0] = <float*> malloc(u_size * sizeof(float))
    if u[0] == NULL:
        raise MemoryError("conv2d_forward: could not allocate the transformed weights")
    allocation[0] = <float*> malloc(buffer_size * sizeof(float) + 64)
    if allocation[0] == NULL:
        free(u[0])
        raise MemoryError("conv2d_forward: could not allocate the Winograd buffers")
    return _aligned(allocation[0])


cdef int _winograd_forward(const Geometry* g, const float* x, const float* w, const float* bias, float* y,
                           int num_threads) except -1:
    """The forward of a 3x3 convolution by Winograd (_conv_winograd.h): 2x2 output tiles, per
    tile and channel pair 16 multiply-adds instead of 36 at stride 1 (F(2x2, 3x3)), 25 at stride
    2 (the even taps of each axis as F(2, 2), the odd one direct).

    The weights are transformed into U (P x C_out x Cg, P = 16 or 25 positions: one Og x Cg
    matrix per position xi of the transformed tile and group), then tiles (sample-major over the
    batch) are taken in blocks of ``block``: :func:`_winograd_block`. The threads split either the (group, tile)
    columns (equal shares rounded to PANEL tiles; U transformed by all threads first), or, with
    under two PANELs of tiles a thread (one group), the output channels: each thread transforms
    and reads only its share of U and runs every tile. Measured at 2 threads, tiles -> channels:
    512@7 batch 2 (32 tiles, all on one thread when split by tiles) 4.8 -> 3.0 ms, 256@14 batch
    1 (49) 0.98 -> 0.95, 64@28 batch 1 (196) 0.25 -> 0.21; but 512@7 batch 4 (64) 5.0 -> 5.3
    and batch 8 (128) 8.3 -> 9.3, 256@7 batch 8 1.7 -> 2.0.
    Each output is summed in an order fixed by the shapes alone (per tile: the GEMM's over the
    channels, then the transform's), so the result does not depend on the threads or blocks."""
    cdef Py_ssize_t per_sample = ((g.out_height + 1) // 2) * ((g.out_width + 1) // 2)
    cdef Py_ssize_t total = g.batch * per_sample
    cdef Py_ssize_t work = g.groups * total
    cdef bint by_channels = g.groups == 1 and total < 2 * PANEL * num_threads
    cdef Py_ssize_t positions = _winograd_positions(g)
    cdef Py_ssize_t side = 5 if positions == 25 else 4  # of the transformed tile
    cdef Py_ssize_t block = WINOGRAD_BUDGET // (positions * (g.group_channels + g.group_out))
    block = (block + PANEL // 2) // PANEL * PANEL
    if block < PANEL:
        block = PANEL
    if by_channels and block < 4 * PANEL:  # at 2 threads every tile in one block: U read once
        block = 4 * PANEL
    if block > total:
        block = total
    cdef Py_ssize_t ld = _round_up(block, 16)
    cdef Py_ssize_t v_size = positions * g.group_channels * ld
    cdef Py_ssize_t per_thread = v_size + positions * g.group_out * ld
    cdef Py_ssize_t rows = g.out_channels * g.group_channels  # 3x3 kernels
    cdef Py_ssize_t chunk, chunks = (rows + 255) // 256
    cdef Py_ssize_t thread, threads, position, end, group, flat, count, o0, o1
    cdef float* v
    cdef float* m
    cdef float* u
    cdef float* allocation
    cdef float* buffers = _winograd_allocate(positions * rows, num_threads * per_thread, &u, &allocation)
    try:
        with nogil:
            if not by_channels:
                for chunk in prange(chunks, schedule="static", num_threads=num_threads):
                    winograd_weights(side, w, rows, u, chunk * 256, min(chunk * 256 + 256, rows))
            with parallel(num_threads=num_threads):
                thread = openmp.omp_get_thread_num()
                threads = openmp.omp_get_num_threads()
                v = buffers + thread * per_thread
                m = v + v_size
                if by_channels:
                    # whole register blocks of 8 rows a thread, the last share ending at C_out
                    # (rounding can carry a middle edge past it: 15 channels on 5 threads)
                    o0 = _row_share(g.out_channels, thread, threads)
                    o1 = _row_share(g.out_channels, thread + 1, threads)
                    if o0 < o1:
                        winograd_weights(side, w, rows, u, o0 * g.group_channels, o1 * g.group_channels)
                        position = 0
                        while position < total:
                            count = total - position
                            if count > block:
                                count = block
                            _winograd_block(g, x, u, bias, y, 0, o0, o1, position, count, v, m, ld)
                            position = position + count
                else:
                    position = _share_edge(work, total, thread, threads)
                    end = _share_edge(work, total, thread + 1, threads)
                    while position < end:
                        group = position // total
                        flat = position - group * total
                        count = end - position
                        if count > block:
                            count = block
                        if count > total - flat:
                            count = total - flat
                        _winograd_block(g, x, u, bias, y, group, 0, g.group_out, flat, count, v, m, ld)
                        position = position + count
    finally:
        free(allocation)
        free(u)
    return 0


cdef bint _winograd_rows(const Geometry* g) noexcept nogil:
    """The float32 forward of this geometry runs :func:`_winograd_rows_forward`: a 7-wide,
    stride-2, undilated kernel along the rows (ResNet's 7x7/2 stem; any kernel height, stride and
    dilation down the columns) with WINOGRAD_ROWS_MIN_TERMS reduction terms (Cg KH) and
    WINOGRAD_MIN_OUT output channels a group, on the register kernel."""
    return (CONV_AVX512 and WINOGRAD and g.kernel_w == 7 and g.stride_w == 2 and g.dilation_w == 1
            and g.group_channels * g.kernel_h >= WINOGRAD_ROWS_MIN_TERMS and g.group_out >= WINOGRAD_MIN_OUT)


def forward_winograd_rows(Py_ssize_t batch, Py_ssize_t channels, Py_ssize_t height, Py_ssize_t width,
                          Py_ssize_t out_channels, Py_ssize_t kernel_h, Py_ssize_t kernel_w, Py_ssize_t out_height,
                          Py_ssize_t out_width, int sh, int sw, int pt, int pl, int dh, int dw, int groups):
    """Whether the float32 forward of this geometry runs Winograd along the rows (7-wide stride-2
    kernels, _conv_winograd_rows.h). For tests."""
    cdef Geometry g = _geometry(batch, channels, height, width, out_channels, kernel_h, kernel_w, out_height,
                                out_width, sh, sw, pt, pl, dh, dw, groups)
    return bool(_winograd_rows(&g))


cdef void _winograd_rows_block(const Geometry* g, const float* x, const float* u, const float* bias, float* y,
                               Py_ssize_t group, Py_ssize_t flat, Py_ssize_t count, float* v, float* m,
                               Py_ssize_t ld) noexcept nogil:
    """Every output channel of group ``group`` for tiles [flat, flat + count) of the batch (four
    outputs of a row each): transform the tiles' input spans into v (13 rows a reduction term,
    Cg KH terms), 13 GEMMs M_p = U_p @ V_p into m (13 Og rows) on the register kernel, then each
    channel's outputs into y."""
    cdef Py_ssize_t tiles_w = (g.out_width + ROWS_TILE - 1) // ROWS_TILE
    cdef Py_ssize_t per_sample = g.out_height * tiles_w
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t terms = g.group_channels * g.kernel_h
    cdef Py_ssize_t rows = g.out_channels * terms
    cdef Py_ssize_t sample = flat // per_sample
    cdef Py_ssize_t p, o, channel
    winograd_rows_input(x + group * g.group_channels * plane, g.channels * plane, g.group_channels, g.height,
                        g.width, g.kernel_h, g.stride_h, g.dilation_h, g.pad_top, g.pad_left, g.out_height,
                        tiles_w, flat, count, v, ld)
    for p in range(ROWS_POSITIONS):
        conv_sgemm(g.group_out, count, terms, u + p * rows + group * g.group_out * terms, terms, 1, v + p * ld,
                   ROWS_POSITIONS * ld, m + p * ld, ROWS_POSITIONS * ld, 0)
    for o in range(g.group_out):
        channel = group * g.group_out + o
        winograd_rows_output(m + ROWS_POSITIONS * o * ld, ld, count, flat - sample * per_sample, g.out_height, tiles_w,
                             y + (sample * g.out_channels + channel) * g.pixels, g.out_channels * g.pixels,
                             g.out_width, bias[channel] if bias != NULL else 0)


cdef int _winograd_rows_forward(const Geometry* g, const float* x, const float* w, const float* bias, float* y,
                                int num_threads) except -1:
    """The forward of a 7-wide stride-2 convolution by Winograd along the rows
    (_conv_winograd_rows.h): tiles of four outputs of a row, per tile, kernel row and channel
    pair 13 multiply-adds instead of 28 (the even taps as F(4, 4), the odd ones as F(4, 3)).

    The weights are transformed into U (13 x C_out x Cg KH) by all threads, then the threads split
    the (group, tile) columns (equal shares rounded to PANEL tiles) and take their share in blocks
    of ``block`` tiles: :func:`_winograd_rows_block`. Each output is summed in an order fixed by
    the shapes alone (the GEMM's over the reduction terms, then the transform's), so the result
    does not depend on the threads or blocks."""
    cdef Py_ssize_t tiles_w = (g.out_width + ROWS_TILE - 1) // ROWS_TILE
    cdef Py_ssize_t total = g.batch * g.out_height * tiles_w
    cdef Py_ssize_t work = g.groups * total
    cdef Py_ssize_t terms = g.group_channels * g.kernel_h
    cdef Py_ssize_t block = WINOGRAD_BUDGET // (ROWS_POSITIONS * (terms + g.group_out))
    block = (block + PANEL // 2) // PANEL * PANEL
    if block < PANEL:
        block = PANEL
    if block > total:
        block = total
    cdef Py_ssize_t ld = _round_up(block, 16)
    cdef Py_ssize_t v_size = ROWS_POSITIONS * terms * ld
    cdef Py_ssize_t per_thread = v_size + ROWS_POSITIONS * g.group_out * ld
    cdef Py_ssize_t rows = g.out_channels * terms  # kernel rows of 7 taps
    cdef Py_ssize_t chunk, chunks = (rows + 255) // 256
    cdef Py_ssize_t thread, threads, position, end, group, flat, count
    cdef float* v
    cdef float* m
    cdef float* u
    cdef float* allocation
    cdef float* buffers = _winograd_allocate(ROWS_POSITIONS * rows, num_threads * per_thread, &u, &allocation)
    try:
        with nogil:
            for chunk in prange(chunks, schedule="static", num_threads=num_threads):
                winograd_rows_weights(w, rows, u, chunk * 256, min(chunk * 256 + 256, rows))
            with parallel(num_threads=num_threads):
                thread = openmp.omp_get_thread_num()
                threads = openmp.omp_get_num_threads()
                v = buffers + thread * per_thread
                m = v + v_size
                position = _share_edge(work, total, thread, threads)
                end = _share_edge(work, total, thread + 1, threads)
                while position < end:
                    group = position // total
                    flat = position - group * total
                    count = end - position
                    if count > block:
                        count = block
                    if count > total - flat:
                        count = total - flat
                    _winograd_rows_block(g, x, u, bias, y, group, flat, count, v, m, ld)
                    position = position + count
    finally:
        free(allocation)
        free(u)
    return 0


cdef int _winograd_grad_weight(const Geometry* g, const float* grad_y, const float* x, float* grad_w,
                               int num_threads) except -1:
    """The weight gradient of a 3x3 convolution by Winograd (stride 1: F(2x2, 3x3), 16
    positions; stride 2: 25), the transposition of :func:`_winograd_forward` (_conv_winograd.h):

        S_xi (Cg x Og) = sum over tiles of V_xi (Cg x tiles) @ Z_xi^T (tiles x Og),
        grad_w[o, c] = G^T S[c, o] G

    (V: the tiles' transformed input patches, as in the forward; Z = A g A^T of the tiles' 2x2
    blocks of output gradients). The threads split the (group, input channel) rows; each runs
    every tile in blocks of WINOGRAD_WEIGHT_BLOCK (fixed, so each S element is summed in one
    order whatever the thread count: the same bits on any number of threads), transforming its
    channels' patches and every output channel's gradients (Z^T, shared work done by each
    thread: 4 Og values a tile transposed, against P Cg Og / threads multiply-adds), and
    accumulates S for its rows; then writes their kernels."""
    cdef Py_ssize_t tiles_h = (g.out_height + 1) // 2, tiles_w = (g.out_width + 1) // 2
    cdef Py_ssize_t total = g.batch * tiles_h * tiles_w
    cdef Py_ssize_t positions = _winograd_positions(g)
    cdef Py_ssize_t ldz = _round_up(g.group_out, 16)
    # Z^T of a block holds every output channel: at most 8 MiB of it a thread (a block of 32 tiles
    # at 2048 output channels, stride 2). From the shape alone, never the thread count.
    cdef Py_ssize_t block = WINOGRAD_WEIGHT_BLOCK
    if positions * block * ldz > 2097152:
        block = max(16, 2097152 // (positions * ldz) // 16 * 16)
    if block > total:
        block = total
    cdef Py_ssize_t ld = _round_up(block, 16)
    cdef Py_ssize_t rows = g.groups * g.group_channels
    # the most rows a thread gets (shares of whole 8-row register blocks, the last one the rest)
    cdef Py_ssize_t widest = 0, thread, threads, r0, r1, group, c0, c1, width, position, count, xi
    for thread in range(num_threads):
        r0, r1 = _row_share(rows, thread, num_threads), _row_share(rows, thread + 1, num_threads)
        widest = max(widest, r1 - r0)
    cdef Py_ssize_t v_size = positions * widest * ld
    cdef Py_ssize_t z_size = positions * block * ldz
    cdef Py_ssize_t per_thread = _round_up(v_size + z_size + positions * widest * ldz, 16)
    cdef Py_ssize_t plane = g.height * g.width
    cdef float* v
    cdef float* zt
    cdef float* acc
    cdef float* allocation = <float*> malloc(num_threads * per_thread * sizeof(float) + 64)
    if allocation == NULL:
        raise MemoryError("conv2d_backward: could not allocate the Winograd weight-gradient buffers")
    cdef float* buffers = _aligned(allocation)
    try:
        with nogil, parallel(num_threads=num_threads):
            thread = openmp.omp_get_thread_num()
            threads = openmp.omp_get_num_threads()
            v = buffers + thread * per_thread
            zt = v + v_size
            acc = zt + z_size
            r0 = _row_share(rows, thread, threads)
            r1 = _row_share(rows, thread + 1, threads)
            while r0 < r1:  # the share's rows group by group, at most `widest` at a time
                group = r0 // g.group_channels
                c0 = r0 - group * g.group_channels
                c1 = g.group_channels if r1 >= (group + 1) * g.group_channels else r1 - group * g.group_channels
                # at most the rows the buffers hold (OpenMP may run fewer threads than asked: wider shares)
                width = c1 - c0 if c1 - c0 < widest else widest
                position = 0
                while position < total:
                    count = total - position
                    if count > block:
                        count = block
                    if positions == 16:
                        winograd_input(x + (group * g.group_channels + c0) * plane, g.channels * plane, width,
                                       g.height, g.width, g.pad_top, g.pad_left, tiles_h, tiles_w, position, count,
                                       v, ld)
                    else:
                        winograd_input_s2(x + (group * g.group_channels + c0) * plane, g.channels * plane, width,
                                          g.height, g.width, g.pad_top, g.pad_left, tiles_h, tiles_w, position,
                                          count, v, ld)
                    winograd_grad_output(grad_y + group * g.group_out * g.pixels, positions,
                                         g.out_channels * g.pixels, g.group_out, g.out_height, g.out_width, tiles_h,
                                         tiles_w, position, count, zt, ldz)
                    for xi in range(positions):
                        conv_sgemm(width, g.group_out, count, v + xi * ld, positions * ld, 1, zt + xi * ldz,
                                   positions * ldz, acc + xi * width * ldz, ldz, position > 0)
                    position = position + count
                winograd_grad_weights(acc, positions, width, ldz, g.group_out,
                                      grad_w + (group * g.group_out * g.group_channels + c0) * 9,
                                      g.group_channels * 9)
                r0 = r0 + width
    finally:
        free(allocation)
    return 0


cdef inline Py_ssize_t _row_share(Py_ssize_t rows, Py_ssize_t thread, Py_ssize_t threads) noexcept nogil:
    """Where thread ``thread``'s share of ``rows`` starts: an equal split rounded to 8 rows (a
    register block), the last share ending at ``rows``."""
    if thread >= threads:
        return rows
    cdef Py_ssize_t edge = (thread * rows // threads + 4) // 8 * 8
    return edge if edge < rows else rows


cdef int _forward(const Geometry* geometry, const floating* x, const floating* w, const floating* bias, floating* y,
                  int num_threads) except -1:
    """The forward of :func:`conv2d_forward` on raw C-contiguous arrays (the stride-1 input
    gradient runs it too, on grad_y and the flipped weights); bias may be NULL (none)."""
    cdef Geometry g = geometry[0]
    if floating is float:
        if _winograd_positions(&g) > 0 and g.batch * g.pixels > 0:
            return _winograd_forward(&g, x, w, bias, y, max(num_threads, 1))
        if _winograd_rows(&g) and g.batch * g.pixels > 0:
            return _winograd_rows_forward(&g, x, w, bias, y, max(num_threads, 1))
    cdef Py_ssize_t total = g.batch * g.pixels
    cdef Py_ssize_t work = g.groups * total
    cdef Py_ssize_t position, end, group, flat, count, thread, threads, band, band_columns
    cdef floating* col
    cdef floating* out
    cdef bint partial = False
    if work == 0:
        return 0
    if num_threads < 1:
        num_threads = 1
    cdef Band* bands = <Band*> malloc(g.out_height * sizeof(Band))
    if bands == NULL:
        raise MemoryError("conv2d_forward: could not allocate the row bands")
    # Small padded images on the register kernel: by row bands, each band's GEMM reducing over
    # the kernel rows it meets inside the input only, where that skips enough of the work.
    cdef Py_ssize_t number = _plan_bands(&g, bands, floating is float and CONV_AVX512)
    partial = number > 1 or bands[0].kh0 > 0 or bands[0].kh1 < g.kernel_h
    if partial:  # tiles run up to TAIL columns over g.tile: see the loop below
        g.ld = _round_up(min(g.tile + TAIL, total), 16)
    # Per thread, 64-byte aligned: the im2col tile (K x ld) and the GEMM result of a tile that
    # spans samples (Og x ld). Allocated here so a failure can raise (not inside the region).
    cdef Py_ssize_t col_size = g.reduction * g.ld
    cdef Py_ssize_t per_thread = _round_up(col_size + g.group_out * g.ld, 16)
    cdef floating* allocation = <floating*> malloc(num_threads * per_thread * sizeof(floating) + 64)
    if allocation == NULL:
        free(bands)
        raise MemoryError("conv2d_forward: could not allocate the im2col buffers")
    cdef floating* buffers = _aligned(allocation)
    try:
        with nogil, parallel(num_threads=num_threads):
            # Each thread takes an equal share of the (group, band, pixel) columns, cut into
            # tiles at group and band ends and every g.tile pixels: balanced whatever the tile
            # count (a prange over whole tiles left a thread idle when one tile held the batch's
            # 7x7 outputs).
            thread = openmp.omp_get_thread_num()
            threads = openmp.omp_get_num_threads()
            col = buffers + thread * per_thread
            out = col + col_size
            position = _share_edge(work, total, thread, threads)
            end = _share_edge(work, total, thread + 1, threads)
            band = 0
            while position < end:
                group = position // total
                flat = position - group * total
                if flat < bands[band].start:
                    band = 0
                band_columns = g.batch * (bands[band].oh1 - bands[band].oh0) * g.out_width
                while flat >= bands[band].start + band_columns:
                    band = band + 1
                    band_columns = g.batch * (bands[band].oh1 - bands[band].oh0) * g.out_width
                count = end - position
                if count > bands[band].start + band_columns - flat:
                    count = bands[band].start + band_columns - flat
                if partial:
                    # the rest of a band goes into one tile when it is at most TAIL over the tile
                    if count > g.tile + TAIL:
                        count = g.tile
                else:
                    if count > g.tile:
                        count = g.tile
                    if ((g.pixels >= SPAN_BELOW or (g.group_out > g.reduction and g.pixels >= 64))
                            and count > g.pixels - flat % g.pixels):
                        count = g.pixels - flat % g.pixels
                _forward_tile(&g, &bands[band], x, w, bias, y, group, flat - bands[band].start, count, col, out)
                position = position + count
    finally:
        free(allocation)
        free(bands)
    return 0


cdef int _flipped_input_gradient(const Geometry* g, const floating* grad_y, const floating* w, floating* grad_x,
                                 int num_threads) except -1:
    """The input gradient of a stride-1 convolution as a forward convolution (no col2im):

        grad_x = conv2d(grad_y, w', padding = ((KH - 1) * dh - pad_top, (KW - 1) * dw - pad_left)),
        w'[g * Cg + c, o, kh, kw] = w[g * Og + o, c, KH - 1 - kh, KW - 1 - kw]   (same groups, dilation)

    (grad_x[i] = sum_kh grad_y[i + pad_top - kh * dh] w[kh]: a correlation with the flipped
    kernel). It runs on the forward's kernel path at the forward's speed, where unfold, GEMM and
    col2im were 10-25% slower on the ResNet-18 3x3 layers. Needs pad_top <= (KH - 1) * dh and
    pad_left <= (KW - 1) * dw (no negative padding)."""
    cdef Geometry flipped_geometry = _geometry(g.batch, g.out_channels, g.out_height, g.out_width, g.channels,
                                               g.kernel_h, g.kernel_w, g.height, g.width, 1, 1,
                                               <int> ((g.kernel_h - 1) * g.dilation_h - g.pad_top),
                                               <int> ((g.kernel_w - 1) * g.dilation_w - g.pad_left),
                                               <int> g.dilation_h, <int> g.dilation_w, <int> g.groups)
    cdef Py_ssize_t window = g.kernel_h * g.kernel_w
    cdef floating* flipped = <floating*> malloc(g.channels * g.group_out * window * sizeof(floating) + 1)
    cdef Py_ssize_t block, row, row_end, group, c, o, t
    cdef Py_ssize_t blocks = (g.channels + FLIP_BLOCK - 1) // FLIP_BLOCK
    cdef const floating* source
    cdef floating* target
    if flipped == NULL:
        raise MemoryError("conv2d_backward: could not allocate the flipped weights")
    try:
        with nogil:
            # FLIP_BLOCK input channels at a time, so that each output channel's reads are one
            # contiguous stretch of its weight row (one channel at a time read 9 floats per
            # cache line fetched: 9% of the 256@14 input gradient's time on one thread)
            for block in prange(blocks, schedule="static", num_threads=num_threads):
                row_end = block * FLIP_BLOCK + FLIP_BLOCK
                if row_end > g.channels:
                    row_end = g.channels
                for o in range(g.group_out):
                    for row in range(block * FLIP_BLOCK, row_end):
                        group = row // g.group_channels
                        c = row - group * g.group_channels
                        source = w + ((group * g.group_out + o) * g.group_channels + c) * window
                        target = flipped + (row * g.group_out + o) * window
                        for t in range(window):  # (kh, kw) -> (KH - 1 - kh, KW - 1 - kw)
                            target[t] = source[window - 1 - t]
        _forward(&flipped_geometry, grad_y, flipped, NULL, grad_x, num_threads)
    finally:
        free(flipped)
    return 0


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
        _im2col(g, x_group, first, count, col, count)
        gemm(False, True, <int> g.group_out, <int> g.reduction, <int> count, <floating> 1.0, grad_y_tile,
             <int> g.pixels, col, <int> count, <floating> 1.0, grad_w_group, <int> g.reduction)


cdef void _grad_weight_tile(const Geometry* g, const floating* grad_y, const floating* x, floating* partial_t,
                            Py_ssize_t group, Py_ssize_t flat, Py_ssize_t count, Py_ssize_t ld, floating* col,
                            floating* grad_y_t, bint accumulate) noexcept nogil:
    """One (group, tile of ``count`` consecutive output pixels of the whole batch from ``flat``) of the weight
    gradient on the register kernel (float32, AVX-512), added into (``accumulate``) or written to
    partial sums kept transposed (group, K, Og):

        grad_w_g^T (K x Og) += col (K x T) @ grad_y_tile^T (T x Og)

    Transposed because the kernel vectorises along C's rows and reads B's rows contiguously: the
    unfolded input (K x T, the big operand) is then read as it is unfolded and only the small
    grad_y tile (Og x T) is transposed. A tile may span samples (the sum runs over them all).
    """
    cdef Py_ssize_t sample = flat // g.pixels
    cdef Py_ssize_t first = flat - sample * g.pixels
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t done = 0
    cdef Py_ssize_t segment, o, t, t0, t1
    cdef const floating* source
    cdef floating* target
    while done < count:
        segment = g.pixels - first
        if segment > count - done:
            segment = count - done
        _im2col(g, x + (sample * g.channels + group * g.group_channels) * plane, first, segment, col + done, ld)
        source = grad_y + (sample * g.out_channels + group * g.group_out) * g.pixels + first
        # grad_y_t in panel-major order: output channels [32 j, 32 j + 32) of pixel t at
        # grad_y_t[j * ld * 32 + t * 32 + o - 32 j]. Row-major (T x Og), the GEMM's 128 x 32
        # panel of it had rows Og floats apart: 2 KiB at Og = 512, so its 256 lines fell into 4 of
        # the 64 sets of L1 and were re-read from L2 for every row block of col (weight gradient
        # alone, one core: 512@7 66 -> 73 GFLOP/s, 256@14 85 -> 92, 64@56 81 -> 84).
        for o in range(g.group_out):
            target = grad_y_t + (o // 32) * ld * 32 + done * 32 + o % 32
            for t in range(segment):
                target[t * 32] = source[o * g.pixels + t]
        done = done + segment
        sample = sample + 1
        first = 0
    if floating is float:
        conv_sgemm_whole(g.reduction, g.group_out, count, col, ld, 1, grad_y_t, 32, ld * 32,
                         partial_t + group * g.reduction * g.group_out, g.group_out, accumulate)


cdef inline Py_ssize_t _wide_edge(Py_ssize_t channels, Py_ssize_t thread, Py_ssize_t threads) noexcept nogil:
    """First input channel of ``thread``'s share in _grad_weight_wide: an equal share rounded to a
    multiple of 16 (whole vectors of the GEMM's columns), the last edge at ``channels``."""
    if thread >= threads:
        return channels
    cdef Py_ssize_t edge = (thread * channels // threads + 8) // 16 * 16
    return edge if edge < channels else channels


cdef void _grad_weight_wide(const Geometry* g, const floating* grad_y, const floating* x, floating* grad_w,
                            Py_ssize_t thread, Py_ssize_t threads, floating* col, floating* col_t) noexcept nogil:
    """This thread's columns [c0, c1) of the weight gradient of a 1x1 convolution (one group)
    with more output channels than input channels, the 1x1/2 downsamples of a ResNet (Og = 2 K):

        grad_w[:, c0:c1] (Og x cw) = sum over samples n, chunks of pixels P of
                                     grad_y[n, :, P] (Og x |P|) @ x_col[n, c0:c1, P]^T (|P| x cw)

    on the register kernel, vectorised along the input channels (C's rows). Only the unfolded
    input's chunk is transposed (cw x |P|, the smaller operand here), grad_y is read in place (one
    sample per chunk, so its rows are ``pixels`` apart), and the threads own disjoint columns of
    grad_w: no partial sums to reduce, and each element sums over the samples and pixels in
    order, whatever the thread count. (The transposed path, _grad_weight_tile, would transpose
    the grad_y tile, twice the size of the unfolded one here.) Weight gradient alone, 2 threads,
    p10 of 300 calls, against BLAS with per-thread partial sums: 64->128/2 0.70 -> 0.58 ms,
    128->256/2 0.64 -> 0.54, 256->512/2 0.73 -> 0.55 (142-160 -> 176-192 GFLOP/s).

    Samples of at most WIDE_TILE / 2 pixels go several to a chunk, grad_y's rows then read in
    runs of a sample's pixels (gatedrnn_conv_sgemm_runs): on 7x7 outputs one sample a chunk
    made GEMMs of 49-step reductions, each pass over this thread's 512 x 128 block of grad_w
    (256 KiB) carrying 49 steps of work; five a chunk, 245 steps in KC blocks of two samples
    (98 steps: whole runs). 256->512/2, medians of 5 s of calls: 2 threads 0.69-0.75 -> 0.53-0.55
    ms, 1 thread 1.10 -> 1.09."""
    cdef Py_ssize_t c0 = _wide_edge(g.reduction, thread, threads)
    cdef Py_ssize_t c1 = _wide_edge(g.reduction, thread + 1, threads)
    cdef Py_ssize_t width = c1 - c0
    cdef Py_ssize_t ld_t = _round_up(width, 16)
    cdef Py_ssize_t plane = g.height * g.width
    cdef Geometry rows = g[0]
    cdef Py_ssize_t n, first, count
    cdef const floating* source
    cdef Py_ssize_t lds
    rows.group_channels = width
    rows.reduction = width
    if width <= 0:
        return
    # a sample's pixels in equal chunks of at most WIDE_TILE (784 = 4 x 196, not 3 x 256 + 16);
    # samples of fewer pixels several to a chunk (the 49 of a 7x7 output: 5, a reduction of 245)
    cdef Py_ssize_t chunks = (g.pixels + WIDE_TILE - 1) // WIDE_TILE
    cdef Py_ssize_t chunk = (g.pixels + chunks - 1) // chunks
    cdef Py_ssize_t together = WIDE_TILE // g.pixels if g.pixels <= WIDE_TILE // 2 else 1
    cdef Py_ssize_t s, samples
    if together > 1:
        n = 0
        while n < g.batch:
            samples = g.batch - n
            if samples > together:
                samples = together
            for s in range(samples):
                _im2col(&rows, x + ((n + s) * g.channels + c0) * plane, 0, g.pixels, col + s * g.pixels, WIDE_TILE)
            if floating is float:
                transpose(col, width, samples * g.pixels, WIDE_TILE, col_t, ld_t)
                # grad_y's columns (the pixels of these samples) in runs of a sample's pixels,
                # one run every C_out * pixels (the next sample's plane of the same channel)
                conv_sgemm_runs(g.out_channels, width, samples * g.pixels, grad_y + n * g.out_channels * g.pixels,
                                g.pixels, 1, g.pixels, g.out_channels * g.pixels, col_t, ld_t, grad_w + c0,
                                g.reduction, n > 0)
            n = n + samples
        return
    for n in range(g.batch):
        first = 0
        while first < g.pixels:
            count = g.pixels - first
            if count > chunk:
                count = chunk
            if g.direct:
                source = x + (n * g.channels + c0) * plane + first
                lds = plane
            else:
                _im2col(&rows, x + (n * g.channels + c0) * plane, first, count, col, WIDE_TILE)
                source = col
                lds = WIDE_TILE
            if floating is float:
                transpose(source, width, count, lds, col_t, ld_t)
                conv_sgemm(g.out_channels, width, count, grad_y + n * g.out_channels * g.pixels + first, g.pixels, 1,
                           col_t, ld_t, grad_w + c0, g.reduction, n > 0 or first > 0)
            first = first + count


cdef void _grad_weight_rows(const Geometry* g, const floating* grad_y, const floating* x, floating* partial_t,
                            Py_ssize_t thread, Py_ssize_t threads, Py_ssize_t wtile, Py_ssize_t ld, floating* col,
                            floating* grad_y_t) noexcept nogil:
    """This thread's share of the weight gradient (one group) split by input channels: the rows
    [c0 * KH * KW, c1 * KH * KW) of grad_w^T (K x Og, shared by the threads, each writing its own
    rows), summed over every pixel of the batch in tiles of ``wtile``. No per-thread partial sums
    to add up afterwards: the pixel split's reduction read one K x Og buffer per thread (9 MiB
    each on the 512@7 layer) and was 15% of that layer's weight gradient on 2 threads. Each
    thread unfolds only its channels; the small grad_y tile is transposed by every thread."""
    cdef Geometry rows = g[0]
    cdef Py_ssize_t window = g.kernel_h * g.kernel_w
    cdef Py_ssize_t c0 = thread * g.group_channels // threads
    cdef Py_ssize_t c1 = (thread + 1) * g.group_channels // threads
    cdef Py_ssize_t total = g.batch * g.pixels
    cdef Py_ssize_t position = 0
    cdef Py_ssize_t count
    rows.group_channels = c1 - c0
    rows.reduction = (c1 - c0) * window
    if c1 <= c0:
        return
    while position < total:
        count = total - position
        if count > wtile:
            count = wtile
        _grad_weight_tile(&rows, grad_y, x + c0 * g.height * g.width, partial_t + c0 * window * g.group_out, 0,
                          position, count, ld, col, grad_y_t, position > 0)
        position = position + count


cdef void _reduce_weight_block(const Geometry* g, const floating* partials, Py_ssize_t per_thread,
                               Py_ssize_t threads, Py_ssize_t item, Py_ssize_t r_blocks,
                               floating* grad_w) noexcept nogil:
    """grad_w[group, o, r] = sum over threads in thread order of partial_t[group, r, o] for one
    (group, block of 16 reduction rows r), 16 x 16 (r, o) at a time: summed along o (contiguous in
    the partial sums, vectorised) into a block on the stack, then written transposed. Reading the
    16 rows one o at a time instead (a column of 16 values Og floats apart, 2 KiB at Og = 512, all
    in 2 of L1's 64 sets) made this reduction 20% of the 512@7 layer's weight gradient."""
    cdef Py_ssize_t group = item // r_blocks
    cdef Py_ssize_t r0 = (item - group * r_blocks) * 16
    cdef Py_ssize_t rows = 16
    cdef Py_ssize_t o0, o, r, t, width
    cdef floating block[16][16]
    cdef const floating* partial = partials + group * g.reduction * g.group_out
    cdef floating* target
    if r0 + rows > g.reduction:
        rows = g.reduction - r0
    for o0 in range(0, g.group_out, 16):
        width = g.group_out - o0
        if width > 16:
            width = 16
        for r in range(rows):
            for o in range(16):
                block[r][o] = 0
            for t in range(threads):
                for o in range(width):
                    block[r][o] = block[r][o] + partial[t * per_thread + (r0 + r) * g.group_out + o0 + o]
        for o in range(width):
            target = grad_w + (group * g.group_out + o0 + o) * g.reduction + r0
            for r in range(rows):
                target[r] = block[r][o]


cdef void _col2im_1x1_rows(const Geometry* g, const floating* rows, Py_ssize_t ld, Py_ssize_t r0, Py_ssize_t r1,
                           floating* grad_x_channels) noexcept nogil:
    """:func:`_col2im_rows` for a 1x1 kernel and a whole sample's pixels (first = 0, count =
    g.pixels), writing instead of adding: with a 1x1 kernel an input element meets at most one
    output pixel, so each channel's plane is written once, zeros where no output pixel reads it,
    and needs no memset first. Input gradient alone on the 1x1/2 layers, 2 threads, p10 of 300
    calls (with the bias sum, no longer asked for without a bias, before): 64->128 0.69 ->
    0.59 ms, 128->256 0.64 -> 0.59, 256->512 0.65 -> 0.61."""
    cdef Py_ssize_t r, ih, shifted, j, low, high
    cdef floating* target
    cdef const floating* source
    _valid_columns(-g.pad_left, g.stride_w, g.width, g.out_width, &low, &high)
    for r in range(r0, r1):
        for ih in range(g.height):
            target = grad_x_channels + (r * g.height + ih) * g.width
            shifted = ih + g.pad_top
            if shifted % g.stride_h or shifted // g.stride_h >= g.out_height:
                memset(target, 0, g.width * sizeof(floating))
                continue
            source = rows + (r - r0) * ld + shifted // g.stride_h * g.out_width
            if floating is float and g.stride_w == 2 and g.pad_left == 0:
                expand_stride2(target, g.width, source, high)
            else:
                memset(target, 0, g.width * sizeof(floating))
                for j in range(low, high):
                    target[j * g.stride_w - g.pad_left] = source[j]


cdef floating _channel_sum(const floating* grad_y, Py_ssize_t channel, Py_ssize_t batch, Py_ssize_t channels,
                           Py_ssize_t pixels) noexcept nogil:
    """Sum of grad_y[:, channel] over samples and pixels, in 16 interleaved partial sums (lane l
    takes the pixels p = l mod 16 of each sample) added in lane order: a fixed order, so
    deterministic, and one the compiler vectorises; a single running sum is bound by the add's
    latency (4 cycles an element, 2% of a ResNet layer's backward)."""
    cdef floating lanes[16]
    cdef floating total = 0
    cdef Py_ssize_t n, p, l, whole
    cdef const floating* row
    for l in range(16):
        lanes[l] = 0
    whole = pixels - pixels % 16
    for n in range(batch):
        row = grad_y + (n * channels + channel) * pixels
        for p in range(0, whole, 16):
            for l in range(16):
                lanes[l] = lanes[l] + row[p + l]
        for p in range(whole, pixels):
            lanes[p - whole] = lanes[p - whole] + row[p]
    for l in range(16):
        total = total + lanes[l]
    return total


cdef void _pack_weight_columns(const Geometry* g, const floating* w, Py_ssize_t item, Py_ssize_t blocks,
                               floating* panels) noexcept nogil:
    """The rows of w_g^T (reduction x Og) for one (group, block of input channels) [c0, c1), in
    the packed layout of gatedrnn_conv_sgemm_packed: panels[rb, o, i] = w_g[o, c0 * KH * KW + 8 rb + i],
    zero past the block's rows."""
    cdef Py_ssize_t block = item % blocks
    cdef Py_ssize_t group = item // blocks
    cdef Py_ssize_t c0 = block * g.group_channels // blocks
    cdef Py_ssize_t c1 = (block + 1) * g.group_channels // blocks
    cdef Py_ssize_t window = g.kernel_h * g.kernel_w
    cdef Py_ssize_t rows = (c1 - c0) * window
    cdef Py_ssize_t rb, o, i, r
    cdef const floating* w_rows = w + group * g.group_out * g.reduction + c0 * window
    cdef floating* target
    for rb in range((rows + 7) // 8):
        for o in range(g.group_out):
            target = panels + (rb * g.group_out + o) * 8
            for i in range(8):
                r = rb * 8 + i
                target[i] = w_rows[o * g.reduction + r] if r < rows else 0


cdef void _grad_input_item(const Geometry* g, const floating* grad_y, const floating* w, floating* grad_x,
                           Py_ssize_t item, Py_ssize_t blocks, floating* grad_col,
                           const floating* panels) noexcept nogil:
    """One (sample, group, block of input channels) of the input gradient.

    The rows of grad_col = w_g^T @ grad_y that belong to input channels [c0, c1) fold back into
    those channels only, so blocks of one sample never write the same memory and a batch of one
    still spreads over the threads.
    """
    cdef Py_ssize_t block = item % blocks
    cdef Py_ssize_t group = (item // blocks) % g.groups
    cdef Py_ssize_t sample = item // (blocks * g.groups) * g.in_spread
    cdef Py_ssize_t c0 = block * g.group_channels // blocks
    cdef Py_ssize_t c1 = (block + 1) * g.group_channels // blocks
    cdef Py_ssize_t window = g.kernel_h * g.kernel_w
    cdef Py_ssize_t plane = g.height * g.width
    cdef Py_ssize_t first, count, r0, r1, samples, n, o
    cdef floating* gathered
    cdef const floating* w_rows = w + group * g.group_out * g.reduction + c0 * window
    cdef const floating* grad_y_group = grad_y + (sample * g.out_channels + group * g.group_out) * g.pixels
    cdef floating* grad_x_block = grad_x + (sample * g.channels + group * g.group_channels + c0) * plane
    if c1 <= c0:
        return
    if floating is float:
        if panels != NULL and g.in_spread > 1:
            # Small images: the GEMM runs over the pixels of in_spread samples at once (one
            # sample's 49 pixels would leave a quarter of the 64 columns of two register blocks
            # idle), grad_y's rows gathered after the eight-row grad_col buffer.
            samples = g.batch - sample
            if samples > g.in_spread:
                samples = g.in_spread
            gathered = grad_col + 8 * g.in_ld
            for n in range(samples):
                if window > 1:  # a 1x1 kernel's rows are written whole (_col2im_1x1_rows)
                    memset(grad_x_block + n * g.channels * plane, 0, (c1 - c0) * plane * sizeof(floating))
                for o in range(g.group_out):
                    memcpy(gathered + o * g.in_ld + n * g.pixels, grad_y_group + (n * g.out_channels + o) * g.pixels,
                           g.pixels * sizeof(floating))
            for r0 in range(0, (c1 - c0) * window, 8):
                r1 = r0 + 8
                if r1 > (c1 - c0) * window:
                    r1 = (c1 - c0) * window
                conv_sgemm_packed(r1 - r0, samples * g.pixels, g.group_out, panels + r0 * g.group_out, gathered,
                                  g.in_ld, grad_col, g.in_ld, False)
                for n in range(samples):
                    if window == 1:
                        _col2im_1x1_rows(g, grad_col + n * g.pixels, g.in_ld, r0, r1, grad_x_block + n * g.channels * plane)
                    else:
                        _col2im_rows(g, grad_col + n * g.pixels, g.in_ld, r0, r1, 0, g.pixels,
                                     grad_x_block + n * g.channels * plane)
            return
        if panels != NULL:  # w_g^T's rows for this block packed by _pack_weight_columns
            if g.direct:
                conv_sgemm_packed(c1 - c0, g.pixels, g.group_out, panels, grad_y_group, g.pixels, grad_x_block,
                                  g.pixels, False)
                return
            # Eight rows of grad_col at a time, folded back at once: the packed w^T rows are read
            # once per tile, grad_y's tile (Og x in_tile, sized for L2) once per eight rows. (64
            # rows at a time, each B panel then reused by 8 row blocks from L1, was no faster on
            # the 3x3/2 and 512@7 layers, 1 or 2 threads: the GEMM is not bound by L2 here.)
            if window > 1 or g.in_tile < g.pixels:
                memset(grad_x_block, 0, (c1 - c0) * plane * sizeof(floating))
            first = 0
            while first < g.pixels:
                count = g.pixels - first
                if count > g.in_tile:
                    count = g.in_tile
                for r0 in range(0, (c1 - c0) * window, 8):
                    r1 = r0 + 8
                    if r1 > (c1 - c0) * window:
                        r1 = (c1 - c0) * window
                    conv_sgemm_packed(r1 - r0, count, g.group_out, panels + r0 * g.group_out, grad_y_group + first,
                                      g.pixels, grad_col, g.in_ld, False)
                    if window == 1 and count == g.pixels:
                        _col2im_1x1_rows(g, grad_col, g.in_ld, r0, r1, grad_x_block)
                    else:
                        _col2im_rows(g, grad_col, g.in_ld, r0, r1, first, count, grad_x_block)
                first = first + count
            return
    if g.direct:
        # grad_x[n, g, c0:c1] (cb x HW) = w_g[:, c0:c1]^T (cb x Og) @ grad_y[n, g] (Og x HW)
        _matmul(True, c1 - c0, g.pixels, g.group_out, w_rows, g.reduction, grad_y_group, g.pixels, False,
                grad_x_block, g.pixels)
        return
    memset(grad_x_block, 0, (c1 - c0) * plane * sizeof(floating))
    first = 0
    while first < g.pixels:
        count = g.pixels - first
        if count > g.tile:
            count = g.tile
        _matmul(True, (c1 - c0) * window, count, g.group_out, w_rows, g.reduction, grad_y_group + first,
                g.pixels, False, grad_col, count)
        _col2im_rows(g, grad_col, count, 0, (c1 - c0) * window, first, count, grad_x_block)
        first = first + count


def conv2d_backward(const floating[:, :, :, ::1] grad_y, const floating[:, :, :, ::1] x,
                    const floating[:, :, :, ::1] w, int stride_h, int stride_w, int pad_top, int pad_left,
                    int dilation_h, int dilation_w, int groups, floating[::1] grad_x_flat,
                    floating[::1] grad_w_flat, floating[::1] grad_b, bint need_input, bint need_weight,
                    bint need_bias, int num_threads):
    """Gradients of :func:`conv2d_forward`.

    grad_x_flat: x's size (flattened, written when need_input); grad_w_flat: w's size (written
    when need_weight); grad_b (C_out,) (written when need_bias). Unneeded outputs may be empty arrays.
    """
    cdef Geometry g = _geometry(x.shape[0], x.shape[1], x.shape[2], x.shape[3], w.shape[0], w.shape[2],
                                w.shape[3], grad_y.shape[2], grad_y.shape[3], stride_h, stride_w, pad_top,
                                pad_left, dilation_h, dilation_w, groups)
    _check(&g, w.shape[1], grad_y.shape[0], grad_y.shape[1], grad_b.shape[0] if need_bias else g.out_channels)
    cdef Py_ssize_t weight_size = g.out_channels * g.reduction
    if need_input and grad_x_flat.shape[0] != g.batch * g.channels * g.height * g.width:
        raise ValueError("conv2d_backward: grad_x has the wrong size")
    if need_weight and grad_w_flat.shape[0] != weight_size:
        raise ValueError("conv2d_backward: grad_w has the wrong size")
    if num_threads < 1:
        num_threads = 1
    if floating is float:
        if need_weight and _winograd_positions(&g) > 0 and g.batch > 0:
            _winograd_grad_weight(&g, &grad_y[0, 0, 0, 0], &x[0, 0, 0, 0], &grad_w_flat[0], num_threads)
            need_weight = False
    cdef Py_ssize_t tiles = (g.pixels + g.tile - 1) // g.tile
    cdef Py_ssize_t item, o, n, p, t, i, blocks
    cdef floating* col
    cdef floating* grad_w_mine
    cdef floating total
    cdef const floating* row
    if num_threads < 1:
        num_threads = 1
    # Samples per input-gradient item: 1, or for images under 64 output pixels on the register
    # kernel (float32, AVX-512) the smallest power of two of samples with 128 GEMM columns (a
    # power of two, so that a power-of-two batch splits into equal chunks: 3 samples of 49
    # pixels made chunks of 3, 3 and 2 at batch 8, one thread doing 9/16 of the work).
    g.in_spread = 1
    if floating is float:
        if CONV_AVX512 and need_input and not g.direct and g.pixels < 64:
            while g.in_spread * g.pixels < 128 and g.in_spread < g.batch:
                g.in_spread = 2 * g.in_spread
            if g.in_spread > g.batch:
                g.in_spread = g.batch
    cdef Py_ssize_t chunks = (g.batch + g.in_spread - 1) // g.in_spread
    # grad_y's tile (Og x in_tile) is re-read for every eight rows: 256 KiB keeps it in L2.
    g.in_tile = 65536 // g.group_out
    if g.in_tile >= PANEL:
        g.in_tile = g.in_tile - g.in_tile % PANEL
    if g.in_tile < 1:
        g.in_tile = 1
    # ... but a whole sample for a 1x1 kernel up to 1 MiB (the 784 pixels of 64->128/2: 392 KiB),
    # whose rows are then written whole, without a memset first (_col2im_1x1_rows)
    if g.kernel_h == 1 and g.kernel_w == 1 and g.group_out * g.pixels <= 262144:
        g.in_tile = g.pixels
    g.in_ld = _round_up(g.in_tile if g.in_tile < g.pixels else g.pixels, 16)
    if g.in_spread > 1:
        g.in_ld = _round_up(g.in_spread * g.pixels, 16)
    # Input channels per input-gradient item: enough items for two per thread even at batch 1.
    blocks = (2 * num_threads + chunks * g.groups - 1) // (chunks * g.groups)
    if blocks > g.group_channels:
        blocks = g.group_channels
    if blocks < 1:
        blocks = 1
    # Per thread: grad_w partial sums (reduced in thread order afterwards, so the result does not
    # depend on timing) and one tile buffer, the unfolded input in the weight pass and the
    # unfolded input gradient in the input pass. Allocated here so a failure can raise.
    cdef Py_ssize_t buffer_size = 0 if g.direct else g.reduction * g.tile
    if buffer_size < 8 * 16 * (g.pixels // 16 + 1) and not g.direct:
        buffer_size = 8 * 16 * (g.pixels // 16 + 1)  # eight rows of the input gradient's tile (in_ld <= that)
    if g.in_spread > 1 and buffer_size < (8 + g.group_out) * g.in_ld:
        buffer_size = (8 + g.group_out) * g.in_ld  # eight rows of grad_col and the gathered grad_y
    # A 1x1 kernel, one group, more output than input channels (at least 16 input channels, a
    # vector of the GEMM's columns): the wide path (_grad_weight_wide), the threads splitting the
    # input channels. 2 threads, weight gradient alone: see _grad_weight_wide.
    cdef bint wide_weight = False
    if floating is float:
        wide_weight = (CONV_AVX512 and need_weight and g.kernel_h == 1 and g.kernel_w == 1 and g.groups == 1
                       and g.group_out > g.reduction and g.reduction >= 16)
    cdef Py_ssize_t partial_size = weight_size if need_weight and not wide_weight and not (CONV_AVX512 and floating is float and 16 <= g.group_out <= g.reduction) else 0
    cdef Py_ssize_t per_thread = partial_size + buffer_size
    cdef floating* buffers = <floating*> malloc((num_threads * per_thread + 1) * sizeof(floating))
    if buffers == NULL:
        raise MemoryError("conv2d_backward: could not allocate the per-thread buffers")
    cdef floating* grad_x_ptr = &grad_x_flat[0] if need_input else NULL
    # float32 on AVX-512: w_g^T packed per (group, block of input channels) for the GEMM kernel,
    # each slot sized for the largest block (ceil(Cg / blocks) channels).
    cdef Py_ssize_t panel_size = _round_up(((g.group_channels + blocks - 1) // blocks) * g.kernel_h * g.kernel_w,
                                           8) * g.group_out
    cdef floating* panels = NULL
    # float32 on AVX-512, stride 1, not the direct 1x1 case: the input gradient is a forward
    # convolution with the flipped weights (_flipped_input_gradient), no packing or col2im; where
    # the batch has at least FLIP_BELOW input pixels, as flipping the weights costs one pass over
    # them whatever the batch. Measured against torch on one core, ratio packed -> flipped: 64@56
    # 0.78 -> 0.93, 128@28 0.77 -> 0.88, 256@14 (1568 pixels) 0.70 -> 0.76, 512@7 (392) 0.66 ->
    # 0.57 (session 2). With the forward's row bands and the blocked flip (session 4, 2 threads,
    # input gradient alone, packed -> flipped): 512@7 batch 8 (392 pixels) 11.2-11.9 -> 10.0-10.6
    # ms, 128@14 batch 4 (784) 1.59 -> 1.47, 64@14 batch 2 (392) 0.26 -> 0.21; but 512@7 batch 1
    # (49) 1.94 -> 2.98 and 256@7 batch 2 (98) 0.84 -> 1.08.
    cdef bint flip_input = False
    if floating is float:
        flip_input = (CONV_AVX512 and need_input and g.stride_h == 1 and g.stride_w == 1 and not g.direct
                      and g.pad_top <= (g.kernel_h - 1) * g.dilation_h
                      and g.pad_left <= (g.kernel_w - 1) * g.dilation_w
                      and g.batch * g.height * g.width >= FLIP_BELOW)
    if floating is float:
        if CONV_AVX512 and need_input and not flip_input:
            panels = <floating*> malloc(g.groups * blocks * panel_size * sizeof(floating) + 1)
            if panels == NULL:
                free(buffers)
                raise MemoryError("conv2d_backward: could not allocate the packed weights")
    # float32 on AVX-512 with at least 16 output channels per group (the kernel's vectors run
    # along them) and no more than K (the grad_y tile it transposes, Og x T, is then no larger
    # than the unfolded input; on the 1x1/2 layers, Og = 2 K, BLAS was 10-15% faster): the weight
    # gradient on the register kernel, per-thread partial sums transposed.
    cdef bint fast_weight = False
    cdef Py_ssize_t r_blocks = (g.reduction + 15) // 16
    if floating is float:
        fast_weight = CONV_AVX512 and need_weight and 16 <= g.group_out <= g.reduction
    # ... split by input channels (_grad_weight_rows) where there is one group and at least 64
    # channels a thread, else by pixels. 2 threads, pixel -> channel split: 128->256/2 and
    # 256@14 +1-4%, 256->512/2 and 512@7 +5-7%; 64@56 and 64->128/2 (32 channels a thread) 1%
    # slower, each thread transposing the whole grad_y tile for half the rows of K.
    cdef bint split_rows = fast_weight and g.groups == 1 and g.group_channels >= 64 * num_threads
    cdef Py_ssize_t partials = 1 if split_rows else num_threads
    # Its tiles: the pixels of the reduction; at least WEIGHT_TILE so that each pass over the
    # partial sums (K x Og, read and written per KC block) carries enough work.
    cdef Py_ssize_t wtile = COL_BUDGET // g.reduction
    if wtile < WEIGHT_TILE:
        wtile = WEIGHT_TILE
    if wtile > g.batch * g.pixels:
        wtile = g.batch * g.pixels
    cdef Py_ssize_t wld = _round_up(wtile, 16)
    cdef Py_ssize_t total_pixels = g.batch * g.pixels
    cdef Py_ssize_t work = g.groups * total_pixels
    cdef Py_ssize_t total_columns = total_pixels
    cdef Py_ssize_t position, end, group, flat, count, thread, threads, previous
    cdef Py_ssize_t fast_per_thread = _round_up(weight_size + g.reduction * wld + wld * _round_up(g.group_out, 32), 16)
    cdef floating* fast_allocation = NULL
    cdef floating* fast_buffers = NULL
    cdef floating* grad_y_t
    # the wide path's per-thread unfolded chunk (its channels x WIDE_TILE) and its transpose
    # (sized for the widest share of the input channels)
    cdef Py_ssize_t wide_width = 0
    if wide_weight:
        for thread in range(num_threads):
            wide_width = max(wide_width, _wide_edge(g.reduction, thread + 1, num_threads)
                             - _wide_edge(g.reduction, thread, num_threads))
        fast_per_thread = _round_up(wide_width * WIDE_TILE + WIDE_TILE * _round_up(wide_width, 16), 16)
    if fast_weight or wide_weight:
        fast_allocation = <floating*> malloc(num_threads * fast_per_thread * sizeof(floating) + 64)
        if fast_allocation == NULL:
            free(buffers)
            free(panels)
            raise MemoryError("conv2d_backward: could not allocate the weight-gradient buffers")
        fast_buffers = _aligned(fast_allocation)
    try:
        with nogil:
            if wide_weight:
                # num_threads shares of the input channels (a thread given fewer runs several)
                with parallel(num_threads=num_threads):
                    col = fast_buffers + openmp.omp_get_thread_num() * fast_per_thread
                    for item in prange(num_threads, schedule="static"):
                        _grad_weight_wide(&g, &grad_y[0, 0, 0, 0], &x[0, 0, 0, 0], &grad_w_flat[0], item, num_threads,
                                          col, col + wide_width * WIDE_TILE)
            elif split_rows:
                with parallel(num_threads=num_threads):
                    thread = openmp.omp_get_thread_num()
                    threads = openmp.omp_get_num_threads()
                    col = fast_buffers + thread * fast_per_thread + weight_size
                    _grad_weight_rows(&g, &grad_y[0, 0, 0, 0], &x[0, 0, 0, 0], fast_buffers, thread, threads, wtile,
                                      wld, col, col + g.reduction * wld)
            elif fast_weight:
                with parallel(num_threads=num_threads):
                    # an equal share of the (group, pixel) columns per thread, as in the forward
                    thread = openmp.omp_get_thread_num()
                    threads = openmp.omp_get_num_threads()
                    grad_w_mine = fast_buffers + thread * fast_per_thread
                    col = grad_w_mine + weight_size
                    grad_y_t = col + g.reduction * wld
                    position = _share_edge(work, total_columns, thread, threads)
                    end = _share_edge(work, total_columns, thread + 1, threads)
                    # The first tile of each group in this share writes its partial sums, the
                    # next ones add to them: only the groups outside the share are zeroed (a
                    # memset of the 9 MiB of the 512@7 layer's partial sums, then a read of them,
                    # was one pass in three over them at 2 threads).
                    for previous in range(g.groups):
                        if (position >= end or previous < position // total_pixels
                                or previous > (end - 1) // total_pixels):
                            memset(grad_w_mine + previous * g.reduction * g.group_out, 0,
                                   g.reduction * g.group_out * sizeof(floating))
                    previous = -1
                    while position < end:
                        group = position // total_pixels
                        flat = position - group * total_pixels
                        count = end - position
                        if count > total_pixels - flat:
                            count = total_pixels - flat
                        if count > wtile:
                            count = wtile
                        _grad_weight_tile(&g, &grad_y[0, 0, 0, 0], &x[0, 0, 0, 0], grad_w_mine, group, flat, count,
                                          wld, col, grad_y_t, group == previous)
                        previous = group
                        position = position + count
            if fast_weight:
                # grad_w[g, o, r] = sum over the partial sums (one per thread, in thread order; one
                # shared by the threads where split_rows) of partial_t[g, r, o], by blocks of 16 r
                for i in prange(g.groups * r_blocks, schedule="static", num_threads=num_threads):
                    _reduce_weight_block(&g, fast_buffers, fast_per_thread, partials, i, r_blocks, &grad_w_flat[0])
            elif need_weight and not wide_weight:
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
            if need_input and not flip_input:
                if panels != NULL:
                    for item in prange(g.groups * blocks, schedule="static", num_threads=num_threads):
                        _pack_weight_columns(&g, &w[0, 0, 0, 0], item, blocks, panels + item * panel_size)
                with parallel(num_threads=num_threads):
                    col = buffers + openmp.omp_get_thread_num() * per_thread + partial_size
                    for item in prange(chunks * g.groups * blocks, schedule="static"):
                        _grad_input_item(&g, &grad_y[0, 0, 0, 0], &w[0, 0, 0, 0], grad_x_ptr, item, blocks, col,
                                         NULL if panels == NULL else panels + (item % (g.groups * blocks)) * panel_size)
        if flip_input:
            _flipped_input_gradient(&g, &grad_y[0, 0, 0, 0], &w[0, 0, 0, 0], grad_x_ptr, num_threads)
    finally:
        free(buffers)
        free(panels)
        free(fast_allocation)
    # grad_b[o] = sum over samples and pixels of grad_y[:, o]
    if not need_bias:
        return
    with nogil:
        for o in prange(g.out_channels, schedule="static", num_threads=num_threads):
            grad_b[o] = _channel_sum(&grad_y[0, 0, 0, 0], o, g.batch, g.out_channels, g.pixels)
