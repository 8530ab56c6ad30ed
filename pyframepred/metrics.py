"""Image-quality metrics for predicted frames.

Every function takes ``pred`` and ``target`` of the same shape ``(..., C, H, W)`` and returns
one value per image, shape ``(...)`` (use ``.mean()`` to average). ``data_range`` is the span of
pixel values: the default ``2.0`` assumes frames in [-1, 1] as produced by
:mod:`pyframepred.data` and the models; pass ``255.0`` for uint8-scaled frames or ``1.0`` for
[0, 1]. PSNR, L2 and the OpenSTL sums depend on the range only through ``data_range``; SSIM's
luminance term is not shift-invariant and the sharpness difference not scale-invariant, so their
values for the same frames in [-1, 1] and in [0, 1] differ (compare within one convention).
Computation is in float32 (float64 inputs stay float64).

* :func:`psnr` -- peak signal-to-noise ratio in dB, ``10 log10(range^2 / MSE)``, the MSE floored
  at the noise power of 8-bit rounding (``(range / 255)^2 / 12``): a frame whose error is below
  that scores 58.92 dB, as an exact one does (see :func:`psnr`);
* :func:`ssim` -- structural similarity (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5,
  K1=0.01, K2=0.03, averaged over channels and valid window positions);
* :func:`sharpness` -- Mathieu et al. (2015)'s sharpness difference in dB,
  ``10 log10(range^2 / mean|(grad_i Y + grad_j Y) - (grad_i P + grad_j P)|)`` with
  ``grad_i Y = |Y[i, j] - Y[i-1, j]|``: higher means the prediction's edges match the target's;
* :func:`l2` -- mean squared error; :func:`gdl` -- gradient difference loss per image
  (``alpha=1``, mean over pixels);
* :func:`mse_sum`, :func:`mae_sum` -- the squared / absolute error *summed* over the pixels and
  channels of a frame with pixel values scaled to [0, 1]: "MSE" and "MAE" as OpenSTL and the
  Moving MNIST literature report them (per frame, then averaged over frames and clips).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PSNR_MAX", "psnr", "ssim", "sharpness", "l2", "gdl", "mse_sum", "mae_sum", "all_metrics"]


def _prep(pred: Tensor, target: Tensor, name: str):
    if pred.shape != target.shape:
        raise ValueError(
            f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    if pred.dim() < 3:
        raise ValueError(f"{name}: expected images (..., C, H, W), got {tuple(pred.shape)}")
    dt = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return pred.to(dt), target.to(dt)


def l2(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per image (in the frames' own units)."""
    p, t = _prep(pred, target, "l2")
    return (p - t).pow(2).mean(dim=(-3, -2, -1))


def mse_sum(pred: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Squared error summed over a frame's channels and pixels, pixels scaled to [0, 1]."""
    p, t = _prep(pred, target, "mse_sum")
    return ((p - t) / data_range).pow(2).sum(dim=(-3, -2, -1))


def mae_sum(pred: Tensor, target: Tensor, data_range: float = 2.0) -> Tensor:
    """Absolute error summed over a frame's channels and pixels, pixels scaled to [0, 1]."""
    p, t = _prep(pred, target, "mae_sum")
    return ((p - t) / data_range).abs().sum(dim=(-3, -2, -1))


#: The highest PSNR :func:`psnr` gives (dB): that of the noise of rounding to 8 bits.
PSNR_MAX = 10.0 * math.log10(12 * 255**2)


def psnr(pred: Tensor, target: Tensor, data_range: float = 2.0, eps: Optional[float] = None) -> Tensor:
    """PSNR in dB per image; ``data_range`` 2.0 for [-1, 1] frames.

    The MSE is floored at ``eps``, by default the noise power of rounding to 8 bits,
    ``(data_range / 255)^2 / 12``, so no frame scores above :data:`PSNR_MAX` (58.92 dB). Frames
    come from 8-bit video, where an error below that is not there to measure; without the
    floor an exact frame would score a number set by float rounding (106 dB with a floor of
    1e-10), and a few such frames -- a still scene that a video repeats exactly, which copying
    the last frame predicts exactly -- would outweigh every other frame in a mean of PSNRs."""
    if eps is None:
        eps = (data_range / 255.0) ** 2 / 12.0
    mse = l2(pred, target).clamp_min(eps)
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian(size: int, sigma: float, dtype, device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: Tensor,
    target: Tensor,
    data_range: float = 2.0,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """SSIM per image (mean over channels and valid positions); frames smaller than the window
    use a window of their own size."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"ssim: window must be a positive int, got {window!r}")
    if not sigma > 0 or not data_range > 0:
        raise ValueError(f"ssim: sigma and data_range must be positive, got {sigma} and {data_range}")
    p, t = _prep(pred, target, "ssim")
    lead = p.shape[:-3]
    c, h, w = p.shape[-3:]
    win = min(window, h, w)
    p = p.reshape(-1, c, h, w)
    t = t.reshape(-1, c, h, w)
    g = _gaussian(win, sigma, p.dtype, p.device)
    kh = g.view(1, 1, win, 1).expand(c, 1, win, 1)
    kw = g.view(1, 1, 1, win).expand(c, 1, 1, win)

    def blur(x):
        return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)

    mu_p, mu_t = blur(p), blur(t)
    spp = blur(p * p) - mu_p**2
    stt = blur(t * t) - mu_t**2
    spt = blur(p * t) - mu_p * mu_t
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * mu_p * mu_t + c1) * (2 * spt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (spp + stt + c2))
    return s.mean(dim=(-3, -2, -1)).reshape(lead)


def _grad_sum(x: Tensor) -> Tensor:
    # |x[i, j] - x[i-1, j]| + |x[i, j] - x[i, j-1]| on the (H-1, W-1) interior where both exist.
    gi = (x[..., 1:, 1:] - x[..., :-1, 1:]).abs()
    gj = (x[..., 1:, 1:] - x[..., 1:, :-1]).abs()
    return gi + gj


def sharpness(pred: Tensor, target: Tensor, data_range: float = 2.0, eps: float = 1e-10) -> Tensor:
    """Sharpness difference (Mathieu et al. 2015) in dB per image; higher is better."""
    p, t = _prep(pred, target, "sharpness")
    if p.shape[-1] < 2 or p.shape[-2] < 2:
        raise ValueError("sharpness: images must be at least 2x2")
    d = (_grad_sum(t) - _grad_sum(p)).abs().mean(dim=(-3, -2, -1)).clamp_min(eps)
    return 10.0 * torch.log10(data_range**2 / d)


def gdl(pred: Tensor, target: Tensor, alpha: float = 1.0) -> Tensor:
    """Gradient difference loss per image, mean over its pixels (reference implementation)."""
    from .reference import gdl_loss

    p, t = _prep(pred, target, "gdl")
    per = gdl_loss(p, t, alpha, "none")  # (..., C)
    return per.sum(-1) / (p.shape[-3] * p.shape[-2] * p.shape[-1])


def all_metrics(pred: Tensor, target: Tensor, data_range: float = 2.0) -> dict:
    """``{"psnr", "ssim", "sharpness", "l2", "gdl", "mse", "mae"}`` per image (``mse``/``mae``:
    :func:`mse_sum` / :func:`mae_sum`)."""
    return {
        "psnr": psnr(pred, target, data_range),
        "ssim": ssim(pred, target, data_range),
        "sharpness": sharpness(pred, target, data_range),
        "l2": l2(pred, target),
        "gdl": gdl(pred, target),
        "mse": mse_sum(pred, target, data_range),
        "mae": mae_sum(pred, target, data_range),
    }
