/* Ask Linux to back a large, freshly allocated buffer with 2 MiB transparent huge pages.
 *
 * Our big buffers (a recurrence's output and workspace, the backward's gate gradients: tens of
 * MB at batch 64) come from malloc, which hands blocks of 32 MiB and more (and often smaller
 * ones) straight from mmap: fresh memory, faulted in 4 KiB at a time on first touch. On this
 * project's machine (THP in "madvise" mode, the usual default) those faults took 23 ms of a
 * 170 ms LSTM forward at T=100, B=64, H=512 (78 MB touched); advised, the same call took 139 ms.
 * Only the 2 MiB-aligned interior of [p, p + bytes) is advised, so nothing outside the buffer
 * changes. Call it before the buffer is first written. GATEDRNN_HUGE_PAGES=0 in the environment
 * turns the advice off; elsewhere than Linux (or without MADV_HUGEPAGE) it does nothing. */
#ifndef GATEDRNN_HUGE_PAGES_H
#define GATEDRNN_HUGE_PAGES_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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
    const char* setting;
    if (p == NULL || bytes < GATEDRNN_HUGE_PAGE_MIN_BYTES)
        return 0;
    setting = getenv("GATEDRNN_HUGE_PAGES");
    if (setting != NULL && strcmp(setting, "0") == 0)
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
