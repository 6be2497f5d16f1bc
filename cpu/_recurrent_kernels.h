/* C kernels shared by the CPU recurrences (cpu/gru.pyx and cpu/rnn.pyx; each cimports the
 * declarations from _recurrent.pxd, and its own cell's gate math includes this header).
 *
 * Why C and not Cython: these loops must vectorise, and that takes `restrict` pointers and
 * constant-trip register-tile loops that gcc unrolls and vectorises (with -O3 -march=native).
 * Cython cannot say restrict, and gcc gives up on its runtime alias checks between this many
 * arrays. Everything is static, so each extension module compiles its own copy.
 */
#ifndef GATEDRNN_RECURRENT_KERNELS_H
#define GATEDRNN_RECURRENT_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp, sigmoid and tanh for float32 as straight-line arithmetic: libm's expf is an opaque
 * scalar call (gcc only vectorises it under -ffast-math), and the gate math must vectorise
 * or it costs as much as the GEMMs at large batch. Cephes expf (polynomial on
 * [-ln2/2, ln2/2], about 1 ulp) and Cephes tanhf (odd polynomial below 0.625, where
 * 1 - 2/(e^2x + 1) would cancel). float64 keeps libm: exact, and it has no speed bar. */
static inline float gatedrnn_expf(float x)
{
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* round to nearest without a libm call: adding 1.5 * 2^23 pushes the fraction out */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}
static inline float gatedrnn_sigmoidf(float x) { return 1.0f / (1.0f + gatedrnn_expf(-x)); }
static inline float gatedrnn_tanhf(float x)
{
    float ax = fabsf(x);
    float z = x * x;
    float small = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z
                     - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z
                   - 3.33332819422e-1f) * z * x + x;
    float e = gatedrnn_expf(2.0f * (ax < 9.0f ? ax : 9.0f));
    float big = copysignf(1.0f - 2.0f / (e + 1.0f), x);
    return ax < 0.625f ? small : big;
}

/* The per-step recurrent product C (M x N) (+)= A (M x K) @ Bp, with M = batch (small),
 * and Bp this thread's slice of W_hh packed once per call as ceil(N / NR) column panels of
 * K x NR (zero-padded), each contiguous, so a panel streams from L2 with no per-call
 * packing. OpenBLAS re-packs its operands on every call, which at batch <= 64 costs about
 * as much as the arithmetic. The MR x NR accumulator tile lives in registers (gcc unrolls
 * and vectorises the constant-trip loops; 8 x 32 floats = 16 zmm); a single leftover row
 * keeps two accumulators so consecutive k do not wait on each other's FMA. */
#define GATEDRNN_PANEL_GEMM(T, S, NR, MR)                                                    \
static __attribute__((noinline)) void panel_gemm_##S(int M, int N, int K,                 \
        const T *restrict A, int lda, const T *restrict Bp, T *restrict C, int ldc,          \
        int accumulate)                                                                      \
{                                                                                            \
    for (int p = 0; p * NR < N; p++) {                                                       \
        const T *restrict panel = Bp + (size_t)p * K * NR;                                   \
        const int n = N - p * NR < NR ? N - p * NR : NR;                                     \
        T *restrict Cp = C + p * NR;                                                         \
        int i0 = 0;                                                                          \
        for (; i0 + MR <= M; i0 += MR) {                                                     \
            T acc[MR][NR];                                                                   \
            _Pragma("GCC unroll 16")                                                         \
            for (int r = 0; r < MR; r++)                                                     \
                for (int c = 0; c < NR; c++) acc[r][c] = 0;                                  \
            for (int k = 0; k < K; k++) {                                                    \
                const T *restrict b = panel + (size_t)k * NR;                                \
                _Pragma("GCC unroll 16")                                                     \
                for (int r = 0; r < MR; r++) {                                               \
                    const T a = A[(size_t)(i0 + r) * lda + k];                               \
                    for (int c = 0; c < NR; c++) acc[r][c] += a * b[c];                      \
                }                                                                            \
            }                                                                                \
            for (int r = 0; r < MR; r++) {                                                   \
                T *restrict c_row = Cp + (size_t)(i0 + r) * ldc;                             \
                if (n == NR) {                                                               \
                    if (accumulate) for (int c = 0; c < NR; c++) c_row[c] += acc[r][c];      \
                    else for (int c = 0; c < NR; c++) c_row[c] = acc[r][c];                  \
                } else {                                                                     \
                    for (int c = 0; c < n; c++)                                              \
                        c_row[c] = (accumulate ? c_row[c] : 0) + acc[r][c];                  \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
        for (; i0 < M; i0++) {                                                               \
            T acc0[NR], acc1[NR];                                                            \
            const T *restrict a_row = A + (size_t)i0 * lda;                                  \
            for (int c = 0; c < NR; c++) { acc0[c] = 0; acc1[c] = 0; }                       \
            int k = 0;                                                                       \
            for (; k + 1 < K; k += 2) {                                                      \
                const T a0 = a_row[k], a1 = a_row[k + 1];                                    \
                const T *restrict b = panel + (size_t)k * NR;                                \
                for (int c = 0; c < NR; c++) {                                               \
                    acc0[c] += a0 * b[c];                                                    \
                    acc1[c] += a1 * b[NR + c];                                               \
                }                                                                            \
            }                                                                                \
            if (k < K) {                                                                     \
                const T a0 = a_row[k];                                                       \
                const T *restrict b = panel + (size_t)k * NR;                                \
                for (int c = 0; c < NR; c++) acc0[c] += a0 * b[c];                           \
            }                                                                                \
            T *restrict c_row = Cp + (size_t)i0 * ldc;                                       \
            for (int c = 0; c < n; c++)                                                      \
                c_row[c] = (accumulate ? c_row[c] : 0) + acc0[c] + acc1[c];                  \
        }                                                                                    \
    }                                                                                        \
}

#define GATEDRNN_NR_F 32
#define GATEDRNN_NR_D 16
GATEDRNN_PANEL_GEMM(float, f, 32, 8)
GATEDRNN_PANEL_GEMM(double, d, 16, 8)

#endif /* GATEDRNN_RECURRENT_KERNELS_H */
