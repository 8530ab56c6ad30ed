"""The three frame-prediction models of the project brief, as ordinary ``nn.Module`` s.

* :class:`Seq2Seq` -- conv encoder, ConvLSTM encoder/decoder, deconv decoder; predicts K frames;
* :class:`SkipAutoencoder` -- 4 stacked frames -> next frame, U-Net skip connections;
* :class:`MultiScaleGenerator` / :class:`MultiScaleDiscriminator` / :class:`MultiScaleLoss` --
  Mathieu et al.'s multi-scale adversarial model.

All take frames in [-1, 1] (``(B, T, 3, H, W)``), work at any frame size, and have
``rollout(inputs, steps) -> (B, steps, 3, H, W)``. :mod:`pyframepred.models.registry` names them
for training (name -> class, sizes per preset, training task).
"""

from . import registry  # noqa: E402 - after the model classes it registers
from .autoencoder import SkipAutoencoder, stack_frames
from .multiscale import MultiScaleDiscriminator, MultiScaleGenerator, MultiScaleLoss, scale_sizes
from .registry import rollout
from .seq2seq import Seq2Seq

__all__ = [
    "Seq2Seq",
    "SkipAutoencoder",
    "MultiScaleGenerator",
    "MultiScaleDiscriminator",
    "MultiScaleLoss",
    "scale_sizes",
    "stack_frames",
    "registry",
    "rollout",
]
