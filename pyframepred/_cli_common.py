"""Pieces shared by the training, evaluation and prediction command lines."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .models import MultiScaleDiscriminator, MultiScaleGenerator, Seq2Seq, SkipAutoencoder

MODELS = ("seq2seq", "autoencoder", "multiscale")


class CLIError(Exception):
    """A user error (bad argument, missing data): reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- models
def build_model(name: str, kwargs: dict, fused: bool = True) -> nn.Module:
    """The predicting network of ``name`` (the generator for ``multiscale``)."""
    if name == "seq2seq":
        return Seq2Seq(fused=fused, **kwargs)
    if name == "autoencoder":
        return SkipAutoencoder(**kwargs)
    if name == "multiscale":
        return MultiScaleGenerator(**kwargs)
    raise CLIError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


def build_discriminator(kwargs: dict) -> nn.Module:
    return MultiScaleDiscriminator(**kwargs)


def set_fused(model: nn.Module, fused: bool) -> None:
    if isinstance(model, Seq2Seq):
        model.fused = fused


def rollout(model: nn.Module, inputs: Tensor, steps: int) -> Tensor:
    """``steps`` predicted frames ``(B, steps, C, H, W)`` from ``inputs`` ``(B, T, C, H, W)``."""
    return model.rollout(inputs, steps)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but no CUDA device is available")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise CLIError(f"--device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


# ----------------------------------------------------------------------------- files
def atomic_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
        raise CLIError(f"cannot read checkpoint '{path}': {exc}") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CLIError(f"'{path}' is not a pyframepred training checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict, device, fused: bool = True) -> nn.Module:
    cfg = ckpt["config"]
    model = build_model(cfg["model"], ckpt["model_kwargs"], fused)
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


# ----------------------------------------------------------------------------- pictures
def frames_to_uint8(x: Tensor) -> np.ndarray:
    """``(T, 3, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)``."""
    x = x.detach().float().cpu().clamp(-1, 1)
    return ((x * 127.5 + 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def side_by_side(expected: Tensor, generated: Tensor, n_input: int, scale: int = 2,
                 gap: int = 4) -> np.ndarray:
    """Frames of two clips next to each other (expected left, generated right), uint8
    ``(T, H', W', 3)``. The first ``n_input`` frames are the inputs (same on both sides); the
    predicted frames get a red border on the generated side."""
    e = frames_to_uint8(expected)
    g = frames_to_uint8(generated)
    if scale > 1:
        e = e.repeat(scale, 1).repeat(scale, 2)
        g = g.repeat(scale, 1).repeat(scale, 2)
    t, h, w, _ = e.shape
    out = np.full((t, h + 2 * gap, 2 * w + 3 * gap, 3), 255, np.uint8)
    for i in range(t):
        out[i, gap:gap + h, gap:gap + w] = e[i]
        x0 = 2 * gap + w
        if i >= n_input:
            out[i, gap - 2:gap + h + 2, x0 - 2:x0 + w + 2] = (220, 30, 30)
        out[i, gap:gap + h, x0:x0 + w] = g[i]
    return out


def write_animation(frames: np.ndarray, path, fps: float = 4.0) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as a GIF or (``.mp4``) an H.264 video."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(path, save_all=True, append_images=imgs[1:], duration=int(1000 / fps),
                     loop=0)
    elif suffix in (".mp4", ".mkv", ".mov"):
        import av

        h, w = frames.shape[1:3]
        pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sizes
        if pad_h or pad_w:
            frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        with av.open(os.fspath(path), "w") as out:
            stream = out.add_stream("libx264", rate=max(1, int(round(fps))))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    else:
        raise CLIError(f"output must end in .gif or .mp4, got '{path.name}'")
    return path
