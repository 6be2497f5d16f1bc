# cython: language_level=3
"""The register-blocked product of _register_gemm.h for Cython callers: plain products
(``matmul_blocked``, ``matmul_blocked_tall``) and weight gradients dG^T X with both operands
packed (``weight_grad_blocked``). Inline, without the GIL."""
from cython cimport floating
from libc.string cimport memcpy


cdef extern from "_register_gemm.h" nogil:
    int GR_BLOCK
    void gr_matmul_f32(int B, int K, int N, const float* inp, size_t ld_in, size_t in_k_stride,
                       const float* w, size_t block_stride, size_t k_stride, float* out,
                       int ld_out, int accumulate)
    void gr_matmul_f64(int B, int K, int N, const double* inp, size_t ld_in,
                       size_t in_k_stride, const double* w, size_t block_stride,
                       size_t k_stride, double* out, int ld_out, int accumulate)


cdef inline void matmul_blocked(int B, int K, int N, const floating* inp, int ld_in,
                                const floating* w, size_t block_stride, size_t k_stride,
                                floating* out, int ld_out,
                                size_t in_k_stride=1, bint accumulate=False) noexcept nogil:
    """out (B x N) = inp (B x K; element (b, k) at inp[b * ld_in + k * in_k_stride]) @ W (out +=
    with ``accumulate``), W in gr_matmul's block layout (see _register_gemm.h); N a multiple of
    GR_BLOCK."""
    if floating is float:
        gr_matmul_f32(B, K, N, inp, ld_in, in_k_stride, w, block_stride, k_stride, out, ld_out,
                      accumulate)
    else:
        gr_matmul_f64(B, K, N, inp, ld_in, in_k_stride, w, block_stride, k_stride, out, ld_out,
                      accumulate)


# Reduction steps a packed block of the weight gradient covers: a 32-column block of X packed
# (256 x 32 floats, 32 KB) stays in L1 while the 8-row panels of dG^T (8 KB each) stream past it
# from L2.
cdef enum:
    GRAD_K_BLOCK = 256


cdef inline size_t weight_grad_panels_size(int M) noexcept nogil:
    """Values of the ``panels`` buffer weight_grad_blocked needs for M gradient rows: the 8-row
    panels of dG^T and one packed 32-column block of the other operand."""
    return <size_t> ((M + 7) // 8 * 8 + GR_BLOCK) * GRAD_K_BLOCK


cdef inline void weight_grad_blocked(int M, int N, int K, const floating* dgates, int ld_gates,
                                     const floating* rows, int ld_rows, floating* grad,
                                     floating* panels) noexcept nogil:
    """grad (M x N, row-major, ld N) = dgates^T rows: dgates (K x M, row stride ld_gates), rows
    (K x N, row stride ld_rows, N a multiple of GR_BLOCK). In blocks of GRAD_K_BLOCK reduction
    steps, both operands packed (BLAS's scheme, on our register kernel): the block's dgates
    columns into 8-row panels (panel p, step k, row i at panels[p * 8 * GRAD_K_BLOCK + k * 8 +
    i]), so the kernel reads its 8 rows' values for a step from one 32-byte run instead of 8
    values 4H apart; and each 32-column block of ``rows`` into GRAD_K_BLOCK x 32 contiguous
    values (32 KB) that stay in L1 while every panel streams past them (read in place, rows a
    power-of-two stride apart fell into a few L1 sets and came from L2). The first block writes
    grad, the others add to it. panels: weight_grad_panels_size(M) values."""
    cdef int k0, kc, k, p, i, r, c, n_panels = (M + 7) // 8
    cdef floating* panel
    cdef floating* column_block = panels + <size_t> n_panels * 8 * GRAD_K_BLOCK
    cdef const floating* source
    k0 = 0
    while k0 < K:
        kc = min(GRAD_K_BLOCK, K - k0)
        for p in range(n_panels):
            panel = panels + <size_t> p * 8 * GRAD_K_BLOCK
            for k in range(kc):
                source = dgates + <size_t> (k0 + k) * ld_gates + 8 * p
                for i in range(8):
                    r = 8 * p + i
                    panel[k * 8 + i] = source[i] if r < M else 0
        for c in range(0, N, 32):  # 32 == GR_BLOCK (range needs a constant step in C)
            for k in range(kc):
                memcpy(column_block + k * GR_BLOCK, rows + <size_t> (k0 + k) * ld_rows + c,
                       GR_BLOCK * sizeof(floating))
            for p in range(n_panels):
                matmul_blocked(min(8, M - 8 * p), kc, GR_BLOCK,
                               panels + <size_t> p * 8 * GRAD_K_BLOCK, 1, column_block,
                               GR_BLOCK, GR_BLOCK, grad + <size_t> 8 * p * N + c, N, 8, k0 > 0)
        k0 += kc


cdef inline void matmul_blocked_tall(int M, int K, int N, const floating* inp, int ld_in,
                                     const floating* w, size_t block_stride, size_t k_stride,
                                     floating* out, int ld_out) noexcept nogil:
    """matmul_blocked for many rows (the input projection, dX): in chunks of rows that fit in
    half of L2, so each chunk is read from memory once and W streams once per chunk, instead
    of all M rows being re-read for every 32-column block of W."""
    cdef int chunk = (1 << 19) // (K * <int> sizeof(floating)) // 8 * 8
    cdef int m0 = 0
    if chunk < 8:
        chunk = 8
    while m0 < M:
        matmul_blocked(min(chunk, M - m0), K, N, inp + <size_t> m0 * ld_in, ld_in, w,
                       block_stride, k_stride, out + <size_t> m0 * ld_out, ld_out)
        m0 += chunk
