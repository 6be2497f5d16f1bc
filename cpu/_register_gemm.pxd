# cython: language_level=3
"""The register-blocked product of _register_gemm.h for Cython callers: plain products
(``matmul_blocked``, ``matmul_blocked_tall``) and weight gradients dG^T X with both operands
packed (``weight_grad_blocked``). Inline, without the GIL."""
from cython cimport floating
from libc.string cimport memcpy, memset


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


cdef inline void _pack_panels(int M, int kc, const floating* dgates, int ld_gates, floating* panels,
                              floating* sums) noexcept nogil:
    """dgates' kc x M block into weight_grad_blocked's 8-row panels (rows past M zero); with
    ``sums`` (not NULL), each column's values also added to sums[column] in order of the steps."""
    cdef int p, k, i, r, n_panels = (M + 7) // 8
    cdef floating* panel
    cdef const floating* source
    for p in range(n_panels):
        panel = panels + <size_t> p * 8 * GRAD_K_BLOCK
        for k in range(kc):
            source = dgates + <size_t> k * ld_gates + 8 * p
            for i in range(8):
                r = 8 * p + i
                panel[k * 8 + i] = source[i] if r < M else 0
                if sums != NULL and r < M:
                    sums[r] += source[i]


cdef inline void _panels_times_block(int M, int kc, const floating* panels, const floating* column_block,
                                     floating* grad, int N, bint accumulate) noexcept nogil:
    """grad's 32 columns at ``grad`` (rows 8 at a time, row stride N) (+)= the panels' kc steps
    times the packed kc x 32 column block."""
    cdef int p
    for p in range((M + 7) // 8):
        matmul_blocked(min(8, M - 8 * p), kc, GR_BLOCK, panels + <size_t> p * 8 * GRAD_K_BLOCK, 1,
                       column_block, GR_BLOCK, GR_BLOCK, grad + <size_t> 8 * p * N, N, 8, accumulate)


cdef inline void _rows_times_panels(int M, int kc, const floating* panels, const floating* rows,
                                    int ld_rows, int N, floating* grad, floating* column_block,
                                    bint accumulate) noexcept nogil:
    """grad (M x N) (+)= the panels' kc steps times rows (kc x N, row stride ld_rows), one
    32-column block of rows at a time packed into column_block (kc x 32) first."""
    cdef int k, c
    for c in range(0, N, 32):  # 32 == GR_BLOCK (range needs a constant step in C)
        for k in range(kc):
            memcpy(column_block + k * GR_BLOCK, rows + <size_t> k * ld_rows + c, GR_BLOCK * sizeof(floating))
        _panels_times_block(M, kc, panels, column_block, grad + c, N, accumulate)


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
    cdef int k0, kc
    cdef floating* column_block = panels + <size_t> ((M + 7) // 8) * 8 * GRAD_K_BLOCK
    k0 = 0
    while k0 < K:
        kc = min(GRAD_K_BLOCK, K - k0)
        _pack_panels(M, kc, dgates + <size_t> k0 * ld_gates, ld_gates, panels, NULL)
        _rows_times_panels(M, kc, panels, rows + <size_t> k0 * ld_rows, ld_rows, N, grad, column_block, k0 > 0)
        k0 += kc


cdef inline void weight_grads_pair_blocked(int M, int K, const floating* dgates, int ld_gates,
                                           const floating* rows, int ld_rows, int N, floating* grad,
                                           const floating* const* prev_rows, int N_prev,
                                           floating* grad_prev, floating* sums,
                                           floating* panels) noexcept nogil:
    """weight_grad_blocked's two products of one dgates (K x M) at once, and its column sums:
    grad (M x N) = dgates^T rows (K x N, row stride ld_rows); grad_prev (M x N_prev) = dgates^T
    P, where step k's row of P is prev_rows[k] (N_prev values; NULL: zeros), so a recurrence's
    previous states (h0 at each sequence's first step, an output row elsewhere) need no
    shifted copy; sums (M,) = dgates' column sums, each in order of k. N and N_prev multiples
    of GR_BLOCK. Each block of GRAD_K_BLOCK steps packs dgates' panels once for all three
    (two separate weight_grad_blocked calls and a sum read dgates three times). panels:
    weight_grad_panels_size(M) values."""
    cdef int k0, kc, k, c
    cdef floating* column_block = panels + <size_t> ((M + 7) // 8) * 8 * GRAD_K_BLOCK
    cdef const floating* source
    memset(sums, 0, M * sizeof(floating))
    k0 = 0
    while k0 < K:
        kc = min(GRAD_K_BLOCK, K - k0)
        _pack_panels(M, kc, dgates + <size_t> k0 * ld_gates, ld_gates, panels, sums)
        _rows_times_panels(M, kc, panels, rows + <size_t> k0 * ld_rows, ld_rows, N, grad, column_block, k0 > 0)
        # the previous states' rows through their table (NULL: a zero row)
        for c in range(0, N_prev, 32):
            for k in range(kc):
                source = prev_rows[k0 + k]
                if source == NULL:
                    memset(column_block + k * GR_BLOCK, 0, GR_BLOCK * sizeof(floating))
                else:
                    memcpy(column_block + k * GR_BLOCK, source + c, GR_BLOCK * sizeof(floating))
            _panels_times_block(M, kc, panels, column_block, grad_prev + c, N_prev, k0 > 0)
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
