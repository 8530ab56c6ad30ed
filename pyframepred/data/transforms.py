"""Pixel scaling and the multi-scale view of a clip.

Pixel contract of the package: frames are float32 tensors in [-1, 1] obtained from 8-bit RGB with
``x = (x - 127.5) / 127.5``; :func:`denormalize` is the exact inverse ``x * 127.5 + 127.5``
(both defined in :mod:`pyframepred.io`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..io import denormalize, normalize, to_uint8

__all__ = ["normalize", "denormalize", "to_uint8", "multiscale", "MultiScale", "scale_sizes", "resize"]

# The pixel mapping itself lives in pyframepred.io (one place); re-exported here.


def scale_sizes(scales: Sequence, base_size: int, height: int, width: int) -> list:
    """Sizes ``(h, w)`` of each scale for ``height x width`` frames: the one meaning of a scale
    in the package (the data transforms and the multi-scale model both use it).

    An int scale ``s`` is a frame height for ``base_size``-pixel-high frames: other frame sizes
    get proportional sizes (``s * height / base_size`` by ``s * width / base_size``; e.g. 4, 16,
    32, 64 for 64 give 8, 32, 64, 128 for 128x128 frames). A pair is an exact ``(h, w)``.
    """
    out = []
    for s in scales:
        if isinstance(s, int):
            out.append((max(1, round(height * s / base_size)), max(1, round(width * s / base_size))))
        else:
            out.append((int(s[0]), int(s[1])))
    return out


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Resize the last two dimensions to ``size``: area downsampling (exact average pooling for
    integer factors), bilinear upsampling; the tensor itself when the size is already right."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=tuple(size), mode="area")
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def multiscale(
    clip: torch.Tensor,
    scales: Sequence = (4, 16, 32, 64),
    n_input: int | None = None,
    n_target: int = 1,
    base_size: int | None = None,
):
    """Split a clip into stacked input frames and targets, at several spatial scales.

    Parameters
    ----------
    clip:
        ``(T, 3, H, W)`` or a batch ``(B, T, 3, H, W)``, as returned by :class:`VideoClips`.
    scales:
        Output sizes, as :func:`scale_sizes` reads them: an int ``s`` is a height for
        ``base_size``-pixel-high clips (default ``base_size``: the clip's height, so ``s`` is the
        output height and the width follows the aspect ratio, ``(s, s)`` for square clips); a
        pair means ``(height, width)``. Scales larger than the clip are upsampled bilinearly;
        smaller ones are box-averaged (``area``) which, for the usual power-of-two factors, is
        exact average pooling.
    n_input:
        Number of leading frames used as input (default ``T - n_target``).
    n_target:
        Number of frames, following the inputs, used as targets (default 1).

    base_size:
        The frame height the int scales refer to (the multi-scale model's ``base_size``).

    Returns
    -------
    ``(inputs, targets)``: two lists with one tensor per scale. ``inputs[k]`` is
    ``(n_input * 3, s, s)`` (frames stacked along channels, oldest first, RGB within each
    frame) and ``targets[k]`` is ``(n_target * 3, s, s)``; with a leading batch dimension when the
    clip has one. A scale equal to the clip size returns a view of the clip, without copy.
    """
    if clip.dim() not in (4, 5) or clip.shape[-3] != 3:
        raise ValueError(f"clip must be (T, 3, H, W) or (B, T, 3, H, W), got {tuple(clip.shape)}")
    batched = clip.dim() == 5
    x = clip if batched else clip.unsqueeze(0)
    b, t, c, h, w = x.shape
    if n_input is None:
        n_input = t - n_target
    if n_input < 1 or n_target < 0 or n_input + n_target > t:
        raise ValueError(
            f"need n_input >= 1 and n_input + n_target <= {t} frames, got "
            f"n_input={n_input}, n_target={n_target}"
        )
    used = (n_input + n_target) * c
    x = x.reshape(b, t * c, h, w)[:, :used]
    inputs, targets = [], []
    for size in scale_sizes(scales, h if base_size is None else base_size, h, w):
        y = resize(x, size)
        inp, tgt = y[:, : n_input * c], y[:, n_input * c :]
        if not batched:
            inp, tgt = inp[0], tgt[0]
        inputs.append(inp)
        targets.append(tgt)
    return inputs, targets


class MultiScale:
    """Callable form of :func:`multiscale`, usable as ``VideoClips(..., transform=MultiScale())``.

    The data set then yields ``(inputs, targets)`` (lists of tensors, one per scale) and the
    default ``DataLoader`` collation batches each scale separately.
    """

    def __init__(
        self,
        scales: Sequence = (4, 16, 32, 64),
        n_input: int | None = None,
        n_target: int = 1,
        base_size: int | None = None,
    ):
        self.scales = tuple(scales)
        self.n_input = n_input
        self.n_target = n_target
        self.base_size = base_size

    def __call__(self, clip: torch.Tensor):
        inputs, targets = multiscale(clip, self.scales, self.n_input, self.n_target, self.base_size)
        # Own the memory (the full-size scale is a view of the clip) so that workers send compact
        # tensors.
        return [i.contiguous() for i in inputs], [t.contiguous() for t in targets]

    def __repr__(self):
        return f"MultiScale(scales={self.scales}, n_input={self.n_input}, n_target={self.n_target})"
