"""Fused operators, autograd-aware and ``torch.compile``-friendly.

Each operator's schema is declared once, in ``csrc/include/pyframepred/op_signatures.h``
(registered by ``csrc/ops.cpp`` as ``torch.ops.pyframepred``); this package
registers its fake (meta) kernel and its autograd formula, and exposes a Python function with the
same semantics as its plain-PyTorch twin in :mod:`pyframepred.reference`. Importing it loads
the compiled extension, ``pyframepred._C`` (:mod:`pyframepred._extension` says clearly why when
that fails).
"""

from .._extension import load as _load

_C = _load()

# The operators' Python side, after the extension that registers them:
from ._buffer_pool import cpu_buffer_pool_stats, empty_cpu_buffer_pool  # noqa: E402
from ._convlstm import convlstm_gates  # noqa: E402
from ._cpu_isa import _set_cpu_isa, cpu_isa, cpu_isa_levels  # noqa: E402, F401
from ._gdl import gdl_loss  # noqa: E402
from ._layer import conv2d_same, conv2d_weight_grad, convlstm_layer  # noqa: E402

__all__ = [
    "conv2d_same",
    "conv2d_weight_grad",
    "convlstm_gates",
    "convlstm_layer",
    "cpu_buffer_pool_stats",
    "cpu_isa",
    "cpu_isa_levels",
    "empty_cpu_buffer_pool",
    "gdl_loss",
]
