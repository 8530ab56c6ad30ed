"""The training loop: :class:`Trainer`, one loop for every registered model."""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset

from ..data import VideoClips, default_dataset_root, moving_mnist
from ..data import source as data_source
from ..errors import ConfigError, TrainingDiverged, WorkerDied
from ..evaluation import evaluate_model
from ..io import prepare_output_dir
from ..models.registry import build_model
from . import checkpoint as ckpt_format
from .averaging import WeightAverage
from .callbacks import Callback, default_callbacks
from .config import TrainConfig
from .cpu_threads import default_threads, usable_cores
from .distributed import all_ranks_max, all_ranks_mean, dist_env, resolve_device, seed_everything, warn_once
from .run_folder import claim, missing_folders, remove_unused
from .sampling import SeededClips, StepSampler
from .signals import (
    StopFlag,
    WorkerWatch,
    dead_workers,
    is_worker_death,
    start_workers,
    stop_workers,
    worker_init,
)
from .state import TrainerState
from .tasks import make_task

__all__ = ["Trainer"]


class Trainer(TrainerState):
    """One training loop for every model of the registry; the per-model part is its task
    (:mod:`pyframepred.training.tasks`), what happens around the loop its callbacks
    (:mod:`pyframepred.training.callbacks`).

    ``Trainer(cfg).fit()`` returns a summary dict (``status`` ``"done"``, ``"interrupted"`` or
    ``"already_done"`` when resumed at or past ``steps``, ``step``, ``best_psnr``, ``val``);
    raises :class:`~pyframepred.errors.TrainingDiverged` on a NaN/Inf loss or state (nothing
    non-finite is ever saved), :class:`~pyframepred.errors.WorkerDied` when a DataLoader worker
    died (after saving ``last.pt``), :class:`~pyframepred.errors.OutputWriteError` when a file
    cannot be written (the previous checkpoint is intact), and
    :class:`~pyframepred.errors.ConfigError`, :class:`~pyframepred.errors.OutputError` or
    :class:`~pyframepred.training.checkpoint.CheckpointError` on bad settings, an unusable
    output folder or checkpoint. ``resume``: a checkpoint to continue (``checkpoint``: it,
    already loaded to the CPU); ``callbacks``: more :class:`Callback` s after the built-in ones.

    The output folder is owned by the trainer from construction to the end of :meth:`fit` (or
    :meth:`close`): a lock keeps other runs out. A new run refuses a folder that holds
    checkpoints, and a resumed one refuses to replace a ``last.pt`` newer than the checkpoint it
    continues or of another run, unless ``overwrite`` (which replaces them at the first save).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume=None,
        checkpoint: Optional[dict] = None,
        overwrite: bool = False,
        callbacks: Sequence[Callback] = (),
    ):
        # resumed: the checkpoint's model_kwargs built the network it holds
        self.cfg = cfg = cfg.resolved(inherited=("model_kwargs",) if resume else ())
        self._lock = None
        self._created_dirs: list = []
        try:
            self._setup(cfg, resume, checkpoint, overwrite)
            self.callbacks = default_callbacks(self) + list(callbacks)
        except BaseException:
            self.close()
            remove_unused(self._created_dirs)
            raise

    def close(self) -> None:
        """Give up the output folder (idempotent; :meth:`fit` does it when it returns)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def _emit(self, hook: str, *args) -> None:
        for cb in getattr(self, "callbacks", ()):
            getattr(cb, hook)(self, *args)

    # -- set-up
    def _setup(self, cfg, resume, checkpoint, overwrite) -> None:
        self.world, self.rank, self.local_rank = dist_env()
        self.distributed = self.world > 1
        self.main = self.rank == 0
        self.device = resolve_device(cfg.device)
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
        self.out = Path(cfg.out)
        #: How the interruption message tells to continue (the command line names its flag).
        self.resume_hint = f"`resume` from {self.out / 'last.pt'} to continue"
        self.resume_path = None
        if resume:
            self.resume_path = Path(resume)
            if self.resume_path.is_dir():
                self.resume_path = self.resume_path / "last.pt"
            if checkpoint is None:
                checkpoint = ckpt_format.load_checkpoint(
                    self.resume_path, fields=ckpt_format.RESUME_FIELDS, task="be resumed"
                )
        resume_step = int(checkpoint["step"]) if checkpoint is not None else 0
        if self.main:
            self._created_dirs = missing_folders(self.out)
            prepare_output_dir(self.out)
            self._lock = claim(self.out, resume, resume_step, overwrite, (checkpoint or {}).get("history"))
        self._set_threads(cfg, checkpoint)
        seed_everything(cfg.seed + self.rank)
        with warn_once(self.main):  # the same data on every rank: its warnings from rank 0 only
            self._setup_data(cfg)
        # -- networks, optimisers; the task adds what its model needs more
        self.model_kwargs = cfg.model_args()
        self.model = build_model(cfg.model, self.model_kwargs, cfg.fused).to(self.device)
        self.disc = self.opt_d = self.sched_d = self.disc_kwargs = None
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_lambda)
        self.task = make_task(self)
        self.task.setup()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.step = 0
        self.best_psnr = -math.inf
        self.history = {"train": [], "val": []}
        self.rng_restored = False
        self.averaged: Optional[WeightAverage] = None
        averaged_state = None
        if self.resume_path is not None:
            averaged_state = self._load(self.resume_path, checkpoint)
        if cfg.ema and self.main:  # only the main process validates and saves it
            self.averaged = WeightAverage(self.model, cfg.ema)
            if averaged_state is not None:  # else it starts from the (resumed) weights
                state, updates = averaged_state
                what = f"the weight average of '{self.resume_path}'"
                self.averaged.load_state_dict(state, updates, what)
        self.net, self.dnet = self.model, self.disc
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(self.model, device_ids=ids)
            if self.disc is not None:
                self.dnet = DDP(self.disc, device_ids=ids)

    def _set_threads(self, cfg, checkpoint=None) -> None:
        """CPU threads: `threads`; else, resuming, the count the checkpoint was computed with
        (the CPU kernels' sums run in an order that depends on it, and the default below follows
        the machine's load: taking it again keeps the resume bit for bit), where this machine
        has that many cores; else the cores free now."""
        saved = (checkpoint or {}).get("threads")
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
            self.threads_reason = "`threads`"
        elif self.device.type != "cpu" or self.world != 1:
            self.threads_reason = "torch's default"
        elif isinstance(saved, int) and 1 <= saved <= usable_cores():
            torch.set_num_threads(saved)
            self.threads_reason = "as the run resumed, for a bit-exact resume; `threads` to change"
        else:
            n, why = default_threads()
            torch.set_num_threads(n)
            self.threads_reason = why
            if isinstance(saved, int) and saved != n:
                warnings.warn(
                    f"resuming with {n} CPU threads where the checkpoint was computed with {saved} "
                    f"(this machine has {usable_cores()} cores): the run goes on, but not bit for "
                    "bit as the uninterrupted one would have",
                    stacklevel=2,
                )

    def _setup_data(self, cfg) -> None:
        if data_source.kind(cfg.data) == data_source.MOVING_MNIST:
            self.data_root = data_source.MOVING_MNIST
            self.train_ds = moving_mnist.clips(
                cfg.in_frames + cfg.out_frames, True, mnist=cfg.mnist, seed=cfg.seed
            )
            self.val_ds = moving_mnist.clips(
                cfg.in_frames + cfg.val_steps,
                False,
                mnist=cfg.mnist,
                mnist_test=cfg.mnist_test,
                seed=cfg.seed,
                count=cfg.val_clips,
            )
            if len(self.val_ds) > cfg.val_clips:
                self.val_ds = Subset(self.val_ds, range(cfg.val_clips))
            return
        root = (
            default_dataset_root(progress=cfg.progress and self.main) if cfg.data is None else Path(cfg.data)
        )
        self.data_root = root
        split = dict(test_fraction=cfg.test_fraction, split_dir=cfg.split_dir, split_index=cfg.split_index)
        shared = dict(interval=cfg.interval, fps=cfg.fps, size=cfg.size, seed=cfg.seed, **split)
        try:
            train_ds = VideoClips(
                root,
                frames=cfg.in_frames + cfg.out_frames,
                train=True,
                clips_per_video=cfg.clips_per_video,
                hflip=True,
                progress=cfg.progress and self.main,
                **shared,
            )
            val_ds = VideoClips(
                root,
                frames=cfg.in_frames + cfg.val_steps,
                train=False,
                clips_per_video=max(1, cfg.clips_per_video // 4),
                progress=False,
                **shared,
            )
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ConfigError(str(exc)) from exc
        if self.main and cfg.split_dir is None and not cfg.test_fraction:
            warnings.warn(
                "`test_fraction` 0: validation clips come from the training videos, "
                "so validation scores are not held-out scores",
                stacklevel=2,
            )
        self.train_ds = train_ds
        self.val_ds = Subset(val_ds, range(min(cfg.val_clips, len(val_ds))))

    def lr_lambda(self, step: int) -> float:
        """Short linear warm-up, then cosine decay to 10% over the run."""
        total = max(1, self.cfg.steps)
        warm = min(50, total // 10)
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    # -- one step (the task calls autocast, check_finite and optimizer_step)
    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.bfloat16, enabled=self.amp_dtype is not None
        )

    def check_finite(self, loss: torch.Tensor, what: str) -> None:
        """:class:`TrainingDiverged` (on every rank) if ``loss`` is NaN/Inf on any rank."""
        if all_ranks_max(0.0 if torch.isfinite(loss).item() else 1.0, self.device) > 0:
            raise TrainingDiverged(
                f"the {what} loss became {loss.item()} at step {self.step + 1}; training stopped "
                f"(the last good checkpoint, if any, is {self.out / 'last.pt'}, left untouched). "
                "Try a lower `lr`, `amp` none, or a smaller `grad_clip`."
            )

    def optimizer_step(self, loss, opt, params) -> None:
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
                f"Try a lower `lr`."
            ) from None

    def train_step(self, clips: torch.Tensor) -> dict:
        """One optimiser update on a batch of clips ``(B, in_frames + out_frames, 3, H, W)``;
        returns the step's losses as floats (under DDP, averaged over the ranks)."""
        clips = clips.to(self.device, non_blocking=True)
        n_in = self.cfg.in_frames
        self.model.train()
        loss, parts = self.task.step(clips[:, :n_in], clips[:, n_in:])
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update(self.model)
        self.sched.step()
        if self.sched_d is not None:
            self.sched_d.step()
        values = {"loss": loss.detach(), **parts}
        return all_ranks_mean({k: float(v) for k, v in values.items()}, self.device)

    @property
    def inference_model(self) -> torch.nn.Module:
        """The model validated, sampled and saved as ``model``: the ``ema`` average, or itself."""
        return self.averaged.module if self.averaged is not None else self.model

    def validate(self) -> dict:
        return evaluate_model(
            self.inference_model,
            self.val_ds,
            self.cfg.in_frames,
            self.cfg.val_steps,
            self.device,
            batch_size=8,
            autocast_dtype=self.amp_dtype,
        )

    # -- the loop
    def _loader(self):
        cfg = self.cfg
        sampler = StepSampler(len(self.train_ds), cfg.batch_size, cfg.seed, self.step, self.rank, self.world)
        g = torch.Generator().manual_seed(cfg.seed)
        return DataLoader(
            SeededClips(self.train_ds, cfg.seed),
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.workers,
            generator=g,
            worker_init_fn=worker_init if cfg.workers > 0 else None,
            persistent_workers=False,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if cfg.workers > 0 else None,
            drop_last=True,
        )

    def _stop_requested(self, flag: StopFlag, watch: Optional[WorkerWatch] = None) -> int:
        """0: go on; 1: a stop signal (on any rank); 2: a DataLoader worker died (and no stop
        signal came: a worker dying after a Ctrl-C or SIGTERM is part of that stop)."""
        code = (
            1.0
            if flag.signal is not None
            else (2.0 if watch is not None and watch.error is not None else 0.0)
        )
        code = int(all_ranks_max(code, self.device))
        return 1 if code == 2 and flag.signal is not None else code

    def _next_batch(self, it, watch: WorkerWatch):
        """The next batch, or ``None`` when a worker died (recorded in ``watch.error``)."""
        try:
            return next(it)
        except (RuntimeError, OSError, EOFError) as exc:
            # A batch a worker queued just before it died cannot be fetched from it either
            # (ConnectionResetError while rebuilding its shared memory): also a worker death.
            dead = dead_workers(it, wait=0.0 if isinstance(exc, RuntimeError) else 5.0)
            if not (is_worker_death(exc) or dead):
                raise
            if watch.error is None:
                watch.error = (
                    exc
                    if is_worker_death(exc)
                    else RuntimeError(
                        f"DataLoader worker (pid(s) {', '.join(map(str, dead))}) exited unexpectedly"
                    )
                )
            return None

    def fit(self) -> dict:
        """Train to ``cfg.steps``; the output folder is given up when this returns or raises."""
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        cfg = self.cfg
        if self.step >= cfg.steps:  # resumed from a finished run: nothing to do
            self._emit("on_exit")  # "always, last": the callbacks give back what they hold
            return {
                "status": "already_done",
                "step": self.step,
                "best_psnr": self.best_psnr,
                "val": None,
                "out": str(self.out),
            }
        try:
            self._emit("on_fit_start")
            status, last_val, watch = self._run()
            if status == "worker_died":
                err = watch.error
                detail = " ".join(str(err).split())[:200] if err is not None else "a worker died"
                raise WorkerDied(
                    f"a data-loading worker died ({detail}); saved {self.out / 'last.pt'} at "
                    f"step {self.step}; continue with `resume` {self.out / 'last.pt'} (if it "
                    f"was killed for lack of memory, fewer `workers` or a smaller `batch_size` "
                    f"help)"
                )
            self._emit("on_fit_end", status)
        finally:
            self._emit("on_exit")
        if self.distributed:
            dist.barrier()
        return {
            "status": status,
            "step": self.step,
            "best_psnr": self.best_psnr,
            "val": last_val,
            "out": str(self.out),
        }

    def _run(self):
        """The steps, under the stop-signal handlers; ``(status, last validation, watch)``."""
        cfg = self.cfg
        status, last_val = "done", None
        t_last, n_last = time.perf_counter(), 0
        clips_per_step = cfg.batch_size * self.world
        # The handlers are in place before the workers start (and the workers ignore the
        # signals): a Ctrl-C or SIGTERM to the process group stops the run cleanly.
        with StopFlag() as flag:
            it = start_workers(self._loader())
            # After the iterator: its first start installs torch's SIGCHLD handler, replaced here.
            watch = WorkerWatch().__enter__()
            try:
                while self.step < cfg.steps:
                    clips = None if flag.signal is not None else self._next_batch(it, watch)
                    if clips is None:
                        status = "interrupted" if self._stop_requested(flag, watch) == 1 else "worker_died"
                        break
                    rec = self.train_step(clips)
                    self.step += 1
                    rec["step"] = self.step
                    rec["lr"] = self.opt.param_groups[0]["lr"]
                    if self.main:
                        self.history["train"].append(rec)
                    n_last += clips_per_step
                    self._emit("on_train_step", rec)
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        now = time.perf_counter()
                        rate = n_last / max(1e-9, now - t_last)
                        t_last, n_last = now, 0
                        self._emit("on_log", rec, rate)
                    stop = self._stop_requested(flag, watch)
                    if stop:
                        status = "interrupted" if stop == 1 else "worker_died"
                        break
                    if (cfg.val_every and self.step % cfg.val_every == 0) or self.step == cfg.steps:
                        last_val = self._validate_and_save()
                    if self.main:
                        self._emit("on_step_end")
                if status != "done":
                    # Saved while the handlers are still ours: a second signal now cannot
                    # kill the process half-way through the save.
                    self.check_state_finite()
                    self.save()
                if status == "interrupted" and self.main:
                    print(
                        f"\ninterrupted: saved {self.out / 'last.pt'} at step {self.step}; "
                        f"{self.resume_hint}",
                        file=sys.stderr,
                    )
            finally:
                # The workers end while the handlers are still ours: a worker's exit cannot
                # raise from torch's SIGCHLD handler somewhere later.
                stop_workers(it)
                it = None
                watch.__exit__(None, None, None)
        return status, last_val, watch

    def _validate_and_save(self) -> Optional[dict]:
        self.check_state_finite()  # on every rank: all stop together
        res = None
        if self.main:
            res = self.validate()
            mm, bm = res["model_mean"], res["baseline_mean"]
            rec = {
                "step": self.step,
                "psnr": mm["psnr"],
                "ssim": mm["ssim"],
                "baseline_psnr": bm["psnr"],
                "baseline_ssim": bm["ssim"],
                "sharpness": mm["sharpness"],
                "l2": mm["l2"],
                "gdl": mm["gdl"],
            }
            self.history["val"].append(rec)
            best = mm["psnr"] > self.best_psnr
            if best:
                self.best_psnr = mm["psnr"]
            self.save(best=best)
            self._emit("on_validation", rec, best)
        if self.distributed:
            dist.barrier()
        return res
