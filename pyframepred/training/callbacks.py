"""What happens around the training loop: progress, TensorBoard, the loss plot, sample GIFs.

A :class:`Callback` gets the trainer at fixed points of :meth:`Trainer.fit
<pyframepred.training.Trainer.fit>`; the trainer makes the built-in ones from its settings
(:func:`default_callbacks`) and appends those passed as ``callbacks=``. Hooks, in order:

* ``on_fit_start(trainer)`` -- before the first step;
* ``on_train_step(trainer, record)`` -- after each optimiser update (``record``: the step's losses,
  ``step``, ``lr``); ``on_log(trainer, record, clips_per_s)`` every ``log_every`` steps;
* ``on_save(trainer)`` -- after each checkpoint save; ``on_validation(trainer, record, best)``
  -- after a validation and its save (``record``: the validation row of the history);
* ``on_step_end(trainer)`` -- when the step, with its validation and save, is over;
* ``on_fit_end(trainer, status)`` -- after the last step of a run that ended (``"done"`` or
  ``"interrupted"``); ``on_exit(trainer)`` -- always, last (release resources).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError, OutputWriteError
from ..io import atomic_write, side_by_side, write_animation
from ..models.registry import rollout

__all__ = [
    "Callback",
    "StepHook",
    "ProgressBar",
    "TensorBoard",
    "LossPlot",
    "Samples",
    "default_callbacks",
    "write_sample",
    "plot_history",
]


class Callback:
    """Base class: every hook does nothing."""

    def on_fit_start(self, trainer) -> None: ...
    def on_train_step(self, trainer, record: dict) -> None: ...
    def on_log(self, trainer, record: dict, clips_per_s: float) -> None: ...
    def on_validation(self, trainer, record: dict, best: bool) -> None: ...
    def on_save(self, trainer) -> None: ...
    def on_step_end(self, trainer) -> None: ...
    def on_fit_end(self, trainer, status: str) -> None: ...
    def on_exit(self, trainer) -> None: ...


class StepHook(Callback):
    """Calls ``fn(trainer, step)`` after every optimiser update."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def on_train_step(self, trainer, record):
        self.fn(trainer, trainer.step)


class ProgressBar(Callback):
    """A tqdm bar with the loss and clips/s; with ``progress=False`` (a log file, a batch job) a
    line of them every ``log_every`` steps instead (on the main process: ``lines``). Validation
    lines are printed either way."""

    def __init__(self, enabled: bool, lines: bool = True):
        self.enabled, self.lines, self.bar = enabled, lines, None

    def on_fit_start(self, trainer):
        from tqdm.auto import tqdm

        cfg = trainer.cfg
        self.bar = tqdm(
            total=cfg.steps,
            initial=trainer.step,
            desc=f"train {cfg.model}",
            unit="step",
            disable=not self.enabled,
            dynamic_ncols=True,
        )

    def on_train_step(self, trainer, record):
        self.bar.update(1)

    def on_log(self, trainer, record, clips_per_s):
        if self.enabled:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}", clips_s=f"{clips_per_s:.1f}")
        elif self.lines:
            steps, loss = f"{trainer.step}/{trainer.cfg.steps}", record["loss"]
            print(f"step {steps}: loss {loss:.4f}, {clips_per_s:.1f} clips/s", file=sys.stderr, flush=True)

    def on_validation(self, trainer, record, best):
        self.bar.write(
            file=sys.stderr,
            s=(
                f"step {record['step']}: val PSNR {record['psnr']:.2f} dB (copy-last "
                f"{record['baseline_psnr']:.2f}), SSIM {record['ssim']:.4f} "
                f"({record['baseline_ssim']:.4f})" + (" [best]" if best else "")
            ),
        )

    def on_exit(self, trainer):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class TensorBoard(Callback):
    """Training and validation scalars in ``<out>/tensorboard``."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigError(
                "`tensorboard` needs the tensorboard package (pip install 'pyframepred[tensorboard]')"
            ) from exc
        self.folder = Path(folder)
        self._before = set(self.folder.iterdir()) if self.folder.is_dir() else None
        self.writer = SummaryWriter(os.fspath(folder))

    def on_log(self, trainer, record, clips_per_s):
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(f"train/{k}", v, trainer.step)
        self.writer.add_scalar("train/clips_per_s", clips_per_s, trainer.step)

    def on_validation(self, trainer, record, best):
        for k, v in record.items():
            if k != "step":
                self.writer.add_scalar(f"val/{k}", v, trainer.step)

    def on_exit(self, trainer):
        self.writer.close()
        if not getattr(trainer, "saved_this_run", False):
            # a run that ends before its first checkpoint leaves no event file of its own (it
            # would make the next run into the folder ask for `overwrite`)
            before = self._before or set()
            for p in set(self.folder.iterdir()) - before:
                p.unlink(missing_ok=True)
            if self._before is None:
                try:
                    self.folder.rmdir()
                except OSError:
                    pass


class LossPlot(Callback):
    """``<out>/loss.png`` (training loss, validation PSNR vs copy-last) after every save; a plot
    that cannot be written is a warning, not a failed run."""

    def on_save(self, trainer):
        path = trainer.out / "loss.png"
        try:
            plot_history(trainer.history, path, f"{trainer.cfg.model} ({trainer.cfg.preset})")
        except OSError as exc:
            print(f"warning: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)


class Samples(Callback):
    """``<out>/samples/step_XXXXXX.gif`` every ``sample_every`` steps and ``final.gif`` at the
    end of a finished run (expected | generated, on the first validation clips)."""

    def __init__(self, every: int):
        self.every = every

    def _write(self, trainer, tag: str) -> None:
        try:
            write_sample(trainer, tag)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write the sample '{tag}' in '{trainer.out}': {exc.strerror or exc}"
            ) from exc

    def on_step_end(self, trainer):
        if self.every and trainer.step % self.every == 0:
            self._write(trainer, f"step_{trainer.step:06d}")

    def on_fit_end(self, trainer, status):
        if status == "done":
            self._write(trainer, "final")


def default_callbacks(trainer) -> list:
    """The built-in callbacks for the trainer's settings (only the main process writes)."""
    cfg = trainer.cfg
    out = [ProgressBar(cfg.progress and trainer.main, lines=trainer.main)]
    if trainer.main:
        if cfg.tensorboard:
            out.append(TensorBoard(trainer.out / "tensorboard"))
        out += [LossPlot(), Samples(cfg.sample_every)]
    return out


# ----------------------------------------------------------------------------- pictures
def write_sample(trainer, tag: str) -> Optional[Path]:
    """Expected | generated GIF of up to 4 validation clips, ``<out>/samples/<tag>.gif``."""
    cfg = trainer.cfg
    n = min(4, len(trainer.val_ds))
    clips = torch.stack([trainer.val_ds[i] for i in range(n)]).to(trainer.device)
    model = trainer.inference_model
    was_training = model.training
    model.eval()
    with torch.no_grad():
        pred = rollout(model, clips[:, : cfg.in_frames], cfg.val_steps).float()
    model.train(was_training)
    gen = torch.cat([clips[:, : cfg.in_frames], pred], 1)
    frames = np.concatenate([side_by_side(clips[i], gen[i], cfg.in_frames) for i in range(n)], axis=1)
    return write_animation(frames, trainer.out / "samples" / f"{tag}.gif", fps=3)


def plot_history(history: dict, path: Path, title: str) -> Optional[Path]:
    """The training loss (and its running mean) and the validation PSNR against copy-last, as a
    PNG written atomically; ``None`` when there is nothing to plot yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = history["train"]
    if not tr:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [r["step"] for r in tr]
    loss = np.array([r["loss"] for r in tr])
    axes[0].plot(steps, loss, alpha=0.3, color="C0", label="loss")
    if len(loss) >= 5:
        k = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        axes[0].plot(steps[k - 1 :], smooth, color="C0", label=f"loss (mean of {k})")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    axes[0].legend()
    val = history["val"]
    if val:
        vs = [r["step"] for r in val]
        axes[1].plot(vs, [r["psnr"] for r in val], "o-", label="model")
        axes[1].plot(vs, [r["baseline_psnr"] for r in val], "--", label="copy last frame")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("validation PSNR (dB)")
        axes[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), fsync=False)
    finally:
        plt.close(fig)
    return path
