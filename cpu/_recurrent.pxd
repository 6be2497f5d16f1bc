# cython: language_level=3
"""Pieces shared by the CPU recurrences (gru.pyx, rnn.pyx): the register-blocked panel product
of the per-step recurrent GEMM (C, in _recurrent_kernels.h, with the float32 exp / sigmoid /
tanh the cells' gate math uses), the packing of W_hh into its panels, and the split of the
hidden units across the threads of the persistent OpenMP region. Everything here is inline
and runs without the GIL."""
from cython cimport floating
from libc.string cimport memset


cdef extern from "_recurrent_kernels.h" nogil:
    const int NR_F "GATEDRNN_NR_F"
    const int NR_D "GATEDRNN_NR_D"
    void panel_gemm_f(int M, int N, int K, const float* A, int lda, const float* Bp,
                      float* C, int ldc, int accumulate)
    void panel_gemm_d(int M, int N, int K, const double* A, int lda, const double* Bp,
                      double* C, int ldc, int accumulate)


# ---------------------------------------------------------------------------------------------
# Packed recurrent product.

cdef inline Py_ssize_t _panel_width(const floating* like) noexcept nogil:
    """Columns per packed panel of W_hh (the register tile width of panel_gemm)."""
    return NR_F if floating is float else NR_D


cdef inline Py_ssize_t _panel_size(Py_ssize_t K, Py_ssize_t N, Py_ssize_t nr) noexcept nogil:
    """Elements of a K x N matrix packed as zero-padded panels of nr columns."""
    return (N + nr - 1) // nr * nr * K


cdef inline void _panel_gemm(Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, const floating* A,
                             Py_ssize_t lda, const floating* packed, floating* C,
                             Py_ssize_t ldc, bint accumulate) noexcept nogil:
    """C (M x N) = (C +) A (M x K) @ B, B packed by _pack_panels."""
    if floating is float:
        panel_gemm_f(<int> M, <int> N, <int> K, A, <int> lda, packed, C, <int> ldc, accumulate)
    else:
        panel_gemm_d(<int> M, <int> N, <int> K, A, <int> lda, packed, C, <int> ldc, accumulate)


cdef inline void _pack_panels(Py_ssize_t K, Py_ssize_t N, Py_ssize_t nr, const floating* src,
                              Py_ssize_t stride_k, Py_ssize_t stride_col,
                              Py_ssize_t gate_cols, Py_ssize_t gate_stride,
                              floating* dst) noexcept nogil:
    """Pack the K x N matrix B into panels: dst[(p * K + k) * nr + c] = B[k, p * nr + c], zero
    past N. Column col of B is unit col % gate_cols of gate col // gate_cols:
    B[k, col] = src[k * stride_k + (col // gate_cols) * gate_stride + (col % gate_cols) * stride_col].
    The loop order follows the contiguous direction of src (k when stride_k == 1).
    """
    cdef Py_ssize_t p, k, c, gate = 0, unit = 0, width
    cdef Py_ssize_t col_offset[64]      # source offset of each column of the panel (nr <= 64)
    cdef floating* panel
    for p in range((N + nr - 1) // nr):
        width = min(nr, N - p * nr)
        for c in range(width):
            col_offset[c] = gate * gate_stride + unit * stride_col
            unit += 1
            if unit == gate_cols:
                unit = 0
                gate += 1
        panel = dst + p * K * nr
        if stride_k == 1:
            for c in range(width):
                for k in range(K):
                    panel[k * nr + c] = src[col_offset[c] + k]
        else:
            for k in range(K):
                for c in range(width):
                    panel[k * nr + c] = src[k * stride_k + col_offset[c]]
        for k in range(K):
            for c in range(width, nr):
                panel[k * nr + c] = 0


# ---------------------------------------------------------------------------------------------
# Work split.

cdef inline void _unit_range(Py_ssize_t H, int tid, int nthreads, Py_ssize_t* j0,
                             Py_ssize_t* j1) noexcept nogil:
    """Hidden units [j0, j1) owned by thread tid: balanced, boundaries on multiples of 16 so
    each thread's slice starts on a vector (and, in float32, a cache line) boundary."""
    j0[0] = (H * tid // nthreads) // 16 * 16
    if tid == nthreads - 1:
        j1[0] = H
    else:
        j1[0] = (H * (tid + 1) // nthreads) // 16 * 16


cdef inline int _team_size(int num_threads, Py_ssize_t H) noexcept nogil:
    """Threads worth starting: each needs at least 16 hidden units, or the per-step barrier
    costs more than the work it splits."""
    cdef Py_ssize_t most = H // 16
    if most < 1:
        most = 1
    if num_threads < 1:
        num_threads = 1
    return <int> (num_threads if num_threads < most else most)


cdef inline Py_ssize_t _time_index(Py_ssize_t step, Py_ssize_t length,
                                   bint reverse) noexcept nogil:
    """Time index processed at `step` by a sequence of `length` (valid only if step < length):
    reverse runs each sequence backwards within its own length."""
    return length - 1 - step if reverse else step


cdef inline void _zero_if_empty(Py_ssize_t k, Py_ssize_t m, Py_ssize_t ld,
                                floating* c) noexcept nogil:
    """A GEMM over k = 0 terms must still write C = 0 (T == 1); do it here rather than rely
    on how a BLAS treats k == 0."""
    cdef Py_ssize_t i
    if k <= 0:
        for i in range(m):
            memset(c + i * ld, 0, ld * sizeof(floating))
