"""An exponential moving average of a model's weights (``--ema``), the model that is validated,
saved as the checkpoint's ``model`` and used by ``evaluate`` and ``predict``.

Late in a run, Adam's steps make the weights wander around a minimum, and each checkpoint sits
at a different point of that walk (Polyak averaging; Izmailov et al. 2018 average the same way).
Here the average scores about the same as the trained weights on held-out clips of the training
data, and better on real footage the model never saw: it is what puts the quick presets ahead of
copying the last frame there (README, "On real footage"). The average is taken over every
floating-point entry of the state dict, batch-norm statistics included; integer buffers (batch
counts) are copied.

The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the
first updates are not pulled towards the untrained initial weights. In a short run the second
term stays the smaller one (0.991 after 1000 updates): the average then weighs about the last
tenth of the run, whatever the decay above that.
"""

from __future__ import annotations

import copy

import torch

from .checkpoint import load_state

__all__ = ["WeightAverage"]


class WeightAverage:
    """``WeightAverage(model, decay)``: a frozen copy of ``model`` whose weights follow
    ``avg = d * avg + (1 - d) * weights`` at every :meth:`update`."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the averaging decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        src = model.state_dict()
        for name, avg in self.module.state_dict().items():
            new = src[name].detach()
            if avg.is_floating_point():
                avg.lerp_(new.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(new)
        self.updates += 1

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict, updates: int, what: str = "the weight average") -> None:
        """Restore the average (a one-line :class:`CheckpointError` if ``state`` does not fit the
        model) and its update count."""
        load_state(self.module, state, what)
        self.updates = int(updates)
