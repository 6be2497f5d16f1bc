# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Embedding lookup on the CPU, float32/float64: forward gathers rows, backward accumulates
rows deterministically.

Every index is checked against [0, V) before any row is touched, so a bad index raises
IndexError instead of reading or writing outside ``weight``. The backward gives each OpenMP
thread a block of columns; a thread walks all indices in order for its columns, so every
gradient entry is summed in the order the indices appear, for any thread count, with no
atomics; ``scale_grad_by_freq`` divides each row's sum by its number of occurrences.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset

# Columns per backward work item: a cache line or more of each row.
cdef Py_ssize_t COLUMN_BLOCK = 64


cdef int _check_indices(const int64_t[::1] indices, Py_ssize_t num_weights) except -1:
    cdef Py_ssize_t k, bad = -1
    with nogil:
        for k in range(indices.shape[0]):
            if indices[k] < 0 or indices[k] >= num_weights:
                bad = k
                break
    if bad >= 0:
        raise IndexError(f"embedding: index {indices[bad]} at position {bad} is outside [0, {num_weights})")
    return 0


def embedding_forward(const floating[:, ::1] weight, const int64_t[::1] indices, floating[:, ::1] output,
                      int num_threads):
    """output (N, D) = weight (V, D)[indices (N,)]."""
    cdef Py_ssize_t count = indices.shape[0], dim = weight.shape[1], k
    if output.shape[0] != count or output.shape[1] != dim:
        raise ValueError(f"embedding_forward: output must be ({count}, {dim})")
    _check_indices(indices, weight.shape[0])
    if count == 0 or dim == 0:
        return
    with nogil:
        for k in prange(count, schedule="static", num_threads=num_threads):
            memcpy(&output[k, 0], &weight[indices[k], 0], dim * sizeof(floating))


def embedding_backward(const floating[:, ::1] grad_output, const int64_t[::1] indices, Py_ssize_t padding_idx,
                       bint scale_grad_by_freq, floating[:, ::1] grad_weight, int num_threads):
    """grad_weight (V, D): row v = sum of grad_output[k] over k with indices[k] == v, in order of k,
    divided by the number of such k when scale_grad_by_freq; the row padding_idx (if >= 0) stays 0."""
    cdef Py_ssize_t count = indices.shape[0], dim = grad_output.shape[1], rows = grad_weight.shape[0]
    cdef Py_ssize_t blocks = (dim + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    cdef Py_ssize_t block, k, j, v, first, last
    cdef floating* target
    cdef const floating* source
    cdef int64_t* occurrences = NULL
    cdef floating divisor
    if grad_output.shape[0] != count or grad_weight.shape[1] != dim:
        raise ValueError("embedding_backward: grad_output (N, D), indices (N,) and grad_weight (V, D) do not match")
    _check_indices(indices, rows)
    if rows == 0 or dim == 0:
        return
    if scale_grad_by_freq:
        occurrences = <int64_t*> calloc(rows, sizeof(int64_t))
        if occurrences == NULL:
            raise MemoryError(f"embedding_backward: no memory for {rows} occurrence counts")
    try:
        with nogil:
            if scale_grad_by_freq:
                for k in range(count):
                    occurrences[indices[k]] += 1
            memset(&grad_weight[0, 0], 0, rows * dim * sizeof(floating))
            for block in prange(blocks, schedule="static", num_threads=num_threads):
                first = block * COLUMN_BLOCK
                last = first + COLUMN_BLOCK
                if last > dim:
                    last = dim
                for k in range(count):
                    if indices[k] == padding_idx:
                        continue
                    target = &grad_weight[indices[k], 0]
                    source = &grad_output[k, 0]
                    for j in range(first, last):
                        target[j] = target[j] + source[j]
                if scale_grad_by_freq:
                    # Whole sums divided once (one rounding), as the Triton kernel does.
                    for v in range(rows):
                        if occurrences[v] > 1:
                            divisor = <floating> occurrences[v]
                            target = &grad_weight[v, 0]
                            for j in range(first, last):
                                target[j] = target[j] / divisor
    finally:
        free(occurrences)
