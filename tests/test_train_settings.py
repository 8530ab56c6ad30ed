"""Settings a run cannot train with are one-line errors before it starts, and settings that would
be recorded but not used are refused; a run that fails before its first save leaves nothing that
makes the next run into its folder ask for --overwrite."""

import errno
import json
from pathlib import Path

import pytest
from conftest import TINY

from pyframepred.cli import train as tr
from pyframepred.cli.common import EXIT_USAGE, EXIT_WRITE_FAILED
from pyframepred.errors import ConfigError
from pyframepred.training import TrainConfig
from pyframepred.training import checkpoint as ckpt_format


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "autoencoder", "--size", "1"], "size must be >= 2, got 1"),
        (
            ["--model", "autoencoder", "--size", "4", "--batch-size", "1"],
            "deepest level is 1x1 at --size 4 (3 levels)",
        ),
        (["--model", "seq2seq", "--data", "moving-mnist", "--size", "32"], "--size 32 does not apply"),
        (["--model", "seq2seq", "--data", "moving-mnist", "--interval", "5"], "--interval 5 does not"),
        (["--model", "seq2seq", "--data", "moving-mnist", "--fps", "10"], "--fps 10.0 does not"),
        (["--model", "seq2seq", "--lr", "inf"], "must be a positive number, got inf"),
        (["--model", "multiscale", "--lr-d", "inf"], "must be a positive number, got inf"),
        (["--model", "seq2seq", "--lambda-gdl", "inf"], "must be a number >= 0, got inf"),
    ],
)
def test_settings_a_run_cannot_use_are_one_line_errors(argv, message, data, tmp_path, capsys):
    out = tmp_path / "run"
    args = argv + ([] if "--data" in argv else ["--data", str(data)])
    assert tr.main(args + ["--out", str(out)] + TINY) == EXIT_USAGE
    assert message in _error_line(capsys.readouterr().err)
    assert not out.exists()


def test_multiscale_scales_not_ending_at_the_frame_are_refused_before_training(data, tmp_path, capsys):
    config = tmp_path / "ms.toml"
    config.write_text('model = "multiscale"\n[model_kwargs]\nscales = [4, 16, 32]\n')
    out = tmp_path / "run"
    assert tr.main(["--config", str(config), "--data", str(data), "--out", str(out)] + TINY) == EXIT_USAGE
    assert "cannot build the multiscale model" in _error_line(capsys.readouterr().err)
    assert not out.exists()


def test_an_empty_out_is_refused_not_the_current_folder(data, tmp_path, monkeypatch, capsys):
    # `--out "$OUT"` with OUT unset: a run must not fill (or later `overwrite`) the current folder
    monkeypatch.chdir(tmp_path)
    assert tr.main(["--model", "autoencoder", "--data", str(data), "--out", ""] + TINY) == EXIT_USAGE
    assert "--out is an empty path" in _error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="`out` is an empty path"):
        TrainConfig(model="autoencoder", out="").resolved()


def test_a_config_file_with_a_byte_order_mark_loads(tmp_path):
    from pyframepred.training.config import load_config_file

    for name, text in (
        ("c.toml", 'model = "seq2seq"\nsteps = 2\n'),
        ("c.json", '{"model": "seq2seq", "steps": 2}'),
    ):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # as Windows editors save UTF-8
        assert load_config_file(path) == {"model": "seq2seq", "steps": 2}


def test_batch_norm_check_lets_through_what_trains():
    """The 1x1 check refuses only batch norm over a single value per channel."""
    ok = [
        dict(preset="quick", size=17, batch_size=1),  # 2x2 at the deepest level
        dict(preset="quick", size=16, batch_size=2),
        dict(preset="quick", size=16, batch_size=1, batch_norm=False),
    ]
    for kw in ok:
        TrainConfig(model="autoencoder", **kw).resolved()
    with pytest.raises(ConfigError, match="deepest level is 1x1"):
        TrainConfig(model="autoencoder", preset="quick", size=16, batch_size=1).resolved()
    # Moving MNIST's own frame settings are what the run records
    c = TrainConfig(model="seq2seq", preset="tiny", data="moving-mnist").resolved()
    assert (c.size, c.interval, c.fps) == (64, 0, None)


@pytest.mark.parametrize(
    "model,kwargs,name",
    [
        ("autoencoder", {"in_frames": 2}, "in_frames"),
        ("autoencoder", {"channels": 1}, "channels"),
        ("seq2seq", {"out_steps": 3}, "out_steps"),
        ("multiscale", {"in_frames": 2}, "in_frames"),
    ],
)
def test_model_kwargs_cannot_override_what_the_run_sets(model, kwargs, name, data, tmp_path, capsys):
    """in_frames or channels in `model_kwargs` built a network that crashed on the run's clips at
    step 1; they come from the run's settings and data."""
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"model": model, "model_kwargs": kwargs}))
    argv = ["--config", str(config), "--data", str(data), "--out", str(tmp_path / "run")] + TINY
    assert tr.main(argv) == EXIT_USAGE
    line = _error_line(capsys.readouterr().err)
    assert f"the run sets the {model} model's {name} from " in line, line
    # the model's own arguments still go through
    TrainConfig(model="autoencoder", preset="tiny", model_kwargs={"widths": [8, 16]}).resolved()


def test_a_run_failing_before_its_first_save_leaves_no_config(data, tmp_path, capsys, monkeypatch):
    """config.json is written with the first checkpoint: a run whose first save fails (a full
    disk) leaves no run files, so the next run into the folder needs no --overwrite."""
    out = tmp_path / "run"
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "2"] + TINY

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_format, "save", full_disk)
    assert tr.main(argv) == EXIT_WRITE_FAILED
    capsys.readouterr()
    assert not (out / "config.json").exists() and not (out / "last.pt").exists()
    monkeypatch.undo()
    assert tr.main(argv) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "autoencoder" and saved["steps"] == 2
    assert ckpt_format.load(Path(out) / "last.pt")["step"] == 2


def test_a_tensorboard_run_failing_before_its_first_save_leaves_no_event_file(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "2"] + TINY

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_format, "save", full_disk)
    assert tr.main(argv + ["--tensorboard"]) == EXIT_WRITE_FAILED
    assert not out.exists() or not (out / "tensorboard").exists()
    monkeypatch.undo()
    assert tr.main(argv + ["--tensorboard"]) == 0  # no --overwrite needed
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_resuming_a_finished_tensorboard_run_adds_no_event_file(data, tmp_path):
    """``Trainer.fit`` of a run resumed when already done writes nothing: the callbacks get their
    ``on_exit`` (TensorBoard's writer, made with the trainer, leaves no empty event file)."""
    from pyframepred.training import Trainer

    cfg = TrainConfig(
        model="autoencoder",
        data=str(data),
        out=str(tmp_path / "run"),
        preset="tiny",
        steps=2,
        progress=False,
        tensorboard=True,
        threads=1,
    )
    assert Trainer(cfg).fit()["status"] == "done"
    events = tmp_path / "run" / "tensorboard"
    before = sorted(p.name for p in events.iterdir())
    assert len(before) == 1
    assert Trainer(cfg, resume=tmp_path / "run" / "last.pt").fit()["status"] == "already_done"
    assert sorted(p.name for p in events.iterdir()) == before


def test_resuming_best_with_overwrite_keeps_the_runs_own_files(data, tmp_path, capsys):
    """--resume best.pt --overwrite rewinds a run whose last.pt is newer: only last.pt is
    replaced; best.pt (what it resumes) and the run's samples stay."""
    out = tmp_path / "run"
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "4"] + TINY
    assert tr.main(argv + ["--sample-every", "1", "--lambda-l2", "1e9"]) == 0
    best = ckpt_format.load(out / "best.pt")
    last = ckpt_format.load(out / "last.pt")
    if best["step"] == last["step"]:
        pytest.skip("best.pt is the last step in this run: nothing to rewind")
    samples = sorted(p.name for p in (out / "samples").iterdir())
    resume = ["--resume", str(out / "best.pt"), "--steps", "4", "--no-progress"]
    assert tr.main(resume) == 2  # a newer last.pt: refused without --overwrite
    assert "--overwrite" in _error_line(capsys.readouterr().err)
    assert tr.main(resume + ["--overwrite"]) == 0
    assert (out / "best.pt").exists()
    assert set(samples) <= {p.name for p in (out / "samples").iterdir()}


def test_older_runs_resume_with_the_settings_they_recorded(data, tmp_path):
    """Checkpoints written before the settings checks: Moving MNIST runs that recorded a size of
    their own, and model_kwargs holding what the run sets, still resume."""
    from pyframepred.training.resume import resume_settings

    out = tmp_path / "run"
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "2"] + TINY
    assert tr.main(argv) == 0
    ckpt = ckpt_format.load(out / "last.pt")
    ckpt["config"]["model_kwargs"] = {"residual": ckpt["config"]["residual"]}
    ckpt["model_kwargs"] = {**ckpt["model_kwargs"], "residual": ckpt["config"]["residual"]}
    old = tmp_path / "old.pt"
    ckpt_format.save(ckpt, [old])
    cfg, _, _ = resume_settings({"steps": 3}, old)
    assert cfg.model_kwargs == {"residual": ckpt["config"]["residual"]}
    # a Moving MNIST run's recorded but unused size: the run's own frames are what it resumes with
    ckpt["config"].update(data="moving-mnist", size=32, interval=3, fps=10.0, model_kwargs={})
    mnist = tmp_path / "mnist.pt"
    ckpt_format.save(ckpt, [mnist])
    cfg, _, _ = resume_settings({"steps": 3}, mnist)
    assert (cfg.size, cfg.interval, cfg.fps) == (64, 0, None)
    with pytest.raises(ConfigError, match="`size` 32 does not apply"):
        resume_settings({"steps": 3, "size": 32}, mnist)  # given, not inherited
