"""Files in and out: the atomic writer, the pixel mapping, video/GIF writing, output paths.

* **Atomic writes** (:func:`atomic_write` and its bytes/text/JSON forms) -- the one writer of
  the package. Every output that a crash, a kill or a full disk must not leave half-written (checkpoints,
``history.json``, ``eval.json``, ``config.json``, the video index, predictions, plots) goes
through :func:`atomic_write`: the bytes go to a new, uniquely named temporary file in the target's
folder (``.<name>.<random>.tmp``), are flushed to the disk, and the file is renamed over the
target. Readers see the old file or the new one, never a mix; a failed write (``OSError``, e.g.
  ``ENOSPC``) removes the temporary file and leaves the old target untouched.
* **The pixel mapping** of the package (:func:`normalize`, :func:`denormalize`, :func:`to_uint8`):
  frames are float32 in [-1, 1], made from 8-bit RGB as ``(x - 127.5) / 127.5``.
* **Video and GIF writing** (:func:`encode_video`, :func:`write_animation`) and the side-by-side
  picture of expected and generated frames (:func:`side_by_side`).
* **Output paths** checked before work starts (:func:`check_output_file`,
  :func:`prepare_output_dir`): :class:`~pyframepred.errors.OutputError` when unusable.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from fractions import Fraction
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch

from .errors import ConfigError, OutputError

__all__ = [
    "check_memory",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "create_temp",
    "temp_name_pattern",
    "normalize",
    "normalize_into",
    "denormalize",
    "to_uint8",
    "frames_to_uint8",
    "encode_video",
    "write_animation",
    "check_fps",
    "video_rate",
    "gif_delay",
    "GIF_FPS",
    "VIDEO_FPS",
    "side_by_side",
    "check_output_file",
    "prepare_output_dir",
    "VIDEO_SUFFIXES",
]


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
            return os.open(
                tmp,
                os.O_WRONLY
                | os.O_CREAT
                | os.O_EXCL
                | getattr(os, "O_BINARY", 0)
                | getattr(os, "O_NOFOLLOW", 0),
                0o666,
            ), tmp
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


def atomic_write_bytes(path, data: Union[bytes, bytearray, memoryview], *, fsync: bool = True) -> Path:
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


# ----------------------------------------------------------------------------- pixels
_HALF = 127.5


def normalize(x):
    """Scale 8-bit pixel values to [-1, 1]: ``(x - 127.5) / 127.5``, as float32.

    Accepts a tensor or a NumPy array of any shape and dtype (typically uint8); the layout is not
    changed. Returns the same kind of object (tensor -> tensor, array -> array).
    """
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point() or x.dtype == torch.float64:
            x = x.to(torch.float32)
        else:
            x = x.clone()
        return x.sub_(_HALF).div_(_HALF)
    return (np.asarray(x, dtype=np.float32) - np.float32(_HALF)) / np.float32(_HALF)


def normalize_into(out: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """:func:`normalize` of ``pixels`` written into the float32 array ``out`` (same shape after
    broadcasting), without a temporary: the data loader's form."""
    np.copyto(out, pixels)
    out -= np.float32(_HALF)
    out /= np.float32(_HALF)
    return out


def denormalize(x, *, clamp: bool = False):
    """Inverse of :func:`normalize`: ``x * 127.5 + 127.5`` (floats in [0, 255]).

    ``clamp=True`` clips the result to [0, 255] (useful for model outputs that overshoot).
    Tensor in -> tensor out, array in -> array out; the dtype stays floating point.
    """
    if isinstance(x, torch.Tensor):
        y = x.to(torch.float32) * _HALF + _HALF if not x.is_floating_point() else x * _HALF + _HALF
        return y.clamp_(0.0, 255.0) if clamp else y
    y = np.asarray(x, dtype=np.float32) * np.float32(_HALF) + np.float32(_HALF)
    return np.clip(y, 0.0, 255.0) if clamp else y


def to_uint8(x):
    """[-1, 1] frames -> uint8 pixels (rounded and clamped), same layout; for saving or display."""
    y = denormalize(x, clamp=True)
    if isinstance(y, torch.Tensor):
        return y.round_().to(torch.uint8)
    return np.rint(y).astype(np.uint8)


def frames_to_uint8(x: torch.Tensor) -> np.ndarray:
    """``(T, C, H, W)`` in [-1, 1] -> uint8 ``(T, H, W, 3)`` (NumPy, for writing; grey frames,
    ``C = 1``, as RGB)."""
    x = x.detach().float().cpu()
    if x.shape[-3] == 1:
        x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
    return to_uint8(x).permute(0, 2, 3, 1).numpy()


def side_by_side(
    expected: torch.Tensor, generated: torch.Tensor, n_input: int, scale: int = 2, gap: int = 4
) -> np.ndarray:
    """Frames of two clips next to each other (expected left, generated right), uint8
    ``(T, H', W', 3)``. The first ``n_input`` frames are the inputs (same on both sides); the
    predicted frames get a red border on the generated side."""
    e = frames_to_uint8(expected)
    g = frames_to_uint8(generated)
    if scale > 1:
        e = e.repeat(scale, 1).repeat(scale, 2)
        g = g.repeat(scale, 1).repeat(scale, 2)
    t, h, w, _ = e.shape
    out = np.full((t, h + 2 * gap, 2 * w + 3 * gap, 3), 255, np.uint8)
    for i in range(t):
        out[i, gap : gap + h, gap : gap + w] = e[i]
        x0 = 2 * gap + w
        if i >= n_input:
            out[i, gap - 2 : gap + h + 2, x0 - 2 : x0 + w + 2] = (220, 30, 30)
        out[i, gap : gap + h, x0 : x0 + w] = g[i]
    return out


# ----------------------------------------------------------------------------- video
#: Containers :func:`write_animation` writes H.264 into, by file suffix.
VIDEO_SUFFIXES = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov"}


def encode_video(
    path,
    frames: np.ndarray,
    fps: float = 25,
    *,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    container: str | None = None,
) -> None:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames to ``path`` with PyAV (the package's one encode
    loop; the container follows the suffix unless ``container`` names it) at exactly ``fps``
    frames per second (a float given for a fraction, 30000/1001 say, is read as that fraction;
    :data:`VIDEO_FPS` is the range, :class:`ConfigError` outside it). ``yuv420p`` needs even
    sizes: odd ones are padded by repeating the last row/column."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if pix_fmt == "yuv420p" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = np.pad(
            frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge"
        )
    rate = video_rate(fps)
    # absolute: FFmpeg reads a relative "a:b.mp4" as a URL of the protocol "a"
    with av.open(os.path.abspath(path), mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = dict(options)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


#: The frame rates :func:`encode_video` writes, exactly: a frame an hour to 1000 a second (FFmpeg's
#: MP4 writer fails or drops frames that last about 18 hours; Matroska counts milliseconds).
VIDEO_FPS = (Fraction(1, 3600), Fraction(1000))
#: The frame rates a GIF plays: its frame delays are whole hundredths of a second up to 65535
#: (655.35 s), and viewers play delays under 0.02 s at a speed of their own (about 0.1 s).
GIF_FPS = (Fraction(100, 65535), Fraction(50))
_GIF_MAX_DELAY = 65535  # hundredths of a second (a 16-bit field)
_VIDEO_RANGE = "1/3600 (a frame an hour) to 1000"
_GIF_RANGE = "100/65535 (a frame every 655.35 s) to 50"


def _within(fps, bounds) -> bool:
    lo, hi = bounds  # a float typed as a fraction (100/65535) may miss its bound by a rounding
    return float(lo) * (1 - 1e-12) <= fps <= float(hi) * (1 + 1e-12)


def check_fps(fps, suffix: str | None = None) -> None:
    """:class:`ConfigError` unless ``fps`` is a positive number and, for a file of ``suffix``
    (``.gif``, or a video's: ``.mp4``, ``.mkv``, ``.mov``), within the rates it can play
    (:data:`GIF_FPS`, :data:`VIDEO_FPS`)."""
    if not (isinstance(fps, (int, float, Fraction)) and math.isfinite(fps) and fps > 0):
        raise ConfigError(f"`fps` must be a positive number, got {fps}")
    suffix = (suffix or "").lower()
    if suffix == ".gif" and not _within(fps, GIF_FPS):
        raise ConfigError(
            f"`fps` {float(fps):g} cannot be played by a GIF (its frame delays are whole hundredths "
            f"of a second, at most 655.35 s, and viewers play delays under 0.02 s at their own "
            f"speed): .gif takes {_GIF_RANGE}, .mp4 {_VIDEO_RANGE}"
        )
    if suffix in VIDEO_SUFFIXES and not _within(fps, VIDEO_FPS):
        raise ConfigError(
            f"`fps` {float(fps):g} is outside the frame rates written to {suffix} files: {_VIDEO_RANGE}"
        )


def video_rate(fps) -> Fraction:
    """``fps`` as the exact frame rate :func:`encode_video` writes: a float given for a fraction
    (30000/1001, 1/2500) is that fraction; :class:`ConfigError` outside :data:`VIDEO_FPS`."""
    check_fps(fps, ".mp4")
    rate = Fraction(fps).limit_denominator(10**6)  # numerator and denominator fit FFmpeg's int32
    return min(max(rate, VIDEO_FPS[0]), VIDEO_FPS[1])


def gif_delay(frames: np.ndarray, fps) -> int:
    """The frame delay in milliseconds (a whole number of hundredths of a second) of a GIF of
    ``frames`` at ``fps``; :class:`ConfigError` where ``fps`` is outside :data:`GIF_FPS`, or where
    a run of identical frames (which the GIF writer stores as one frame showing for all of their
    time) would last longer than a GIF frame can."""
    check_fps(fps, ".gif")
    delay = min(max(round(100 / fps), 2), _GIF_MAX_DELAY)
    run = longest = 1
    for a, b in zip(frames[:-1], frames[1:]):
        run = run + 1 if np.array_equal(a, b) else 1
        longest = max(longest, run)
    if longest * delay > _GIF_MAX_DELAY:
        raise ConfigError(
            f"at `fps` {float(fps):g} the GIF would show {longest} identical frames as one for "
            f"{longest * delay / 100:g} s, longer than a GIF frame can last (655.35 s); raise "
            f"`fps` or write .mp4"
        )
    return delay * 10


def write_animation(frames: np.ndarray, path, fps: float = 4.0) -> Path:
    """Write uint8 ``(T, H, W, 3)`` frames as a GIF or (``.mp4``, ``.mkv``, ``.mov``) an H.264
    video, atomically (a temporary file renamed over ``path``: a symbolic link at ``path`` is
    replaced, its target is not written through). A video plays at exactly ``fps`` (within
    :data:`VIDEO_FPS`); a GIF at the nearest whole hundredth of a second per frame (within
    :data:`GIF_FPS`); :class:`ConfigError` outside those ranges, before anything is written."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix != ".gif" and suffix not in VIDEO_SUFFIXES:
        raise ConfigError(f"output must end in .gif or .mp4, got '{path.name}'")
    check_fps(fps, suffix)
    if suffix == ".gif":
        duration = gif_delay(frames, fps)

    def write_gif(tmp):
        from PIL import Image

        imgs = [Image.fromarray(f) for f in frames]
        try:
            imgs[0].save(tmp, format="GIF", save_all=True, append_images=imgs[1:], duration=duration, loop=0)
        except OverflowError:  # frames that only became identical in the GIF's palette
            raise ConfigError(
                f"at `fps` {float(fps):g} a GIF frame would last longer than a GIF frame can "
                f"(655.35 s); raise `fps` or write .mp4"
            ) from None

    def write_video(tmp):
        encode_video(tmp, frames, fps, container=VIDEO_SUFFIXES[suffix])

    return atomic_write(path, write_gif if suffix == ".gif" else write_video)


# ----------------------------------------------------------------------------- output paths
def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_memory(nbytes: int, what: str, hint: str) -> None:
    """:class:`ConfigError` where ``what`` would take more than half this machine's physical
    memory (a setting of absurd size, say, refused before anything is allocated)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):  # not a POSIX system: nothing to compare with
        return
    if nbytes > total // 2:
        size = f"{nbytes / 2**30:,.1f} GiB" if nbytes < 2**80 else "more than any memory"
        raise ConfigError(
            f"{what} would take {size}, more than half this machine's memory "
            f"({total / 2**30:.1f} GiB); {hint}"
        )


def _probe_writable(folder: Path, what: str) -> None:
    """Create and delete a file in ``folder``; :class:`OutputError` if that fails."""
    try:
        fd, tmp = create_temp(folder, "write-test")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise OutputError(f"cannot write {what}: {exc.strerror or exc}") from exc


def check_output_file(path, setting: str = "out", inputs: dict | None = None) -> None:
    """Before the work starts: :class:`OutputError` unless the file ``path`` can be written (its
    folder exists or can be created, and is writable; ``path`` is not a folder, nor one of the
    files ``inputs`` maps descriptions to, e.g. ``{"the input video": video}``, under any name).
    ``setting`` names the option that gave the path, in the message."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"`{setting}` '{path}' is a directory; give a file name")
    for what, source in (inputs or {}).items():
        try:
            same = os.path.samefile(path, source)
        except (OSError, TypeError, ValueError):  # one of them missing, or no path at all
            same = False
        if same:
            raise OutputError(
                f"`{setting}` '{path}' is {what}, which writing it would destroy; give another file name"
            )
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise OutputError(f"`{setting}` '{path}': '{base}' exists and is not a directory")
    _probe_writable(base, f"`{setting}` '{path}' (in '{base}')")


def prepare_output_dir(path, setting: str = "out") -> Path:
    """Create the output folder ``path`` (and its parents); :class:`OutputError` if it is a file
    or cannot be created or written to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"`{setting}` '{path}' exists and is not a directory")
    base = _nearest_existing(path)
    if not base.is_dir():
        raise OutputError(f"`{setting}` '{path}': '{base}' exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the output folder `{setting}` '{path}': {exc.strerror or exc}"
        ) from exc
    _probe_writable(path, f"to the output folder `{setting}` '{path}'")
    return path
