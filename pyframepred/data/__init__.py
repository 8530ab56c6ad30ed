"""Video data for frame prediction.

* :class:`VideoClips` -- a ``torch.utils.data.Dataset`` of clips ``(frames, 3, H, W)``, float32 in
  [-1, 1], decoded on demand with decord from a folder of videos (UCF-101 layout or any class
  folders);
* :func:`normalize` / :func:`denormalize` -- the pixel scaling ``(x - 127.5) / 127.5`` and back;
* :func:`multiscale` / :class:`MultiScale` -- stacked input frames and targets at several scales;
* :func:`default_dataset_root` -- the embedded synthetic data set (textured scenes, camera and
  object motion), generated into the cache folder on first use (:mod:`pyframepred.data.synthetic`);
* :func:`index_videos` -- the cached video index behind :class:`VideoClips`;
* :func:`decode_frames` / :class:`FrameReader` -- frames of one file at a chosen size, around
  decord's output-size bug (:mod:`pyframepred.data.decode`).

Example::

    from torch.utils.data import DataLoader
    from pyframepred.data import VideoClips, default_dataset_root, multiscale

    root = default_dataset_root()            # or a UCF-101 folder
    train = VideoClips(root, frames=5, interval=0, size=64, train=True, clips_per_video=8)
    test = VideoClips(root, frames=5, interval=0, size=64, train=False)   # fixed clips
    for clips in DataLoader(train, batch_size=16, shuffle=True, num_workers=2):
        # clips: float32 (16, 5, 3, 64, 64) in [-1, 1]
        inputs, targets = multiscale(clips, scales=(4, 16, 32, 64))  # 4 frames in, 1 out
        ...
"""

from ._common import VIDEO_EXTENSIONS, default_cache_dir
from .decode import FrameReader, decode_frames
from .index import VideoInfo, find_videos, index_videos, probe_video
from .splits import group_split, read_ucf_split
from .transforms import MultiScale, denormalize, multiscale, normalize, to_uint8
from .video_clips import Clip, EmptySplitError, NoDecodableVideosError, NoVideosError, VideoClips

__all__ = [
    "VideoClips",
    "Clip",
    "NoVideosError",
    "EmptySplitError",
    "NoDecodableVideosError",
    "VideoInfo",
    "VIDEO_EXTENSIONS",
    "FrameReader",
    "decode_frames",
    "normalize",
    "denormalize",
    "to_uint8",
    "multiscale",
    "MultiScale",
    "default_dataset_root",
    "default_cache_dir",
    "index_videos",
    "find_videos",
    "probe_video",
    "read_ucf_split",
    "group_split",
    "synthetic",
]


def default_dataset_root(cache_dir=None, *, progress: bool = True, **params):
    """Folder of the default synthetic data set (textured scenes), created on first use.

    See :func:`pyframepred.data.synthetic.default_dataset_root`; the cache folder is
    ``cache_dir``, else ``$PYFRAMEPRED_CACHE``, else ``~/.cache/pyframepred``.
    """
    from .synthetic import default_dataset_root as _impl

    return _impl(cache_dir, progress=progress, **params)


def __getattr__(name):
    # Imported lazily so that ``python -m pyframepred.data.synthetic`` runs cleanly.
    if name == "synthetic":
        import importlib

        return importlib.import_module(".synthetic", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
