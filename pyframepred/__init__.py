"""pyframepred: video frame prediction with fused C++/CUDA ConvLSTM and GDL kernels.

Layers (each usable on its own):

* :mod:`pyframepred.ops` -- the fused operators (``torch.ops.pyframepred``), autograd-aware;
  importing it loads the compiled extension (with a clear error when it cannot);
* :mod:`pyframepred.reference` -- the same operators in plain PyTorch (test oracle, baseline);
* :mod:`pyframepred.nn` -- drop-in modules: ``ConvLSTMCell``, ``ConvLSTM``, ``GDLLoss``;
* :mod:`pyframepred.models` (+ its registry), :mod:`pyframepred.training`,
  :mod:`pyframepred.evaluation`, :mod:`pyframepred.data`, :mod:`pyframepred.metrics`,
  :mod:`pyframepred.io`; the command lines in :mod:`pyframepred.cli`.

``pyframepred.data``, ``metrics``, ``reference``, ``io`` and ``errors`` are pure Python: they
import without the compiled extension. Submodules load on first use.
"""

import importlib

__version__ = "0.1.0"
__all__ = ["ops", "reference", "nn", "models", "data", "metrics", "training", "evaluation", "io", "errors"]


def __getattr__(name):
    if name == "_C":  # the compiled extension, loaded by pyframepred.ops
        return importlib.import_module(".ops", __name__)._C
    if name in __all__:
        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'pyframepred' has no attribute {name!r}")
