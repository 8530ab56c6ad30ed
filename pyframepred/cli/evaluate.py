"""Evaluate a trained checkpoint against the copy-last-frame baseline.

Usage::

    python -m pyframepred.evaluate CHECKPOINT [--data DIR] [--steps K] [--clips N] [--out FILE]

Predicts ``K`` frames from the checkpoint's number of input frames on a fixed, reproducible set
of held-out clips (``VideoClips(train=False)``: the same clips on every run for the same
``--seed``), and reports PSNR, SSIM, sharpness difference, L2 and GDL per predicted step for the
model and for the baseline that repeats the last input frame (see :mod:`pyframepred.metrics`;
frames in [-1, 1], data range 2). Prints a table and writes JSON (default: ``eval.json`` next to
the checkpoint). Without ``--data`` it uses the data set the checkpoint was trained on.

The checkpoint is read without running any code it may carry (``weights_only``; see
:mod:`pyframepred.training.checkpoint`); the JSON is written atomically (a symbolic link at ``--out`` is
replaced by the file, not written through).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from ..errors import PyframepredError
from ..evaluation import evaluate_model, format_table, heldout_clips
from ..io import atomic_write_json, check_output_file
from ..training.checkpoint import load_checkpoint, model_from_checkpoint
from ..training.distributed import resolve_device
from .common import OneLineParser, check_positive, plain_warnings, report

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pyframepred.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint written by pyframepred.train (last.pt/best.pt)")
    p.add_argument("--data", help="folder of videos (default: the checkpoint's data set)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="frames to predict (default: the checkpoint's validation steps)",
    )
    p.add_argument(
        "--all-videos",
        action="store_true",
        help="use every video of --data, not the test side of its split (footage the model never saw)",
    )
    p.add_argument("--clips", type=int, default=256, help="held-out clips to use (default 256)")
    p.add_argument("--clips-per-video", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="chooses the fixed clips (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fused ConvLSTM kernels (default) or the reference",
    )
    p.add_argument("--out", help="JSON file (default: eval.json next to the checkpoint)")
    p.add_argument(
        "--mnist-test",
        help="Moving MNIST checkpoints: the standard test sequences "
        "(mnist_test_seq.npy; default: the run's own held-out set)",
    )
    return p


@plain_warnings(parser=build_parser)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_positive(args, ("steps", "clips", "clips_per_video", "batch_size"))
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint)
        out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
        check_output_file(out)
        cfg = ckpt["config"]
        steps = args.steps or cfg.get("val_steps", 4)
        n_in = cfg.get("in_frames", 4)
        model = model_from_checkpoint(ckpt, device, args.fused)
        ds = heldout_clips(
            cfg,
            args.data,
            n_in + steps,
            args.seed,
            args.clips_per_video,
            args.clips,
            args.mnist_test,
            all_videos=args.all_videos,
        )
        result = evaluate_model(model, ds, n_in, steps, device, args.batch_size, args.clips)
    except PyframepredError as exc:
        return report(exc, parser)
    result.update(
        checkpoint=str(Path(args.checkpoint).resolve()),
        model=result["model"],
        model_name=cfg["model"],
        step=ckpt.get("step"),
        data=str(ds.root),
        seed=args.seed,
    )
    print(format_table(result))
    try:
        atomic_write_json(out, result, indent=2, allow_nan=True)
    except OSError as exc:
        print(f"error: cannot write --out '{out}': {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0 if all(math.isfinite(v) for v in result["model_mean"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
