"""pyframepred: video frame prediction with fused C++/CUDA ConvLSTM and GDL kernels.

Layers (each usable on its own):

* :mod:`pyframepred.ops` -- the fused operators (``torch.ops.pyframepred``), autograd-aware;
* :mod:`pyframepred.reference` -- the same operators in plain PyTorch (test oracle, baseline);
* :mod:`pyframepred.nn` -- drop-in modules: ``ConvLSTMCell``, ``ConvLSTM``, ``GDLLoss``.
"""
from . import _extension

_C = _extension.load()

from . import nn, ops, reference  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "reference", "nn"]
