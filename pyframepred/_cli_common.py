"""Pieces shared by the training, evaluation and prediction command lines."""
from __future__ import annotations

import argparse
import functools
import inspect
import math
import os
import re
import sys
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from . import checkpoint as ckpt_format
from .atomic import atomic_write, create_temp
from .models import MultiScaleDiscriminator, MultiScaleGenerator, Seq2Seq, SkipAutoencoder

MODELS = ("seq2seq", "autoencoder", "multiscale")


class CLIError(Exception):
    """A user error (bad argument, missing data): reported as one line, exit code 2."""


# ----------------------------------------------------------------------------- models
MODEL_CLASSES = {"seq2seq": Seq2Seq, "autoencoder": SkipAutoencoder,
                 "multiscale": MultiScaleGenerator}


def plain_warnings(main):
    """Decorates a CLI ``main``: warnings print as ``warning: <message>`` lines on stderr, without
    the source file and line Python's default format adds (that is for developers, not users)."""

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=file if file is not None else sys.stderr)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():  # restores showwarning afterwards
            warnings.showwarning = show
            return main(*args, **kwargs)

    return wrapper


def article(word: str) -> str:
    """``"an autoencoder"``, ``"a seq2seq"``."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def check_model_kwargs(name: str, kwargs: dict, reserved=("fused",)) -> None:
    """:class:`CLIError` naming the keys of ``kwargs`` that the model's constructor does not take
    (``reserved``: set by the command line, not by ``model_kwargs``)."""
    if name not in MODEL_CLASSES:
        raise CLIError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    params = inspect.signature(MODEL_CLASSES[name].__init__).parameters
    known = sorted(k for k in params if k != "self" and k not in reserved)
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise CLIError(f"model_kwargs: the {name} model takes no {', '.join(unknown)} "
                       f"(it takes {', '.join(known)})")


def build_model(name: str, kwargs: dict, fused: bool = True) -> nn.Module:
    """The predicting network of ``name`` (the generator for ``multiscale``). Unknown or bad
    keyword arguments are a :class:`CLIError`."""
    check_model_kwargs(name, kwargs)
    try:
        if name == "seq2seq":
            return Seq2Seq(fused=fused, **kwargs)
        return MODEL_CLASSES[name](**kwargs)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"cannot build the {name} model from {kwargs}: {exc}") from exc


def build_discriminator(kwargs: dict) -> nn.Module:
    return MultiScaleDiscriminator(**kwargs)


def set_fused(model: nn.Module, fused: bool) -> None:
    if isinstance(model, Seq2Seq):
        model.fused = fused


def rollout(model: nn.Module, inputs: Tensor, steps: int) -> Tensor:
    """``steps`` predicted frames ``(B, steps, C, H, W)`` from ``inputs`` ``(B, T, C, H, W)``."""
    return model.rollout(inputs, steps)


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; :class:`CLIError` if CUDA (or
    device ``N``) is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
    if m is None:
        raise CLIError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise CLIError(f"--device {device} was requested but no CUDA device is available")
    if m.group(1) is not None:
        n = torch.cuda.device_count()
        if int(m.group(1)) >= n:
            raise CLIError(f"--device {device}: there is no CUDA device {int(m.group(1))} "
                           f"({n} found: cuda:0 to cuda:{n - 1})")
    return torch.device(device)


# ----------------------------------------------------------------------------- files
def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _probe_writable(folder: Path, what: str) -> None:
    """Create and delete a file in ``folder``; :class:`CLIError` if that fails."""
    try:
        fd, tmp = create_temp(folder, "write-test")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise CLIError(f"cannot write {what}: {exc.strerror or exc}") from exc


def check_output_file(path, option: str = "--out") -> None:
    """Before the work starts: :class:`CLIError` unless the file ``path`` can be written (its
    folder exists or can be created, and is writable; ``path`` is not a folder)."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{option} '{path}' is a directory; give a file name")
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise CLIError(f"{option} '{path}': '{base}' exists and is not a directory")
    _probe_writable(base, f"{option} '{path}' (in '{base}')")


def prepare_output_dir(path, option: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents); :class:`CLIError` if it is a file or
    cannot be created or written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CLIError(f"{option} '{path}' exists and is not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise CLIError(f"{option} '{path}': '{base}' exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"cannot create the output folder {option} '{path}': "
                       f"{exc.strerror or exc}") from exc
    _probe_writable(path, f"to the output folder {option} '{path}'")
    return path


def load_checkpoint(path, map_location="cpu", fields=ckpt_format.EVAL_FIELDS,
                    task: str = "be used") -> dict:
    """The checkpoint at ``path``, read without running any code it might carry
    (:func:`pyframepred.checkpoint.load`); unreadable, foreign or tampered files and missing
    ``fields`` are a one-line :class:`CLIError`."""
    try:
        ckpt = ckpt_format.load(path, map_location=map_location)
        ckpt_format.check_fields(ckpt, path, fields, task)
    except ckpt_format.CheckpointError as exc:
        raise CLIError(str(exc)) from None
    return ckpt


def model_from_checkpoint(ckpt: dict, device, fused: bool = True) -> nn.Module:
    cfg = ckpt["config"]
    model = build_model(cfg["model"], ckpt["model_kwargs"], fused)
    load_state(model, ckpt["model"], "the checkpoint's model")
    return model.to(device).eval()


def load_state(module: nn.Module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``; a mismatch is a one-line :class:`CLIError`."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4] if len(lines) > 1 else lines)
        raise CLIError(f"{what} does not fit the network built from its settings "
                       f"({detail[:300]})") from exc


def checkpoint_data_root(cfg: dict):
    """The data folder a checkpoint was trained on (``None``: the embedded data set). A relative
    path (older checkpoints stored ``--data`` as given) that does not exist from here is a
    :class:`CLIError` that suggests ``--data``."""
    data = cfg.get("data")
    if data is None:
        return None
    if not os.path.isabs(data) and not os.path.exists(data):
        raise CLIError(f"the checkpoint's data folder '{data}' is a relative path (relative to "
                       f"the folder training ran in) and does not exist from here; pass "
                       f"--data DIR")
    return data


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


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (not the whole usage text), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def parse_fps(text: str) -> float:
    """argparse type of --fps: a positive number or fraction N/D (e.g. 25, 29.97, 30000/1001)."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(
            f"--fps takes a positive number or a fraction N/D (e.g. 30000/1001), got {text!r}")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--fps must be a positive number or a fraction N/D, got {text!r}")
    return value


def check_fps(fps) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise CLIError(f"--fps must be a positive number, got {fps}")


_CONTAINERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}


def write_animation(frames: np.ndarray, path, fps: float = 4.0) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as a GIF or (``.mp4``) an H.264 video, atomically
    (a temporary file renamed over ``path``: a symbolic link at ``path`` is replaced, its
    target is not written through)."""
    path = Path(path)
    check_fps(fps)
    suffix = path.suffix.lower()
    if suffix != ".gif" and suffix not in _CONTAINERS:
        raise CLIError(f"output must end in .gif or .mp4, got '{path.name}'")

    def write_gif(tmp):
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:],
                     duration=int(1000 / fps), loop=0)

    def write_video(tmp):
        import av

        f = frames
        h, w = f.shape[1:3]
        pad_h, pad_w = h % 2, w % 2  # yuv420p needs even sizes
        if pad_h or pad_w:
            f = np.pad(f, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        with av.open(os.fspath(tmp), "w", format=_CONTAINERS[suffix]) as out:
            stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height = f.shape[2], f.shape[1]
            stream.pix_fmt = "yuv420p"
            for frame in f:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    return atomic_write(path, write_gif if suffix == ".gif" else write_video)
