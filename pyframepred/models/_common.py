"""Helpers shared by the models: padding to a multiple, residual output, losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_EDGE = 0.999


def pad_to_multiple(x: Tensor, multiple: int):
    """Replicate-pad the last two dims of ``x`` up to a multiple of ``multiple``.

    Returns the padded tensor and ``(H, W)`` to crop back to. Lets the models take any frame
    size although their encoders halve the resolution several times.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    lead = x.shape[:-3]
    y = x.reshape(-1, *x.shape[-3:])
    y = F.pad(y, (0, pw, 0, ph), mode="replicate")
    return y.reshape(*lead, *y.shape[-3:]), (h, w)


def residual_tanh(last: Tensor, delta: Tensor) -> Tensor:
    """``tanh(atanh(last) + delta)``: a tanh output that equals ``last`` when ``delta = 0``.

    Frames are in [-1, 1]; ``last`` is clamped to ±0.999 so that ``atanh`` stays finite.
    """
    return torch.tanh(torch.atanh(last.clamp(-_EDGE, _EDGE)) + delta)


def gdl(
    pred: Tensor, target: Tensor, alpha: float = 1.0, fused: bool = True, reduction: str = "mean"
) -> Tensor:
    """Gradient difference loss (mean by default), fused op or plain-PyTorch reference."""
    if fused:
        from ..ops import gdl_loss
    else:
        from ..reference import gdl_loss
    return gdl_loss(pred, target, alpha, reduction)


def check_positive_int(value, name: str) -> int:
    if int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def conv_block(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, batch_norm: bool = False, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


def up_block(cin: int, cout: int, batch_norm: bool = False) -> nn.Sequential:
    """Transposed convolution doubling H and W (kernel 4, stride 2, padding 1)."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)
