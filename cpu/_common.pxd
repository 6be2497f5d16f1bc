# cython: language_level=3
"""Helpers shared by the CPU recurrences: row-major GEMM through scipy's BLAS, and a thread
barrier for persistent OpenMP regions. Everything here is inline and runs without the GIL."""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "_omp_barrier.h" nogil:
    void omp_barrier "gatedrnn_omp_barrier"()


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """Row-major C (m x n) = alpha * op(A) @ op(B) + beta * C.

    op(A) is m x k and op(B) is k x n. BLAS is column-major and a row-major matrix is its
    column-major transpose, so C^T = op(B)^T op(A)^T: we call BLAS with B first, then A.
    """
    cdef char transa = b'T' if trans_b else b'N'
    cdef char transb = b'T' if trans_a else b'N'
    if m <= 0 or n <= 0:
        return
    if floating is float:
        sgemm(&transa, &transb, &n, &m, &k, &alpha, <float*> b, &ldb,
              <float*> a, &lda, &beta, c, &ldc)
    else:
        dgemm(&transa, &transb, &n, &m, &k, &alpha, <double*> b, &ldb,
              <double*> a, &lda, &beta, c, &ldc)
