"""Score a Moving MNIST checkpoint against copy-last and against blank frames, and record it.

    python benchmarks/moving_mnist.py CKPT [--mnist-test mnist_test_seq.npy] [--record]

The held-out sequences are those of ``python -m pyframepred.evaluate CKPT`` (fixed sequences of
the held-out digits, or the published test file). Besides copy-last, the record scores a
predictor of blank frames (every pixel the black background): on this data blank frames beat
copying the last frame, so a model is only learning the digits' motion when it beats *them*.
Metrics as ``evaluate`` reports them: MSE and MAE per frame summed over the 64x64 pixels in
[0, 1] (OpenSTL's definition), PSNR, SSIM (11x11 Gaussian window). ``--record`` writes
``results/moving_mnist_quick_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402

RESULT = HERE / "results" / "moving_mnist_quick_cpu.json"


class Blank(torch.nn.Module):
    """Predicts the background (-1) everywhere."""

    def rollout(self, inputs, steps):
        return torch.full((inputs.shape[0], steps, *inputs.shape[2:]), -1.0)


def main(argv=None) -> int:
    from pyframepred.evaluation import evaluate_model, heldout_clips
    from pyframepred.training.checkpoint import load_checkpoint, model_from_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--mnist-test", default=None)
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--record", action="store_true", help=f"write {RESULT.relative_to(HERE.parent)}")
    args = p.parse_args(argv)
    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    n_in, steps = cfg.get("in_frames", 10), cfg.get("val_steps", 10)
    ds = heldout_clips(cfg, None, n_in + steps, 0, 1, args.clips, args.mnist_test)
    model = model_from_checkpoint(ckpt, "cpu")
    res = evaluate_model(model, ds, n_in, steps, "cpu", 16, args.clips)
    blank = evaluate_model(Blank(), ds, n_in, steps, "cpu", 16, args.clips)
    record = {
        "what": f"{cfg['model']} {cfg.get('preset')} preset on Moving MNIST, {n_in} -> {steps} frames, "
        f"trained on the CPU, step {ckpt.get('step')} of {cfg.get('steps')}",
        "model_kwargs": ckpt["model_kwargs"],
        "held_out": args.mnist_test or f"{res['clips']} fixed sequences of the held-out digits",
        "metrics": "mse/mae: per frame, summed over 64x64 pixels in [0, 1] (OpenSTL's definition); "
        "psnr in dB; ssim 11x11 Gaussian",
        "machine": machine.describe(),
        "clips": res["clips"],
        "step": ckpt.get("step"),
        "model": res["model_mean"],
        "copy_last": res["baseline_mean"],
        "blank": blank["model_mean"],
        "model_mse_per_step": res["model"]["mse"],
        "copy_last_mse_per_step": res["baseline"]["mse"],
        "blank_mse_per_step": blank["model"]["mse"],
    }
    print(f"{'metric':<10} {'model':>10} {'copy-last':>10} {'blank':>10}")
    for m in ("mse", "mae", "psnr", "ssim"):
        print(
            f"{m:<10} {record['model'][m]:>10.3f} {record['copy_last'][m]:>10.3f} {record['blank'][m]:>10.3f}"
        )
    if args.record:
        RESULT.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
