# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Elman RNN recurrence (one layer, one direction) on the CPU: forward and explicit BPTT
backward of h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu, with lengths
(PackedSequence semantics) and reverse handled inside the time loop.

Same parallel design as gru.pyx: ONE OpenMP region for the whole call; thread k owns hidden
units [j0, j1) (its rows of W_hh, packed once into panels that stay in its L2), computes their
input projection for all steps as a GEMM before the recurrence, then per step one recurrent
product plus the fused activation, and a barrier (the state is double-buffered). Weight
gradients are GEMMs over all steps after the backward recurrence. BLAS is called
single-threaded (the caller limits OpenBLAS with threadpoolctl).
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

    /* Fused activation for one batch row and m hidden units (restrict so the loops
     * vectorise). ws holds the input projection on entry and h_t on exit. */
    #define GATEDRNN_RNN_KERNELS(T, S, TANH)                                                     \\
    static inline void rnn_fwd_tanh_##S(int m, T *restrict ws, const T *restrict g,              \\
            const T *restrict bias, T *restrict out, T *restrict h_next)                         \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T h = TANH(ws[j] + g[j] + bias[j]);                                                  \\
            ws[j] = h; out[j] = h; h_next[j] = h;                                                \\
        }                                                                                        \\
    }                                                                                            \\
    static inline void rnn_fwd_relu_##S(int m, T *restrict ws, const T *restrict g,              \\
            const T *restrict bias, T *restrict out, T *restrict h_next)                         \\
    {                                                                                            \\
        for (int j = 0; j < m; j++) {                                                            \\
            T a = ws[j] + g[j] + bias[j];                                                        \\
            T h = a > 0 ? a : 0;                                                                 \\
            ws[j] = h; out[j] = h; h_next[j] = h;                                                \\
        }                                                                                        \\
    }                                                                                            \\
    /* backward: dh carries dL/dh_t in; the pre-activation grad goes to gx (by time) and st   \\
     * (this step, for the recurrent product), and dh is left 0 (h' has no direct h term). */  \\
    static inline void rnn_bwd_##S(int m, int relu, T *restrict dh, const T *restrict go,        \\
            const T *restrict h_, T *restrict gx, T *restrict st, T *restrict db)               \\
    {                                                                                            \\
        if (relu) {                                                                              \\
            for (int j = 0; j < m; j++) {                                                        \\
                T d = h_[j] > 0 ? dh[j] + go[j] : 0;                                             \\
                gx[j] = d; st[j] = d; db[j] += d; dh[j] = 0;                                     \\
            }                                                                                    \\
        } else {                                                                                 \\
            for (int j = 0; j < m; j++) {                                                        \\
                T h = h_[j];                                                                     \\
                T d = (dh[j] + go[j]) * (1 - h * h);                                             \\
                gx[j] = d; st[j] = d; db[j] += d; dh[j] = 0;                                     \\
            }                                                                                    \\
        }                                                                                        \\
    }

    GATEDRNN_RNN_KERNELS(float, f, gatedrnn_tanhf)
    GATEDRNN_RNN_KERNELS(double, d, tanh)
    """
    void rnn_fwd_tanh_f(int m, float* ws, const float* g, const float* bias, float* out,
                        float* h_next)
    void rnn_fwd_tanh_d(int m, double* ws, const double* g, const double* bias, double* out,
                        double* h_next)
    void rnn_fwd_relu_f(int m, float* ws, const float* g, const float* bias, float* out,
                        float* h_next)
    void rnn_fwd_relu_d(int m, double* ws, const double* g, const double* bias, double* out,
                        double* h_next)
    void rnn_bwd_f(int m, int relu, float* dh, const float* go, const float* h_, float* gx,
                   float* st, float* db)
    void rnn_bwd_d(int m, int relu, double* dh, const double* go, const double* h_,
                   double* gx, double* st, double* db)


cdef inline void _fwd(bint relu, int m, floating* ws, const floating* g, const floating* bias,
                      floating* out, floating* h_next) noexcept nogil:
    if floating is float:
        if relu:
            rnn_fwd_relu_f(m, ws, g, bias, out, h_next)
        else:
            rnn_fwd_tanh_f(m, ws, g, bias, out, h_next)
    else:
        if relu:
            rnn_fwd_relu_d(m, ws, g, bias, out, h_next)
        else:
            rnn_fwd_tanh_d(m, ws, g, bias, out, h_next)


cdef inline void _bwd(bint relu, int m, floating* dh, const floating* go, const floating* h_,
                      floating* gx, floating* st, floating* db) noexcept nogil:
    if floating is float:
        rnn_bwd_f(m, relu, dh, go, h_, gx, st, db)
    else:
        rnn_bwd_d(m, relu, dh, go, h_, gx, st, db)


# ---------------------------------------------------------------------------------------------
# Forward.

cdef void _forward_thread(
        int tid, int nthreads, bint relu, bint reverse,
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        const floating* x, const floating* h0, const floating* w_ih, const floating* w_hh,
        const floating* bias, const int64_t* lengths,
        floating* out, floating* h_n, floating* ws,
        floating* gh, floating* h_buf, int* failed) noexcept nogil:
    """Body of the forward region for thread `tid`. Scratch: gh (B*H, each thread uses its
    own part), h_buf (2*B*H). A thread that cannot allocate its packed weights sets *failed;
    all threads then stop after the first barrier."""
    cdef Py_ssize_t j0, j1, hs, b, s, t, length
    cdef Py_ssize_t nr = _panel_width(x)
    cdef floating* w_mine
    cdef floating* gh_mine
    cdef floating* h_prev
    cdef floating* h_next
    cdef size_t unit_bytes

    _unit_range(H, tid, nthreads, &j0, &j1)
    hs = j1 - j0
    unit_bytes = hs * sizeof(floating)
    gh_mine = gh + j0 * B
    # This thread's rows of W_hh as W_rows^T (H x hs) in panels (allocated and written here,
    # so they live in this core's cache)
    w_mine = <floating*> malloc((_panel_size(H, hs, nr) + 1) * sizeof(floating))
    if w_mine == NULL:
        failed[0] = 1
    else:
        _pack_panels(H, hs, nr, w_hh + j0 * H, 1, H, hs, 0, w_mine)
    # Input projection of this thread's units for all steps, straight into the workspace
    gemm(False, True, T * B, hs, I, <floating> 1, x, I, w_ih + j0 * I, I, <floating> 0,
         ws + j0, H)
    for b in range(B):
        memcpy(h_buf + b * H + j0, h0 + b * H + j0, unit_bytes)
    omp_barrier()  # h_buf[0] complete
    if failed[0]:
        free(w_mine)
        return

    for s in range(T):
        h_prev = h_buf + (s % 2) * B * H
        h_next = h_buf + ((s + 1) % 2) * B * H
        _panel_gemm(B, hs, H, h_prev, H, w_mine, gh_mine, hs, False)
        for b in range(B):
            length = lengths[b]
            if s < length:
                t = _time_index(s, length, reverse)
                _fwd(relu, <int> hs, ws + (t * B + b) * H + j0, gh_mine + b * hs, bias + j0,
                     out + (t * B + b) * H + j0, h_next + b * H + j0)
            else:
                # time s is past this sequence's end: zero workspace and output, freeze state
                memset(ws + (s * B + b) * H + j0, 0, unit_bytes)
                memset(out + (s * B + b) * H + j0, 0, unit_bytes)
                memcpy(h_next + b * H + j0, h_prev + b * H + j0, unit_bytes)
        omp_barrier()  # h_next complete before anyone's next product reads it

    h_prev = h_buf + (T % 2) * B * H
    for b in range(B):
        memcpy(h_n + b * H + j0, h_prev + b * H + j0, unit_bytes)
    free(w_mine)


def rnn_forward(const floating[:, :, ::1] x, const floating[:, ::1] h0,
                const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                const floating[::1] bias, const int64_t[::1] lengths, bint reverse, bint relu,
                floating[:, :, ::1] output, floating[:, ::1] h_n,
                floating[:, :, ::1] workspace, int num_threads):
    """Elman RNN forward over a (padded) batch of sequences.

    x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), bias (H,) = b_ih + b_hh, lengths int64
    (B,) with 0 <= len <= T; relu selects relu over tanh. Writes output (T, B, H) (zero past
    each length), h_n (B, H) (state after each sequence's last step) and workspace (T, B, H)
    = h_t (zero past a length). num_threads: OpenMP threads (BLAS limited to one by the
    caller).
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] gh = np.empty(max(H * B, 1), dtype=dtype)
    cdef floating[::1] h_buf = np.empty(max(2 * B * H, 1), dtype=dtype)
    if T == 0 or B == 0:
        return
    cdef int n_threads = _team_size(num_threads, H)
    cdef int failed = 0
    with nogil, parallel(num_threads=n_threads):
        _forward_thread(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(), relu,
                        reverse, T, B, I, H, &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0],
                        &w_hh[0, 0], &bias[0], &lengths[0], &output[0, 0, 0], &h_n[0, 0],
                        &workspace[0, 0, 0], &gh[0], &h_buf[0], &failed)
    if failed:
        raise MemoryError("rnn_forward: cannot allocate the packed recurrent weights")


# ---------------------------------------------------------------------------------------------
# Backward.

cdef bint blocked_weight_grads = True  # weight gradients on the register kernel where they can


def _set_blocked_weight_grads(bint enabled):
    """True (the default): weight gradients by weight_grad_blocked where I or H allow; False: BLAS."""
    global blocked_weight_grads
    blocked_weight_grads = enabled


cdef void _backward_thread(
        int tid, int nthreads, bint relu, bint reverse,
        Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H,
        const floating* grad_out, const floating* grad_h_n, const floating* x,
        const floating* h0, const floating* w_ih, const floating* w_hh,
        const int64_t* lengths, const floating* out, const floating* ws,
        floating* grad_x, floating* dh, floating* grad_w_ih, floating* grad_w_hh,
        floating* grad_bias, floating* gx, floating* step_buf, int* failed) noexcept nogil:
    """Body of the backward region for thread `tid`.

    dh (B, H) is grad_h0, used as the carry dL/dh across steps (each thread touches only its
    units' columns). Scratch: gx (T, B, H): pre-activation grads by time; step_buf (2, B, H):
    this step's pre-activation grads of all units (read by every thread's recurrent product,
    so double-buffered).
    """
    cdef Py_ssize_t j0, j1, hs, b, s, t, length, r0, r1, first
    cdef Py_ssize_t TB = T * B
    cdef Py_ssize_t nr = _panel_width(x)
    cdef floating* w_mine
    cdef floating* st
    cdef const floating* h_shifted
    cdef size_t unit_bytes
    cdef floating* grad_panels = NULL

    _unit_range(H, tid, nthreads, &j0, &j1)
    hs = j1 - j0
    unit_bytes = hs * sizeof(floating)
    # Columns j0..j1 of W_hh (H x hs) in panels: dh[:, j0:j1] += st (B, H) @ w_mine
    w_mine = <floating*> malloc((_panel_size(H, hs, nr) + 1) * sizeof(floating))
    # Weight gradients on the register kernel with packed operands where the columns (I, H)
    # are whole 32-column blocks (see cpu/lstm.pyx), else BLAS.
    if blocked_weight_grads and hs > 0 and (I % GR_BLOCK == 0 or H % GR_BLOCK == 0):
        grad_panels = <floating*> malloc(weight_grad_panels_size(<int> hs) * sizeof(floating))
        if grad_panels == NULL:
            failed[0] = 1
    if w_mine == NULL:
        failed[0] = 1
    else:
        _pack_panels(H, hs, nr, w_hh + j0, H, 1, hs, 0, w_mine)
    for b in range(B):
        memcpy(dh + b * H + j0, grad_h_n + b * H + j0, unit_bytes)
    memset(grad_bias + j0, 0, unit_bytes)  # summed by the kernel as the steps go
    omp_barrier()
    if failed[0]:
        free(w_mine)
        free(grad_panels)
        return

    for s in range(T - 1, -1, -1):
        st = step_buf + (s % 2) * B * H
        for b in range(B):
            length = lengths[b]
            if s < length:
                t = _time_index(s, length, reverse)
                _bwd(relu, <int> hs, dh + b * H + j0, grad_out + (t * B + b) * H + j0,
                     ws + (t * B + b) * H + j0, gx + (t * B + b) * H + j0, st + b * H + j0,
                     grad_bias + j0)
            else:
                # past the end: dh passes through unchanged, no gradient enters the cell
                memset(gx + (s * B + b) * H + j0, 0, unit_bytes)
                memset(st + b * H + j0, 0, unit_bytes)
        omp_barrier()  # this step's pre-activation grads of all units are in st
        _panel_gemm(B, hs, H, st, H, w_mine, dh + j0, H, True)
    free(w_mine)

    # Weight and bias gradients of this thread's rows over all steps (they read only this
    # thread's columns of gx / step_buf: no barrier needed)
    if grad_panels != NULL and I % GR_BLOCK == 0:
        weight_grad_blocked(<int> hs, <int> I, <int> TB, gx + j0, <int> H, x, <int> I,
                            grad_w_ih + j0 * I, grad_panels)
    else:
        gemm(True, False, hs, I, TB, <floating> 1, gx + j0, H, x, I, <floating> 0,
             grad_w_ih + j0 * I, I)
    # dW_hh = sum_t g[t]^T h_prev[t]: h_prev[t] is output[t -/+ 1] except at each sequence's
    # first step, where it is h0; output is zero past each length, so one shifted GEMM plus
    # step 0's grads (still in step_buf[0]) times h0 covers every case.
    if reverse:
        first = 0          # rows at times 0..T-2 pair with output[1..T-1]
        h_shifted = out + B * H
    else:
        first = B          # rows at times 1..T-1 pair with output[0..T-2]
        h_shifted = out
    _zero_if_empty(T - 1, hs, H, grad_w_hh + j0 * H)
    if grad_panels != NULL and H % GR_BLOCK == 0:
        weight_grad_blocked(<int> hs, <int> H, <int> ((T - 1) * B), gx + first * H + j0, <int> H,
                            h_shifted, <int> H, grad_w_hh + j0 * H, grad_panels)
    else:
        gemm(True, False, hs, H, (T - 1) * B, <floating> 1, gx + first * H + j0, H, h_shifted, H,
             <floating> 0, grad_w_hh + j0 * H, H)
    free(grad_panels)
    gemm(True, False, hs, H, B, <floating> 1, step_buf + j0, H, h0, H, <floating> 1,
         grad_w_hh + j0 * H, H)

    omp_barrier()  # gx complete for all units
    r0 = TB * tid // nthreads
    r1 = TB * (tid + 1) // nthreads
    gemm(False, False, r1 - r0, I, H, <floating> 1, gx + r0 * H, H, w_ih, I, <floating> 0,
         grad_x + r0 * I, I)


def rnn_backward(const floating[:, :, ::1] grad_output, const floating[:, ::1] grad_h_n,
                 const floating[:, :, ::1] x, const floating[:, ::1] h0,
                 const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                 const int64_t[::1] lengths, bint reverse, bint relu,
                 const floating[:, :, ::1] output, const floating[:, :, ::1] workspace,
                 floating[:, :, ::1] grad_x, floating[:, ::1] grad_h0,
                 floating[:, ::1] grad_w_ih, floating[:, ::1] grad_w_hh,
                 floating[::1] grad_bias, int num_threads):
    """Elman RNN backward (BPTT) from the forward's output and workspace.

    grad_output (T, B, H), grad_h_n (B, H); x, h0, w_ih, w_hh, lengths, reverse, relu as given
    to rnn_forward; output and workspace (T, B, H) as it wrote them. Writes grad_x (T, B, I),
    grad_h0 (B, H), grad_w_ih (H, I), grad_w_hh (H, H), grad_bias (H,) (= grad b_ih = grad
    b_hh).
    """
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2], H = h0.shape[1]
    dtype = np.float32 if floating is float else np.float64
    cdef floating[::1] gx = np.empty(max(T * B * H, 1), dtype=dtype)
    cdef floating[::1] step_buf = np.empty(max(2 * B * H, 1), dtype=dtype)
    if T == 0 or B == 0:
        return
    cdef int n_threads = _team_size(num_threads, H)
    cdef int failed = 0
    with nogil, parallel(num_threads=n_threads):
        _backward_thread(openmp.omp_get_thread_num(), openmp.omp_get_num_threads(), relu,
                         reverse, T, B, I, H, &grad_output[0, 0, 0], &grad_h_n[0, 0],
                         &x[0, 0, 0], &h0[0, 0], &w_ih[0, 0], &w_hh[0, 0], &lengths[0],
                         &output[0, 0, 0], &workspace[0, 0, 0], &grad_x[0, 0, 0],
                         &grad_h0[0, 0], &grad_w_ih[0, 0], &grad_w_hh[0, 0], &grad_bias[0],
                         &gx[0], &step_buf[0], &failed)
    if failed:
        raise MemoryError("rnn_backward: cannot allocate the packed recurrent weights")
