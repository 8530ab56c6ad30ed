"""Train a frame-prediction model.

Usage::

    python -m pyframepred.train --model {seq2seq,autoencoder,multiscale} [--data DIR]
                                [--preset tiny|quick|small|full] [--config FILE] [options]
    torchrun --nproc_per_node N -m pyframepred.train --model ...      # data-parallel (DDP)

Without ``--data`` the embedded synthetic data set is used (generated into the cache folder on
first use). ``--preset quick`` (default) learns visibly within about 10 minutes on 2 CPU cores;
``small`` and ``full`` are for real runs (``full`` uses the architectures' paper sizes).
Options given on the command line override the config file (JSON or TOML, keys named like the
options, e.g. ``{"model": "autoencoder", "batch_size": 16}``), which overrides the preset.

Outputs in ``--out`` (default ``runs/<model>-<preset>``): ``last.pt`` (every validation and on
exit) and ``best.pt`` (best validation PSNR), ``history.json``, ``config.json``, ``loss.png``
(all written atomically), ``samples/step_XXXXXX.gif`` (expected | generated) and optionally
TensorBoard logs. The folder belongs to one run at a time (a lock); a new run refuses a folder
that holds checkpoints unless ``--overwrite``. ``--resume`` continues from ``last.pt`` (or the
given checkpoint) exactly: model, optimisers, schedulers, AMP scaler, random states, data order
and step are restored, and so are the run's settings (stored in the checkpoint) for every option
not given again; options given override them (``--lr`` included: the schedule continues from the
new rate), except those of the model and its data (model, preset, in/out frames, interval,
size, residual, batch norm, model_kwargs), which must match. The output folder defaults to the
checkpoint's folder; a larger ``--steps`` extends a run. ``--data`` is stored as an absolute path.
Checkpoints are read with ``weights_only=True`` (:mod:`pyframepred.training.checkpoint`): loading one never
runs code, and a file holding anything but tensors and plain values is refused.

Exit status: 0 done (or nothing to do: a resumed run already at ``--steps``); 2 bad arguments,
settings that do not fit the checkpoint, a refused or unreadable checkpoint, missing data, an
unwritable output folder, or an output folder in use by another run or holding another run's
checkpoints; 3 the loss, the weights or the optimiser state became NaN/Inf (training stops;
nothing non-finite is saved, the last finite checkpoint is left untouched); 4 a DataLoader worker
died (``last.pt`` saved first); 5 an output could not be written, e.g. a full disk (the previous
checkpoint is intact); 6 under torchrun, another process of the run failed (one line here,
its own error in its output); 130 interrupted by Ctrl-C (SIGINT) or SIGTERM, also when sent to the whole
process group, after saving ``last.pt`` at the current step.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from typing import Any, Sequence

import torch
import torch.distributed as dist

from ..data import EmptySplitError
from ..errors import PyframepredError
from ..training import Trainer
from ..training.config import RUN_PRESETS, load_config_file, setting_fields
from ..training.distributed import dist_env
from ..training.resume import resume_settings
from ..training.signals import StopFlag
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PEER_FAILED,
    OneLineParser,
    flag_wording,
    plain_warnings,
    report,
)

__all__ = ["main", "build_parser", "config_from_args"]


def _help_with_preset_default(name: str, text: str) -> str | None:
    """A setting's help, with the default of each run preset where the preset decides it."""
    if name not in RUN_PRESETS["quick"] or "default" in text:
        return text or None
    per = ", ".join(f"{preset} {values[name]}" for preset, values in RUN_PRESETS.items())
    return f"{text} (default per --preset: {per}; a model may change it)"


def build_parser() -> argparse.ArgumentParser:
    """The parser: ``--config``, ``--resume``, ``--overwrite``, then one option per setting of
    :class:`~pyframepred.training.TrainConfig` that has a flag (its help from the field)."""
    p = OneLineParser(
        prog="python -m pyframepred.train",
        description="Train a video frame prediction model.",
        epilog="Exit status: 0 done, 2 usage/data error (also: --out holds "
        "another run), 3 NaN/Inf loss or weights (nothing non-finite "
        "saved), 4 a data-loading worker died (checkpoint saved), 5 an "
        "output could not be written (e.g. disk full; previous checkpoint "
        "intact), 6 another torchrun process failed, 130 interrupted "
        "(checkpoint saved).",
    )
    p.add_argument(
        "--config", type=os.path.expanduser, help="JSON or TOML file of options (command line wins)"
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="continue from a checkpoint (default: <out>/last.pt) with its settings; "
        "options given override them, except the model and data layout",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace another run in --out (a new run refuses a folder with a run's "
        "files without it; its checkpoints, samples and event files go at the new run's "
        "first save), or a newer last.pt, or another run's, when resuming a checkpoint into it",
    )
    for f, tp in setting_fields():
        if not f.metadata.get("flag", True):
            continue
        args = typing.get_args(tp)
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        kw: dict[str, Any] = dict(help=_help_with_preset_default(f.name, f.metadata.get("help") or ""))
        choices = f.metadata.get("choices")
        if base is bool:
            kw.update(action=argparse.BooleanOptionalAction, default=None)
        else:
            kw.update(type=base)
            if choices is not None:
                kw.update(choices=tuple(choices()))
        p.add_argument("--" + f.name.replace("_", "-"), **kw)
    return p


def _parse(argv: Sequence[str] | None = None):
    """``(TrainConfig, resume path or None, loaded checkpoint or None, overwrite)``: settings
    from the command line over the config file, merged with the checkpoint's when resuming."""
    args = build_parser().parse_args(argv)
    values = {}
    if args.config:
        values.update(load_config_file(args.config))
    for k, v in vars(args).items():
        if k != "config" and v is not None:
            values[k] = v
    resume = values.pop("resume", None)
    overwrite = bool(values.pop("overwrite", False))
    cfg, resume, ckpt = resume_settings(values, resume)
    return cfg, resume, ckpt, overwrite


def config_from_args(argv: Sequence[str] | None = None):
    """``(TrainConfig, resume)`` from command-line arguments (and the config file)."""
    cfg, resume, _, _ = _parse(argv)
    return cfg, resume


def _start_line(cfg, trainer, resume) -> str:
    threads = torch.get_num_threads()
    return (
        f"training {cfg.model} ({cfg.preset}): {cfg.steps} steps of {cfg.batch_size} x "
        f"{trainer.world} clips on {trainer.device}"
        + (
            f" ({threads} thread{'s' if threads > 1 else ''}: {trainer.threads_reason})"
            if trainer.device.type == "cpu"
            else ""
        )
        + f"{' (fused ops)' if cfg.fused else ' (reference ops)'}; data {trainer.data_root} "
        f"({len(trainer.train_ds)} training clips); output {cfg.out}"
        + (f"; resumed at step {trainer.step} from {resume}" if resume else "")
    )


def _peer_failed(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a collective broken off by another process's end (gloo says so; a
    failure of this process's own, an NCCL error say, keeps its traceback)."""
    text = str(exc)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer"))


@plain_warnings(parser=build_parser)
def main(argv: Sequence[str] | None = None) -> int:
    trainer = cfg = None
    try:
        cfg, resume, ckpt, overwrite = _parse(argv)
        if ckpt is not None and int(ckpt["step"]) >= cfg.steps:
            if dist_env()[1] == 0:
                step = int(ckpt["step"])
                where = f"of {cfg.steps}" if step == cfg.steps else f"(past --steps {cfg.steps})"
                print(
                    f"checkpoint '{resume}' is already at step {step} {where}; nothing to do "
                    f"(pass --steps M with M > {step} to train further)",
                    file=sys.stderr,
                )
            return EXIT_OK
        trainer = Trainer(cfg, resume=resume, checkpoint=ckpt, overwrite=overwrite)
        trainer.resume_hint = f"continue with --resume {trainer.out / 'last.pt'}"
        del ckpt
        # From here a Ctrl-C/SIGTERM stops the run cleanly (saved, exit 130); fit() keeps
        # this handler for the loop.
        with StopFlag():
            if trainer.main:
                print(flag_wording(_start_line(cfg, trainer, resume), build_parser()), file=sys.stderr)
            result = trainer.fit()
    except PyframepredError as exc:
        hint = (
            " (on the command line: --test-fraction 0, or --split-dir DIR)"
            if isinstance(exc, EmptySplitError)
            else ""
        )
        return report(exc, build_parser(), hint)
    except RuntimeError as exc:
        if trainer is None or not trainer.distributed or not _peer_failed(exc):
            raise
        # Under torchrun, another process failed (its own error is in its output) and the
        # collective this one waited in broke off: say so in one line, not in a traceback.
        print(
            f"error: another process of this {trainer.world}-process run stopped (its output says "
            f"why); nothing saved past the last checkpoint in {cfg.out}",
            file=sys.stderr,
        )
        return EXIT_PEER_FAILED
    except KeyboardInterrupt:  # before training started (or a second Ctrl-C)
        print(
            "\ninterrupted"
            + ("" if trainer is None else f"; nothing saved past the last checkpoint in {cfg.out}"),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    finally:
        if trainer is not None:
            trainer.close()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if result["status"] == "interrupted":
        return EXIT_INTERRUPTED
    if trainer.main and result["val"] is not None:
        mm, bm = result["val"]["model_mean"], result["val"]["baseline_mean"]
        scores = "held-out" if cfg.split_dir is not None or cfg.test_fraction else "validation"
        print(
            f"done: {result['step']} steps; {scores} PSNR {mm['psnr']:.2f} dB vs copy-last "
            f"{bm['psnr']:.2f}, SSIM {mm['ssim']:.4f} vs {bm['ssim']:.4f}; checkpoints in "
            f"{cfg.out}",
            file=sys.stderr,
        )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
