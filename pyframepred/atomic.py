"""The one atomic file writer of the package.

Every output that a crash, a kill or a full disk must not leave half-written (checkpoints,
``history.json``, ``eval.json``, ``config.json``, the video index, predictions, plots) goes
through :func:`atomic_write`: the bytes go to a new, uniquely named temporary file in the target's
folder (``.<name>.<random>.tmp``), are flushed to the disk, and the file is renamed over the
target. Readers see the old file or the new one, never a mix; a failed write (``OSError``, e.g.
``ENOSPC``) removes the temporary file and leaves the old target untouched.
"""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Callable, Union

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
           "create_temp", "temp_name_pattern"]


def temp_name_pattern(name: str) -> str:
    """The glob pattern of the temporary files :func:`atomic_write` makes for a target ``name``."""
    return f".{name}.*.tmp"


def create_temp(folder, name: str):
    """``(fd, path)`` of a new file ``.<name>.<random>.tmp`` in ``folder``, opened for writing and
    created with mode 0666 minus the umask (like any other output file; ``tempfile.mkstemp``
    would give 0600)."""
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                           | getattr(os, "O_NOFOLLOW", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file in '{folder}'")


def _fsync_folder(folder) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[str], None], *, fsync: bool = True) -> Path:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a fresh temporary file in the same
    folder (it may reopen the file by name, e.g. for libraries that only take a file name), which
    is then renamed over ``path``. ``path`` itself is replaced, never written through: when it is
    a symbolic link, the link is replaced by the new file and its target is left alone.

    Raises what ``write`` or the file system raise (``OSError``); the temporary file is removed
    and ``path`` is as it was.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp(folder, path.name)
    os.close(fd)
    try:
        write(tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_folder(folder)
    return path


def atomic_write_bytes(path, data: Union[bytes, bytearray, memoryview], *,
                       fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    def write(tmp):
        view = memoryview(data)
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0))
        try:
            while view:
                n = os.write(fd, view)
                view = view[n:]
        finally:
            os.close(fd)

    return atomic_write(path, write, fsync=fsync)


def atomic_write_text(path, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path, obj, *, fsync: bool = True, **dumps_kwargs) -> Path:
    """Write ``obj`` as JSON (``json.dumps(obj, **dumps_kwargs)``, UTF-8) to ``path`` atomically.
    The text is made before anything is written, so an object that cannot be serialised leaves
    no file behind."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs), fsync=fsync)
