"""GRU backend launchers (Triton), both reset conventions. Shapes as in docs/backend-contract.md:
x (T,B,I), h0 (B,H), w_ih (3H,I), w_hh (3H,H), biases (3H,) or None, lengths int64 (B,)."""
from . import _common as C


def _cell(reset_after):
    return C.CELL_GRU if reset_after else C.CELL_GRU_RESET_BEFORE


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, reset_after, mode=None):
    """-> (output (T,B,H), h_n (B,H), workspace (T,B,4H) [r,z,n,hn] or (T,B,3H) [r,z,n])."""
    out, h_n, _, ws = C.recurrent_forward(_cell(reset_after), x, h0, None, w_ih, w_hh, b_ih,
                                          b_hh, lengths, reverse, mode)
    return out, h_n, ws


def gru_backward(grad_output, grad_h_n, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, reverse,
                 reset_after, output, workspace, mode=None):
    """-> (grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh)."""
    gx, gh0, _, gwi, gwh, gbi, gbh = C.recurrent_backward(
        _cell(reset_after), grad_output, grad_h_n, None, x, h0, None, w_ih, w_hh, lengths,
        reverse, output, workspace, mode)
    return gx, gh0, gwi, gwh, gbi, gbh


def kernel_configs(H, B, dtype, sm_count, capability=(9, 0)):
    """Every (kernel, constexprs, num_warps) the launchers may compile for these sizes."""
    return (C.kernel_configs(C.CELL_GRU, H, B, dtype, sm_count, capability)
            + C.kernel_configs(C.CELL_GRU_RESET_BEFORE, H, B, dtype, sm_count, capability))
