"""Training, evaluation and prediction: library and command lines, on a tiny synthetic data set."""

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from pyframepred.cli import evaluate as ev
from pyframepred.cli import predict as pr
from pyframepred.cli import train as tr
from pyframepred.data import synthetic
from pyframepred.errors import ConfigError
from pyframepred.io import encode_video
from pyframepred.training import StepHook, TrainConfig, Trainer
from pyframepred.training.cpu_threads import usable_cores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads_independent_of_load(monkeypatch):
    """Runs of one test are compared bit for bit, and CPU kernels sum in an order that depends on
    the thread count; the default count follows the machine's load when a run starts
    (cpu_threads.py), which another process can change between two runs of one test. Here the
    default is fixed; tests of the default itself set their own."""
    import pyframepred.training.loop as loop

    n = min(2, usable_cores())
    monkeypatch.setattr(loop, "default_threads", lambda: (n, f"{n} cores (fixed by the tests)"))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny(model, data, out, **kw):
    args = dict(model=model, data=str(data), out=str(out), preset="tiny", progress=False)
    args.update(kw)
    return TrainConfig(**args)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("model", ["seq2seq", "autoencoder", "multiscale"])
def test_train_cli_writes_outputs(model, data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = tr.main(
        ["--model", model, "--data", str(data), "--preset", "tiny", "--out", str(out), "--no-progress"]
    )
    assert rc == 0
    for name in ("last.pt", "best.pt", "history.json", "loss.png", "config.json", "samples/final.gif"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))  # no temp files left behind
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 4 and ckpt["config"]["model"] == model
    hist = json.loads((out / "history.json").read_text())
    assert [v["step"] for v in hist["val"]] == [2, 4]
    err = capsys.readouterr().err
    assert "copy-last" in err
    # Without a progress bar (a log file, a batch job) the loss is printed every `log_every`
    # steps (10: beyond this run's 4) and at the last one.
    loss_lines = [ln for ln in err.splitlines() if ln.startswith("step 4/4: loss ")]
    assert len(loss_lines) == 1 and loss_lines[0].endswith(" clips/s"), err
    assert math.isfinite(float(loss_lines[0].split("loss ")[1].split(",")[0]))


def test_paths_starting_with_a_tilde_are_the_home_folder(data, tmp_path, monkeypatch, capsys):
    """`~` in a path the shell does not expand (`--out=~/x`, a config file's `data = "~/v"`)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copytree(data, tmp_path / "videos")
    (tmp_path / "cfg.toml").write_text('data = "~/videos"\n')
    argv = ["--model", "autoencoder", "--config", str(tmp_path / "cfg.toml"), "--out=~/runs/x"]
    assert tr.main(argv + ["--preset", "tiny", "--no-progress", "--steps", "2"]) == 0
    assert (tmp_path / "runs" / "x" / "last.pt").is_file()
    assert tr.main(["--resume=~/runs/x/last.pt", "--steps", "3", "--no-progress"]) == 0
    video = sorted((tmp_path / "videos").rglob("*.mp4"))[0].relative_to(tmp_path)
    assert pr.main(["~/runs/x/last.pt", f"~/{video}", "--out=~/pred.gif"]) == 0
    assert ev.main(["~/runs/x/last.pt", "--out=~/eval.json"]) == 0
    assert (tmp_path / "pred.gif").is_file() and (tmp_path / "eval.json").is_file()
    assert not (Path.cwd() / "~").exists()


def test_fps_resamples_training_validation_and_prediction(data, tmp_path, capsys):
    """--fps: every video's frames taken at that rate (the synthetic videos are 25 fps: 12.5
    takes every other frame), recorded in the checkpoint, used by evaluate and predict."""
    out = tmp_path / "run"
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--fps", "12.5"]
    assert tr.main(argv + ["--preset", "tiny", "--no-progress", "--steps", "2"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["config"]["fps"] == 12.5
    t = Trainer(tiny("autoencoder", data, tmp_path / "more", fps=12.5, steps=3), resume=out / "last.pt")
    assert t.val_ds.dataset.frame_indices(0, 0)[:3] == [0, 2, 4]
    t.close()
    assert ev.main([str(out / "last.pt"), "--steps", "2", "--out", str(tmp_path / "e.json")]) == 0
    video = sorted(Path(data).rglob("*.mp4"))[0]
    assert pr.main([str(out / "last.pt"), str(video), "--steps", "2", "--out", str(tmp_path / "p.gif")]) == 0
    with pytest.raises(ConfigError, match="`fps` must be a positive number"):
        tiny("autoencoder", data, out, fps=0.0).resolved()


def test_tensorboard_logging(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny("autoencoder", data, out, steps=4, val_every=2, log_every=1, tensorboard=True)
    Trainer(cfg).fit()
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/clips_per_s"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert any(t.startswith("val/") for t in tags), tags


@pytest.mark.parametrize("model", ["seq2seq", "autoencoder", "multiscale"])
def test_resume_gives_same_continuation(model, data, tmp_path):
    straight = Trainer(tiny(model, data, tmp_path / "a", steps=4, val_every=2))
    straight.fit()
    first = Trainer(tiny(model, data, tmp_path / "b", steps=4, val_every=2))

    def stop_at_2(trainer, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: save and stop

    first.callbacks.append(StepHook(stop_at_2))
    res = first.fit()
    assert res["status"] == "interrupted" and res["step"] == 2
    resumed = Trainer(
        tiny(model, data, tmp_path / "b", steps=4, val_every=2), resume=tmp_path / "b" / "last.pt"
    )
    assert resumed.step == 2
    resumed.fit()
    a, b = params(straight.model), params(resumed.model)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if model == "multiscale":
        a, b = params(straight.disc), params(resumed.disc)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert straight.opt.state_dict()["state"].keys() == resumed.opt.state_dict()["state"].keys()
    assert straight.sched.last_epoch == resumed.sched.last_epoch == 4


def test_ctrl_c_cli_saves_and_exits_130(data, tmp_path, monkeypatch, capsys):
    orig = Trainer.train_step

    def step(self, clips):
        out = orig(self, clips)
        if self.step == 2:  # the 3rd step: interrupt mid-run
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step)
    out = tmp_path / "run"
    # Python's default_int_handler, or SIG_IGN when the tests were started in the background
    # by a shell without job control: the run must give back whichever it found.
    before = signal.getsignal(signal.SIGINT)
    rc = tr.main(
        [
            "--model",
            "autoencoder",
            "--data",
            str(data),
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--steps",
            "10",
            "--val-every",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 130
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 3
    assert "--resume" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    rc = tr.main(
        [
            "--model",
            "autoencoder",
            "--data",
            str(data),
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--steps",
            "4",
            "--val-every",
            "0",
            "--no-progress",
            "--resume",
        ]
    )
    assert rc == 0
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 4


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    orig = Trainer.train_step

    def step(self, clips):
        if self.step == 2:  # after the checkpoint of step 2
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return orig(self, clips)

    monkeypatch.setattr(Trainer, "train_step", step)
    # (autoencoder: the fused ConvLSTM CPU kernel turns NaN gate inputs into 0, see the report)
    rc = tr.main(
        [
            "--model",
            "autoencoder",
            "--data",
            str(data),
            "--preset",
            "tiny",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 3
    err = capsys.readouterr().err
    assert "nan" in err.lower() and "step 3" in err and "last.pt" in err, err
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_reference_ops_and_config_file(data, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "model": "seq2seq",
                "preset": "tiny",
                "data": str(data),
                "steps": 3,
                "fused": False,
                "lambda_gdl": 0.5,
                "teacher_forcing": True,
                "frame_loss": "mean",
            }
        )
    )
    c, resume = tr.config_from_args(["--config", str(cfg), "--steps", "2", "--out", str(tmp_path / "o")])
    assert (c.steps, c.fused, c.lambda_gdl, c.teacher_forcing, c.frame_loss, resume) == (
        2,
        False,
        0.5,
        True,
        "mean",
        None,
    )
    t = Trainer(c)
    assert not t.model.fused and t.model.teacher_forcing
    assert t.fit()["status"] == "done"
    toml = tmp_path / "cfg.toml"
    toml.write_text('model = "multiscale"\nlambda_adv = 0.2\nalpha = 2.0\n')
    c, _ = tr.config_from_args(["--config", str(toml), "--data", str(data)])
    assert c.model == "multiscale" and c.lambda_adv == 0.2 and c.alpha == 2.0


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--model is required"),
        (["--model", "autoencoder", "--data", "/nonexistent/videos"], "does not exist"),
        (["--model", "autoencoder", "--steps", "0"], "--steps must be >= 1"),
        (["--model", "autoencoder", "--lr", "-1"], "--lr must be a positive number, got -1.0"),
        (["--model", "autoencoder", "--lr-d", "nan"], "--lr-d must be a positive number, got nan"),
        (["--model", "autoencoder", "--device", "tpu"], "--device"),
        (["--model", "autoencoder", "--config", "/nonexistent.json"], "does not exist"),
    ],
)
def test_train_cli_errors(argv, message, capsys, tmp_path, data):
    if "--data" not in argv and argv:
        argv = argv + ["--data", str(data)]
    rc = tr.main(argv + ["--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_train_cli_bad_choices():
    with pytest.raises(SystemExit) as e:
        tr.main(["--model", "transformer"])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        tr.main(["--model", "seq2seq", "--amp", "fp8"])


def test_empty_data_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = tr.main(["--model", "seq2seq", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no video files" in capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    assert (
        tr.main(
            [
                "--model",
                "autoencoder",
                "--data",
                str(data),
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    return out / "last.pt"


def test_evaluate_cli(checkpoint, data, tmp_path, capsys):
    out = tmp_path / "eval.json"
    rc = ev.main([str(checkpoint), "--data", str(data), "--steps", "3", "--clips", "4", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["steps"] == 3 and res["clips"] == 4
    for who in ("model", "baseline"):
        assert set(res[who]) == {"psnr", "ssim", "sharpness", "l2", "gdl", "mse", "mae"}
        assert all(len(v) == 3 for v in res[who].values())
    # copy-last gets worse with every step
    assert res["baseline"]["psnr"][0] > res["baseline"]["psnr"][2]
    assert "copy-last" in capsys.readouterr().out
    ev.main(
        [
            str(checkpoint),
            "--data",
            str(data),
            "--steps",
            "3",
            "--clips",
            "4",
            "--out",
            str(tmp_path / "again.json"),
        ]
    )
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["model"] == res["model"]  # fixed, reproducible clips


def test_evaluate_cli_errors(checkpoint, tmp_path, capsys):
    assert ev.main([str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert ev.main([str(bad)]) == 2
    assert ev.main([str(checkpoint), "--steps", "0"]) == 2
    assert ev.main([str(checkpoint), "--data", str(tmp_path / "nope")]) == 2


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_predict_cli(checkpoint, data, tmp_path, suffix, capsys):
    video = sorted(Path(data).rglob("*.mp4"))[0]
    out = tmp_path / f"pred{suffix}"
    assert pr.main([str(checkpoint), str(video), "--steps", "3", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
    text = capsys.readouterr().out
    assert "step 3: PSNR" in text
    if suffix == ".gif":
        from PIL import Image

        with Image.open(out) as im:
            assert im.n_frames == 7 and im.size[0] > 1.8 * im.size[1]  # side by side
    else:
        import decord

        assert len(decord.VideoReader(str(out))) == 7


def test_predict_other_size_and_errors(checkpoint, data, tmp_path, capsys):
    video = sorted(Path(data).rglob("*.mp4"))[0]
    assert (
        pr.main(
            [
                str(checkpoint),
                str(video),
                "--steps",
                "2",
                "--size",
                "48",
                "80",
                "--out",
                str(tmp_path / "p.gif"),
            ]
        )
        == 0
    )
    assert "48x80" in capsys.readouterr().out
    assert pr.main([str(checkpoint), str(tmp_path / "no.mp4"), "--out", str(tmp_path / "x.gif")]) == 2
    assert pr.main([str(checkpoint), str(video), "--out", str(tmp_path / "x.png")]) == 2
    assert pr.main([str(checkpoint), str(video), "--steps", "0"]) == 2
    assert pr.main([str(checkpoint), str(video), "--start", "100000", "--out", str(tmp_path / "x.gif")]) == 2


def test_predict_keeps_the_video_aspect_ratio(checkpoint, tmp_path, capsys):
    # A 2:1 video and a checkpoint trained at size 64: the short side becomes 64, the output
    # keeps the video's shape instead of squashing it to 64x64.
    rng = np.random.default_rng(0)
    frames = np.repeat(rng.integers(0, 256, (1, 48, 96, 3), dtype=np.uint8), 12, axis=0)
    video = tmp_path / "wide.mp4"
    encode_video(video, frames, 25)
    assert pr.main([str(checkpoint), str(video), "--steps", "2", "--out", str(tmp_path / "p.gif")]) == 0
    assert "64x128 frames" in capsys.readouterr().out
    assert (
        pr.main(
            [str(checkpoint), str(video), "--steps", "2", "--size", "32", "--out", str(tmp_path / "q.gif")]
        )
        == 0
    )
    assert "32x64 frames" in capsys.readouterr().out


def test_predict_says_which_steps_the_video_cannot_score(checkpoint, tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    video = tmp_path / "five.mp4"
    encode_video(video, frames, 25)  # the tiny autoencoder takes 4 frames: 1 left to compare
    assert (
        pr.main(
            [str(checkpoint), str(video), "--steps", "4", "--start", "0", "--out", str(tmp_path / "p.gif")]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 1: PSNR ") and lines[1] == (
        "step 2-4: no score, the video has no frame there (its expected frames are grey)"
    )
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    assert pr.main([str(checkpoint), str(fifo), "--out", str(tmp_path / "q.gif")]) == 2
    assert "video '" + str(fifo) + "' is not a regular file" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo(data, tmp_path):
    # The data with one corrupt file: every rank indexes it alike, rank 0 alone warns of it.
    shutil.copytree(data, tmp_path / "videos")
    data = tmp_path / "videos"
    (next(p for p in sorted(data.iterdir()) if p.is_dir()) / "corrupt.mp4").write_bytes(b"not a video")
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "pyframepred.train",
        "--model",
        "multiscale",
        "--data",
        str(data),
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4
    assert proc.stderr.count("training multiscale") == 1  # only rank 0 logs
    assert proc.stderr.count("warning: VideoClips: skipped 1 of") == 1, proc.stderr[-3000:]
    assert "4 steps of 2 x 2 clips" in proc.stderr


_CRASH_ON_RANK_1 = """
import os, sys
import pyframepred.training.loop as loop
step = loop.Trainer.train_step
def failing_step(self, clips):
    if int(os.environ["RANK"]) == 1 and self.step == 2:
        raise RuntimeError("simulated failure of rank 1")
    return step(self, clips)
loop.Trainer.train_step = failing_step
from pyframepred.cli.train import main
sys.exit(main())
"""


def test_ddp_a_failed_process_gives_the_others_one_line(data, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_ON_RANK_1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
    cmd += ["127.0.0.1", "--master_port", str(_free_port()), str(script), "--model", "seq2seq"]
    cmd += ["--data", str(data), "--preset", "tiny", "--out", str(tmp_path / "run"), "--device", "cpu"]
    proc = subprocess.run(
        cmd + ["--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode != 0
    assert "RuntimeError: simulated failure of rank 1" in proc.stderr  # the failed one's own error
    line = "error: another process of this 2-process run stopped (its output says why)"
    assert proc.stderr.count(line) == 1, proc.stderr[-3000:]
    assert "[rank0]: Traceback" not in proc.stderr and "[rank0]:" not in proc.stderr
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 2  # kept


def test_a_broken_collective_is_exit_6_and_an_own_error_keeps_its_traceback(
    data, tmp_path, monkeypatch, capsys
):
    # What each process of a torchrun run does when a collective breaks: gloo's message for a
    # peer that went away gives one line and exit 6; any other error is raised as it is.
    from pyframepred.cli.common import EXIT_PEER_FAILED

    errors = iter(
        [
            RuntimeError("[pair.cc:553] Connection closed by peer [127.0.0.1]:32992"),
            RuntimeError("NCCL error: unhandled cuda error (run out of memory)"),
        ]
    )

    class Distributed(Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.distributed, self.world = True, 2

        def fit(self):
            raise next(errors)

    monkeypatch.setattr(tr, "Trainer", Distributed)
    argv = ["--model", "autoencoder", "--data", str(data), "--preset", "tiny", "--no-progress", "--overwrite"]
    argv += ["--out", str(tmp_path / "run")]
    assert tr.main(argv) == EXIT_PEER_FAILED == 6
    err = capsys.readouterr().err
    assert "error: another process of this 2-process run stopped" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="NCCL error"):
        tr.main(argv)


def _mean_over_two_ranks(rank, port, out_dir):
    import torch.distributed as dist

    from pyframepred.training.distributed import all_ranks_mean

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mean = all_ranks_mean({"loss": rank + 1.0, "l2": 10.0 * rank}, torch.device("cpu"))
        (Path(out_dir) / f"{rank}.json").write_text(json.dumps(mean))
    finally:
        dist.destroy_process_group()


def test_the_reported_loss_is_the_mean_over_the_ranks(tmp_path):
    # Under torchrun each rank computes the loss of its share of the batch; the history, the
    # progress bar and the loss plot get their mean, not rank 0's.
    torch.multiprocessing.spawn(_mean_over_two_ranks, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == {"loss": 1.5, "l2": 5.0}
    from pyframepred.training.distributed import all_ranks_mean

    assert all_ranks_mean({"loss": 0.25}, torch.device("cpu")) == {"loss": 0.25}  # outside DDP


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_cpu(amp, data, tmp_path):
    t = Trainer(tiny("seq2seq", data, tmp_path, steps=2, val_every=0, amp=amp))
    res = t.fit()
    assert res["status"] == "done"
    assert all(math.isfinite(r["loss"]) for r in t.history["train"])
    assert t.scaler.is_enabled() == (amp == "fp16")


def test_amp_bf16_tracks_float32(data, tmp_path):
    """The seq2seq model runs its ConvLSTM under autocast (bf16 convolutions, float32 cell state):
    a 30-step run from the same seed and data order tracks the float32 run. Stated tolerance:
    every step's loss within 10% of the float32 one, the mean of the last ten within 3% (seen:
    at most 4% at any step, 1% over the last steps)."""
    losses = {}
    for amp in ("none", "bf16"):
        t = Trainer(tiny("seq2seq", data, tmp_path / amp, steps=30, val_every=0, amp=amp))
        assert t.fit()["status"] == "done"
        losses[amp] = torch.tensor([r["loss"] for r in t.history["train"]], dtype=torch.float64)
    f32, bf16 = losses["none"], losses["bf16"]
    assert len(f32) == len(bf16) == 30
    rel = (bf16 - f32).abs() / f32
    assert rel.max() < 0.10, rel
    assert abs(bf16[-10:].mean() / f32[-10:].mean() - 1) < 0.03


# ----------------------------------------------------------------------------- resume settings
def _interrupted_run(data, out, monkeypatch, argv, stop_after=2):
    """A CLI run stopped by SIGINT after ``stop_after`` steps (exit 130)."""
    orig = Trainer.train_step

    def step(self, clips):
        res = orig(self, clips)
        if self.step == stop_after - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return res

    monkeypatch.setattr(Trainer, "train_step", step)
    rc = tr.main(argv + ["--data", str(data), "--out", str(out), "--no-progress"])
    monkeypatch.setattr(Trainer, "train_step", orig)
    assert rc == 130


def test_resume_takes_settings_from_checkpoint(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted_run(
        data,
        out,
        monkeypatch,
        ["--model", "seq2seq", "--preset", "tiny", "--steps", "5", "--val-every", "0", "--lr", "0.002"],
    )
    capsys.readouterr()
    # no --steps, --model, --preset, --out: all from the checkpoint (tiny alone would be 4 steps)
    assert tr.main(["--resume", str(out / "last.pt")]) == 0
    err = capsys.readouterr().err
    assert "5 steps" in err and "resumed at step 2" in err and "done: 5 steps" in err, err
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 5 and ckpt["config"]["lr"] == 0.002
    saved = json.loads((out / "config.json").read_text())
    assert saved["steps"] == 5 and saved["lr"] == 0.002 and saved["progress"] is False

    # finished: say so, exit 0, rewrite nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    assert tr.main(["--resume", str(out)]) == 0
    assert "already at step 5 of 5" in capsys.readouterr().err
    assert tr.main(["--resume", str(out), "--steps", "3"]) == 0
    assert "already at step 5" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == before

    # explicit options override: --steps extends the run, --lr changes the learning rate
    assert tr.main(["--resume", str(out / "last.pt"), "--steps", "6", "--lr", "0.001"]) == 0
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert ckpt["step"] == 6 and ckpt["config"]["steps"] == 6 and ckpt["config"]["lr"] == 0.001


def test_resume_keeps_the_frame_loss_a_checkpoint_was_trained_with(data, tmp_path):
    out = tmp_path / "run"
    Trainer(tiny("seq2seq", data, out, steps=2, val_every=0)).fit()
    cfg, _ = tr.config_from_args(["--resume", str(out / "last.pt")])
    assert cfg.frame_loss == "log"  # the model's default today, saved with the run
    # a checkpoint from before the setting existed was trained with per-pixel means
    ckpt = torch.load(out / "last.pt", weights_only=False)
    del ckpt["config"]["frame_loss"]
    torch.save(ckpt, out / "old.pt")
    cfg, _ = tr.config_from_args(["--resume", str(out / "old.pt")])
    assert cfg.frame_loss == "mean"
    cfg, _ = tr.config_from_args(["--resume", str(out / "old.pt"), "--frame-loss", "log"])
    assert cfg.frame_loss == "log"


def test_resume_of_a_run_from_before_weight_averaging_keeps_it_off(data, tmp_path, monkeypatch):
    from pyframepred.training.config import RUN_PRESETS

    monkeypatch.setitem(RUN_PRESETS["tiny"], "ema", 0.5)  # a preset that would turn it on
    out = tmp_path / "run"
    Trainer(tiny("seq2seq", data, out, steps=2, val_every=0, ema=0.0)).fit()
    cfg, _ = tr.config_from_args(["--resume", str(out / "last.pt")])
    assert cfg.ema == 0.0  # the run's own setting
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert "train_model" not in ckpt
    del ckpt["config"]["ema"]  # as a checkpoint from before the setting
    torch.save(ckpt, out / "old.pt")
    cfg, _ = tr.config_from_args(["--resume", str(out / "old.pt")])
    assert cfg.ema == 0.0
    cfg, _ = tr.config_from_args(["--resume", str(out / "old.pt"), "--ema", "0.9"])
    assert cfg.ema == 0.9  # given again: it starts from the resumed weights
    assert TrainConfig(model="seq2seq", data=str(data), preset="tiny").resolved().ema == 0.5
    assert TrainConfig(model="seq2seq", preset="quick").resolved().ema == 0.995


def test_bad_weight_average_in_a_checkpoint_is_a_one_line_error(data, tmp_path):
    from pyframepred.training.checkpoint import CheckpointError

    out = tmp_path / "run"
    Trainer(tiny("seq2seq", data, out, steps=2, val_every=0, ema=0.9)).fit()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    for name, bad in (("updates", -3), ("updates", "7"), ("weights", None)):
        broken = {**ckpt}
        if name == "updates":
            broken["averaged_updates"] = bad
        else:
            broken["model"] = {k: v[..., :1] if v.dim() else v for k, v in ckpt["model"].items()}
        with pytest.raises(CheckpointError) as e:
            Trainer(tiny("seq2seq", data, out, steps=3, ema=0.9), resume=out / "last.pt", checkpoint=broken)
        assert "\n" not in str(e.value) and ("update count" in str(e.value) or "does not fit" in str(e.value))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--preset", "quick"], '--preset is "tiny" in the checkpoint but "quick" was given'),
        (["--size", "32"], "--size is 64 in the checkpoint but 32 was given"),
        (["--in-frames", "3"], "--in-frames is 4 in the checkpoint but 3 was given"),
        (["--no-residual"], "--residual is true in the checkpoint but false was given"),
        (["--fps", "12.5"], "--fps is null in the checkpoint but 12.5 was given"),
        (["--model", "autoencoder"], "holds a seq2seq model, not an autoencoder model"),
    ],
)
def test_resume_with_other_model_settings_is_an_error(extra, message, data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted_run(data, out, monkeypatch, ["--model", "seq2seq", "--preset", "tiny", "--val-every", "0"])
    capsys.readouterr()
    before = (out / "last.pt").stat().st_mtime_ns
    assert tr.main(["--resume", str(out / "last.pt"), "--no-progress"] + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert (out / "last.pt").stat().st_mtime_ns == before


def test_resume_state_dict_mismatch_is_a_usage_error(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted_run(
        data, out, monkeypatch, ["--model", "autoencoder", "--preset", "tiny", "--val-every", "0"]
    )
    ckpt = torch.load(out / "last.pt", weights_only=False)
    ckpt["model"].pop(next(iter(ckpt["model"])))
    torch.save(ckpt, out / "broken.pt")
    capsys.readouterr()
    assert tr.main(["--resume", str(out / "broken.pt"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "Missing key" in err, err


def test_resume_auto_and_config_file_resume(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _interrupted_run(
        data, out, monkeypatch, ["--model", "autoencoder", "--preset", "tiny", "--val-every", "0"]
    )
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'resume = true\nout = "{out}"\n')
    c, resume = tr.config_from_args(["--config", str(cfg)])
    assert resume == os.path.join(str(out), "last.pt") and c.model == "autoencoder"
    assert c.steps == 4 and c.preset == "tiny"
    cfg.write_text("resume = false\n")
    assert tr.main(["--config", str(cfg)]) == 2
    assert "--model is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------- config types
@pytest.mark.parametrize(
    "line, message",
    [
        ('steps = "abc"', 'steps must be an integer or null, got "abc"'),
        ("steps = 2.7", "steps must be an integer or null, got 2.7"),
        ("steps = true", "steps must be an integer or null, got true"),
        ('lr = "fast"', 'lr must be a number, got "fast"'),
        ("size = [64, 48]", "size must be an integer, got [64, 48]"),
        ("size = 64.5", "size must be an integer, got 64.5"),
        ("in_frames = 2.5", "in_frames must be an integer, got 2.5"),
        ("device = 5", "device must be a string, got 5"),
        ("data = 5", "data must be a string or null, got 5"),
        ('fused = "no"', 'fused must be true or false, got "no"'),
        ("model_kwargs = 3", "model_kwargs must be a table/object, got 3"),
        ("resume = 5", "resume must be a checkpoint path"),
        ("model_kwargs = {foo = 1, bar = 2}", "the autoencoder model takes no bar, foo"),
        ('model_kwargs = {widths = "x"}', "cannot build the autoencoder model"),
        ("grad_clip = -1", "--grad-clip must be >= 0 (0 = off), got -1.0"),
    ],
)
def test_config_file_types_are_checked(line, message, data, tmp_path, capsys):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(f'model = "autoencoder"\npreset = "tiny"\n{line}\n')
    rc = tr.main(["--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "last.pt").exists()


def test_config_file_int_for_float_and_json_null(data, tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": "autoencoder", "lr": 1, "steps": None, "batch_norm": None}))
    c, _ = tr.config_from_args(["--config", str(cfg), "--data", str(data)])
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.steps == 1000


# ----------------------------------------------------------------------------- user errors
def test_cuda_index_is_checked(monkeypatch):
    from pyframepred.training import distributed as cc

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for dev in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(ConfigError, match="no CUDA device is available"):
            cc.resolve_device(dev)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cc.resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="there is no CUDA device 1"):
        cc.resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="cuda:N"):
        cc.resolve_device("cuda:x")


def test_cli_device_errors(checkpoint, data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    video = sorted(Path(data).rglob("*.mp4"))[0]
    assert (
        tr.main(
            [
                "--model",
                "autoencoder",
                "--data",
                str(data),
                "--preset",
                "tiny",
                "--device",
                "cuda:1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert ev.main([str(checkpoint), "--device", "cuda:0"]) == 2
    assert pr.main([str(checkpoint), str(video), "--device", "cuda:0", "--out", str(tmp_path / "p.gif")]) == 2
    err = capsys.readouterr().err
    assert err.count("no CUDA device is available") == 3 and "Traceback" not in err


@pytest.mark.parametrize("where", ["file", "under_file", "proc"])
def test_train_unwritable_out(where, data, tmp_path, capsys):
    if where == "proc" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc")
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = {"file": afile, "under_file": afile / "sub", "proc": Path("/proc/pyframepred-x")}[where]
    assert (
        tr.main(
            [
                "--model",
                "autoencoder",
                "--data",
                str(data),
                "--preset",
                "tiny",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--out" in err and "training" not in err, err


def test_train_grad_clip_and_absolute_data(data, tmp_path, monkeypatch, capsys):
    assert tr.main(["--model", "autoencoder", "--data", str(data), "--grad-clip", "-1"]) == 2
    assert "--grad-clip must be >= 0" in capsys.readouterr().err
    monkeypatch.chdir(Path(data).parent)
    c, _ = tr.config_from_args(
        ["--model", "autoencoder", "--data", Path(data).name, "--out", str(tmp_path / "o")]
    )
    assert c.data == str(Path(data).resolve())


def test_checkpoint_files_follow_umask(checkpoint):
    mask = os.umask(0)
    os.umask(mask)
    for name in ("last.pt", "best.pt"):
        assert (checkpoint.parent / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_evaluate_cli_more_errors(checkpoint, tmp_path, capsys):
    assert ev.main([str(checkpoint), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert ev.main([str(checkpoint), "--clips-per-video", "0"]) == 2
    assert "--clips-per-video must be >= 1" in capsys.readouterr().err
    assert ev.main([str(checkpoint.parent)]) == 2
    assert "is a directory" in capsys.readouterr().err
    if Path("/proc/self").is_dir():
        assert ev.main([str(checkpoint), "--out", "/proc/pyframepred-x.json"]) == 2
        assert "cannot write --out" in capsys.readouterr().err
    # an older checkpoint that stored a relative --data
    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["config"]["data"] = "videos-relative-to-training"
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    assert ev.main([str(old), "--clips", "2"]) == 2
    err = capsys.readouterr().err
    assert "relative" in err and "--data" in err, err


def test_predict_fps_and_out_errors(checkpoint, data, tmp_path, monkeypatch, capsys):
    video = sorted(Path(data).rglob("*.mp4"))[0]
    ran = []
    monkeypatch.setattr(
        pr, "model_from_checkpoint", lambda *a, **k: ran.append(1) or ev.model_from_checkpoint(*a, **k)
    )
    for bad in ("0", "-1", "abc", "30/0"):
        with pytest.raises(SystemExit) as exc:
            pr.main([str(checkpoint), str(video), "--fps", bad, "--out", str(tmp_path / "a.gif")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "--fps" in err and "fraction N/D" in err
        assert len(err.strip().splitlines()) == 1  # one line, not the usage text
    if Path("/proc/self").is_dir():
        assert pr.main([str(checkpoint), str(video), "--out", "/proc/pyframepred-x.gif"]) == 2
        assert "cannot write --out" in capsys.readouterr().err
    assert not ran  # checked before the model runs
    out = tmp_path / "slow.mp4"
    assert pr.main([str(checkpoint), str(video), "--steps", "2", "--fps", "0.5", "--out", str(out)]) == 0
    import av

    with av.open(str(out)) as f:
        assert f.streams.video[0].average_rate == 0.5
    ntsc = tmp_path / "ntsc.mp4"
    assert (
        pr.main([str(checkpoint), str(video), "--steps", "2", "--fps", "30000/1001", "--out", str(ntsc)]) == 0
    )
    with av.open(str(ntsc)) as f:
        assert f.streams.video[0].average_rate == Fraction(30000, 1001)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        tr.main(["--model", "autoencodr"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert "invalid choice: 'autoencodr'" in err[0] and "--help" in err[0]


@pytest.fixture(scope="module")
def one_group_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("one-group")
    return synthetic.generate(
        out,
        seed=2,
        videos_per_class=2,
        groups_per_class=1,
        frames=(16, 20),
        classes=synthetic.CLASSES[:1],  # one class of one group: nothing to hold out
        progress=False,
    )


def test_split_options(one_group_data, tmp_path, capsys):
    base = [
        "--model",
        "autoencoder",
        "--preset",
        "tiny",
        "--data",
        str(one_group_data),
        "--no-progress",
        "--steps",
        "2",
    ]
    # A single group: the held-out side of the group split is empty -> the way out is named.
    assert tr.main(base + ["--out", str(tmp_path / "a")]) == 2
    assert "--test-fraction 0" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert tr.main(base + ["--out", str(tmp_path / "b"), "--test-fraction", "0", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert "not held-out" in err and "done: 2 steps; validation PSNR" in err
    for extra, message in (
        (["--test-fraction", "1"], "--test-fraction"),
        (["--split-index", "4"], "--split-index"),
        (["--threads", "0"], "--threads"),
        (["--split-dir", str(tmp_path / "none")], "split folder"),
        (
            ["--split-dir", str(tmp_path), "--test-fraction", "0.5"],
            "--split-dir and --test-fraction are alternatives",
        ),
    ):
        assert tr.main(base + ["--out", str(tmp_path / "c")] + extra) == 2
        assert message in capsys.readouterr().err


def test_predict_at_a_width_decord_cannot_scale_to(checkpoint, data, tmp_path, capsys):
    # decord 0.6 fails to hand out frames 48 pixels wide (dmlc/decord#336); FrameReader resizes.
    video = sorted(Path(data).rglob("*.mp4"))[0]
    assert (
        pr.main(
            [str(checkpoint), str(video), "--steps", "2", "--size", "48", "--out", str(tmp_path / "p.gif")]
        )
        == 0
    )
    assert "48x48" in capsys.readouterr().out
    assert pr.main([str(checkpoint), str(Path(video).parent), "--out", str(tmp_path / "x.gif")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_cli_warnings_are_plain_lines(capsys):
    import warnings

    from pyframepred.cli.common import plain_warnings

    @plain_warnings
    def main():
        warnings.warn("VideoClips: skipped 1 of 3 videos")
        return 0

    before = warnings.showwarning
    assert main() == 0
    assert capsys.readouterr().err == "warning: VideoClips: skipped 1 of 3 videos\n"
    assert warnings.showwarning is before  # restored for the rest of the process
    for cli in (tr.main, ev.main, pr.main):
        assert getattr(cli, "__wrapped__", None) is not None  # all three CLIs use it


def test_failed_run_leaves_no_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "runs" / "deep" / "x"
    assert (
        tr.main(
            ["--model", "autoencoder", "--data", str(tmp_path / "empty"), "--out", str(out), "--no-progress"]
        )
        == 2
    )
    assert "no video files" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # the folders this run created are gone again
    keep = tmp_path / "mine"
    keep.mkdir()
    assert (
        tr.main(
            ["--model", "autoencoder", "--data", str(tmp_path / "empty"), "--out", str(keep), "--no-progress"]
        )
        == 2
    )
    assert keep.is_dir()  # a folder that existed before is left in place


def _saved_then_cut(tmp_path) -> bytes:
    whole = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.zeros(64)}, "config": {"model": "seq2seq"}}, whole)
    return whole.read_bytes()[:300]


@pytest.mark.parametrize(
    "content,why",
    [
        (lambda tmp: b"hello", "neither a zip archive nor a pickle"),
        (lambda tmp: np.random.default_rng(0).bytes(4096), "neither a zip archive nor a pickle"),
        (lambda tmp: b'{"model": "seq2seq"}\n', "neither a zip archive nor a pickle"),
        (lambda tmp: b"", "the file is empty"),
        (_saved_then_cut, "a truncated or damaged zip archive"),
    ],
    ids=["text", "random-bytes", "json", "empty", "truncated"],
)
def test_evaluate_names_a_foreign_file(content, why, tmp_path, capsys):
    # Not a refusal: nothing in these files could run, they are no checkpoints at all.
    bogus = tmp_path / "notes.pt"
    bogus.write_bytes(content(tmp_path))
    assert ev.main([str(bogus)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a checkpoint written by torch.save" in err[0] and why in err[0], err


def test_evaluate_all_videos_of_a_folder_without_groups(checkpoint, tmp_path, capsys):
    footage = tmp_path / "footage"
    rng = np.random.default_rng(0)

    def add(name):
        (footage / name).mkdir(parents=True)
        frames = (rng.random((12, 48, 80, 3)) * 255).astype(np.uint8)
        encode_video(footage / name / f"{name.lower()}.mp4", frames, 25)

    add("Street")  # one video: a single group, no split
    out = tmp_path / "eval.json"
    argv = [str(checkpoint), "--data", str(footage), "--steps", "2", "--out", str(out)]
    assert ev.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no videos for the test side" in err[0]  # the split holds none out
    assert err[0].endswith("Pass --all-videos to evaluate on clips of every video")
    assert "split_dir" not in err[0] and "test_fraction=0 to" not in err[0]  # not evaluate's options
    add("Room")  # a folder per video: split together, one of the two is the test side
    assert ev.main(argv) == 0
    assert json.loads(out.read_text())["clips"] == 2  # the held-out video's 2 (--clips-per-video)
    rc = ev.main(
        [
            str(checkpoint),
            "--data",
            str(footage),
            "--all-videos",
            "--steps",
            "2",
            "--clips-per-video",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert json.loads(out.read_text())["clips"] == 6  # every video, 3 clips each


def test_evaluate_mathieu_protocol_on_the_paper_layout_and_on_videos(checkpoint, data, tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    ucf = tmp_path / "ucf"
    for clip in ("1", "11"):  # the authors' layout
        (ucf / clip).mkdir(parents=True)
        for i in range(6):
            name = f"pred_{i + 1}.png" if i < 4 else f"target_{i - 3}.png"
            Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(ucf / clip / name)
        flow = np.full((32, 48, 3), 255, np.uint8)
        flow[4:20, 8:30] = (255, 0, 0)  # moving where it is red
        for name in ("pred_4_flow.png", "target_1_flow.png"):
            Image.fromarray(flow).save(ucf / clip / name)
    out = tmp_path / "paper.json"
    assert ev.main([str(checkpoint), "--protocol", "mathieu", "--data", str(ucf), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == "mathieu" and res["clips"] == 2 and res["steps"] == 2
    assert res["moving_pixels"] == "the authors' flow images"
    assert res["moving_share"] == pytest.approx([16 * 22 / (32 * 48)] * 2)
    assert res["model_counted"] == [2, 2] and all(math.isfinite(v) for v in res["model"]["psnr"])
    assert "moving pixels only" in capsys.readouterr().out
    # any folder of videos: masks from the estimated flow
    out = tmp_path / "videos.json"
    assert (
        ev.main(
            [str(checkpoint), "--protocol", "mathieu", "--data", str(data), "--clips", "4", "--out", str(out)]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["clips"] == 4 and res["moving_pixels"].startswith("estimated flow")
    assert (
        ev.main(
            [
                str(checkpoint),
                "--protocol",
                "mathieu",
                "--data",
                str(data),
                "--moving-threshold",
                "0",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "threshold must be positive" in err[0]


def test_weight_average_follows_its_formula():
    from pyframepred.training.averaging import WeightAverage

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.BatchNorm2d(3))
    avg = WeightAverage(net, 0.5)  # the warm-up (1 + n) / (10 + n) passes 0.5 at n = 8
    expect = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for n in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(2, 2, 5, 5))  # batch-norm statistics move too
        d = min(0.5, (1 + n) / (10 + n))
        for k, v in net.state_dict().items():
            expect[k] = d * expect[k] + (1 - d) * v if v.is_floating_point() else v.clone()
        avg.update(net)
    assert avg.updates == 30 and not avg.module.training
    for k, v in avg.state_dict().items():
        torch.testing.assert_close(v, expect[k], msg=k)
    assert not any(p.requires_grad for p in avg.module.parameters())
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(net, 1.0)
    assert avg.current_decay() == 0.5


@pytest.mark.parametrize("model", ["seq2seq", "multiscale"])
def test_ema_is_what_is_saved_validated_and_resumed(model, data, tmp_path):
    straight = Trainer(tiny(model, data, tmp_path / "a", steps=4, val_every=2, ema=0.5))
    straight.fit()
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["averaged_updates"] == 4
    for k, v in straight.model.state_dict().items():
        assert torch.equal(ckpt["train_model"][k], v), k
        assert torch.equal(ckpt["model"][k], straight.averaged.state_dict()[k]), k
    moved = [
        k
        for k, v in ckpt["model"].items()
        if v.is_floating_point() and not torch.equal(v, ckpt["train_model"][k])
    ]
    assert moved  # the average lags the trained weights
    # what evaluate and predict load is the average
    from pyframepred.training.checkpoint import model_from_checkpoint

    loaded = model_from_checkpoint(ckpt, "cpu")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    # validation scored the average, not the trained weights
    from pyframepred.evaluation import evaluate_model

    def psnr(net):
        cfg = straight.cfg
        r = evaluate_model(net, straight.val_ds, cfg.in_frames, cfg.val_steps, "cpu", batch_size=8)
        return r["model_mean"]["psnr"]

    recorded = straight.history["val"][-1]["psnr"]
    assert recorded == pytest.approx(psnr(straight.averaged.module), abs=1e-9)
    assert recorded != pytest.approx(psnr(straight.model), abs=1e-9)

    first = Trainer(tiny(model, data, tmp_path / "b", steps=4, val_every=2, ema=0.5))

    def stop_at_2(trainer, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    first.callbacks.append(StepHook(stop_at_2))
    assert first.fit()["status"] == "interrupted"
    resumed = Trainer(
        tiny(model, data, tmp_path / "b", steps=4, val_every=2, ema=0.5), resume=tmp_path / "b" / "last.pt"
    )
    assert resumed.averaged.updates == 2
    resumed.fit()
    for a, b in ((straight.model, resumed.model), (straight.averaged.module, resumed.averaged.module)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_resume_keeps_the_thread_count_of_the_run_it_continues(data, tmp_path, monkeypatch):
    """The default thread count follows the machine's load when a run starts, and CPU kernels sum
    in an order that depends on the thread count. A resumed run therefore takes the count of the
    run it continues (saved in the checkpoint), so that it goes on bit for bit even when the
    machine has become busier meanwhile; `threads` still overrides it."""
    import pyframepred.training.loop as loop

    monkeypatch.setattr(loop, "default_threads", lambda: (2, "2.0 of 2 cores free"))
    monkeypatch.setattr(loop, "usable_cores", lambda: 2)
    straight = Trainer(tiny("seq2seq", data, tmp_path / "a", steps=4, val_every=2))
    straight.fit()
    first = Trainer(tiny("seq2seq", data, tmp_path / "b", steps=4, val_every=2))

    def stop_at_2(trainer, step):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    first.callbacks.append(StepHook(stop_at_2))
    assert first.fit()["status"] == "interrupted"
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=True)["threads"] == 2
    # The machine is busier now: the default alone would take one thread.
    monkeypatch.setattr(loop, "default_threads", lambda: (1, "0.6 of 2 cores free"))
    resumed = Trainer(tiny("seq2seq", data, tmp_path / "b", steps=4, val_every=2), resume=tmp_path / "b")
    assert torch.get_num_threads() == 2 and "resumed" in resumed.threads_reason
    resumed.fit()
    sa, sb = straight.model.state_dict(), resumed.model.state_dict()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    # `threads` overrides what the checkpoint says.
    Trainer(tiny("seq2seq", data, tmp_path / "b", steps=5, threads=1), resume=tmp_path / "b").close()
    assert torch.get_num_threads() == 1
    # A machine with fewer cores than the run had: the default, and a warning that the resume
    # is not bit for bit.
    monkeypatch.setattr(loop, "usable_cores", lambda: 1)
    with pytest.warns(UserWarning, match="not bit for bit"):
        Trainer(tiny("seq2seq", data, tmp_path / "b", steps=5), resume=tmp_path / "b").close()
    assert torch.get_num_threads() == 1


def test_ema_switched_on_or_off_when_resuming(data, tmp_path):
    Trainer(tiny("seq2seq", data, tmp_path / "a", steps=2)).fit()
    plain = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    on = Trainer(tiny("seq2seq", data, tmp_path / "a", steps=3, ema=0.9), resume=tmp_path / "a" / "last.pt")
    for k, v in on.averaged.state_dict().items():  # starts from the resumed weights
        assert torch.equal(v, plain["model"][k]), k
    on.fit()
    averaged = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    off = Trainer(tiny("seq2seq", data, tmp_path / "a", steps=4), resume=tmp_path / "a" / "last.pt")
    assert off.averaged is None
    for k, v in off.model.state_dict().items():  # goes on from the trained weights, not the average
        assert torch.equal(v, averaged["train_model"][k]), k


def test_ema_must_be_below_one(data, tmp_path, capsys):
    assert (
        tr.main(["--model", "seq2seq", "--data", str(data), "--out", str(tmp_path / "x"), "--ema", "1"]) == 2
    )
    assert "--ema must be in [0, 1), got 1.0" in capsys.readouterr().err


def test_ema_run_end_to_end_samples_evaluate_and_predict(data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = tr.main(
        ["--model", "seq2seq", "--data", str(data), "--preset", "tiny", "--out", str(out), "--no-progress"]
        + ["--ema", "0.5", "--sample-every", "2", "--val-every", "2"]
    )
    assert rc == 0
    assert (out / "samples" / "step_000002.gif").is_file() and (out / "samples" / "final.gif").is_file()
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert "train_model" in ckpt and ckpt["averaged_updates"] == 4
    # evaluate scores the average (what model_from_checkpoint loads), not the trained weights
    res_path = tmp_path / "eval.json"
    assert ev.main([str(out / "last.pt"), "--clips", "4", "--out", str(res_path)]) == 0
    averaged = json.loads(res_path.read_text())["model_mean"]["psnr"]
    trained = {**ckpt, "model": ckpt["train_model"]}
    del trained["train_model"]
    torch.save(trained, tmp_path / "trained.pt")
    assert ev.main([str(tmp_path / "trained.pt"), "--clips", "4", "--out", str(res_path)]) == 0
    assert math.isfinite(averaged) and averaged != pytest.approx(
        json.loads(res_path.read_text())["model_mean"]["psnr"], abs=1e-9
    )
    video = tmp_path / "clip.mp4"
    encode_video(video, np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8), 10)
    assert pr.main([str(out / "last.pt"), str(video), "--steps", "2", "--out", str(tmp_path / "p.gif")]) == 0
    assert (tmp_path / "p.gif").is_file()
