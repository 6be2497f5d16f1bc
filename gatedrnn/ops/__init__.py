"""Functional ops with autograd, registered as ``torch.library`` custom ops (``gatedrnn::*``).

One module per op (``gatedrnn.ops.lstm`` ...). The functions are exported from the top-level
``gatedrnn`` package, not from here, so that ``gatedrnn.ops.<op>`` always names the module.
"""
