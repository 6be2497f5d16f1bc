/* Ask Linux to back a large, freshly allocated buffer with 2 MiB transparent huge pages.
 *
 * Fresh memory (what malloc serves from mmap: always from 32 MiB, often below) is faulted in
 * 4 KiB at a time on first touch. On this project's machine (THP in "madvise" mode, the usual
 * default) those faults took 23 ms of a 170 ms LSTM forward at T=100, B=64, H=512 (78 MB
 * touched); advised, the same call took 139 ms. Only the 2 MiB-aligned interior of
 * [p, p + bytes) is advised, so nothing outside the buffer changes; call it before the buffer
 * is first written. Callers: the LSTM's own buffers (gr_alloc, 2 MiB-aligned) and, through
 * gatedrnn._cpu.memory, the ops layer's large tensors (which also honours GATEDRNN_HUGE_PAGES;
 * this function reads no environment, as it runs inside OpenMP regions). NumPy advises its own
 * arrays of 4 MiB and more (NUMPY_MADVISE_HUGEPAGE), the extensions' scratch arrays included.
 * Elsewhere than Linux (or without MADV_HUGEPAGE) it does nothing. */
#ifndef GATEDRNN_HUGE_PAGES_H
#define GATEDRNN_HUGE_PAGES_H

#include <stddef.h>
#include <stdint.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Below this a buffer holds at most one aligned huge page: not worth a system call. */
#define GATEDRNN_HUGE_PAGE_MIN_BYTES ((size_t)4 << 20)

static inline int gatedrnn_advise_huge_pages(void* p, size_t bytes)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start, end;
    if (p == NULL || bytes < GATEDRNN_HUGE_PAGE_MIN_BYTES)
        return 0;
    start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    end = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (end <= start)
        return 0;
    return madvise((void*)start, end - start, MADV_HUGEPAGE) == 0;
#else
    (void)p;
    (void)bytes;
    return 0;
#endif
}

#endif
