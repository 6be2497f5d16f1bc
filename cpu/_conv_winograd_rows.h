/* Winograd along the rows for 7-wide, stride-2 kernels (ResNet's 7x7/2 stem) in float32
   (cpu/conv.pyx: _winograd_rows_forward), AVX-512, 16 tiles a vector.

   A tile is four horizontally adjacent outputs (columns 4 tx .. 4 tx + 3) of one output row.
   Along a kernel row of taps w0 .. w6 they read the 13 input values d0 .. d12 from column
   8 tx - pad_left, output k the values d_2k .. d_2k+6:

       y_k = w0 d_2k + w1 d_2k+1 + ... + w6 d_2k+6        (k = 0 .. 3).

   The even taps (w0, w2, w4, w6) meet only the even values e = (d0, d2, ..., d12): a 4-tap
   correlation with four outputs, F(4, 4), 7 multiplies instead of 16; the odd taps (w1, w3, w5)
   meet o = (d1, d3, ..., d11): F(4, 3), 6 instead of 12. So 13 positions a tile and kernel row
   instead of 28, and the reduction over input channels and kernel rows (Cg KH terms; 21 on the
   stem) becomes 13 GEMMs, one per position, on _conv_gemm.h's register kernel: 68.25
   multiply-adds an output and output channel on the stem where the direct convolution has 147.
   Along the columns nothing is transformed: with 3 input channels a 2-D scheme's GEMMs would
   reduce over 3 terms only, too short for the register kernel.

       y = A_e^T [(G_e w_even) * (B_e^T e)] + A_o^T [(G_o w_odd) * (B_o^T o)]

   F(4, 4) on the interpolation points 0, 1, -1, 2, -2, -1/2 and infinity, F(4, 3) on 0, 1, -1,
   2, -2 and infinity (Lavin and Gray's F(4, 3)); the rows of B^T scaled to integers, those of G
   divided to match (tables below, derived by Toom-Cook interpolation). The input transform is
   exact but for its sums' rounding (integer coefficients up to 12), the output transform's
   coefficients are powers of two, and G (1/6, 1/18, 32/45, ...) is applied in double and rounded
   once. Float32 error of the stem's forward against float64 (one 224 x 224 image, the largest
   error over the largest output): 7.1e-7, the direct convolution's 4.4e-7 (F(2, 4) + F(2, 3),
   tried first: 4.1e-7, but 4.5 positions an output instead of 3.25; tests/test_conv_cython.py
   checks against torch).

   Layout: one thread's block of `count` tiles, tile t in lane t of a row of `ld` floats; the
   reduction term k = c KH + i (input channel c, kernel row i) has its 13 positions in rows
   13 k .. 13 k + 12, so the GEMM for position p reads rows p, 13 + p, ... (row stride 13 ld);
   the GEMM's results come back as 13 rows an output channel. U: position p's Og x (Cg KH)
   matrices at u + p * rows (rows = C_out Cg KH kernel rows of 7 taps); positions 0 .. 6 are the
   even taps', 7 .. 12 the odd taps'. */
#ifndef GATEDRNN_CONV_WINOGRAD_ROWS_H
#define GATEDRNN_CONV_WINOGRAD_ROWS_H

#include "_conv_winograd.h"  /* gatedrnn_winograd_run, _conv_gemm.h */

#define GATEDRNN_WINOGRAD_ROWS_POSITIONS 13
#define GATEDRNN_WINOGRAD_ROWS_TILE 4  /* outputs a tile */

/* F(4, 4) for the even taps: B^T (on e), G (on w0, w2, w4, w6), A^T. */
static const float gatedrnn_rows_bt_even[7][7] = {
    {4, 8, -5, -10, 1, 2, 0},
    {0, 4, 12, 7, -3, -2, 0},
    {0, 4, 4, -9, -1, 2, 0},
    {0, -2, -5, 0, 5, 2, 0},
    {0, -2, -3, 4, 3, -2, 0},
    {0, -4, 0, 5, 0, -1, 0},
    {0, 4, 8, -5, -10, 1, 2},
};
static const double gatedrnn_rows_g_even[7][4] = {
    {1.0 / 4, 0.0, 0.0, 0.0},
    {1.0 / 18, 1.0 / 18, 1.0 / 18, 1.0 / 18},
    {1.0 / 6, -1.0 / 6, 1.0 / 6, -1.0 / 6},
    {1.0 / 120, 1.0 / 60, 1.0 / 30, 1.0 / 15},
    {1.0 / 72, -1.0 / 36, 1.0 / 18, -1.0 / 9},
    {32.0 / 45, -16.0 / 45, 8.0 / 45, -4.0 / 45},
    {0.0, 0.0, 0.0, 1.0 / 2},
};
static const float gatedrnn_rows_at_even[4][7] = {
    {1, 1, 1, 1, 1, 1, 0},
    {0, 1, -1, 2, -2, -0.5f, 0},
    {0, 1, 1, 4, 4, 0.25f, 0},
    {0, 1, -1, 8, -8, -0.125f, 1},
};
/* F(4, 3) for the odd taps: B^T (on o), G (on w1, w3, w5), A^T. */
static const float gatedrnn_rows_bt_odd[6][6] = {
    {4, 0, -5, 0, 1, 0},
    {0, 4, 4, -1, -1, 0},
    {0, -4, 4, 1, -1, 0},
    {0, -2, -1, 2, 1, 0},
    {0, 2, -1, -2, 1, 0},
    {0, 4, 0, -5, 0, 1},
};
static const double gatedrnn_rows_g_odd[6][3] = {
    {1.0 / 4, 0.0, 0.0},
    {1.0 / 6, 1.0 / 6, 1.0 / 6},
    {1.0 / 6, -1.0 / 6, 1.0 / 6},
    {1.0 / 24, 1.0 / 12, 1.0 / 6},
    {1.0 / 24, -1.0 / 12, 1.0 / 6},
    {0.0, 0.0, 1.0},
};
static const float gatedrnn_rows_at_odd[4][6] = {
    {1, 1, 1, 1, 1, 0},
    {0, 1, -1, 2, -2, 0},
    {0, 1, 1, 4, 4, 0},
    {0, 1, -1, 8, -8, 1},
};

/* U[p * rows + r] for the kernel rows r in [first, last) of `w` (7 taps a row). */
static inline void gatedrnn_winograd_rows_weights(const float* w, long rows, float* u, long first, long last) {
    for (long r = first; r < last; r++) {
        const float* taps = w + 7 * r;
        for (int p = 0; p < 7; p++) {
            double sum = 0;
            for (int j = 0; j < 4; j++)
                sum += gatedrnn_rows_g_even[p][j] * taps[2 * j];
            u[p * rows + r] = (float) sum;
        }
        for (int p = 0; p < 6; p++) {
            double sum = 0;
            for (int j = 0; j < 3; j++)
                sum += gatedrnn_rows_g_odd[p][j] * taps[2 * j + 1];
            u[(7 + p) * rows + r] = (float) sum;
        }
    }
}

#if GATEDRNN_CONV_AVX512

/* sum_i coefficients[i] * values[i] over `size` values, the coefficients compile-time constants
   (the callers' loops are unrolled so that the zero ones vanish and the others fold in). */
#define GATEDRNN_ROWS_COMBINE(result, coefficients, values, size)                                   \
    do {                                                                                           \
        int first_term = 1;                                                                        \
        _Pragma("GCC unroll 8") for (int i_ = 0; i_ < (size); i_++) {                              \
            if ((coefficients)[i_] == 0.0f)                                                        \
                continue;                                                                          \
            __m512 c_ = _mm512_set1_ps((coefficients)[i_]);                                        \
            (result) = first_term ? _mm512_mul_ps(c_, (values)[i_])                                \
                                  : _mm512_fmadd_ps(c_, (values)[i_], (result));                   \
            first_term = 0;                                                                        \
        }                                                                                          \
    } while (0)

/* V for tiles [tile, tile + count) of the batch (sample-major, out_h x tiles_w a sample) and
   `channels` input channels: term k = c kernel_h + i at rows 13 k .. 13 k + 12 of v (row stride
   ld, lane t for tile tile + t), lanes past count untouched. x is the first of the channels in
   sample 0 (planes height x width, sample_stride floats between samples); tile (oy, tx), kernel
   row i reads input row oy stride_h - pad_top + i dilation_h (zero outside the image) from
   column 8 tx - pad_left.

   Up to 16 tiles of one output row a step: the 8 run + 5 input values from the run's first
   column by nine masked loads (columns outside the image masked to zero), split by column
   modulo 8 by three rounds of even/odd permutes (d0 .. d7 of each tile), d8 .. d12 being
   d0 .. d4 one tile on (a lane shift with the ninth load's values in the last lane). */
static inline void gatedrnn_winograd_rows_input(const float* x, long sample_stride, long channels, long height,
                                                long width, long kernel_h, long stride_h, long dilation_h,
                                                long pad_top, long pad_left, long out_h, long tiles_w, long tile,
                                                long count, float* v, long ld) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    /* lanes 1 .. 15 of a, then lane j of b (next[j - 1]): a column one tile on */
    const __m512i next[4] = {
        _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17),
        _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18),
        _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 19),
        _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 20),
    };
    const __m512 zero = _mm512_setzero_ps();
    long plane = height * width;
    long t = 0;
    while (t < count) {
        long n, oy, tx;
        long run = gatedrnn_winograd_run(tile + t, count - t, 16, out_h, tiles_w, &n, &oy, &tx);
        long first = 8 * tx - pad_left;
        __mmask16 masks[9];  /* a kernel row's span: the values 0 .. 8 run + 4 from column first */
        gatedrnn_winograd_span_masks(first, width, 8 * run + 5, 9, masks);
        __mmask16 lanes = gatedrnn_mask16(run);
        const float* sample = x + n * sample_stride;
        for (long c = 0; c < channels; c++) {
            const float* channel = sample + c * plane;
            for (long i = 0; i < kernel_h; i++) {
                float* rows = v + GATEDRNN_WINOGRAD_ROWS_POSITIONS * (c * kernel_h + i) * ld + t;
                long row = oy * stride_h - pad_top + i * dilation_h;
                if (row < 0 || row >= height) {
                    for (int p = 0; p < GATEDRNN_WINOGRAD_ROWS_POSITIONS; p++)
                        _mm512_mask_storeu_ps(rows + p * ld, lanes, zero);
                    continue;
                }
                const float* source = channel + row * width + first;  /* masked: never read outside */
                __m512 l[9], half[8], quarter[8], d[13];
                for (int k = 0; k < 9; k++)
                    l[k] = _mm512_maskz_loadu_ps(masks[k], source + 16 * k);
                /* l[k]: tiles 2 k, 2 k + 1. half[2 k] (half[2 k + 1]): tiles 4 k .. 4 k + 3, columns
                   0, 2, 4, 6 (1, 3, 5, 7) of each; quarter: tiles 8 k' .. 8 k' + 7, columns
                   {0, 4}, {2, 6}, {1, 5}, {3, 7}; then d: all 16 tiles, one column. */
                for (int k = 0; k < 4; k++) {
                    half[2 * k] = _mm512_permutex2var_ps(l[2 * k], even, l[2 * k + 1]);
                    half[2 * k + 1] = _mm512_permutex2var_ps(l[2 * k], odd, l[2 * k + 1]);
                }
                for (int k = 0; k < 2; k++) {
                    __m512 e_lo = half[4 * k], e_hi = half[4 * k + 2], o_lo = half[4 * k + 1], o_hi = half[4 * k + 3];
                    quarter[4 * k] = _mm512_permutex2var_ps(e_lo, even, e_hi);      /* columns 0, 4 */
                    quarter[4 * k + 1] = _mm512_permutex2var_ps(e_lo, odd, e_hi);   /* 2, 6 */
                    quarter[4 * k + 2] = _mm512_permutex2var_ps(o_lo, even, o_hi);  /* 1, 5 */
                    quarter[4 * k + 3] = _mm512_permutex2var_ps(o_lo, odd, o_hi);   /* 3, 7 */
                }
                d[0] = _mm512_permutex2var_ps(quarter[0], even, quarter[4]);
                d[4] = _mm512_permutex2var_ps(quarter[0], odd, quarter[4]);
                d[2] = _mm512_permutex2var_ps(quarter[1], even, quarter[5]);
                d[6] = _mm512_permutex2var_ps(quarter[1], odd, quarter[5]);
                d[1] = _mm512_permutex2var_ps(quarter[2], even, quarter[6]);
                d[5] = _mm512_permutex2var_ps(quarter[2], odd, quarter[6]);
                d[3] = _mm512_permutex2var_ps(quarter[3], even, quarter[7]);
                d[7] = _mm512_permutex2var_ps(quarter[3], odd, quarter[7]);
                d[8] = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(l[8]),
                                                               _mm512_castps_si512(d[0]), 1));
                for (int j = 1; j <= 4; j++)
                    d[8 + j] = _mm512_permutex2var_ps(d[j], next[j - 1], l[8]);
                __m512 e[7], o[6];
                for (int k = 0; k < 7; k++)
                    e[k] = d[2 * k];
                for (int k = 0; k < 6; k++)
                    o[k] = d[2 * k + 1];
                _Pragma("GCC unroll 7") for (int p = 0; p < 7; p++) {
                    __m512 value = zero;
                    GATEDRNN_ROWS_COMBINE(value, gatedrnn_rows_bt_even[p], e, 7);
                    _mm512_mask_storeu_ps(rows + p * ld, lanes, value);
                }
                _Pragma("GCC unroll 6") for (int p = 0; p < 6; p++) {
                    __m512 value = zero;
                    GATEDRNN_ROWS_COMBINE(value, gatedrnn_rows_bt_odd[p], o, 6);
                    _mm512_mask_storeu_ps(rows + (7 + p) * ld, lanes, value);
                }
            }
        }
        t += run;
    }
}

/* One output channel's outputs for tiles [tile, tile + count) of the batch (sample-major,
   out_h x tiles_w a sample): m holds its 13 transformed rows (row stride ld, lane t for tile
   tile + t); y is the channel's plane in the sample of tile 0 (tile < out_h * tiles_w),
   sample_stride floats between one sample's plane and the next's. Writes A^T m + shift, the
   four outputs of a tile side by side, the last tile of a row clipped to out_w. */
static inline void gatedrnn_winograd_rows_output(const float* m, long ld, long count, long tile, long out_h,
                                                 long tiles_w, float* y, long sample_stride, long out_w,
                                                 float shift) {
    /* lanes 0..7 of a and b interleaved (a0 b0 a1 b1 ...), and lanes 8..15 */
    const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    /* pairs 0..3 of a and b interleaved, and pairs 4..7 */
    const __m512i pairs_low = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11);
    const __m512i pairs_high = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
    const __m512 bias = _mm512_set1_ps(shift);
    long t = 0;
    while (t < count) {
        long n, oy, tx;
        long run = gatedrnn_winograd_run(tile + t, count - t, 16, out_h, tiles_w, &n, &oy, &tx);
        __mmask16 mask = gatedrnn_mask16(run);
        __m512 even_m[7], odd_m[6], out[4];
        for (int p = 0; p < 7; p++)
            even_m[p] = _mm512_maskz_loadu_ps(mask, m + p * ld + t);
        for (int p = 0; p < 6; p++)
            odd_m[p] = _mm512_maskz_loadu_ps(mask, m + (7 + p) * ld + t);
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
            __m512 from_even = _mm512_setzero_ps(), from_odd = from_even;
            GATEDRNN_ROWS_COMBINE(from_even, gatedrnn_rows_at_even[k], even_m, 7);
            GATEDRNN_ROWS_COMBINE(from_odd, gatedrnn_rows_at_odd[k], odd_m, 6);
            out[k] = _mm512_add_ps(_mm512_add_ps(from_even, from_odd), bias);
        }
        /* y0 .. y3 of tile t to columns 4 t .. 4 t + 3 */
        __m512 y01_low = _mm512_permutex2var_ps(out[0], low, out[1]), y01_high = _mm512_permutex2var_ps(out[0], high, out[1]);
        __m512 y23_low = _mm512_permutex2var_ps(out[2], low, out[3]), y23_high = _mm512_permutex2var_ps(out[2], high, out[3]);
        __m512 columns16[4] = {
            _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(y01_low), pairs_low, _mm512_castps_pd(y23_low))),
            _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(y01_low), pairs_high, _mm512_castps_pd(y23_low))),
            _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(y01_high), pairs_low, _mm512_castps_pd(y23_high))),
            _mm512_castpd_ps(_mm512_permutex2var_pd(_mm512_castps_pd(y01_high), pairs_high, _mm512_castps_pd(y23_high))),
        };
        long columns = out_w - 4 * tx;  /* output columns left in the row from this run's first */
        long width = 4 * run < columns ? 4 * run : columns;
        float* row = y + n * sample_stride + oy * out_w + 4 * tx;
        for (int k = 0; k < 4 && 16 * k < width; k++)
            _mm512_mask_storeu_ps(row + 16 * k, gatedrnn_mask16(width - 16 * k), columns16[k]);
        t += run;
    }
}

#else  /* no AVX-512: conv.pyx never takes this path (the stubs keep it linking) */

static inline void gatedrnn_winograd_rows_input(const float* x, long sample_stride, long channels, long height,
                                                long width, long kernel_h, long stride_h, long dilation_h,
                                                long pad_top, long pad_left, long out_h, long tiles_w, long tile,
                                                long count, float* v, long ld) {
    (void) x; (void) sample_stride; (void) channels; (void) height; (void) width; (void) kernel_h; (void) stride_h;
    (void) dilation_h; (void) pad_top; (void) pad_left; (void) out_h; (void) tiles_w; (void) tile; (void) count;
    (void) v; (void) ld;
}
static inline void gatedrnn_winograd_rows_output(const float* m, long ld, long count, long tile, long out_h,
                                                 long tiles_w, float* y, long sample_stride, long out_w,
                                                 float shift) {
    (void) m; (void) ld; (void) count; (void) tile; (void) out_h; (void) tiles_w; (void) y; (void) sample_stride;
    (void) out_w; (void) shift;
}
#endif

#endif  /* GATEDRNN_CONV_WINOGRAD_ROWS_H */
