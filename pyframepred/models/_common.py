"""Helpers shared by the models: padding to a multiple, residual output, warping, losses."""

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


def warp(frames: Tensor, flow: Tensor, mode: str = "bicubic") -> Tensor:
    """``frames`` ``(B, C, H, W)`` moved by the displacement field ``flow`` ``(B, 2, H, W)``:
    output pixel ``p`` takes the sample of ``frames`` at ``p - flow(p)`` (``flow`` in pixels, x
    then y; content moves *by* the flow), the nearest edge pixel outside the frame. ``mode``:
    ``"bicubic"`` (default: a rollout resamples its own predictions step after step, and
    bilinear sampling blurs a little more each time) or ``"bilinear"``.
    Computed in float32 at least (sampling positions need the precision: a bf16 position is off
    by up to a quarter pixel at 64 px), float64 for float64 input."""
    dtype = torch.promote_types(torch.promote_types(frames.dtype, flow.dtype), torch.float32)
    _, _, h, w = frames.shape
    ys = torch.arange(h, device=flow.device, dtype=dtype)
    xs = torch.arange(w, device=flow.device, dtype=dtype)
    # normalised coordinates of the pixel centres (align_corners=False), then the source point
    gx = ((xs[None, None, :] - flow[:, 0].to(dtype)) * 2 + 1) / w - 1
    gy = ((ys[None, :, None] - flow[:, 1].to(dtype)) * 2 + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(frames.to(dtype), grid, mode=mode, padding_mode="border", align_corners=False)


def residual_tanh(last: Tensor, delta: Tensor) -> Tensor:
    """``tanh(atanh(last) + delta)``: a tanh output that equals ``last`` when ``delta = 0``.

    Frames are in [-1, 1]; ``last`` is clamped to ±0.999 so that ``atanh`` stays finite. Computed
    in float32 at least (float64 for float64 input): under bf16 autocast 0.999 rounds to 1, whose
    ``atanh`` is infinite.
    """
    dtype = torch.promote_types(torch.promote_types(last.dtype, delta.dtype), torch.float32)
    return torch.tanh(torch.atanh(last.to(dtype).clamp(-_EDGE, _EDGE)) + delta.to(dtype))


def clip_through(x: Tensor) -> Tensor:
    """``x`` clipped to [-1, 1], with the gradient of the identity: an output that, unlike a tanh,
    never saturates (frames with many pixels at the extremes -- Moving MNIST's black background
    -- drive a tanh output into its flat tails, where the gradient vanishes and training stops)."""
    return x + (x.clamp(-1.0, 1.0) - x).detach()


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
