"""Evaluate a trained checkpoint against the copy-last-frame baseline.

Usage::

    python -m pyframepred.evaluate CHECKPOINT [--data DIR] [--steps K] [--clips N] [--out FILE]
    python -m pyframepred.evaluate CHECKPOINT --protocol mathieu [--data DIR] [--steps 2]

Predicts ``K`` frames from the checkpoint's number of input frames on a fixed, reproducible set
of held-out clips (``VideoClips(train=False)``: the same clips on every run for the same
``--seed``), and reports PSNR, SSIM, sharpness difference, L2 and GDL per predicted step for the
model and for the baseline that repeats the last input frame (see :mod:`pyframepred.metrics`;
frames in [-1, 1], data range 2). Prints a table and writes JSON (default: ``eval.json`` next to
the checkpoint). Without ``--data`` it uses the data set the checkpoint was trained on.

``--protocol mathieu`` scores as Mathieu et al.'s test code does (:mod:`pyframepred.mathieu`):
moving pixels only, two recursive steps, their PSNR, SSIM and sharpness. ``--data`` may then be
the authors' UCF-101 test subset (one folder per clip with ``pred_*.png``, ``target_*.png`` and
the flow images that give the moving pixels), or any folder of videos, whose moving pixels are
then estimated (``--moving-threshold`` pixels of flow or more).

Frames are given to the model with its channels: colour frames turned grey (the mean of the
channels) for a grey model (Moving MNIST's), Moving MNIST's grey frames as RGB (the grey channel
repeated) for a colour one.

The checkpoint is read without running any code it may carry (``weights_only``; see
:mod:`pyframepred.training.checkpoint`); the JSON is written atomically (a symbolic link at ``--out`` is
replaced by the file, not written through).

Exit status: 0 done; 1 a model score is not finite; 2 bad arguments, data or checkpoint, or an
unwritable ``--out``; 130 interrupted by Ctrl-C (nothing written).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Sequence

from ..data import EmptySplitError
from ..errors import OutputError, PyframepredError
from ..evaluation import check_mnist_test, evaluate_model, format_table, heldout_clips
from ..io import atomic_write_json, check_output_file
from ..mathieu import MathieuTestSet, evaluate_mathieu, format_mathieu_table, with_computed_masks
from ..training.checkpoint import load_checkpoint, model_from_checkpoint
from ..training.config import check_seed
from ..training.distributed import resolve_device
from .common import OneLineParser, check_positive, interruptible, plain_warnings, report

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pyframepred.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoint",
        type=os.path.expanduser,
        help="a checkpoint written by pyframepred.train (last.pt/best.pt)",
    )
    p.add_argument(
        "--data", type=os.path.expanduser, help="folder of videos (default: the checkpoint's data set)"
    )
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
    p.add_argument(
        "--clips-per-video", type=int, default=2, help="clips drawn from each held-out video (default 2)"
    )
    p.add_argument("--seed", type=int, default=0, help="chooses the fixed clips (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per forward pass (default 16)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fused ConvLSTM kernels (default) or the reference",
    )
    p.add_argument(
        "--protocol",
        choices=("standard", "mathieu"),
        default="standard",
        help="standard (default): every pixel, the metrics of pyframepred.metrics; mathieu: Mathieu "
        "et al.'s test protocol (moving pixels, 2 recursive steps, their metric code)",
    )
    p.add_argument(
        "--moving-threshold",
        type=float,
        default=1.0,
        help="--protocol mathieu on videos: a pixel moves when its estimated flow is at least this "
        "many pixels (default 1.0)",
    )
    p.add_argument(
        "--out", type=os.path.expanduser, help="JSON file (default: eval.json next to the checkpoint)"
    )
    p.add_argument(
        "--mnist-test",
        type=os.path.expanduser,
        help="Moving MNIST checkpoints: the standard test sequences "
        "(mnist_test_seq.npy; default: the run's own held-out set)",
    )
    return p


@plain_warnings(parser=build_parser)
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return interruptible(_evaluate, parser, args)


def _check_json_out(out: Path) -> None:
    """The scores are JSON: ``out`` ends in ``.json`` (so that a mistyped ``--out last.pt`` does
    not replace a checkpoint) and is not a run's own ``config.json``/``history.json``."""
    if out.suffix.lower() != ".json":
        raise OutputError(f"`out` '{out}' must be a .json file (the scores are written as JSON)")
    run = out.parent
    if out.name in ("config.json", "history.json") and any(
        (run / n).exists() for n in ("last.pt", "best.pt")
    ):
        raise OutputError(f"`out` '{out}' is the {out.name} of the run in '{run}'; give another file name")


def _evaluate(parser, args, written: list) -> int:
    try:
        check_positive(args, ("steps", "clips", "clips_per_video", "batch_size"))
        check_seed(args.seed)
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint)
        out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
        _check_json_out(out)
        try:
            check_output_file(out, inputs={"the checkpoint": args.checkpoint})
        except OutputError as exc:
            if args.out:
                raise
            raise OutputError(
                f"{exc} (eval.json goes next to the checkpoint; `out` FILE to write it elsewhere)"
            ) from None
        cfg = ckpt["config"]
        mathieu = args.protocol == "mathieu"
        steps = args.steps or (2 if mathieu else cfg.get("val_steps", 4))
        n_in = cfg.get("in_frames", 4)
        channels = ckpt["model_kwargs"].get("channels", 3)
        model = model_from_checkpoint(ckpt, device, args.fused)
        if mathieu and args.data and MathieuTestSet.looks_like(args.data):
            check_mnist_test(args.mnist_test, args.data)
            ds = MathieuTestSet(args.data, n_in, steps, channels=channels)
            if ds.skipped:
                print(
                    f"skipped {ds.skipped} clip folder(s) of '{args.data}' without {n_in} input "
                    f"frames, {steps} targets and their flow images",
                    file=sys.stderr,
                )
        else:
            ds = heldout_clips(
                cfg,
                args.data,
                n_in + steps,
                args.seed,
                args.clips_per_video,
                args.clips,
                args.mnist_test,
                all_videos=args.all_videos,
                channels=channels,
                split_record=ckpt.get("split"),
            )
            if mathieu:
                ds = with_computed_masks(ds, n_in, steps, args.moving_threshold)
        if mathieu:
            result = evaluate_mathieu(model, ds, n_in, steps, device, args.batch_size, args.clips)
        else:
            result = evaluate_model(model, ds, n_in, steps, device, args.batch_size, args.clips)
    except EmptySplitError as exc:  # its advice names VideoClips' settings; evaluate has --all-videos
        advice = "Pass --all-videos to evaluate on clips of every video"
        return report(EmptySplitError(f"{exc.situation} {advice}"), parser)
    except PyframepredError as exc:
        return report(exc, parser)
    result.update(
        checkpoint=str(Path(args.checkpoint).resolve()),
        model=result["model"],
        model_name=cfg["model"],
        step=ckpt.get("step"),
        data=str(getattr(ds, "root", args.data)),
        seed=args.seed,
    )
    if mathieu:
        result["moving_pixels"] = (
            "the authors' flow images"
            if isinstance(ds, MathieuTestSet)
            else f"estimated flow of at least {args.moving_threshold:g} px"
        )
    print(format_mathieu_table(result) if mathieu else format_table(result))
    try:
        atomic_write_json(out, result, indent=2, allow_nan=True)
    except OSError as exc:
        print(f"error: cannot write --out '{out}': {exc}", file=sys.stderr)
        return 2
    written.append(out)
    print(f"wrote {out}")
    if mathieu:
        finite = all(
            math.isfinite(v) or c == 0
            for vs in result["model"].values()
            for v, c in zip(vs, result["model_counted"])
        )
    else:
        finite = all(math.isfinite(v) for v in result["model_mean"].values())
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
