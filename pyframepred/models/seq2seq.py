"""ConvLSTM sequence-to-sequence model (the blog post's first model)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn import ConvLSTM
from ._common import (
    check_positive_int,
    clip_through,
    conv_block,
    pad_to_multiple,
    residual_tanh,
    up_block,
    warp,
)


class Seq2Seq(nn.Module):
    """Conv encoder -> ConvLSTM encoder -> ConvLSTM decoder -> deconv decoder.

    Each frame goes through a strided convolutional encoder (``conv_channels``, each layer halves
    H and W). The ConvLSTM encoder reads the feature maps of the first ``T - 1`` input frames; its
    last state starts the ConvLSTM decoder, whose first input is the last input frame (the blog
    post: 3 encoder frames, the 4th as first decoder input). Each decoder output goes through
    transposed convolutions back to a frame (tanh, values in [-1, 1]), which is the next decoder
    input at test time. In training, with ``teacher_forcing=True`` and ``targets`` given, the true
    frame is fed instead.

    Fully convolutional: any frame size works (frames are replicate-padded to a multiple of
    ``2 ** len(conv_channels)`` and the output is cropped back).

    Args:
        channels: colour channels of a frame (3).
        conv_channels: widths of the strided conv encoder (mirrored by the decoder).
        hidden_channels: ConvLSTM hidden channels per layer (int or list).
        num_layers: stacked ConvLSTM layers in the encoder and in the decoder.
        kernel_size: ConvLSTM kernel size.
        batch_norm: batch norm after each conv/deconv layer (the blog's tweak).
        teacher_forcing: feed true frames to the decoder in training (when targets are given).
        residual: predict ``tanh(atanh(previous frame) + delta)`` instead of ``tanh(delta)``, so
            that the untrained model starts from copying the last frame.
        motion: also predict a displacement field and move the previous frame by it (bicubic
            warping) before adding ``delta``: motion costs the decoder a smooth field instead of
            a redrawn texture, so a camera pan over a detailed scene is easy to express. Needs
            ``residual``; the untrained model still copies the last frame (zero field). The
            encoder then also sees each frame's change from the frame before (motion shows in
            the first layer at full resolution, where a pan of a pixel is visible), and each
            decoder stage gets the encoder's features of the frame it moves at its own
            resolution (skips), so that the field can stop at an object's edge. A third output,
            clamped to [0, 1], says where the frame changes at all (as the masks of Finn et
            al. 2016 keep a still background): where it is 0 the previous pixel is kept exactly,
            so still parts of a scene stay sharp and noise-free. The presets
            turn it on; ``False`` is the blog post's plain model (and older checkpoints).
        out_steps: default number of predicted frames.
        fused: use the fused ConvLSTM kernel (``False``: plain-PyTorch reference).
        output: ``"tanh"`` (default) bounds the frame with a tanh (with ``residual``, the
            previous frame's ``atanh`` plus ``delta``); ``"clip"`` adds ``delta`` to the frame
            and clips to [-1, 1] with the gradient passing the clip, so that it never saturates
            -- for frames with many pixels at the extremes, like Moving MNIST's black
            background, where a tanh output is driven into its flat tails and stops learning.

    ``forward(inputs, steps=None, targets=None)``: ``inputs`` ``(B, T, C, H, W)`` with ``T >= 1``
    -> predictions ``(B, steps, C, H, W)``.
    """

    def __init__(
        self,
        channels: int = 3,
        conv_channels: Sequence[int] = (32, 64),
        hidden_channels=64,
        num_layers: int = 1,
        kernel_size: int = 3,
        batch_norm: bool = False,
        teacher_forcing: bool = True,
        residual: bool = True,
        out_steps: int = 4,
        fused: bool = True,
        motion: bool = False,
        output: str = "tanh",
    ):
        super().__init__()
        if output not in ("tanh", "clip"):
            raise ValueError(f"output must be 'tanh' or 'clip', got {output!r}")
        self.output = output
        if motion and not residual:
            raise ValueError("motion=True moves the previous frame, so it needs residual=True")
        conv_channels = [check_positive_int(c, "conv_channels") for c in conv_channels]
        if not conv_channels:
            raise ValueError("conv_channels must not be empty")
        self.channels = check_positive_int(channels, "channels")
        self.out_steps = check_positive_int(out_steps, "out_steps")
        self.teacher_forcing = bool(teacher_forcing)
        self.residual = bool(residual)
        self.motion = bool(motion)
        self.multiple = 2 ** len(conv_channels)
        enc, prev = [], channels * (2 if self.motion else 1)
        for c in conv_channels:
            enc.append(conv_block(prev, c, 3, 2, batch_norm))
            enc.append(conv_block(c, c, 3, 1, batch_norm))
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.encoder_lstm = ConvLSTM(prev, hidden_channels, kernel_size, num_layers, fused=fused)
        self.decoder_lstm = ConvLSTM(prev, hidden_channels, kernel_size, num_layers, fused=fused)
        hid = self.decoder_lstm.hidden_channels[-1]
        # with motion, each decoder stage also takes the encoder's features of the frame being
        # moved at its resolution (skips; at full resolution that frame and its change): a field
        # decoded from the coarse state alone is smooth and drags still background along with
        # whatever moves next to it
        skip_channels = [channels * 2] + list(conv_channels[:-1]) if self.motion else [0] * len(conv_channels)
        dec, prev = [], hid
        for c, skip in zip(reversed(conv_channels), reversed(skip_channels)):
            dec.append(up_block(prev, c, batch_norm))
            dec.append(conv_block(c + skip, c, 3, 1, batch_norm))
            prev = c
        dec.append(nn.Conv2d(prev, channels + (3 if self.motion else 0), 3, 1, 1))
        self.decoder = nn.Sequential(*dec)
        # Variance-preserving init of the conv/deconv layers (PyTorch's default shrinks the
        # activations layer after layer, which makes the decoder's first updates tiny).
        for mod in list(self.encoder.modules()) + list(self.decoder.modules()):
            if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(mod.weight, a=0.2, nonlinearity="leaky_relu")
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        if self.residual:  # start as "copy the last frame"
            nn.init.zeros_(dec[-1].weight)
            nn.init.zeros_(dec[-1].bias)

    @property
    def fused(self) -> bool:
        return self.encoder_lstm.fused and self.decoder_lstm.fused

    @fused.setter
    def fused(self, value: bool) -> None:
        self.encoder_lstm.fused = value
        self.decoder_lstm.fused = value

    def _encode(self, frames: Tensor, before: Tensor, skips: Optional[list] = None) -> Tensor:
        """Features ``(B, T, F, h, w)`` of ``frames`` ``(B, T, C, H, W)``; ``before``: the frame
        before the first one (its change is the encoder's second input with ``motion``).
        ``skips``, a list: receives the input and each stage's output but the last, finest
        first (for the decoder's skips)."""
        b, t = frames.shape[:2]
        if self.motion:
            earlier = torch.cat([before[:, None], frames[:, :-1]], 1)
            frames = torch.cat([frames, frames - earlier], 2)
        f = frames.reshape(b * t, *frames.shape[2:])
        for i, layer in enumerate(self.encoder):
            if skips is not None and i % 2 == 0:  # each stage: strided conv, then conv
                skips.append(f)
            f = layer(f)
        return f.view(b, t, *f.shape[1:])

    def _decode(self, h: Tensor, skips: list) -> Tensor:
        """The decoder on the state ``h``; with ``motion`` each stage also gets its skip."""
        if not self.motion:
            return self.decoder(h)
        layers = list(self.decoder)
        for k, skip in enumerate(reversed(skips)):  # coarsest stage first
            h = layers[2 * k + 1](torch.cat([layers[2 * k](h), skip.to(h.dtype)], 1))
        # the head in float32 even under autocast: the field's positions, the where-map and
        # the change are what the frame is made of (a bf16 head made bf16 training drift from
        # float32 training by up to 15% per step; it is one small convolution)
        with torch.autocast(h.device.type, enabled=False):
            return layers[-1](h.float())

    def forward(
        self, inputs: Tensor, steps: Optional[int] = None, targets: Optional[Tensor] = None
    ) -> Tensor:
        if inputs.dim() != 5 or inputs.shape[2] != self.channels:
            raise ValueError(
                f"Seq2Seq expects inputs (B, T, {self.channels}, H, W), got {tuple(inputs.shape)}"
            )
        steps = self.out_steps if steps is None else check_positive_int(steps, "steps")
        force = self.training and self.teacher_forcing and targets is not None
        if force and (
            targets.dim() != 5
            or targets.shape[1] < steps - 1
            or targets.shape[0] != inputs.shape[0]
            or targets.shape[2:] != inputs.shape[2:]
        ):
            raise ValueError(
                f"targets must be (B, >= {steps - 1}, C, H, W) like inputs "
                f"{tuple(inputs.shape)}, got {tuple(targets.shape)}"
            )
        x, (h, w) = pad_to_multiple(inputs, self.multiple)
        if force:
            targets, _ = pad_to_multiple(targets, self.multiple)
        state = None
        if x.shape[1] > 1:
            _, state = self.encoder_lstm(self._encode(x[:, :-1], x[:, 0]), None)
        prev, before = x[:, -1], x[:, -2 if x.shape[1] > 1 else -1]
        outs = []
        for k in range(steps):
            skips: list = []
            hs, state = self.decoder_lstm(self._encode(prev[:, None], before, skips), state)
            delta = self._decode(hs[:, 0], skips)
            if self.motion:  # channels: the field (2), where to change (1), the change
                where = (delta[:, 2:3] + 0.5).clamp(0.0, 1.0)
                moved = warp(prev, delta[:, :2])
                base = prev + where * (moved - prev.to(moved.dtype))
                delta = where * delta[:, 3:]
            else:
                base = prev
            if self.output == "clip":
                y = clip_through(base.to(delta.dtype) + delta if self.residual else delta)
            else:
                y = residual_tanh(base.to(delta.dtype), delta) if self.residual else torch.tanh(delta)
            outs.append(y)
            before, prev = prev, (targets[:, k] if force and k < steps - 1 else y)
        return torch.stack(outs, 1)[..., :h, :w]

    @torch.no_grad()
    def rollout(self, inputs: Tensor, steps: int) -> Tensor:
        """Predict ``steps`` frames from ``inputs`` (no teacher forcing), ``(B, steps, C, H, W)``."""
        return self.forward(inputs, steps)
