# cython: language_level=3
"""Memory advice for the large tensors the ops allocate on the CPU (outputs, workspaces,
gradients): the Python face of ``_huge_pages.h``, called by ``gatedrnn.ops._recurrence``."""

cdef extern from "_huge_pages.h" nogil:
    size_t HUGE_PAGE_MIN_BYTES "GATEDRNN_HUGE_PAGE_MIN_BYTES"
    int advise_huge_pages "gatedrnn_advise_huge_pages"(void* p, size_t nbytes)

MIN_BYTES = HUGE_PAGE_MIN_BYTES


def advise_huge_pages_at(size_t address, size_t nbytes):
    """Ask for huge pages under the 2 MiB-aligned interior of [address, address + nbytes): call it
    on a buffer nothing has written yet. True when the advice was given (Linux, nbytes at least
    MIN_BYTES); False where it does nothing."""
    return advise_huge_pages(<void*> address, nbytes) != 0
