# cython: language_level=3
"""LSTM recurrence on the CPU, forward and backward (BPTT), one layer and one direction.

Layout and semantics are those of docs/backend-contract.md (torch.nn.LSTM with a PackedSequence):
gate rows i, f, g, o; sequence b is valid at t < lengths[b]; past its length its outputs and
workspace entries are 0 and its state is frozen; ``reverse`` runs each sequence backwards within
its own length.

Parallel scheme (a "persistent" RNN): ONE OpenMP region for the whole call. Thread p owns a
contiguous slice of hidden units j0..j1 and, for them, all four gate rows. It packs its slices of
W_ih and W_hh once (W_hh's then stays in that core's L2 for the whole sequence), computes its
columns of the input projection for all steps, then at every step multiplies the full previous h
by its packed W_hh slice and does the fused gate math for its units. h is double-buffered, so
one barrier per step suffices: step s reads buffer s % 2 and writes buffer (s + 1) % 2.
Backward mirrors this: each thread computes the gate gradients of its units, one barrier, then
the part of dh_prev for its units (all gate gradients times its columns of W_hh). Weight
gradients are GEMMs over all steps afterwards, split by rows across the same threads. BLAS is
only called from inside the region, single-threaded (the caller limits OpenBLAS to one thread).

The products with W (input projection, per-step recurrence, dX, and the backward step up to
batch 32) use a register-blocked kernel on W packed once per call (``gr_matmul`` in
_register_gemm.h): BLAS re-packs W on every call, which at one step's size costs as much as
the product, and was slower than this kernel at every size measured here. The weight gradients
run on it too where I and H are whole 32-column blocks, both operands packed
(``weight_grad_blocked``), else BLAS. The inner kernels (that product; the fused gate math and
the per-step barrier, in the verbatim block below) are C with ``restrict`` pointers and GCC
vector extensions so that they vectorise: Cython cannot express either.
float32 uses a vectorisable exp (Cephes polynomial, ~1 ulp); float64 uses libm.
"""
cimport openmp
from cython cimport floating
from cython.parallel cimport parallel, threadid
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset, memcpy

import numpy as np

from _common cimport gemm, omp_barrier
from _register_gemm cimport (GR_BLOCK, matmul_blocked, matmul_blocked_tall, weight_grad_blocked,
                             weight_grad_panels_size, weight_grads_pair_blocked)


cdef extern from *:
    """
    #include <math.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sched.h>
    #include "_huge_pages.h"
    #include "_register_gemm.h"

    /* exp for float32, vectorisable (no libm call): Cephes expf. x = n ln2 + r, |r| <= ln2/2,
       exp(r) by a degree-7 polynomial, 2^n built in the exponent bits. The clamp keeps 2^n a
       normal float, so exp(-inf..-87.3) = 2^-126 * p (tiny) and never NaN/inf. */
    static inline float gr_exp_f32(float x)
    {
        const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
        float t, n, r, r2, p, scale;
        int bits;
        x = x < -87.3f ? -87.3f : x;
        x = x > 88.3f ? 88.3f : x;
        t = x * 1.44269504088896341f + magic;
        n = t - magic;
        r = x - n * 0.693359375f;
        r = r - n * -2.12194440e-4f;
        r2 = r * r;
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * r2 + r + 1.0f;
        bits = ((int)n + 127) << 23;
        memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
    static inline float gr_sigmoid_f32(float x) { return 1.0f / (1.0f + gr_exp_f32(-x)); }
    /* tanh = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); near 0 (where 1 - e cancels) an odd
       Taylor series, exact to float precision for |x| < 0.04. */
    static inline float gr_tanh_f32(float x)
    {
        float ax = fabsf(x);
        float e = gr_exp_f32(-2.0f * ax);
        float big = (1.0f - e) / (1.0f + e);
        float x2 = x * x;
        float small = x * (1.0f + x2 * (-0.333333333f + x2 * (0.133333333f + x2 * -0.053968254f)));
        big = x < 0.0f ? -big : big;
        return ax < 0.04f ? small : big;
    }
    static inline double gr_sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }
    static inline double gr_tanh_f64(double x) { return tanh(x); }

    /* Fused LSTM cell, forward, for n units of one batch row. ws: this row's workspace at the
       thread's first unit (activations and c written, stride H between blocks). xp and rec:
       W_ih x_t and W_hh h_prev for the n units, gate stride rs in both.
       The work is in a function whose every array is a separate restrict parameter: with one
       base pointer and offsets GCC cannot prove the gate blocks disjoint and keeps a scalar
       fallback it then takes. */
    #define GR_DEFINE_CELLS(T, SFX)                                                          \\
    static inline __attribute__((always_inline)) void gr_cell_forward_body_##SFX(int n,      \\
            const int store_ws,                                                              \\
            T* GR_RESTRICT wi, T* GR_RESTRICT wf, T* GR_RESTRICT wg, T* GR_RESTRICT wo,       \\
            T* GR_RESTRICT wc, const T* GR_RESTRICT xi, const T* GR_RESTRICT xf,             \\
            const T* GR_RESTRICT xg, const T* GR_RESTRICT xo,                                \\
            const T* GR_RESTRICT bi, const T* GR_RESTRICT bf,                                \\
            const T* GR_RESTRICT bg, const T* GR_RESTRICT bo, const T* GR_RESTRICT ri,       \\
            const T* GR_RESTRICT rf, const T* GR_RESTRICT rg, const T* GR_RESTRICT ro,       \\
            T* GR_RESTRICT c, T* GR_RESTRICT out, T* GR_RESTRICT h_next)                     \\
    {                                                                                        \\
        for (int j = 0; j < n; j++) {                                                        \\
            T i = gr_sigmoid_##SFX(xi[j] + bi[j] + ri[j]);                                   \\
            T f = gr_sigmoid_##SFX(xf[j] + bf[j] + rf[j]);                                   \\
            T g = gr_tanh_##SFX(xg[j] + bg[j] + rg[j]);                                      \\
            T o = gr_sigmoid_##SFX(xo[j] + bo[j] + ro[j]);                                   \\
            T c_new = f * c[j] + i * g;                                                      \\
            T h = o * gr_tanh_##SFX(c_new);                                                  \\
            if (store_ws) {                                                                  \\
                wi[j] = i; wf[j] = f; wg[j] = g; wo[j] = o; wc[j] = c_new;                   \\
            }                                                                                \\
            c[j] = c_new; out[j] = h; h_next[j] = h;                                         \\
        }                                                                                    \\
    }                                                                                        \\
    __attribute__((noinline))                                                                \\
    static void gr_cell_forward_impl_##SFX(int n,                                            \\
            T* wi, T* wf, T* wg, T* wo, T* wc, const T* xi, const T* xf, const T* xg,         \\
            const T* xo, const T* bi, const T* bf, const T* bg, const T* bo, const T* ri,     \\
            const T* rf, const T* rg, const T* ro, T* c, T* out, T* h_next)                  \\
    {                                                                                        \\
        gr_cell_forward_body_##SFX(n, 1, wi, wf, wg, wo, wc, xi, xf, xg, xo, bi, bf, bg, bo, \\
                                   ri, rf, rg, ro, c, out, h_next);                          \\
    }                                                                                        \\
    /* The same without the workspace, for a forward no backward follows (inference): it     \\
       saves writing 5 H values a row (65 MB a call at T=100, B=64, H=512). */                \\
    __attribute__((noinline))                                                                \\
    static void gr_cell_infer_impl_##SFX(int n, const T* xi, const T* xf, const T* xg,        \\
            const T* xo, const T* bi, const T* bf, const T* bg, const T* bo, const T* ri,     \\
            const T* rf, const T* rg, const T* ro, T* c, T* out, T* h_next)                  \\
    {                                                                                        \\
        gr_cell_forward_body_##SFX(n, 0, NULL, NULL, NULL, NULL, NULL, xi, xf, xg, xo, bi,   \\
                                   bf, bg, bo, ri, rf, rg, ro, c, out, h_next);              \\
    }                                                                                        \\
    /* ws NULL: no workspace (inference). */                                                 \\
    static void gr_lstm_cell_forward_##SFX(int n, int H, T* ws, const T* xp, const T* bias,  \\
            const T* rec, int rs, T* c, T* out, T* h_next)                                   \\
    {                                                                                        \\
        if (ws == NULL)                                                                      \\
            gr_cell_infer_impl_##SFX(n, xp, xp + rs, xp + 2 * rs, xp + 3 * rs,                \\
                bias, bias + H, bias + 2 * H, bias + 3 * H, rec, rec + rs, rec + 2 * rs,      \\
                rec + 3 * rs, c, out, h_next);                                               \\
        else                                                                                 \\
            gr_cell_forward_impl_##SFX(n, ws, ws + H, ws + 2 * H, ws + 3 * H, ws + 4 * H,     \\
                xp, xp + rs, xp + 2 * rs, xp + 3 * rs,                                       \\
                bias, bias + H, bias + 2 * H, bias + 3 * H, rec, rec + rs, rec + 2 * rs,      \\
                rec + 3 * rs, c, out, h_next);                                               \\
    }                                                                                        \\
    /* Backward of the cell for n units of one row: gate pre-activation gradients into       \\
       dgates and dgates_step (stride H between gate blocks in both), dc updated in place    \\
       (dc_t on entry, dc_{t-1} on exit). */                                                 \\
    __attribute__((noinline))                                                                \\
    static void gr_cell_backward_impl_##SFX(int n,                                           \\
            const T* GR_RESTRICT wi, const T* GR_RESTRICT wf, const T* GR_RESTRICT wg,       \\
            const T* GR_RESTRICT wo, const T* GR_RESTRICT wc, const T* GR_RESTRICT c_prev,   \\
            const T* GR_RESTRICT grad_out, const T* GR_RESTRICT dh_next, T* GR_RESTRICT dc,  \\
            T* GR_RESTRICT di_out, T* GR_RESTRICT df_out, T* GR_RESTRICT dg_out,             \\
            T* GR_RESTRICT do_out, T* GR_RESTRICT di_step, T* GR_RESTRICT df_step,           \\
            T* GR_RESTRICT dg_step, T* GR_RESTRICT do_step)                                  \\
    {                                                                                        \\
        for (int j = 0; j < n; j++) {                                                        \\
            T i = wi[j], f = wf[j], g = wg[j], o = wo[j];                                    \\
            T tc = gr_tanh_##SFX(wc[j]);                                                     \\
            T dh = grad_out[j] + dh_next[j];                                                 \\
            T dcv = dc[j] + dh * o * ((T)1 - tc * tc);                                       \\
            T di = dcv * g * i * ((T)1 - i);                                                 \\
            T df = dcv * c_prev[j] * f * ((T)1 - f);                                         \\
            T dg = dcv * i * ((T)1 - g * g);                                                 \\
            T dov = dh * tc * o * ((T)1 - o);                                                \\
            dc[j] = dcv * f;                                                                 \\
            di_out[j] = di; df_out[j] = df; dg_out[j] = dg; do_out[j] = dov;                 \\
            di_step[j] = di; df_step[j] = df; dg_step[j] = dg; do_step[j] = dov;             \\
        }                                                                                    \\
    }                                                                                        \\
    static void gr_lstm_cell_backward_##SFX(int n, int H, const T* ws, const T* c_prev,      \\
            const T* grad_out, const T* dh_next, T* dc, T* dgates, T* dgates_step)           \\
    {                                                                                        \\
        gr_cell_backward_impl_##SFX(n, ws, ws + H, ws + 2 * H, ws + 3 * H, ws + 4 * H,        \\
            c_prev, grad_out, dh_next, dc, dgates, dgates + H, dgates + 2 * H, dgates + 3 * H, \\
            dgates_step, dgates_step + H, dgates_step + 2 * H, dgates_step + 3 * H);          \\
    }
    GR_DEFINE_CELLS(float, f32)
    GR_DEFINE_CELLS(double, f64)


    /* A spinning barrier for the per-step synchronisation (cheaper than libgomp's, which
       matters at 100s of steps of a few microseconds). count and generation live on separate
       cache lines; a waiter yields the core after a while so an oversubscribed machine still
       makes progress. Without GCC atomics it falls back to the OpenMP barrier. */
    typedef struct { int count; char pad0[60]; int generation; char pad1[60]; } gr_barrier_t;
    static void gr_barrier_wait(gr_barrier_t* barrier, int n_threads)
    {
    #if defined(__GNUC__) || defined(__clang__)
        int generation = __atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&barrier->count, 1, __ATOMIC_ACQ_REL) == n_threads) {
            __atomic_store_n(&barrier->count, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&barrier->generation, generation + 1, __ATOMIC_RELEASE);
        } else {
            long spins = 0;
            while (__atomic_load_n(&barrier->generation, __ATOMIC_ACQUIRE) == generation) {
                if (++spins > 20000) sched_yield();
    #if defined(__x86_64__) || defined(__i386__)
                else __builtin_ia32_pause();
    #endif
            }
        }
    #else
        (void)barrier; (void)n_threads;
        _Pragma("omp barrier")
    #endif
    }

    /* dst[k * dst_stride + l] = src[l][k] for a 16 x 16 float tile: the inner step of packing
       W (a transpose), in registers where AVX-512 is there (16 loads, 64 shuffles, 16 stores
       instead of 256 scalar stores). */
    #if defined(__AVX512F__)
    #include <immintrin.h>
    #define GR_HAVE_TILE_TRANSPOSE 1
    static void gr_transpose16_f32(const float* const* src, float* dst, size_t dst_stride)
    {
        __m512 r[16], t[16];
        for (int l = 0; l < 16; l++) r[l] = _mm512_loadu_ps(src[l]);
        for (int l = 0; l < 16; l += 2) {
            t[l] = _mm512_unpacklo_ps(r[l], r[l + 1]);
            t[l + 1] = _mm512_unpackhi_ps(r[l], r[l + 1]);
        }
        for (int l = 0; l < 16; l += 4) {
            r[l] = _mm512_shuffle_ps(t[l], t[l + 2], 0x44);
            r[l + 1] = _mm512_shuffle_ps(t[l], t[l + 2], 0xEE);
            r[l + 2] = _mm512_shuffle_ps(t[l + 1], t[l + 3], 0x44);
            r[l + 3] = _mm512_shuffle_ps(t[l + 1], t[l + 3], 0xEE);
        }
        for (int l = 0; l < 16; l += 8)
            for (int m = 0; m < 4; m++) {
                t[l + m] = _mm512_shuffle_f32x4(r[l + m], r[l + 4 + m], 0x88);
                t[l + 4 + m] = _mm512_shuffle_f32x4(r[l + m], r[l + 4 + m], 0xDD);
            }
        for (int m = 0; m < 8; m++) {
            _mm512_storeu_ps(dst + m * dst_stride, _mm512_shuffle_f32x4(t[m], t[8 + m], 0x88));
            _mm512_storeu_ps(dst + (m + 8) * dst_stride,
                             _mm512_shuffle_f32x4(t[m], t[8 + m], 0xDD));
        }
    }
    #else
    #define GR_HAVE_TILE_TRANSPOSE 0
    static void gr_transpose16_f32(const float* const* src, float* dst, size_t dst_stride)
    {
        for (int k = 0; k < 16; k++)
            for (int l = 0; l < 16; l++) dst[k * dst_stride + l] = src[l][k];
    }
    #endif

    static void* gr_alloc(size_t bytes)
    {
        /* 64-byte aligned (one cache line, one AVX-512 vector); size rounded up as
           aligned_alloc requires, and never 0. Large buffers (the input projection: tens of
           MB at batch 64) are 2 MiB aligned and asked to use huge pages, which saves most of
           the page faults of touching fresh memory on every call. */
        size_t size = (bytes + 63) / 64 * 64;
    #if defined(_MSC_VER)
        return _aligned_malloc(size ? size : 64, 64);
    #else
        const size_t huge = (size_t)2 << 20;
        if (size >= GATEDRNN_HUGE_PAGE_MIN_BYTES) {
            size_t rounded = (size + huge - 1) / huge * huge;
            void* p = aligned_alloc(huge, rounded);
            gatedrnn_advise_huge_pages(p, rounded);
            return p;
        }
        return aligned_alloc(64, size ? size : 64);
    #endif
    }
    static void gr_free(void* p)
    {
    #if defined(_MSC_VER)
        _aligned_free(p);
    #else
        free(p);
    #endif
    }
    """
    bint GR_HAVE_TILE_TRANSPOSE
    void gr_transpose16_f32(const float* const* src, float* dst, size_t dst_stride) nogil
    void* gr_alloc(size_t bytes) nogil
    void gr_free(void* p) nogil
    void gr_lstm_cell_forward_f32(int n, int H, float* ws, const float* xp, const float* bias,
                                  const float* rec, int rs, float* c, float* out,
                                  float* h_next) nogil
    void gr_lstm_cell_forward_f64(int n, int H, double* ws, const double* xp,
                                  const double* bias, const double* rec, int rs, double* c,
                                  double* out, double* h_next) nogil
    void gr_lstm_cell_backward_f32(int n, int H, const float* ws, const float* c_prev,
                                   const float* grad_out, const float* dh_next, float* dc,
                                   float* dgates, float* dgates_step) nogil
    void gr_lstm_cell_backward_f64(int n, int H, const double* ws, const double* c_prev,
                                   const double* grad_out, const double* dh_next, double* dc,
                                   double* dgates, double* dgates_step) nogil
    ctypedef struct gr_barrier_t:
        int count
        int generation
    void gr_barrier_wait(gr_barrier_t* barrier, int n_threads) nogil


# In the backward, batches up to this size use the register-blocked kernel for the per-step
# product dgates_step @ W_hh[:, slice], larger ones BLAS. The blocked kernel measured faster at
# every batch tried (1 to 64), so by default it is always used; the BLAS path stays reachable
# through _set_small_batch_max for tests and benchmarks.
cdef int small_batch_max = 1 << 30


cdef bint blocked_weight_grads = True  # weight gradients on the register kernel where they can


def _set_blocked_weight_grads(bint enabled):
    """True (the default): weight gradients by weight_grad_blocked where I or H allow; False: BLAS."""
    global blocked_weight_grads
    blocked_weight_grads = enabled


def _set_small_batch_max(int value):
    """Set the largest batch whose backward step uses the blocked kernel (tests, benchmarks:
    0 sends every batch to BLAS)."""
    global small_batch_max
    small_batch_max = value


cdef inline int round_up(int value, int multiple) noexcept nogil:
    return (value + multiple - 1) // multiple * multiple


cdef inline int slice_start(int part, int parts, int size) noexcept nogil:
    """First index of part `part` of `parts` near-equal slices of range(size), cut at multiples
    of 16 (one AVX-512 float32 vector) so the slices' inner loops start aligned."""
    cdef int start
    if part >= parts:
        return size
    start = ((part * size) // parts + 8) // 16 * 16
    return start if start < size else size


cdef inline void pack_blocked(int K, int n_cols, floating* packed, const floating* rows,
                              int row_stride, int rows_per_gate, int gate_stride,
                              int n_valid) noexcept nogil:
    """Pack the K x n_cols matrix whose column c is the row rows + (c // rows_per_gate) *
    gate_stride + (c % rows_per_gate) (row stride row_stride) of a row-major source, into the
    32-column-block layout of gr_matmul; columns >= n_valid are zero. Writes sequentially and
    reads 32 rows in step, so the copy streams."""
    cdef size_t source[32]
    cdef const float* tile_rows[16]
    cdef int c0, c, k, l, half
    cdef floating* dest = packed
    for c0 in range(0, n_cols, 32):  # 32 == GR_BLOCK
        for l in range(GR_BLOCK):
            c = c0 + l
            source[l] = (<size_t> (c // rows_per_gate) * gate_stride + c % rows_per_gate) \
                * row_stride if c < n_valid else 0
        k = 0
        if floating is float:
            if GR_HAVE_TILE_TRANSPOSE and c0 + GR_BLOCK <= n_valid:
                # whole blocks: 16 x 16 tiles transposed in registers
                while k + 16 <= K:
                    for half in range(2):
                        for l in range(16):
                            tile_rows[l] = rows + source[16 * half + l] + k
                        gr_transpose16_f32(tile_rows, dest + 16 * half, GR_BLOCK)
                    dest += 16 * GR_BLOCK
                    k += 16
        while k < K:
            for l in range(GR_BLOCK):
                dest[l] = rows[source[l] + k] if c0 + l < n_valid else 0
            dest += GR_BLOCK
            k += 1


cdef inline void zero_units(floating* row, int H, int n_blocks, int j0, int nu) noexcept nogil:
    """Zero units j0..j0+nu of each of the n_blocks blocks (stride H) of one row."""
    cdef int q
    for q in range(n_blocks):
        memset(row + q * H + j0, 0, nu * sizeof(floating))


cdef int lstm_forward_worker(
        int T, int B, int I, int H,
        const floating* x, const floating* h0, const floating* c0,
        const floating* w_ih, const floating* w_hh, const floating* bias,
        const int64_t* lengths, int max_length, bint reverse,
        floating* output, floating* h_n, floating* c_n, floating* workspace,
        floating* h_buffers, gr_barrier_t* barrier, int* failed) noexcept nogil:
    """The work of one thread of the forward region (see the module docstring)."""
    cdef int tid = threadid()
    cdef int n_threads = openmp.omp_get_num_threads()
    cdef int j0 = slice_start(tid, n_threads, H)
    cdef int nu = slice_start(tid + 1, n_threads, H) - j0
    # Column q * nu + u of this slice's packed weights, of the input projection x_proj
    # (T * B, n_cols) and of rec (B, n_cols) = W_hh h_prev is gate row q * H + j0 + u.
    cdef int n_cols = round_up(4 * nu, GR_BLOCK)
    cdef int W = 5 * H
    cdef int s, b, t, q, length
    cdef floating* w_packed = <floating*> gr_alloc(<size_t> H * n_cols * sizeof(floating))
    cdef floating* w_ih_packed = <floating*> gr_alloc(<size_t> I * n_cols * sizeof(floating))
    cdef floating* x_proj = <floating*> gr_alloc(<size_t> T * B * n_cols * sizeof(floating))
    cdef floating* rec = <floating*> gr_alloc(<size_t> B * n_cols * sizeof(floating))
    cdef const floating* h_prev
    cdef floating* h_next
    cdef floating* row

    if w_packed == NULL or w_ih_packed == NULL or x_proj == NULL or rec == NULL:
        failed[0] = 1
    omp_barrier()  # every thread sees every allocation failure, so all leave together
    if failed[0]:
        gr_free(w_packed)
        gr_free(w_ih_packed)
        gr_free(x_proj)
        gr_free(rec)
        return -1

    if nu > 0:
        pack_blocked(H, n_cols, w_packed, w_hh + <size_t> j0 * H, H, nu, H, 4 * nu)
        pack_blocked(I, n_cols, w_ih_packed, w_ih + <size_t> j0 * I, I, nu, H, 4 * nu)

    # Input projection of every step for this slice's gate columns (bias is added in the
    # cell), one product over all T * B rows with the same kernel as the steps.
    if nu > 0:
        matmul_blocked_tall(T * B, I, n_cols, x, I, w_ih_packed, <size_t> I * GR_BLOCK,
                            GR_BLOCK, x_proj, n_cols)
        for b in range(B):
            memcpy(c_n + <size_t> b * H + j0, c0 + <size_t> b * H + j0, nu * sizeof(floating))

    for s in range(max_length):
        h_prev = h0 if s == 0 else h_buffers + <size_t> (s % 2) * B * H
        h_next = h_buffers + <size_t> ((s + 1) % 2) * B * H
        if nu > 0:
            matmul_blocked(B, H, n_cols, h_prev, H, w_packed, <size_t> H * GR_BLOCK,
                           GR_BLOCK, rec, n_cols)
            for b in range(B):
                length = lengths[b]
                if s < length:
                    t = length - 1 - s if reverse else s
                    row = workspace + (<size_t> t * B + b) * W + j0 if workspace != NULL else NULL
                    if floating is float:
                        gr_lstm_cell_forward_f32(
                            nu, H, row, x_proj + (<size_t> t * B + b) * n_cols, bias + j0,
                            rec + <size_t> b * n_cols, nu, c_n + <size_t> b * H + j0,
                            output + (<size_t> t * B + b) * H + j0, h_next + <size_t> b * H + j0)
                    else:
                        gr_lstm_cell_forward_f64(
                            nu, H, row, x_proj + (<size_t> t * B + b) * n_cols, bias + j0,
                            rec + <size_t> b * n_cols, nu, c_n + <size_t> b * H + j0,
                            output + (<size_t> t * B + b) * H + j0, h_next + <size_t> b * H + j0)
                else:
                    # Finished: frozen state, and time index s (>= length) is past its end in
                    # either direction, so this is where its zero rows get written.
                    memcpy(h_next + <size_t> b * H + j0, h_prev + <size_t> b * H + j0,
                           nu * sizeof(floating))
                    if workspace != NULL:
                        zero_units(workspace + (<size_t> s * B + b) * W, H, 5, j0, nu)
                    zero_units(output + (<size_t> s * B + b) * H, H, 1, j0, nu)
        gr_barrier_wait(barrier, n_threads)  # h_next complete before anyone reads it as h_prev

    if nu > 0:
        for s in range(max_length, T):
            for b in range(B):
                if workspace != NULL:
                    zero_units(workspace + (<size_t> s * B + b) * W, H, 5, j0, nu)
                zero_units(output + (<size_t> s * B + b) * H, H, 1, j0, nu)
        for b in range(B):
            memcpy(h_n + <size_t> b * H + j0,
                   (h0 if max_length == 0 else h_buffers + <size_t> (max_length % 2) * B * H)
                   + <size_t> b * H + j0, nu * sizeof(floating))
    gr_free(w_packed)
    gr_free(w_ih_packed)
    gr_free(x_proj)
    gr_free(rec)
    return 0


cdef int lstm_backward_worker(
        int T, int B, int I, int H,
        const floating* grad_output, const floating* grad_h_n, const floating* grad_c_n,
        const floating* x, const floating* h0, const floating* c0,
        const floating* w_ih, const floating* w_hh,
        const int64_t* lengths, int max_length, bint reverse,
        const floating* output, const floating* workspace,
        floating* grad_x, floating* grad_h0, floating* grad_c0,
        floating* grad_w_ih, floating* grad_w_hh, floating* grad_bias,
        floating* dgates, floating* dgates_step, floating* dc, const floating** prev_rows,
        gr_barrier_t* barrier, int* failed) noexcept nogil:
    """The work of one thread of the backward region (see the module docstring).

    dgates (T, B, 4H): gate pre-activation gradients of every step, zero past a length.
    dgates_step (2, B, 4H): the same for the current step, one row per batch entry (zero for
    finished sequences), double-buffered like h in the forward. dc (B, H): running dL/dc.
    prev_rows (T * B): h_{t-1}'s row for step (t, b) (see previous_state_rows), or NULL when the
    weight gradients do not take them.
    """
    cdef int tid = threadid()
    cdef int n_threads = openmp.omp_get_num_threads()
    cdef int j0 = slice_start(tid, n_threads, H)
    cdef int nu = slice_start(tid + 1, n_threads, H) - j0
    cdef int G = 4 * H
    cdef int W = 5 * H
    # dh_rec (B, n_cols) = dgates_step @ W_hh[:, j0:j1]: columns j0..j1 of W_hh are read in
    # place by the blocked kernel when the slice is whole 32-column blocks, else copied
    # (zero-padded) into w_packed; BLAS reads W_hh in place.
    cdef int n_cols = round_up(nu, GR_BLOCK)
    cdef bint use_blocked = B <= small_batch_max
    cdef bint in_place = nu % GR_BLOCK == 0
    cdef int s, b, t, t_prev, c, r, length, r0, r1, m0, m1
    cdef floating* w_packed = NULL
    cdef const floating* w_step = w_hh + j0
    cdef size_t block_stride = GR_BLOCK
    cdef size_t k_stride = H
    cdef floating* dh_rec = <floating*> gr_alloc(<size_t> B * n_cols * sizeof(floating))
    cdef floating* step_rows
    cdef const floating* row
    cdef const floating* c_prev
    cdef const floating* dh_next
    cdef size_t n_rows = <size_t> T * B
    # The weight gradients on the register kernel (weight_grad_blocked) where the product's
    # columns are whole 32-column blocks; its packed panels of this thread's dG columns.
    cdef int own_rows = slice_start(tid + 1, n_threads, G) - slice_start(tid, n_threads, G)
    cdef floating* grad_panels = NULL
    cdef bint blocked_grads = (blocked_weight_grads and own_rows > 0
                               and (I % GR_BLOCK == 0 or H % GR_BLOCK == 0))

    if use_blocked and not in_place:
        w_packed = <floating*> gr_alloc(<size_t> G * n_cols * sizeof(floating))
    if blocked_grads:
        grad_panels = <floating*> gr_alloc(weight_grad_panels_size(own_rows) * sizeof(floating))
    if (dh_rec == NULL or (use_blocked and not in_place and w_packed == NULL)
            or (blocked_grads and grad_panels == NULL)):
        failed[0] = 1
    omp_barrier()
    if failed[0]:
        gr_free(w_packed)
        gr_free(dh_rec)
        gr_free(grad_panels)
        return -1

    if use_blocked and not in_place:
        for c in range(0, n_cols, 32):  # 32 == GR_BLOCK
            for r in range(G):
                for t in range(GR_BLOCK):
                    w_packed[(<size_t> c * G) + <size_t> r * GR_BLOCK + t] = \
                        w_hh[<size_t> r * H + j0 + c + t] if c + t < nu else 0
        w_step = w_packed
        block_stride = <size_t> G * GR_BLOCK
        k_stride = GR_BLOCK
    if nu > 0:
        for b in range(B):
            memcpy(dc + <size_t> b * H + j0, grad_c_n + <size_t> b * H + j0,
                   nu * sizeof(floating))

    for s in range(max_length - 1, -1, -1):
        step_rows = dgates_step + <size_t> (s % 2) * B * G
        if nu > 0:
            for b in range(B):
                length = lengths[b]
                if s < length:
                    t = length - 1 - s if reverse else s
                    t_prev = t + 1 if reverse else t - 1
                    row = workspace + (<size_t> t * B + b) * W + j0
                    c_prev = (c0 + <size_t> b * H if s == 0
                              else workspace + (<size_t> t_prev * B + b) * W + 4 * H) + j0
                    # dL/dh_t from later steps: the recurrent product of step s + 1, or
                    # grad_h_n if this is the sequence's last step
                    dh_next = (dh_rec + <size_t> b * n_cols if s + 1 < length
                               else grad_h_n + <size_t> b * H + j0)
                    if floating is float:
                        gr_lstm_cell_backward_f32(
                            nu, H, row, c_prev, grad_output + (<size_t> t * B + b) * H + j0,
                            dh_next, dc + <size_t> b * H + j0,
                            dgates + (<size_t> t * B + b) * G + j0,
                            step_rows + <size_t> b * G + j0)
                    else:
                        gr_lstm_cell_backward_f64(
                            nu, H, row, c_prev, grad_output + (<size_t> t * B + b) * H + j0,
                            dh_next, dc + <size_t> b * H + j0,
                            dgates + (<size_t> t * B + b) * G + j0,
                            step_rows + <size_t> b * G + j0)
                else:
                    zero_units(step_rows + <size_t> b * G, H, 4, j0, nu)
                    zero_units(dgates + (<size_t> s * B + b) * G, H, 4, j0, nu)
        gr_barrier_wait(barrier, n_threads)  # step s's gate gradients before the product
        if nu > 0:
            if use_blocked:
                matmul_blocked(B, G, n_cols, step_rows, G, w_step, block_stride, k_stride,
                               dh_rec, n_cols)
            else:
                gemm(False, False, B, nu, G, <floating> 1, step_rows, G, w_hh + j0, H,
                     <floating> 0, dh_rec, n_cols)

    if nu > 0:
        for s in range(max_length, T):
            for b in range(B):
                zero_units(dgates + (<size_t> s * B + b) * G, H, 4, j0, nu)
        for b in range(B):
            if lengths[b] > 0:
                memcpy(grad_h0 + <size_t> b * H + j0, dh_rec + <size_t> b * n_cols,
                       nu * sizeof(floating))
            else:
                memcpy(grad_h0 + <size_t> b * H + j0, grad_h_n + <size_t> b * H + j0,
                       nu * sizeof(floating))
            memcpy(grad_c0 + <size_t> b * H + j0, dc + <size_t> b * H + j0,
                   nu * sizeof(floating))
    omp_barrier()  # dgates complete (every step, every unit) before the weight gradients

    # Weight gradients as products over all T * B rows, rows of 4H split across threads: on
    # the register kernel with both operands packed (weight_grad_blocked) where the columns
    # (I, H) are whole 32-column blocks, else BLAS. The backward alone, alternated with BLAS,
    # medians of 31-61: T=100, B=16, H=256 19.2 vs 20.0 ms, B=64, H=512 327 vs 339 ms (the
    # unpacked form, dG read in place, had been slower than BLAS at B=64). dX uses the blocked
    # kernel on W_ih in place when I is whole 32-column blocks. Where I and H both are, one
    # pass does dW_ih, dW_hh and the bias (weight_grads_pair_blocked): the backward alone,
    # alternated with the three-pass form in one process, 1-4% faster at B=16, 1-2% at B=64.
    r0 = slice_start(tid, n_threads, G)
    r1 = slice_start(tid + 1, n_threads, G)
    if r1 > r0 and grad_panels != NULL and prev_rows != NULL:
        # All three from one packing of dG's columns a block of steps (dW_ih, dW_hh against
        # the previous states row by row, h0 included, and the bias sums): dG read once
        # instead of three times.
        weight_grads_pair_blocked(r1 - r0, <int> n_rows, dgates + r0, G, x, I, I,
                                  grad_w_ih + <size_t> r0 * I, prev_rows, H,
                                  grad_w_hh + <size_t> r0 * H, grad_bias + r0, grad_panels)
    elif r1 > r0:
        # dW_ih = dG^T X
        if grad_panels != NULL and I % GR_BLOCK == 0:
            weight_grad_blocked(r1 - r0, I, <int> n_rows, dgates + r0, G, x, I,
                                grad_w_ih + <size_t> r0 * I, grad_panels)
        else:
            gemm(True, False, r1 - r0, I, <int> n_rows, <floating> 1, dgates + r0, G, x, I,
                 <floating> 0, grad_w_ih + <size_t> r0 * I, I)
        # dW_hh = dG^T H_prev. Steps after a sequence's first have h_prev = the output at the
        # previous time index, t - 1 (forward) or t + 1 (reverse); where that index is past the
        # length the output is zero, so one shifted whole-array product is exact. The first
        # step of each sequence has h_prev = h0: its gate rows are dgates_step[0] (zero rows for
        # empty sequences), added after.
        if T > 1 and grad_panels != NULL and H % GR_BLOCK == 0:
            weight_grad_blocked(r1 - r0, H, (T - 1) * B,
                                dgates + (0 if reverse else <size_t> B * G) + r0, G,
                                output + (<size_t> B * H if reverse else 0), H,
                                grad_w_hh + <size_t> r0 * H, grad_panels)
        elif T > 1:
            gemm(True, False, r1 - r0, H, (T - 1) * B, <floating> 1,
                 dgates + (0 if reverse else <size_t> B * G) + r0, G,
                 output + (<size_t> B * H if reverse else 0), H, <floating> 0,
                 grad_w_hh + <size_t> r0 * H, H)
        gemm(True, False, r1 - r0, H, B, <floating> 1, dgates_step + r0, G, h0, H,
             <floating> (1 if T > 1 else 0), grad_w_hh + <size_t> r0 * H, H)
        # dbias = column sums of dG
        memset(grad_bias + r0, 0, (r1 - r0) * sizeof(floating))
        for m0 in range(<int> n_rows):
            row = dgates + <size_t> m0 * G
            for c in range(r0, r1):
                grad_bias[c] += row[c]
    # dX = dG W_ih, rows of T * B split across threads
    m0 = slice_start(tid, n_threads, <int> n_rows)
    m1 = slice_start(tid + 1, n_threads, <int> n_rows)
    if m1 > m0:
        if I % GR_BLOCK == 0:
            matmul_blocked_tall(m1 - m0, G, I, dgates + <size_t> m0 * G, G, w_ih, GR_BLOCK, I,
                                grad_x + <size_t> m0 * I, I)
        else:
            gemm(False, False, m1 - m0, I, G, <floating> 1, dgates + <size_t> m0 * G, G, w_ih,
                 I, <floating> 0, grad_x + <size_t> m0 * I, I)
    gr_free(w_packed)
    gr_free(dh_rec)
    gr_free(grad_panels)
    return 0


cdef void previous_state_rows(int T, int B, int H, const floating* h0, const floating* output,
                              const int64_t* lengths, bint reverse,
                              const floating** rows) noexcept nogil:
    """rows[t * B + b] = the state h_{t-1} that step (t, b) of the recurrence read: h0's row b at
    the sequence's first step (t = 0 forward, t = length - 1 reverse), else the output row of
    the step before (t - 1 forward, t + 1 reverse), NULL (zeros) past the length, where the
    gate gradients are zero anyway."""
    cdef int t, b, length
    for t in range(T):
        for b in range(B):
            length = <int> lengths[b]
            if t >= length:
                rows[<size_t> t * B + b] = NULL
            elif t == (length - 1 if reverse else 0):
                rows[<size_t> t * B + b] = h0 + <size_t> b * H
            else:
                rows[<size_t> t * B + b] = output + (<size_t> (t + 1 if reverse else t - 1) * B + b) * H


cdef int max_length_of(const int64_t[::1] lengths, int T) noexcept nogil:
    cdef int b, longest = 0
    for b in range(lengths.shape[0]):
        if lengths[b] > longest:
            longest = <int> lengths[b]
    return longest if longest < T else T


def lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                 const floating[:, ::1] c0, const floating[:, ::1] w_ih,
                 const floating[:, ::1] w_hh, const floating[::1] bias,
                 const int64_t[::1] lengths, bint reverse,
                 floating[:, :, ::1] output, floating[:, ::1] h_n, floating[:, ::1] c_n,
                 floating[:, :, ::1] workspace, int num_threads):
    """LSTM forward over a whole sequence, one layer, one direction (torch.nn.LSTM semantics).

    x (T, B, I); h0, c0 (B, H); w_ih (4H, I); w_hh (4H, H); bias (4H,) = b_ih + b_hh;
    lengths int64 (B,), 0 <= lengths[b] <= T; reverse: run each sequence backwards within its
    length. Writes output (T, B, H) (zero past a length), h_n, c_n (B, H) (state after each
    sequence's last step) and workspace (T, B, 5H) = [i, f, g, o, c] (zero past a length); a
    workspace with no elements (a forward no backward follows) is left out, not written.
    All floating arrays float32 or all float64, C-contiguous. num_threads: OpenMP threads.
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef int max_length = max_length_of(lengths, T)
    cdef int failed = 0
    cdef floating* workspace_rows = NULL
    if workspace.shape[0] * workspace.shape[1] * workspace.shape[2] > 0:
        workspace_rows = &workspace[0, 0, 0]
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, ::1] h_buffers = np.empty((2, B, H), dtype=dtype)
    cdef int[::1] barrier = np.zeros(64, dtype=np.intc)
    with nogil, parallel(num_threads=max(num_threads, 1)):
        lstm_forward_worker(T, B, I, H, &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0],
                            &w_hh[0, 0], &bias[0], &lengths[0], max_length, reverse,
                            &output[0, 0, 0], &h_n[0, 0], &c_n[0, 0], workspace_rows,
                            &h_buffers[0, 0, 0], <gr_barrier_t*> &barrier[0], &failed)
    if failed:
        raise MemoryError("lstm_forward: could not allocate the per-thread buffers")


def lstm_backward(const floating[:, :, ::1] grad_output, const floating[:, ::1] grad_h_n,
                  const floating[:, ::1] grad_c_n, const floating[:, :, ::1] x,
                  const floating[:, ::1] h0, const floating[:, ::1] c0,
                  const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                  const int64_t[::1] lengths, bint reverse,
                  const floating[:, :, ::1] output, const floating[:, :, ::1] workspace,
                  floating[:, :, ::1] grad_x, floating[:, ::1] grad_h0,
                  floating[:, ::1] grad_c0, floating[:, ::1] grad_w_ih,
                  floating[:, ::1] grad_w_hh, floating[::1] grad_bias, int num_threads):
    """LSTM backward (BPTT) of lstm_forward.

    grad_output (T, B, H), grad_h_n, grad_c_n (B, H): gradients of the loss w.r.t. the forward's
    outputs; x, h0, c0, w_ih, w_hh, lengths, reverse: the forward's inputs; output (T, B, H) and
    workspace (T, B, 5H): what the forward wrote. Writes grad_x (T, B, I) (zero past a length),
    grad_h0, grad_c0 (B, H), grad_w_ih (4H, I), grad_w_hh (4H, H) and grad_bias (4H,) (the
    gradient of b_ih and of b_hh alike). num_threads: OpenMP threads.
    """
    cdef int T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    cdef int max_length = max_length_of(lengths, T)
    cdef int failed = 0
    dtype = np.float32 if floating is float else np.float64
    cdef floating[:, :, ::1] dgates = np.empty((T, B, 4 * H), dtype=dtype)
    # zeros: if every length is 0 the loop never runs and dgates_step[0] stays the (zero)
    # first-step gradient used for dW_hh's h0 term
    cdef floating[:, :, ::1] dgates_step = np.zeros((2, B, 4 * H), dtype=dtype)
    cdef floating[:, ::1] dc = np.empty((B, H), dtype=dtype)
    cdef int[::1] barrier = np.zeros(64, dtype=np.intc)
    cdef const floating** prev_rows = NULL
    if blocked_weight_grads and I % GR_BLOCK == 0 and H % GR_BLOCK == 0 and T * B > 0:
        prev_rows = <const floating**> malloc(<size_t> T * B * sizeof(floating*))
        if prev_rows == NULL:
            raise MemoryError("lstm_backward: could not allocate the previous-state table")
        previous_state_rows(T, B, H, &h0[0, 0], &output[0, 0, 0], &lengths[0], reverse, prev_rows)
    with nogil, parallel(num_threads=max(num_threads, 1)):
        lstm_backward_worker(T, B, I, H, &grad_output[0, 0, 0], &grad_h_n[0, 0],
                             &grad_c_n[0, 0], &x[0, 0, 0], &h0[0, 0], &c0[0, 0], &w_ih[0, 0],
                             &w_hh[0, 0], &lengths[0], max_length, reverse,
                             &output[0, 0, 0], &workspace[0, 0, 0], &grad_x[0, 0, 0],
                             &grad_h0[0, 0], &grad_c0[0, 0], &grad_w_ih[0, 0],
                             &grad_w_hh[0, 0], &grad_bias[0], &dgates[0, 0, 0],
                             &dgates_step[0, 0, 0], &dc[0, 0], prev_rows,
                             <gr_barrier_t*> &barrier[0], &failed)
    free(prev_rows)
    if failed:
        raise MemoryError("lstm_backward: could not allocate the per-thread buffers")

