"""Decoding frames with decord at a chosen size, around decord's output-size bug.

decord (0.6.x, dmlc/decord#336) cannot hand out frames of some widths: ``get_batch`` raises
``DECORDError ... Check failed: from_size == to_size (9216 vs. 6912)`` and single frames come back
with a wrong channel count. It happens both when decord scales (``width=``/``height=``) and at a
video's own size, at any height; widths seen failing: 1-4, 6, 8, 12, 16, 24, 48, 72 (20, 32, 33,
40, 56, 64, 96, 100, 144 and odd widths of 5 or more work).

:func:`decode_frames` (used by :class:`~pyframepred.data.VideoClips`) and :class:`FrameReader`
(a drop-in for ``decord.VideoReader(path, width=W, height=H)`` in scripts) first ask decord for
the target size and check what comes back. When that fails they decode at the video's own size
(or, when that width is affected too, at the nearest unaffected odd width) and resize with torch
(bilinear, antialiased, rounded to uint8). Which way worked is remembered per video and size (in
this process), so the fast path is kept wherever it works; a width that failed on two videos and
never worked is then not tried directly on new videos either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ._common import as_hw, decodable_path, frame_offsets, integer, logger
from .index import not_a_video

__all__ = ["decode_frames", "FrameReader", "resize_frames", "read_clip"]

# (path, requested size or None) -> the decord request that worked last: _DIRECT (the requested
# size), _NATIVE (the video's own size, then resized) or _SAFE (an unaffected width, resized).
_routes: dict = {}
# output width asked of decord -> [times it worked, times it failed]
_width_stats: dict[int, list[int]] = {}
_DIRECT, _NATIVE, _SAFE = "direct", "native", "safe"


def _as_numpy(batch) -> np.ndarray:
    # decord returns its own NDArray, or a torch/other array when a global bridge was set.
    if isinstance(batch, torch.Tensor):
        return batch.numpy()
    if hasattr(batch, "asnumpy"):
        return batch.asnumpy()
    return np.asarray(batch)


def resize_frames(arr: np.ndarray, size) -> np.ndarray:
    """uint8 ``(T, h, w, 3)`` frames resized to ``size=(H, W)``: bilinear, antialiased (torch),
    rounded and clamped to uint8. Returns ``arr`` itself when it already has that size."""
    h, w = as_hw(size)
    if arr.shape[1:3] == (h, w):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    t = torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _open(path: str, request, num_threads: int):
    import decord

    h, w = request if request is not None else (-1, -1)
    try:
        # Absolute: FFmpeg takes a relative "a:b.mp4" for a URL of the protocol "a". A name that
        # is not UTF-8: opened through its fd.
        with decodable_path(os.path.abspath(path)) as p:
            return decord.VideoReader(p, ctx=decord.cpu(0), width=w, height=h, num_threads=num_threads)
    except Exception:
        if os.path.isdir(path):
            raise IsADirectoryError(f"'{path}' is a folder, not a video file") from None
        if not os.path.exists(path):
            raise FileNotFoundError(f"video file '{path}' does not exist") from None
        raise


def _native_size(path: str) -> tuple[int, int]:
    vr = _open(path, None, 1)
    shape = vr[0].shape  # right height and width even when the channel count is wrong
    return int(shape[0]), int(shape[1])


def _safe_request(native_size) -> tuple[int, int]:
    # Odd widths of 5 or more have not been seen failing; the nearest one above the video's own.
    nh, nw = native_size
    return nh, max(5, nw + 1) | 1


def _width_is_bad(width) -> bool:
    ok, failed = _width_stats.get(width, (0, 0))
    return failed >= 2 and ok == 0


def _note(width, worked: bool) -> None:
    if width is not None:
        _width_stats.setdefault(width, [0, 0])[0 if worked else 1] += 1


def decode_frames(
    path, indices: Sequence[int], size=None, *, native_size=None, num_threads: int = 1
) -> np.ndarray:
    """Frames ``indices`` (0-based, decode order) of the video ``path`` as uint8 ``(T, H, W, 3)``
    RGB, at ``size=(H, W)`` (or an int; ``None``: the video's own size).

    decord scales directly to ``size`` where it can; where its output-size bug strikes, the frames
    are decoded at another size and resized with :func:`resize_frames` (see the module's notes).
    ``native_size=(h, w)``, the video's own size when the caller knows it (the index does), saves
    probing it. Raises ``FileNotFoundError`` / ``IsADirectoryError`` for a missing path or a
    folder, and decord's error when the file does not decode at any size.
    """
    path = os.fspath(path)
    indices = [int(i) for i in indices]
    size = as_hw(size)
    native_size = as_hw(native_size)
    if size is not None and size == native_size:
        size = None  # no scaling: decord's plain path
    n = len(indices)
    key = (path, size)

    # decord requests, best first: the requested size, the video's own size, a size decord has no
    # trouble with. The one that worked last time for this video goes first; a width known to
    # fail goes last (still tried before giving up).
    routes = [_DIRECT, _NATIVE, _SAFE] if size is not None else [_DIRECT, _SAFE]
    if size is not None and _width_is_bad(size[1]):
        routes.append(routes.pop(0))
    if native_size is not None and _width_is_bad(native_size[1]):
        routes.append(routes.pop(routes.index(_DIRECT if size is None else _NATIVE)))
    if key in _routes:
        routes.insert(0, routes.pop(routes.index(_routes[key])))
    last_error = None
    for route in routes:
        if route == _SAFE:
            if native_size is None:
                native_size = _native_size(path)
            request = _safe_request(native_size)
        else:
            request = size if route == _DIRECT else None
        want = request if request is not None else native_size  # None: any size
        vr = _open(path, request, num_threads)  # a file that does not open: no size helps
        try:
            arr = _as_numpy(vr.get_batch(indices))
        except Exception as exc:  # decord.DECORDError for the size bug, or a decoding error
            arr, last_error = None, exc
        finally:
            del vr
        if arr is not None:
            if (
                arr.ndim == 4
                and arr.shape[0] == n
                and arr.shape[-1] == 3
                and arr.dtype == np.uint8
                and (want is None or tuple(arr.shape[1:3]) == want)
            ):
                _note(arr.shape[2], True)
                if _routes.get(key) != route:
                    if route != _DIRECT:
                        logger.debug(
                            "%s: decord cannot give frames at %s; decoding at %s and resizing with torch",
                            path,
                            size or "the video's own size",
                            request or "the video's own size",
                        )
                    _routes[key] = route
                if route == _DIRECT:
                    return np.ascontiguousarray(arr)
                return resize_frames(arr, size or native_size)
            at = f"{request[0]}x{request[1]}" if request is not None else "its own size"
            last_error = RuntimeError(
                f"decord returned an array of shape {tuple(arr.shape)} ({arr.dtype}) for {n} "
                f"frames of '{path}' decoded at {at}"
            )
        _note(want[1] if want is not None else None, False)
    _routes.pop(key, None)
    raise last_error


class FrameReader:
    """A video file opened for decoding at ``size`` (``(H, W)``, an int, or ``None`` for the
    video's own size): a drop-in for ``decord.VideoReader(path, width=W, height=H)`` that works
    around decord's output-size bug (see :func:`decode_frames`).

    ``len(reader)`` is the frame count, ``reader.fps`` the average frame rate,
    ``reader.native_size`` the video's own ``(h, w)``; ``reader.get_batch(indices)`` returns
    uint8 ``(T, H, W, 3)`` frames as a NumPy array. A missing path raises ``FileNotFoundError``, a
    folder ``IsADirectoryError``, a file that does not open decord's error.
    """

    def __init__(self, path, size=None, *, num_threads: int = 1):
        self.path = Path(path)
        p = os.fspath(self.path)
        if os.path.isdir(p):
            raise IsADirectoryError(f"'{p}' is a folder, not a video file")
        if not os.path.exists(p):
            raise FileNotFoundError(f"video file '{p}' does not exist")
        vr = _open(p, None, num_threads)
        self._len = len(vr)
        fps = float(vr.get_avg_fps())
        self.fps = fps if np.isfinite(fps) and fps > 0 else 0.0
        shape = vr[0].shape if self._len else (0, 0)
        self.native_size = (int(shape[0]), int(shape[1]))
        self.size = as_hw(size)
        self.num_threads = int(num_threads)

    def __len__(self) -> int:
        return self._len

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Frames ``indices`` as uint8 ``(T, H, W, 3)``."""
        return decode_frames(
            self.path, indices, self.size, native_size=self.native_size, num_threads=self.num_threads
        )

    def __repr__(self) -> str:
        return (
            f"FrameReader('{self.path}', frames={self._len}, native_size={self.native_size}, "
            f"size={self.size})"
        )


def read_clip(video, n_in: int, steps: int, interval: int, size, start=None, fps=None):
    """``(frames, n_real)`` for predicting ``steps`` frames from ``n_in`` frames of ``video``:
    float32 ``(n_in + steps, 3, H, W)`` in [-1, 1], taken ``interval`` frames apart (frames at
    ``fps``, as :class:`~pyframepred.data.VideoClips` counts them, where given) from ``start``
    (default: centred in the video), at ``size`` (``(H, W)``; ``None``: the video's own; an
    int: the short side, the aspect ratio kept), and the number of frames read (frames past
    the end are grey). Unusable input is a :class:`~pyframepred.errors.ConfigError`."""
    from ..errors import ConfigError
    from ..io import check_memory, normalize

    if not os.fspath(video):  # Path("") would be the current folder
        raise ConfigError("the video path is empty")
    path = Path(video)
    if path.is_dir():
        raise ConfigError(f"'{path}' is a folder, not a video file")
    if not path.is_file():
        there = path.exists() or path.is_symlink()
        raise ConfigError(f"video '{path}' " + ("is not a regular file" if there else "does not exist"))
    reason = not_a_video(os.fspath(path))  # as indexing does: without decord's lines on stderr
    if reason is not None:
        raise ConfigError(f"cannot read video '{path}': not a video: {reason}")
    side = integer(size)  # an integer (NumPy's too) is the short side, as in VideoClips
    try:
        vr = FrameReader(path, size=None if side is not None else size)
    except Exception as exc:  # noqa: BLE001 - decord raises its own error types
        raise ConfigError(f"cannot read video '{path}': {' '.join(str(exc).split())[:200]}") from exc
    if side is not None:  # the other side follows the video's aspect ratio
        size = side
        h, w = vr.native_size
        vr.size = (size, max(1, round(w * size / h))) if h <= w else (max(1, round(h * size / w)), size)
    n, total = len(vr), n_in + steps
    h, w = vr.size if vr.size is not None else vr.native_size
    check_memory(
        total * 3 * h * w * 4,
        f"{n_in} input and {steps} predicted frames of {h}x{w}",
        "predict fewer `steps`, or at a smaller `size`",
    )
    offsets = frame_offsets(total, interval, vr.fps / fps if fps and vr.fps > 0 else 1.0)
    need_in = offsets[n_in - 1] + 1
    if n < need_in:
        raise ConfigError(
            f"video '{path}' has {n} frame{'s' if n != 1 else ''}; {n_in} input "
            f"frames {interval} apart{f' at {fps:g} fps' if fps else ''} need {need_in}"
        )
    if start is None:
        start = max(0, (n - (offsets[-1] + 1)) // 2)
    if not 0 <= start <= n - need_in:
        raise ConfigError(f"`start` must be in [0, {n - need_in}] for this video, got {start}")
    idx = [start + o for o in offsets]
    real = [i for i in idx if i < n]
    try:
        arr = vr.get_batch(real)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"cannot decode video '{path}': {' '.join(str(exc).split())[:200]}") from exc
    x = normalize(torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2))
    if len(real) < total:
        x = torch.cat([x, torch.zeros(total - len(real), *x.shape[1:])])
    return x, len(real)
