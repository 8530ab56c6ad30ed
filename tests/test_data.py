"""Tests of pyframepred.data on real video files written here with PyAV (MP4/H.264, AVI/MPEG-4 and
MJPEG, MKV, MOV), including corrupt, truncated and too-short files.

Most videos carry their frame number as a binary code of 8 black/white blocks, so a decoded frame
says which frame it is, independently of the decoder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import pyframepred.data as pd
import pyframepred.data.index as index_mod
from pyframepred.data import (
    FrameReader,
    MultiScale,
    NoVideosError,
    VideoClips,
    decode_frames,
    denormalize,
    find_videos,
    index_videos,
    multiscale,
    normalize,
    synthetic,
    to_uint8,
)
from pyframepred.data.decode import resize_frames
from pyframepred.io import encode_video


# --------------------------------------------------------------------------- helpers
def coded_frames(n, h=64, w=64, first=0):
    """uint8 (n, h, w, 3) frames; frame i shows ``first + i`` in binary as 2 x 4 blocks."""
    out = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        value = first + i
        for bit in range(8):
            r, c = divmod(bit, 4)
            if (value >> bit) & 1:
                out[i, r * h // 2 : (r + 1) * h // 2, c * w // 4 : (c + 1) * w // 4] = 255
    return out


def frame_ids(clip):
    """Read the codes back from a (T, 3, H, W) clip in [-1, 1]."""
    t_, _, h, w = clip.shape
    ids = []
    for t in range(t_):
        value = 0
        for bit in range(8):
            r, c = divmod(bit, 4)
            y, x = int((r + 0.5) * h / 2), int((c + 0.5) * w / 4)
            if clip[t, :, y - 2 : y + 3, x - 2 : x + 3].mean() > 0:
                value |= 1 << bit
        ids.append(value)
    return ids


def write_video(path, frames, fps=25, codec="libx264", pix_fmt="yuv420p", options=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(
        path,
        frames,
        fps,
        codec=codec,
        pix_fmt=pix_fmt,
        options=options,
        container="avi" if path.suffix.lower() == ".avi" else None,
    )
    return path


def quiet(fn, *args, **kwargs):
    """Call without letting the expected 'skipped' warnings through."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# Readable videos of the shared data folder: relative path -> (frames, height, width, fps)
GOOD = {
    "Walk/v_Walk_g01_c01.mp4": (30, 64, 64, 25),
    "Walk/v_Walk_g02_c01.mp4": (40, 64, 64, 25),
    "Walk/v_Walk_g03_c01.MP4": (24, 64, 64, 25),
    "Run/v_Run_g01_c01.avi": (36, 60, 80, 30),  # MPEG-4 part 2 in AVI, other size and rate
    "Run/v_Run_g02_c01.avi": (28, 72, 96, 25),  # MJPEG in AVI
    "Run/v_Run_g03_c01.mkv": (32, 64, 64, 25),
    "Jump/v_Jump_g01_c01.mov": (30, 64, 64, 30),
    "Jump/v_Jump_g02_c01.mp4": (26, 64, 96, 25),
    "v_Swim_g01_c01.mp4": (30, 64, 64, 25),  # class from the file name
}
BAD = ["Walk/corrupt.mp4", "Run/truncated.mp4"]
SHORT = "Jump/short.mp4"  # 3 frames


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory, monkeypatch):
    # Never write into the user's ~/.cache from the tests.
    monkeypatch.setenv("PYFRAMEPRED_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for rel, (n, h, w, fps) in GOOD.items():
        frames = coded_frames(n, h, w)
        if rel == "Run/v_Run_g01_c01.avi":
            write_video(root / rel, frames, fps, codec="mpeg4", options={"qscale": "3"})
        elif rel == "Run/v_Run_g02_c01.avi":
            write_video(root / rel, frames, fps, codec="mjpeg", pix_fmt="yuvj420p")
        else:
            write_video(root / rel, frames, fps)
    (root / BAD[0]).write_bytes(b"this is not a video " * 200)
    whole = write_video(root / "tmp_whole.mp4", coded_frames(40), 25).read_bytes()
    (root / BAD[1]).write_bytes(whole[: len(whole) // 2])
    (root / "tmp_whole.mp4").unlink()
    write_video(root / SHORT, coded_frames(3), 25)
    (root / "Walk" / "notes.txt").write_text("not a video")
    write_video(root / ".hidden" / "v_Hidden_g01_c01.mp4", coded_frames(20), 25)
    return root


# --------------------------------------------------------------------------- scaling
def test_normalize_and_inverse_are_exact():
    x = torch.arange(256, dtype=torch.uint8)
    y = normalize(x)
    assert y.dtype == torch.float32
    assert y[0] == -1 and y[255] == 1 and torch.all(y[1:] > y[:-1])
    assert torch.equal(denormalize(y), x.float())
    assert torch.equal(to_uint8(y), x)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255], dtype=torch.uint8))
    arr = normalize(np.array([0, 127.5, 255], np.float64))
    assert arr.dtype == np.float32 and np.allclose(arr, [-1, 0, 1])
    assert np.allclose(denormalize(arr), [0, 127.5, 255])


# --------------------------------------------------------------------------- discovery
def test_find_videos_is_recursive_case_insensitive_and_skips_hidden(data_root):
    found = find_videos(data_root)
    assert set(found) == set(GOOD) | set(BAD) | {SHORT}
    assert "Walk/v_Walk_g03_c01.MP4" in found  # upper-case extension
    assert not any("hidden" in f or f.endswith(".txt") for f in found)


def test_find_videos_counts_a_linked_file_once_under_its_own_name(tmp_path, caplog):
    """A link to a video of the folder (or a hard link) would put one file on both sides of a
    train/test split: it is indexed once, under the name that is not a link."""
    for rel in ("Jump/a.mp4", "Walk/b.m4v", "Walk/c.MPG", "Run/d.mts"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "Clips").mkdir()
    (tmp_path / "Clips" / "link.mp4").symlink_to(tmp_path / "Jump" / "a.mp4")  # walked first
    os.link(tmp_path / "Walk" / "b.m4v", tmp_path / "Walk" / "b_hard.m4v")
    with caplog.at_level(logging.INFO, logger="pyframepred"):
        found = find_videos(tmp_path)
    assert found == ["Jump/a.mp4", "Run/d.mts", "Walk/b.m4v", "Walk/c.MPG"]
    assert "skipping Clips/link.mp4: the same file as Jump/a.mp4" in caplog.text
    assert "skipping Walk/b_hard.m4v: the same file as Walk/b.m4v" in caplog.text


def test_classes_from_folders_and_file_names(data_root):
    ds = quiet(VideoClips, data_root, frames=4, test_fraction=0, progress=False)
    assert ds.classes == ["Jump", "Run", "Swim", "Walk"]
    by_path = {v.path: ds.classes[label] for v, label in zip(ds.videos, ds.labels)}
    assert by_path["v_Swim_g01_c01.mp4"] == "Swim"
    assert by_path["Run/v_Run_g02_c01.avi"] == "Run"
    assert pd.index.class_of("HandstandPushups/v_HandStandPushups_g01_c01.avi") == "HandstandPushups"


# --------------------------------------------------------------------------- clips
def test_items_are_float32_clips_in_unit_range_for_mixed_sizes_and_rates(data_root):
    ds = quiet(VideoClips, data_root, frames=6, interval=1, size=(64, 64), test_fraction=0, progress=False)
    assert len(ds) == len(GOOD)
    assert {(v.height, v.width) for v in ds.videos} == {(64, 64), (60, 80), (72, 96), (64, 96)}
    assert {round(v.fps) for v in ds.videos} == {25, 30}
    for i in range(len(ds)):
        x = ds[i]
        assert x.dtype == torch.float32 and x.shape == (6, 3, 64, 64) and x.is_contiguous()
        assert x.min() >= -1 and x.max() <= 1
    # The same through a DataLoader (batched, mixed source sizes).
    batch = next(iter(DataLoader(ds, batch_size=len(ds))))
    assert batch.shape == (len(GOOD), 6, 3, 64, 64)
    # size as an int, and a non-square size
    ds2 = quiet(VideoClips, data_root, frames=2, size=(48, 80), test_fraction=0, progress=False)
    assert ds2[0].shape == (2, 3, 48, 80)


@pytest.mark.parametrize("frames,interval", [(4, 0), (5, 2), (3, 1)])
def test_frame_selection_matches_decord_at_reported_indices(data_root, frames, interval):
    ds = quiet(
        VideoClips,
        data_root,
        frames=frames,
        interval=interval,
        size=(64, 64),
        train=False,
        test_fraction=0,
        progress=False,
    )
    step = interval + 1
    for v, info in enumerate(ds.videos):
        assert ds.max_start(v) == info.frames - 1 - (frames - 1) * step
        for start in sorted({0, ds.max_start(v) // 2, ds.max_start(v)}):
            clip = ds.clip_at(v, start)
            assert clip.indices == [start + k * step for k in range(frames)]
            assert clip.start == start and clip.video == v
            native = (info.height, info.width) == (64, 64)
            vr = decord.VideoReader(
                clip.path, width=-1 if native else 64, height=-1 if native else 64, num_threads=1
            )
            ref = torch.from_numpy(vr.get_batch(clip.indices).asnumpy()).permute(0, 3, 1, 2)
            assert torch.equal(clip.frames, normalize(ref))
            # and the frames really are those frames of the file
            assert frame_ids(clip.frames) == clip.indices


def test_start_range_and_accessors(data_root):
    ds = quiet(VideoClips, data_root, frames=4, interval=1, test_fraction=0, progress=False)
    v = [info.path for info in ds.videos].index("Walk/v_Walk_g01_c01.mp4")  # 30 frames
    assert ds.max_start(v) == 30 - 1 - 3 * 2
    assert ds.frame_indices(v, 23) == [23, 25, 27, 29]
    with pytest.raises(ValueError, match="start must be in"):
        ds.frame_indices(v, 24)
    with pytest.raises(ValueError):
        ds.clip_at(v, -1)
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds.locate(v) == (v, 0)


def test_training_starts_are_random_and_cover_the_whole_range(tmp_path):
    write_video(tmp_path / "A" / "v_A_g01_c01.mp4", coded_frames(12), 25)
    ds = VideoClips(tmp_path, frames=4, interval=2, size=64, test_fraction=0, progress=False)
    assert ds.max_start(0) == 2  # 12 frames, a clip spans 10
    torch.manual_seed(0)
    starts = set()
    for _ in range(40):
        ids = frame_ids(ds[0])
        assert ids == [ids[0] + 3 * k for k in range(4)]
        starts.add(ids[0])
    assert starts == {0, 1, 2}
    torch.manual_seed(1)
    a = [frame_ids(ds[0])[0] for _ in range(10)]
    torch.manual_seed(1)
    b = [frame_ids(ds[0])[0] for _ in range(10)]
    assert a == b  # reproducible from torch's seed


def test_evaluation_is_reproducible_across_instances_seeds_and_workers(data_root):
    def make(seed):
        return quiet(
            VideoClips,
            data_root,
            frames=4,
            interval=1,
            train=False,
            seed=seed,
            test_fraction=0,
            clips_per_video=2,
            progress=False,
        )

    a, b, c = make(0), make(0), make(1)
    assert len(a) == 2 * len(GOOD)
    starts_a = [a.eval_start(*a.locate(i)) for i in range(len(a))]
    assert starts_a == [b.eval_start(*b.locate(i)) for i in range(len(b))]
    assert starts_a != [c.eval_start(*c.locate(i)) for i in range(len(c))]
    ref = torch.stack([a[i] for i in range(len(a))])
    assert torch.equal(ref, torch.stack([b[i] for i in range(len(b))]))
    for i in range(len(a)):
        video, slot = a.locate(i)
        assert frame_ids(ref[i])[0] == a.eval_start(video, slot)
    loader = DataLoader(a, batch_size=5, num_workers=2, shuffle=False)
    assert torch.equal(ref, torch.cat(list(loader)))


def test_fps_option_resamples_mixed_frame_rates(tmp_path):
    write_video(tmp_path / "A" / "v_A_g01_c01.mp4", coded_frames(60), 50)
    write_video(tmp_path / "A" / "v_A_g02_c01.mp4", coded_frames(30), 25)
    ds = VideoClips(tmp_path, frames=4, interval=1, fps=25, train=False, test_fraction=0, progress=False)
    fast = [v.path for v in ds.videos].index("A/v_A_g01_c01.mp4")
    assert ds.frame_indices(fast, 3) == [3, 7, 11, 15]  # 2 source frames per 25 fps frame
    assert ds.frame_indices(1 - fast, 3) == [3, 5, 7, 9]
    clip = ds.clip_at(fast, 3)
    assert frame_ids(clip.frames) == clip.indices
    plain = VideoClips(tmp_path, frames=4, interval=1, train=False, test_fraction=0, progress=False)
    assert plain.frame_indices(fast, 3) == [3, 5, 7, 9]


# --------------------------------------------------------------------------- geometry
def test_cover_keeps_aspect_ratio_by_centre_cropping(tmp_path):
    frames = coded_frames(12, 64, 128)
    path = write_video(tmp_path / "A" / "v_A_g01_c01.mp4", frames, 25)
    ds = VideoClips(
        tmp_path, frames=3, size=(32, 32), resize="cover", train=False, test_fraction=0, progress=False
    )
    clip = ds.clip_at(0, 2)
    ref = decord.VideoReader(str(path), width=64, height=32).get_batch(clip.indices).asnumpy()
    ref = torch.from_numpy(ref[:, :, 16:48].copy()).permute(0, 3, 1, 2)
    assert torch.equal(clip.frames, normalize(ref))
    with pytest.warns(UserWarning, match="stretches 1 of 1 videos"):
        stretch = VideoClips(
            tmp_path, frames=3, size=(32, 32), train=False, test_fraction=0, progress=False
        ).clip_at(0, 2)
    assert frame_ids(stretch.frames) == [2, 3, 4]  # the whole frame is kept when stretching


def test_int_size_is_the_short_side_with_a_square_crop(tmp_path):
    frames = coded_frames(12, 64, 128)  # 2:1, landscape
    path = write_video(tmp_path / "A" / "v_A_g01_c01.mp4", frames, 25)
    kw = dict(frames=3, size=32, test_fraction=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no aspect warning: nothing is bent
        evaluation = VideoClips(tmp_path, train=False, **kw)
    scaled = decord.VideoReader(str(path), width=64, height=32).get_batch([2, 3, 4]).asnumpy()
    scaled = normalize(torch.from_numpy(scaled).permute(0, 3, 1, 2))
    windows = {x: scaled[..., x : x + 32] for x in range(33)}
    assert torch.equal(evaluation.clip_at(0, 2).frames, windows[16])  # centred
    train = VideoClips(tmp_path, train=True, **kw)
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        clip = train._decode(0, [2, 3, 4], augment=True)
        assert clip.shape == (3, 3, 32, 32)
        seen |= {x for x, w in windows.items() if torch.equal(clip, w)}
    assert len(seen) > 3  # random places along the long side


def test_pair_size_that_changes_the_aspect_ratio_warns_once(tmp_path):
    write_video(tmp_path / "A" / "v_A_g01_c01.mp4", coded_frames(8, 64, 128), 25)
    write_video(tmp_path / "A" / "v_A_g02_c01.mp4", coded_frames(8, 64, 128), 25)
    write_video(tmp_path / "A" / "v_A_g03_c01.mp4", coded_frames(8, 32, 32), 25)
    with pytest.warns(UserWarning, match=r"stretches 2 of 3 videos") as rec:
        ds = VideoClips(tmp_path, frames=3, size=(32, 32), test_fraction=0, progress=False)
    assert len([w for w in rec if "stretches" in str(w.message)]) == 1
    assert "128x64 -> 32x32" in str(rec[0].message) and "an int size keeps" in str(rec[0].message)
    assert ds[0].shape == (3, 3, 32, 32)  # still stretched, as asked
    with pytest.warns(UserWarning, match=r"stretches 1 of 3 videos"):  # 2:1 fits two of them
        VideoClips(tmp_path, frames=3, size=(32, 64), test_fraction=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pair with resize="cover" keeps the aspect ratio
        VideoClips(tmp_path, frames=3, size=(32, 32), resize="cover", test_fraction=0, progress=False)


def test_random_crop_and_flip_only_in_training(tmp_path):
    path = write_video(tmp_path / "A" / "v_A_g01_c01.mp4", coded_frames(10), 25)
    kw = dict(
        frames=4,
        interval=2,
        size=32,
        random_crop=True,
        crop_scale=1.25,
        hflip=True,
        test_fraction=0,
        progress=False,
    )
    train = VideoClips(tmp_path, train=True, **kw)
    evaluation = VideoClips(tmp_path, train=False, **kw)
    assert train.max_start(0) == 0
    big = decord.VideoReader(str(path), width=40, height=40).get_batch([0, 3, 6, 9]).asnumpy()
    big = normalize(torch.from_numpy(big).permute(0, 3, 1, 2))
    windows = {(y, x): big[..., y : y + 32, x : x + 32] for y in range(9) for x in range(9)}
    # evaluation: the centre crop, never flipped
    assert torch.equal(evaluation[0], windows[(4, 4)])
    torch.manual_seed(0)
    seen_pos, flips = set(), set()
    for _ in range(30):
        x = train[0]
        assert x.shape == (4, 3, 32, 32)
        for flipped in (False, True):
            y = x.flip(-1) if flipped else x
            hits = [k for k, w in windows.items() if torch.equal(y, w)]
            if hits:
                seen_pos.add(hits[0])
                flips.add(flipped)
                break
        else:
            pytest.fail("a training clip is not a (flipped) crop of the decoded frames")
    assert flips == {False, True} and len(seen_pos) > 5


# --------------------------------------------------------------------------- decord size bug
def native_then_resized(path, indices, size):
    """Reference: decord at the video's own size, then the torch resize of pyframepred.data
    (uint8 ``(T, H, W, 3)``)."""
    arr = decord.VideoReader(str(path), num_threads=1).get_batch(indices).asnumpy()
    return resize_frames(arr, size)


@pytest.mark.parametrize("size", [(48, 48), (40, 16), (64, 72)])
def test_widths_that_decord_cannot_scale_to_still_decode(tmp_path, size):
    # decord 0.6 fails at output widths 8, 12, 16, 24, 48, 72 (dmlc/decord#336): get_batch raises
    # "Check failed: from_size == to_size". VideoClips must still give clips at those sizes.
    path = write_video(tmp_path / "A" / "v_A_g01_c01.mp4", coded_frames(12, 64, 96), 25)
    h, w = size
    with pytest.warns(UserWarning, match="stretches"):  # a 2:3 video to other shapes
        ds = VideoClips(tmp_path, frames=4, size=size, train=False, test_fraction=0, progress=False)
    clip = ds.clip_at(0, 3)
    assert clip.frames.shape == (4, 3, h, w) and clip.frames.dtype == torch.float32
    ref = normalize(torch.from_numpy(native_then_resized(path, clip.indices, (h, w))))
    assert (clip.frames - ref.permute(0, 3, 1, 2)).abs().max() <= 2 / 127.5  # same, up to rounding
    if w >= 16:
        assert frame_ids(clip.frames) == clip.indices
    # __getitem__, a DataLoader and training-time augmentation take the same path
    train = VideoClips(
        tmp_path, frames=4, size=size, random_crop=True, hflip=True, test_fraction=0, progress=False
    )
    assert train[0].shape == (4, 3, h, w) and not train.failed
    assert next(iter(DataLoader(ds, batch_size=1))).shape == (1, 4, 3, h, w)


def test_videos_whose_own_width_decord_cannot_return_still_decode(tmp_path):
    # The bug also hits decoding at a video's own size when that width is affected (48 here).
    src = coded_frames(10, 32, 48)
    write_video(tmp_path / "A" / "v_A_g01_c01.mp4", src, 25, options={"qp": "0"})
    for size in (None, (32, 48), (32, 64)):
        ds = VideoClips(tmp_path, frames=3, size=size, train=False, test_fraction=0, progress=False)
        clip = ds.clip_at(0, 2)
        assert clip.frames.shape == (3, 3, 32, size[1] if size else 48)
        assert frame_ids(clip.frames) == [2, 3, 4]
    x = decode_frames(tmp_path / "A" / "v_A_g01_c01.mp4", [2, 3], None)
    assert x.shape == (2, 32, 48, 3) and x.dtype == np.uint8
    assert np.abs(x.astype(int) - src[2:4]).mean() < 8  # resized from 49 columns: close


def test_the_working_decode_path_is_remembered_per_video_and_size(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4", coded_frames(8, 64, 64), 25)
    opened = []
    real = decord.VideoReader

    def counting(*args, **kwargs):
        opened.append((kwargs.get("height"), kwargs.get("width")))
        return real(*args, **kwargs)

    monkeypatch.setattr(decord, "VideoReader", counting)
    for size, fast in (((32, 32), True), ((48, 48), False), ((24, 16), False)):
        first = decode_frames(path, [0, 5], size)
        opened.clear()
        again = decode_frames(path, [1, 6], size)
        assert again.shape == (2, *size, 3) and first.shape == again.shape
        # one decord reader per call after the first: at the size itself when decord can scale
        # there, at the video's own size (-1) otherwise
        assert opened == [size if fast else (-1, -1)]
        if not fast:
            assert np.array_equal(again, native_then_resized(path, [1, 6], size))


def test_frame_reader_is_a_drop_in_reader_at_any_size(tmp_path):
    path = write_video(tmp_path / "v.mp4", coded_frames(15, 64, 64), 25)
    reader = FrameReader(path, size=(48, 48))
    assert len(reader) == 15 and reader.native_size == (64, 64) and reader.fps == 25
    batch = reader.get_batch([0, 7, 14])
    assert batch.shape == (3, 48, 48, 3) and batch.dtype == np.uint8
    assert frame_ids(normalize(torch.from_numpy(batch).permute(0, 3, 1, 2))) == [0, 7, 14]
    assert FrameReader(path).get_batch([1]).shape == (1, 64, 64, 3)
    with pytest.raises(IsADirectoryError, match="is a folder, not a video file"):
        FrameReader(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FrameReader(tmp_path / "missing.mp4")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        decode_frames(tmp_path, [0], 48)


# --------------------------------------------------------------------------- bad input
def test_unreadable_and_short_videos_are_skipped_with_one_warning(data_root, caplog):
    caplog.set_level(logging.INFO, logger="pyframepred.data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = VideoClips(data_root, frames=4, test_fraction=0, progress=False)
        stretched = VideoClips(data_root, frames=4, size=(64, 64), test_fraction=0, progress=False)
    ours = [w for w in caught if "VideoClips: skipped" in str(w.message)]
    assert len(ours) == 2  # one per data set
    msg = str(ours[0].message)
    assert "skipped 3 of 12 videos" in msg and str(data_root) in msg
    # the other warning: only the pair (64, 64) stretches the 4:3 and 3:2 videos; the default
    # size, the short side 64, crops them
    bent = [str(w.message) for w in caught if "stretches" in str(w.message)]
    assert len(bent) == 1 and "stretches 3 of 9 videos" in bent[0], bent
    assert ds.resize == "cover" and stretched.resize == "stretch"
    assert ds[0].shape == stretched[0].shape == (4, 3, 64, 64)
    assert "2 unreadable" in msg and "corrupt.mp4" in msg and "truncated.mp4" in msg
    assert "1 too short" in msg and "short.mp4 (3 frames)" in msg
    assert len(ds) == len(GOOD)
    reasons = dict(ds.skipped)
    first = ds.skipped[0]
    assert f"Why: {first[0]}: {first[1]}" in msg and "and 1 more" in msg  # reasons in the message
    assert set(reasons) == set(BAD) | {SHORT}
    assert "too short" in reasons[SHORT]
    assert all(reasons[b] for b in BAD)
    assert "corrupt.mp4" in caplog.text and "truncated.mp4" in caplog.text  # details in the log


def test_a_truncated_stream_keeps_the_frames_it_still_has(tmp_path):
    # Without B-frames, so that the frames left are exactly the first ones. (With B-frames a cut
    # leaves gaps in time: decord then numbers the frames that are present, as they decode.)
    whole = write_video(tmp_path / "whole.mkv", coded_frames(40), 25, options={"bf": "0"}).read_bytes()
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / "cut.mkv").write_bytes(whole[: len(whole) * 6 // 10])
    (tmp_path / "whole.mkv").unlink()
    ds = VideoClips(tmp_path, frames=4, train=False, test_fraction=0, progress=False)
    n = ds.videos[0].frames
    assert 4 <= n < 40
    last = ds.clip_at(0, ds.max_start(0))
    assert last.indices[-1] == n - 1 and frame_ids(last.frames) == last.indices


def test_files_that_are_no_video_are_skipped_quietly_with_ffmpegs_reason(tmp_path, capfd):
    import av

    (tmp_path / "text.mp4").write_bytes(b"this is not a video " * 200)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with av.open(str(tmp_path / "audio.mp4"), "w") as out:  # a sound track and no picture
        stream = out.add_stream("aac", rate=8000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    capfd.readouterr()
    errors = {p.name: index_mod.probe_video(p)["error"] for p in sorted(tmp_path.iterdir())}
    assert errors == {
        "audio.mp4": "not a video: no video stream",
        "empty.mp4": "empty file",
        "text.mp4": "not a video: Invalid data found when processing input",
    }
    # Neither decord nor FFmpeg wrote to the process's stderr (one line each per file before).
    assert capfd.readouterr().err == ""


def test_read_clip_counts_frames_at_the_training_frame_rate(tmp_path):
    from pyframepred.data.decode import read_clip

    video = write_video(tmp_path / "fast.mp4", coded_frames(40), 20)
    clip, n_real = read_clip(video, 3, 2, 0, None, start=1, fps=10)  # every other frame
    assert n_real == 5 and frame_ids(clip) == [1, 3, 5, 7, 9]
    clip, _ = read_clip(video, 3, 2, 1, None, start=0, fps=10)  # interval 1 at 10 fps: 4 apart
    assert frame_ids(clip) == [0, 4, 8, 12, 16]
    assert frame_ids(read_clip(video, 3, 2, 0, None, start=0)[0]) == [0, 1, 2, 3, 4]  # as stored
    # the same frames VideoClips takes for a clip from the same start
    ds = VideoClips(tmp_path, frames=5, fps=10, train=False, test_fraction=0, progress=False)
    assert ds.frame_indices(0, 1) == [1, 3, 5, 7, 9]


def test_length_requirement_depends_on_clip_span(data_root):
    # 3 frames is enough for frames=3, interval=0: the short video is then used
    ds = quiet(VideoClips, data_root, frames=3, test_fraction=0, progress=False)
    assert SHORT in [v.path for v in ds.videos]
    with pytest.raises(NoVideosError, match="too short"):
        quiet(VideoClips, data_root, frames=20, interval=2, test_fraction=0, progress=False)


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        VideoClips(missing, progress=False)
    assert str(missing) in str(err.value)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("no videos here")
    with pytest.raises(NoVideosError, match="no video files") as err:
        VideoClips(tmp_path, progress=False)
    assert str(tmp_path) in str(err.value)


def test_class_filters(data_root):
    ds = quiet(VideoClips, data_root, include_classes=["walk", "Swim"], test_fraction=0, progress=False)
    assert ds.classes == ["Swim", "Walk"] and len(ds) == 4
    ds = quiet(VideoClips, data_root, exclude_classes=["Walk"], test_fraction=0, progress=False)
    assert "Walk" not in ds.classes and len(ds) == len(GOOD) - 3
    with pytest.raises(NoVideosError, match="class filters") as err:
        quiet(VideoClips, data_root, include_classes=["Dance"], progress=False)
    assert str(data_root) in str(err.value) and "Walk" in str(err.value)
    with pytest.warns(UserWarning, match="not found.*Dance"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="VideoClips: skipped")
        ds = VideoClips(
            data_root,
            frames=3,
            exclude_classes=["Dance"],
            test_fraction=0,
            include_classes=["Walk"],
            progress=False,
        )
    assert ds.classes == ["Walk"]


def test_a_video_failing_at_decode_time_is_replaced_and_logged(tmp_path, caplog):
    for g in range(1, 5):
        write_video(tmp_path / "A" / f"v_A_g{g:02d}_c01.mp4", coded_frames(20, first=50 * g), 25)
    kw = dict(frames=4, test_fraction=0, progress=False)
    ds = VideoClips(tmp_path, train=False, **kw)
    train = VideoClips(tmp_path, train=True, **kw)
    expected_1 = ds[1]
    # The files change after indexing: one becomes garbage, one disappears.
    (tmp_path / ds.videos[0].path).write_bytes(b"\0garbage" * 100)
    (tmp_path / ds.videos[2].path).unlink()
    caplog.set_level(logging.WARNING, logger="pyframepred.data")
    x0 = ds[0]
    assert torch.equal(x0, expected_1)  # deterministically the next video's clip
    assert torch.equal(ds[0], x0)
    assert frame_ids(ds[2])[0] >= 200  # video 2 replaced by video 3
    assert set(ds.failed) == {ds.videos[0].path, ds.videos[2].path}
    assert "v_A_g01_c01.mp4" in caplog.text and "v_A_g03_c01.mp4" in caplog.text
    # Inside DataLoader workers nothing is raised either.
    for loader_ds in (ds, train):
        batches = list(DataLoader(loader_ds, batch_size=2, num_workers=2))
        assert sum(len(b) for b in batches) == 4
        for b in batches:
            assert b.shape[1:] == (4, 3, 64, 64)
            assert all(frame_ids(clip)[0] // 50 in (2, 4) for clip in b)
    # Only when every video is broken is it an error (a clear one).
    for v in ds.videos:
        p = tmp_path / v.path
        if p.exists():
            p.write_bytes(b"broken")
    with pytest.raises(NoVideosError, match="none of the 4 videos could be decoded") as err:
        ds[3]
    assert isinstance(err.value, RuntimeError) and str(tmp_path) in str(err.value)  # as before
    with pytest.raises(NoVideosError, match="3 unreadable"):
        quiet(VideoClips, tmp_path, train=False, **kw)


# --------------------------------------------------------------------------- index cache
def test_index_gives_up_a_hung_probe_and_retries_it_next_time(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for g in range(1, 4):
        write_video(root / "A" / f"v_A_g{g:02d}_c01.mp4", coded_frames(10 + g), 25)
    release = threading.Event()
    real_probe = index_mod.probe_video

    def probe(p):
        if Path(p).name == "v_A_g02_c01.mp4":
            release.wait(30)  # a probe that hangs (e.g. a stuck network mount)
        return real_probe(p)

    monkeypatch.setattr(index_mod, "probe_video", probe)
    t0 = time.monotonic()
    infos = index_videos(root, progress=False, workers=1, probe_timeout=0.5)
    assert time.monotonic() - t0 < 20  # did not wait for the hung probe
    assert [i.frames for i in infos] == [11, 0, 13]
    assert infos[1].error == "probe timed out after 0.5 s" and not infos[1].ok
    cached = json.loads((root / pd.index.INDEX_FILENAME).read_text())["videos"]
    assert "A/v_A_g02_c01.mp4" not in cached  # not remembered as unusable
    release.set()
    assert index_videos(root, progress=False, probe_timeout=10)[1].frames == 12


def test_index_is_cached_and_invalidated_per_file(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    for g in range(1, 4):
        write_video(root / "A" / f"v_A_g{g:02d}_c01.mp4", coded_frames(10 + g), 25)
    probed = []
    real_probe = index_mod.probe_video
    monkeypatch.setattr(index_mod, "probe_video", lambda p: probed.append(Path(p).name) or real_probe(p))

    infos = index_videos(root, progress=True)
    assert [i.frames for i in infos] == [11, 12, 13] and len(probed) == 3
    assert "Indexing videos" in capsys.readouterr().err  # progress bar
    index_file = root / pd.index.INDEX_FILENAME
    cached = json.loads(index_file.read_text())
    assert set(cached["videos"]) == {f"A/v_A_g0{g}_c01.mp4" for g in (1, 2, 3)}

    probed.clear()
    assert index_videos(root, progress=False) == infos and probed == []

    # a changed file is re-probed, and only it
    changed = root / "A" / "v_A_g02_c01.mp4"
    write_video(changed, coded_frames(25), 25)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    infos = index_videos(root, progress=False)
    assert probed == ["v_A_g02_c01.mp4"] and infos[1].frames == 25
    # a new file is probed; a removed one leaves the index
    probed.clear()
    write_video(root / "B" / "new.mp4", coded_frames(8), 25)
    (root / "A" / "v_A_g01_c01.mp4").unlink()
    infos = index_videos(root, progress=False)
    assert probed == ["new.mp4"] and [i.path for i in infos] == [
        "A/v_A_g02_c01.mp4",
        "A/v_A_g03_c01.mp4",
        "B/new.mp4",
    ]
    assert "A/v_A_g01_c01.mp4" not in json.loads(index_file.read_text())["videos"]
    # VideoClips uses the same index
    probed.clear()
    VideoClips(root, frames=2, test_fraction=0, progress=False)
    assert probed == []


def test_index_falls_back_to_the_cache_folder_when_data_is_read_only(tmp_path, monkeypatch):
    root = tmp_path / "ro"
    write_video(root / "A" / "v_A_g01_c01.mp4", coded_frames(10), 25)
    cache = tmp_path / "cache"
    real_write = index_mod.atomic_write_json

    def write(path, obj):
        if Path(path).parent == root:
            raise PermissionError(13, "Read-only file system", str(path))
        return real_write(path, obj)

    monkeypatch.setattr(index_mod, "atomic_write_json", write)
    index_videos(root, cache_dir=cache, progress=False)
    assert not (root / pd.index.INDEX_FILENAME).exists()
    files = list((cache / "indexes").glob("*.json"))
    assert len(files) == 1 and "A/v_A_g01_c01.mp4" in json.loads(files[0].read_text())["videos"]
    probed = []
    monkeypatch.setattr(index_mod, "probe_video", lambda p: probed.append(p))
    assert index_videos(root, cache_dir=cache, progress=False)[0].frames == 10
    assert probed == []


# --------------------------------------------------------------------------- splits
def test_ucf_split_lists(data_root, tmp_path):
    (tmp_path / "trainlist01.txt").write_text(
        "Walk/v_Walk_g02_c01.avi 3\nRun/v_Run_g01_c01.avi 2\nWalk/corrupt.avi 3\n"
    )
    (tmp_path / "testlist01.txt").write_text("Walk/v_Walk_g01_c01.avi\nJump/v_Jump_g01_c01.avi\n")
    # The train side says which videos of the folder neither list names (they are not used).
    with pytest.warns(
        UserWarning, match=r"VideoClips: 7 of the 12 videos in .* are in neither list of split 1"
    ) as w:
        train = VideoClips(data_root, split_dir=tmp_path, train=True, progress=False)
    assert any("Jump/short.mp4" in str(x.message) and "neither" in str(x.message) for x in w)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the test side: no second warning
        test = VideoClips(data_root, split_dir=tmp_path, train=False, progress=False)
    assert [v.path for v in train.videos] == ["Run/v_Run_g01_c01.avi", "Walk/v_Walk_g02_c01.mp4"]
    assert train.skipped[0][0] == "Walk/corrupt.mp4"
    assert [v.path for v in test.videos] == ["Jump/v_Jump_g01_c01.mov", "Walk/v_Walk_g01_c01.mp4"]
    with pytest.raises(FileNotFoundError, match="trainlist02.txt"):
        VideoClips(data_root, split_dir=tmp_path, split_index=2, progress=False)


def test_evaluation_takes_the_test_side_of_the_checkpoints_own_split(data_root, tmp_path):
    from pyframepred.evaluation import heldout_clips

    (tmp_path / "trainlist01.txt").write_text("Walk/v_Walk_g02_c01.avi 3\nRun/v_Run_g01_c01.avi 2\n")
    (tmp_path / "testlist01.txt").write_text("Walk/v_Walk_g01_c01.avi\n")
    cfg = dict(data=str(data_root), split_dir=str(tmp_path), split_index=1, test_fraction=0.2)
    for data in (None, str(data_root)):  # the checkpoint's own data, named or not
        assert [v.path for v in heldout_clips(cfg, data, 3).videos] == ["Walk/v_Walk_g01_c01.mp4"]
    # trained on every video: evaluated on them too, with a warning that says so
    every = {v.path for v in quiet(VideoClips, data_root, frames=3, test_fraction=0, progress=False).videos}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = heldout_clips(dict(data=str(data_root), test_fraction=0.0), None, 3)
    assert {v.path for v in ds.videos} == every
    assert any("scores are on training videos" in str(w.message) for w in caught)
    # the checkpoint's test_fraction decides the group split of its own data
    for fraction in (0.2, 0.5):
        expected = quiet(VideoClips, data_root, frames=3, train=False, test_fraction=fraction, progress=False)
        ds = quiet(heldout_clips, dict(data=str(data_root), test_fraction=fraction), None, 3)
        assert [v.path for v in ds.videos] == [v.path for v in expected.videos]


def test_group_split_never_puts_a_group_on_both_sides():
    rng = np.random.default_rng(0)
    paths, classes = [], []
    for cls in ("Alpha", "Beta", "Gamma"):
        for g in range(1, 8):
            for c in range(1, 1 + int(rng.integers(2, 6))):
                paths.append(f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi")
                classes.append(cls)
    is_test = pd.group_split(paths, classes, 0.3)
    sides = {}
    for p, t in zip(paths, is_test):
        key = (p.split("/")[0], pd.index.group_of(p))
        sides.setdefault(key, set()).add(t)
    assert all(len(s) == 1 for s in sides.values())
    per_class = {
        cls: sum(t for (c, _), s in sides.items() if c == cls for t in s)
        for cls in ("Alpha", "Beta", "Gamma")
    }
    assert per_class == {"Alpha": 2, "Beta": 2, "Gamma": 2}  # round(0.3 * 7) groups each
    order = rng.permutation(len(paths))
    shuffled = pd.group_split([paths[i] for i in order], [classes[i] for i in order], 0.3)
    assert [shuffled[list(order).index(i)] for i in range(len(paths))] == is_test
    assert not any(pd.group_split(paths, classes, 0.0))


def test_train_and_test_sides_are_disjoint_and_complete(data_root):
    train = quiet(VideoClips, data_root, frames=3, train=True, progress=False)
    test = quiet(VideoClips, data_root, frames=3, train=False, progress=False)
    a, b = {v.path for v in train.videos}, {v.path for v in test.videos}
    assert a and b and not a & b
    assert len(a | b) == len(GOOD) + 1  # the 3-frame video is long enough for frames=3


def test_unusable_videos_are_set_aside_before_the_group_split(tmp_path):
    # Six groups: the split sends one to the test side, and by the hash order of the names it is
    # g05 (see the assert). Here g05 is truncated and g06 is zeros: before the fix the test side
    # held only the bad g05, and VideoClips(train=False) failed.
    names = [f"v_Swim_g{g:02d}_c01.mp4" for g in range(1, 7)]
    assert pd.group_split(names, ["Swim"] * 6, 0.2) == [False] * 4 + [True, False]
    for g, name in enumerate(names[:4], 1):
        write_video(tmp_path / name, coded_frames(20, first=10 * g), 25)
    whole = write_video(tmp_path / "whole.mp4", coded_frames(20), 25).read_bytes()
    (tmp_path / "whole.mp4").unlink()
    (tmp_path / names[4]).write_bytes(whole[: len(whole) // 3])
    (tmp_path / names[5]).write_bytes(bytes(len(whole)))
    kw = dict(frames=4, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train = VideoClips(tmp_path, train=True, **kw)
        test = VideoClips(tmp_path, train=False, **kw)
    a, b = {v.path for v in train.videos}, {v.path for v in test.videos}
    assert len(b) == 1 and len(a) == 3 and a | b == set(names[:4])
    # the usable videos are split as group_split splits them
    assert [t for t in pd.group_split(sorted(a | b), ["Swim"] * 4, 0.2)] == [n in b for n in sorted(a | b)]
    # the bad files are reported once, on the train side (their groups have no usable video)
    assert {p for p, _ in train.skipped} == set(names[4:]) and test.skipped == []
    ours = [str(w.message) for w in caught if "VideoClips" in str(w.message)]
    assert len(ours) == 1 and "skipped 2 of 5 videos of the train side" in ours[0]
    assert test[0].shape == (4, 3, 64, 64)


def test_the_group_split_does_not_depend_on_the_clip_length(tmp_path):
    # A run trains on clips of in + out frames and validates on clips of in + steps frames. Ten
    # groups, two on the test side; one of them is too short for the longer clips. Splitting only
    # the videos long enough for a clip would move a training group to the test side of the
    # longer clips (validation on training videos).
    names = [f"v_Swim_g{g:02d}_c01.mp4" for g in range(1, 11)]
    is_test = pd.group_split(names, ["Swim"] * 10, 0.2)
    short = names[is_test.index(True)]
    for g, name in enumerate(names):
        write_video(tmp_path / name, coded_frames(8 if name == short else 16, first=g), 25)
    sides = {}
    for frames in (4, 12):
        for train in (True, False):
            ds = quiet(VideoClips, tmp_path, frames=frames, train=train, progress=False)
            sides[frames, train] = {v.path for v in ds.videos}
    assert sides[4, True] == sides[12, True] == {n for n, t in zip(names, is_test) if not t}
    assert sides[4, False] == {n for n, t in zip(names, is_test) if t}
    assert sides[12, False] == sides[4, False] - {short}
    # a test side left without a video long enough says which side it is
    with pytest.raises(NoVideosError, match=r"left after filtering \(test side\).*too short"):
        quiet(VideoClips, tmp_path, frames=12, train=False, test_fraction=0.1, progress=False)


def test_group_split_takes_file_names_that_are_not_utf8():
    names = [f"v_A_g{g:02d}_caf\udce9.avi" for g in range(1, 6)]  # b"caf\xe9" from the disk
    assert sum(pd.group_split(names, ["A"] * 5, 0.2)) == 1
    # UTF-8 names rank as before (the splits of existing runs stay)
    assert pd.group_split(["v_A_g01_c01.avi", "v_A_g02_c01.avi"], ["A"] * 2, 0.5) == [True, False]


def test_a_bad_video_counts_on_the_side_of_its_group(tmp_path):
    for g in range(1, 6):
        write_video(tmp_path / "A" / f"v_A_g{g:02d}_c01.mp4", coded_frames(12), 25)
    sides = pd.group_split([f"A/v_A_g{g:02d}_c01.mp4" for g in range(1, 6)], ["A"] * 5, 0.2)
    test_g = sides.index(True) + 1
    bad = f"A/v_A_g{test_g:02d}_c02.mp4"
    write_video(tmp_path / bad, coded_frames(2), 25)  # too short, in the test group
    test = quiet(VideoClips, tmp_path, frames=4, train=False, progress=False)
    train = VideoClips(tmp_path, frames=4, train=True, progress=False)
    assert [v.path for v in test.videos] == [f"A/v_A_g{test_g:02d}_c01.mp4"]
    assert [p for p, _ in test.skipped] == [bad] and train.skipped == []


def test_classes_with_a_single_group_are_split_together(tmp_path):
    # A folder per video (or per scene): each class alone would keep its one group on the train
    # side; together they are split as one class, a whole group (here: a class) on each side.
    for cls in ("Jump", "Run", "Swim", "Walk", "Dive"):
        write_video(tmp_path / cls / f"v_{cls}_g01_c01.mp4", coded_frames(10), 25)
    write_video(tmp_path / "Jump" / "v_Jump_g01_c02.mp4", coded_frames(10), 25)
    train = VideoClips(tmp_path, frames=4, train=True, progress=False)
    test = VideoClips(tmp_path, frames=4, train=False, progress=False)
    assert len(test.classes) == 1 and set(train.classes).isdisjoint(test.classes)  # round(0.2 * 5)
    assert len(train) + len(test) == 6
    assert sorted(train.classes + test.classes) == ["Dive", "Jump", "Run", "Swim", "Walk"]


def test_a_single_group_leaves_the_test_side_empty_with_a_clear_error(tmp_path):
    write_video(tmp_path / "Jump" / "v_Jump_g01_c01.mp4", coded_frames(10), 25)
    write_video(tmp_path / "Jump" / "v_Jump_g01_c02.mp4", coded_frames(10), 25)
    train = VideoClips(tmp_path, frames=4, train=True, progress=False)
    assert len(train) == 2
    with pytest.raises(NoVideosError) as err:
        VideoClips(tmp_path, frames=4, train=False, progress=False)
    msg = str(err.value)
    assert str(tmp_path) in msg and "test side" in msg
    assert "2 readable videos form 1 group(s)" in msg and "Jump: 1" in msg
    assert "its one group stays on the train side" in msg
    assert "test_fraction=0" in msg and "split_dir" in msg and "more groups" in msg
    # the ways out it names work
    assert len(VideoClips(tmp_path, frames=4, train=False, test_fraction=0, progress=False)) == 2
    # and a test_fraction that sends the only group to the test side says so for train
    with pytest.raises(NoVideosError, match="train side.*sends every group to the test side"):
        VideoClips(tmp_path, frames=4, train=True, test_fraction=0.8, progress=False)


def test_multiscale_inputs_and_targets():
    clip = torch.rand(5, 3, 64, 64) * 2 - 1
    inputs, targets = multiscale(clip, scales=(4, 16, 32, 64))
    assert [tuple(i.shape) for i in inputs] == [(12, s, s) for s in (4, 16, 32, 64)]
    assert [tuple(t.shape) for t in targets] == [(3, s, s) for s in (4, 16, 32, 64)]
    assert torch.equal(inputs[-1], clip[:4].reshape(12, 64, 64))
    assert torch.equal(targets[-1], clip[4])
    pooled = torch.nn.functional.avg_pool2d(clip[4:5], 16)[0]
    assert torch.allclose(targets[0], pooled, atol=1e-6)
    assert torch.allclose(inputs[1][3:6], torch.nn.functional.avg_pool2d(clip[1:2], 4)[0], atol=1e-6)
    batch_in, batch_t = multiscale(clip.expand(2, -1, -1, -1, -1), scales=(16,), n_input=3, n_target=2)
    assert batch_in[0].shape == (2, 9, 16, 16) and batch_t[0].shape == (2, 6, 16, 16)
    with pytest.raises(ValueError):
        multiscale(clip, n_input=5)


def test_multiscale_transform_through_a_loader(data_root):
    ds = quiet(
        VideoClips,
        data_root,
        frames=5,
        test_fraction=0,
        progress=False,
        transform=MultiScale((4, 16, 32, 64)),
    )
    inputs, targets = next(iter(DataLoader(ds, batch_size=3)))
    assert [tuple(i.shape) for i in inputs] == [(3, 12, s, s) for s in (4, 16, 32, 64)]
    assert [tuple(t.shape) for t in targets] == [(3, 3, s, s) for s in (4, 16, 32, 64)]


# --------------------------------------------------------------------------- synthetic data
def test_synthetic_encoding_gives_the_same_bytes_every_time(tmp_path):
    # The clip and size on which x264's AVX-512 code gave other bytes in 3-20 % of the encodes
    # (without the generator's cpu-independent option); 24 encodes must all agree.
    from pyframepred.data.synthetic_render import CLASSES, render_video

    cls = CLASSES.index("CameraPan")
    video = render_video("CameraPan", 10, 64, 64, [3, cls, 2], [3, cls, 2, 1, 1])
    encodes = set()
    for k in range(24):
        path = tmp_path / f"{k}.mp4"
        synthetic.write_video(path, video, 25, options=synthetic._REPRODUCIBLE_X264)
        encodes.add(path.read_bytes())
    assert len(encodes) == 1


def test_synthetic_generation_is_deterministic(tmp_path):
    kw = dict(videos_per_class=2, frames=(8, 12), classes=["StillScene", "CameraPan"], progress=False)
    a = synthetic.generate(tmp_path / "a", seed=3, **kw)
    b = synthetic.generate(tmp_path / "b", seed=3, **kw)
    c = synthetic.generate(tmp_path / "c", seed=4, **kw)
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*.mp4"))
    assert files == [
        "CameraPan/v_CameraPan_g01_c01.mp4",
        "CameraPan/v_CameraPan_g02_c01.mp4",
        "StillScene/v_StillScene_g01_c01.mp4",
        "StillScene/v_StillScene_g02_c01.mp4",
    ]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)
    assert synthetic.generate(a, seed=3, **kw) == a  # same set: reused
    with pytest.raises(FileExistsError):
        synthetic.generate(a, seed=5, **kw)
    infos = index_videos(a, progress=False)
    assert all(i.ok and 8 <= i.frames <= 12 and (i.height, i.width) == (64, 64) for i in infos)


def test_default_dataset_is_made_once_in_the_cache_and_loads(tmp_path, monkeypatch):
    cache = tmp_path / "pfp-cache"
    monkeypatch.setenv("PYFRAMEPRED_CACHE", str(cache))
    root = pd.default_dataset_root(progress=False)
    assert root.parent == cache / "synthetic" and (root / "synthetic.json").is_file()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: pytest.fail("regenerated"))
    assert pd.default_dataset_root(progress=False) == root

    infos = index_videos(root, progress=False)
    assert len(infos) == 6 * 12 and all(i.ok for i in infos)
    assert all(40 <= i.frames <= 60 and i.height >= 64 and i.width >= 64 for i in infos)
    train = VideoClips(root, frames=8, interval=1, size=64, progress=False)
    test = VideoClips(root, frames=8, interval=1, size=64, train=False, progress=False)
    assert len(train.classes) == len(test.classes) == 6
    assert not {v.path for v in train.videos} & {v.path for v in test.videos}
    # every class moves: in each, a held-out video whose consecutive frames all differ by more
    # than noise; where the camera stands still, frames change far less than where it moves
    change = {}
    for cls, name in enumerate(test.classes):
        steps = []
        for v in (i for i, label in enumerate(test.labels) if label == cls):
            clip = test.clip_at(v, 0).frames
            steps.append((clip[1:] - clip[:-1]).abs().mean(dim=(1, 2, 3)))
        assert any((d > 0.004).all() for d in steps), name
        change[name] = torch.cat(steps).mean().item()
    camera = [change[c] for c in ("CameraPan", "CameraZoom", "Handheld", "Parallax")]
    assert change["StillScene"] < 0.5 * min(camera), change


def test_synthetic_command_line(tmp_path, capsys):
    out = tmp_path / "made"
    assert (
        synthetic.main(
            [
                str(out),
                "--videos-per-class",
                "1",
                "--frames",
                "6",
                "--classes",
                "MovingObjects",
                "Handheld",
                "--quiet",
            ]
        )
        == 0
    )
    assert "2 videos" in capsys.readouterr().out
    assert sorted(p.name for p in out.rglob("*.mp4")) == [
        "v_Handheld_g01_c01.mp4",
        "v_MovingObjects_g01_c01.mp4",
    ]
    with pytest.raises(SystemExit):
        synthetic.main([str(out), "--seed", "9", "--quiet"])  # non-empty, different set
    err = capsys.readouterr().err
    assert "pass --overwrite" in err and "overwrite=True" not in err  # the flag, on the CLI
    with pytest.raises(FileExistsError, match="pass overwrite=True"):  # the argument, in Python
        synthetic.generate(out, seed=9, videos_per_class=1, frames=6, progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "afile"), "--quiet"])
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synthetic.main([str(tmp_path / "x"), "--size", "63"])
