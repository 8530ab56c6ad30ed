"""Multi-scale generator and discriminator (Mathieu, Couprie & LeCun 2015) and their loss."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.transforms import resize, scale_sizes
from ._common import check_positive_int, gdl, residual_tanh
from .autoencoder import rollout_sliding, stack_frames

#: Per-scale settings of the paper's generator (coarsest to finest, 4 scales): feature maps of
#: the hidden layers and kernel sizes of all layers.
PAPER_G_MAPS = ((128, 256, 128), (128, 256, 128), (128, 256, 512, 256, 128), (128, 256, 512, 256, 128))
PAPER_G_KERNELS = ((3, 3, 3, 3), (5, 3, 3, 5), (5, 3, 3, 3, 3, 5), (7, 5, 5, 5, 5, 7))
#: The paper's discriminator: conv feature maps, conv kernels, fully connected sizes per scale.
PAPER_D_MAPS = ((64,), (64, 128, 128), (128, 256, 256), (128, 256, 512, 128))
PAPER_D_KERNELS = ((3,), (3, 3, 3), (5, 5, 5), (7, 7, 5, 5))
PAPER_D_FC = ((512, 256), (1024, 512), (1024, 512), (1024, 512))


def _paper_index(k: int, n: int) -> int:
    # With fewer or more than 4 scales, the finest scales take the paper's finest settings.
    return min(3, max(0, 4 - n + k))


def _scaled(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


#: Negative slope of the generator's hidden activations.
_SLOPES = {"relu": 0.0, "leaky_relu": 0.2}


# A scale is a frame height for base_size-pixel frames: data.transforms.scale_sizes, one
# meaning for the data transforms and this model.


class _Scales(nn.Module):
    def __init__(self, channels, in_frames, scales, base_size):
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.in_frames = check_positive_int(in_frames, "in_frames")
        self.scales = tuple(check_positive_int(s, "scales") for s in scales)
        if not self.scales or list(self.scales) != sorted(self.scales):
            raise ValueError(f"scales must be a non-empty increasing list, got {scales!r}")
        self.base_size = check_positive_int(base_size, "base_size")
        if self.scales[-1] != self.base_size:
            raise ValueError(
                f"the finest of scales {list(self.scales)} must be base_size ({self.base_size}): "
                "the last stage predicts the whole frame"
            )

    def pyramid(self, x: Tensor) -> List[Tensor]:
        """Stacked input frames ``(B, T*C, H, W)`` (or ``(B, T, C, H, W)``) at every scale."""
        x = stack_frames(x, self.in_frames, self.channels)
        return [resize(x, hw) for hw in scale_sizes(self.scales, self.base_size, *x.shape[-2:])]

    def _as_pyramid(self, inputs) -> List[Tensor]:
        if isinstance(inputs, (list, tuple)):
            if len(inputs) != len(self.scales):
                raise ValueError(f"expected {len(self.scales)} scales of inputs, got {len(inputs)}")
            return [stack_frames(i, self.in_frames, self.channels) for i in inputs]
        return self.pyramid(inputs)


class MultiScaleGenerator(_Scales):
    """Coarse-to-fine generator: one convolutional stage per scale.

    Stage ``k`` sees the ``in_frames`` input frames stacked on channels at scale ``k`` and, from
    the second stage on, the prediction of stage ``k - 1`` upsampled to scale ``k``; it outputs a
    frame at scale ``k`` (tanh). Layers per stage follow the paper (``PAPER_G_MAPS``,
    ``PAPER_G_KERNELS``), their widths multiplied by ``width``. ReLU between layers (the
    paper's), or with ``activation="leaky_relu"`` a leaky ReLU of slope 0.2 (the presets'): a
    ReLU layer whose units all fall below zero outputs zeros from then on and never gets a
    gradient again -- the quick preset's finest stage lost its last hidden layer that way and
    only copied the last frame. ``residual=True`` makes each stage predict
    ``tanh(atanh(last input frame) + delta)``.

    ``forward(inputs)`` takes ``(B, T, C, H, W)``, stacked ``(B, T*C, H, W)`` frames, or a list of
    stacked frames per scale (as from :func:`pyframepred.data.multiscale`), and returns the list
    of predictions per scale (coarsest first). Any frame size works: scales are proportional
    (``scales`` are given for ``base_size``-pixel frames).
    """

    def __init__(
        self,
        channels: int = 3,
        in_frames: int = 4,
        scales: Sequence[int] = (4, 16, 32, 64),
        base_size: int = 64,
        width: float = 1.0,
        residual: bool = True,
        activation: str = "relu",
    ):
        super().__init__(channels, in_frames, scales, base_size)
        if activation not in _SLOPES:
            raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {activation!r}")
        self.residual = bool(residual)
        self.activation = activation
        slope = _SLOPES[activation]
        self.stages = nn.ModuleList()
        n = len(self.scales)
        for k in range(n):
            p = _paper_index(k, n)
            maps = [_scaled(c, width) for c in PAPER_G_MAPS[p]] + [channels]
            kernels = PAPER_G_KERNELS[p]
            prev = in_frames * channels + (channels if k > 0 else 0)
            layers: list[nn.Module] = []
            for i, (c, ks) in enumerate(zip(maps, kernels)):
                layers.append(nn.Conv2d(prev, c, ks, 1, ks // 2))
                if i < len(maps) - 1:
                    layers.append(nn.LeakyReLU(slope, inplace=True) if slope else nn.ReLU(inplace=True))
                prev = c
            # Variance-preserving init for the hidden layers (faster start than PyTorch's default).
            for mod in layers[:-1]:
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, a=slope, nonlinearity="leaky_relu")
                    nn.init.zeros_(mod.bias)
            if self.residual:
                nn.init.zeros_(layers[-1].weight)
                nn.init.zeros_(layers[-1].bias)
            self.stages.append(nn.Sequential(*layers))

    def forward(self, inputs) -> List[Tensor]:
        pyr = self._as_pyramid(inputs)
        preds: List[Tensor] = []
        c = self.channels
        for k, (stage, x) in enumerate(zip(self.stages, pyr)):
            if k > 0:
                x = torch.cat([x, resize(preds[-1], x.shape[-2:])], 1)
            delta = stage(x)
            last = pyr[k][:, -c:]
            preds.append(residual_tanh(last, delta) if self.residual else torch.tanh(delta))
        return preds

    def predict(self, inputs) -> Tensor:
        """The finest-scale prediction ``(B, C, H, W)``."""
        return self.forward(inputs)[-1]

    def rollout(self, inputs: Tensor, steps: int) -> Tensor:
        """Sliding-window prediction of ``steps`` frames, ``(B, steps, C, H, W)``."""
        return rollout_sliding(self.predict, inputs, steps, self.in_frames)


class MultiScaleDiscriminator(_Scales):
    """One discriminator per scale: convolutions, then a fully connected head to one logit.

    Each scale's network sees the stacked input frames and a (real or generated) next frame at
    that scale, ``(in_frames + 1) * channels`` channels. Conv layers (ReLU) follow the paper
    (``PAPER_D_MAPS``, ``PAPER_D_KERNELS``), then adaptive average pooling to
    ``pool x pool`` (so any frame size fits the fully connected layers), then fully connected
    layers (``PAPER_D_FC``, ReLU) and a final linear layer to one logit (real vs generated).

    ``forward(inputs, frames)``: ``inputs`` as for :class:`MultiScaleGenerator`, ``frames`` a list
    of ``(B, C, h_k, w_k)`` per scale -> list of logits ``(B,)`` per scale.
    """

    def __init__(
        self,
        channels: int = 3,
        in_frames: int = 4,
        scales: Sequence[int] = (4, 16, 32, 64),
        base_size: int = 64,
        width: float = 1.0,
        pool: int = 4,
    ):
        super().__init__(channels, in_frames, scales, base_size)
        self.pool = check_positive_int(pool, "pool")
        self.nets = nn.ModuleList()
        n = len(self.scales)
        for k in range(n):
            p = _paper_index(k, n)
            layers: list[nn.Module] = []
            prev = (in_frames + 1) * channels
            for c, ks in zip(PAPER_D_MAPS[p], PAPER_D_KERNELS[p]):
                c = _scaled(c, width)
                layers += [nn.Conv2d(prev, c, ks, 1, ks // 2), nn.ReLU(inplace=True)]
                prev = c
            layers += [nn.AdaptiveAvgPool2d(self.pool), nn.Flatten()]
            prev = prev * self.pool * self.pool
            for f in PAPER_D_FC[p]:
                f = _scaled(f, width)
                layers += [nn.Linear(prev, f), nn.ReLU(inplace=True)]
                prev = f
            layers.append(nn.Linear(prev, 1))
            self.nets.append(nn.Sequential(*layers))

    def forward(self, inputs, frames: Sequence[Tensor]) -> List[Tensor]:
        pyr = self._as_pyramid(inputs)
        if len(frames) != len(pyr):
            raise ValueError(f"expected {len(pyr)} frames (one per scale), got {len(frames)}")
        out = []
        for net, x, f in zip(self.nets, pyr, frames):
            if f.shape[-2:] != x.shape[-2:] or f.shape[1] != self.channels:
                raise ValueError(
                    f"frame of shape {tuple(f.shape)} does not match inputs {tuple(x.shape)} at this scale"
                )
            out.append(net(torch.cat([x, f], 1)).squeeze(1))
        return out


class MultiScaleLoss(nn.Module):
    """Mathieu et al.'s combined loss, summed over scales.

    Generator: ``lambda_l2 * L2 + lambda_gdl * GDL(alpha) + lambda_adv * adversarial`` where L2 is
    the squared error and GDL the gradient difference loss (:func:`pyframepred.ops.gdl_loss`, or
    the reference with ``fused=False``), both **summed over each image's pixels and averaged over
    the batch**, and adversarial the binary cross-entropy of the discriminator's logits on
    generated frames against "real". This is the paper's normalisation, which its weights
    (the defaults here: ``lambda_adv=0.05, lambda_l2=1, lambda_gdl=1, alpha=1``) assume: with
    per-pixel means instead, the adversarial term would weigh ``C*H*W`` times more against the
    image terms (12288 times at 64x64) and dominate training. Discriminator: binary
    cross-entropy, real -> 1 and generated -> 0, summed over scales.
    """

    def __init__(
        self,
        lambda_l2: float = 1.0,
        lambda_gdl: float = 1.0,
        lambda_adv: float = 0.05,
        alpha: float = 1.0,
        fused: bool = True,
    ):
        super().__init__()
        for name, v in (("lambda_l2", lambda_l2), ("lambda_gdl", lambda_gdl), ("lambda_adv", lambda_adv)):
            if not float(v) >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        if not float(alpha) >= 1:
            raise ValueError(f"alpha must be >= 1, got {alpha!r}")
        self.lambda_l2 = float(lambda_l2)
        self.lambda_gdl = float(lambda_gdl)
        self.lambda_adv = float(lambda_adv)
        self.alpha = float(alpha)
        self.fused = bool(fused)

    def generator(
        self,
        preds: Sequence[Tensor],
        targets: Sequence[Tensor],
        fake_logits: Optional[Sequence[Tensor]] = None,
    ):
        """Total generator loss and its parts ``{"l2", "gdl", "adv"}`` (unweighted sums)."""
        l2 = sum(F.mse_loss(p, t, reduction="sum") / p.shape[0] for p, t in zip(preds, targets))
        g = sum(gdl(p, t, self.alpha, self.fused, "sum") / p.shape[0] for p, t in zip(preds, targets))
        total = self.lambda_l2 * l2 + self.lambda_gdl * g
        parts = {"l2": l2.detach(), "gdl": g.detach()}
        if fake_logits is not None and self.lambda_adv > 0:
            adv = sum(F.binary_cross_entropy_with_logits(f, torch.ones_like(f)) for f in fake_logits)
            total = total + self.lambda_adv * adv
            parts["adv"] = adv.detach()
        return total, parts

    def discriminator(self, real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
        return sum(
            F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
            + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
            for r, f in zip(real_logits, fake_logits)
        )

    def extra_repr(self) -> str:
        return (
            f"lambda_l2={self.lambda_l2}, lambda_gdl={self.lambda_gdl}, "
            f"lambda_adv={self.lambda_adv}, alpha={self.alpha}, fused={self.fused}"
        )
