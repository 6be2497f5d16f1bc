/* The float32 FMA peak of this machine's cores: what the CPU convolution table's GFLOP/s are
   measured against (perf/RESULTS.md).

   Each thread runs 12 independent chains of 16-lane fused multiply-adds (enough in flight to
   cover the FMA latency on Zen 4 and recent Intel cores), on registers only; the best of five
   runs on 1, then on all of the machine's threads, counting 2 FLOP per lane.

       gcc -O3 -march=native -fopenmp perf/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak

   (-O3 keeps the 12 accumulators in registers: at -O2 GCC kept them in memory and measured a
   third of the peak.) Needs AVX-512F. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define CHAINS 12

static double gflops(int threads, long steps) {
    double best = 1e30;
    for (int run = 0; run < 5; run++) {
        float sink = 0.0f;
        double start = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            __m512 chain[CHAINS];
            const __m512 scale = _mm512_set1_ps(0.999999f), shift = _mm512_set1_ps(1e-7f);
            for (int i = 0; i < CHAINS; i++)
                chain[i] = _mm512_set1_ps((float) i);
            for (long step = 0; step < steps; step++)
                for (int i = 0; i < CHAINS; i++)
                    chain[i] = _mm512_fmadd_ps(chain[i], scale, shift);
            for (int i = 1; i < CHAINS; i++)
                chain[0] = _mm512_add_ps(chain[0], chain[i]);
            sink += _mm512_reduce_add_ps(chain[0]);
        }
        double seconds = omp_get_wtime() - start;
        if (seconds < best)
            best = seconds;
        if (sink == 12345.0f)  /* keeps the chains' results live */
            printf(" ");
    }
    return threads * (double) steps * CHAINS * 16 * 2 / best / 1e9;
}

int main(void) {
    const long steps = 16000000;
    int all = omp_get_max_threads();
    printf("float32 FMA peak: 1 thread %.1f GFLOP/s", gflops(1, steps));
    if (all > 1)
        printf(", %d threads %.1f GFLOP/s", all, gflops(all, steps));
    printf("\n");
    return 0;
}
