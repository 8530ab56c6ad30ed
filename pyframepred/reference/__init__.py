"""Plain-PyTorch versions of every fused operator, with the same signatures and semantics.

They are the oracle of the tests and the baseline of the benchmarks.
"""

from .conv import conv2d_same, conv2d_weight_grad
from .convlstm import convlstm_gates
from .gdl import gdl_loss

__all__ = ["conv2d_same", "conv2d_weight_grad", "convlstm_gates", "gdl_loss"]
