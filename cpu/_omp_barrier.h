/* A thread barrier callable from Cython code inside `with nogil, parallel():`.
 *
 * Cython has no syntax for `#pragma omp barrier`; an orphaned barrier binds to the innermost
 * enclosing parallel region, so calling this from every thread of the region synchronises
 * them (the persistent recurrences use one per time step). Every thread of the team must call
 * it the same number of times, or the region deadlocks.
 */
#ifndef GATEDRNN_OMP_BARRIER_H
#define GATEDRNN_OMP_BARRIER_H

static inline void gatedrnn_omp_barrier(void)
{
#pragma omp barrier
}

#endif
