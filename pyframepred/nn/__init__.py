"""Drop-in modules built on the fused operators."""
from .convlstm import ConvLSTM, ConvLSTMCell

__all__ = ["ConvLSTMCell", "ConvLSTM"]
