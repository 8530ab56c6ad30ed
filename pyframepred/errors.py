"""The exceptions of the library.

Every error the library raises on purpose derives from :class:`PyframepredError` and carries a
one-line message worded for any caller: settings are named as the Python API spells them, in
backquotes (```batch_size` must be >= 1``). The command lines (:mod:`pyframepred.cli`) turn
those names into their ``--flags`` and each exception class into an exit status.
"""

from __future__ import annotations

__all__ = [
    "PyframepredError",
    "ConfigError",
    "OutputError",
    "TrainingDiverged",
    "OutputWriteError",
    "WorkerDied",
]


class PyframepredError(Exception):
    """Base of the library's errors; the message is one line."""


class ConfigError(PyframepredError, ValueError):
    """A setting or an input that cannot be used: a bad value, settings that do not fit a
    checkpoint, a missing data folder, no CUDA device for ``device="cuda"``."""


class OutputError(PyframepredError):
    """An output folder or file that cannot be used before any work starts: not writable, in use
    by another run, or holding another run's checkpoints."""


class TrainingDiverged(PyframepredError, RuntimeError):
    """The loss, the weights or the optimiser state became NaN or infinite (nothing non-finite
    is saved)."""


class OutputWriteError(PyframepredError, RuntimeError):
    """An output file (checkpoint, history, plot, sample) could not be written during a run,
    e.g. a full disk; the previous checkpoint is intact."""


class WorkerDied(PyframepredError, RuntimeError):
    """A DataLoader worker process died (e.g. killed by the out-of-memory killer); the run saved
    its checkpoint first."""
