"""A training run's output folder is owned by one run at a time.

:class:`RunFolderLock` takes an exclusive ``flock`` on ``<folder>/.pyframepred.lock`` for the
lifetime of the run (the file itself stays, empty: it is never rewritten, so a refused run
changes nothing in the folder). The lock belongs to the open file, so it goes away with the process however
that ends (a crash or ``kill -9`` included): a stale lock file never blocks a later run. On file
systems without ``flock`` support (some network file systems) the run goes on unlocked.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["LOCK_FILENAME", "FolderBusyError", "RunFolderLock"]

LOCK_FILENAME = ".pyframepred.lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock."""


class RunFolderLock:
    """Exclusive, non-blocking lock of a run folder (a context manager; :meth:`release` is
    idempotent)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILENAME
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunFolderLock":
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusyError(f"'{self.folder}' is in use by another training run") \
                    from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return self                          # no flock here: carry on unlocked
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)                              # closing the file drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()
