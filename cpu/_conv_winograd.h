/* Winograd transforms for 3x3 convolutions in float32 (cpu/conv.pyx: _winograd_forward at
   stride 1 and 2, _winograd_grad_weight at stride 1), AVX-512, 16 tiles or channels a vector.

   A 2x2 block of outputs ("tile") of one output channel reads a 4x4 patch d of each input
   channel; with g the channel's 3x3 weights,

       y (2x2) = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A            (* elementwise, 4x4)

       B^T = | 1  0 -1  0 |     G = | 1    0    0   |     A^T = | 1  1  1  0 |
             | 0  1  1  0 |         | 1/2  1/2  1/2 |           | 0  1 -1 -1 |
             | 0 -1  1  0 |         | 1/2 -1/2  1/2 |
             | 0  1  0 -1 |         | 0    0    1   |

   so the 4 * 9 = 36 multiply-adds a tile and input channel of the direct convolution become 16
   (the sum over channels is 16 GEMMs, one per element xi of the 4x4 transformed tile, run by
   _conv_gemm.h's register kernel), plus the transforms, which cost a few adds per tile and
   channel. Every coefficient is 0, +-1 or +-1/2 (exact in binary), so the rounding error stays
   within a few ulps of the direct sum's.

   Stride 2 (gatedrnn_winograd_*_s2, 25 positions): a 2x2 tile reads a 5x5 patch. Along each
   axis the outputs are y0 = w0 d0 + w1 d1 + w2 d2, y1 = w0 d2 + w1 d3 + w2 d4: the even taps
   (w0, w2) on d0, d2, d4 are F(2, 2) (3 multiplies for 4), the odd tap w1 on d1, d3 stays direct
   (2), so 5 positions an axis instead of 6:

       d -> (d0 - d2, d2, d4 - d2, d1, d3),   w -> (w0, w0 + w2, w2, w1, w1),
       y0 = m0 + m1 + m3,   y1 = m1 + m2 + m4,

   25 multiply-adds a tile and channel pair instead of 36, all coefficients 0 or +-1.

   Layout: one thread's block of `count` tiles, tile t in lane t of a row of `ld` floats. The
   input transform gathers each tile's patch from the input rows and writes B^T d B of channel c
   as its 16 rows (xi = 4 i + j: row i, column j of the transformed tile) 16 c .. 16 c + 15, so
   that the GEMM for xi reads its operand B as rows xi, 16 + xi, 32 + xi, ... (row stride 16 ld).
   The GEMM results come back in the same layout per output channel and the output transform
   writes y (25 rows a channel at stride 2). */
#ifndef GATEDRNN_CONV_WINOGRAD_H
#define GATEDRNN_CONV_WINOGRAD_H

#include "_conv_gemm.h"

/* Along one axis of a 3x3 kernel: its taps (w0, w1, w2) to the scheme's `side` values,
   4 at stride 1 (G w: w0, (w0 + w1 + w2) / 2, (w0 - w1 + w2) / 2, w2) or 5 at stride 2 (w0,
   w0 + w2, w2, w1, w1). The weight transform applies it along the rows, then the columns. */
static inline void gatedrnn_winograd_taps(long side, const float w[3], float out[5]) {
    if (side == 4) {
        out[0] = w[0];
        out[1] = 0.5f * (w[0] + w[1] + w[2]);
        out[2] = 0.5f * (w[0] - w[1] + w[2]);
        out[3] = w[2];
    } else {
        out[0] = w[0];
        out[1] = w[0] + w[2];
        out[2] = w[2];
        out[3] = w[1];
        out[4] = w[1];
    }
}

/* U (side^2 x rows, row stride `rows`: U[xi * rows + r], xi = side i + j) for the 3x3 kernels of
   rows [first, last) (`g`: rows of 9 floats): the taps map along the kernel's rows, then along
   its columns (side 4: G g G^T of F(2x2, 3x3); side 5: the stride-2 form). */
static inline void gatedrnn_winograd_weights_scalar(long side, const float* g, long rows, float* u, long first,
                                                    long last) {
    for (long r = first; r < last; r++) {
        const float* k = g + 9 * r;
        float t[5][3];  /* along the rows: t[i][column] */
        for (int j = 0; j < 3; j++) {
            float taps[3] = {k[j], k[3 + j], k[6 + j]}, out[5];
            gatedrnn_winograd_taps(side, taps, out);
            for (int i = 0; i < side; i++)
                t[i][j] = out[i];
        }
        for (int i = 0; i < side; i++) {  /* then along the columns */
            float out[5];
            gatedrnn_winograd_taps(side, t[i], out);
            for (int j = 0; j < side; j++)
                u[(side * i + j) * rows + r] = out[j];
        }
    }
}

#if GATEDRNN_CONV_AVX512

/* The tiles from flat tile index `flat` (sample-major, tiles_h x tiles_w a sample) that the
   transforms take in one vector step: at most `most` of the `left` remaining, all in one tile
   row. Returns how many; *n, *ty, *tx: the first one's sample, tile row and tile column. */
static inline long gatedrnn_winograd_run(long flat, long left, long most, long tiles_h, long tiles_w, long* n,
                                         long* ty, long* tx) {
    long per_sample = tiles_h * tiles_w;
    *n = flat / per_sample;
    long position = flat - *n * per_sample;
    *ty = position / tiles_w;
    *tx = position - *ty * tiles_w;
    long run = tiles_w - *tx;
    if (run > left)
        run = left;
    return run < most ? run : most;
}

/* The masks of `loads` vector loads of a span of `span` input values from column `first` of a
   row `width` wide (load l: values 16 l .. 16 l + 15): set where the value lies in the image, so
   that the masked loads read zeros for the padding and never touch memory outside the row. */
static inline void gatedrnn_winograd_span_masks(long first, long width, long span, int loads, __mmask16* masks) {
    long low = first < 0 ? -first : 0;
    long high = width - first < span ? width - first : span;
    for (int l = 0; l < loads; l++)
        masks[l] = gatedrnn_mask16(high - 16 * l) & (__mmask16) ~gatedrnn_mask16(low - 16 * l);
}

/* gatedrnn_winograd_taps on 16 kernels' taps at once. */
static inline __attribute__((always_inline)) void gatedrnn_winograd_taps16(long side, const __m512 w[3],
                                                                           __m512 out[5]) {
    if (side == 4) {
        const __m512 half = _mm512_set1_ps(0.5f);
        out[0] = w[0];
        out[1] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(w[0], w[1]), w[2]));
        out[2] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(w[0], w[1]), w[2]));
        out[3] = w[2];
    } else {
        out[0] = w[0];
        out[1] = _mm512_add_ps(w[0], w[2]);
        out[2] = w[2];
        out[3] = w[1];
        out[4] = w[1];
    }
}

/* gatedrnn_winograd_weights_scalar, 16 kernels a step: lane l of a vector is kernel r + l, its
   9 weights gathered (stride 9), and each transformed element stored as 16 consecutive floats
   of U. Same operations in the same order as the scalar version (bitwise the same U). The
   scalar loop took a third of the 512@7 forward (about 45 ns a kernel, 262144 kernels).
   Inlined with `side` a constant by gatedrnn_winograd_weights: with `side` a variable the loops
   over it stayed loops and the vectors went through memory (26% of the 512@7 forward, not 11%). */
static inline __attribute__((always_inline)) void gatedrnn_winograd_weights_side(long side, const float* g, long rows,
                                                                                 float* u, long first, long last) {
    const __m512i stride = _mm512_setr_epi32(0, 9, 18, 27, 36, 45, 54, 63, 72, 81, 90, 99, 108, 117, 126, 135);
    long r = first;
    for (; r + 16 <= last; r += 16) {
        const float* k = g + 9 * r;
        __m512 t[5][3];  /* along the rows: t[i][column] */
        for (int j = 0; j < 3; j++) {
            __m512 taps[3] = {_mm512_i32gather_ps(stride, k + j, 4), _mm512_i32gather_ps(stride, k + 3 + j, 4),
                              _mm512_i32gather_ps(stride, k + 6 + j, 4)};
            __m512 out[5];
            gatedrnn_winograd_taps16(side, taps, out);
            for (int i = 0; i < side; i++)
                t[i][j] = out[i];
        }
        for (int i = 0; i < side; i++) {  /* then along the columns */
            __m512 out[5];
            gatedrnn_winograd_taps16(side, t[i], out);
            for (int j = 0; j < side; j++)
                _mm512_storeu_ps(u + (side * i + j) * rows + r, out[j]);
        }
    }
    gatedrnn_winograd_weights_scalar(side, g, rows, u, r, last);
}

static inline void gatedrnn_winograd_weights(long side, const float* g, long rows, float* u, long first, long last) {
    if (side == 4)
        gatedrnn_winograd_weights_side(4, g, rows, u, first, last);
    else
        gatedrnn_winograd_weights_side(5, g, rows, u, first, last);
}

/* V = B^T d B for tiles [tile, tile + count) of the batch (sample-major, tiles_h x tiles_w a
   sample) and `channels` input channels: channel c's 16 rows at v + 16 c ld (row xi = 4 i + j,
   lane t for tile tile + t), lanes past count untouched. x is the first of the channels in
   sample 0 (planes of height x width, sample_stride floats from one sample to the next); tile
   (ty, tx)'s patch d starts at input row 2 ty - pad_top, column 2 tx - pad_left, zero outside
   the image.

   Up to 16 tiles of one tile row a step: patch row i of those tiles is the 2 run + 2 input values
   from column 2 tx - pad_left of one input row, read by three masked loads (columns outside the
   image masked to zero), its columns j = 0, 1 (2, 3) the even and odd elements (of the values
   shifted by two), four permutes; then the transform in registers. (im2col of the patches by
   stride-2 row copies, then a transform pass, took 12-17% of the forward of the 3x3 64@56 and
   256@14 layers: 28- and 7-tile rows make short copies.) */
static inline void gatedrnn_winograd_input(const float* x, long sample_stride, long channels, long height, long width,
                                           long pad_top, long pad_left, long tiles_h, long tiles_w, long tile,
                                           long count, float* v, long ld) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 zero = _mm512_setzero_ps();
    long plane = height * width;
    long t = 0;
    while (t < count) {
        long n, ty, tx;
        long run = gatedrnn_winograd_run(tile + t, count - t, 16, tiles_h, tiles_w, &n, &ty, &tx);
        long first = 2 * tx - pad_left;  /* input column of the tiles' patch column 0 */
        __mmask16 masks[3];  /* a patch row: the values 0 .. 2 run + 1 from column first */
        gatedrnn_winograd_span_masks(first, width, 2 * run + 2, 3, masks);
        __mmask16 lanes = gatedrnn_mask16(run);
        const float* sample = x + n * sample_stride;
        for (long c = 0; c < channels; c++) {
            const float* channel = sample + c * plane;
            float* rows = v + 16 * c * ld + t;
            __m512 d[16], s[16];
            for (int i = 0; i < 4; i++) {
                long row = 2 * ty - pad_top + i;
                if (row < 0 || row >= height) {
                    d[4 * i] = d[4 * i + 1] = d[4 * i + 2] = d[4 * i + 3] = zero;
                    continue;
                }
                const float* source = channel + row * width + first;  /* masked: never read outside */
                __m512 l0 = _mm512_maskz_loadu_ps(masks[0], source);
                __m512 l1 = _mm512_maskz_loadu_ps(masks[1], source + 16);
                __m512 l2 = _mm512_maskz_loadu_ps(masks[2], source + 32);
                __m512 s0 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(l1),
                                                                    _mm512_castps_si512(l0), 2));
                __m512 s1 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(l2),
                                                                    _mm512_castps_si512(l1), 2));
                d[4 * i] = _mm512_permutex2var_ps(l0, even, l1);
                d[4 * i + 1] = _mm512_permutex2var_ps(l0, odd, l1);
                d[4 * i + 2] = _mm512_permutex2var_ps(s0, even, s1);
                d[4 * i + 3] = _mm512_permutex2var_ps(s0, odd, s1);
            }
            for (int j = 0; j < 4; j++) {  /* B^T d: along the patch's rows */
                s[j] = _mm512_sub_ps(d[j], d[8 + j]);
                s[4 + j] = _mm512_add_ps(d[4 + j], d[8 + j]);
                s[8 + j] = _mm512_sub_ps(d[8 + j], d[4 + j]);
                s[12 + j] = _mm512_sub_ps(d[4 + j], d[12 + j]);
            }
            for (int i = 0; i < 4; i++) {  /* (B^T d) B: along its columns */
                __m512 s0 = s[4 * i], s1 = s[4 * i + 1], s2 = s[4 * i + 2], s3 = s[4 * i + 3];
                _mm512_mask_storeu_ps(rows + (4 * i) * ld, lanes, _mm512_sub_ps(s0, s2));
                _mm512_mask_storeu_ps(rows + (4 * i + 1) * ld, lanes, _mm512_add_ps(s1, s2));
                _mm512_mask_storeu_ps(rows + (4 * i + 2) * ld, lanes, _mm512_sub_ps(s2, s1));
                _mm512_mask_storeu_ps(rows + (4 * i + 3) * ld, lanes, _mm512_sub_ps(s1, s3));
            }
        }
        t += run;
    }
}

/* gatedrnn_winograd_input for the stride-2 scheme: tile (ty, tx)'s patch d is 5x5, from input
   row 4 ty - pad_top, column 4 tx - pad_left (tiles 4 input columns apart, patches overlapping
   by one); channel c's 25 rows at v + 25 c ld, V = B^T d B with, along each axis,
   (d0, d1, d2, d3, d4) -> (d0 - d2, d2, d4 - d2, d1, d3). A patch row of 16 tiles is the 4 run + 1
   values from its first column: four loads and two rounds of permutes split them by column
   modulo 4 (columns 0, 1, 2, 3 of the patches), column 4 is column 0 one tile on. */
static inline void gatedrnn_winograd_input_s2(const float* x, long sample_stride, long channels, long height,
                                              long width, long pad_top, long pad_left, long tiles_h, long tiles_w,
                                              long tile, long count, float* v, long ld) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    const __m512 zero = _mm512_setzero_ps();
    long plane = height * width;
    long t = 0;
    while (t < count) {
        long n, ty, tx;
        long run = gatedrnn_winograd_run(tile + t, count - t, 16, tiles_h, tiles_w, &n, &ty, &tx);
        long first = 4 * tx - pad_left;
        __mmask16 masks[5];  /* a patch row: the values 0 .. 4 run from column first */
        gatedrnn_winograd_span_masks(first, width, 4 * run + 1, 5, masks);
        __mmask16 lanes = gatedrnn_mask16(run);
        const float* sample = x + n * sample_stride;
        for (long c = 0; c < channels; c++) {
            const float* channel = sample + c * plane;
            float* rows = v + 25 * c * ld + t;
            __m512 h[5][5];  /* each input row of the patches transformed along the columns */
            for (int i = 0; i < 5; i++) {
                long row = 4 * ty - pad_top + i;
                if (row < 0 || row >= height) {
                    h[i][0] = h[i][1] = h[i][2] = h[i][3] = h[i][4] = zero;
                    continue;
                }
                const float* source = channel + row * width + first;  /* masked: never read outside */
                __m512 l0 = _mm512_maskz_loadu_ps(masks[0], source);
                __m512 l1 = _mm512_maskz_loadu_ps(masks[1], source + 16);
                __m512 l2 = _mm512_maskz_loadu_ps(masks[2], source + 32);
                __m512 l3 = _mm512_maskz_loadu_ps(masks[3], source + 48);
                __m512 l4 = _mm512_maskz_loadu_ps(masks[4], source + 64);
                __m512 e01 = _mm512_permutex2var_ps(l0, even, l1), o01 = _mm512_permutex2var_ps(l0, odd, l1);
                __m512 e23 = _mm512_permutex2var_ps(l2, even, l3), o23 = _mm512_permutex2var_ps(l2, odd, l3);
                __m512 d0 = _mm512_permutex2var_ps(e01, even, e23);  /* q = 4 t */
                __m512 d1 = _mm512_permutex2var_ps(o01, even, o23);  /* 4 t + 1 */
                __m512 d2 = _mm512_permutex2var_ps(e01, odd, e23);   /* 4 t + 2 */
                __m512 d3 = _mm512_permutex2var_ps(o01, odd, o23);   /* 4 t + 3 */
                __m512 d4 = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(l4),
                                                                    _mm512_castps_si512(d0), 1));  /* 4 t + 4 */
                h[i][0] = _mm512_sub_ps(d0, d2);
                h[i][1] = d2;
                h[i][2] = _mm512_sub_ps(d4, d2);
                h[i][3] = d1;
                h[i][4] = d3;
            }
            for (int j = 0; j < 5; j++) {  /* along the rows */
                _mm512_mask_storeu_ps(rows + j * ld, lanes, _mm512_sub_ps(h[0][j], h[2][j]));
                _mm512_mask_storeu_ps(rows + (5 + j) * ld, lanes, h[2][j]);
                _mm512_mask_storeu_ps(rows + (10 + j) * ld, lanes, _mm512_sub_ps(h[4][j], h[2][j]));
                _mm512_mask_storeu_ps(rows + (15 + j) * ld, lanes, h[1][j]);
                _mm512_mask_storeu_ps(rows + (20 + j) * ld, lanes, h[3][j]);
            }
        }
        t += run;
    }
}

/* One output channel's outputs for tiles [tile, tile + count) of the batch (sample-major,
   tiles_h x tiles_w a sample): m holds its `positions` transformed rows (16: stride 1, 25:
   stride 2; row stride ld, lane t for tile tile + t); y is the channel's plane in the sample of
   tile 0 (tile < tiles_h * tiles_w), sample_stride floats between one sample's plane and the
   next's. Writes A^T m A + shift, clipped to the out_h x out_w image (the last tile row or
   column of an odd size is half used). */
static inline void gatedrnn_winograd_output(const float* m, long positions, long ld, long count, long tile,
                                            long tiles_h, long tiles_w, float* y, long sample_stride, long out_h,
                                            long out_w, float shift) {
    /* lanes 0..7 of a and b interleaved (a0 b0 a1 b1 ...), and lanes 8..15 */
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    const __m512 bias = _mm512_set1_ps(shift);
    long t = 0;
    while (t < count) {
        long n, ty, tx;
        long run = gatedrnn_winograd_run(tile + t, count - t, 16, tiles_h, tiles_w, &n, &ty, &tx);
        float* image = y + n * sample_stride;
        __mmask16 mask = gatedrnn_mask16(run);
        __m512 r[10];  /* A^T m: the transformed tile's rows to 2, r[side * a + j] */
        long side = positions == 25 ? 5 : 4;
        for (int j = 0; j < side; j++) {
            __m512 m0 = _mm512_maskz_loadu_ps(mask, m + j * ld + t);
            __m512 m1 = _mm512_maskz_loadu_ps(mask, m + (side + j) * ld + t);
            __m512 m2 = _mm512_maskz_loadu_ps(mask, m + (2 * side + j) * ld + t);
            __m512 m3 = _mm512_maskz_loadu_ps(mask, m + (3 * side + j) * ld + t);
            if (side == 4) {
                r[j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                r[4 + j] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
            } else {  /* stride 2: rows m0 + m1 + m3 and m1 + m2 + m4 */
                __m512 m4 = _mm512_maskz_loadu_ps(mask, m + (4 * side + j) * ld + t);
                r[j] = _mm512_add_ps(_mm512_add_ps(m0, m1), m3);
                r[5 + j] = _mm512_add_ps(_mm512_add_ps(m1, m2), m4);
            }
        }
        long columns = out_w - 2 * tx;  /* output columns left in the image from this run's first */
        for (int a = 0; a < 2 && 2 * ty + a < out_h; a++) {  /* (A^T m) A: the columns to 2 */
            const __m512* q = r + side * a;
            __m512 left, right;
            if (side == 4) {
                left = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(q[0], q[1]), q[2]), bias);
                right = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(q[1], q[2]), q[3]), bias);
            } else {
                left = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(q[0], q[1]), q[3]), bias);
                right = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(q[1], q[2]), q[4]), bias);
            }
            float* row = image + (2 * ty + a) * out_w + 2 * tx;
            long width = 2 * run < columns ? 2 * run : columns;
            _mm512_mask_storeu_ps(row, gatedrnn_mask16(width), _mm512_permutex2var_ps(left, low, right));
            if (width > 16)
                _mm512_mask_storeu_ps(row + 16, gatedrnn_mask16(width - 16),
                                      _mm512_permutex2var_ps(left, high, right));
        }
        t += run;
    }
}

/* The weight gradient (conv.pyx, _winograd_grad_weight): the transposition of the forward,

       grad_w[o, c] (3x3) = G^T [ sum over tiles t of (A g_t[o] A^T) * (B^T d_t[c] B) ] G

   with g_t[o] tile t's 2x2 block of output gradients of channel o (zero outside the image) and
   d_t[c] its 4x4 input patch: 16 GEMMs S_xi (Cg x Og) += V_xi (Cg x tiles) @ Z_xi^T (tiles x Og)
   reducing over the tiles, so Z^T has to be laid out with the output channels contiguous. */

/* zt (row P t + xi, P = `positions`: 16 at stride 1, 25 at stride 2; columns [0, channels),
   row stride ldz) = A g_t A^T for tiles [tile, tile + count) of the batch (sample-major,
   tiles_h x tiles_w a sample), with lane o the output channel: gy is the first channel's plane
   in sample 0 (planes out_h x out_w, sample_stride floats between samples). Runs of up to 8
   tiles of a tile row: the 16 output gradients of each of its two output rows transposed 16
   channels at a time in registers (4 values a tile and channel, where Z itself has P), then Z
   for 16 channels a vector.
       A g: rows g0, g0 + g1, g0 - g1, -g1;   (A g) A^T: columns r0, r0 + r1, r0 - r1, -r1. */
static inline void gatedrnn_winograd_grad_output(const float* gy, long positions, long sample_stride, long channels,
                                                 long out_h, long out_w, long tiles_h, long tiles_w, long tile,
                                                 long count, float* zt, long ldz) {
    const __m512 zero = _mm512_setzero_ps();
    long plane = out_h * out_w;
    long t = 0;
    while (t < count) {
        long n, ty, tx;
        long run = gatedrnn_winograd_run(tile + t, count - t, 8, tiles_h, tiles_w, &n, &ty, &tx);
        long columns = out_w - 2 * tx;  /* output columns from the run's first */
        __mmask16 valid = gatedrnn_mask16(columns < 2 * run ? columns : 2 * run);
        const float* sample = gy + n * sample_stride;
        for (long o0 = 0; o0 < channels; o0 += 16) {
            long block = channels - o0 < 16 ? channels - o0 : 16;
            __mmask16 lanes = gatedrnn_mask16(block);
            __m512 top[16], bottom[16];  /* [q]: the 16 channels' gradients at column 2 tx + q */
            const float* rows = sample + o0 * plane + (2 * ty) * out_w + 2 * tx;
            gatedrnn_transpose_16x16(rows, plane, block, valid, top);
            if (2 * ty + 1 < out_h)
                gatedrnn_transpose_16x16(rows + out_w, plane, block, valid, bottom);
            else
                for (int q = 0; q < 16; q++)
                    bottom[q] = zero;
            for (long k = 0; k < run; k++) {
                __m512 g00 = top[2 * k], g01 = top[2 * k + 1], g10 = bottom[2 * k], g11 = bottom[2 * k + 1];
                __m512 r[10];  /* A g: r[2 i + b] */
                float* out = zt + (t + k) * positions * ldz + o0;
                if (positions == 16) {
                    r[0] = g00; r[1] = g01;
                    r[2] = _mm512_add_ps(g00, g10); r[3] = _mm512_add_ps(g01, g11);
                    r[4] = _mm512_sub_ps(g00, g10); r[5] = _mm512_sub_ps(g01, g11);
                    r[6] = _mm512_sub_ps(zero, g10); r[7] = _mm512_sub_ps(zero, g11);
                    for (int i = 0; i < 4; i++) {
                        __m512 r0 = r[2 * i], r1 = r[2 * i + 1];
                        _mm512_mask_storeu_ps(out + (4 * i) * ldz, lanes, r0);
                        _mm512_mask_storeu_ps(out + (4 * i + 1) * ldz, lanes, _mm512_add_ps(r0, r1));
                        _mm512_mask_storeu_ps(out + (4 * i + 2) * ldz, lanes, _mm512_sub_ps(r0, r1));
                        _mm512_mask_storeu_ps(out + (4 * i + 3) * ldz, lanes, _mm512_sub_ps(zero, r1));
                    }
                } else {  /* stride 2, along each axis (g0, g1) -> (g0, g0 + g1, g1, g0, g1) */
                    r[0] = g00; r[1] = g01;
                    r[2] = _mm512_add_ps(g00, g10); r[3] = _mm512_add_ps(g01, g11);
                    r[4] = g10; r[5] = g11;
                    r[6] = g00; r[7] = g01;
                    r[8] = g10; r[9] = g11;
                    for (int i = 0; i < 5; i++) {
                        __m512 r0 = r[2 * i], r1 = r[2 * i + 1];
                        _mm512_mask_storeu_ps(out + (5 * i) * ldz, lanes, r0);
                        _mm512_mask_storeu_ps(out + (5 * i + 1) * ldz, lanes, _mm512_add_ps(r0, r1));
                        _mm512_mask_storeu_ps(out + (5 * i + 2) * ldz, lanes, r1);
                        _mm512_mask_storeu_ps(out + (5 * i + 3) * ldz, lanes, r0);
                        _mm512_mask_storeu_ps(out + (5 * i + 4) * ldz, lanes, r1);
                    }
                }
            }
        }
        t += run;
    }
}

/* grad_w[o, c] (3x3 at grad_w + o * o_stride + 9 c) = G^T S G for input channels c in
   [0, rows) and output channels o in [0, channels), S_xi[c][o] = s[(xi * rows + c) * lds + o]
   for the P = `positions` (16 or 25) positions xi
   (16 output channels a vector, scattered to their kernels).
       G^T S: rows S0 + (S1 + S2) / 2, (S1 - S2) / 2, (S1 + S2) / 2 + S3; then the same on columns. */
static inline void gatedrnn_winograd_grad_weights(const float* s, long positions, long rows, long lds, long channels,
                                                  float* grad_w, long o_stride) {
    const __m512 half = _mm512_set1_ps(0.5f);
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int) o_stride));
    for (long c = 0; c < rows; c++) {
        for (long o0 = 0; o0 < channels; o0 += 16) {
            __mmask16 lanes = gatedrnn_mask16(channels - o0);
            __m512 t[3][5];
            float* target = grad_w + o0 * o_stride + 9 * c;
            if (positions == 16) {
                for (int j = 0; j < 4; j++) {
                    __m512 s0 = _mm512_maskz_loadu_ps(lanes, s + ((0 + j) * rows + c) * lds + o0);
                    __m512 s1 = _mm512_maskz_loadu_ps(lanes, s + ((4 + j) * rows + c) * lds + o0);
                    __m512 s2 = _mm512_maskz_loadu_ps(lanes, s + ((8 + j) * rows + c) * lds + o0);
                    __m512 s3 = _mm512_maskz_loadu_ps(lanes, s + ((12 + j) * rows + c) * lds + o0);
                    __m512 sum = _mm512_mul_ps(half, _mm512_add_ps(s1, s2));
                    t[0][j] = _mm512_add_ps(s0, sum);
                    t[1][j] = _mm512_mul_ps(half, _mm512_sub_ps(s1, s2));
                    t[2][j] = _mm512_add_ps(sum, s3);
                }
                for (int k = 0; k < 3; k++) {
                    __m512 sum = _mm512_mul_ps(half, _mm512_add_ps(t[k][1], t[k][2]));
                    _mm512_mask_i32scatter_ps(target + 3 * k, lanes, offsets, _mm512_add_ps(t[k][0], sum), 4);
                    _mm512_mask_i32scatter_ps(target + 3 * k + 1, lanes, offsets,
                                              _mm512_mul_ps(half, _mm512_sub_ps(t[k][1], t[k][2])), 4);
                    _mm512_mask_i32scatter_ps(target + 3 * k + 2, lanes, offsets, _mm512_add_ps(sum, t[k][3]), 4);
                }
            } else {  /* stride 2, along each axis (S0 .. S4) -> (S0 + S1, S3 + S4, S1 + S2) */
                for (int j = 0; j < 5; j++) {
                    __m512 s0 = _mm512_maskz_loadu_ps(lanes, s + ((0 + j) * rows + c) * lds + o0);
                    __m512 s1 = _mm512_maskz_loadu_ps(lanes, s + ((5 + j) * rows + c) * lds + o0);
                    __m512 s2 = _mm512_maskz_loadu_ps(lanes, s + ((10 + j) * rows + c) * lds + o0);
                    __m512 s3 = _mm512_maskz_loadu_ps(lanes, s + ((15 + j) * rows + c) * lds + o0);
                    __m512 s4 = _mm512_maskz_loadu_ps(lanes, s + ((20 + j) * rows + c) * lds + o0);
                    t[0][j] = _mm512_add_ps(s0, s1);
                    t[1][j] = _mm512_add_ps(s3, s4);
                    t[2][j] = _mm512_add_ps(s1, s2);
                }
                for (int k = 0; k < 3; k++) {
                    _mm512_mask_i32scatter_ps(target + 3 * k, lanes, offsets, _mm512_add_ps(t[k][0], t[k][1]), 4);
                    _mm512_mask_i32scatter_ps(target + 3 * k + 1, lanes, offsets, _mm512_add_ps(t[k][3], t[k][4]), 4);
                    _mm512_mask_i32scatter_ps(target + 3 * k + 2, lanes, offsets, _mm512_add_ps(t[k][1], t[k][2]), 4);
                }
            }
        }
    }
}

#else  /* no AVX-512: conv.pyx never takes the Winograd path (the stubs keep it linking) */

static inline void gatedrnn_winograd_weights(long side, const float* g, long rows, float* u, long first, long last) {
    gatedrnn_winograd_weights_scalar(side, g, rows, u, first, last);
}
static inline void gatedrnn_winograd_input_s2(const float* x, long sample_stride, long channels, long height,
                                              long width, long pad_top, long pad_left, long tiles_h, long tiles_w,
                                              long tile, long count, float* v, long ld) {
    (void) x; (void) sample_stride; (void) channels; (void) height; (void) width; (void) pad_top; (void) pad_left;
    (void) tiles_h; (void) tiles_w; (void) tile; (void) count; (void) v; (void) ld;
}

static inline void gatedrnn_winograd_input(const float* x, long sample_stride, long channels, long height, long width,
                                           long pad_top, long pad_left, long tiles_h, long tiles_w, long tile,
                                           long count, float* v, long ld) {
    (void) x; (void) sample_stride; (void) channels; (void) height; (void) width; (void) pad_top; (void) pad_left;
    (void) tiles_h; (void) tiles_w; (void) tile; (void) count; (void) v; (void) ld;
}
static inline void gatedrnn_winograd_grad_output(const float* gy, long positions, long sample_stride, long channels,
                                                 long out_h, long out_w, long tiles_h, long tiles_w, long tile,
                                                 long count, float* zt, long ldz) {
    (void) gy; (void) positions; (void) sample_stride; (void) channels; (void) out_h; (void) out_w;
    (void) tiles_h; (void) tiles_w; (void) tile; (void) count; (void) zt; (void) ldz;
}
static inline void gatedrnn_winograd_grad_weights(const float* s, long positions, long rows, long lds, long channels,
                                                  float* grad_w, long o_stride) {
    (void) s; (void) positions; (void) rows; (void) lds; (void) channels; (void) grad_w; (void) o_stride;
}
static inline void gatedrnn_winograd_output(const float* m, long positions, long ld, long count, long tile,
                                            long tiles_h, long tiles_w, float* y, long sample_stride, long out_h,
                                            long out_w, float shift) {
    (void) m; (void) positions; (void) ld; (void) count; (void) tile; (void) tiles_h; (void) tiles_w; (void) y;
    (void) sample_stride; (void) out_h; (void) out_w; (void) shift;
}
#endif

#endif  /* GATEDRNN_CONV_WINOGRAD_H */
