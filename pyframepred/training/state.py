"""A trainer's state in and out of a checkpoint: what is saved, how it is restored."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import OutputWriteError, TrainingDiverged
from ..io import atomic_write_json
from ..metrics import PSNR_MAX
from . import checkpoint as ckpt_format
from .resume import check_resumable, check_split, split_of
from .run_folder import unchanged

__all__ = ["TrainerState"]


class TrainerState:
    """Mixed into :class:`~pyframepred.training.Trainer`: saving, restoring and the finiteness
    check of the networks, optimisers, schedulers, scaler, random states, step and history."""

    # Set up by the trainer.
    cfg: Any
    out: Path
    main: bool
    world: int
    rank: int
    model: torch.nn.Module
    model_kwargs: dict
    opt: Any
    sched: Any
    scaler: Any
    disc: Optional[torch.nn.Module]
    disc_kwargs: Optional[dict]
    opt_d: Any
    sched_d: Any
    step: int
    best_psnr: float
    history: dict
    rng_restored: bool
    averaged: Any  # a WeightAverage with ``ema``, else None
    train_ds: Any
    val_ds: Any

    def _emit(self, hook: str, *args) -> None:
        raise NotImplementedError

    def _model_states(self) -> dict:
        """``model``: the weights to predict with (the average with ``ema``); with ``ema``
        also ``train_model``, the trained weights themselves, which a resumed run goes on from."""
        if self.averaged is None:
            return {"model": self.model.state_dict()}
        return {
            "model": self.averaged.state_dict(),
            "train_model": self.model.state_dict(),
            "averaged_updates": self.averaged.updates,
        }

    @functools.cached_property
    def split(self) -> Optional[dict]:
        """The videos this run trains and validates on, and its validation clips, as its
        checkpoints record them (:func:`~pyframepred.training.resume.split_of`)."""
        return split_of(self.train_ds, self.val_ds)

    def _state(self) -> dict:
        return {
            "format": ckpt_format.FORMAT_VERSION,
            "config": dataclasses.asdict(self.cfg),
            "model_kwargs": self.model_kwargs,
            **self._model_states(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "disc_kwargs": self.disc_kwargs,
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scheduler_d": self.sched_d.state_dict() if self.sched_d is not None else None,
            "rng": ckpt_format.rng_state(),
            "step": self.step,
            "best_psnr": self.best_psnr,
            "psnr_max": PSNR_MAX,  # the PSNR that best_psnr and the history were measured with
            "history": self.history,
            # The videos trained and validated on, and the validation clips (resume.split_of).
            "split": self.split,
            "world_size": self.world,
            # The CPU thread count the run computed with (reduction orders depend on it): a
            # resumed run takes it again, so that it goes on bit for bit (Trainer._set_threads).
            "threads": torch.get_num_threads(),
            "torch_version": str(torch.__version__),
        }

    def check_state_finite(self) -> None:
        """:class:`TrainingDiverged` unless every weight and optimiser value is finite (called
        before anything is saved: a checkpoint on disk is always a finite one)."""
        bad = ckpt_format.nonfinite_entries(
            {
                **self._model_states(),
                "optimizer": self.opt.state_dict(),
                "disc": self.disc.state_dict() if self.disc is not None else None,
                "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            }
        )
        if bad:
            raise TrainingDiverged(
                f"the weights or optimiser state became NaN/Inf by step {self.step} "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); training stopped "
                f"without saving them (the last finite checkpoint, if any, is "
                f"{self.out / 'last.pt'}, left untouched). Try a lower `lr`, `amp` none, or a "
                f"smaller `grad_clip`."
            )

    def save(self, best: bool = False) -> Optional[Path]:
        """Write ``last.pt`` (and ``best.pt``) atomically, then ``history.json`` (and, at the
        run's first save, ``config.json``: a run that fails before it has saved leaves no files
        of its own that would make the next run into the folder ask for ``overwrite``); then the
        callbacks' ``on_save``. Non-finite weights are refused (:class:`TrainingDiverged`); a
        failed write (a full disk) is an :class:`OutputWriteError` and leaves the previous
        files intact."""
        if not self.main:
            return None
        self.check_state_finite()
        path = self.out / "last.pt"
        try:
            data = ckpt_format.to_bytes(self._state())
            written = [path] + ([self.out / "best.pt"] if best else [])
            ckpt_format.save(None, written, data)
            self.saved_this_run = True
            self._remove_replaced(written)
            atomic_write_json(self.out / "history.json", self.history)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write the checkpoint in '{self.out}' at step {self.step}: "
                f"{exc.strerror or exc}; the previous checkpoint is intact"
            ) from exc
        if not getattr(self, "_config_saved", False):
            try:
                atomic_write_json(self.out / "config.json", dataclasses.asdict(self.cfg), indent=2)
            except OSError as exc:
                raise OutputWriteError(
                    f"cannot write '{self.out / 'config.json'}' at step {self.step}: "
                    f"{exc.strerror or exc}; {path} was saved"
                ) from exc
            self._config_saved = True
        self._emit("on_save")
        return path

    def _remove_replaced(self, written: list) -> None:
        """After the first save of a run that ``overwrite`` let into another run's folder: that
        run's files not just replaced (``written`` atomically replaced theirs) go now, not at the
        start, so that a run that fails before it has saved loses nothing (run_folder.claim)."""
        lock = getattr(self, "_lock", None)
        while lock is not None and lock.replaced:
            old, signature = lock.replaced.pop()
            if old not in written and unchanged(old, signature):
                old.unlink(missing_ok=True)

    def _load(self, path: Path, ckpt: Optional[dict] = None) -> Optional[tuple]:
        """Restore the training state from a checkpoint; returns the weight average's state
        ``(state dict, updates)`` when the checkpoint has one, else None."""
        if ckpt is None:  # to CPU: load_state_dict copies to the device
            ckpt = ckpt_format.load_checkpoint(path, fields=ckpt_format.RESUME_FIELDS, task="be resumed")
        else:
            ckpt_format.check_fields(ckpt, path, ckpt_format.RESUME_FIELDS, "be resumed")
        check_resumable(self.cfg, ckpt["config"], path)
        same_clips = check_split(ckpt.get("split"), self.split, path)
        what = f"checkpoint '{path}'"
        averaged = None
        if isinstance(ckpt.get("train_model"), dict):  # trained with `ema`: model is the average
            ckpt_format.load_state(self.model, ckpt["train_model"], f"the trained model of {what}")
            updates = ckpt.get("averaged_updates")
            if not isinstance(updates, int) or isinstance(updates, bool) or updates < 0:
                raise ckpt_format.CheckpointError(
                    f"{what} holds a weight average with a bad update count ({updates!r})"
                )
            averaged = (ckpt["model"], updates)
        else:
            ckpt_format.load_state(self.model, ckpt["model"], f"the model of {what}")
        try:
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            if self.disc is not None:
                ckpt_format.load_state(self.disc, ckpt["disc"], f"the discriminator of {what}")
                self.opt_d.load_state_dict(ckpt["optimizer_d"])
                self.sched_d.load_state_dict(ckpt["scheduler_d"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise ckpt_format.CheckpointError(
                f"cannot restore the training state from {what}: {' '.join(str(exc).split())[:300]}"
            ) from exc
        self.step = int(ckpt["step"])
        self.best_psnr = float(ckpt["best_psnr"])
        if ckpt.get("psnr_max") != PSNR_MAX and self.step > 0:
            # Validated with the PSNR of before 2026-12-06 (MSE floored at 1e-10: exact frames
            # scored 106 dB), whose values are not comparable with today's.
            self._pick_best_anew(
                f"{what} was validated with an earlier PSNR (exact frames scored 106 dB, now "
                f"{PSNR_MAX:.2f}): best.pt is picked anew from this run's validations, and "
                f"its history's earlier PSNRs are not comparable with the new ones"
            )
        if not same_clips and self.step > 0 and math.isfinite(self.best_psnr):
            self._pick_best_anew(
                f"this run validates on other clips than {what} did (`data`, `seed`, "
                f"`val_steps`, `val_clips` or `clips_per_video` changed): best.pt is picked "
                f"anew from this run's validations"
            )
        self.history = ckpt["history"]
        self._apply_lr_overrides(ckpt["config"])
        saved_world = ckpt.get("world_size", 1)
        if saved_world != self.world and self.main:
            warnings.warn(
                f"{what} was trained with {saved_world} process(es), this run has {self.world}: "
                f"each step now takes {self.world} x {self.cfg.batch_size} clips (was "
                f"{saved_world} x {self.cfg.batch_size}), the clip order changes and the random "
                f"state is not restored, so the run does not go on as it would have",
                stacklevel=2,
            )
        if saved_world == self.world and self.rank == 0:
            try:
                ckpt_format.set_rng_state(ckpt["rng"])
            except ckpt_format.CheckpointError as exc:
                raise ckpt_format.CheckpointError(f"{what}: {exc}") from None
            self.rng_restored = True
        return averaged

    def _pick_best_anew(self, why: str) -> None:
        """Forget the resumed best score (the validations from here cannot be compared with it),
        saying ``why`` from the main process."""
        self.best_psnr = -math.inf
        if self.main:
            warnings.warn(why, stacklevel=3)

    def _apply_lr_overrides(self, ckpt_cfg: dict) -> None:
        """A resumed run uses the learning rates and weight decay of its settings: restoring the
        optimiser brings back the checkpoint's, so where the settings differ (``lr`` given
        again), the schedule's base rate and the current rate are set from the settings."""
        cfg = self.cfg
        pairs = [(self.opt, self.sched, cfg.lr, ckpt_cfg.get("lr"))]
        if self.opt_d is not None:
            pairs.append((self.opt_d, self.sched_d, cfg.lr_d, ckpt_cfg.get("lr_d")))
        for opt, sched, lr, old in pairs:
            if old == lr and all(g.get("initial_lr") == lr for g in opt.param_groups):
                continue
            sched.base_lrs = [lr for _ in opt.param_groups]
            for g, lam in zip(opt.param_groups, sched.lr_lambdas):
                g["initial_lr"] = lr
                g["lr"] = lr * lam(sched.last_epoch)
            sched._last_lr = [g["lr"] for g in opt.param_groups]
        if ckpt_cfg.get("weight_decay", 0.0) != cfg.weight_decay:
            for g in self.opt.param_groups:
                g["weight_decay"] = cfg.weight_decay
