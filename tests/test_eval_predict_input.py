"""evaluate and predict on inputs that do not fit the usual path: seeds out of range, data whose
colour channels differ from the model's, test sets of clips of several sizes, frame rates a GIF
or an MP4 cannot play, and Ctrl-C -- a result or one error line, never a traceback."""

import gzip
import json
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image

from pyframepred import io
from pyframepred.cli import evaluate as ev
from pyframepred.cli import predict as pr
from pyframepred.cli import train as tr
from pyframepred.cli.common import EXIT_INTERRUPTED
from pyframepred.errors import ConfigError
from pyframepred.evaluation import evaluate_model


@pytest.fixture(scope="module")
def colour_ckpt(data, tmp_path_factory):
    """A tiny colour (3-channel) autoencoder."""
    out = tmp_path_factory.mktemp("colour") / "run"
    assert tr.main(["--model", "autoencoder", "--data", str(data), "--out", str(out)] + TINY) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def grey_ckpt(tmp_path_factory):
    """A tiny grey (1-channel) autoencoder, trained on Moving MNIST of made-up digits."""
    folder = tmp_path_factory.mktemp("grey")
    rng = np.random.default_rng(0)
    digits = (rng.random((20, 28, 28)) * 255).astype(np.uint8)
    idx = folder / "digits-idx3-ubyte.gz"
    header = (0x803).to_bytes(4, "big") + b"".join(int(v).to_bytes(4, "big") for v in digits.shape)
    with gzip.open(idx, "wb") as f:
        f.write(header + digits.tobytes())
    out = folder / "run"
    argv = ["--model", "autoencoder", "--data", "moving-mnist", "--mnist", str(idx), "--out", str(out)]
    assert tr.main(argv + TINY) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def video(data):
    return sorted(Path(data).rglob("*.mp4"))[0]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"step \d+/\d+: loss ", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def paper_layout(root: Path, sizes, seed=0) -> Path:
    """Mathieu et al.'s test-set layout: a folder per clip, 4 inputs, 2 targets, 2 flow images."""
    rng = np.random.default_rng(seed)
    for n, (h, w) in enumerate(sizes, 1):
        clip = root / str(n)
        clip.mkdir(parents=True)
        for i in range(6):
            name = f"pred_{i + 1}.png" if i < 4 else f"target_{i - 3}.png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(clip / name)
        flow = np.full((h, w, 3), 255, np.uint8)
        flow[4:12, 8:24] = (255, 0, 0)  # moving where it is red
        for name in ("pred_4_flow.png", "target_1_flow.png"):
            Image.fromarray(flow).save(clip / name)
    return root


class CopyLast(torch.nn.Module):
    """Predicts the last input frame; records the input shapes it was given."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def rollout(self, x, steps):
        self.seen.append(tuple(x.shape))
        return x[:, -1:].expand(-1, steps, -1, -1, -1)


# ----------------------------------------------------------------------------- --seed
@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_evaluate_refuses_a_seed_out_of_range(colour_ckpt, data, tmp_path, capsys, seed):
    out = tmp_path / "eval.json"
    argv = [str(colour_ckpt), "--data", str(data), "--clips", "2", "--seed", seed, "--out", str(out)]
    assert ev.main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--seed" in line and "[0, 4294967295]" in line and seed in line
    assert not out.exists()


# ----------------------------------------------------------------------------- channels
@pytest.mark.parametrize("name", ["last.pt", "best.pt", "scores.txt", "config.json", "history.json"])
def test_evaluate_refuses_an_out_that_is_not_its_json(colour_ckpt, name, capsys):
    # a mistyped --out must not replace a checkpoint or the run's own files with the scores
    run = colour_ckpt.parent
    target = run / name
    before = target.read_bytes() if target.exists() else None
    assert ev.main([str(run / "best.pt"), "--clips", "2", "--out", str(target)]) == 2
    message = one_error_line(capsys.readouterr().err)
    assert (
        "must be a .json file" if name.endswith((".pt", ".txt")) else f"is the {name} of the run"
    ) in message
    assert (target.read_bytes() if target.exists() else None) == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--steps", "100000000"], "predicted frames of 32x32 would take"),
        (["--steps", str(10**20)], "more than any memory"),
        (["--scale", "1000000"], "the output at --scale 1000000"),
    ],
)
def test_predict_refuses_sizes_no_memory_holds_in_one_line(
    colour_ckpt, video, tmp_path, capsys, extra, message
):
    # refused before anything is allocated (these hung, or ended in a numpy/torch traceback)
    out = tmp_path / "p.gif"
    assert pr.main([str(colour_ckpt), str(video), "--size", "32", "--out", str(out)] + extra) == 2
    line = one_error_line(capsys.readouterr().err)
    assert message in line and "more than half this machine's memory" in line
    assert not out.exists()


def test_evaluate_refuses_clips_longer_than_every_video_in_one_line(colour_ckpt, data, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert ev.main([str(colour_ckpt), "--data", str(data), "--steps", "100000000", "--out", str(out)]) == 2
    assert "too short" in one_error_line(capsys.readouterr().err) and not out.exists()


def test_evaluate_refuses_a_moving_mnist_test_file_for_video_clips(colour_ckpt, data, tmp_path, capsys):
    # it was ignored: the scores of other clips than the user asked for
    out = tmp_path / "e.json"
    argv = [str(colour_ckpt), "--data", str(data), "--mnist-test", str(tmp_path / "x.npy"), "--out", str(out)]
    assert ev.main(argv) == 2
    assert "--mnist-test applies to Moving MNIST clips" in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_predict_on_a_truncated_video_is_one_clean_line(colour_ckpt, video, tmp_path, capfd):
    # the header is read as indexing reads it: no FFmpeg or decord lines around the error
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(Path(video).read_bytes()[:3000])
    assert pr.main([str(colour_ckpt), str(cut), "--out", str(tmp_path / "p.gif")]) == 2
    err = capfd.readouterr().err
    assert (
        one_error_line(err)
        == f"error: cannot read video '{cut}': not a video: Invalid data found when processing input"
    )


def test_colour_model_on_moving_mnist_gets_the_grey_channel_repeated(colour_ckpt, tmp_path, capsys):
    seqs = np.random.default_rng(1).integers(0, 256, (20, 3, 64, 64), dtype=np.uint8)  # (T, N, H, W)
    np.save(tmp_path / "test.npy", seqs)
    out = tmp_path / "eval.json"
    argv = [str(colour_ckpt), "--data", "moving-mnist", "--mnist-test", str(tmp_path / "test.npy")]
    assert ev.main(argv + ["--steps", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["clips"] == 3 and res["data"] == "moving-mnist"
    # the baseline's score: the grey frames as RGB score as the grey frames themselves
    from pyframepred.data.moving_mnist import MovingMNIST

    grey = MovingMNIST(6, sequences=seqs.transpose(1, 0, 2, 3))

    ref = evaluate_model(CopyLast(), grey, 4, 2)
    assert res["baseline_mean"]["psnr"] == pytest.approx(ref["baseline_mean"]["psnr"])


def test_grey_model_on_the_paper_layout_gets_grey_frames(grey_ckpt, tmp_path, capsys):
    ucf = paper_layout(tmp_path / "ucf", [(32, 48), (32, 48)])
    out = tmp_path / "paper.json"
    assert ev.main([str(grey_ckpt), "--protocol", "mathieu", "--data", str(ucf), "--out", str(out)]) == 0, (
        capsys.readouterr().err
    )
    res = json.loads(out.read_text())
    assert res["clips"] == 2 and res["moving_pixels"] == "the authors' flow images"
    assert res["model_counted"] == [2, 2]


# ----------------------------------------------------------------------------- clip sizes
def test_mathieu_protocol_on_clips_of_several_sizes(colour_ckpt, tmp_path, capsys):
    sizes = [(32, 48), (32, 48), (48, 64), (32, 48)]
    ucf = paper_layout(tmp_path / "ucf", sizes)
    out = tmp_path / "paper.json"
    argv = [str(colour_ckpt), "--protocol", "mathieu", "--data", str(ucf), "--out", str(out)]
    assert ev.main(argv) == 0, capsys.readouterr().err
    batched = json.loads(out.read_text())
    assert batched["clips"] == 4
    assert ev.main(argv + ["--batch-size", "1"]) == 0
    one_by_one = json.loads(out.read_text())
    # batches of one size give the scores of clip-by-clip
    assert batched["moving_share"] == pytest.approx(one_by_one["moving_share"])
    for who in ("model", "baseline"):
        assert batched[f"{who}_counted"] == one_by_one[f"{who}_counted"]
        for name, values in batched[who].items():
            assert values == pytest.approx(one_by_one[who][name], rel=1e-5)


def test_evaluate_model_batches_clips_of_one_size_together():
    sizes = [(8, 8), (8, 8), (8, 16), (8, 8), (8, 8), (8, 8)]
    clips = [torch.rand(3, 1, h, w) * 2 - 1 for h, w in sizes]
    model = CopyLast()
    res = evaluate_model(model, clips, 2, 1, batch_size=2)
    seen = model.seen
    assert res["clips"] == 6
    assert [s[0] for s in seen] == [2, 1, 2, 1] and [s[-1] for s in seen] == [8, 16, 8, 8]


# ----------------------------------------------------------------------------- --fps
def gif_delays(path) -> list:
    with Image.open(path) as im:
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(im.info["duration"])
    return out


def frames(n=3, size=8):
    return np.stack([np.full((size, size, 3), 40 * i, np.uint8) for i in range(n)])


@pytest.mark.parametrize("fps", [1 / 1000, 0.0015, 51, 200])
def test_gif_refuses_rates_it_cannot_play(tmp_path, fps):
    with pytest.raises(ConfigError, match=r"GIF.*100/65535 .* to 50"):
        io.write_animation(frames(), tmp_path / "x.gif", fps=fps)
    assert not list(tmp_path.iterdir())


def test_gif_plays_its_extreme_rates(tmp_path):
    io.write_animation(frames(), tmp_path / "slow.gif", fps=100 / 65535)
    assert gif_delays(tmp_path / "slow.gif") == [655350] * 3
    io.write_animation(frames(), tmp_path / "fast.gif", fps=50)
    assert gif_delays(tmp_path / "fast.gif") == [20] * 3
    io.write_animation(frames(), tmp_path / "six.gif", fps=6)
    assert gif_delays(tmp_path / "six.gif") == [170] * 3  # the nearest delay to 1/6 s


def test_gif_refuses_identical_frames_held_longer_than_a_gif_frame_lasts(tmp_path):
    still = frames(1).repeat(2, 0)  # the GIF writer stores them as one frame of twice the delay
    with pytest.raises(ConfigError, match="655.35 s"):
        io.write_animation(still, tmp_path / "x.gif", fps=0.002)
    assert not list(tmp_path.iterdir())
    io.write_animation(still, tmp_path / "x.gif", fps=0.004)  # 2 x 250 s fits
    assert sum(gif_delays(tmp_path / "x.gif")) == 500000


def test_mp4_plays_at_exactly_the_rate(tmp_path):
    for fps in (1 / 2500, 1 / 3600, 30000 / 1001, 1000):
        io.write_animation(frames(4, 16), tmp_path / "x.mp4", fps=fps)
        with av.open(str(tmp_path / "x.mp4")) as c:
            times = [f.time for f in c.decode(video=0)]
        assert len(times) == 4
        assert np.diff(times) == pytest.approx([1 / fps] * 3, rel=1e-6), fps


@pytest.mark.parametrize("fps", [1 / 4000, 1001])
def test_mp4_refuses_rates_outside_its_range(tmp_path, fps):
    with pytest.raises(ConfigError, match=r"1/3600 .* to 1000"):
        io.write_animation(frames(), tmp_path / "x.mp4", fps=fps)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("fps", "out"), [("1/1000", "x.gif"), ("200", "x.gif"), ("1/4000", "x.mp4")])
def test_predict_names_the_supported_rates_in_one_line(colour_ckpt, video, tmp_path, capsys, fps, out):
    rc = pr.main([str(colour_ckpt), str(video), "--fps", fps, "--out", str(tmp_path / out)])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--fps" in line and ("to 50" if out.endswith(".gif") else "to 1000") in line
    assert not (tmp_path / out).exists()


def test_predict_writes_a_slow_mp4_at_its_rate(colour_ckpt, video, tmp_path, capsys):
    out = tmp_path / "x.mp4"
    argv = [
        str(colour_ckpt),
        str(video),
        "--steps",
        "1",
        "--size",
        "32",
        "--fps",
        "1/2500",
        "--out",
        str(out),
    ]
    assert pr.main(argv) == 0, capsys.readouterr().err
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(1, 2500)


# ----------------------------------------------------------------------------- Ctrl-C
def interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def run_main(main, argv):
    try:
        return main(argv)
    except KeyboardInterrupt:  # (not raised on: it would stop the whole test session)
        pytest.fail("KeyboardInterrupt escaped main()")


def test_ctrl_c_during_evaluate_is_one_line_and_keeps_the_old_json(
    colour_ckpt, data, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "eval.json"
    out.write_text('{"old": 1}')
    monkeypatch.setattr(ev, "evaluate_model", interrupt)
    argv = [str(colour_ckpt), "--data", str(data), "--clips", "2", "--out", str(out)]
    assert run_main(ev.main, argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.strip() == "interrupted; nothing written" and "Traceback" not in err
    assert out.read_text() == '{"old": 1}' and [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_ctrl_c_during_predict_is_one_line_and_keeps_the_old_output(
    colour_ckpt, video, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "p.gif"
    out.write_bytes(b"old")
    monkeypatch.setattr(pr, "rollout", interrupt)
    argv = [str(colour_ckpt), str(video), "--size", "32", "--out", str(out)]
    assert run_main(pr.main, argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.strip() == "interrupted; nothing written" and "Traceback" not in err
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["p.gif"]


def test_a_relative_output_path_with_a_colon_is_written(tmp_path, monkeypatch):
    """FFmpeg reads a relative 'a:b.mp4' as a URL of the protocol 'a'; the file is written."""
    from pyframepred.data import FrameReader
    from pyframepred.io import encode_video

    monkeypatch.chdir(tmp_path)
    encode_video("a:b.mp4", np.full((3, 8, 8, 3), 128, np.uint8), 10)
    assert (tmp_path / "a:b.mp4").stat().st_size > 0
    assert len(FrameReader(str(tmp_path / "a:b.mp4"))) == 3
