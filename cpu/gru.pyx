# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""GRU recurrence (one layer, one direction) on the CPU: forward and explicit BPTT backward.

Both conventions, gate rows r, z, n:
  reset_after=True (torch/cuDNN):  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
  reset_after=False:               n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)
and h' = (1 - z) * n + z * h. Lengths (PackedSequence semantics) and reverse are handled
inside the time loop.

Parallel design: ONE OpenMP region for the whole call. Thread k owns a slice [j0, j1) of the
hidden units, i.e. the r, z and n rows of those units. It packs its slice of W_hh once into
register-tile panels (so it stays in its own L2 across steps), computes the input projection
of its units for all steps as BLAS GEMMs before the recurrence, and per step runs one
recurrent product (two for reset_after=False, where the n rows need r * h of *all* units
first) with the shared panel kernel plus the fused gate math of its units, then meets the
other threads at a barrier. The hidden state is double-buffered, so one barrier per step
suffices. Backward mirrors it: per step the gate grads of the thread's units, a barrier, and
its columns of dh_prev = dG @ W_hh; then dW_ih, dW_hh (rows of its units) and dX (rows of
T*B) as BLAS GEMMs over all steps; bias grads are summed in the gate kernels.
Every BLAS call is single-threaded (the caller limits OpenBLAS with threadpoolctl; without
that OpenBLAS starts its own threads inside this region); the parallelism is this region.
"""
import numpy as np

from cython cimport floating
from cython.parallel cimport parallel
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
cimport openmp

from _common cimport gemm, omp_barrier
from _register_gemm cimport GR_BLOCK, weight_grad_blocked, weight_grad_panels_size
from _recurrent cimport (_panel_width, _panel_size, _panel_gemm, _pack_panels, _unit_range,
                        _team_size, _time_index, _zero_if_empty)


cdef extern from * nogil:
    """
    #include "_recurrent_kernels.h"

    /* float64 keeps libm (exact, and it has no speed bar) */
    static inline double gatedrnn_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

    /* Fused gate math for one batch row and m hidden units, as C with restrict pointers so the
     * loops vectorise (Cython cannot say restrict, and gcc gives up on runtime alias checks
     * between this many arrays). Pointers into one workspace row at different gate offsets do
     * not overlap (offsets are H apart, m <= H). Instantiated for float (f) and double (d). */
    #define GATEDRNN_GRU_KERNELS(T, S, SIGMOID, TANH)                                            \\
    /* reset_after forward: ws_* hold the input projection on entry, r z n hn on exit */         \\
    static inline void gru_fwd_after_##S(int m, T *restrict ws_r, T *restrict ws_z,               \\
            T *restrict ws_n, T *restrict ws_hn, const T *restrict g_r, const T *restrict g_z,   \\
            const T *restrict g_n, const T *restrict c_r, const T *restrict c_z,                 \\
            const T *restrict b_in, const T *restrict b_hn, const T *restrict h_prev,            \\
            T *restrict out, T *restrict h_next)                                                 \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T r = SIGMOID(ws_r[j] + g_r[j] + c_r[j]);                                            \\
            T z = SIGMOID(ws_z[j] + g_z[j] + c_z[j]);                                            \\
            T hn = g_n[j] + b_hn[j];                                                             \\
            T n = TANH(ws_n[j] + b_in[j] + r * hn);                                              \\
            T h = n + z * (h_prev[j] - n);                                                       \\
            ws_r[j] = r; ws_z[j] = z; ws_n[j] = n; ws_hn[j] = hn;                                \\
            out[j] = h; h_next[j] = h;                                                           \\
        }                                                                                        \\
    }                                                                                            \\
    /* reset_before forward, phase 1: r, z and r * h_prev (needed by every thread's n rows) */   \\
    static inline void gru_fwd_before_rz_##S(int m, T *restrict ws_r, T *restrict ws_z,           \\
            const T *restrict g_r, const T *restrict g_z, const T *restrict c_r,                 \\
            const T *restrict c_z, const T *restrict h_prev, T *restrict rh)                     \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T r = SIGMOID(ws_r[j] + g_r[j] + c_r[j]);                                            \\
            T z = SIGMOID(ws_z[j] + g_z[j] + c_z[j]);                                            \\
            ws_r[j] = r; ws_z[j] = z; rh[j] = r * h_prev[j];                                     \\
        }                                                                                        \\
    }                                                                                            \\
    /* reset_before forward, phase 2: n and the new state (c_n = b_in + b_hn) */                \\
    static inline void gru_fwd_before_n_##S(int m, const T *restrict ws_z, T *restrict ws_n,      \\
            const T *restrict g_n, const T *restrict c_n, const T *restrict h_prev,              \\
            T *restrict out, T *restrict h_next)                                                 \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T n = TANH(ws_n[j] + g_n[j] + c_n[j]);                                               \\
            T h = n + ws_z[j] * (h_prev[j] - n);                                                 \\
            ws_n[j] = n; out[j] = h; h_next[j] = h;                                              \\
        }                                                                                        \\
    }                                                                                            \\
    /* reset_after backward: dh carries dL/dh_t in and the direct part dL/dh_{t-1} = dh z out; \\
     * gx_* = pre-activation gate grads (input side), st_* = hidden-side grads of this step   \\
     * [dr, dz, dn * r] for the recurrent product, ghn = dn * r kept per time for dW_hh */       \\
    static inline void gru_bwd_after_##S(int m, T *restrict dh, const T *restrict go,            \\
            const T *restrict r_, const T *restrict z_, const T *restrict n_,                    \\
            const T *restrict hn_, const T *restrict h_prev, T *restrict gx_r,                   \\
            T *restrict gx_z, T *restrict gx_n, T *restrict ghn, T *restrict st_r,               \\
            T *restrict st_z, T *restrict st_n, T *restrict db_r, T *restrict db_z,              \\
            T *restrict db_n, T *restrict db_hn)                                                 \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T d = dh[j] + go[j];                                                                 \\
            T r = r_[j], z = z_[j], n = n_[j];                                                   \\
            T dn = d * (1 - z) * (1 - n * n);                                                    \\
            T dz = d * (h_prev[j] - n) * z * (1 - z);                                            \\
            T dr = dn * hn_[j] * r * (1 - r);                                                    \\
            T dnh = dn * r;                                                                      \\
            gx_r[j] = dr; gx_z[j] = dz; gx_n[j] = dn; ghn[j] = dnh;                              \\
            st_r[j] = dr; st_z[j] = dz; st_n[j] = dnh;                                           \\
            db_r[j] += dr; db_z[j] += dz; db_n[j] += dn; db_hn[j] += dnh;                        \\
            dh[j] = d * z;                                                                       \\
        }                                                                                        \\
    }                                                                                            \\
    /* reset_before backward, phase 1: dn and dz (dr needs W_hn^T dn of all units first) */     \\
    static inline void gru_bwd_before_nz_##S(int m, T *restrict dh, const T *restrict go,        \\
            const T *restrict z_, const T *restrict n_, const T *restrict h_prev,                \\
            T *restrict gx_z, T *restrict gx_n, T *restrict st_z, T *restrict st_n,              \\
            T *restrict db_z, T *restrict db_n)                                                  \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T d = dh[j] + go[j];                                                                 \\
            T z = z_[j], n = n_[j];                                                              \\
            T dn = d * (1 - z) * (1 - n * n);                                                    \\
            T dz = d * (h_prev[j] - n) * z * (1 - z);                                            \\
            gx_z[j] = dz; gx_n[j] = dn; st_z[j] = dz; st_n[j] = dn;                              \\
            db_z[j] += dz; db_n[j] += dn;                                                        \\
            dh[j] = d * z;                                                                       \\
        }                                                                                        \\
    }                                                                                            \\
    /* reset_before backward, phase 2: drh = W_hn^T dn for these units -> dr, dh += drh r */    \\
    static inline void gru_bwd_before_r_##S(int m, T *restrict dh, const T *restrict drh,        \\
            const T *restrict r_, const T *restrict h_prev, T *restrict gx_r,                    \\
            T *restrict st_r, T *restrict rh, T *restrict db_r)                                  \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T r = r_[j], hp = h_prev[j];                                                         \\
            T dr = drh[j] * hp * r * (1 - r);                                                    \\
            dh[j] += drh[j] * r;                                                                 \\
            gx_r[j] = dr; st_r[j] = dr; rh[j] = r * hp; db_r[j] += dr;                           \\
        }                                                                                        \\
    }

    GATEDRNN_GRU_KERNELS(float, f, gatedrnn_sigmoidf, gatedrnn_tanhf)
    GATEDRNN_GRU_KERNELS(double, d, gatedrnn_sigmoid, tanh)
    """
    void gru_fwd_after_f(int m, float* ws_r, float* ws_z, float* ws_n, float* ws_hn,
                         const float* g_r, const float* g_z, const float* g_n,
                         const float* c_r, const float* c_z, const float* b_in,
                         const float* b_hn, const float* h_prev, float* out, float* h_next)
    void gru_fwd_after_d(int m, double* ws_r, double* ws_z, double* ws_n, double* ws_hn,
                         const double* g_r, const double* g_z, const double* g_n,
                         const double* c_r, const double* c_z, const double* b_in,
                         const double* b_hn, const double* h_prev, double* out, double* h_next)
    void gru_fwd_before_rz_f(int m, float* ws_r, float* ws_z, const float* g_r,
                             const float* g_z, const float* c_r, const float* c_z,
                             const float* h_prev, float* rh)
    void gru_fwd_before_rz_d(int m, double* ws_r, double* ws_z, const double* g_r,
                             const double* g_z, const double* c_r, const double* c_z,
                             const double* h_prev, double* rh)
    void gru_fwd_before_n_f(int m, const float* ws_z, float* ws_n, const float* g_n,
                            const float* c_n, const float* h_prev, float* out, float* h_next)
    void gru_fwd_before_n_d(int m, const double* ws_z, double* ws_n, const double* g_n,
                            const double* c_n, const double* h_prev, double* out,
                            double* h_next)
    void gru_bwd_after_f(int m, float* dh, const float* go, const float* r_, const float* z_,
                         const float* n_, const float* hn_, const float* h_prev, float* gx_r,
                         float* gx_z, float* gx_n, float* ghn, float* st_r, float* st_z,
                         float* st_n, float* db_r, float* db_z, float* db_n, float* db_hn)
    void gru_bwd_after_d(int m, double* dh, const double* go, const double* r_,
                         const double* z_, const double* n_, const double* hn_,
                         const double* h_prev, double* gx_r, double* gx_z, double* gx_n,
                         double* ghn, double* st_r, double* st_z, double* st_n, double* db_r,
                         double* db_z, double* db_n, double* db_hn)
    void gru_bwd_before_nz_f(int m, float* dh, const float* go, const float* z_,
                             const float* n_, const float* h_prev, float* gx_z, float* gx_n,
                             float* st_z, float* st_n, float* db_z, float* db_n)
    void gru_bwd_before_nz_d(int m, double* dh, const double* go, const double* z_,
                             const double* n_, const double* h_prev, double* gx_z,
                             double* gx_n, double* st_z, double* st_n, double* db_z,
                             double* db_n)
    void gru_bwd_before_r_f(int m, float* dh, const float* drh, const float* r_,
                            const float* h_prev, float* gx_r, float* st_r, float* rh,
                            float* db_r)
    void gru_bwd_before_r_d(int m, double* dh, const double* drh, const double* r_,
                            const double* h_prev, double* gx_r, double* st_r, double* rh,
                            double* db_r)


# ---------------------------------------------------------------------------------------------
# Fused-type front ends of the C gate kernels (the branch is resolved at compile time).

cdef inline void _fwd_after(int m, floating* ws_r, floating* ws_z, floating* ws_n,
                            floating* ws_hn, const floating* g_r, const floating* g_z,
                            const floating* g_n, const floating* c_r, const floating* c_z,
                            const floating* b_in, const floating* b_hn,
                            const floating* h_prev, floating* out,
                            floating* h_next) noexcept nogil:
    if floating is float:
        gru_fwd_after_f(m, ws_r, ws_z, ws_n, ws_hn, g_r, g_z, g_n, c_r, c_z, b_in, b_hn,
                        h_prev, out, h_next)
    else:
        gru_fwd_after_d(m, ws_r, ws_z, ws_n, ws_hn, g_r, g_z, g_n, c_r, c_z, b_in, b_hn,
                        h_prev, out, h_next)


cdef inline void _fwd_before_rz(int m, floating* ws_r, floating* ws_z, const floating* g_r,
                                const floating* g_z, const floating* c_r,
                                const floating* c_z, const floating* h_prev,
                                floating* rh) noexcept nogil:
    if floating is float:
        gru_fwd_before_rz_f(m, ws_r, ws_z, g_r, g_z, c_r, c_z, h_prev, rh)
    else:
        gru_fwd_before_rz_d(m, ws_r, ws_z, g_r, g_z, c_r, c_z, h_prev, rh)


cdef inline void _fwd_before_n(int m, const floating* ws_z, floating* ws_n,
                               const floating* g_n, const floating* c_n,
                               const floating* h_prev, floating* out,
                               floating* h_next) noexcept nogil:
    if floating is float:
        gru_fwd_before_n_f(m, ws_z, ws_n, g_n, c_n, h_prev, out, h_next)
    else:
        gru_fwd_before_n_d(m, ws_z, ws_n, g_n, c_n, h_prev, out, h_next)


cdef inline void _bwd_after(int m, floating* dh, const floating* go, const floating* r_,
                            const floating* z_, const floating* n_, const floating* hn_,
                            const floating* h_prev, floating* gx_r, floating* gx_z,
                            floating* gx_n, floating* ghn, floating* st_r, floating* st_z,
                            floating* st_n, floating* db_r, floating* db_z, floating* db_n,
                            floating* db_hn) noexcept nogil:
    if floating is float:
        gru_bwd_after_f(m, dh, go, r_, z_, n_, hn_, h_prev, gx_r, gx_z, gx_n, ghn,
                        st_r, st_z, st_n, db_r, db_z, db_n, db_hn)
    else:
        gru_bwd_after_d(m, dh, go, r_, z_, n_, hn_, h_prev, gx_r, gx_z, gx_n, ghn,
                        st_r, st_z, st_n, db_r, db_z, db_n, db_hn)


cdef inline void _bwd_before_nz(int m, floating* dh, const floating* go, const floating* z_,
                                const floating* n_, const floating* h_prev, floating* gx_z,
                                floating* gx_n, floating* st_z, floating* st_n,
                                floating* db_z, floating* db_n) noexcept nogil:
    if floating is float:
        gru_bwd_before_nz_f(m, dh, go, z_, n_, h_prev, gx_z, gx_n, st_z, st_n, db_z, db_n)
    else:
        gru_bwd_before_nz_d(m, dh, go, z_, n_, h_prev, gx_z, gx_n, st_z, st_n, db_z, db_n)


cdef inline void _bwd_before_r(int m, floating* dh, const floating* drh, const floating* r_,
                               const floating* h_prev, floating* gx_r, floating* st_r,
                               floating* rh, floating* db_r) noexcept nogil:
    if floating is float:
        gru_bwd_before_r_f(m, dh, drh, r_, h_prev, gx_r, st_r, rh, db_r)
    else:
        gru_bwd_before_r_d(m, dh, drh, r_, h_prev, gx_r, st_r, rh, db_r)


# ---------------------------------------------------------------------------------------------
# Forward.

cdef void _forward_thread(
        int tid, int nthreads, bint reset_after, bint reverse,
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        const floating* x, const floating* h0, const floating* w_ih, const floating* w_hh,
        const floating* bias, const int64_t* lengths,
        floating* out, floating* h_n, floating* ws,
        floating* gh, floating* h_buf, floating* rh, int* failed) noexcept nogil:
    """Body of the forward region for thread `tid` (see the module docstring).

    bias (5H): [b_ir + b_hr, b_iz + b_hz, b_in, b_hn, b_in + b_hn]. Scratch: gh (B*3H, each
    thread uses its own part), h_buf (2*B*H), rh (B*H). A thread that cannot allocate its
    packed weights sets *failed; all threads then stop after the first barrier.
    """
    cdef Py_ssize_t j0, j1, hs, g, b, s, t, length, gate
    cdef Py_ssize_t n_gates_ws = 4 if reset_after else 3
    cdef Py_ssize_t ws_width = n_gates_ws * H
    cdef Py_ssize_t nr = _panel_width(x), rz_size, packed_size
    cdef floating* w_mine
    cdef floating* w_mine_n
    cdef floating* gh_mine
    cdef floating* gh_row
    cdef floating* h_prev
    cdef floating* h_next
    cdef floating* ws_row
    cdef size_t unit_bytes

    _unit_range(H, tid, nthreads, &j0, &j1)
    hs = j1 - j0
    unit_bytes = hs * sizeof(floating)
    # This thread's W_hh rows (r, z, n of units j0..j1) as B = W_rows^T (H x 3*hs) in panels,
    # so the step product is h_prev (B, H) @ B. Allocated and written by this thread, so its
    # pages and cache lines live where they are used. reset_before packs the r, z columns and
    # the n columns apart (they multiply different left operands).
    gh_mine = gh + 3 * j0 * B
    rz_size = _panel_size(H, (3 if reset_after else 2) * hs, nr)
    packed_size = rz_size + (0 if reset_after else _panel_size(H, hs, nr))
    w_mine = <floating*> malloc((packed_size + 1) * sizeof(floating))
    w_mine_n = w_mine + rz_size
    if w_mine == NULL:
        failed[0] = 1
    else:
        _pack_panels(H, (3 if reset_after else 2) * hs, nr, w_hh + j0 * H, 1, H, hs, H * H,
                     w_mine)
        if not reset_after:
            _pack_panels(H, hs, nr, w_hh + (2 * H + j0) * H, 1, H, hs, H * H, w_mine_n)

    # Input projection of this thread's units for all steps, straight into the workspace
    # (overwritten by the activations step by step); the biases are added in the gate math.
    for g in range(3):
        gemm(False, True, T * B, hs, I, <floating> 1, x, I, w_ih + (g * H + j0) * I, I,
             <floating> 0, ws + g * H + j0, ws_width)
    for b in range(B):
        memcpy(h_buf + b * H + j0, h0 + b * H + j0, unit_bytes)
    omp_barrier()  # h_buf[0] complete
    if failed[0]:
        free(w_mine)
        return

    for s in range(T):
        h_prev = h_buf + (s % 2) * B * H
        h_next = h_buf + ((s + 1) % 2) * B * H
        if reset_after:
            _panel_gemm(B, 3 * hs, H, h_prev, H, w_mine, gh_mine, 3 * hs, False)
            for b in range(B):
                length = lengths[b]
                if s < length:
                    t = _time_index(s, length, reverse)
                    ws_row = ws + (t * B + b) * ws_width
                    gh_row = gh_mine + b * 3 * hs
                    _fwd_after(<int> hs, ws_row + j0, ws_row + H + j0, ws_row + 2 * H + j0,
                               ws_row + 3 * H + j0, gh_row, gh_row + hs, gh_row + 2 * hs,
                               bias + j0, bias + H + j0, bias + 2 * H + j0,
                               bias + 3 * H + j0, h_prev + b * H + j0,
                               out + (t * B + b) * H + j0, h_next + b * H + j0)
                else:
                    # time s is past this sequence's end: zero its workspace and output,
                    # freeze its state
                    ws_row = ws + (s * B + b) * ws_width
                    for gate in range(n_gates_ws):
                        memset(ws_row + gate * H + j0, 0, unit_bytes)
                    memset(out + (s * B + b) * H + j0, 0, unit_bytes)
                    memcpy(h_next + b * H + j0, h_prev + b * H + j0, unit_bytes)
            omp_barrier()  # h_next complete before anyone's next product reads it
        else:
            _panel_gemm(B, 2 * hs, H, h_prev, H, w_mine, gh_mine, 3 * hs, False)
            for b in range(B):
                length = lengths[b]
                gh_row = gh_mine + b * 3 * hs
                if s < length:
                    t = _time_index(s, length, reverse)
                    ws_row = ws + (t * B + b) * ws_width
                    _fwd_before_rz(<int> hs, ws_row + j0, ws_row + H + j0, gh_row,
                                   gh_row + hs, bias + j0, bias + H + j0,
                                   h_prev + b * H + j0, rh + b * H + j0)
                else:
                    memset(rh + b * H + j0, 0, unit_bytes)
            omp_barrier()  # r * h_prev of all units ready for the n rows
            _panel_gemm(B, hs, H, rh, H, w_mine_n, gh_mine + 2 * hs, 3 * hs, False)
            for b in range(B):
                length = lengths[b]
                if s < length:
                    t = _time_index(s, length, reverse)
                    ws_row = ws + (t * B + b) * ws_width
                    _fwd_before_n(<int> hs, ws_row + H + j0, ws_row + 2 * H + j0,
                                  gh_mine + b * 3 * hs + 2 * hs, bias + 4 * H + j0,
                                  h_prev + b * H + j0, out + (t * B + b) * H + j0,
                                  h_next + b * H + j0)
                else:
                    ws_row = ws + (s * B + b) * ws_width
                    for gate in range(n_gates_ws):
                        memset(ws_row + gate * H + j0, 0, unit_bytes)
                    memset(out + (s * B + b) * H + j0, 0, unit_bytes)
                    memcpy(h_next + b * H + j0, h_prev + b * H + j0, unit_bytes)
            omp_barrier()  # h_next (and rh reuse) safe

    h_prev = h_buf + (T % 2) * B * H
    for b in range(B):
        memcpy(h_n + b * H + j0, h_prev + b * H + j0, unit_bytes)
    free(w_mine)


def gru_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                const floating[::1] b_ih, const floating[::1] b_hh,
                const int64_t[::1] lengths, bint reverse, bint reset_after,
                floating[:, :, ::1] output, floating[:, ::1] h_n,
                floating[:, :, ::1] workspace, int num_threads):
    """GRU forward over a (padded) batch of sequences.

    x (T, B, I), h0 (B, H), w_ih (3H, I), w_hh (3H, H), b_ih and b_hh (3H,), gate rows r, z, n;
    lengths int64 (B,) with 0 <= len <= T. Writes output (T, B, H) (zero past each length),
    h_n (B, H) (state after each sequence's last step) and workspace (T, B, 4H) =
    [r, z, n, W_hn h + b_hn] if reset_after else (T, B, 3H) = [r, z, n] (zero past a length).
    num_threads: OpenMP threads (BLAS must be limited to one thread by the caller).
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    dtype = np.float32 if floating is float else np.float64
    bias_np = np.empty(5 * H, dtype=dtype)
    bias_np[:2 * H] = np.asarray(b_ih[:2 * H]) + np.asarray(b_hh[:2 * H])
    bias_np[2 * H:3 * H] = b_ih[2 * H:]
    bias_np[3 * H:4 * H] = b_hh[2 * H:]
    bias_np[4 * H:] = np.asarray(b_ih[2 * H:]) + np.asarray(b_hh[2 * H:])
    cdef floating[::1] bias = bias_np
    cdef floating[::1] gh = np.empty(max(3 * H * B, 1), dtype=dtype)
    cdef floating[::1] h_buf = np.empty(max(2 * B * H, 1), dtype=dtype)
    cdef floating[::1] rh = np.empty(max(B * H, 1), dtype=dtype)
    if T == 0 or B == 0:
        return
    cdef int n_threads = _team_size(num_threads, H)
    cdef int failed = 0
    with nogil, parallel(num_threads=n_threads):
        _forward_thread(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(),
                        reset_after, reverse, T, B, I, H, &x[0, 0, 0], &h0[0, 0],
                        &w_ih[0, 0], &w_hh[0, 0], &bias[0], &lengths[0],
                        &output[0, 0, 0], &h_n[0, 0], &workspace[0, 0, 0],
                        &gh[0], &h_buf[0], &rh[0], &failed)
    if failed:
        raise MemoryError("gru_forward: cannot allocate the packed recurrent weights")


# ---------------------------------------------------------------------------------------------
# Backward.

cdef bint blocked_weight_grads = True  # weight gradients on the register kernel where they can


def _set_blocked_weight_grads(bint enabled):
    """True (the default): weight gradients by weight_grad_blocked where I or H allow; False: BLAS."""
    global blocked_weight_grads
    blocked_weight_grads = enabled


cdef void _backward_thread(
        int tid, int nthreads, bint reset_after, bint reverse,
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        const floating* grad_out, const floating* grad_h_n, const floating* x,
        const floating* h0, const floating* w_ih, const floating* w_hh,
        const int64_t* lengths, const floating* out, const floating* ws,
        floating* grad_x, floating* dh, floating* grad_w_ih, floating* grad_w_hh,
        floating* grad_b_ih, floating* grad_b_hh,
        floating* gx, floating* gh_time, floating* step_buf, floating* drh,
        int* failed) noexcept nogil:
    """Body of the backward region for thread `tid`.

    dh (B, H) is grad_h0, used as the carry dL/dh across steps (each thread touches only its
    units' columns, so it needs no double buffer). Scratch: gx (T, B, 3H): pre-activation
    gate grads by time, input side; gh_time (T, B, H): dn * r by time (reset_after) or
    r * h_prev (reset_before), for the n rows of dW_hh; step_buf (2, B, 3H): this step's
    hidden-side gate grads of all units (read by every thread's recurrent product, so
    double-buffered); drh (B*H), each thread its own part. A thread that cannot allocate its
    packed weights sets *failed; all threads then stop after the first barrier.
    """
    cdef Py_ssize_t j0, j1, hs, g, b, s, t, t_prev, length, r0, r1
    cdef Py_ssize_t TB = T * B, H3 = 3 * H
    cdef Py_ssize_t ws_width = (4 if reset_after else 3) * H
    cdef Py_ssize_t nr = _panel_width(x), n_size
    cdef floating* w_mine
    cdef floating* w_mine_rz
    cdef floating* drh_mine
    cdef floating* st
    cdef floating* gx_row
    cdef floating* st_row
    cdef const floating* ws_row
    cdef const floating* h_prev
    cdef const floating* h_shifted
    cdef const floating* gate_grad
    cdef floating* dw
    cdef Py_ssize_t first, ld_gate
    cdef size_t unit_bytes
    cdef floating* grad_panels = NULL

    _unit_range(H, tid, nthreads, &j0, &j1)
    hs = j1 - j0
    unit_bytes = hs * sizeof(floating)
    # Columns j0..j1 of W_hh (3H x hs) in panels: dh[:, j0:j1] += st (B, 3H) @ w_mine.
    # reset_before packs the n rows (first, they multiply dn alone) apart from the r, z rows.
    drh_mine = drh + j0 * B
    n_size = 0 if reset_after else _panel_size(H, hs, nr)
    w_mine = <floating*> malloc((n_size + _panel_size(3 * H - (0 if reset_after else H), hs, nr)
                                 + 1) * sizeof(floating))
    w_mine_rz = w_mine + n_size
    # Weight gradients on the register kernel with packed operands where the columns (I, H)
    # are whole 32-column blocks (see cpu/lstm.pyx), else BLAS.
    if blocked_weight_grads and hs > 0 and (I % GR_BLOCK == 0 or H % GR_BLOCK == 0):
        grad_panels = <floating*> malloc(weight_grad_panels_size(<int> hs) * sizeof(floating))
        if grad_panels == NULL:
            failed[0] = 1
    if w_mine == NULL:
        failed[0] = 1
    elif reset_after:
        _pack_panels(H3, hs, nr, w_hh + j0, H, 1, hs, 0, w_mine)
    else:
        _pack_panels(H, hs, nr, w_hh + 2 * H * H + j0, H, 1, hs, 0, w_mine)
        _pack_panels(2 * H, hs, nr, w_hh + j0, H, 1, hs, 0, w_mine_rz)
    for b in range(B):
        memcpy(dh + b * H + j0, grad_h_n + b * H + j0, unit_bytes)
    # bias grads are summed by the gate kernels as the steps go (no second pass over gx)
    for g in range(3):
        memset(grad_b_ih + g * H + j0, 0, unit_bytes)
        memset(grad_b_hh + g * H + j0, 0, unit_bytes)
    omp_barrier()
    if failed[0]:
        free(w_mine)
        free(grad_panels)
        return

    for s in range(T - 1, -1, -1):
        st = step_buf + (s % 2) * B * H3
        for b in range(B):
            length = lengths[b]
            st_row = st + b * H3
            if s < length:
                t = _time_index(s, length, reverse)
                if s == 0:
                    h_prev = h0 + b * H
                else:
                    t_prev = t + 1 if reverse else t - 1
                    h_prev = out + (t_prev * B + b) * H
                ws_row = ws + (t * B + b) * ws_width
                gx_row = gx + (t * B + b) * H3
                if reset_after:
                    _bwd_after(<int> hs, dh + b * H + j0, grad_out + (t * B + b) * H + j0,
                               ws_row + j0, ws_row + H + j0, ws_row + 2 * H + j0,
                               ws_row + 3 * H + j0, h_prev + j0, gx_row + j0,
                               gx_row + H + j0, gx_row + 2 * H + j0,
                               gh_time + (t * B + b) * H + j0, st_row + j0,
                               st_row + H + j0, st_row + 2 * H + j0, grad_b_ih + j0,
                               grad_b_ih + H + j0, grad_b_ih + 2 * H + j0,
                               grad_b_hh + 2 * H + j0)
                else:
                    _bwd_before_nz(<int> hs, dh + b * H + j0,
                                   grad_out + (t * B + b) * H + j0, ws_row + H + j0,
                                   ws_row + 2 * H + j0, h_prev + j0, gx_row + H + j0,
                                   gx_row + 2 * H + j0, st_row + H + j0,
                                   st_row + 2 * H + j0, grad_b_ih + H + j0,
                                   grad_b_ih + 2 * H + j0)
            else:
                # past the end: no gradient enters the gates (dh passes through unchanged);
                # zero the by-time rows at time s (they feed the weight GEMMs) and this step's
                gx_row = gx + (s * B + b) * H3
                for g in range(3):
                    memset(gx_row + g * H + j0, 0, unit_bytes)
                    memset(st_row + g * H + j0, 0, unit_bytes)
                memset(gh_time + (s * B + b) * H + j0, 0, unit_bytes)
        omp_barrier()  # this step's gate grads of all units are in st
        if reset_after:
            _panel_gemm(B, hs, H3, st, H3, w_mine, dh + j0, H, True)
        else:
            # d(r * h_prev) for these units = dn (all units) @ W_hn[:, j0:j1]
            _panel_gemm(B, hs, H, st + 2 * H, H3, w_mine, drh_mine, hs, False)
            for b in range(B):
                length = lengths[b]
                if s < length:
                    t = _time_index(s, length, reverse)
                    if s == 0:
                        h_prev = h0 + b * H
                    else:
                        t_prev = t + 1 if reverse else t - 1
                        h_prev = out + (t_prev * B + b) * H
                    _bwd_before_r(<int> hs, dh + b * H + j0, drh_mine + b * hs,
                                  ws + (t * B + b) * ws_width + j0, h_prev + j0,
                                  gx + (t * B + b) * H3 + j0, st + b * H3 + j0,
                                  gh_time + (t * B + b) * H + j0, grad_b_ih + j0)
            omp_barrier()  # dr of all units ready
            _panel_gemm(B, hs, 2 * H, st, H3, w_mine_rz, dh + j0, H, True)

    free(w_mine)
    # Weight and bias gradients of this thread's rows, as GEMMs over all steps. They read only
    # this thread's columns of gx / gh_time / step_buf, so no barrier is needed before them.
    for g in range(3):
        if grad_panels != NULL and I % GR_BLOCK == 0:
            weight_grad_blocked(<int> hs, <int> I, <int> TB, gx + g * H + j0, <int> H3, x, <int> I,
                                grad_w_ih + (g * H + j0) * I, grad_panels)
        else:
            gemm(True, False, hs, I, TB, <floating> 1, gx + g * H + j0, H3, x, I, <floating> 0,
                 grad_w_ih + (g * H + j0) * I, I)
    # dW_hh = sum_t dG_h[t]^T h_prev[t]. h_prev[t] is output[t -/+ 1] except at each sequence's
    # first step, where it is h0: output is zero past each length, so one shifted GEMM over
    # output plus step 0's gate grads (still in step_buf[0]) times h0 covers every case.
    st = step_buf
    if reverse:
        first = 0          # gate rows at times 0..T-2 pair with output[1..T-1]
        h_shifted = out + B * H
    else:
        first = B          # gate rows at times 1..T-1 pair with output[0..T-2]
        h_shifted = out
    for g in range(3):
        dw = grad_w_hh + (g * H + j0) * H
        if g == 2 and not reset_after:
            # reset_before: the n rows multiply r * h_prev (kept by time in gh_time)
            if grad_panels != NULL and H % GR_BLOCK == 0:
                weight_grad_blocked(<int> hs, <int> H, <int> TB, gx + 2 * H + j0, <int> H3, gh_time,
                                    <int> H, dw, grad_panels)
            else:
                gemm(True, False, hs, H, TB, <floating> 1, gx + 2 * H + j0, H3, gh_time, H,
                     <floating> 0, dw, H)
            continue
        if g == 2:
            # reset_after: the hidden-side grad of the n rows is dn * r
            gate_grad = gh_time + first * H + j0
            ld_gate = H
        else:
            gate_grad = gx + first * H3 + g * H + j0
            ld_gate = H3
        _zero_if_empty(T - 1, hs, H, dw)
        if grad_panels != NULL and H % GR_BLOCK == 0:
            weight_grad_blocked(<int> hs, <int> H, <int> ((T - 1) * B), gate_grad, <int> ld_gate,
                                h_shifted, <int> H, dw, grad_panels)
        else:
            gemm(True, False, hs, H, (T - 1) * B, <floating> 1, gate_grad, ld_gate, h_shifted, H,
                 <floating> 0, dw, H)
        gemm(True, False, hs, H, B, <floating> 1, st + g * H + j0, H3, h0, H, <floating> 1,
             dw, H)

    free(grad_panels)
    # db_hh equals db_ih except on the n rows for reset_after (summed apart: dn * r)
    memcpy(grad_b_hh + j0, grad_b_ih + j0, unit_bytes)
    memcpy(grad_b_hh + H + j0, grad_b_ih + H + j0, unit_bytes)
    if not reset_after:
        memcpy(grad_b_hh + 2 * H + j0, grad_b_ih + 2 * H + j0, unit_bytes)

    omp_barrier()  # gx complete for all units
    # grad_x = gx (TB, 3H) @ W_ih (3H, I), rows split evenly across threads
    r0 = TB * tid // nthreads
    r1 = TB * (tid + 1) // nthreads
    gemm(False, False, r1 - r0, I, H3, <floating> 1, gx + r0 * H3, H3, w_ih, I, <floating> 0,
         grad_x + r0 * I, I)


def gru_backward(const floating[:, :, ::1] grad_output, const floating[:, ::1] grad_h_n,
                 const floating[:, :, ::1] x, const floating[:, ::1] h0,
                 const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                 const int64_t[::1] lengths, bint reverse, bint reset_after,
                 const floating[:, :, ::1] output, const floating[:, :, ::1] workspace,
                 floating[:, :, ::1] grad_x, floating[:, ::1] grad_h0,
                 floating[:, ::1] grad_w_ih, floating[:, ::1] grad_w_hh,
                 floating[::1] grad_b_ih, floating[::1] grad_b_hh, int num_threads):
    """GRU backward (BPTT) from the forward's output and workspace.

    grad_output (T, B, H), grad_h_n (B, H); x, h0, w_ih, w_hh, lengths, reverse, reset_after
    as given to gru_forward; output (T, B, H) and workspace (T, B, 4H or 3H) as it wrote them.
    Writes grad_x (T, B, I), grad_h0 (B, H), grad_w_ih (3H, I), grad_w_hh (3H, H),
    grad_b_ih and grad_b_hh (3H,) (they differ on the n rows for reset_after).
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] gx = np.empty(max(T * B * 3 * H, 1), dtype=dtype)
    cdef floating[::1] gh_time = np.empty(max(T * B * H, 1), dtype=dtype)
    cdef floating[::1] step_buf = np.empty(max(2 * B * 3 * H, 1), dtype=dtype)
    cdef floating[::1] drh = np.empty(max(B * H, 1), dtype=dtype)
    if T == 0 or B == 0:
        return
    cdef int n_threads = _team_size(num_threads, H)
    cdef int failed = 0
    with nogil, parallel(num_threads=n_threads):
        _backward_thread(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(),
                         reset_after, reverse, T, B, I, H, &grad_output[0, 0, 0],
                         &grad_h_n[0, 0], &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0],
                         &lengths[0], &output[0, 0, 0], &workspace[0, 0, 0],
                         &grad_x[0, 0, 0], &grad_h0[0, 0], &grad_w_ih[0, 0],
                         &grad_w_hh[0, 0], &grad_b_ih[0], &grad_b_hh[0], &gx[0],
                         &gh_time[0], &step_buf[0], &drh[0], &failed)
    if failed:
        raise MemoryError("gru_backward: cannot allocate the packed recurrent weights")
