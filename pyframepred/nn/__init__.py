"""Drop-in modules built on the fused operators."""

from .convlstm import ConvLSTM, ConvLSTMCell
from .loss import GDLLoss

__all__ = ["ConvLSTMCell", "ConvLSTM", "GDLLoss"]
