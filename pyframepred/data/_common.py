"""Small shared helpers of :mod:`pyframepred.data`: cache folder, logger, atomic writes."""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

logger = logging.getLogger("pyframepred.data")

#: File extensions (lower case) that are treated as videos.
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm")


def default_cache_dir() -> Path:
    """Folder for pyframepred's cached data (synthetic data set, video indexes).

    ``$PYFRAMEPRED_CACHE`` when set, otherwise ``$XDG_CACHE_HOME/pyframepred`` when
    ``XDG_CACHE_HOME`` is set, otherwise ``~/.cache/pyframepred``. The folder is not created here.
    """
    env = os.environ.get("PYFRAMEPRED_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "pyframepred"
    return Path.home() / ".cache" / "pyframepred"


def atomic_write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename.

    Readers never see a half-written file; concurrent writers each produce a complete file and the
    last rename wins. Raises ``OSError`` when the folder is not writable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, separators=(",", ":"), sort_keys=True)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an index of shared data is not secret
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def as_hw(size) -> tuple[int, int] | None:
    """Normalise a size argument: ``None``, an int ``s`` -> ``(s, s)``, or ``(height, width)``."""
    if size is None:
        return None
    if isinstance(size, int):
        h = w = size
    else:
        try:
            h, w = size
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or a (height, width) pair, got {size!r}") from None
    h, w = int(h), int(w)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w
