"""Elman RNN backend launchers (Triton), tanh or relu. Shapes as in docs/backend-contract.md:
x (T,B,I), h0 (B,H), w_ih (H,I), w_hh (H,H), biases (H,) or None, lengths int64 (B,)."""
from . import _common as C


def _cell(nonlinearity):
    return C.CELL_RNN_TANH if nonlinearity == "tanh" else C.CELL_RNN_RELU


def rnn_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, nonlinearity, mode=None):
    """-> (output (T,B,H), h_n (B,H), workspace (T,B,H) [h_t])."""
    out, h_n, _, ws = C.recurrent_forward(_cell(nonlinearity), x, h0, None, w_ih, w_hh, b_ih,
                                          b_hh, lengths, reverse, mode)
    return out, h_n, ws


def rnn_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                 nonlinearity, output, workspace, mode=None):
    """-> (grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)."""
    gx, gh0, _, gwi, gwh, gbi, gbh = C.recurrent_backward(
        _cell(nonlinearity), grad_output, grad_h_n, None, x, h0, None, w_ih, w_hh, lengths,
        reverse, output, workspace, mode)
    return gx, gh0, gwi, gwh, gbi, gbh


def kernel_configs(H, B, dtype, sm_count, capability=(9, 0)):
    """Every (kernel, constexprs, num_warps) the launchers may compile for these sizes."""
    return (C.kernel_configs(C.CELL_RNN_TANH, H, B, dtype, sm_count, capability)
            + C.kernel_configs(C.CELL_RNN_RELU, H, B, dtype, sm_count, capability))
