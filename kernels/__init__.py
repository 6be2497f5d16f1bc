"""Triton GPU kernels of gatedrnn (installed as ``gatedrnn.kernels``).

Importing this package does not import Triton: the op modules do, and the ops layer imports them
lazily when the triton backend is used.

* ``lstm``, ``gru``, ``rnn``: the recurrences' launchers (``<cell>_forward/<cell>_backward`` and
  ``kernel_configs(H, B, dtype, sm_count)``); the persistent kernels they share are in ``_common``.
* ``conv``, ``pool``, ``embedding``: convolution, pooling and embedding kernels with their
  launchers, each listing every compile its launchers can request in ``gate_configs(capability)``.
* ``_launch``: output allocation (NaN-poisoned in tests), interpreter switch, dot precision.

Contracts: docs/backend-contract.md. Compile gate over all of them: perf/compile_report.py.
"""
CELL_MODULES = ("lstm", "gru", "rnn")
OP_MODULES = ("conv", "pool", "embedding")
