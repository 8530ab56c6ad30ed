"""Predict future frames of a video with a trained checkpoint.

Usage::

    python -m pyframepred.predict CHECKPOINT VIDEO --steps K --out out.gif   # or out.mp4

Reads ``in_frames + K`` frames of ``VIDEO`` (any file decord reads) from ``--start`` (default:
the middle of the video), ``--interval`` frames apart (default: the checkpoint's; counted at
the frame rate the model was trained at, where it was trained with ``--fps``), scaled to
``--size`` (default: the training size as the short side, so the output keeps the video's aspect
ratio; ``--size H W`` exactly that; ``--size 0`` the video's own size: the fully convolutional
models accept any), predicts ``K`` frames from the first ``in_frames`` and writes the
expected (left) and generated (right, red border on predicted frames) clips side by side. Frames
past the end of the video are shown grey on the expected side. Prints PSNR/SSIM per step.
A grey model (Moving MNIST's) is given the frames grey (the mean of the colour channels).

``--fps``: an ``.mp4`` plays at exactly that rate, from 1/3600 (a frame an hour) to 1000; a GIF
holds whole hundredths of a second per frame, the nearest to ``1/fps``, and takes 100/65535 (a
frame every 655.35 s, the longest GIF delay) to 50 (viewers play shorter delays at a speed of
their own); other rates are refused before any work.

Exit status: 0 done; 2 bad arguments, video or checkpoint, or an unwritable ``--out``; 130
interrupted by Ctrl-C (nothing written: the output is written atomically).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from .. import metrics as M
from ..data.decode import read_clip
from ..errors import ConfigError, PyframepredError
from ..evaluation import match_channels
from ..io import check_fps, check_memory, check_output_file, side_by_side, write_animation
from ..models.registry import rollout
from ..training.checkpoint import load_checkpoint, model_from_checkpoint
from ..training.distributed import resolve_device
from .common import OneLineParser, check_positive, interruptible, parse_fps, plain_warnings, report

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pyframepred.predict", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoint",
        type=os.path.expanduser,
        help="a checkpoint written by pyframepred.train (last.pt/best.pt)",
    )
    p.add_argument(
        "video",
        type=os.path.expanduser,
        help="the video whose frames are the input (any format decord reads)",
    )
    p.add_argument("--steps", type=int, default=4, help="frames to predict (default 4)")
    p.add_argument(
        "--out",
        type=os.path.expanduser,
        default="prediction.gif",
        help=".gif or .mp4 (default prediction.gif)",
    )
    p.add_argument("--start", type=int, help="first frame (default: middle of the video)")
    p.add_argument("--interval", type=int, help="frames skipped between frames (default: as trained)")
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        help="S: the short side, the video's aspect ratio kept (default: the trained size); "
        "H W: exactly that size; 0: the video's own size",
    )
    p.add_argument("--scale", type=int, default=3, help="pixel zoom of the output (default 3)")
    p.add_argument(
        "--fps",
        type=parse_fps,
        default=3.0,
        help="frames per second of the output: a number or N/D, e.g. 30000/1001 (default 3); "
        ".mp4 1/3600 to 1000, .gif 100/65535 to 50",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the fused ConvLSTM kernels (default; --no-fused: the plain-PyTorch reference)",
    )
    return p


def _size(arg, cfg):
    """The frame size to decode at: an int (the short side; the video's aspect ratio kept),
    ``(H, W)``, or ``None`` (the video's own size)."""
    if arg is None:
        return int(cfg.get("size", 64))
    if arg == [0]:
        return None
    if len(arg) == 1 and arg[0] > 0:
        return arg[0]
    if len(arg) == 2 and all(v > 0 for v in arg):
        return (arg[0], arg[1])
    raise ConfigError(f"`size` takes S (the short side), H W, or 0, got {arg}")


@plain_warnings(parser=build_parser)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return interruptible(_predict, parser, args)


def _predict(parser, args, written: list) -> int:
    try:
        check_positive(args, ("steps", "scale"))
        suffix = Path(args.out).suffix.lower()
        if suffix not in (".gif", ".mp4"):
            raise ConfigError(f"`out` must end in .gif or .mp4, got '{args.out}'")
        check_fps(args.fps, suffix)
        check_output_file(args.out, inputs={"the input video": args.video, "the checkpoint": args.checkpoint})
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint)
        cfg = ckpt["config"]
        n_in = cfg.get("in_frames", 4)
        interval = cfg.get("interval", 0) if args.interval is None else args.interval
        if interval < 0:
            raise ConfigError("`interval` must be >= 0")
        size = _size(args.size, cfg)
        model = model_from_checkpoint(ckpt, device, args.fused)
        clip, n_real = read_clip(args.video, n_in, args.steps, interval, size, args.start, cfg.get("fps"))
        clip = match_channels(clip, ckpt["model_kwargs"].get("channels", 3))  # grey for a grey model
        h, w, s = clip.shape[-2], clip.shape[-1], args.scale
        check_memory(  # the side-by-side frames (and the two zoomed clips they are made of)
            len(clip) * 3 * ((h * s + 8) * (2 * w * s + 12) + 2 * h * s * w * s),
            f"the output at `scale` {s} ({len(clip)} frames of {h * s}x{w * s}, twice)",
            "use a smaller `scale`, fewer `steps` or a smaller `size`",
        )
        with torch.no_grad():
            pred = rollout(model, clip[None, :n_in].to(device), args.steps)[0].float().cpu()
        gen = torch.cat([clip[:n_in], pred])
        out = write_animation(side_by_side(clip, gen, n_in, scale=args.scale), args.out, fps=args.fps)
        written.append(out)
    except PyframepredError as exc:
        return report(exc, parser)
    except OSError as exc:
        print(f"error: cannot write --out '{args.out}': {exc}", file=sys.stderr)
        return 2
    for k in range(args.steps):
        if n_in + k < n_real:
            t, p, b = clip[n_in + k], pred[k], clip[n_in - 1]
            print(
                f"step {k + 1}: PSNR {M.psnr(p, t).item():.2f} dB (copy-last "
                f"{M.psnr(b, t).item():.2f}), SSIM {M.ssim(p, t).item():.4f} "
                f"({M.ssim(b, t).item():.4f})"
            )
    scored = max(0, min(args.steps, n_real - n_in))
    if scored < args.steps:  # the video ends first: nothing to compare those steps with
        steps = f"step {scored + 1}" + (f"-{args.steps}" if scored + 1 < args.steps else "")
        print(f"{steps}: no score, the video has no frame there (its expected frames are grey)")
    print(f"wrote {out} (expected | generated, {clip.shape[-2]}x{clip.shape[-1]} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
