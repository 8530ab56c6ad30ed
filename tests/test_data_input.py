"""Unusual data inputs: relative paths that FFmpeg could take for URLs, stale index entries, split
lists with spaces in names, an empty data path, an unusable cache folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import pyframepred.data.index as index_mod
from pyframepred.cli import train as tr
from pyframepred.data import FrameReader, VideoClips, decode_frames, index_videos, read_ucf_split, synthetic
from pyframepred.data import source as data_source
from pyframepred.data.decode import read_clip
from pyframepred.data.splits import listed_side
from pyframepred.errors import ConfigError
from pyframepred.io import encode_video


@pytest.fixture(autouse=True)
def _cache_env(tmp_path_factory, monkeypatch):
    # Never write into the user's ~/.cache from the tests.
    monkeypatch.setenv("PYFRAMEPRED_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_video(path, n=12, size=32):
    """A small H.264 video of ``n`` frames; frame i is grey level 10 * i. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None, None] * 10, size * size * 3)
    encode_video(os.path.abspath(path), frames.reshape(n, size, size, 3), 25)
    return path


# --------------------------------------------------------------------------- ':' in relative paths
def test_a_relative_data_folder_with_a_colon_is_indexed_and_loaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "day:1" / "A" / "v_A_g01_c01.mp4")
    write_video(tmp_path / "day:1" / "a:b.mp4", n=10)
    infos = index_videos("day:1", progress=False)
    assert [(i.path, i.frames, i.error) for i in infos] == [
        ("A/v_A_g01_c01.mp4", 12, None),
        ("a:b.mp4", 10, None),
    ]
    monkeypatch.chdir(tmp_path / "day:1")  # a file "a:b.mp4" directly in "."
    assert [i.ok for i in index_videos(".", cache=None, progress=False)] == [True, True]
    monkeypatch.chdir(tmp_path)
    clips = VideoClips("day:1", frames=3, size=None, test_fraction=0, train=False, progress=False)
    assert len(clips.videos) == 2 and tuple(clips[0].shape) == (3, 3, 32, 32)


def test_a_relative_video_path_with_a_colon_decodes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "a:b.mp4")
    assert len(FrameReader("a:b.mp4")) == 12
    frames = decode_frames("a:b.mp4", [0, 5], size=(16, 16))
    assert frames.shape == (2, 16, 16, 3) and abs(int(frames[1].mean()) - 50) <= 3
    clip, n_real = read_clip("a:b.mp4", 2, 1, 0, None)
    assert tuple(clip.shape) == (3, 3, 32, 32) and n_real == 3


def test_failures_of_a_version_1_index_are_probed_again_and_corrupt_files_still_remembered(
    tmp_path, monkeypatch
):
    # An index written before the fix: "day:1" given as a relative path made every video fail
    # ("Error reading day:1/..."), and that failure was cached for the folder.
    root = tmp_path / "day:1"
    good, other = write_video(root / "A" / "v_A_g01_c01.mp4"), write_video(root / "A" / "v_A_g02_c01.mp4")
    (root / "A" / "bad.mp4").write_bytes(b"this is not a video " * 100)

    def entry(path, **kw):
        st = path.stat()
        e = dict(frames=0, height=0, width=0, fps=0.0, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
        e["error"] = "cannot open or decode: RuntimeError: Error reading day:1/" + path.name
        return {**e, **kw}

    videos = {
        "A/v_A_g01_c01.mp4": entry(good),
        "A/v_A_g02_c01.mp4": entry(other, frames=11, height=32, width=32, fps=25.0, error=None),
        "A/bad.mp4": entry(root / "A" / "bad.mp4"),
    }
    index_file = root / index_mod.INDEX_FILENAME
    index_file.write_text(json.dumps({"version": 1, "root": str(root), "videos": videos}))
    probed = []
    real_probe = index_mod.probe_video
    monkeypatch.setattr(index_mod, "probe_video", lambda p: probed.append(Path(p).name) or real_probe(p))
    infos = {i.path: i for i in index_videos(root, progress=False)}
    assert infos["A/v_A_g01_c01.mp4"].ok and infos["A/v_A_g01_c01.mp4"].frames == 12
    assert infos["A/v_A_g02_c01.mp4"].frames == 11  # a readable entry of the old index is kept
    assert sorted(probed) == ["bad.mp4", "v_A_g01_c01.mp4"]
    assert infos["A/bad.mp4"].error.startswith("not a video")
    # the new index remembers the corrupt file: not probed again
    assert json.loads(index_file.read_text())["version"] == index_mod.INDEX_VERSION
    probed.clear()
    again = {i.path: i for i in index_videos(root, progress=False)}
    assert probed == [] and again == infos


def test_a_file_that_could_not_be_opened_is_not_remembered_as_unusable(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_video(root / "A" / "v_A_g01_c01.mp4")
    real_probe = index_mod.probe_video
    denied = "cannot open: PermissionError: [Errno 13] Permission denied"
    monkeypatch.setattr(
        index_mod,
        "probe_video",
        lambda p: {"frames": 0, "height": 0, "width": 0, "fps": 0.0, "error": denied},
    )
    assert index_videos(root, progress=False)[0].error == denied
    index_file = root / index_mod.INDEX_FILENAME
    assert "A/v_A_g01_c01.mp4" not in json.loads(index_file.read_text())["videos"]
    monkeypatch.setattr(index_mod, "probe_video", real_probe)  # readable again (permissions fixed)
    assert index_videos(root, progress=False)[0].frames == 12
    # such an entry in an index written by an older version is not trusted either
    doc = json.loads(index_file.read_text())
    doc["videos"]["A/v_A_g01_c01.mp4"].update(frames=0, error=denied)
    index_file.write_text(json.dumps(doc))
    assert index_videos(root, progress=False)[0].frames == 12


def test_probing_reports_an_unreadable_file_as_not_opened(tmp_path, monkeypatch):
    path = write_video(tmp_path / "v.mp4")

    def no_access(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(index_mod, "open", no_access, raising=False)
    assert index_mod.probe_video(path)["error"].startswith("cannot open: PermissionError")


# --------------------------------------------------------------------------- split lists
def test_split_list_names_may_hold_spaces(tmp_path):
    (tmp_path / "trainlist01.txt").write_text(
        "My Class/v_My Class_g01_c01.avi 1\n"
        "My Class/clip two.mp4\t2\r\n"
        "Walk/v_Walk_g01_c01.avi 3\n"
        "# a comment\n"
        "\n"
    )
    (tmp_path / "testlist01.txt").write_text("My Class/clip 3.avi\nWalk/v_Walk_g02_c01.avi\n")
    assert read_ucf_split(tmp_path, 1, True) == {"v_my class_g01_c01", "clip two", "v_walk_g01_c01"}
    assert read_ucf_split(tmp_path, 1, False) == {"clip 3", "v_walk_g02_c01"}
    paths = ["My Class/v_My Class_g01_c01.mp4", "My Class/clip two.mp4", "My Class/clip 3.mp4", "My/clip.mp4"]
    assert listed_side(tmp_path / "testlist01.txt", 1, False, paths, "data") == [False, False, True, False]


# --------------------------------------------------------------------------- empty data path
def test_an_empty_data_path_is_an_error_not_the_current_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_video(tmp_path / "A" / "v_A_g01_c01.mp4")
    for call in (data_source.kind, data_source.resolve, data_source.check_exists):
        with pytest.raises(ConfigError, match="`data` is an empty path"):
            call("")
    rc = tr.main(["--model", "autoencoder", "--preset", "tiny", "--data", "", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines() == [
        "error: --data is an empty path; give a data folder ('.' for the current one)"
    ]
    assert not (tmp_path / index_mod.INDEX_FILENAME).exists()  # the current folder was not indexed
    from pyframepred.evaluation import heldout_clips

    with pytest.raises(ConfigError, match="empty path"):
        heldout_clips({"data": str(tmp_path)}, "", 5)
    with pytest.raises(ConfigError, match="the video path is empty"):
        read_clip("", 2, 1, 0, None)


# --------------------------------------------------------------------------- unusable cache folder
def test_an_unusable_cache_folder_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PYFRAMEPRED_CACHE", str(blocker / "cache"))
    with pytest.raises(ConfigError, match=r"cache folder '.*a-file/cache'.*PYFRAMEPRED_CACHE"):
        synthetic.default_dataset_root(progress=False)
    with pytest.raises(ConfigError, match="`cache_dir`"):
        synthetic.default_dataset_root(blocker, progress=False)
    rc = tr.main(
        ["--model", "autoencoder", "--preset", "tiny", "--out", str(tmp_path / "o"), "--no-progress"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        rc == 2 and len(err) == 1 and err[0].startswith("error: cannot create the default synthetic data set")
    )
    assert "PYFRAMEPRED_CACHE" in err[0] and blocker.read_text() == "not a folder"


def test_video_clips_of_an_empty_path_is_an_error_not_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="empty path"):
        VideoClips("")
    assert list(tmp_path.iterdir()) == []  # nothing indexed or written here


# --------------------------------------------------------------------------- VideoClips arguments
@pytest.mark.parametrize("size", ["32", (32.9, 40), True, "ab", (16, "8")])
def test_a_size_that_is_not_integers_is_refused(tmp_path, size):
    # "32" became the pair ("3", "2") -> 3x2 frames, 32.9 was cut to 32, True gave 1x1 frames
    write_video(tmp_path / "A" / "v_A_g01_c01.mp4")
    with pytest.raises(ValueError, match="size must be an int or a \\(height, width\\) pair of ints"):
        VideoClips(tmp_path, frames=3, size=size, test_fraction=0, train=False, progress=False)


def test_numpy_and_tensor_integer_sizes_are_the_short_side_as_an_int_is(tmp_path):
    import torch

    write_video(tmp_path / "A" / "v_A_g01_c01.mp4", size=40)
    kw = dict(frames=3, test_fraction=0, train=False, progress=False)
    expected = VideoClips(tmp_path, size=16, **kw)[0]
    for size in (np.int64(16), torch.tensor(16)):
        clips = VideoClips(tmp_path, size=size, **kw)
        assert clips.short_side and clips.size == (16, 16)
        assert np.array_equal(clips[0].numpy(), expected.numpy())
    assert VideoClips(tmp_path, size=(np.int32(16), 24), **kw)[0].shape[-2:] == (16, 24)


@pytest.mark.parametrize("name", ["frames", "interval", "clips_per_video"])
@pytest.mark.parametrize("value", [None, "4", 2.5, True])
def test_clip_counts_that_are_not_whole_numbers_are_one_line_errors(tmp_path, name, value):
    with pytest.raises(ValueError, match=f"{name} must be a (positive|non-negative) integer, got"):
        VideoClips(tmp_path, **{name: value}, progress=False)
