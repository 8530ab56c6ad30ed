"""Finding videos under a folder and indexing them (frame count, size, frame rate), with a cache.

Probing a video means opening it with decord (after PyAV has read the container's header, so
that a file that is no video is skipped quietly), reading its frame count, average frame rate and
frame size, and decoding its first and last frames (which catches files that do not open,
truncated files and files whose header announces frames that are not there). The results, failures
included, are kept in a JSON index keyed by the path relative to the data folder, together with
each file's size and modification time: a later run re-probes only new or changed files. Not
kept: failures that say nothing about the contents (no access, a probe timed out) and those of a
version-1 index (FFmpeg took a relative ``day:1/x.mp4`` for a URL; decoders now get absolute paths).

The index lives beside the data (``<root>/.pyframepred-index.json``); when that folder is not
writable it goes to ``<cache>/indexes/<hash of the folder's real path>.json`` instead (see
:func:`~pyframepred.data.default_cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ._common import VIDEO_EXTENSIONS, atomic_write_json, decodable_path, default_cache_dir, logger

__all__ = [
    "VideoInfo",
    "find_videos",
    "probe_video",
    "index_videos",
    "class_of",
    "group_of",
    "INDEX_FILENAME",
]

INDEX_FILENAME = ".pyframepred-index.json"
INDEX_VERSION = 2
# Failures of the file's access, not of its contents: retried, never remembered in the index.
_TRANSIENT = ("cannot open: ", "probe timed out")

# v_<Class>_g<group>_c<clip>, UCF-101's naming ("v_ApplyEyeMakeup_g08_c01.avi").
_UCF_NAME = re.compile(r"^v_(?P<cls>.+?)_g(?P<group>\d+)_c(?P<clip>\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class VideoInfo:
    """What the index knows about one video file.

    ``path`` is relative to the data folder (POSIX separators). ``error`` is ``None`` for a
    readable video, otherwise a one-line reason and the other numbers may be 0.
    """

    path: str
    frames: int
    height: int
    width: int
    fps: float
    size_bytes: int = 0
    mtime_ns: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def find_videos(root) -> list[str]:
    """Relative POSIX paths of the video files under ``root`` (recursive, sorted).

    An extension in :data:`VIDEO_EXTENSIONS` (any case) makes a file a video. Hidden files and
    folders (name starting with ``.``, which includes macOS ``._*`` resource forks) are ignored.
    Symbolic links are followed, each folder is walked once: a link back to a folder already
    walked (a loop, or a second link to the same folder) is skipped, so a loop neither hangs nor
    multiplies the data set; a file found under two names (a link to a video of the folder; of
    a hard link's, the one walked first) counts once, under its own name rather than a symbolic
    link's (logged), so that it cannot land on both sides of a train/test split. Only regular
    files count: a FIFO, socket or device named ``*.mp4`` (which would block the probe forever)
    and broken links are skipped (logged). File names are kept as the file system gives them
    (undecodable bytes as surrogate escapes)."""
    root = os.fspath(root)
    found: dict = {}  # (dev, inode, size, mtime: inodes repeat on some network mounts) -> (name, is link)
    seen = set()
    stack = [(root, "")]
    while stack:
        dirpath, rel = stack.pop()
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            logger.info("cannot read folder %s: %s", dirpath, exc)
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:
            logger.info(
                "skipping %s: that folder is already indexed (a symbolic link loop or a second link to it)",
                dirpath,
            )
            continue
        seen.add(key)
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            logger.info("cannot list folder %s: %s", dirpath, exc)
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append((entry.path, f"{rel}{name}/"))
                continue
            if os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                continue
            try:  # is_file and stat follow links; is_file is False for FIFOs, devices
                file_st, link = (entry.stat() if entry.is_file() else None), entry.is_symlink()
            except OSError:
                file_st = None
            if file_st is None:
                logger.info("skipping %s: not a regular file (or a broken link)", entry.path)
                continue
            key = (file_st.st_dev, file_st.st_ino, file_st.st_size, file_st.st_mtime_ns)
            this = (rel + name, link)
            other = found.setdefault(key, this)
            if other != this:
                keep, drop = (this, other) if other[1] and not link else (other, this)
                found[key] = keep
                logger.info("skipping %s: the same file as %s, indexed once", drop[0], keep[0])
        stack.extend(reversed(subdirs))  # depth-first, in name order
    return sorted(rel for rel, _ in found.values())


def class_of(rel_path: str, root_name: str = "") -> str:
    """Class name of a video: its parent folder; for files directly in the data folder the
    ``v_<Class>_gXX_cYY`` pattern of the file name; failing both, ``root_name``.

    The folder wins over the file name because UCF-101 itself is inconsistent in a few names
    (folder ``HandstandPushups``, files ``v_HandStandPushups_...``).
    """
    parts = rel_path.split("/")
    if len(parts) > 1:
        return parts[-2]
    match = _UCF_NAME.match(parts[-1])
    if match:
        return match.group("cls")
    return root_name


def group_of(rel_path: str) -> str | None:
    """UCF-101 group (``"08"`` for ``v_X_g08_c01``), or ``None`` when the name has none."""
    match = _UCF_NAME.match(rel_path.rsplit("/", 1)[-1])
    return match.group("group") if match else None


def _short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # decord's messages carry long "[hh:mm:ss] /github/workspace/src/..." prefixes; keep the end.
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def probe_video(path) -> dict:
    """Probe one file with decord. Returns ``frames, height, width, fps, error`` (never raises).

    The first and last frames are decoded. When the last frame announced by the container does not
    decode (a truncated file, or a count estimated from the duration), a few earlier frames are
    tried and the count is lowered to the last one that decodes; when none does, the file counts
    as unreadable.
    """
    import decord

    result = {"frames": 0, "height": 0, "width": 0, "fps": 0.0, "error": None}
    # Absolute: FFmpeg takes a relative "day:1/x.mp4" for a URL of the protocol "day".
    path = os.path.abspath(os.fspath(path))
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            result["error"] = "not a regular file"
            return result
        if st.st_size == 0:
            result["error"] = "empty file"
            return result
        with open(path, "rb") as fh:  # not readable here (permissions, I/O): not the contents' fault
            fh.read(1)
    except OSError as exc:
        result["error"] = "cannot open: " + _short_error(exc)
        return result
    with decodable_path(path) as dpath:
        return _probe(decord, dpath, result)


def not_a_video(path: str) -> str | None:
    """Why FFmpeg (through PyAV, which keeps FFmpeg's log quiet) finds no video in ``path``, or
    ``None``: a file that is no video (text, a cut-off header, sound only) is skipped with that
    reason and without decord's lines on stderr. Anything less certain (the header parses, or
    fails otherwise) is left to decord."""
    import av

    try:
        with av.open(path) as container:  # reads the header, decodes nothing
            return None if container.streams.video else "no video stream"
    except av.error.InvalidDataError as exc:
        return str(exc.strerror or "invalid data")
    except Exception:  # e.g. a demuxer only decord's FFmpeg has: decord decides
        return None


def _probe(decord, path: str, result: dict) -> dict:
    reason = not_a_video(path)
    if reason is not None:
        result["error"] = "not a video: " + reason
        return result
    try:
        vr = decord.VideoReader(path, num_threads=1)
        n = len(vr)
        if n <= 0:
            result["error"] = "no video frames"
            return result
        fps = float(vr.get_avg_fps())
        first = vr[0].shape
        result.update(
            height=int(first[0]), width=int(first[1]), fps=fps if math.isfinite(fps) and fps > 0 else 0.0
        )
    except Exception as exc:  # decord raises DECORDError or RuntimeError, sometimes others
        result["error"] = "cannot open or decode: " + _short_error(exc)
        return result
    last_error = None
    for back in (1, 2, 3, 5, 9, 17):
        k = n - back
        if k < 0:
            break
        try:
            if back > 1:  # a failed decode can leave the reader in a bad state: reopen
                vr = decord.VideoReader(path, num_threads=1)
            _ = vr[k].shape  # decodes frame k
        except Exception as exc:
            last_error = exc
            continue
        if k != n - 1:
            logger.info(
                "%s: the container announces %d frames but only %d decode; using %d", path, n, k + 1, k + 1
            )
        result["frames"] = k + 1
        return result
    result["error"] = "truncated or corrupt: last frames do not decode: " + _short_error(last_error)
    return result


def _index_locations(root: Path, cache_dir) -> list[Path]:
    real = os.path.realpath(root)
    key = hashlib.sha1(real.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return [root / INDEX_FILENAME, cache_dir / "indexes" / f"{key}.json"]


def _load_index(path: Path, root: Path) -> dict | None:
    """The ``videos`` table of the index file at ``path``, or ``None`` when there is none or it
    is unusable (not a regular file, not UTF-8 JSON, another version or layout). The index is a
    cache: anything wrong with it only costs a re-probe."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open
            logger.info("ignoring video index %s: not a regular file", path)
            return None
        with open(path, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError) as exc:
        logger.info("ignoring unreadable video index %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or data.get("version") not in (1, INDEX_VERSION):
        return None
    videos = data.get("videos")
    if not isinstance(videos, dict):
        return None
    if data["version"] == 1:  # its failures may be FFmpeg reading a relative path as a URL
        return {k: v for k, v in videos.items() if isinstance(v, dict) and v.get("error") is None}
    return videos


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _cached_info(rel: str, entry) -> VideoInfo | None:
    """The :class:`VideoInfo` of a cached index entry, or ``None`` when the entry is malformed
    (wrong types, negative or non-finite numbers, a readable video without frames): such an
    entry, whether corrupted or crafted, is re-probed instead of trusted."""
    if not isinstance(entry, dict):
        return None
    try:
        frames, height, width = entry["frames"], entry["height"], entry["width"]
        fps, size, mtime, error = (entry["fps"], entry["size_bytes"], entry["mtime_ns"], entry["error"])
    except KeyError:
        return None
    if not all(_is_int(v) for v in (frames, height, width, size, mtime)):
        return None
    if not (isinstance(fps, (int, float)) and not isinstance(fps, bool) and math.isfinite(fps) and fps >= 0):
        return None
    if error is not None and (not isinstance(error, str) or error.startswith(_TRANSIENT)):
        return None
    if error is None and (frames < 1 or height < 1 or width < 1):
        return None
    return VideoInfo(
        path=rel,
        frames=frames,
        height=height,
        width=width,
        fps=float(fps),
        size_bytes=size,
        mtime_ns=mtime,
        error=error,
    )


# A probe that has not returned after this many seconds (a file on a hung network mount, a device
# node that passed the regular-file check, a decoder stuck on a crafted stream) is given up.
PROBE_TIMEOUT_S = 120.0


def _probe_all(root: Path, rels: list, workers: int, timeout: float):
    """Yield ``(rel, probe result)`` for every file, probing on ``workers`` daemon threads.

    A probe still running ``timeout`` seconds after it started is reported as an error and left
    behind: its thread is a daemon, so neither indexing nor interpreter exit waits for it.
    """
    jobs: "queue.Queue" = queue.Queue()
    done: "queue.Queue" = queue.Queue()
    for rel in rels:
        jobs.put(rel)
    started: dict = {}
    lock = threading.Lock()

    def worker():
        while True:
            try:
                rel = jobs.get_nowait()
            except queue.Empty:
                return
            with lock:
                started[rel] = time.monotonic()
            done.put((rel, probe_video(root / rel)))

    threads = [threading.Thread(target=worker, name=f"pfp-index-{k}", daemon=True) for k in range(workers)]
    for t in threads:
        t.start()
    pending = set(rels)
    while pending:
        try:
            rel, res = done.get(timeout=0.2)
        except queue.Empty:
            now = time.monotonic()
            with lock:
                stuck = [r for r in pending if r in started and now - started[r] > timeout]
            for rel in stuck:
                pending.discard(rel)
                logger.info("%s: probing did not finish within %.0f s; skipped", root / rel, timeout)
                error = f"probe timed out after {timeout:g} s"
                yield rel, {"frames": 0, "height": 0, "width": 0, "fps": 0.0, "error": error}
            # A stuck probe holds its thread: start a replacement so the rest keeps moving.
            for _ in stuck:
                t = threading.Thread(target=worker, name="pfp-index-extra", daemon=True)
                t.start()
                threads.append(t)
            continue
        if rel in pending:  # not already given up
            pending.discard(rel)
            yield rel, res


def index_videos(
    root,
    *,
    cache="auto",
    cache_dir=None,
    progress: bool = True,
    workers: int | None = None,
    probe_timeout: float | None = None,
) -> list[VideoInfo]:
    """Index every video under ``root``; return one :class:`VideoInfo` per file (sorted by path).

    ``cache``: ``"auto"`` (beside the data, else in the cache folder), ``"data"`` (beside the data
    only), ``"cache"`` (cache folder only), a file path, or ``None``/``False`` (no cache).
    ``workers`` threads probe new files in parallel (decord releases the GIL while decoding);
    default ``min(8, cpu count)``. A ``tqdm`` progress bar shows while probing when ``progress``.
    A file whose probe takes longer than ``probe_timeout`` seconds (default
    ``PROBE_TIMEOUT_S``) is reported unusable ("probe timed out") and indexing goes on.
    """
    root = Path(root)
    rel_paths = find_videos(root)
    stats = {}
    for rel in rel_paths:
        try:
            st = os.stat(root / rel)
            stats[rel] = (st.st_size, st.st_mtime_ns)
        except OSError as exc:  # vanished or unreadable entry
            stats[rel] = (0, 0)
            logger.info("cannot stat %s: %s", root / rel, exc)

    if cache in (None, False):
        locations = []
    elif cache == "auto":
        locations = _index_locations(root, cache_dir)
    elif cache == "data":
        locations = _index_locations(root, cache_dir)[:1]
    elif cache == "cache":
        locations = _index_locations(root, cache_dir)[1:]
    else:
        locations = [Path(cache)]

    # Every readable index is consulted: an entry is reused when the file's size and modification
    # time still match (e.g. a stale index beside read-only data plus a fresh one in the cache).
    indexes = [d for d in (_load_index(loc, root) for loc in locations) if d is not None]

    infos: dict[str, VideoInfo] = {}
    todo = []
    for rel in rel_paths:
        size, mtime = stats[rel]
        for cached in indexes:
            entry = cached.get(rel)
            if (
                isinstance(entry, dict)
                and entry.get("size_bytes") == size
                and entry.get("mtime_ns") == mtime
                and mtime != 0
            ):
                info = _cached_info(rel, entry)
                if info is not None:
                    infos[rel] = info
                    break
        else:
            todo.append(rel)

    if todo:
        from tqdm.auto import tqdm

        if workers is None:
            workers = min(8, os.cpu_count() or 1)
        workers = max(1, min(int(workers), len(todo)))
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(todo),
            desc=f"Indexing videos in {root.name or root}",
            unit="video",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        try:
            timeout = PROBE_TIMEOUT_S if probe_timeout is None else float(probe_timeout)
            for rel, res in _probe_all(root, todo, workers, timeout):
                size, mtime = stats[rel]
                infos[rel] = VideoInfo(path=rel, size_bytes=size, mtime_ns=mtime, **res)
                bar.update(1)
        finally:
            bar.close()
        logger.info(
            "indexed %d video(s) under %s in %.1f s (%d from the cache)",
            len(todo),
            root,
            time.perf_counter() - t0,
            len(rel_paths) - len(todo),
        )

    ordered = [infos[rel] for rel in rel_paths]
    changed = bool(todo) or not indexes or set(indexes[0]) != set(rel_paths)
    if changed and locations:
        payload = {
            "version": INDEX_VERSION,
            "root": os.path.realpath(root),
            "videos": {
                v.path: {k: val for k, val in asdict(v).items() if k != "path"}
                for v in ordered
                if not (v.error or "").startswith(_TRANSIENT)  # retried next time, not remembered
            },
        }
        for loc in locations:
            try:
                atomic_write_json(loc, payload)
                logger.debug("wrote video index %s", loc)
                break
            except OSError as exc:
                logger.info("cannot write the video index to %s (%s)", loc, exc)
        else:
            logger.info("the video index of %s is not cached (no writable location)", root)
    return ordered
