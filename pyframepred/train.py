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
Checkpoints are read with ``weights_only=True`` (:mod:`pyframepred.checkpoint`): loading one never
runs code, and a file holding anything but tensors and plain values is refused.

Exit status: 0 done (or nothing to do: a resumed run already at ``--steps``); 2 bad arguments,
settings that do not fit the checkpoint, a refused or unreadable checkpoint, missing data, an
unwritable output folder, or an output folder in use by another run or holding another run's
checkpoints; 3 the loss, the weights or the optimiser state became NaN/Inf (training stops;
nothing non-finite is saved, the last finite checkpoint is left untouched); 4 a DataLoader worker
died (``last.pt`` saved first); 5 an output could not be written, e.g. a full disk (the previous
checkpoint is intact); 130 interrupted by Ctrl-C (SIGINT) or SIGTERM, also when sent to the whole
process group, after saving ``last.pt`` at the current step.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import random
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from . import checkpoint as ckpt_format
from ._cli_common import (MODEL_CLASSES, MODELS, CLIError, OneLineParser, article,
                          build_discriminator, build_model, check_model_kwargs, checkpoint_data_root,
                          load_checkpoint, load_state, plain_warnings, prepare_output_dir,
                          resolve_device, rollout, side_by_side, write_animation)
from .atomic import atomic_write, atomic_write_json
from .cpu_threads import default_threads
from .run_folder import LOCK_FILENAME, FolderBusyError, RunFolderLock
from .run_signals import (_StopFlag, _WorkerWatch, _dead_workers, _is_worker_death,
                          _start_workers, _stop_workers, _worker_init)
from .data import EmptySplitError, NoVideosError, VideoClips, default_dataset_root
from .evaluate import evaluate_model
from .models import MultiScaleLoss
from .models._common import gdl
from .models.multiscale import resize

EXIT_OK, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 130
EXIT_WORKER_DIED, EXIT_WRITE_FAILED = 4, 5

# Model sizes per preset ("full": the sizes of the blog post / the paper).
MODEL_PRESETS = {
    "seq2seq": {
        "tiny": dict(conv_channels=(8, 16), hidden_channels=16),
        "quick": dict(conv_channels=(16, 32), hidden_channels=32),
        "small": dict(conv_channels=(32, 64), hidden_channels=64, batch_norm=True),
        "full": dict(conv_channels=(32, 64, 128), hidden_channels=128, num_layers=2,
                     batch_norm=True),
    },
    "autoencoder": {
        "tiny": dict(widths=(8, 16, 32)),
        "quick": dict(widths=(16, 32, 64, 128, 256)),
        "small": dict(widths=(32, 64, 128, 256, 512)),
        "full": dict(widths=(32, 64, 128, 256, 512)),
    },
    "multiscale": {
        "tiny": dict(width=0.0625),
        "quick": dict(width=0.125),
        "small": dict(width=0.5),
        "full": dict(width=1.0),
    },
}
RUN_PRESETS = {
    "tiny": dict(steps=4, batch_size=2, val_every=2, val_clips=4, sample_every=0, workers=0,
                 clips_per_video=2),
    "quick": dict(steps=1000, batch_size=8, val_every=250, val_clips=48, sample_every=500,
                  workers=1, clips_per_video=8),
    "small": dict(steps=5000, batch_size=16, val_every=500, val_clips=128, sample_every=1000,
                  workers=2, clips_per_video=16),
    "full": dict(steps=50000, batch_size=16, val_every=2000, val_clips=256, sample_every=2000,
                 workers=4, clips_per_video=16),
}


# Per-model changes to RUN_PRESETS (a GAN step costs about twice an autoencoder step).
RUN_PRESET_OVERRIDES = {("multiscale", "quick"): dict(batch_size=4)}


@dataclass
class TrainConfig:
    """All training settings (the command-line options, the config file keys)."""
    model: str = "seq2seq"
    data: Optional[str] = None
    out: Optional[str] = None
    preset: str = "quick"
    steps: Optional[int] = None
    batch_size: Optional[int] = None
    lr: float = 1e-3
    lr_d: float = 2e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    in_frames: int = 4
    out_frames: int = 4          # frames predicted per training clip (seq2seq; others 1)
    val_steps: int = 4           # frames predicted in validation / evaluation
    interval: int = 0
    size: int = 64
    clips_per_video: Optional[int] = None
    val_every: Optional[int] = None
    val_clips: Optional[int] = None
    sample_every: Optional[int] = None
    log_every: int = 10
    workers: Optional[int] = None
    device: str = "auto"
    amp: str = "none"            # none | bf16 | fp16
    fused: bool = True
    seed: int = 0
    teacher_forcing: bool = True
    batch_norm: Optional[bool] = None
    residual: bool = True
    lambda_l2: float = 1.0
    lambda_gdl: float = 1.0
    lambda_adv: float = 0.05
    alpha: float = 1.0
    tensorboard: bool = False
    progress: bool = True
    model_kwargs: dict = field(default_factory=dict)
    test_fraction: float = 0.2   # groups (gXX) per class held out for validation; 0: no split
    split_dir: Optional[str] = None  # folder of UCF-101 split lists (trainlist0N.txt, ...)
    split_index: int = 1
    threads: Optional[int] = None  # torch intra-op CPU threads (default: the free cores)

    def resolved(self) -> "TrainConfig":
        """A copy with the preset filled in for every option left unset."""
        if self.model not in MODELS:
            raise CLIError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.preset not in RUN_PRESETS:
            raise CLIError(f"unknown preset {self.preset!r}; choose from "
                           f"{', '.join(RUN_PRESETS)}")
        c = dataclasses.replace(self)
        preset = dict(RUN_PRESETS[self.preset])
        preset.update(RUN_PRESET_OVERRIDES.get((self.model, self.preset), {}))
        for k, v in preset.items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if c.out is None:
            c.out = os.path.join("runs", f"{c.model}-{c.preset}")
        for name in ("steps", "batch_size", "in_frames", "out_frames", "val_steps", "size",
                     "clips_per_video", "val_clips", "log_every"):
            if int(getattr(c, name)) < 1:
                raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(c, name)}")
        for name in ("val_every", "sample_every", "workers", "interval"):
            if int(getattr(c, name)) < 0:
                raise CLIError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(c, name)}")
        if c.amp not in ("none", "bf16", "fp16"):
            raise CLIError(f"--amp must be none, bf16 or fp16, got {c.amp!r}")
        if not c.lr > 0 or not c.lr_d > 0:
            raise CLIError("learning rates must be positive")
        for name in ("lambda_l2", "lambda_gdl", "lambda_adv"):
            if not getattr(c, name) >= 0:
                raise CLIError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 <= c.test_fraction < 1:
            raise CLIError(f"--test-fraction must be in [0, 1), got {c.test_fraction}")
        if c.split_index not in (1, 2, 3):
            raise CLIError(f"--split-index must be 1, 2 or 3, got {c.split_index}")
        if c.split_dir is not None:
            if not Path(c.split_dir).is_dir():
                raise CLIError(f"the split folder '{c.split_dir}' does not exist")
            c.split_dir = os.path.abspath(c.split_dir)
        if not 0 <= c.seed < 2 ** 32:
            raise CLIError(f"--seed must be in [0, 4294967295], got {c.seed}")
        if c.threads is not None and c.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {c.threads}")
        if not c.alpha >= 1:
            raise CLIError(f"--alpha must be >= 1, got {c.alpha}")
        if not c.grad_clip >= 0:
            raise CLIError(f"--grad-clip must be >= 0 (0 = off), got {c.grad_clip}")
        if not c.weight_decay >= 0:
            raise CLIError(f"weight_decay must be >= 0, got {c.weight_decay}")
        check_model_kwargs(c.model, c.model_kwargs)
        if c.model != "seq2seq":
            c.out_frames = 1
        if c.data is not None:
            c.data = os.path.abspath(c.data)   # the checkpoint must work from any folder
        return c

    def model_args(self) -> dict:
        kw = dict(MODEL_PRESETS[self.model][self.preset])
        if self.model == "seq2seq":
            kw.update(teacher_forcing=self.teacher_forcing, residual=self.residual,
                      out_steps=self.val_steps)
        else:
            kw.update(in_frames=self.in_frames, residual=self.residual)
        if self.model == "multiscale":
            kw.update(base_size=64)
        if self.batch_norm is not None and self.model != "multiscale":
            kw["batch_norm"] = self.batch_norm
        kw.update(self.model_kwargs)
        return kw


# Settings that fix the network's shape or the layout of its data: a resumed run keeps them.
RESUME_FIXED = ("model", "preset", "in_frames", "out_frames", "interval", "size", "residual",
                "batch_norm", "model_kwargs")


def _option(name: str) -> str:
    """The command-line spelling of a setting (config-file-only keys as they are)."""
    return name if name in ("model_kwargs", "weight_decay") else "--" + name.replace("_", "-")


def _fixed_value(cfg: dict, name: str):
    value = cfg.get(name, getattr(TrainConfig, name, None) if name != "model_kwargs" else {})
    if name == "batch_norm" and value is None:   # the preset's choice, else the model's default
        value = MODEL_PRESETS.get(cfg.get("model"), {}).get(cfg.get("preset"), {}).get(
            "batch_norm")
        if value is None and cfg.get("model") in MODEL_CLASSES:
            param = inspect.signature(MODEL_CLASSES[cfg["model"]].__init__).parameters.get(
                "batch_norm")
            value = None if param is None else param.default
    return value


def resume_conflicts(cfg: "TrainConfig", ckpt_cfg: dict) -> list:
    """``(name, checkpoint value, given value)`` of the :data:`RESUME_FIXED` settings in which
    the resolved ``cfg`` differs from a checkpoint's config."""
    given = dataclasses.asdict(cfg)
    out = []
    for name in RESUME_FIXED:
        if name == "batch_norm" and cfg.model == "multiscale":
            continue                             # not used by the multi-scale model
        a, b = _fixed_value(ckpt_cfg, name), _fixed_value(given, name)
        if a != b:
            out.append((name, a, b))
    return out


def _check_same_model(path, ckpt_model, model: str) -> None:
    if ckpt_model != model:
        raise CLIError(f"checkpoint '{path}' holds {article(str(ckpt_model))} model, not "
                       f"{article(model)} model")


def _check_resumable(cfg: "TrainConfig", ckpt_cfg: dict, path) -> None:
    _check_same_model(path, ckpt_cfg.get("model"), cfg.model)
    bad = resume_conflicts(cfg, ckpt_cfg)
    if bad:
        diffs = "; ".join(f"{_option(k)} is {json.dumps(a, default=str)} in the checkpoint but "
                          f"{json.dumps(b, default=str)} was given" for k, a, b in bad)
        raise CLIError(f"cannot resume '{path}' with other model settings: {diffs} (these fix the "
                       f"network or its data; leave them out to keep the checkpoint's, or start "
                       f"a new run in another --out)")


class TrainingDiverged(RuntimeError):
    """The loss, the weights or the optimiser state became NaN or infinite."""


class OutputWriteError(RuntimeError):
    """An output file (checkpoint, history, plot) could not be written, e.g. a full disk; the
    previous checkpoint is intact."""


class WorkerDied(RuntimeError):
    """A DataLoader worker process died (e.g. killed by the out-of-memory killer)."""


# ----------------------------------------------------------------------------- data order
class StepSampler(Sampler):
    """Infinite, resumable and distributed sampling: the clips of step ``s`` on rank ``r`` depend
    only on ``(seed, s, r)``.

    Global sample positions ``p = s * batch * world + r * batch + j`` walk through one random
    permutation of the data set per epoch (``epoch = p // len``). Yields ``(p, index)`` pairs;
    :class:`SeededClips` seeds the clip's random choices (start frame, augmentation) with ``p``,
    so a resumed run sees exactly the clips the uninterrupted run would have seen, whatever the
    number of DataLoader workers.
    """

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int = 0, rank: int = 0,
                 world: int = 1):
        self.n, self.batch, self.seed = n, batch_size, seed
        self.start, self.rank, self.world = start_step, rank, world
        self._perm_epoch, self._perm = -1, None

    def _index(self, p: int) -> int:
        epoch = p // self.n
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            self._perm = torch.randperm(self.n, generator=g).tolist()
            self._perm_epoch = epoch
        return self._perm[p % self.n]

    def __iter__(self):
        s = self.start
        while True:
            base = s * self.batch * self.world + self.rank * self.batch
            for j in range(self.batch):
                yield base + j, self._index(base + j)
            s += 1

    def __len__(self):  # pragma: no cover - infinite; DataLoader only needs it for len()
        return 2 ** 62


class SeededClips(Dataset):
    """Wraps a training data set: item ``(p, i)`` is ``dataset[i]`` drawn with torch's random
    generator seeded from ``(seed, p)`` (the global generator is restored afterwards)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        p, i = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + p) % (2 ** 63))
            return self.dataset[i]


# ----------------------------------------------------------------------------- distributed
def _dist_env():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- trainer
class Trainer:
    """One training loop for the three models; the per-model part is :meth:`_loss` (and the
    discriminator step of the multi-scale GAN).

    ``Trainer(cfg).fit()`` returns a summary dict (``status`` ``"done"``, ``"interrupted"`` or
    ``"already_done"`` when resumed at or past ``steps``, ``step``, ``best_psnr``, ``val``);
    raises :class:`TrainingDiverged` on a NaN/Inf loss or state (nothing non-finite is ever
    saved), :class:`WorkerDied` when a DataLoader worker died (after saving ``last.pt``),
    :class:`OutputWriteError` when a file cannot be written (the previous checkpoint is intact)
    and :class:`CLIError` on bad settings. ``step_callback(trainer, step)`` (tests) runs after
    each step.

    The output folder is owned by the trainer from construction to the end of :meth:`fit` (or
    :meth:`close`): a lock (:class:`~pyframepred.run_folder.RunFolderLock`) keeps other runs out.
    A new run refuses a folder that holds checkpoints, and a resumed one refuses to replace a
    newer ``last.pt`` than the checkpoint it continues, unless ``overwrite``.
    """

    def __init__(self, cfg: TrainConfig, resume=None, step_callback=None,
                 checkpoint: Optional[dict] = None, overwrite: bool = False):
        # checkpoint: the checkpoint at ``resume``, already loaded (to CPU) by the command line
        self.cfg = cfg = cfg.resolved()
        self._lock = None
        self._created_dirs: list = []
        try:
            self._setup(cfg, resume, step_callback, checkpoint, overwrite)
        except BaseException:
            self.close()
            self._drop_unused_output()
            raise

    def _drop_unused_output(self) -> None:
        """After a run that failed before writing anything: remove the folders it created (and
        its lock file), so a mistyped option leaves no empty run folder behind."""
        if not self._created_dirs:
            return
        lock = self._created_dirs[0] / LOCK_FILENAME
        try:
            if lock.exists() and [p.name for p in self._created_dirs[0].iterdir()] == [lock.name]:
                lock.unlink()
            for d in self._created_dirs:  # deepest first; rmdir leaves non-empty ones alone
                d.rmdir()
        except OSError:
            pass

    def close(self) -> None:
        """Give up the output folder (idempotent; :meth:`fit` does it when it returns)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def _claim_output(self, resume, overwrite: bool) -> None:
        """Lock the output folder, refuse to destroy another run's checkpoints, and remove the
        partial files of killed saves."""
        self._lock = RunFolderLock(self.out)
        try:
            self._lock.acquire()
        except FolderBusyError as exc:
            self._lock = None
            raise CLIError(f"--out {exc}; wait for it to finish, or use another --out") from None
        except OSError as exc:
            self._lock = None
            raise CLIError(f"cannot lock the output folder --out '{self.out}': "
                           f"{exc.strerror or exc}") from exc
        last, best = self.out / "last.pt", self.out / "best.pt"
        existing = [p for p in (last, best) if p.exists()]
        if resume is None and existing and not overwrite:
            raise CLIError(
                f"--out '{self.out}' already holds a run's checkpoints "
                f"({', '.join(p.name for p in existing)}); continue it with --resume, replace it "
                f"with --overwrite, or choose another --out")
        if resume is not None and last.exists() and not overwrite:
            src = Path(resume)
            src = src / "last.pt" if src.is_dir() else src
            same = False
            try:
                same = os.path.samefile(src, last)
            except OSError:
                pass
            if not same:
                try:
                    newer = ckpt_format.load(last).get("step", 0)
                except ckpt_format.CheckpointError:
                    newer = None
                ours = self._resume_step
                if newer is None or not isinstance(newer, int) or newer > ours:
                    at = "an unreadable" if newer is None else f"a newer (step {newer})"
                    raise CLIError(
                        f"resuming '{src}' (step {ours}) into --out '{self.out}' would replace "
                        f"{at} last.pt there; resume from '{last}' instead, pass --overwrite "
                        f"to replace it, or choose another --out")
        if resume is None and overwrite:
            for p in existing:                     # the old run's checkpoints go, not mixed
                p.unlink()
        ckpt_format.remove_stale_temps(self.out)

    def _setup(self, cfg, resume, step_callback, checkpoint, overwrite) -> None:
        self.step_callback = step_callback
        self.world, self.rank, self.local_rank = _dist_env()
        self.distributed = self.world > 1
        self.main = self.rank == 0
        if self.distributed and not dist.is_initialized():
            dev = resolve_device(cfg.device)
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.out = Path(cfg.out)
        if resume and checkpoint is None:
            rpath = Path(resume)
            checkpoint = load_checkpoint(rpath / "last.pt" if rpath.is_dir() else rpath,
                                         fields=ckpt_format.RESUME_FIELDS, task="be resumed")
        self._resume_step = int(checkpoint["step"]) if checkpoint is not None else 0
        if self.main:
            missing = self.out
            while not missing.exists() and missing != missing.parent:
                self._created_dirs.append(missing)
                missing = missing.parent
            prepare_output_dir(self.out)
            self._claim_output(resume, overwrite)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
            self.threads_reason = "--threads"
        elif self.device.type == "cpu" and self.world == 1:
            n, why = default_threads()
            torch.set_num_threads(n)
            self.threads_reason = why
        else:
            self.threads_reason = "torch's default"
        seed_everything(cfg.seed + self.rank)

        # -- data
        if cfg.data is None:
            root = default_dataset_root(progress=cfg.progress and self.main)
        else:
            root = Path(cfg.data)
        self.data_root = root
        split = dict(test_fraction=cfg.test_fraction, split_dir=cfg.split_dir,
                     split_index=cfg.split_index)
        try:
            train_ds = VideoClips(root, frames=cfg.in_frames + cfg.out_frames,
                                  interval=cfg.interval, size=cfg.size, train=True,
                                  seed=cfg.seed, clips_per_video=cfg.clips_per_video,
                                  hflip=True, progress=cfg.progress and self.main, **split)
            val_ds = VideoClips(root, frames=cfg.in_frames + cfg.val_steps,
                                interval=cfg.interval, size=cfg.size, train=False, seed=cfg.seed,
                                clips_per_video=max(1, cfg.clips_per_video // 4),
                                progress=False, **split)
        except (FileNotFoundError, NotADirectoryError, NoVideosError) as exc:
            msg = str(exc)
            if isinstance(exc, EmptySplitError):  # the command-line spelling of the ways out
                msg += " (on the command line: --test-fraction 0, or --split-dir DIR)"
            raise CLIError(msg) from exc
        if self.main and cfg.split_dir is None and not cfg.test_fraction:
            print("warning: --test-fraction 0: validation clips come from the training videos, "
                  "so validation scores are not held-out scores", file=sys.stderr)
        self.train_ds = train_ds
        self.val_ds = Subset(val_ds, range(min(cfg.val_clips, len(val_ds))))

        # -- models, optimisers
        self.model_kwargs = cfg.model_args()
        self.model = build_model(cfg.model, self.model_kwargs, cfg.fused).to(self.device)
        self.gan = cfg.model == "multiscale"
        self.disc = None
        if self.gan:
            self.disc_kwargs = {k: v for k, v in self.model_kwargs.items()
                                if k in ("in_frames", "base_size", "width", "scales", "channels")}
            self.disc = build_discriminator(self.disc_kwargs).to(self.device)
            self.ms_loss = MultiScaleLoss(cfg.lambda_l2, cfg.lambda_gdl, cfg.lambda_adv,
                                          cfg.alpha, cfg.fused)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_lambda)
        self.opt_d = self.sched_d = None
        if self.disc is not None:
            self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=cfg.lr_d)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, self._lr_lambda)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.step = 0
        self.best_psnr = -math.inf
        self.history = {"train": [], "val": []}
        self.rng_restored = False
        if resume:
            self._load(resume, checkpoint)
        self.net = self.model
        self.dnet = self.disc
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
            if self.disc is not None:
                self.dnet = DDP(self.disc, device_ids=ids)

    def _lr_lambda(self, step: int) -> float:
        # Short linear warm-up, then cosine decay to 10% over the run.
        total = max(1, self.cfg.steps)
        warm = min(50, total // 10)
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    # -- checkpoints
    def _state(self) -> dict:
        return {
            "format": ckpt_format.FORMAT_VERSION, "config": dataclasses.asdict(self.cfg),
            "model_kwargs": self.model_kwargs,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
            "disc_kwargs": getattr(self, "disc_kwargs", None),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None,
            "scheduler_d": self.sched_d.state_dict() if self.sched_d is not None else None,
            "rng": ckpt_format.rng_state(), "step": self.step, "best_psnr": self.best_psnr,
            "history": self.history, "world_size": self.world,
            "torch_version": str(torch.__version__),
        }

    def check_state_finite(self) -> None:
        """:class:`TrainingDiverged` unless every weight and optimiser value is finite (called
        before anything is saved: a checkpoint on disk is always a finite one)."""
        bad = ckpt_format.nonfinite_entries({
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "disc": self.disc.state_dict() if self.disc is not None else None,
            "optimizer_d": self.opt_d.state_dict() if self.opt_d is not None else None})
        if bad:
            raise TrainingDiverged(
                f"the weights or optimiser state became NaN/Inf by step {self.step} "
                f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); training stopped "
                f"without saving them (the last finite checkpoint, if any, is "
                f"{self.out / 'last.pt'}, left untouched). Try a lower --lr, --amp none, or a "
                f"smaller --grad-clip.")

    def save(self, best: bool = False) -> Optional[Path]:
        """Write ``last.pt`` (and ``best.pt``) atomically, then ``history.json``. Non-finite
        weights are refused (:class:`TrainingDiverged`); a failed write (a full disk) is an
        :class:`OutputWriteError` and leaves the previous files intact."""
        if not self.main:
            return None
        self.check_state_finite()
        path = self.out / "last.pt"
        try:
            data = ckpt_format.to_bytes(self._state())
            ckpt_format.save(None, [path] + ([self.out / "best.pt"] if best else []), data)
            atomic_write_json(self.out / "history.json", self.history)
        except OSError as exc:
            raise OutputWriteError(
                f"cannot write the checkpoint in '{self.out}' at step {self.step}: "
                f"{exc.strerror or exc}; the previous checkpoint is intact") from exc
        return path

    def _load(self, resume, ckpt: Optional[dict] = None) -> None:
        path = Path(resume)
        if path.is_dir():
            path = path / "last.pt"
        if ckpt is None:                     # to CPU: load_state_dict copies to the device
            ckpt = load_checkpoint(path, fields=ckpt_format.RESUME_FIELDS, task="be resumed")
        else:
            try:
                ckpt_format.check_fields(ckpt, path, ckpt_format.RESUME_FIELDS, "be resumed")
            except ckpt_format.CheckpointError as exc:
                raise CLIError(str(exc)) from None
        _check_resumable(self.cfg, ckpt["config"], path)
        what = f"checkpoint '{path}'"
        load_state(self.model, ckpt["model"], f"the model of {what}")
        try:
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            if self.disc is not None:
                load_state(self.disc, ckpt["disc"], f"the discriminator of {what}")
                self.opt_d.load_state_dict(ckpt["optimizer_d"])
                self.sched_d.load_state_dict(ckpt["scheduler_d"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CLIError(f"cannot restore the training state from {what}: "
                           f"{' '.join(str(exc).split())[:300]}") from exc
        self.step = int(ckpt["step"])
        self.best_psnr = float(ckpt["best_psnr"])
        self.history = ckpt["history"]
        self._apply_lr_overrides(ckpt["config"])
        if ckpt.get("world_size", 1) == self.world and self.rank == 0:
            try:
                ckpt_format.set_rng_state(ckpt["rng"])
            except ckpt_format.CheckpointError as exc:
                raise CLIError(f"{what}: {exc}") from None
            self.rng_restored = True

    def _apply_lr_overrides(self, ckpt_cfg: dict) -> None:
        """A resumed run uses the learning rates and weight decay of its settings: restoring the
        optimiser brings back the checkpoint's, so where the settings differ (``--lr`` given
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

    # -- one step
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def _pixel_loss(self, pred, target):
        l2 = F.mse_loss(pred.float(), target.float())
        parts = {"l2": l2.detach()}
        loss = self.cfg.lambda_l2 * l2
        if self.cfg.lambda_gdl > 0:
            g = gdl(pred.float(), target.float(), self.cfg.alpha, self.cfg.fused)
            loss = loss + self.cfg.lambda_gdl * g
            parts["gdl"] = g.detach()
        return loss, parts

    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
        if self.distributed:
            if dist.get_backend() == "nccl":
                bad = bad.to(self.device)
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() > 0:
            raise TrainingDiverged(
                f"the {what} loss became {loss.item()} at step {self.step + 1}; training stopped "
                f"(the last good checkpoint, if any, is {self.out / 'last.pt'}, left untouched). "
                "Try a lower --lr, --amp none, or a smaller --grad-clip.")

    def _opt_step(self, loss, opt, params) -> None:
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.grad_clip > 0:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        try:
            self.scaler.step(opt)
        except RuntimeError as exc:  # e.g. Adam's step size lr / (1 - beta1) past float range
            if "overflow" not in str(exc):
                raise
            raise TrainingDiverged(
                f"the optimiser step overflowed at step {self.step + 1} "
                f"({' '.join(str(exc).split())[:120]}); training stopped without saving it (the "
                f"last finite checkpoint, if any, is {self.out / 'last.pt'}, left untouched). "
                f"Try a lower --lr.") from None

    def train_step(self, clips: torch.Tensor) -> dict:
        cfg = self.cfg
        clips = clips.to(self.device, non_blocking=True)
        n_in = cfg.in_frames
        inputs = clips[:, :n_in]
        self.model.train()
        if cfg.model == "seq2seq":
            targets = clips[:, n_in:]
            with self._autocast():
                pred = self.net(inputs, cfg.out_frames, targets)
            loss, parts = self._pixel_loss(pred, targets)
            self._check_finite(loss, "training")
            self._opt_step(loss, self.opt, self.model.parameters())
        elif cfg.model == "autoencoder":
            target = clips[:, n_in]
            with self._autocast():
                pred = self.net(inputs)
            loss, parts = self._pixel_loss(pred, target)
            self._check_finite(loss, "training")
            self._opt_step(loss, self.opt, self.model.parameters())
        else:
            parts = self._gan_step(inputs, clips[:, n_in])
            loss = parts.pop("loss")
        self.scaler.update()
        self.sched.step()
        if self.sched_d is not None:
            self.sched_d.step()
        return {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}

    def _gan_step(self, inputs, target) -> dict:
        G, D = self.model, self.disc
        pyr = G.pyramid(inputs)
        sizes = [t.shape[-2:] for t in pyr]
        targets = [resize(target, s) for s in sizes]
        use_adv = self.cfg.lambda_adv > 0
        with self._autocast():
            preds = self.net(pyr)
        parts = {}
        if use_adv:
            # Discriminator: real and generated frames in one forward (one DDP pass).
            D.train()
            with self._autocast():
                logits = self.dnet([torch.cat([x, x]) for x in pyr],
                                   [torch.cat([t, p.detach()]) for t, p in zip(targets, preds)])
            b = inputs.shape[0]
            loss_d = self.ms_loss.discriminator([l[:b].float() for l in logits],
                                                [l[b:].float() for l in logits])
            self._check_finite(loss_d, "discriminator")
            self._opt_step(loss_d, self.opt_d, D.parameters())
            parts["d"] = loss_d.detach()
        fake = None
        if use_adv:
            D.requires_grad_(False)
            try:
                with self._autocast():
                    fake = [l.float() for l in D(pyr, preds)]  # unwrapped: no DDP sync for D
            finally:
                D.requires_grad_(True)
        loss, gparts = self.ms_loss.generator([p.float() for p in preds], targets, fake)
        self._check_finite(loss, "generator")
        self._opt_step(loss, self.opt, G.parameters())
        parts.update(gparts)
        parts["loss"] = loss.detach()
        return parts

    # -- validation and pictures
    def validate(self) -> dict:
        res = evaluate_model(self.model, self.val_ds, self.cfg.in_frames, self.cfg.val_steps,
                             self.device, batch_size=8, autocast_dtype=self.amp_dtype)
        return res

    def write_sample(self, tag: str) -> Optional[Path]:
        cfg = self.cfg
        n = min(4, len(self.val_ds))
        clips = torch.stack([self.val_ds[i] for i in range(n)]).to(self.device)
        self.model.eval()
        with torch.no_grad():
            pred = rollout(self.model, clips[:, :cfg.in_frames], cfg.val_steps).float()
        self.model.train()
        gen = torch.cat([clips[:, :cfg.in_frames], pred], 1)
        frames = np.concatenate([side_by_side(clips[i], gen[i], cfg.in_frames)
                                 for i in range(n)], axis=1)
        return write_animation(frames, self.out / "samples" / f"{tag}.gif", fps=3)

    def plot(self) -> Optional[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tr = self.history["train"]
        if not tr:
            return None
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        steps = [r["step"] for r in tr]
        loss = np.array([r["loss"] for r in tr])
        axes[0].plot(steps, loss, alpha=0.3, color="C0", label="loss")
        if len(loss) >= 5:
            k = max(1, len(loss) // 20)
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            axes[0].plot(steps[k - 1:], smooth, color="C0", label=f"loss (mean of {k})")
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("training loss")
        axes[0].set_yscale("log")
        axes[0].legend()
        val = self.history["val"]
        if val:
            vs = [r["step"] for r in val]
            axes[1].plot(vs, [r["psnr"] for r in val], "o-", label="model")
            axes[1].plot(vs, [r["baseline_psnr"] for r in val], "--", label="copy last frame")
            axes[1].set_xlabel("step")
            axes[1].set_ylabel("validation PSNR (dB)")
            axes[1].legend()
        fig.suptitle(f"{self.cfg.model} ({self.cfg.preset})")
        fig.tight_layout()
        path = self.out / "loss.png"
        try:
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), fsync=False)
        finally:
            plt.close(fig)
        return path

    # -- the loop
    def _loader(self):
        cfg = self.cfg
        sampler = StepSampler(len(self.train_ds), cfg.batch_size, cfg.seed, self.step,
                              self.rank, self.world)
        g = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(SeededClips(self.train_ds, cfg.seed), batch_size=cfg.batch_size,
                          sampler=sampler, num_workers=cfg.workers, generator=g,
                          worker_init_fn=_worker_init if cfg.workers > 0 else None,
                          persistent_workers=False, pin_memory=self.device.type == "cuda",
                          prefetch_factor=2 if cfg.workers > 0 else None, drop_last=True)

    def _stop_requested(self, flag: _StopFlag, watch: Optional[_WorkerWatch] = None) -> int:
        """0: go on; 1: a stop signal (on any rank); 2: a DataLoader worker died (and no stop
        signal came: a worker dying after a Ctrl-C or SIGTERM is part of that stop)."""
        code = 1.0 if flag.signal is not None else (
            2.0 if watch is not None and watch.error is not None else 0.0)
        stop = torch.tensor([code])
        if self.distributed:
            if dist.get_backend() == "nccl":
                stop = stop.to(self.device)
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        code = int(stop.item())
        if code == 2 and flag.signal is not None:
            code = 1
        return code

    def fit(self) -> dict:
        """Train to ``cfg.steps``; the output folder is given up when this returns or raises."""
        try:
            return self._fit()
        finally:
            self.close()

    def _next_batch(self, it, flag: _StopFlag, watch: _WorkerWatch):
        """The next batch, or ``None`` when the loop must stop first (a stop signal, or a dead
        worker: recorded in ``watch.error``)."""
        try:
            return next(it)
        except (RuntimeError, OSError, EOFError) as exc:
            # A batch a worker queued just before it died cannot be fetched from it either
            # (ConnectionResetError while rebuilding its shared memory): also a worker death.
            dead = _dead_workers(it, wait=0.0 if isinstance(exc, RuntimeError) else 5.0)
            if not (_is_worker_death(exc) or dead):
                raise
            if watch.error is None:
                watch.error = exc if _is_worker_death(exc) else RuntimeError(
                    f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited "
                    f"unexpectedly")
            return None

    def _fit(self) -> dict:
        cfg = self.cfg
        if self.step >= cfg.steps:               # resumed from a finished run: nothing to do
            return {"status": "already_done", "step": self.step, "best_psnr": self.best_psnr,
                    "val": None, "out": str(self.out)}
        if self.main:
            try:
                atomic_write_json(self.out / "config.json", dataclasses.asdict(cfg), indent=2)
            except OSError as exc:
                raise OutputWriteError(f"cannot write '{self.out / 'config.json'}': "
                                       f"{exc.strerror or exc}") from exc
        tb = None
        if cfg.tensorboard and self.main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise CLIError("--tensorboard needs the tensorboard package "
                               "(pip install 'pyframepred[tensorboard]')") from exc
            tb = SummaryWriter(os.fspath(self.out / "tensorboard"))
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {cfg.model}", unit="step",
                   disable=not (cfg.progress and self.main), dynamic_ncols=True)
        status = "done"
        last_val = None
        t_last, n_last = time.perf_counter(), 0
        clips_per_step = cfg.batch_size * self.world
        try:
            # The handlers are in place before the workers start (and the workers ignore the
            # signals): a Ctrl-C or SIGTERM to the process group stops the run cleanly.
            with _StopFlag() as flag:
                it = _start_workers(self._loader())
                # After the iterator: its first start installs torch's SIGCHLD handler, which
                # the watch replaces for the loop.
                watch = _WorkerWatch().__enter__()
                try:
                    while self.step < cfg.steps:
                        clips = (None if flag.signal is not None
                                 else self._next_batch(it, flag, watch))
                        if clips is None:
                            status = "interrupted" if self._stop_requested(flag, watch) == 1 \
                                else "worker_died"
                            break
                        rec = self.train_step(clips)
                        self.step += 1
                        rec["step"] = self.step
                        rec["lr"] = self.opt.param_groups[0]["lr"]
                        if self.main:
                            self.history["train"].append(rec)
                        n_last += clips_per_step
                        bar.update(1)
                        if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                            now = time.perf_counter()
                            rate = n_last / max(1e-9, now - t_last)
                            t_last, n_last = now, 0
                            bar.set_postfix(loss=f"{rec['loss']:.4f}", clips_s=f"{rate:.1f}")
                            if tb is not None:
                                for k, v in rec.items():
                                    if k != "step":
                                        tb.add_scalar(f"train/{k}", v, self.step)
                                tb.add_scalar("train/clips_per_s", rate, self.step)
                        if self.step_callback is not None:
                            self.step_callback(self, self.step)
                        stop = self._stop_requested(flag, watch)
                        if stop:
                            status = "interrupted" if stop == 1 else "worker_died"
                            break
                        if ((cfg.val_every and self.step % cfg.val_every == 0)
                                or self.step == cfg.steps):
                            last_val = self._validate_and_save(tb, bar)
                        if (self.main and cfg.sample_every and self.step % cfg.sample_every == 0):
                            self._write_sample_or_fail(f"step_{self.step:06d}")
                    if status != "done":
                        # Saved while the handlers are still ours: a second signal now cannot
                        # kill the process half-way through the save.
                        self.check_state_finite()
                        if self.main:
                            self.save()
                            self._plot_quietly()
                    if status == "interrupted" and self.main:
                        print(f"\ninterrupted: saved {self.out / 'last.pt'} at step {self.step}; "
                              f"continue with --resume {self.out / 'last.pt'}", file=sys.stderr)
                finally:
                    # The workers end while the handlers are still ours: a worker's exit
                    # cannot raise from torch's SIGCHLD handler somewhere later.
                    _stop_workers(it)
                    it = None
                    watch.__exit__(None, None, None)
        finally:
            bar.close()
        if status == "worker_died":
            err = watch.error
            detail = " ".join(str(err).split())[:200] if err is not None else "a worker died"
            raise WorkerDied(
                f"a data-loading worker died ({detail}); saved {self.out / 'last.pt'} at step "
                f"{self.step}; continue with --resume {self.out / 'last.pt'} (if it was killed "
                f"for lack of memory, fewer --workers or a smaller --batch-size help)")
        if status == "done" and self.main:
            self._write_sample_or_fail("final")
        if tb is not None:
            tb.close()
        if self.distributed:
            dist.barrier()
        return {"status": status, "step": self.step, "best_psnr": self.best_psnr,
                "val": last_val, "out": str(self.out)}

    def _write_sample_or_fail(self, tag: str) -> None:
        try:
            self.write_sample(tag)
        except OSError as exc:
            raise OutputWriteError(f"cannot write the sample '{tag}' in '{self.out}': "
                                   f"{exc.strerror or exc}") from exc

    def _plot_quietly(self) -> None:
        try:
            self.plot()
        except OSError as exc:
            print(f"warning: cannot write {self.out / 'loss.png'}: {exc.strerror or exc}",
                  file=sys.stderr)

    def _validate_and_save(self, tb, bar) -> Optional[dict]:
        self.check_state_finite()                # on every rank: all stop together
        res = None
        if self.main:
            res = self.validate()
            mm, bm = res["model_mean"], res["baseline_mean"]
            rec = {"step": self.step, "psnr": mm["psnr"], "ssim": mm["ssim"],
                   "baseline_psnr": bm["psnr"], "baseline_ssim": bm["ssim"],
                   "sharpness": mm["sharpness"], "l2": mm["l2"], "gdl": mm["gdl"]}
            self.history["val"].append(rec)
            best = mm["psnr"] > self.best_psnr
            if best:
                self.best_psnr = mm["psnr"]
            self.save(best=best)
            self._plot_quietly()
            bar.write(file=sys.stderr, s=f"step {self.step}: val PSNR {mm['psnr']:.2f} dB (copy-last "
                      f"{bm['psnr']:.2f}), SSIM {mm['ssim']:.4f} ({bm['ssim']:.4f})"
                      + (" [best]" if best else ""))
            if tb is not None:
                for k, v in rec.items():
                    if k != "step":
                        tb.add_scalar(f"val/{k}", v, self.step)
        if self.distributed:
            dist.barrier()
        return res


# ----------------------------------------------------------------------------- command line
def _load_config_file(path: str) -> dict:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"config file '{p}' does not exist")
    if not p.is_file():
        raise CLIError(f"config file '{p}' is not a regular file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"config file '{p}' is not UTF-8 text (byte {exc.start}: "
                       f"{exc.object[exc.start:exc.start + 1]!r})") from None
    except OSError as exc:
        raise CLIError(f"cannot read config file '{p}': {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - RecursionError, ValueError, TOMLDecodeError, ...
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CLIError(f"cannot parse config file '{p}': {msg}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file '{p}' must hold a table/object of options")
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {"resume"}
    unknown = sorted(set(k.replace("-", "_") for k in data) - known)
    if unknown:
        raise CLIError(f"unknown keys in config file '{p}': {', '.join(unknown)}")
    values = {k.replace("-", "_"): v for k, v in data.items()}
    hints = typing.get_type_hints(TrainConfig)
    for key, value in values.items():
        if key == "resume":                      # a path, or true: <out>/last.pt (bare --resume)
            if isinstance(value, bool):
                values[key] = "auto" if value else None
            elif not isinstance(value, str):
                raise CLIError(f"config file '{p}': resume must be a checkpoint path (string) or "
                               f"true/false, got {json.dumps(value, default=str)}")
        else:
            values[key] = _check_type(key, value, hints[key], f"config file '{p}'")
    return values


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a table/object"}


def _check_type(key: str, value, tp, where: str):
    """``value`` as the config field ``key`` of type ``tp`` (an int for a float is converted);
    :class:`CLIError` naming the key, the expected type and the value otherwise."""
    optional = False
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if value is None and optional:
        return None
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise CLIError(f"{where}: {key} must be {_TYPE_NAMES.get(tp, tp.__name__)}"
                       f"{' or null' if optional else ''}, got {json.dumps(value, default=str)}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m pyframepred.train",
                                description="Train a video frame prediction model.",
                                epilog="Exit status: 0 done, 2 usage/data error (also: --out holds "
                                       "another run), 3 NaN/Inf loss or weights (nothing "
                                       "non-finite saved), 4 a data-loading worker died "
                                       "(checkpoint saved), 5 an output could not be written "
                                       "(e.g. disk full; previous checkpoint intact), 130 "
                                       "interrupted (checkpoint saved).")
    p.add_argument("--model", choices=MODELS, help="model to train (required here or in --config)")
    p.add_argument("--data", help="folder of videos (default: the embedded synthetic data set)")
    p.add_argument("--config", help="JSON or TOML file of options (command line wins)")
    p.add_argument("--preset", choices=tuple(RUN_PRESETS), help="run size (default quick)")
    p.add_argument("--out", help="output folder (default runs/<model>-<preset>)")
    p.add_argument("--resume", nargs="?", const="auto",
                   help="continue from a checkpoint (default: <out>/last.pt) with its settings; "
                        "options given override them, except the model and data layout")
    p.add_argument("--overwrite", action="store_true", default=None,
                   help="replace the checkpoints of another run in --out (a new run refuses "
                        "such a folder without it), or a newer last.pt when resuming another "
                        "checkpoint into it")
    p.add_argument("--steps", type=int, help="training steps (optimizer updates)")
    p.add_argument("--batch-size", type=int, help="clips per step and process")
    p.add_argument("--lr", type=float, help="learning rate (Adam; default 1e-3)")
    p.add_argument("--lr-d", type=float, help="discriminator learning rate (default 2e-4)")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip, 0 = off (default 1)")
    p.add_argument("--in-frames", type=int, help="input frames (default 4)")
    p.add_argument("--out-frames", type=int, help="frames predicted in training (seq2seq; 4)")
    p.add_argument("--val-steps", type=int, help="frames predicted in validation (default 4)")
    p.add_argument("--interval", type=int, help="frames skipped between taken frames (0)")
    p.add_argument("--size", type=int, help="frame size (default 64)")
    p.add_argument("--clips-per-video", type=int)
    p.add_argument("--val-every", type=int, help="validate every N steps (0: only at the end)")
    p.add_argument("--val-clips", type=int, help="held-out clips for validation")
    p.add_argument("--sample-every", type=int, help="sample GIF every N steps (0: only at end)")
    p.add_argument("--log-every", type=int)
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch ops (default: the cores free when the run starts)")
    p.add_argument("--test-fraction", type=float,
                   help="share of each class's groups (gXX) held out for validation (0.2); "
                        "0: validate on the training videos")
    p.add_argument("--split-dir", help="folder of UCF-101 split lists (trainlist0N.txt, "
                                       "testlist0N.txt): use them instead of the group split")
    p.add_argument("--split-index", type=int, help="which official split, 1-3 (1)")
    p.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), help="mixed precision (none)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="fused C++/CUDA ops (default) or the plain-PyTorch reference")
    p.add_argument("--seed", type=int, help="seed for torch, numpy, python and data order (0)")
    p.add_argument("--teacher-forcing", action=argparse.BooleanOptionalAction, default=None,
                   help="seq2seq: feed true frames to the decoder in training (default on)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="seq2seq/autoencoder: batch norm (default: per preset)")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="predict a change of the last frame inside the tanh (default on)")
    p.add_argument("--lambda-l2", type=float, help="weight of the L2 loss (1)")
    p.add_argument("--lambda-gdl", type=float, help="weight of the GDL loss (1)")
    p.add_argument("--lambda-adv", type=float, help="multiscale: adversarial weight (0.05)")
    p.add_argument("--alpha", type=float, help="GDL exponent alpha (1)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="also log to <out>/tensorboard")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default on)")
    return p


def config_from_args(argv: Sequence[str] | None = None):
    """``(TrainConfig, resume)`` from command-line arguments (and the config file)."""
    cfg, resume, _, _ = _parse(argv)
    return cfg, resume


def _parse(argv: Sequence[str] | None = None):
    """``(TrainConfig, resume path or None, loaded checkpoint or None, overwrite)``.

    Settings given on the command line or in the config file are explicit. When resuming, every
    other setting comes from the checkpoint's config; explicit ones override it, except the
    :data:`RESUME_FIXED` ones (model and data layout), which must match it. The output folder
    defaults to the checkpoint's folder.
    """
    args = build_parser().parse_args(argv)
    values = {}
    if args.config:
        values.update(_load_config_file(args.config))
    for k, v in vars(args).items():
        if k != "config" and v is not None:
            values[k] = v
    resume = values.pop("resume", None)
    overwrite = bool(values.pop("overwrite", False))
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = {k: v for k, v in values.items() if k in fields}
    ckpt = None
    if resume is not None:
        if resume == "auto":
            if "out" not in explicit and "model" not in explicit:
                raise CLIError("--resume without a checkpoint needs --out (or --model, for the "
                               "default output folder) to find <out>/last.pt")
            out = explicit.get("out") or TrainConfig(
                model=explicit["model"], preset=explicit.get("preset", "quick")).resolved().out
            resume = os.path.join(out, "last.pt")
        elif Path(resume).is_dir():
            resume = os.path.join(resume, "last.pt")
        ckpt = load_checkpoint(resume, fields=ckpt_format.RESUME_FIELDS, task="be resumed")
        base = {k: v for k, v in ckpt["config"].items() if k in fields}
        if "model" in explicit:  # before the other model's settings are checked against it
            _check_same_model(resume, base.get("model"), explicit["model"])
        if "data" not in explicit:
            base["data"] = checkpoint_data_root(base)
            if base["data"] is not None and not Path(base["data"]).exists():
                raise CLIError(f"the checkpoint's data folder '{base['data']}' does not exist; "
                               f"pass --data DIR")
        base.pop("out", None)
        values = {**base, **explicit}
        values.setdefault("out", str(Path(resume).parent))
    else:
        values = explicit
    if "model" not in values:
        raise CLIError("--model is required (seq2seq, autoencoder or multiscale)")
    cfg = TrainConfig(**values)
    if cfg.data is not None and not Path(cfg.data).exists():
        raise CLIError(f"the data folder '{cfg.data}' does not exist")
    cfg = cfg.resolved()
    if ckpt is not None:
        _check_resumable(cfg, ckpt["config"], resume)
    return cfg, resume, ckpt, overwrite


@plain_warnings
def main(argv: Sequence[str] | None = None) -> int:
    trainer = None
    try:
        cfg, resume, ckpt, overwrite = _parse(argv)
        if ckpt is not None and int(ckpt["step"]) >= cfg.steps:
            if _dist_env()[1] == 0:
                step = int(ckpt["step"])
                where = f"of {cfg.steps}" if step == cfg.steps else f"(past --steps {cfg.steps})"
                print(f"checkpoint '{resume}' is already at step {step} {where}; nothing to do "
                      f"(pass --steps M with M > {step} to train further)", file=sys.stderr)
            return EXIT_OK
        trainer = Trainer(cfg, resume=resume, checkpoint=ckpt, overwrite=overwrite)
        del ckpt
        # From here a Ctrl-C/SIGTERM stops the run cleanly (saved, exit 130); fit() keeps
        # this handler for the loop.
        with _StopFlag():
            if trainer.main:
                print(f"training {cfg.model} ({cfg.preset}): {cfg.steps} steps of "
                      f"{cfg.batch_size} x {trainer.world} clips on {trainer.device}"
                      + (f" ({torch.get_num_threads()} threads: {trainer.threads_reason})"
                         if trainer.device.type == "cpu" else "") +
                      f"{' (fused ops)' if cfg.fused else ' (reference ops)'}; data "
                      f"{trainer.data_root} ({len(trainer.train_ds)} training clips); output "
                      f"{cfg.out}" + (f"; resumed at step {trainer.step} from {resume}"
                                      if resume else ""),
                      file=sys.stderr)
            result = trainer.fit()
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except NoVideosError as exc:  # e.g. every video failed to decode once training started
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkerDied as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_WORKER_DIED
    except OutputWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except KeyboardInterrupt:            # before training started (or a second Ctrl-C)
        print("\ninterrupted" + ("" if trainer is None else
                                 f"; nothing saved past the last checkpoint in {cfg.out}"),
              file=sys.stderr)
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
        print(f"done: {result['step']} steps; {scores} PSNR {mm['psnr']:.2f} dB vs copy-last "
              f"{bm['psnr']:.2f}, SSIM {mm['ssim']:.4f} vs {bm['ssim']:.4f}; checkpoints in "
              f"{cfg.out}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
