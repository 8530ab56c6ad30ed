"""Training: settings, the loop and its callbacks, per-model tasks, checkpoints, resuming.

* :mod:`~pyframepred.training.config` -- :class:`TrainConfig` (every setting, with its help),
  presets, config files;
* :mod:`~pyframepred.training.loop` -- :class:`Trainer`;
  :mod:`~pyframepred.training.callbacks` -- progress, TensorBoard, plots, samples;
  :mod:`~pyframepred.training.tasks` -- how each kind of model trains;
* :mod:`~pyframepred.training.checkpoint` -- the checkpoint format (safe loading, atomic saving,
  random states); :mod:`~pyframepred.training.resume` -- the resume policy;
* :mod:`~pyframepred.training.sampling`, :mod:`~pyframepred.training.distributed`,
  :mod:`~pyframepred.training.signals`, :mod:`~pyframepred.training.run_folder`,
  :mod:`~pyframepred.training.cpu_threads` -- data order, DDP and devices, stop signals and
  DataLoader workers, output folder ownership, the CPU thread default.

``Trainer(TrainConfig(model="seq2seq", steps=100)).fit()`` trains from Python; the command
line is ``python -m pyframepred.train`` (:mod:`pyframepred.cli.train`).
"""

from .callbacks import Callback, StepHook
from .config import RUN_PRESETS, TrainConfig
from .loop import Trainer
from .resume import resume_settings

__all__ = ["Trainer", "TrainConfig", "RUN_PRESETS", "Callback", "StepHook", "resume_settings"]
