"""Training tasks: how each kind of model is trained, one class per task.

A task adds what its model needs beyond the predicting network and its optimiser (which the
trainer builds for every model) and does the forward/loss/backward of one step. The registry
(:mod:`pyframepred.models.registry`) names each model's task:

* ``"frames"`` (:class:`FramesTask`) -- L2 + GDL on the predicted frames; a model with
  ``sequence_output`` predicts all ``out_frames`` targets (teacher-forced as it chooses), the
  others the next frame;
* ``"gan"`` (:class:`GanTask`) -- Mathieu et al.'s multi-scale game: a discriminator step on real
  and generated frames, then the generator's L2 + GDL + adversarial step.
"""

from __future__ import annotations

import torch

from ..data.transforms import resize
from ..models import MultiScaleLoss
from ..models.registry import build_discriminator
from ..nn import GDLLoss

__all__ = ["Task", "FramesTask", "GanTask", "TASKS", "make_task"]


class Task:
    """The per-model part of a training step. ``setup()`` runs once the trainer has built the
    model and its optimiser; ``step(inputs, rest)`` returns ``(loss, parts)`` after the
    optimiser updates (``rest``: the clip's frames after the inputs)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def setup(self) -> None:
        pass

    def step(self, inputs: torch.Tensor, rest: torch.Tensor):
        raise NotImplementedError


# "log" frame loss: a frame's errors below these (about what a 50 dB PSNR frame has on [-1, 1]
# frames: L2 4e-5, and the GDL of independent pixel errors of that size) earn it no more weight
_FLOOR = {"l2": 4e-5, "gdl": 0.014}


def pixel_loss(cfg, pred, target):
    """``lambda_l2 * L2 + lambda_gdl * GDL`` and its parts (``l2``, ``gdl``: per-pixel means).

    ``cfg.frame_loss == "mean"``: per-pixel means over the batch, so a frame counts by the size
    of its errors. ``"log"``: each term of each frame ``(..., C, H, W)`` weighs by the inverse of
    its own value (floored; the weights are constants of the step, normalised to mean 1), so
    the gradient of each term is that of the mean of its ``log`` over the frames -- for L2, of
    the mean PSNR that evaluation reports: a still scene's small error counts as much as a fast
    pan's large one, instead of the pans deciding what the model learns.
    """
    pred, target = pred.float(), target.float()
    terms = {"l2": (cfg.lambda_l2, (pred - target).square().flatten(-3).mean(-1))}  # per frame
    if cfg.lambda_gdl > 0:
        g = GDLLoss(cfg.alpha, "none", cfg.fused)(pred, target)  # (..., C): sums per image
        terms["gdl"] = (cfg.lambda_gdl, g.sum(-1) / pred.shape[-3:].numel())
    loss = pred.new_zeros(())
    for name, (weight, frame) in terms.items():
        if cfg.frame_loss == "log":
            inverse = 1.0 / (frame.detach() + _FLOOR[name])
            frame = frame * (inverse / inverse.mean())
        loss = loss + weight * frame.mean()
    return loss, {name: frame.detach().mean() for name, (_, frame) in terms.items()}


class FramesTask(Task):
    def step(self, inputs, rest):
        t = self.trainer
        cfg = t.cfg
        with t.autocast():
            if cfg.spec.sequence_output:
                target = rest
                pred = t.net(inputs, cfg.out_frames, target)
            else:
                target = rest[:, 0]
                pred = t.net(inputs)
        loss, parts = pixel_loss(cfg, pred, target)
        t.check_finite(loss, "training")
        t.optimizer_step(loss, t.opt, t.model.parameters())
        return loss, parts


class GanTask(Task):
    def setup(self) -> None:
        t = self.trainer
        cfg = t.cfg
        disc, t.disc_kwargs = build_discriminator(cfg.model, t.model_kwargs)
        t.disc = disc.to(t.device)
        t.ms_loss = MultiScaleLoss(cfg.lambda_l2, cfg.lambda_gdl, cfg.lambda_adv, cfg.alpha, cfg.fused)
        t.opt_d = torch.optim.Adam(t.disc.parameters(), lr=cfg.lr_d)
        t.sched_d = torch.optim.lr_scheduler.LambdaLR(t.opt_d, t.lr_lambda)

    def step(self, inputs, rest):
        t = self.trainer
        target = rest[:, 0]
        G, D = t.model, t.disc
        pyr = G.pyramid(inputs)
        sizes = [x.shape[-2:] for x in pyr]
        targets = [resize(target, s) for s in sizes]
        use_adv = t.cfg.lambda_adv > 0
        with t.autocast():
            preds = t.net(pyr)
        parts = {}
        if use_adv:
            # Discriminator: real and generated frames in one forward (one DDP pass).
            D.train()
            with t.autocast():
                logits = t.dnet(
                    [torch.cat([x, x]) for x in pyr],
                    [torch.cat([y, p.detach()]) for y, p in zip(targets, preds)],
                )
            b = inputs.shape[0]
            loss_d = t.ms_loss.discriminator(
                [lg[:b].float() for lg in logits], [lg[b:].float() for lg in logits]
            )
            t.check_finite(loss_d, "discriminator")
            t.optimizer_step(loss_d, t.opt_d, D.parameters())
            parts["d"] = loss_d.detach()
        fake = None
        if use_adv:
            D.requires_grad_(False)
            try:
                with t.autocast():
                    fake = [lg.float() for lg in D(pyr, preds)]  # unwrapped: no DDP sync for D
            finally:
                D.requires_grad_(True)
        loss, gparts = t.ms_loss.generator([p.float() for p in preds], targets, fake)
        t.check_finite(loss, "generator")
        t.optimizer_step(loss, t.opt, G.parameters())
        parts.update(gparts)
        return loss, parts


TASKS = {"frames": FramesTask, "gan": GanTask}


def make_task(trainer) -> Task:
    return TASKS[trainer.cfg.spec.task](trainer)
