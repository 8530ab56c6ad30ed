"""Signals during training: the main process owns the shutdown.

SIGINT (Ctrl-C) and SIGTERM set a flag that the training loop checks between steps (it then
saves ``last.pt`` and stops); DataLoader workers start with both blocked and ignore them, so a
signal sent to the whole process group (a terminal's Ctrl-C, a scheduler's or container's stop)
reaches only the main process. A worker that dies (e.g. killed for lack of memory) is recorded
and reported between steps instead of raising from torch's SIGCHLD handler in the middle of an
optimiser update.
"""

from __future__ import annotations

import signal
import time
from typing import Optional

__all__ = [
    "StopFlag",
    "WorkerWatch",
    "worker_init",
    "start_workers",
    "stop_workers",
    "dead_workers",
    "is_worker_death",
]


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves and stops at the end of the current step.

    Re-entrant: a ``StopFlag`` entered while another is active shares its flag (the command line
    installs it before building the trainer, so no signal falls between two handlers).
    """

    _active: Optional["StopFlag"] = None

    def __init__(self):
        self.signal = None
        self._old = {}
        self._outer = None
        self._depth = 0

    def __enter__(self):
        outer = StopFlag._active
        if outer is not None and outer is not self:
            self._outer = outer
            outer._depth += 1
            return outer
        self._depth += 1
        if self._depth > 1:
            return self
        for sig in _STOP_SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        StopFlag._active = self
        return self

    def _handler(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop at once
        self.signal = signum

    def __exit__(self, *exc):
        if self._outer is not None:
            self._outer._depth -= 1
            self._outer = None
            return
        self._depth -= 1
        if self._depth > 0:
            return
        StopFlag._active = None
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def worker_init(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT and SIGTERM: a Ctrl-C or a SIGTERM sent to the process
    group reaches the main process, which owns the shutdown (it saves, then ends the workers).
    The workers start with these signals blocked (see :func:`start_workers`); once ignored,
    they are unblocked and any pending one is discarded."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def start_workers(loader):
    """``iter(loader)`` with SIGINT/SIGTERM blocked while the worker processes start, so that
    none of them can die of a signal before :func:`worker_init` runs; a signal sent meanwhile
    is delivered to the main process right after."""
    if not hasattr(signal, "pthread_sigmask") or loader.num_workers == 0:
        return iter(loader)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_workers(it) -> None:
    shutdown = getattr(it, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def dead_workers(it, wait: float = 0.0) -> list:
    """Process ids of the iterator's DataLoader workers that are no longer alive; with ``wait``,
    first up to that many seconds for one to end. A killed worker's sockets and sentinel close a
    moment before the kernel makes it a zombie that can be waited for, so a ready sentinel is not
    yet a dead process: its state is polled until the deadline."""
    workers = getattr(it, "_workers", None) or []
    deadline = time.monotonic() + wait
    while True:
        out = []
        for w in workers:
            try:
                if not w.is_alive():
                    out.append(w.pid)
            except (AssertionError, ValueError, OSError):
                pass
        left = deadline - time.monotonic()
        if out or left <= 0 or not workers:
            return out
        from multiprocessing.connection import wait as wait_for

        try:
            ready = wait_for([w.sentinel for w in workers], timeout=left)
        except (OSError, ValueError):
            ready = []
        if ready:
            time.sleep(min(0.01, max(left, 0.0)))  # a sentinel closed: the exit is moments away


def is_worker_death(exc: BaseException) -> bool:
    text = str(exc)
    return (
        isinstance(exc, RuntimeError)
        and "DataLoader worker" in text
        and (
            "exited unexpectedly" in text
            or "killed by signal" in text
            or "is killed" in text
            or "terminated by signal" in text
        )
    )


class WorkerWatch:
    """While active, a DataLoader worker's death is recorded (``error``) instead of raised from
    torch's SIGCHLD handler at an arbitrary point of a training step (which could leave the
    weights half-updated); the loop checks it between steps, then saves and stops."""

    def __init__(self):
        self.error = None
        self._old = None

    def __enter__(self):
        if hasattr(signal, "SIGCHLD"):
            try:
                self._old = signal.signal(signal.SIGCHLD, self._handler)
            except ValueError:  # not the main thread
                self._old = None
        return self

    def _handler(self, signum, frame):
        try:
            from torch.utils.data._utils.signal_handling import _error_if_any_worker_fails

            _error_if_any_worker_fails()
        except RuntimeError as exc:
            if self.error is None:
                self.error = exc

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGCHLD, self._old)
            self._old = None
