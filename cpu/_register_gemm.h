/* The register-blocked product of the CPU recurrences (float32 and float64): out = in @ W
 * with W in 32-column blocks, 8 (then 4, then 1) rows of accumulators, GCC vector extensions so
 * that it compiles to AVX-512 (or whatever -march gives). Used through _register_gemm.pxd by
 * cpu/lstm.pyx (the input projection, the per-step products, dX, the weight gradients) and by
 * cpu/gru.pyx and cpu/rnn.pyx (their weight gradients). */
#ifndef GATEDRNN_REGISTER_GEMM_H
#define GATEDRNN_REGISTER_GEMM_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define GR_RESTRICT __restrict__
#define GR_VECTOR_EXT 1
#elif defined(_MSC_VER)
#define GR_RESTRICT __restrict
#define GR_VECTOR_EXT 0
#else
#define GR_RESTRICT
#define GR_VECTOR_EXT 0
#endif


/* out (B x N) = in (B x K, row stride ld_in) @ W (K x N), N a multiple of 32, with element
   (k, c) of W at w[(c / 32) * block_stride + k * k_stride + c % 32]: either packed in
   column blocks of 32 (block_stride = 32 K, k_stride = 32) or a row-major matrix used in
   place (block_stride = 32, k_stride = its row stride). Register-blocked: 8 (then 4, then 1)
   batch rows x 32 columns of accumulators, so W streams once per 8 batch rows from the
   thread's L2 and is never re-packed (BLAS would re-pack it on every call). */
#define GR_BLOCK 32
#if GR_VECTOR_EXT
#define GR_ROWS_KERNEL(T, SFX, R)                                                        \
static inline void gr_rows##R##_##SFX(int K, const T* GR_RESTRICT in, size_t ld_in,       \
        size_t in_k_stride,                                                              \
        const T* GR_RESTRICT wb, size_t k_stride, T* GR_RESTRICT out, int ld_out,        \
        int accumulate)                                                                  \
{                                                                                        \
    enum { VL = 64 / sizeof(T), NV = GR_BLOCK / (64 / sizeof(T)) };                      \
    gr_vec_##SFX acc[R][NV];                                                             \
    for (int r = 0; r < R; r++)                                                          \
        for (int v = 0; v < NV; v++)                                                     \
            acc[r][v] = accumulate ? *(const gr_uvec_##SFX*)(out + (size_t)r * ld_out     \
                                                             + v * VL)                   \
                                   : (gr_vec_##SFX){0};                                  \
    for (int k = 0; k < K; k++) {                                                        \
        const T* wk = wb + (size_t)k * k_stride;                                         \
        gr_vec_##SFX wv[NV];                                                             \
        for (int v = 0; v < NV; v++) wv[v] = *(const gr_uvec_##SFX*)(wk + v * VL);       \
        for (int r = 0; r < R; r++) {                                                    \
            T s = in[r * ld_in + k * in_k_stride];                                       \
            for (int v = 0; v < NV; v++) acc[r][v] += wv[v] * s;                         \
        }                                                                                \
    }                                                                                    \
    for (int r = 0; r < R; r++)                                                          \
        for (int v = 0; v < NV; v++)                                                     \
            *(gr_uvec_##SFX*)(out + (size_t)r * ld_out + v * VL) = acc[r][v];            \
}
typedef float gr_vec_f32 __attribute__((vector_size(64)));
typedef float gr_uvec_f32 __attribute__((vector_size(64), aligned(4)));
typedef double gr_vec_f64 __attribute__((vector_size(64)));
typedef double gr_uvec_f64 __attribute__((vector_size(64), aligned(8)));
#define GR_DEFINE_MATMUL(T, SFX)                                                         \
GR_ROWS_KERNEL(T, SFX, 8)                                                                \
GR_ROWS_KERNEL(T, SFX, 4)                                                                \
static void gr_matmul_##SFX(int B, int K, int N, const T* GR_RESTRICT in, size_t ld_in,   \
        size_t in_k_stride, const T* GR_RESTRICT w, size_t block_stride,                 \
        size_t k_stride, T* GR_RESTRICT out, int ld_out, int accumulate)                 \
{                                                                                        \
    enum { VL = 64 / sizeof(T), NV = GR_BLOCK / (64 / sizeof(T)) };                      \
    for (int nb = 0; nb < N / GR_BLOCK; nb++) {                                          \
        const T* wb = w + (size_t)nb * block_stride;                                     \
        T* ob = out + nb * GR_BLOCK;                                                     \
        int b = 0;                                                                       \
        for (; b + 8 <= B; b += 8)                                                       \
            gr_rows8_##SFX(K, in + (size_t)b * ld_in, ld_in, in_k_stride, wb, k_stride,  \
                           ob + (size_t)b * ld_out, ld_out, accumulate);                 \
        for (; b + 4 <= B; b += 4)                                                       \
            gr_rows4_##SFX(K, in + (size_t)b * ld_in, ld_in, in_k_stride, wb, k_stride,  \
                           ob + (size_t)b * ld_out, ld_out, accumulate);                 \
        for (; b < B; b++) {                                                             \
            /* one row: 4 partial sums over k break the FMA latency chain */             \
            gr_vec_##SFX a[4][NV];                                                       \
            const T* x0 = in + (size_t)b * ld_in;                                        \
            for (int u = 0; u < 4; u++)                                                  \
                for (int v = 0; v < NV; v++) a[u][v] = (gr_vec_##SFX){0};                \
            int k = 0;                                                                   \
            for (; k + 4 <= K; k += 4)                                                   \
                for (int u = 0; u < 4; u++) {                                            \
                    const T* wk = wb + (size_t)(k + u) * k_stride;                       \
                    T s = x0[(k + u) * in_k_stride];                                     \
                    for (int v = 0; v < NV; v++)                                         \
                        a[u][v] += *(const gr_uvec_##SFX*)(wk + v * VL) * s;             \
                }                                                                        \
            for (; k < K; k++) {                                                         \
                const T* wk = wb + (size_t)k * k_stride;                                 \
                T s = x0[k * in_k_stride];                                               \
                for (int v = 0; v < NV; v++)                                             \
                    a[0][v] += *(const gr_uvec_##SFX*)(wk + v * VL) * s;                 \
            }                                                                            \
            T* o0 = ob + (size_t)b * ld_out;                                             \
            for (int v = 0; v < NV; v++) {                                               \
                gr_vec_##SFX sum = (a[0][v] + a[1][v]) + (a[2][v] + a[3][v]);            \
                if (accumulate) sum += *(const gr_uvec_##SFX*)(o0 + v * VL);             \
                *(gr_uvec_##SFX*)(o0 + v * VL) = sum;                                    \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
}
#else
#define GR_DEFINE_MATMUL(T, SFX)                                                         \
static void gr_matmul_##SFX(int B, int K, int N, const T* GR_RESTRICT in, size_t ld_in,   \
        size_t in_k_stride, const T* GR_RESTRICT w, size_t block_stride,                 \
        size_t k_stride, T* GR_RESTRICT out, int ld_out, int accumulate)                 \
{                                                                                        \
    for (int b = 0; b < B; b++)                                                          \
        for (int nb = 0; nb < N / GR_BLOCK; nb++) {                                      \
            T acc[GR_BLOCK] = {0};                                                       \
            if (accumulate)                                                              \
                memcpy(acc, out + (size_t)b * ld_out + nb * GR_BLOCK, sizeof acc);       \
            const T* wb = w + (size_t)nb * block_stride;                                 \
            for (int k = 0; k < K; k++) {                                                \
                T s = in[(size_t)b * ld_in + k * in_k_stride];                           \
                for (int l = 0; l < GR_BLOCK; l++) acc[l] += wb[(size_t)k * k_stride + l] * s; \
            }                                                                            \
            memcpy(out + (size_t)b * ld_out + nb * GR_BLOCK, acc, sizeof acc);           \
        }                                                                                \
}
#endif
GR_DEFINE_MATMUL(float, f32)
GR_DEFINE_MATMUL(double, f64)

#endif
