"""Skip-connection autoencoder (U-Net style) predicting the next frame."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ._common import check_positive_int, conv_block, pad_to_multiple, residual_tanh, up_block


def stack_frames(x: Tensor, in_frames: int, channels: int) -> Tensor:
    """``(B, T, C, H, W)`` -> ``(B, T*C, H, W)`` (frames stacked on channels), checking shapes."""
    if x.dim() == 5:
        if x.shape[1] != in_frames or x.shape[2] != channels:
            raise ValueError(
                f"expected (B, {in_frames}, {channels}, H, W) input frames, got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], in_frames * channels, *x.shape[3:])
    if x.dim() == 4 and x.shape[1] == in_frames * channels:
        return x
    raise ValueError(
        f"expected (B, {in_frames}, {channels}, H, W) or stacked "
        f"(B, {in_frames * channels}, H, W) input frames, got {tuple(x.shape)}"
    )


class SkipAutoencoder(nn.Module):
    """Encoder-decoder with skip connections: ``in_frames`` frames -> the next frame.

    The input frames are stacked on channels (``in_frames * channels``). The encoder has one
    level per entry of ``widths`` (default ``[32, 64, 128, 256, 512]``); every level after the
    first halves H and W. The decoder goes back up with ``[512, 256, 128, 64, 32]``, each level
    concatenating the encoder features of the same resolution (skip connections), and a final
    1x1 convolution with tanh gives the frame in [-1, 1]. With ``residual=True`` the output is
    ``tanh(atanh(last input frame) + delta)``, so an untrained model copies the last frame.

    Fully convolutional: any frame size (replicate-padded to a multiple of
    ``2 ** (len(widths) - 1)``, output cropped back).

    ``forward(x)``: ``x`` ``(B, in_frames, C, H, W)`` or ``(B, in_frames * C, H, W)`` ->
    ``(B, C, H, W)``. :meth:`rollout` predicts several frames by sliding the window
    (T0-T3 -> T4, T1-T4 -> T5, ...).
    """

    def __init__(
        self,
        channels: int = 3,
        in_frames: int = 4,
        widths: Sequence[int] = (32, 64, 128, 256, 512),
        batch_norm: bool = True,
        residual: bool = True,
    ):
        super().__init__()
        widths = [check_positive_int(w, "widths") for w in widths]
        if not widths:
            raise ValueError("widths must not be empty")
        self.channels = check_positive_int(channels, "channels")
        self.in_frames = check_positive_int(in_frames, "in_frames")
        self.residual = bool(residual)
        self.multiple = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList()
        prev = in_frames * channels
        for i, w in enumerate(widths):
            self.down.append(
                nn.Sequential(
                    conv_block(prev, w, 3, 1 if i == 0 else 2, batch_norm), conv_block(w, w, 3, 1, batch_norm)
                )
            )
            prev = w
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(up_block(prev, w, batch_norm))
            self.merge.append(conv_block(2 * w, w, 3, 1, batch_norm))
            prev = w
        self.head = nn.Conv2d(prev, channels, 1)
        if self.residual:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = stack_frames(x, self.in_frames, self.channels)
        x, (h, w) = pad_to_multiple(x, self.multiple)
        skips = []
        y = x
        for level in self.down:
            y = level(y)
            skips.append(y)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1])):
            y = merge(torch.cat([up(y), skip], 1))
        delta = self.head(y)
        last = x[:, -self.channels :]
        out = residual_tanh(last, delta) if self.residual else torch.tanh(delta)
        return out[..., :h, :w]

    def rollout(self, inputs: Tensor, steps: int) -> Tensor:
        """Predict ``steps`` frames from the last ``in_frames`` of ``inputs`` (B, T, C, H, W)."""
        return rollout_sliding(self, inputs, steps, self.in_frames)


def rollout_sliding(model, inputs: Tensor, steps: int, in_frames: int) -> Tensor:
    steps = check_positive_int(steps, "steps")
    if inputs.dim() != 5 or inputs.shape[1] < in_frames:
        raise ValueError(f"rollout expects (B, T >= {in_frames}, C, H, W), got {tuple(inputs.shape)}")
    window = list(inputs[:, -in_frames:].unbind(1))
    outs = []
    for _ in range(steps):
        y = model(torch.stack(window, 1))
        outs.append(y)
        window = window[1:] + [y]
    return torch.stack(outs, 1)
