"""Reference gradient difference loss (see :func:`pyframepred.ops.gdl_loss`), in plain PyTorch."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_REDUCTIONS = ("none", "mean", "sum")


def gdl_loss(pred: Tensor, target: Tensor, alpha: float = 1.0, reduction: str = "mean") -> Tensor:
    """Same contract as :func:`pyframepred.ops.gdl_loss`, written with ordinary ops.

    ``| |t[y,x] - t[y-1,x]| - |p[y,x] - p[y-1,x]| |^alpha`` over the vertical and horizontal
    neighbour pairs of every image (the difference of absolute gradients), summed per image,
    then reduced. float16/bfloat16 inputs are computed in float32; the result has ``pred``'s
    dtype. Autograd gives subgradient 0 at kinks (``torch.abs`` has gradient ``sign(0) = 0``).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"gdl_loss: reduction must be one of 'none', 'mean' or 'sum', got {reduction!r}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha >= 1.0):
        raise ValueError(f"gdl_loss: alpha must be a finite number >= 1, got {alpha}")
    if not pred.is_floating_point():  # (as the fused op: integer images have no loss here)
        raise RuntimeError(
            f"gdl_loss: pred must be a floating-point tensor (float32, float64, float16 or "
            f"bfloat16), got {pred.dtype}"
        )
    if pred.dim() < 2:
        raise RuntimeError(
            f"gdl_loss: pred must have at least 2 dims (..., H, W), got shape {tuple(pred.shape)}"
        )
    if target.shape != pred.shape or target.dtype != pred.dtype or target.device != pred.device:
        raise RuntimeError(
            f"gdl_loss: target ({tuple(target.shape)}, {target.dtype}, "
            f"{target.device}) must match pred ({tuple(pred.shape)}, "
            f"{pred.dtype}, {pred.device})"
        )
    if pred.numel() == 0:
        raise RuntimeError(f"gdl_loss: pred and target must not be empty, got shape {tuple(pred.shape)}")
    dtype = pred.dtype
    if dtype in (torch.float16, torch.bfloat16):
        pred, target = pred.float(), target.float()

    def term(dt: Tensor, dp: Tensor) -> Tensor:
        d = dt.abs() - dp.abs()
        if alpha == 1.0:
            return d.abs()
        if alpha == 2.0:
            return d * d
        return d.abs().pow(alpha)

    vertical = term(target[..., 1:, :] - target[..., :-1, :], pred[..., 1:, :] - pred[..., :-1, :])
    horizontal = term(target[..., 1:] - target[..., :-1], pred[..., 1:] - pred[..., :-1])
    per_image = vertical.sum(dim=(-2, -1)) + horizontal.sum(dim=(-2, -1))
    if reduction == "none":
        out = per_image
    elif reduction == "sum":
        out = per_image.sum()
    else:
        out = per_image.sum() / pred.numel()
    return out.to(dtype)
