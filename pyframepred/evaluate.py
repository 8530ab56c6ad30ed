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
:mod:`pyframepred.checkpoint`); the JSON is written atomically (a symbolic link at ``--out`` is
replaced by the file, not written through).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from . import metrics as M
from .atomic import atomic_write_json
from ._cli_common import (CLIError, OneLineParser, check_output_file, checkpoint_data_root,
                          load_checkpoint, model_from_checkpoint, plain_warnings, resolve_device, rollout)

METRICS = ("psnr", "ssim", "sharpness", "l2", "gdl")


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, dataset: Dataset, n_input: int, steps: int,
                   device="cpu", batch_size: int = 8, max_clips: int | None = None,
                   autocast_dtype: torch.dtype | None = None) -> dict:
    """Metrics per predicted step, model vs copy-last-frame baseline.

    ``dataset`` yields clips ``(n_input + steps, 3, H, W)`` in [-1, 1]; the first ``max_clips``
    are used, in order. Returns ``{"clips", "steps", "model": {metric: [per step]},
    "baseline": {...}, "model_mean": {metric: mean}, "baseline_mean": {...}}``.
    """
    device = torch.device(device)
    if max_clips is not None and max_clips < len(dataset):
        dataset = Subset(dataset, range(max_clips))
    if len(dataset) == 0:
        raise CLIError("no held-out clips to evaluate on")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = model.training
    model.eval()
    sums = {w: {m: torch.zeros(steps, dtype=torch.float64) for m in METRICS}
            for w in ("model", "baseline")}
    n = 0
    try:
        for clips in loader:
            clips = clips.to(device, non_blocking=True)
            if clips.shape[1] < n_input + steps:
                raise CLIError(f"clips have {clips.shape[1]} frames, need {n_input + steps}")
            inputs = clips[:, :n_input]
            target = clips[:, n_input:n_input + steps].float()
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                pred = rollout(model, inputs, steps)
            pred = pred.float()
            base = inputs[:, -1:].float().expand_as(target)
            for who, p in (("model", pred), ("baseline", base)):
                vals = M.all_metrics(p, target)
                for m in METRICS:
                    sums[who][m] += vals[m].double().sum(0).cpu()
            n += clips.shape[0]
    finally:
        model.train(was_training)
    out = {"clips": n, "steps": steps}
    for who in ("model", "baseline"):
        out[who] = {m: (sums[who][m] / n).tolist() for m in METRICS}
        out[f"{who}_mean"] = {m: float(sum(v) / len(v)) for m, v in out[who].items()}
    return out


def format_table(result: dict) -> str:
    steps = result["steps"]
    lines = [f"{result['clips']} clips, {steps} predicted steps (model | copy-last baseline)"]
    head = f"{'step':>5} " + " ".join(f"{m:>19}" for m in METRICS)
    lines.append(head)
    for k in range(steps):
        cells = []
        for m in METRICS:
            cells.append(f"{result['model'][m][k]:8.4f} | {result['baseline'][m][k]:8.4f}")
        lines.append(f"{k + 1:>5} " + " ".join(f"{c:>19}" for c in cells))
    cells = [f"{result['model_mean'][m]:8.4f} | {result['baseline_mean'][m]:8.4f}" for m in METRICS]
    lines.append(f"{'mean':>5} " + " ".join(f"{c:>19}" for c in cells))
    lines.append("(PSNR, SSIM, sharpness: higher is better; L2, GDL: lower is better)")
    return "\n".join(lines)


def heldout_clips(cfg: dict, data, frames: int, seed: int = 0, clips_per_video: int = 1):
    from .data import NoVideosError, VideoClips, default_dataset_root

    if data is None:
        data = checkpoint_data_root(cfg)
    root = data if data is not None else default_dataset_root()
    try:
        return VideoClips(root, frames=frames, interval=cfg.get("interval", 0),
                          size=cfg.get("size", 64), train=False, seed=seed,
                          clips_per_video=clips_per_video, progress=False)
    except (FileNotFoundError, NotADirectoryError, NoVideosError) as exc:
        raise CLIError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pyframepred.evaluate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint written by pyframepred.train (last.pt/best.pt)")
    p.add_argument("--data", help="folder of videos (default: the checkpoint's data set)")
    p.add_argument("--steps", type=int, default=None,
                   help="frames to predict (default: the checkpoint's validation steps)")
    p.add_argument("--clips", type=int, default=256, help="held-out clips to use (default 256)")
    p.add_argument("--clips-per-video", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="chooses the fixed clips (default 0)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=True,
                   help="fused ConvLSTM kernels (default) or the reference")
    p.add_argument("--out", help="JSON file (default: eval.json next to the checkpoint)")
    return p


@plain_warnings
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.steps is not None and args.steps < 1:
            raise CLIError(f"--steps must be >= 1, got {args.steps}")
        for name in ("clips", "clips_per_video", "batch_size"):
            if getattr(args, name) < 1:
                raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got "
                               f"{getattr(args, name)}")
        device = resolve_device(args.device)
        ckpt = load_checkpoint(args.checkpoint)
        out = Path(args.out) if args.out else Path(args.checkpoint).with_name("eval.json")
        check_output_file(out)
        cfg = ckpt["config"]
        steps = args.steps or cfg.get("val_steps", 4)
        n_in = cfg.get("in_frames", 4)
        model = model_from_checkpoint(ckpt, device, args.fused)
        ds = heldout_clips(cfg, args.data, n_in + steps, args.seed, args.clips_per_video)
        result = evaluate_model(model, ds, n_in, steps, device, args.batch_size, args.clips)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result.update(checkpoint=str(Path(args.checkpoint).resolve()), model=result["model"],
                  model_name=cfg["model"], step=ckpt.get("step"), data=str(ds.root),
                  seed=args.seed)
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
