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
from typing import Optional

__all__ = [
    "LOCK_FILENAME",
    "FolderBusyError",
    "RunFolderLock",
    "claim",
    "missing_folders",
    "old_outputs",
    "remove_unused",
    "run_files",
    "unchanged",
]

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
        #: ``(path, signature)`` of the files of the run an ``overwrite`` replaces, removed by the
        #: new run's first save where still unchanged (see :func:`claim`).
        self.replaced: list = []

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
        fd = os.open(
            self.path,
            os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
            0o666,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderBusyError(f"'{self.folder}' is in use by another training run") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return self  # no flock here: carry on unlocked
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the file drops the flock

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        self.release()


def claim(
    out: Path, resume, resume_step: int, overwrite: bool, resume_history: Optional[dict] = None
) -> RunFolderLock:
    """Lock the output folder ``out`` for a run, refuse to destroy another run's checkpoints, and
    remove the partial files of killed saves; returns the held lock.

    A new run (``resume`` is ``None``) refuses a folder that holds ``last.pt``/``best.pt``, and a
    resumed one refuses to replace a ``last.pt`` there that is newer than the checkpoint it
    continues (at ``resume_step``), unreadable, or of another run (its history, when
    ``resume_history`` is given, not the start of the resumed one's), unless ``overwrite``. A
    resumed run into a folder without ``last.pt`` other than its own refuses files a run writes
    there (:func:`run_files`), as a new run does, unless ``overwrite``. With ``overwrite``, another
    run's files (checkpoints, ``eval.json``, samples, TensorBoard event files) go after the new
    run's first save has written its own checkpoint, not before: a run that fails earlier loses no
    checkpoint. Refusals are :class:`~pyframepred.errors.OutputError`.
    """
    from ..errors import OutputError
    from . import checkpoint as ckpt_format

    lock = RunFolderLock(out)
    try:
        lock.acquire()
    except FolderBusyError as exc:
        raise OutputError(f"`out` {exc}; wait for it to finish, or use another `out`") from None
    except OSError as exc:
        raise OutputError(f"cannot lock the output folder `out` '{out}': {exc.strerror or exc}") from exc
    try:
        last, best = out / "last.pt", out / "best.pt"
        existing = [p for p in (last, best) if p.exists()]
        # What an `overwrite` replaces: the checkpoints there, their evaluation, the run's samples
        # and event files (the new run's files of the same names replace theirs as it writes them).
        old_run = _signed(existing + [p for p in (out / "eval.json",) if p.exists()] + old_outputs(out))
        into_other = resume is not None and not last.exists() and not _same_folder(resume, out)
        if (resume is None or into_other) and existing and not overwrite:
            raise OutputError(
                f"`out` '{out}' already holds a run's checkpoints "
                f"({', '.join(p.name for p in existing)}); continue it with `resume`, replace it "
                f"with `overwrite`, or choose another `out`"
            )
        if (resume is None or into_other) and not overwrite:
            written = run_files(out)
            if written:
                raise OutputError(
                    f"`out` '{out}' already holds files a run writes "
                    f"({', '.join(str(p.relative_to(out)) for p in written)}), which this run would "
                    f"replace; choose another `out`, or pass `overwrite` to replace them"
                )
        if resume is not None and last.exists():
            src = Path(resume)
            src = src / "last.pt" if src.is_dir() else src
            try:
                same = os.path.samefile(src, last)
            except OSError:
                same = False
            if not same:
                try:
                    there = ckpt_format.load(last)
                    newer = there.get("step", 0)
                except ckpt_format.CheckpointError:
                    there, newer = {}, None
                own = resume_history is not None and _starts(resume_history, there.get("history"))
                # resuming an earlier point of the run there (its best.pt, say): its other files
                # are this run's own, rewritten as it goes on
                rewind = resume_history is not None and _starts(there.get("history"), resume_history)
                if overwrite:
                    if not own and not rewind:  # another run's files: replaced at the first save
                        lock.replaced = old_run
                elif newer is None or not isinstance(newer, int) or newer > resume_step:
                    at = "an unreadable" if newer is None else f"a newer (step {newer})"
                    raise OutputError(
                        f"resuming '{src}' (step {resume_step}) into `out` '{out}' would "
                        f"replace {at} last.pt there; resume from '{last}' instead, pass "
                        f"`overwrite` to replace it, or choose another `out`"
                    )
                elif resume_history is not None and not own:
                    model = (there.get("config") or {}).get("model", "?")
                    raise OutputError(
                        f"`out` '{out}' holds another run's checkpoints (last.pt: model {model}, "
                        f"step {newer}), not an earlier point of the run resumed from '{src}'; "
                        f"choose another `out`, or pass `overwrite` to replace them"
                    )
        if (resume is None or into_other) and overwrite:  # replaced at the first save, not mixed
            lock.replaced = old_run
        ckpt_format.remove_stale_temps(out)
    except BaseException:
        lock.release()
        raise
    return lock


def run_files(out: Path) -> list:
    """The files besides the checkpoints that a run writes into ``out`` and that exist there:
    what a new run would replace (a failed run's, or files of the user's own of those names)."""
    names = [out / n for n in ("config.json", "history.json", "eval.json", "loss.png")]
    return [p for p in names if p.is_file()] + old_outputs(out)


def old_outputs(out: Path) -> list:
    """The files in ``out`` that a run writes under names of its own choosing (samples of a step,
    ``final.gif``, TensorBoard event files): what another run's ``overwrite`` removes, as no file
    of the new run need replace them."""
    found = []
    samples, events = out / "samples", out / "tensorboard"
    if samples.is_dir():
        found += sorted(p for p in samples.iterdir() if p.name == "final.gif" or p.name.startswith("step_"))
    if events.is_dir():
        found += sorted(p for p in events.iterdir() if p.name.startswith("events.out.tfevents."))
    return [p for p in found if p.is_file()]


def _signed(paths: list) -> list:
    """``(path, (inode, mtime))`` of each file: removed later only while it is still that file
    (a file the new run wrote under the same name since is another inode and stays)."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p, (st.st_ino, st.st_mtime_ns)))
    return out


def unchanged(path: Path, signature) -> bool:
    """Whether ``path`` is still the file :func:`_signed` saw."""
    try:
        st = path.stat()
    except OSError:
        return False
    return (st.st_ino, st.st_mtime_ns) == signature


def _same_folder(resume, out: Path) -> bool:
    """Whether the checkpoint ``resume`` (a file or its folder) lies in ``out``."""
    src = Path(resume)
    folder = src if src.is_dir() else src.parent
    try:
        return os.path.samefile(folder, out)
    except OSError:
        return False


def _starts(history: dict, head) -> bool:
    """Whether the training history ``head`` (a checkpoint's ``{"train": [...], "val": [...]}``)
    is the start of ``history``: an earlier checkpoint of the same run."""
    if not isinstance(head, dict) or not isinstance(history, dict):
        return False
    return all(
        isinstance(head.get(k), list)
        and isinstance(history.get(k), list)
        and history[k][: len(head[k])] == head[k]
        for k in ("train", "val")
    )


def missing_folders(path: Path) -> list:
    """The folders from ``path`` up that do not exist yet (deepest first): what creating
    ``path`` adds, so that a run that fails before writing anything can remove them again."""
    out, p = [], Path(path)
    while not p.exists() and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def remove_unused(created: list) -> None:
    """Remove the folders a failed run created (``created``: :func:`missing_folders` of its
    output folder, taken before), with its lock file, when nothing else was written there."""
    if not created:
        return
    lock = created[0] / LOCK_FILENAME
    try:
        if lock.exists() and [p.name for p in created[0].iterdir()] == [lock.name]:
            lock.unlink()
        for d in created:  # deepest first; rmdir leaves non-empty ones alone
            d.rmdir()
    except OSError:
        pass
