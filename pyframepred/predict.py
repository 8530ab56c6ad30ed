"""Predict future frames of a video with a trained checkpoint.

Usage::

    python -m pyframepred.predict CHECKPOINT VIDEO --steps K --out out.gif   # or out.mp4

Reads ``in_frames + K`` frames of ``VIDEO`` (any file decord reads) from ``--start`` (default:
the middle of the video), ``--interval`` frames apart (default: the checkpoint's), scaled to
``--size`` (default: the training size; ``--size 0`` keeps the video's own size, which the fully
convolutional models accept), predicts ``K`` frames from the first ``in_frames`` and writes the
expected (left) and generated (right, red border on predicted frames) clips side by side. Frames
past the end of the video are shown grey on the expected side. Prints PSNR/SSIM per step.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import metrics as M
from .data import FrameReader
from ._cli_common import (CLIError, OneLineParser, check_fps, check_output_file,
                          load_checkpoint, model_from_checkpoint, parse_fps, plain_warnings, resolve_device, rollout,
                          side_by_side, write_animation)


def read_frames(video, n_in: int, steps: int, interval: int, size, start=None):
    """``(frames, n_real)``: float32 ``(n_in + steps, 3, H, W)`` in [-1, 1] (missing frames past
    the end are grey) and the number of frames read from the video."""
    path = Path(video)
    if path.is_dir():
        raise CLIError(f"'{path}' is a folder, not a video file")
    if not path.is_file():
        raise CLIError(f"video '{path}' does not exist")
    try:
        # FrameReader: decord at the requested size, around decord's output-size bug.
        vr = FrameReader(path, size=size)
    except Exception as exc:  # noqa: BLE001 - decord raises its own error types
        raise CLIError(f"cannot read video '{path}': {' '.join(str(exc).split())[:200]}") from exc
    n = len(vr)
    step = interval + 1
    need_in = (n_in - 1) * step + 1
    if n < need_in:
        raise CLIError(f"video '{path}' has {n} frame{'s' if n != 1 else ''}; {n_in} input "
                       f"frames {interval} apart need {need_in}")
    total = n_in + steps
    if start is None:
        start = max(0, (n - ((total - 1) * step + 1)) // 2)
    if not 0 <= start <= n - need_in:
        raise CLIError(f"--start must be in [0, {n - need_in}] for this video, got {start}")
    idx = [start + k * step for k in range(total)]
    real = [i for i in idx if i < n]
    try:
        arr = vr.get_batch(real)
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot decode video '{path}': {' '.join(str(exc).split())[:200]}") from exc
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    x = (x - 127.5) / 127.5
    if len(real) < total:
        x = torch.cat([x, torch.zeros(total - len(real), *x.shape[1:])])
    return x, len(real)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pyframepred.predict",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("video")
    p.add_argument("--steps", type=int, default=4, help="frames to predict (default 4)")
    p.add_argument("--out", default="prediction.gif", help=".gif or .mp4 (default prediction.gif)")
    p.add_argument("--start", type=int, help="first frame (default: middle of the video)")
    p.add_argument("--interval", type=int, help="frames skipped between frames (default: as trained)")
    p.add_argument("--size", type=int, nargs="+",
                   help="H [W] frame size (default: as trained; 0 = the video's own size)")
    p.add_argument("--scale", type=int, default=3, help="pixel zoom of the output (default 3)")
    p.add_argument("--fps", type=parse_fps, default=3.0,
                   help="frames per second of the output: a number or N/D, e.g. 30000/1001 "
                        "(default 3)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True)
    return p


@plain_warnings
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.steps < 1:
            raise CLIError(f"--steps must be >= 1, got {args.steps}")
        if Path(args.out).suffix.lower() not in (".gif", ".mp4"):
            raise CLIError(f"--out must end in .gif or .mp4, got '{args.out}'")
        check_fps(args.fps)
        if args.scale < 1:
            raise CLIError(f"--scale must be >= 1, got {args.scale}")
        check_output_file(args.out)
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint)
        cfg = ckpt["config"]
        n_in = cfg.get("in_frames", 4)
        interval = cfg.get("interval", 0) if args.interval is None else args.interval
        if interval < 0:
            raise CLIError("--interval must be >= 0")
        if args.size is None:
            s = cfg.get("size", 64)
            size = (s, s)
        elif args.size == [0]:
            size = None
        elif len(args.size) in (1, 2) and all(v > 0 for v in args.size):
            size = (args.size[0], args.size[-1])
        else:
            raise CLIError(f"--size takes H [W] (positive) or 0, got {args.size}")
        model = model_from_checkpoint(ckpt, device, args.fused)
        clip, n_real = read_frames(args.video, n_in, args.steps, interval, size, args.start)
        with torch.no_grad():
            pred = rollout(model, clip[None, :n_in].to(device), args.steps)[0].float().cpu()
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    gen = torch.cat([clip[:n_in], pred])
    frames = side_by_side(clip, gen, n_in, scale=args.scale)
    try:
        out = write_animation(frames, args.out, fps=args.fps)
    except OSError as exc:
        print(f"error: cannot write --out '{args.out}': {exc}", file=sys.stderr)
        return 2
    for k in range(args.steps):
        if n_in + k < n_real:
            t, p, b = clip[n_in + k], pred[k], clip[n_in - 1]
            print(f"step {k + 1}: PSNR {M.psnr(p, t).item():.2f} dB (copy-last "
                  f"{M.psnr(b, t).item():.2f}), SSIM {M.ssim(p, t).item():.4f} "
                  f"({M.ssim(b, t).item():.4f})")
    print(f"wrote {out} (expected | generated, {clip.shape[-2]}x{clip.shape[-1]} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
