"""Small shared helpers of :mod:`pyframepred.data`: cache folder, logger, atomic writes."""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger("pyframepred.data")

#: File extensions (lower case) that are treated as videos.
# Containers FFmpeg (decord's decoder) reads that hold camera and web video. Not ".ts": a data
# folder's TypeScript would be probed as video.
VIDEO_EXTENSIONS = (
    ".avi", ".mp4", ".m4v", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".mts", ".m2ts", ".wmv",
    ".flv", ".3gp", ".ogv",
)  # fmt: skip


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
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename (the package's
    one atomic writer, :mod:`pyframepred.io`).

    Readers never see a half-written file; concurrent writers each produce a complete file and the
    last rename wins. Raises ``OSError`` when the folder is not writable.
    """
    from ..io import atomic_write_json as write

    write(path, obj, separators=(",", ":"), sort_keys=True)


@contextlib.contextmanager
def decodable_path(path):
    """A name under which decord (which takes UTF-8 text) can open the file ``path``.

    A name that is not valid UTF-8 (e.g. a Latin-1 byte, which Python holds as a surrogate
    escape) cannot be handed to decord; on Linux the file is then opened here and decord gets
    ``/proc/self/fd/N`` for as long as the context lasts."""
    p = os.fspath(path)
    try:
        p.encode("utf-8")
    except UnicodeEncodeError:
        if not os.path.isdir("/proc/self/fd"):
            yield p
            return
        fd = os.open(p, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    yield p


def integer(value) -> int | None:
    """``value`` as an int where it is an integer (Python, NumPy or a one-element integer tensor;
    not a bool, a float or a string), else ``None``."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_whole(value, name: str, low: int, what: str) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is a whole number >= ``low`` (an integer,
    or a float such as 4.0; not a bool, a string or ``None``)."""
    try:
        ok = not isinstance(value, bool) and int(value) == value and value >= low
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def as_hw(size) -> tuple[int, int] | None:
    """Normalise a size argument: ``None``, an integer ``s`` -> ``(s, s)``, or ``(height, width)``
    integers; anything else (a string, floats, a bool) is a ``ValueError``."""
    if size is None:
        return None
    what = f"size must be an int or a (height, width) pair of ints, got {size!r}"
    side = integer(size)
    if side is not None:
        h = w = side
    else:
        try:
            h, w = (None, None) if isinstance(size, (str, bytes)) else size
        except (TypeError, ValueError):
            raise ValueError(what) from None
        h, w = integer(h), integer(w)
        if h is None or w is None:
            raise ValueError(what)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def frame_offsets(frames: int, interval: int, rate_ratio: float = 1.0) -> list[int]:
    """Frame numbers of a clip's frames after its first: ``interval`` frames skipped between two,
    counted at a frame rate ``rate_ratio`` times slower than the video's own (its fps / the clip's
    fps), each frame the nearest in time."""
    return [frame_offset(k, interval, rate_ratio) for k in range(frames)]


def frame_offset(k: int, interval: int, rate_ratio: float = 1.0) -> int:
    """The frame number of a clip's frame ``k`` after its first (``frame_offsets(...)[k]``, without
    the list: what a clip of ``k + 1`` frames spans, for any ``k``)."""
    return int(math.floor(k * (interval + 1) * rate_ratio + 0.5))


class NoVideosError(ConfigError):
    """No usable video in the data folder (none found, or none left after filtering); a
    :class:`~pyframepred.errors.ConfigError` (and a ``ValueError``)."""


class EmptySplitError(NoVideosError):
    """The group train/test split left the requested side without videos (e.g. the data has a
    single group); the message says why and names the ways out (``test_fraction=0``, split lists,
    more groups), :attr:`situation` only why (for callers whose ways out are other settings)."""

    def __init__(self, message: str, situation: str | None = None):
        super().__init__(message)
        self.situation = message if situation is None else situation


class NoDecodableVideosError(NoVideosError, RuntimeError):
    """Every video of a :class:`VideoClips` failed to decode when its clips were read (the files
    changed or broke after indexing). A :class:`NoVideosError`, and a ``RuntimeError`` as before."""
