"""Triton GPU kernels of gatedrnn (installed as ``gatedrnn.kernels``).

Importing this package does not import Triton: the cell modules (``lstm``, ``gru``, ``rnn``)
do, and the ops layer imports them lazily when the triton backend is used.

Each cell module exports the backend contract's launchers (see docs/backend-contract.md):
``lstm_forward/lstm_backward``, ``gru_forward/gru_backward``, ``rnn_forward/rnn_backward``,
plus ``kernel_configs(H, B, dtype, sm_count)`` enumerating what the launchers can compile.
"""
CELL_MODULES = ("lstm", "gru", "rnn")
