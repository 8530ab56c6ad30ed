"""The embedded default data set: synthetic videos of textured scenes, written as H.264 MP4 files.

Six classes, in a UCF-101-like layout (``<root>/<Class>/v_<Class>_gGG_cCC.mp4``), named by what
moves (the scenes themselves: :mod:`pyframepred.data.synthetic_render`):

``StillScene``     a still camera on a textured scene: light, sensor noise, few slow objects (some jerk);
``CameraPan``      the camera pans (mostly sideways, some with shake or a foreground layer);
``CameraZoom``     the camera zooms in or out while drifting a little;
``Handheld``       a hand-held camera: sway, slow drift and a slight roll;
``MovingObjects``  a still camera, textured objects moving, turning, occluding each other;
``Parallax``       a pan over layers at different depths: far, middle (with objects) and near.

Textures have the statistics of natural images (1/f noise, dead leaves, noisy patterns), light
changes and sensor noise is added, and everything moves with sub-pixel precision (frames are
rendered at twice the size and averaged down). Videos of one group (``gGG``) share their scene,
as UCF-101's groups share an actor and a place, so the group split keeps scenes seen in training
out of the test set. Everything is determined by the
seed; files are encoded with libx264 (``yuv420p``, so frame sizes are even; a key frame every
12 frames).

Command line: ``python -m pyframepred.data.synthetic OUT_DIR [--seed 0] [--videos-per-class 12]``
(``--help`` for all options). From Python: :func:`generate` or, for the cached default set,
:func:`default_dataset_root`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError
from ._common import atomic_write_json, default_cache_dir, logger
from .synthetic_render import CLASSES, render_video

__all__ = ["CLASSES", "generate", "default_dataset_root", "render_video", "write_video", "main"]

#: Version of the generator; bump when the pixels it makes change (it names the cache folder).
GENERATOR_VERSION = 2
MANIFEST = "synthetic.json"

# The scenes themselves (classes, textures, camera and object motion): synthetic_render.py.


def write_video(
    path,
    frames: np.ndarray,
    fps: float = 25,
    *,
    codec: str = "libx264",
    crf: int = 18,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
) -> None:
    """Encode uint8 ``(T, H, W, 3)`` RGB frames to ``path`` (container from the extension) at
    quality ``crf`` (H.264), through :func:`pyframepred.io.encode_video`."""
    from ..io import encode_video

    opts = {"crf": str(crf), "preset": "medium"} if codec == "libx264" else {}
    opts.update(options or {})
    # absolute: FFmpeg takes a relative "day:1/x.mp4" for a URL of the protocol "day"
    encode_video(os.path.abspath(path), frames, fps, codec=codec, pix_fmt=pix_fmt, options=opts)


# --------------------------------------------------------------------------- data sets
def _config(seed, videos_per_class, frames, size, classes, fps, groups_per_class, crf) -> dict:
    if isinstance(frames, int):
        frames = (frames, frames)
    fmin, fmax = (int(f) for f in frames)
    if not 1 <= fmin <= fmax:
        raise ValueError(f"frames must be a positive int or a (min, max) range, got {frames!r}")
    if isinstance(size, int):
        size = (size, size)
    height, width = (int(s) for s in size)
    if height < 16 or width < 16 or height % 2 or width % 2:
        raise ValueError(f"size must be even and at least 16, got {size!r}")
    classes = list(CLASSES if classes is None else classes)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise ValueError(f"unknown classes {unknown}; choose from {', '.join(CLASSES)}")
    if int(videos_per_class) < 1 or int(groups_per_class) < 1:
        raise ValueError("videos_per_class and groups_per_class must be positive")
    return {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "videos_per_class": int(videos_per_class),
        "frames": [fmin, fmax],
        "size": [height, width],
        "classes": classes,
        "fps": float(fps),
        "groups_per_class": int(groups_per_class),
        "crf": int(crf),
        "gop": 12,
    }


def _video_plan(cfg: dict):
    """(relative path, class, group seed, clip seed, frame count) of every video."""
    plan = []
    groups = min(cfg["groups_per_class"], cfg["videos_per_class"])
    fmin, fmax = cfg["frames"]
    for cls in cfg["classes"]:
        class_id = CLASSES.index(cls)
        for k in range(cfg["videos_per_class"]):
            g, c = k % groups + 1, k // groups + 1
            group_seed = [cfg["seed"], class_id, g]
            clip_seed = [cfg["seed"], class_id, g, c, 1]
            n = int(np.random.default_rng(clip_seed + [7]).integers(fmin, fmax + 1))
            plan.append((f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.mp4", cls, group_seed, clip_seed, n))
    return plan


# libx264 options of the generated files. One thread, and ``cpu-independent``: without it, the
# encoder's AVX-512 code picks different motion vectors from call to call (seen with PyAV 18.1's
# x264 on an AVX-512 Xeon: 3-20 % of the encodes of one clip differ), and other machines pick
# other algorithms; with it, the bytes are those of x264's portable code, at the same speed. A key
# frame every 12 frames (as in UCF-101's AVI files) keeps random access cheap: a clip never needs
# more than 11 frames decoded before its start.
_REPRODUCIBLE_X264 = {"threads": "1", "g": "12", "x264-params": "cpu-independent=1"}


def generate(
    out_dir,
    *,
    seed: int = 0,
    videos_per_class: int = 12,
    frames=(40, 60),
    size=64,
    classes: Sequence[str] | None = None,
    fps: float = 25,
    groups_per_class: int = 4,
    crf: int = 18,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic data set to ``out_dir`` and return its path.

    ``videos_per_class`` videos per class in ``groups_per_class`` groups, each with a frame count
    drawn from ``frames`` (an int or an inclusive ``(min, max)`` range), ``size`` (int or
    ``(height, width)``, even) pixels, at ``fps``; libx264 at ``crf``. The same arguments give
    the same pixels. A folder already holding this exact data set (same ``synthetic.json``) is
    reused as it is; any other non-empty folder is an error unless ``overwrite``, which replaces
    the files that the generator writes (and only those).
    """
    cfg = _config(seed, videos_per_class, frames, size, classes, fps, groups_per_class, crf)
    out_dir = Path(out_dir).expanduser()
    manifest = out_dir / MANIFEST
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(
            f"'{out_dir}' is a file, not a folder; choose a folder to write the synthetic data set to"
        )
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            existing = json.loads(manifest.read_text())
        except (OSError, ValueError):
            existing = None
        if existing == cfg and not overwrite:
            return out_dir
        if not overwrite:
            raise FileExistsError(
                f"'{out_dir}' is not empty and does not hold this synthetic "
                "data set; choose an empty folder or pass overwrite=True"
            )
    plan = _video_plan(cfg)
    height, width = cfg["size"]
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for rel, cls, group_seed, clip_seed, n in tqdm(
        plan,
        desc="Generating synthetic videos",
        unit="video",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    ):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        video = render_video(cls, n, height, width, group_seed, clip_seed)
        write_video(path, video, cfg["fps"], crf=cfg["crf"], options=_REPRODUCIBLE_X264)
    atomic_write_json(manifest, cfg)
    logger.info("generated %d synthetic videos in %s in %.1f s", len(plan), out_dir, time.perf_counter() - t0)
    return out_dir


def default_dataset_root(cache_dir=None, *, progress: bool = True, **params) -> Path:
    """Folder of the default synthetic data set, generated on first use and reused afterwards.

    It lives in ``<cache>/synthetic/`` (``cache_dir``, else :func:`default_cache_dir`: the
    ``PYFRAMEPRED_CACHE`` variable or ``~/.cache/pyframepred``), in a folder named after the
    generator version and a hash of ``params`` (the keyword arguments of :func:`generate`, e.g.
    ``videos_per_class=24``), so other parameters make another folder. Generation goes to a
    temporary folder renamed at the end: an interrupted run leaves nothing half made, and
    processes racing on the first use all end up with one complete folder.
    """
    for key in ("out_dir", "overwrite"):
        if key in params:
            raise TypeError(f"default_dataset_root() got an unexpected argument {key!r}")
    gen_args = {
        k: params.pop(k)
        for k in list(params)
        if k in ("seed", "videos_per_class", "frames", "size", "classes", "fps", "groups_per_class", "crf")
    }
    if params:
        raise TypeError(f"default_dataset_root() got unexpected arguments {sorted(params)}")
    defaults = dict(
        seed=0,
        videos_per_class=12,
        frames=(40, 60),
        size=64,
        classes=None,
        fps=25,
        groups_per_class=4,
        crf=18,
    )
    defaults.update(gen_args)
    cfg = _config(**defaults)
    digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:10]
    h, w = cfg["size"]
    name = f"scenes-v{GENERATOR_VERSION}-{h}x{w}-seed{cfg['seed']}-{digest}"
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = base / "synthetic" / name
    try:
        return _made(final, name, progress, defaults)
    except OSError as exc:  # not writable, not a folder, a full disk...
        setting = "`cache_dir`" if cache_dir is not None else "the PYFRAMEPRED_CACHE variable"
        reason = " ".join(f"{type(exc).__name__}: {exc.strerror or exc}".split())
        raise ConfigError(
            f"cannot create the default synthetic data set in the cache folder '{base}' ({reason}); "
            f"set {setting} to a writable folder"
        ) from exc


def _made(final: Path, name: str, progress: bool, defaults: dict) -> Path:
    if (final / MANIFEST).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    logger.info("creating the synthetic data set in %s (first use)", final)
    if progress:
        print(
            f"pyframepred: generating the default synthetic data set in {final} (first use only)",
            file=sys.stderr,
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=final.parent))
    try:
        generate(tmp, progress=progress, **defaults)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a lost race: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyframepred.data.synthetic",
        description="Generate pyframepred's synthetic video data set (H.264 MP4 "
        "files in <OUT_DIR>/<Class>/v_<Class>_gGG_cCC.mp4).",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (empty or new)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos-per-class", type=int, default=12)
    parser.add_argument("--groups-per-class", type=int, default=4)
    parser.add_argument(
        "--frames",
        type=int,
        nargs="+",
        default=[40, 60],
        metavar="N",
        help="frame count, or MIN MAX for a random count per video (40 60)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=[64],
        metavar="PX",
        help="frame size: S, or H W (even numbers; 64)",
    )
    parser.add_argument("--fps", type=float, default=25)
    parser.add_argument("--crf", type=int, default=18, help="libx264 quality (lower is better)")
    parser.add_argument("--classes", nargs="+", choices=CLASSES, default=None)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the generated files in a non-empty folder"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if len(args.frames) not in (1, 2) or len(args.size) not in (1, 2):
        parser.error("--frames and --size take one or two numbers")
    t0 = time.perf_counter()
    frames = tuple(args.frames) if len(args.frames) == 2 else args.frames[0]
    size = tuple(args.size) if len(args.size) == 2 else args.size[0]
    try:
        _config(
            args.seed,
            args.videos_per_class,
            frames,
            size,
            args.classes,
            args.fps,
            args.groups_per_class,
            args.crf,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        out = generate(
            args.out_dir,
            seed=args.seed,
            videos_per_class=args.videos_per_class,
            frames=frames,
            size=size,
            classes=args.classes,
            fps=args.fps,
            groups_per_class=args.groups_per_class,
            crf=args.crf,
            progress=not args.quiet,
            overwrite=args.overwrite,
        )
    except FileExistsError as exc:
        # generate() names its Python argument; on the command line it is the flag.
        parser.error(str(exc).replace("pass overwrite=True", "pass --overwrite"))
    except NotADirectoryError as exc:
        parser.error(str(exc))
    n = sum(1 for _ in out.rglob("*.mp4"))
    print(f"{n} videos in {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
