/* A float32 GEMM for the convolution (cpu/conv.pyx) on AVX-512, reading its operands in place.

   C (m x n, row stride ldc) = A (m x k) @ B (k x n)          (accumulate = 0)
   C                        += A @ B                          (accumulate = 1)

   A's element (i, p) is at a[i * a_row + p * a_col], so A may be a row-major matrix (a_row = lda,
   a_col = 1) or the transpose of one (a_row = 1, a_col = lda); B is row-major (row stride ldb).
   Nothing is packed: in the convolution B is the im2col tile (or a slice of the input or of the
   output gradient), already laid out pixel-contiguous, and A is the weight matrix, read by
   broadcasts. Why not BLAS: OpenBLAS's sgemm runs these shapes (m = C_out = 64..512, n = a tile
   of 100..300 pixels, k = 576..4608) at 73..98 GFLOP/s on one core of the Zen 4 this was tuned on,
   against 112 for the register kernel below on cached data, and packs B (a second copy of the
   im2col tile) on every call.

   Register block: 8 rows x 32 columns = 16 zmm accumulators; per step of the reduction, two
   loads of B, eight broadcasts of A and 16 FMAs (measured 100-112 GFLOP/s on one Zen 4 core, its
   FMA peak). The n edge is handled with masked loads and stores (by an 8 x 16 block where at most
   16 columns are left), the m edge (fewer than 8 rows) by a one-row kernel. The reduction is
   cut into KC-step blocks so that the B panel (KC x 32) stays in L1 while every row block of A
   passes over it (the other order, each A block over every B panel, was no faster on the
   large-weight layers and 10% slower on the 1x1 ones).

   A in runs (gatedrnn_conv_sgemm_runs): A's columns taken `run` at a time, one run every
   `period` columns of the stored matrix, so column p of A is stored column
   (p / run) * period + p % run. The forward of a band of border rows (conv.pyx, _forward_tile)
   reduces over the kernel rows inside the input only: per input channel a run of
   (kernel rows) * KW of the KH * KW weights. The kernels step each row pointer by a_col and
   by `jump` after a run; the plain GEMM is one run of all of k (the same speed: 112 GFLOP/s a
   core on L1-resident operands either way; runs of 6 in 9: 99% of it).

   Summation order: for each element, over the reduction in increasing p, KC at a time (the
   weight gradient's gatedrnn_conv_sgemm_whole: all of it at once); so the result depends only on
   the shapes, never on threads or timing. */
#ifndef GATEDRNN_CONV_GEMM_H
#define GATEDRNN_CONV_GEMM_H

#if defined(__AVX512F__)
#define GATEDRNN_CONV_AVX512 1
#include <immintrin.h>

/* Reduction steps per block: a 128 x 32 float32 B panel is 16 KiB, half of Zen 4's 32 KiB L1d.
   (192 and 256: the forward 0-3% faster on 2 threads, within the noise; 96: 0-1% slower.) */
#define GATEDRNN_CONV_KC 128

static inline __mmask16 gatedrnn_mask16(long count) {
    return count >= 16 ? (__mmask16) 0xFFFF : (count <= 0 ? (__mmask16) 0 : (__mmask16) ((1u << count) - 1u));
}

/* Prefetch the block of C (8 rows, `lines` cache lines each) that a kernel adds to after its
   reduction. The weight gradient adds its products into partial sums of K x Og (9 MiB on a
   ResNet's last stage, so in L3): loaded only after the loop, each block's 16 lines cost an L3
   round trip that the out-of-order window cannot hide behind the 2048 FMAs of a 128-step
   reduction (weight gradient alone, 512@7, one core: 59 -> 66 GFLOP/s). */
static inline void gatedrnn_prefetch_block(const float* c, long ldc, int lines) {
    for (int i = 0; i < 8; i++)
        for (int l = 0; l < lines; l++)
            _mm_prefetch((const char*) (c + i * ldc + 16 * l), _MM_HINT_T0);
}

/* 8 rows of C, columns [0, nc) with nc <= 32 (masks m0, m1 for the two 16-column halves); A's
   row pointers advance by a_col a step and by jump more after every `run` steps. */
static inline void gatedrnn_conv_kernel_8x32(long k, const float* a, long a_row, long a_col, long run, long jump,
                                             const float* b, long ldb, float* c, long ldc,
                                             __mmask16 m0, __mmask16 m1, int accumulate) {
    __m512 c00 = _mm512_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00, c60 = c00, c61 = c00,
           c70 = c00, c71 = c00;
    const float* a0 = a;
    const float* a1 = a + a_row;
    const float* a2 = a + 2 * a_row;
    const float* a3 = a + 3 * a_row;
    const float* a4 = a + 4 * a_row;
    const float* a5 = a + 5 * a_row;
    const float* a6 = a + 6 * a_row;
    const float* a7 = a + 7 * a_row;
    if (accumulate)
        gatedrnn_prefetch_block(c, ldc, 2);
    for (long p0 = 0; p0 < k; p0 += run) {
        long stop = k - p0 < run ? k - p0 : run;
        for (long p = 0; p < stop; p++) {
            __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
            __m512 b1 = _mm512_maskz_loadu_ps(m1, b + 16);
            __m512 av;
#define GATEDRNN_ROW(i) \
            av = _mm512_set1_ps(a##i[0]); a##i += a_col; \
            c##i##0 = _mm512_fmadd_ps(av, b0, c##i##0); c##i##1 = _mm512_fmadd_ps(av, b1, c##i##1);
            GATEDRNN_ROW(0) GATEDRNN_ROW(1) GATEDRNN_ROW(2) GATEDRNN_ROW(3)
            GATEDRNN_ROW(4) GATEDRNN_ROW(5) GATEDRNN_ROW(6) GATEDRNN_ROW(7)
#undef GATEDRNN_ROW
            b += ldb;
        }
        a0 += jump; a1 += jump; a2 += jump; a3 += jump; a4 += jump; a5 += jump; a6 += jump; a7 += jump;
    }
#define GATEDRNN_STORE(i) \
    if (accumulate) { \
        c##i##0 = _mm512_add_ps(c##i##0, _mm512_maskz_loadu_ps(m0, c + i * ldc)); \
        c##i##1 = _mm512_add_ps(c##i##1, _mm512_maskz_loadu_ps(m1, c + i * ldc + 16)); \
    } \
    _mm512_mask_storeu_ps(c + i * ldc, m0, c##i##0); _mm512_mask_storeu_ps(c + i * ldc + 16, m1, c##i##1);
    GATEDRNN_STORE(0) GATEDRNN_STORE(1) GATEDRNN_STORE(2) GATEDRNN_STORE(3)
    GATEDRNN_STORE(4) GATEDRNN_STORE(5) GATEDRNN_STORE(6) GATEDRNN_STORE(7)
#undef GATEDRNN_STORE
}

/* 8 rows of C, columns [0, nc) with nc <= 16 (mask m0): the n edge. Half the accumulators of the
   8x32 block, but a 32-wide block spends as much time on 8 columns as on 32: the 392 output
   pixels of the 7x7 layers (a batch of 8) end in an 8-column block (2 threads: 192 + 200, the
   second thread's 200 in 6.25 blocks), which this kernel runs in half the time. */
static inline void gatedrnn_conv_kernel_8x16(long k, const float* a, long a_row, long a_col, long run, long jump,
                                             const float* b, long ldb, float* c, long ldc,
                                             __mmask16 m0, int accumulate) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
    const float* a0 = a;
    const float* a1 = a + a_row;
    const float* a2 = a + 2 * a_row;
    const float* a3 = a + 3 * a_row;
    const float* a4 = a + 4 * a_row;
    const float* a5 = a + 5 * a_row;
    const float* a6 = a + 6 * a_row;
    const float* a7 = a + 7 * a_row;
    if (accumulate)
        gatedrnn_prefetch_block(c, ldc, 1);
    for (long p0 = 0; p0 < k; p0 += run) {
        long stop = k - p0 < run ? k - p0 : run;
        for (long p = 0; p < stop; p++) {
            __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
#define GATEDRNN_ROW(i) \
            c##i = _mm512_fmadd_ps(_mm512_set1_ps(a##i[0]), b0, c##i); a##i += a_col;
            GATEDRNN_ROW(0) GATEDRNN_ROW(1) GATEDRNN_ROW(2) GATEDRNN_ROW(3)
            GATEDRNN_ROW(4) GATEDRNN_ROW(5) GATEDRNN_ROW(6) GATEDRNN_ROW(7)
#undef GATEDRNN_ROW
            b += ldb;
        }
        a0 += jump; a1 += jump; a2 += jump; a3 += jump; a4 += jump; a5 += jump; a6 += jump; a7 += jump;
    }
#define GATEDRNN_STORE(i) \
    if (accumulate) \
        c##i = _mm512_add_ps(c##i, _mm512_maskz_loadu_ps(m0, c + i * ldc)); \
    _mm512_mask_storeu_ps(c + i * ldc, m0, c##i);
    GATEDRNN_STORE(0) GATEDRNN_STORE(1) GATEDRNN_STORE(2) GATEDRNN_STORE(3)
    GATEDRNN_STORE(4) GATEDRNN_STORE(5) GATEDRNN_STORE(6) GATEDRNN_STORE(7)
#undef GATEDRNN_STORE
}

/* 8 rows of C, columns [0, nc) with nc <= 32: the 8x32 block, or the 8x16 one for an edge of
   at most 16 columns. */
static inline void gatedrnn_conv_kernel_8(long k, const float* a, long a_row, long a_col, long run, long jump,
                                          const float* b, long ldb, float* c, long ldc,
                                          long nc, int accumulate) {
    if (nc <= 16)
        gatedrnn_conv_kernel_8x16(k, a, a_row, a_col, run, jump, b, ldb, c, ldc, gatedrnn_mask16(nc), accumulate);
    else
        gatedrnn_conv_kernel_8x32(k, a, a_row, a_col, run, jump, b, ldb, c, ldc, gatedrnn_mask16(nc),
                                  gatedrnn_mask16(nc - 16), accumulate);
}

/* One row of C, columns [0, nc), nc <= 32: the m edge. */
static inline void gatedrnn_conv_kernel_1x32(long k, const float* a, long a_col, long run, long jump,
                                             const float* b, long ldb, float* c, __mmask16 m0, __mmask16 m1,
                                             int accumulate) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0;
    for (long p0 = 0; p0 < k; p0 += run) {
        long stop = k - p0 < run ? k - p0 : run;
        for (long p = 0; p < stop; p++) {
            __m512 av = _mm512_set1_ps(a[0]);
            a += a_col;
            c0 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m0, b), c0);
            c1 = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m1, b + 16), c1);
            b += ldb;
        }
        a += jump;
    }
    if (accumulate) {
        c0 = _mm512_add_ps(c0, _mm512_maskz_loadu_ps(m0, c));
        c1 = _mm512_add_ps(c1, _mm512_maskz_loadu_ps(m1, c + 16));
    }
    _mm512_mask_storeu_ps(c, m0, c0);
    _mm512_mask_storeu_ps(c + 16, m1, c1);
}

static inline void gatedrnn_conv_sgemm_runs(long m, long n, long k, const float* a, long a_row, long a_col,
                                            long run, long period, const float* b, long ldb, float* c, long ldc,
                                            int accumulate) {
    /* With gaps between the runs, KC blocks of whole runs, so that each block starts a run */
    long kc_max = period == run ? GATEDRNN_CONV_KC
                                : (run >= GATEDRNN_CONV_KC ? run : GATEDRNN_CONV_KC / run * run);
    long jump = (period - run) * a_col;
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) {
        if (!accumulate)
            for (long i = 0; i < m; i++)
                for (long j = 0; j < n; j++)
                    c[i * ldc + j] = 0.0f;
        return;
    }
    for (long p0 = 0; p0 < k; p0 += kc_max) {
        long kc = k - p0 < kc_max ? k - p0 : kc_max;
        int add = accumulate || p0 > 0;
        const float* a_block = a + (p0 / run * period + p0 % run) * a_col;
        for (long j0 = 0; j0 < n; j0 += 32) {
            __mmask16 m0 = gatedrnn_mask16(n - j0), m1 = gatedrnn_mask16(n - j0 - 16);
            const float* b_panel = b + p0 * ldb + j0;
            long i0 = 0;
            for (; i0 + 8 <= m; i0 += 8)
                gatedrnn_conv_kernel_8(kc, a_block + i0 * a_row, a_row, a_col, run, jump, b_panel, ldb,
                                       c + i0 * ldc + j0, ldc, n - j0, add);
            for (; i0 < m; i0++)
                gatedrnn_conv_kernel_1x32(kc, a_block + i0 * a_row, a_col, run, jump, b_panel, ldb,
                                          c + i0 * ldc + j0, m0, m1, add);
        }
    }
}

static inline void gatedrnn_conv_sgemm(long m, long n, long k, const float* a, long a_row, long a_col,
                                       const float* b, long ldb, float* c, long ldc, int accumulate) {
    gatedrnn_conv_sgemm_runs(m, n, k, a, a_row, a_col, k > 0 ? k : 1, k > 0 ? k : 1, b, ldb, c, ldc, accumulate);
}

/* The product for the weight gradient, whose C is its partial sums (K x Og, 9 MiB on a ResNet's
   last stage, in L3) and whose reduction is a tile's pixels: the whole reduction in one pass per
   block of C (row blocks outer, column panels inner, no KC blocks), so that C makes one L3 round
   trip per tile instead of one per 128 pixels, while the row block of A (8 x k, 4 KiB at
   k = 128) stays in L1 over the column panels and B in L2 (weight gradient alone, one core:
   512@7 and 256->512/2 +3-4%). B comes in panel-major order: the 32-column panel j at
   b + j * b_jump, its row p at + p * ldb. Summation order: each element over p increasing,
   added to C once. */
static inline void gatedrnn_conv_sgemm_whole(long m, long n, long k, const float* a, long a_row, long a_col,
                                             const float* b, long ldb, long b_jump, float* c, long ldc,
                                             int accumulate) {
    if (m <= 0 || n <= 0 || k <= 0)
        return;  /* k = 0 does not occur: the weight gradient's tiles have pixels */
    long i0 = 0;
    for (; i0 + 8 <= m; i0 += 8)
        for (long j0 = 0; j0 < n; j0 += 32)
            gatedrnn_conv_kernel_8(k, a + i0 * a_row, a_row, a_col, k, 0, b + j0 / 32 * b_jump, ldb,
                                   c + i0 * ldc + j0, ldc, n - j0, accumulate);
    for (; i0 < m; i0++)
        for (long j0 = 0; j0 < n; j0 += 32)
            gatedrnn_conv_kernel_1x32(k, a + i0 * a_row, a_col, k, 0, b + j0 / 32 * b_jump, ldb, c + i0 * ldc + j0,
                                      gatedrnn_mask16(n - j0), gatedrnn_mask16(n - j0 - 16), accumulate);
}

/* dst[j] = src[2 j] for j < n: im2col's copy of one output row at stride 2 (a ResNet's 3x3/2 and
   1x1/2 layers), 16 outputs per permute of two vectors instead of a scalar loop. Reads only
   src[0 .. 2 n - 2] (masked loads at the end). */
static inline void gatedrnn_gather_stride2(float* dst, const float* src, long n) {
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    long j = 0;
    for (; j + 16 <= n; j += 16) {
        /* outputs j .. j+15 read src[2j .. 2j+30]: the second load stops at 2j+30 */
        __m512 low = _mm512_loadu_ps(src + 2 * j);
        __m512 high = _mm512_maskz_loadu_ps((__mmask16) 0x7FFF, src + 2 * j + 16);
        _mm512_storeu_ps(dst + j, _mm512_permutex2var_ps(low, even, high));
    }
    if (j < n) {
        long last = 2 * (n - 1) - 2 * j;  /* offset of the last element read, < 31 */
        __mmask16 low_mask = gatedrnn_mask16(last + 1);
        __mmask16 high_mask = gatedrnn_mask16(last + 1 - 16);
        __m512 low = _mm512_maskz_loadu_ps(low_mask, src + 2 * j);
        __m512 high = _mm512_maskz_loadu_ps(high_mask, src + 2 * j + 16);
        _mm512_mask_storeu_ps(dst + j, gatedrnn_mask16(n - j), _mm512_permutex2var_ps(low, even, high));
    }
}

/* dst[2 j] = src[j] for j < n, every other dst[i] (i < width) zero: the input gradient of a
   1x1 stride-2 convolution along one input row (the transpose of gatedrnn_gather_stride2), 16
   outputs per expand of 8 inputs. Needs 2 (n - 1) < width. */
static inline void gatedrnn_expand_stride2(float* dst, long width, const float* src, long n) {
    long i = 0;
    for (; i < width; i += 16) {
        long j = i / 2;
        long left = n - j;  /* inputs left; 8 or more fill the 16 outputs' even lanes */
        __m512 packed = _mm512_maskz_loadu_ps(gatedrnn_mask16(left < 8 ? left : 8), src + j);
        __m512 spread = _mm512_maskz_expand_ps((__mmask16) 0x5555, packed);
        _mm512_mask_storeu_ps(dst + i, gatedrnn_mask16(width - i), spread);
    }
}

/* Rows i < rows of a 16 x 16 block (columns under mask `cols`, the rest zero) transposed in
   registers: out[c] = column c. Three rounds of shuffles: pairs of rows interleaved, then pairs
   of pairs (each 128-bit lane then holds one column of four rows), then the lanes gathered. */
static inline void gatedrnn_transpose_16x16(const float* src, long lds, long rows, __mmask16 cols, __m512 out[16]) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(cols, src + i * lds) : _mm512_setzero_ps();
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  /* r[i + j], lane L: column 4 L + j of rows i .. i + 3 */
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int j = 0; j < 4; j++) {
        __m512 even_low = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);   /* lanes 0, 2 of rows 0-3, 4-7 */
        __m512 even_high = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
        __m512 odd_low = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);    /* lanes 1, 3 */
        __m512 odd_high = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
        out[j] = _mm512_shuffle_f32x4(even_low, even_high, 0x88);
        out[8 + j] = _mm512_shuffle_f32x4(even_low, even_high, 0xDD);
        out[4 + j] = _mm512_shuffle_f32x4(odd_low, odd_high, 0x88);
        out[12 + j] = _mm512_shuffle_f32x4(odd_low, odd_high, 0xDD);
    }
}

/* dst (cols x rows, row stride ldd) = src (rows x cols, row stride lds)^T, 16 x 16 blocks in
   registers (a scalar loop took 0.04-0.14 ms of the 0.6 ms weight gradient of a 1x1/2 layer).
   The weight gradient of a layer with more output than input channels transposes its unfolded
   input with it (_grad_weight_wide in conv.pyx). */
static inline void gatedrnn_transpose(const float* src, long rows, long cols, long lds, float* dst, long ldd) {
    __m512 out[16];
    for (long r0 = 0; r0 < rows; r0 += 16) {
        long block_rows = rows - r0 < 16 ? rows - r0 : 16;
        __mmask16 row_mask = gatedrnn_mask16(block_rows);
        for (long c0 = 0; c0 < cols; c0 += 16) {
            long block_cols = cols - c0 < 16 ? cols - c0 : 16;
            gatedrnn_transpose_16x16(src + r0 * lds + c0, lds, block_rows, gatedrnn_mask16(block_cols), out);
            for (long c = 0; c < block_cols; c++)
                _mm512_mask_storeu_ps(dst + (c0 + c) * ldd + r0, row_mask, out[c]);
        }
    }
}

/* The same product with A packed: row block r (rows 8r .. 8r+7) of A is the contiguous panel
   a + r * 8 * k, element (i, p) of the block at [p * 8 + i], rows past m zero. The eight
   broadcasts of a step then read one half cache line instead of eight strided ones (A is the
   transposed weight in the input gradient, whose rows are otherwise a whole weight row apart). */
static inline void gatedrnn_conv_sgemm_packed(long m, long n, long k, const float* a, const float* b, long ldb,
                                              float* c, long ldc, int accumulate) {
    float edge[8 * 32];
    long full = m - m % 8;
    if (m <= 0 || n <= 0 || k <= 0)
        return;  /* k = 0 does not occur: the reduction is C_out / groups >= 1 */
    for (long p0 = 0; p0 < k; p0 += GATEDRNN_CONV_KC) {
        long kc = k - p0 < GATEDRNN_CONV_KC ? k - p0 : GATEDRNN_CONV_KC;
        int add = accumulate || p0 > 0;
        for (long j0 = 0; j0 < n; j0 += 32) {
            const float* b_panel = b + p0 * ldb + j0;
            for (long i0 = 0; i0 < full; i0 += 8)
                gatedrnn_conv_kernel_8(kc, a + i0 * k + p0 * 8, 1, 8, kc, 0, b_panel, ldb, c + i0 * ldc + j0, ldc,
                                       n - j0, add);
        }
    }
    if (full == m)
        return;
    /* the last, partial row block: whole reduction into a scratch block, then its valid rows */
    for (long j0 = 0; j0 < n; j0 += 32) {
        for (long p0 = 0; p0 < k; p0 += GATEDRNN_CONV_KC) {
            long kc = k - p0 < GATEDRNN_CONV_KC ? k - p0 : GATEDRNN_CONV_KC;
            gatedrnn_conv_kernel_8(kc, a + full * k + p0 * 8, 1, 8, kc, 0, b + p0 * ldb + j0, ldb, edge, 32,
                                   n - j0, p0 > 0);
        }
        long width = n - j0 < 32 ? n - j0 : 32;
        for (long i = full; i < m; i++)
            for (long j = 0; j < width; j++)
                c[i * ldc + j0 + j] = accumulate ? c[i * ldc + j0 + j] + edge[(i - full) * 32 + j]
                                                 : edge[(i - full) * 32 + j];
    }
}

#else  /* no AVX-512: conv.pyx calls BLAS instead (the scalar helpers below keep it linking) */

#define GATEDRNN_CONV_AVX512 0
static inline void gatedrnn_transpose(const float* src, long rows, long cols, long lds, float* dst, long ldd) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++)
            dst[c * ldd + r] = src[r * lds + c];
}
static inline void gatedrnn_conv_sgemm(long m, long n, long k, const float* a, long a_row, long a_col,
                                       const float* b, long ldb, float* c, long ldc, int accumulate) {
    (void) m; (void) n; (void) k; (void) a; (void) a_row; (void) a_col; (void) b; (void) ldb; (void) c;
    (void) ldc; (void) accumulate;
}
static inline void gatedrnn_conv_sgemm_runs(long m, long n, long k, const float* a, long a_row, long a_col,
                                            long run, long period, const float* b, long ldb, float* c, long ldc,
                                            int accumulate) {
    (void) m; (void) n; (void) k; (void) a; (void) a_row; (void) a_col; (void) run; (void) period; (void) b;
    (void) ldb; (void) c; (void) ldc; (void) accumulate;
}
static inline void gatedrnn_conv_sgemm_whole(long m, long n, long k, const float* a, long a_row, long a_col,
                                             const float* b, long ldb, long b_jump, float* c, long ldc,
                                             int accumulate) {
    (void) m; (void) n; (void) k; (void) a; (void) a_row; (void) a_col; (void) b; (void) ldb; (void) b_jump;
    (void) c; (void) ldc; (void) accumulate;
}
static inline void gatedrnn_gather_stride2(float* dst, const float* src, long n) {
    for (long j = 0; j < n; j++)
        dst[j] = src[2 * j];
}
static inline void gatedrnn_expand_stride2(float* dst, long width, const float* src, long n) {
    for (long i = 0; i < width; i++)
        dst[i] = (i % 2 == 0 && i / 2 < n) ? src[i / 2] : 0.0f;
}
static inline void gatedrnn_conv_sgemm_packed(long m, long n, long k, const float* a, const float* b, long ldb,
                                              float* c, long ldc, int accumulate) {
    (void) m; (void) n; (void) k; (void) a; (void) b; (void) ldb; (void) c; (void) ldc; (void) accumulate;
}
#endif

#endif  /* GATEDRNN_CONV_GEMM_H */
