"""``VideoClips``: fixed-length clips of video frames, decoded on demand with decord."""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..io import normalize_into
from ._common import VIDEO_EXTENSIONS, EmptySplitError, NoDecodableVideosError, NoVideosError, as_hw, logger
from ._common import check_whole as _check_whole
from ._common import frame_offset as _frame_offset
from ._common import frame_offsets as _frame_offsets
from ._common import integer as _integer
from .decode import decode_frames
from .index import VideoInfo, class_of, index_videos
from .splits import (
    empty_side_advice,
    empty_side_situation,
    group_key,
    group_split,
    listed_side,
    names,
)

__all__ = ["VideoClips", "Clip", "NoVideosError", "EmptySplitError", "NoDecodableVideosError"]


class Clip(NamedTuple):
    """One clip with where it came from (see :meth:`VideoClips.clip_at`)."""

    frames: torch.Tensor  #: float32 ``(T, 3, H, W)`` in [-1, 1]
    indices: list  #: frame numbers in the video (0-based, decode order) of each of the T frames
    video: int  #: video number in the data set (``dataset.videos[video]``)
    start: int  #: first frame number (``indices[0]``)
    path: str  #: absolute path of the file
    label: int  #: class number (``dataset.classes[label]``)


class VideoClips(Dataset):
    """Clips of ``frames`` frames from every video under ``root``, as float32 tensors.

    Each item is a float32 tensor ``(frames, 3, H, W)`` (RGB, channels first) with values in
    [-1, 1], scaled as ``(x - 127.5) / 127.5`` (see :func:`~pyframepred.data.normalize`). The
    data set has ``clips_per_video`` items per video; item ``i`` comes from video
    ``i // clips_per_video``.

    Finding videos
        Every ``.avi .mp4 .mkv .mov .webm`` file (any case) under ``root``, recursively, hidden
        files and folders excepted. The class of a video is its parent folder's name, or for files
        directly in ``root`` the ``v_<Class>_gXX_cYY`` pattern of UCF-101 file names.
        ``include_classes`` / ``exclude_classes`` (case-insensitive names) keep or drop classes,
        e.g. to leave out low-motion categories.

    Train/test split
        With ``split_dir`` (a folder holding UCF-101's ``trainlist0N.txt`` / ``testlist0N.txt``,
        ``N = split_index``), the videos listed in the train (``train=True``) or test list;
        matching is on the file name without extension (a listed video that is unusable is
        skipped, see *Bad input*). Otherwise a deterministic split by group (``gXX`` in UCF
        names; one group never lands on both sides) of the readable videos (unreadable ones are
        set aside first, so they never take a side's place; too-short ones are skipped after the
        split, which so stays the same whatever the clip length), ``test_fraction`` of
        each class's groups going to the test side (a class with a single group keeps it on the
        train side; where every class has one, a folder per video, they are split together, as
        one class). A lone group has no test side: that is an error that says so.
        ``test_fraction=0`` (or ``None``) disables the split: ``train=True`` and ``train=False``
        then both use every video (``train`` still chooses random or fixed clips).

    Clip selection
        ``interval`` frames are skipped between two taken frames: frame numbers
        ``s, s + (interval + 1), s + 2 (interval + 1), ...``. The start ``s`` is drawn uniformly
        from ``[0, N - 1 - (frames - 1) (interval + 1)]`` for a video of ``N`` frames: from
        torch's global random generator when ``train`` (each ``DataLoader`` worker has its own
        seed), and fixed by ``seed`` and the video's path otherwise, so evaluation sees the same
        clips on every run, with any number of workers. With ``fps`` set, ``interval`` counts
        frames at that rate and each video's frames are picked at the nearest time (mixed frame
        rates then give clips of the same duration); by default frames are counted as stored.
        Videos shorter than one clip are skipped.

    Frame size
        As torchvision's video transforms read it: an int ``size=s`` (the default, 64, as the
        command line's ``--size``) is the *short side*: the
        frame is scaled, aspect ratio kept, until its short side is ``s``, and an ``s x s``
        window is cropped from it -- at a random place along the long side in training, the
        centre in evaluation (UCF-101's 320x240 becomes 85x64, cropped to 64x64; motion is not
        distorted). A pair ``size=(H, W)`` is exactly that size: with ``resize="stretch"`` (the
        default for a pair) the whole frame is scaled to ``(H, W)``, so a video of another aspect
        ratio is distorted -- one warning per data set says how many videos are and names one;
        with ``resize="cover"`` the aspect ratio is kept: the frame is scaled to cover ``(H, W)``
        and the centre is cropped. ``size=None`` keeps each video's own size (batching then needs
        videos of one size). decord decodes directly at the target size (its scaler, in C), never
        the whole video and never at full resolution; at the widths where decord's scaler is
        broken (8, 16, 48, 72... see :mod:`pyframepred.data.decode`) the frames are decoded at the
        video's own size and resized with torch (bilinear, antialiased) instead, per video,
        automatically.

    Augmentation (training only: ignored when ``train=False``)
        ``random_crop=True`` decodes ``crop_scale`` times larger and crops ``(H, W)`` at a random
        place (the centre when evaluating, so train and test see the same scale);
        ``hflip=True`` mirrors half of the clips left-right. The whole clip shares one crop and
        one flip.

    Index
        Frame counts and sizes come from an index built once (progress bar) and cached (see
        :func:`~pyframepred.data.index_videos`; ``index_cache``, ``cache_dir``), re-probing only
        new or changed files.

    Bad input
        A missing folder raises ``FileNotFoundError``; no videos, or none left after filtering,
        raise :class:`NoVideosError`; both name the folder and the cause. Unreadable files and
        videos too short for one clip are skipped with one warning that counts and names them
        (with the group split, on the side of their group; on the train side when the whole
        group is unreadable); the reasons are in :attr:`skipped` and in the ``pyframepred.data``
        log. A video that fails to decode later (inside a ``DataLoader`` worker, say) is logged
        once and replaced by the next decodable video, deterministically, so a bad file never
        stops a run; only when every video fails is :class:`NoDecodableVideosError` (a
        :class:`NoVideosError`) raised.

    ``transform`` (optional) is applied to the clip tensor returned by ``__getitem__``, e.g.
    :class:`~pyframepred.data.MultiScale`.
    """

    def __init__(
        self,
        root,
        frames: int = 4,
        interval: int = 0,
        size=64,
        include_classes: Iterable[str] | None = None,
        exclude_classes: Iterable[str] | None = None,
        train: bool = True,
        seed: int = 0,
        *,
        clips_per_video: int = 1,
        split_dir=None,
        split_index: int = 1,
        test_fraction: float | None = 0.2,
        fps: float | None = None,
        resize: str | None = None,
        random_crop: bool = False,
        crop_scale: float = 1.15,
        hflip: bool = False,
        transform: Callable | None = None,
        index_cache="auto",
        cache_dir=None,
        progress: bool = True,
        index_workers: int | None = None,
        decode_threads: int = 1,
    ):
        super().__init__()
        _check_whole(frames, "frames", 1, "a positive integer")
        _check_whole(interval, "interval", 0, "a non-negative integer")
        _check_whole(clips_per_video, "clips_per_video", 1, "a positive integer")
        if resize not in (None, "stretch", "cover"):
            raise ValueError(f"resize must be 'stretch', 'cover' or None, got {resize!r}")
        if not crop_scale >= 1.0:
            raise ValueError(f"crop_scale must be >= 1, got {crop_scale!r}")
        if test_fraction is not None and not 0.0 <= test_fraction <= 1.0:
            raise ValueError(f"test_fraction must be in [0, 1] or None, got {test_fraction!r}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive or None, got {fps!r}")

        if not os.fspath(root):  # Path("") would be the current folder
            raise FileNotFoundError("VideoClips: the data folder is an empty path ('.' for the current one)")
        self.root = Path(root).expanduser()
        self.frames = int(frames)
        self.interval = int(interval)
        self.size = as_hw(size)
        # An int size is the short side (aspect kept, then a square crop: random in training).
        self.short_side = _integer(size) is not None and resize is None
        if resize is None:
            resize = "cover" if self.short_side else "stretch"
        self.train = bool(train)
        self.seed = int(seed)
        self.clips_per_video = int(clips_per_video)
        self.fps = float(fps) if fps is not None else None
        self.resize = resize
        self.random_crop = bool(random_crop)
        self.crop_scale = float(crop_scale)
        self.hflip = bool(hflip)
        self.transform = transform
        self.decode_threads = int(decode_threads)

        root_txt = str(self.root)
        if not self.root.exists():
            raise FileNotFoundError(f"VideoClips: the data folder '{root_txt}' does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"VideoClips: '{root_txt}' is not a folder")

        infos = index_videos(
            self.root, cache=index_cache, cache_dir=cache_dir, progress=progress, workers=index_workers
        )
        if not infos:
            raise NoVideosError(
                f"VideoClips: no video files ({' '.join(VIDEO_EXTENSIONS)}) found in "
                f"'{root_txt}' (searched recursively; hidden files and folders are ignored)"
            )
        classes = [class_of(v.path, self.root.resolve().name) for v in infos]

        # -- class filters
        present = {c.lower(): c for c in classes}
        if isinstance(include_classes, str) or isinstance(exclude_classes, str):
            raise TypeError("include_classes / exclude_classes take a list of class names")
        wanted = list(include_classes or []) + list(exclude_classes or [])
        include = {c.lower() for c in include_classes} if include_classes is not None else None
        exclude = {c.lower() for c in exclude_classes} if exclude_classes is not None else set()
        unknown = sorted({c for c in wanted if c.lower() not in present})
        if unknown:
            warnings.warn(
                f"VideoClips: class filter names not found in '{root_txt}': "
                f"{names(unknown)} (classes present: {names(sorted(present.values()), 20)})",
                stacklevel=2,
            )
        keep = [(include is None or c.lower() in include) and c.lower() not in exclude for c in classes]
        if not any(keep):
            raise NoVideosError(
                f"VideoClips: all {len(infos)} videos in '{root_txt}' were removed by the class "
                f"filters (include_classes={sorted(include) if include is not None else None}, "
                f"exclude_classes={sorted(exclude)}); classes present: "
                f"{names(sorted(present.values()), 20)}"
            )
        infos = [v for v, k in zip(infos, keep) if k]
        classes = [c for c, k in zip(classes, keep) if k]

        # -- unreadable and too short. Only unreadable files are left out of the group split (a bad
        # file never takes a group's place): with the short ones, train (in + out frames) and
        # validation clips (in + steps) of one run would split differently.
        unusable = [self._unusable(info) for info in infos]  # None, or (kind, reason)

        # -- train/test split
        side = "train" if self.train else "test"
        if split_dir is not None:  # the lists decide; unusable listed videos are skipped below
            keep = listed_side(split_dir, split_index, self.train, [v.path for v in infos], root_txt)
            if not any(keep):
                raise NoVideosError(
                    f"VideoClips: no videos for '{root_txt}': none of its {len(infos)} videos is "
                    f"listed in the {side} list of split {split_index} in '{split_dir}'"
                )
        elif not test_fraction or not any(info.ok for info in infos):
            keep = [True] * len(infos)  # no split: both sides use every video
        else:
            readable = [i for i, info in enumerate(infos) if info.ok]
            is_test = group_split(
                [infos[i].path for i in readable], [classes[i] for i in readable], test_fraction
            )
            test_groups = {group_key(infos[i].path, classes[i]) for i, t in zip(readable, is_test) if t}
            # An unreadable video counts on its group's side (train: a wholly unreadable group).
            keep = [(group_key(v.path, c) in test_groups) != self.train for v, c in zip(infos, classes)]
            if not any(keep[i] for i in readable):
                paths, ok_classes = [infos[i].path for i in readable], [classes[i] for i in readable]
                situation = empty_side_situation(root_txt, side, test_fraction, paths, ok_classes)
                raise EmptySplitError(f"{situation} {empty_side_advice(side)}", situation)
        logger.debug("%s split of %s: %d of %d videos", side, root_txt, sum(keep), len(infos))
        of_side = f" of the {side} side" if not all(keep) else ""  # counts below: this side's
        infos = [v for v, k in zip(infos, keep) if k]
        classes = [c for c, k in zip(classes, keep) if k]
        unusable = [u for u, k in zip(unusable, keep) if k]

        self.skipped: list[tuple[str, str]] = []  #: (relative path, reason) of skipped videos
        unreadable, short = [], []
        videos, video_classes, offsets = [], [], []
        for info, cls, bad in zip(infos, classes, unusable):
            if bad is not None:
                kind, reason = bad
                if kind == "unreadable":
                    unreadable.append(info.path)
                else:
                    short.append(f"{info.path} ({info.frames} frames)")
                self.skipped.append((info.path, reason))
                continue
            videos.append(info)
            video_classes.append(cls)
            offsets.append(self._offsets_for(info))
        need = (self.frames - 1) * (self.interval + 1) + 1
        clip_txt = f"frames={self.frames}, interval={self.interval}" + (
            f", fps={self.fps:g}" if self.fps else f" (a clip spans {need} frames)"
        )
        if self.skipped:
            parts = []
            if unreadable:
                parts.append(f"{len(unreadable)} unreadable or corrupt ({names(unreadable)})")
            if short:
                parts.append(f"{len(short)} too short for one clip of {clip_txt} ({names(short)})")
            details = "\n".join(f"  {p}: {r}" for p, r in self.skipped)
            # The first reasons go into the message itself, so a user sees why without a log.
            why = "; ".join(f"{p}: {r}" for p, r in self.skipped[:2]) + (
                f"; and {len(self.skipped) - 2} more" if len(self.skipped) > 2 else ""
            )
            logger.info("VideoClips skipped in %s:\n%s", root_txt, details)
        if not videos:
            side_txt = f" ({side} side)" if split_dir is not None or of_side else ""
            raise NoVideosError(
                f"VideoClips: no usable videos in '{root_txt}': of the {len(infos)} video(s) "
                f"left after filtering{side_txt}, " + "; ".join(parts) + f". Why: {why}."
            )
        if self.skipped:
            warnings.warn(
                f"VideoClips: skipped {len(self.skipped)} of {len(infos)} videos{of_side} in "
                f"'{root_txt}': " + "; ".join(parts) + f". Why: {why} (all of them: VideoClips.skipped).",
                stacklevel=2,
            )
        self.videos: list[VideoInfo] = videos  #: the videos used, in order
        self.classes: list[str] = sorted(set(video_classes))  #: class names, sorted
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.labels: list[int] = [self.class_to_idx[c] for c in video_classes]
        self._offsets = offsets
        self._path_keys = [zlib.crc32(v.path.encode("utf-8", "surrogatepass")) for v in videos]
        self._bad: dict[str, str] = {}  # per process: path -> error, for decode failures

        if self.size is not None and self.resize == "stretch":
            self._warn_stretched(root_txt)
        if self.size is None and len({(v.height, v.width) for v in videos}) > 1:
            warnings.warn(
                f"VideoClips: size=None but the videos in '{root_txt}' have several "
                "frame sizes; clips cannot be batched together. Pass size=(H, W).",
                stacklevel=2,
            )

    def _warn_stretched(self, root_txt: str) -> None:
        """One warning when ``size=(H, W)`` distorts videos of another aspect ratio."""
        h, w = self.size
        off = [v for v in self.videos if v.height and abs(v.width * h / (v.height * w) - 1) > 0.01]
        if off:
            v = off[0]
            warnings.warn(
                f"VideoClips: size=({h}, {w}) stretches {len(off)} of {len(self.videos)} videos "
                f"in '{root_txt}' to another aspect ratio (e.g. {v.path}: {v.width}x{v.height} -> "
                f"{w}x{h}), which distorts their motion; an int size keeps the aspect ratio "
                f"(short side, then a crop)",
                stacklevel=3,
            )

    # ------------------------------------------------------------------ clip geometry in time
    def _ratio(self, info: VideoInfo) -> float:
        return info.fps / self.fps if self.fps is not None and info.fps > 0 else 1.0

    def _offsets_for(self, info: VideoInfo) -> list[int]:
        return _frame_offsets(self.frames, self.interval, self._ratio(info))

    def _unusable(self, info: VideoInfo):
        """``None`` for a usable video, else ``("unreadable" or "short", reason)``."""
        if not info.ok:
            return "unreadable", info.error
        last = _frame_offset(self.frames - 1, self.interval, self._ratio(info))  # no list: any frames
        if info.frames - 1 < last:
            return "short", f"too short: {info.frames} frames, a clip spans {last + 1}"
        return None

    def max_start(self, video: int) -> int:
        """Largest valid start frame of ``video``: ``N - 1 - last offset`` (>= 0)."""
        return self.videos[video].frames - 1 - self._offsets[video][-1]

    def frame_indices(self, video: int, start: int) -> list[int]:
        """Frame numbers of the clip of ``video`` starting at frame ``start``."""
        hi = self.max_start(video)
        if not 0 <= start <= hi:
            raise ValueError(
                f"start must be in [0, {hi}] for video {video} "
                f"({self.videos[video].path}, {self.videos[video].frames} frames), "
                f"got {start}"
            )
        return [start + o for o in self._offsets[video]]

    def eval_start(self, video: int, slot: int = 0) -> int:
        """The fixed start used for ``video`` when ``train=False`` (clip ``slot`` of the video).

        It depends on ``seed``, the video's relative path and ``slot`` only.
        """
        rng = np.random.default_rng([self.seed, self._path_keys[video], slot])
        return int(rng.integers(0, self.max_start(video) + 1))

    # ------------------------------------------------------------------ clip geometry in space
    def _decode_size(self, info: VideoInfo) -> tuple[int, int]:
        if self.size is None:
            return info.height, info.width
        h, w = self.size
        scale = self.crop_scale if self.random_crop else 1.0
        if self.resize == "stretch":
            return max(h, round(h * scale)), max(w, round(w * scale))
        r = max(h / info.height, w / info.width) * scale
        return max(h, round(info.height * r)), max(w, round(info.width * r))

    # ------------------------------------------------------------------ decoding
    def _decode(self, video: int, indices: list, augment: bool) -> torch.Tensor:
        info = self.videos[video]
        dh, dw = self._decode_size(info)
        uniq = sorted(set(indices))
        # decord's scaler where it works, else its own size + a torch resize (decord bug #336).
        arr = decode_frames(
            self.root / info.path,
            uniq,
            (dh, dw),
            native_size=(info.height, info.width),
            num_threads=self.decode_threads,
        )
        if len(uniq) != len(indices):
            arr = arr[[uniq.index(i) for i in indices]]

        out_h, out_w = self.size if self.size is not None else (dh, dw)
        if (dh, dw) != (out_h, out_w):
            if augment and (self.random_crop or self.short_side):
                y0 = int(torch.randint(0, dh - out_h + 1, ()))
                x0 = int(torch.randint(0, dw - out_w + 1, ()))
            else:
                y0, x0 = (dh - out_h) // 2, (dw - out_w) // 2
            arr = arr[:, y0 : y0 + out_h, x0 : x0 + out_w]
        if augment and self.hflip and bool(torch.rand(()) < 0.5):
            arr = arr[:, :, ::-1]
        # uint8 (T, H, W, 3) -> float32 (T, 3, H, W) in [-1, 1], in NumPy: single-threaded and
        # about 5x faster than torch's thread pool for clips this small (it also avoids
        # oversubscription against decord's decoder threads).
        clip = np.empty((arr.shape[0], 3, arr.shape[1], arr.shape[2]), np.float32)
        return torch.from_numpy(normalize_into(clip, arr.transpose(0, 3, 1, 2)))

    # ------------------------------------------------------------------ public access
    def clip_at(self, video: int, start: int | None = None) -> Clip:
        """The clip of ``video`` starting at frame ``start`` (default: :meth:`eval_start`).

        No augmentation and no ``transform``; decoding errors are raised (not replaced).
        """
        if not -len(self.videos) <= video < len(self.videos):
            raise IndexError(f"video {video} out of range (0..{len(self.videos) - 1})")
        video %= len(self.videos)
        if start is None:
            start = self.eval_start(video)
        indices = self.frame_indices(video, int(start))
        frames = self._decode(video, indices, augment=False)
        return Clip(
            frames,
            indices,
            video,
            indices[0],
            os.fspath(self.root / self.videos[video].path),
            self.labels[video],
        )

    def locate(self, index: int) -> tuple[int, int]:
        """``(video, slot)`` of data-set item ``index``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        return divmod(index % len(self), self.clips_per_video)

    def __len__(self) -> int:
        return len(self.videos) * self.clips_per_video

    def __getitem__(self, index: int):
        video, slot = self.locate(index)
        n = len(self.videos)
        for attempt in range(n):
            j = (video + attempt) % n
            path = self.videos[j].path
            if path in self._bad:
                continue
            if self.train:
                start = int(torch.randint(0, self.max_start(j) + 1, ()))
            else:
                start = self.eval_start(j, slot)
            try:
                clip = self._decode(j, self.frame_indices(j, start), augment=self.train)
            except Exception as exc:  # decord.DECORDError, RuntimeError, OSError...
                self._bad[path] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                logger.warning(
                    "VideoClips: cannot decode %s (frames %s): %s; it is skipped from "
                    "now on in this process and replaced by the next video",
                    self.root / path,
                    self.frame_indices(j, start),
                    self._bad[path],
                )
                continue
            return self.transform(clip) if self.transform is not None else clip
        raise NoDecodableVideosError(
            f"VideoClips: no usable videos in '{self.root}': none of the {n} videos could be "
            f"decoded in this process (they changed or broke after indexing?); errors: "
            f"{names(f'{p}: {e}' for p, e in self._bad.items())}"
        )

    @property
    def failed(self) -> dict:
        """Videos that failed to decode in this process (path -> error), after indexing."""
        return dict(self._bad)

    @property
    def paths(self) -> list[str]:
        """Absolute paths of the videos used."""
        return [os.fspath(self.root / v.path) for v in self.videos]

    def __repr__(self) -> str:
        return (
            f"VideoClips(root='{self.root}', videos={len(self.videos)}, "
            f"classes={len(self.classes)}, frames={self.frames}, interval={self.interval}, "
            f"size={self.size}, train={self.train}, clips_per_video={self.clips_per_video}, "
            f"skipped={len(self.skipped)})"
        )
