# cython: language_level=3
"""Helpers shared by the CPU extensions: row-major GEMM through scipy's BLAS, a thread barrier
for persistent OpenMP regions, and large scratch arrays backed by huge pages. Everything but
``empty_scratch`` is inline C and runs without the GIL."""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "_omp_barrier.h" nogil:
    void omp_barrier "gatedrnn_omp_barrier"()


cdef extern from "_huge_pages.h" nogil:
    size_t HUGE_PAGE_MIN_BYTES "GATEDRNN_HUGE_PAGE_MIN_BYTES"
    int advise_huge_pages "gatedrnn_advise_huge_pages"(void* p, size_t nbytes)


cdef inline object empty_scratch(shape, dtype):
    """``numpy.empty(shape, dtype)`` for a scratch array the kernel fills: when it is large, its
    fresh memory is advised to use huge pages before anything touches it (_huge_pages.h)."""
    import numpy
    array = numpy.empty(shape, dtype=dtype)
    cdef size_t nbytes = array.nbytes
    if nbytes >= HUGE_PAGE_MIN_BYTES:
        advise_huge_pages(<void*> <size_t> array.__array_interface__["data"][0], nbytes)
    return array


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
