"""ConvLSTM sequence-to-sequence model (the blog post's first model)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..nn import ConvLSTM
from ._common import check_positive_int, conv_block, pad_to_multiple, residual_tanh, up_block


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
        out_steps: default number of predicted frames.
        fused: use the fused ConvLSTM kernel (``False``: plain-PyTorch reference).

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
    ):
        super().__init__()
        conv_channels = [check_positive_int(c, "conv_channels") for c in conv_channels]
        if not conv_channels:
            raise ValueError("conv_channels must not be empty")
        self.channels = check_positive_int(channels, "channels")
        self.out_steps = check_positive_int(out_steps, "out_steps")
        self.teacher_forcing = bool(teacher_forcing)
        self.residual = bool(residual)
        self.multiple = 2 ** len(conv_channels)
        enc, prev = [], channels
        for c in conv_channels:
            enc.append(conv_block(prev, c, 3, 2, batch_norm))
            enc.append(conv_block(c, c, 3, 1, batch_norm))
            prev = c
        self.encoder = nn.Sequential(*enc)
        self.encoder_lstm = ConvLSTM(prev, hidden_channels, kernel_size, num_layers, fused=fused)
        self.decoder_lstm = ConvLSTM(prev, hidden_channels, kernel_size, num_layers, fused=fused)
        hid = self.decoder_lstm.hidden_channels[-1]
        dec, prev = [], hid
        for c in reversed(conv_channels):
            dec.append(up_block(prev, c, batch_norm))
            dec.append(conv_block(c, c, 3, 1, batch_norm))
            prev = c
        dec.append(nn.Conv2d(prev, channels, 3, 1, 1))
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

    def _encode(self, frames: Tensor) -> Tensor:  # (B, T, C, H, W) -> (B, T, F, h, w)
        b, t = frames.shape[:2]
        f = self.encoder(frames.reshape(b * t, *frames.shape[2:]))
        return f.view(b, t, *f.shape[1:])

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
            _, state = self.encoder_lstm(self._encode(x[:, :-1]), None)
        prev = x[:, -1]
        outs = []
        for k in range(steps):
            hs, state = self.decoder_lstm(self._encode(prev[:, None]), state)
            delta = self.decoder(hs[:, 0])
            y = residual_tanh(prev.to(delta.dtype), delta) if self.residual else torch.tanh(delta)
            outs.append(y)
            prev = targets[:, k] if force and k < steps - 1 else y
        return torch.stack(outs, 1)[..., :h, :w]

    @torch.no_grad()
    def rollout(self, inputs: Tensor, steps: int) -> Tensor:
        """Predict ``steps`` frames from ``inputs`` (no teacher forcing), ``(B, steps, C, H, W)``."""
        return self.forward(inputs, steps)
