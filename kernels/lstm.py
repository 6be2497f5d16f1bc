"""LSTM backend launchers (Triton). Shapes as in docs/backend-contract.md: x (T,B,I), h0/c0 (B,H),
w_ih (4H,I), w_hh (4H,H), biases (4H,) or None, lengths int64 (B,)."""
from . import _common as C


def lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, mode=None):
    """-> (output (T,B,H), h_n (B,H), c_n (B,H), workspace (T,B,5H): [i, f, g, o, c])."""
    return C.recurrent_forward(C.CELL_LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths,
                               reverse, mode)


def lstm_backward(grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                  lengths, reverse, output, workspace, mode=None):
    """-> (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)."""
    return C.recurrent_backward(C.CELL_LSTM, grad_output, grad_h_n, grad_c_n, x, h0, c0, w_ih,
                                w_hh, lengths, reverse, output, workspace, mode)


def kernel_configs(H, B, dtype, sm_count, capability=(9, 0)):
    """Every (kernel, constexprs, num_warps) the launchers may compile for these sizes."""
    return C.kernel_configs(C.CELL_LSTM, H, B, dtype, sm_count, capability)
