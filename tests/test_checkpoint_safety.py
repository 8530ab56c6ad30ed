"""Runs that cannot be hijacked, corrupt themselves or lose work: safe checkpoint loading,
finite checkpoints only, signals with DataLoader workers, run folder ownership, atomic outputs,
robust indexing."""

import errno
import json
import math
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY

from pyframepred import io as atomic
from pyframepred.cli import evaluate as ev
from pyframepred.cli import predict as pr
from pyframepred.cli import train as tr
from pyframepred.cli.common import EXIT_WORKER_DIED, EXIT_WRITE_FAILED
from pyframepred.data import decode_frames, find_videos, index_videos
from pyframepred.errors import ConfigError, OutputError
from pyframepred.training import TrainConfig, Trainer
from pyframepred.training import checkpoint as ckpt_format
from pyframepred.training.run_folder import RunFolderLock

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """A finished tiny autoencoder run (4 steps, checkpoints at 2 and 4)."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert tr.main(["--model", "autoencoder", "--data", str(data), "--out", str(out)] + TINY) == 0
    return out


def _video(data):
    return sorted(Path(data).rglob("*.mp4"))[0]


def _one_error_line(err: str) -> str:
    # (the loss lines a run without a progress bar prints every `log_every` steps aside)
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"step \d+/\d+: loss ", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _snapshot(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".pyframepred.lock"
    }


# ----------------------------------------------------------------------------- safe loading
class _RunsShell:
    """Unpickling this calls ``os.system`` (what a booby-trapped checkpoint carries)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _trapped_checkpoint(run, tmp_path, marker):
    ckpt = ckpt_format.load(run / "last.pt")
    ckpt["notes"] = _RunsShell(f"touch {marker}")
    path = tmp_path / "trapped.pt"
    torch.save(ckpt, path)
    # the trap is real: a plain unpickling of the file runs the command
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    return path


def test_checkpoint_is_weights_only_loadable_with_tensor_rng_states(run):
    ckpt = torch.load(run / "last.pt", weights_only=True)  # no allowlist needed
    assert ckpt["format"] == ckpt_format.FORMAT_VERSION == 2
    rng = ckpt["rng"]
    assert isinstance(rng["torch"], torch.Tensor)
    assert isinstance(rng["numpy"]["keys"], torch.Tensor) and rng["numpy"]["keys"].numel() == 624
    assert isinstance(rng["python"]["state"], torch.Tensor)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(run / "best.pt") == []


def test_rng_state_round_trip():
    st = ckpt_format.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    ckpt_format.set_rng_state(st)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("cli", ["evaluate", "predict", "resume", "config_resume"])
def test_booby_trapped_checkpoint_is_refused_and_runs_nothing(cli, run, data, tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = _trapped_checkpoint(run, tmp_path, marker)
    if cli == "evaluate":
        rc = ev.main([str(path), "--out", str(tmp_path / "e.json")])
    elif cli == "predict":
        rc = pr.main([str(path), str(_video(data)), "--out", str(tmp_path / "p.gif")])
    elif cli == "resume":
        rc = tr.main(["--resume", str(path), "--steps", "6", "--out", str(tmp_path / "o")])
    else:
        cfg = tmp_path / "cfg.json"
        cfg.write_text(json.dumps({"resume": str(path), "steps": 6, "out": str(tmp_path / "o")}))
        rc = tr.main(["--config", str(cfg)])
    line = _one_error_line(capsys.readouterr().err)
    assert rc == 2
    assert "refusing checkpoint" in line and "posix.system" in line, line
    assert not marker.exists()  # nothing was executed
    assert not (tmp_path / "o").exists() and not (tmp_path / "e.json").exists()


def test_numpy_allowlist_reaches_no_other_callable(run, tmp_path, capsys):
    # The legacy allowlist admits numpy's array rebuilding only, not e.g. numpy.save.
    victim = tmp_path / "written.npy"

    class SavesFile:
        def __reduce__(self):
            return np.save, (str(victim), np.zeros(1))

    ckpt = ckpt_format.load(run / "last.pt")
    ckpt["x"] = SavesFile()
    path = tmp_path / "np.pt"
    torch.save(ckpt, path)
    assert ev.main([str(path)]) == 2
    assert "refusing checkpoint" in _one_error_line(capsys.readouterr().err)
    assert not victim.exists()


def test_foreign_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "foreign.pt"
    path.write_bytes(pickle.dumps({"model": {}, "config": {}, "x": _RunsShell("true")}))
    assert ev.main([str(path)]) == 2
    assert "error: " in _one_error_line(capsys.readouterr().err)


def _format1_copy(run, tmp_path) -> Path:
    """``last.pt`` as the previous version wrote it: numpy/python random states pickled as
    numpy arrays and tuples, the torch version as torch's TorchVersion, format 1."""
    ckpt = ckpt_format.load(run / "last.pt")
    state = ckpt_format.rng_state()
    ckpt_format.set_rng_state(ckpt["rng"])
    ckpt["rng"] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    ckpt_format.set_rng_state(state)
    ckpt["format"] = 1
    ckpt["torch_version"] = torch.__version__
    old = tmp_path / "old" / "last.pt"
    old.parent.mkdir()
    torch.save(ckpt, old)
    with pytest.raises(pickle.UnpicklingError):  # needs the allowlist
        torch.load(old, weights_only=True)
    return old


def test_format1_checkpoint_still_loads_and_resumes_exactly(run, data, tmp_path, capsys):
    old = _format1_copy(run, tmp_path)
    new = ckpt_format.load(run / "last.pt")
    loaded = ckpt_format.load(old)
    for part in ("python", "numpy"):
        for k, v in new["rng"][part].items():
            got = loaded["rng"][part][k]
            assert torch.equal(got, v) if isinstance(v, torch.Tensor) else got == v, (part, k)
    assert ev.main([str(old), "--clips", "2", "--out", str(tmp_path / "e.json")]) == 0
    # resume the format-1 copy and the format-2 original by two steps: identical weights
    a = tmp_path / "a"
    shutil.copytree(run, a)
    assert tr.main(["--resume", str(a / "last.pt"), "--steps", "6"] + TINY[2:]) == 0
    assert tr.main(["--resume", str(old), "--steps", "6"] + TINY[2:]) == 0
    wa = ckpt_format.load(a / "last.pt")["model"]
    wb = ckpt_format.load(old.parent / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert ckpt_format.load(old.parent / "last.pt")["format"] == 2  # rewritten as format 2


def test_newer_format_and_missing_fields_are_usage_errors(run, data, tmp_path, capsys):
    ckpt = ckpt_format.load(run / "last.pt")
    future = dict(ckpt, format=99)
    torch.save(future, tmp_path / "future.pt")
    assert ev.main([str(tmp_path / "future.pt")]) == 2
    assert "format 99" in _one_error_line(capsys.readouterr().err)
    no_kwargs = {k: v for k, v in ckpt.items() if k != "model_kwargs"}
    torch.save(no_kwargs, tmp_path / "nokw.pt")
    assert ev.main([str(tmp_path / "nokw.pt")]) == 2
    assert "lacks model_kwargs" in _one_error_line(capsys.readouterr().err)
    assert pr.main([str(tmp_path / "nokw.pt"), str(_video(data)), "--out", str(tmp_path / "p.gif")]) == 2
    assert "lacks model_kwargs" in _one_error_line(capsys.readouterr().err)
    no_opt = {k: v for k, v in ckpt.items() if k != "optimizer"}
    torch.save(no_opt, tmp_path / "noopt.pt")
    assert (
        tr.main(["--resume", str(tmp_path / "noopt.pt"), "--steps", "6", "--out", str(tmp_path / "o")]) == 2
    )
    assert "lacks optimizer" in _one_error_line(capsys.readouterr().err)
    bad_rng = dict(ckpt, rng={"python": 1, "numpy": 2, "torch": 3})
    torch.save(bad_rng, tmp_path / "badrng.pt")
    assert (
        tr.main(["--resume", str(tmp_path / "badrng.pt"), "--steps", "6", "--out", str(tmp_path / "o")]) == 2
    )
    assert "random states" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "content, message",
    [
        (b'model = "caf\xe9"\n', "not UTF-8"),
        (b"[" * 100000, "cannot parse config file"),
        (b'{"model": "autoencoder", "steps": 1e999999}', "steps must be an integer"),
    ],
)
def test_bad_config_files_are_one_line_usage_errors(content, message, data, tmp_path, capsys):
    cfg = tmp_path / ("cfg.toml" if content.startswith(b"model") else "cfg.json")
    cfg.write_bytes(content)
    assert tr.main(["--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_config_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "cfg.json"
    os.mkfifo(fifo)
    assert tr.main(["--config", str(fifo)]) == 2
    assert "not a regular file" in _one_error_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- finite only
def _all_checkpoints_finite(folder: Path):
    for p in folder.glob("*.pt"):
        ck = ckpt_format.load(p)
        bad = ckpt_format.nonfinite_entries({"model": ck["model"], "optimizer": ck["optimizer"]})
        assert not bad, (p, bad)


@pytest.mark.parametrize("lr", ["1e308", "1e38"])  # (inf itself is refused as a setting)
def test_divergence_never_saves_nonfinite_weights(lr, data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = tr.main(
        [
            "--model",
            "autoencoder",
            "--data",
            str(data),
            "--out",
            str(out),
            "--lr",
            lr,
            "--val-every",
            "1",
            "--steps",
            "4",
        ]
        + TINY
    )
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "training stopped" in _one_error_line(
        "\n".join(ln for ln in err.splitlines() if not ln.startswith(("training ", "step ")))
    )
    _all_checkpoints_finite(out)
    if lr == "1e308":  # step 1 already ruined the weights (inf in float32): nothing saved
        assert not (out / "last.pt").exists()
        assert "without saving them" in err


def test_nonfinite_optimizer_state_is_not_saved(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    orig = Trainer.train_step

    def step(self, clips):
        res = orig(self, clips)
        if self.step == 2:  # the 3rd step: poison Adam's second moment
            st = next(iter(self.opt.state.values()))
            st["exp_avg_sq"].fill_(float("inf"))
        return res

    monkeypatch.setattr(Trainer, "train_step", step)
    rc = tr.main(
        ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--val-every", "1", "--steps", "4"]
        + TINY
    )
    assert rc == 3
    assert "optimizer.state" in capsys.readouterr().err
    assert ckpt_format.load(out / "last.pt")["step"] == 2
    _all_checkpoints_finite(out)


# ----------------------------------------------------------------------------- signals
def _popen_train(data, out, *extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "pyframepred.train",
        "--model",
        "autoencoder",
        "--data",
        str(data),
        "--out",
        str(out),
        "--steps",
        "100000",
        "--val-every",
        "1",
        "--workers",
        "2",
        *TINY,
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _read_until(proc, text) -> str:
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return "".join(seen)
    proc.wait()
    raise AssertionError(f"'{text}' never came (exit {proc.returncode}):\n{''.join(seen)}")


def _finish(proc, seen: str):
    try:
        _, rest = proc.communicate(timeout=300)  # a safety net, not an assertion
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, rest = proc.communicate()
        raise AssertionError("the run did not stop:\n" + seen + rest)
    return seen + rest


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("when", ["starting", "training"])
@pytest.mark.parametrize("rep", [1, 2])
def test_signal_to_process_group_with_workers_saves_and_exits_130(sig, when, rep, data, tmp_path):
    out = tmp_path / "run"
    proc = _popen_train(data, out)
    # "starting": as soon as the run announces itself, while the workers start;
    # "training": after two validated steps, the workers busy loading batches
    seen = _read_until(proc, "training autoencoder" if when == "starting" else "step 2: val")
    os.killpg(proc.pid, sig)  # what a terminal / a scheduler does
    err = _finish(proc, seen)
    assert proc.returncode == 130, err
    assert "interrupted: saved" in err and "Traceback" not in err, err
    assert err.count("--resume") == 1 and f"continue with --resume {out / 'last.pt'}" in err, err
    assert "KeyboardInterrupt" not in err, err  # no worker died of the signal
    ckpt = ckpt_format.load(out / "last.pt")
    assert ckpt["step"] >= (2 if when == "training" else 0)


def _children(pid: int) -> list:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


class _ExitingWorker:
    """A killed worker as the main process sees it: its sentinel already closed, but alive to
    is_alive() for a few more polls (the moment before the kernel makes it a zombie)."""

    def __init__(self, pid, polls_alive):
        self.pid, self._polls = pid, polls_alive
        r, w = os.pipe()
        os.close(w)  # a closed write end: the sentinel is ready, as a dead process's is
        self.sentinel = r

    def is_alive(self):
        self._polls -= 1
        return self._polls >= 0


class _LiveWorker:
    def __init__(self, pid):
        self.pid = pid
        self.sentinel, self._w = os.pipe()  # never ready

    def is_alive(self):
        return True


def test_dead_workers_waits_past_a_closed_sentinel():
    # CI once lost this race: the batch's socket was reset by the killed worker, its sentinel was
    # ready, but it was not yet a zombie, so it counted as alive and the error was not a death.
    from types import SimpleNamespace

    from pyframepred.training.signals import dead_workers

    it = SimpleNamespace(_workers=[_LiveWorker(11), _ExitingWorker(12, polls_alive=3)])
    try:
        assert dead_workers(it, wait=5.0) == [12]
        live = SimpleNamespace(_workers=[_LiveWorker(13)])
        assert dead_workers(live, wait=0.2) == []  # gives up at the deadline
        assert dead_workers(SimpleNamespace(_workers=[_ExitingWorker(14, polls_alive=3)])) == []
    finally:
        for w in it._workers:
            os.close(w.sentinel)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("rep", [1, 2])
def test_dead_worker_is_reported_and_last_checkpoint_saved(rep, data, tmp_path):
    out = tmp_path / "run"
    proc = _popen_train(data, out)
    seen = _read_until(proc, "step 2: val")
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)  # what the OOM killer does
    err = _finish(proc, seen)
    assert proc.returncode == EXIT_WORKER_DIED == 4, err
    assert "a data-loading worker died" in err and "--resume" in err, err
    assert "Traceback" not in err, err
    assert ckpt_format.load(out / "last.pt")["step"] >= 2


# ----------------------------------------------------------------------------- folder ownership
def test_second_run_into_a_finished_run_refuses_and_changes_nothing(run, data, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = _snapshot(out)
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out)] + TINY
    assert tr.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--resume" in line and "--overwrite" in line, line
    assert _snapshot(out) == before  # byte-identical
    assert tr.main(argv + ["--steps", "2", "--overwrite"]) == 0
    assert ckpt_format.load(out / "last.pt")["step"] == 2


def test_predict_and_evaluate_never_write_over_their_inputs(run, data, tmp_path, capsys):
    ckpt = tmp_path / "best.pt"
    shutil.copy(run / "best.pt", ckpt)
    video = tmp_path / "clip.mp4"
    shutil.copy(_video(data), video)
    (tmp_path / "link.mp4").symlink_to(video)  # the same file under another name
    before = _snapshot(tmp_path)
    for out in (video, tmp_path / "link.mp4"):
        assert pr.main([str(ckpt), str(video), "--out", str(out)]) == 2
        assert "is the input video" in _one_error_line(capsys.readouterr().err)
    assert ev.main([str(ckpt), "--data", str(data), "--out", str(ckpt)]) == 2
    assert "must be a .json file" in _one_error_line(capsys.readouterr().err)
    named_json = tmp_path / "weights.json"  # a checkpoint under a .json name
    shutil.copy(ckpt, named_json)
    before = _snapshot(tmp_path)
    assert ev.main([str(named_json), "--data", str(data), "--out", str(named_json)]) == 2
    assert "is the checkpoint" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_evaluate_beside_a_read_only_checkpoint_names_the_way_out(run, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic, "create_temp", read_only)  # the folder's write test fails
    assert ev.main([str(run / "best.pt")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert (
        "eval.json" in line and "Permission denied" in line and "--out FILE to write it elsewhere" in line
    ), line


def test_a_new_run_refuses_to_replace_files_of_a_run_without_checkpoints(data, tmp_path, capsys):
    """A folder with a run's other files and no checkpoint (a run that failed before its first
    save, or a project folder with a config.json of its own) is not written over silently."""
    out = tmp_path / "project"
    (out / "samples").mkdir(parents=True)
    (out / "config.json").write_text('{"mine": true}')
    (out / "history.json").write_text("[]")
    (out / "samples" / "final.gif").write_bytes(b"GIF89a")
    (out / "notes.txt").write_text("kept")
    before = _snapshot(out)
    argv = ["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "2"] + TINY
    assert tr.main(argv) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "config.json, history.json, samples/final.gif" in line and "--overwrite" in line, line
    assert _snapshot(out) == before
    assert tr.main(argv + ["--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["model"] == "autoencoder"
    assert (out / "notes.txt").read_text() == "kept"


def test_overwrite_keeps_the_old_run_until_the_new_one_saves(run, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "eval.json").write_text("{}")  # the old run's evaluation
    old = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}
    # a new run that fails before its first save (no videos): the old checkpoints stay
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = ["--model", "seq2seq", "--out", str(out), "--overwrite"] + TINY
    assert tr.main(argv + ["--data", str(empty)]) == 2
    assert "no video" in _one_error_line(capsys.readouterr().err)
    assert {name: (out / name).read_bytes() for name in old} == old

    # one whose first save fails (a full disk): the same
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_format, "save", full_disk)
    assert tr.main(argv + ["--data", str(data), "--steps", "2"]) == EXIT_WRITE_FAILED
    assert {name: (out / name).read_bytes() for name in old} == old and (out / "eval.json").exists()
    monkeypatch.undo()
    # one that saves replaces them, and the old evaluation goes with them
    assert tr.main(argv + ["--data", str(data), "--steps", "2"]) == 0
    for name in old:
        assert ckpt_format.load(out / name)["config"]["model"] == "seq2seq"
    assert not (out / "eval.json").exists()


def test_overwrite_removes_the_old_runs_samples_and_event_files_once_it_saves(run, data, tmp_path, capsys):
    """Files an old run wrote under names of its own (samples of its steps, TensorBoard event
    files) would mix with the new run's: they go at the new run's first save, not before, and a
    file the new run has written under an old name by then is the new run's and stays."""
    out = tmp_path / "run"
    shutil.copytree(run, out)
    (out / "samples").mkdir(exist_ok=True)
    (out / "tensorboard").mkdir()
    old = {
        "samples/step_000001.gif": b"GIF89a old step 1",
        "samples/step_000999.gif": b"GIF89a old step 999",
        "samples/final.gif": b"GIF89a old final",
        "tensorboard/events.out.tfevents.1700000000.host.1.0": b"old events",
    }
    for name, data_ in old.items():
        (out / name).write_bytes(data_)
    (out / "samples" / "mine.png").write_bytes(b"not a run's")
    argv = ["--model", "seq2seq", "--out", str(out), "--overwrite"] + TINY
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tr.main(argv + ["--data", str(empty)]) == 2  # fails before its first save
    capsys.readouterr()
    assert all((out / name).read_bytes() == data_ for name, data_ in old.items())
    # steps 1 and 2 sampled; the first save (step 2) comes after step 1's sample
    assert tr.main(argv + ["--data", str(data), "--steps", "2", "--sample-every", "1"]) == 0
    left = sorted(p.relative_to(out).as_posix() for p in (out / "samples").iterdir())
    assert left == [
        "samples/final.gif",
        "samples/mine.png",
        "samples/step_000001.gif",
        "samples/step_000002.gif",
    ]
    for name in ("samples/step_000001.gif", "samples/final.gif"):  # the new run's
        assert (out / name).read_bytes()[:6] == b"GIF89a" and (out / name).read_bytes() != old[name]
    assert list((out / "tensorboard").iterdir()) == []


def test_resume_into_a_folder_of_a_runs_files_without_checkpoints_refuses(run, data, tmp_path, capsys):
    """Resuming into another folder that holds files a run writes but no last.pt (a run that
    failed before its first save, a project's own config.json) is refused as a new run is."""
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"mine": true}')
    before = _snapshot(out)
    resume = ["--resume", str(run / "last.pt"), "--steps", "6", "--no-progress", "--out", str(out)]
    assert tr.main(resume) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "config.json" in line and "--overwrite" in line, line
    assert _snapshot(out) == before
    assert tr.main(resume + ["--overwrite"]) == 0
    assert ckpt_format.load(out / "last.pt")["step"] == 6
    assert json.loads((out / "config.json").read_text())["model"] == "autoencoder"
    # resuming in the checkpoint's own folder is not "another folder"
    assert tr.main(["--resume", str(out / "last.pt"), "--steps", "8", "--no-progress"]) == 0


def test_resume_into_another_runs_folder_refuses_and_changes_nothing(data, tmp_path, capsys):
    ae = tmp_path / "ae"  # an autoencoder run: step 2, then resumed in place to step 4
    base = ["--model", "autoencoder", "--data", str(data), "--out", str(ae)] + TINY
    assert tr.main(base + ["--steps", "2"]) == 0
    shutil.copy(ae / "last.pt", tmp_path / "ae2.pt")
    assert tr.main(["--resume", str(ae / "last.pt"), "--steps", "4", "--no-progress"]) == 0
    shutil.copy(ae / "last.pt", tmp_path / "ae4.pt")
    other = tmp_path / "other"  # a seq2seq run at step 2
    argv = ["--model", "seq2seq", "--data", str(data), "--out", str(other), "--steps", "2"] + TINY
    assert tr.main(argv) == 0
    before = _snapshot(other)
    capsys.readouterr()
    resume = ["--resume", str(tmp_path / "ae4.pt"), "--steps", "6", "--no-progress"]
    assert tr.main(resume + ["--out", str(other)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "another run's checkpoints (last.pt: model seq2seq, step 2)" in line, line
    assert "--overwrite" in line, line
    assert _snapshot(other) == before
    # an earlier checkpoint of the same run is replaced, as before
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(tmp_path / "ae2.pt", early / "last.pt")
    assert tr.main(resume + ["--out", str(early)]) == 0
    assert ckpt_format.load(early / "last.pt")["step"] == 6
    # with --overwrite the other run's files go once the resumed run has saved
    (other / "eval.json").write_text("{}")
    assert tr.main(resume + ["--out", str(other), "--overwrite"]) == 0
    assert ckpt_format.load(other / "last.pt")["config"]["model"] == "autoencoder"
    assert (
        not (other / "best.pt").exists()
        or ckpt_format.load(other / "best.pt")["config"]["model"] == "autoencoder"
    )
    assert not (other / "eval.json").exists()


def test_a_locked_folder_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with RunFolderLock(out):  # another run holds the folder
        assert tr.main(["--model", "autoencoder", "--data", str(data), "--out", str(out)] + TINY) == 2
        assert "in use by another training run" in _one_error_line(capsys.readouterr().err)
        assert not (out / "last.pt").exists()
    assert (
        tr.main(["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "2"] + TINY)
        == 0
    )  # free again


def test_lock_is_given_back_and_stale_temps_removed(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = TrainConfig(
        model="autoencoder", data=str(data), out=str(out), preset="tiny", progress=False, steps=2
    )
    Trainer(cfg).fit()
    stale = out / ".last.pt.0123abcd.tmp"  # a save killed half-way
    stale.write_bytes(b"x" * 1000)
    t = Trainer(dataclasses_replace(cfg, steps=3), resume=out / "last.pt")
    assert not stale.exists()
    with pytest.raises(OutputError, match="in use"):
        Trainer(cfg, resume=out / "last.pt")
    t.fit()
    with RunFolderLock(out):  # fit() gave it back
        pass


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def test_plot_temp_name_is_unique(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".loss.tmp.png").mkdir()  # the old fixed temp name, taken
    assert (
        tr.main(["--model", "autoencoder", "--data", str(data), "--out", str(out), "--steps", "2"] + TINY)
        == 0
    )
    assert (out / "loss.png").stat().st_size > 0
    assert not list(out.glob(".loss.png.*.tmp"))


def test_resume_from_best_does_not_replace_a_newer_last(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    base = ["--model", "autoencoder", "--data", str(data), "--out", str(out)] + TINY
    assert tr.main(base + ["--steps", "2"]) == 0
    shutil.copy(out / "last.pt", tmp_path / "step2.pt")
    assert tr.main(["--resume", str(out / "last.pt"), "--steps", "4", "--no-progress"]) == 0
    shutil.copy(tmp_path / "step2.pt", out / "best.pt")  # best.pt older than last.pt
    before = _snapshot(out)
    capsys.readouterr()
    assert tr.main(["--resume", str(out / "best.pt"), "--steps", "6", "--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "newer (step 4) last.pt" in line and "--overwrite" in line, line
    assert _snapshot(out) == before
    assert tr.main(["--resume", str(out / "best.pt"), "--steps", "3", "--no-progress", "--overwrite"]) == 0
    assert ckpt_format.load(out / "last.pt")["step"] == 3


def _two_step_run(data, out):
    """A tiny autoencoder run of 2 steps in ``out``: its config and its last checkpoint."""
    cfg = TrainConfig(
        model="autoencoder", data=str(data), out=str(out), preset="tiny", progress=False, steps=2
    )
    Trainer(cfg).fit()
    return cfg, ckpt_format.load(out / "last.pt")


def test_resuming_with_another_process_count_warns(data, tmp_path):
    out = tmp_path / "run"
    cfg, ckpt = _two_step_run(data, out)
    ckpt["world_size"] = 2  # as written by a torchrun run of two processes
    torch.save(ckpt, tmp_path / "ddp.pt")
    with pytest.warns(
        UserWarning, match=r"trained with 2 process\(es\), this run has 1: each step now takes 1 x"
    ):
        t = Trainer(dataclasses_replace(cfg, steps=3, out=str(tmp_path / "more")), resume=tmp_path / "ddp.pt")
    assert not t.rng_restored
    t.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same process count: no warning
        t = Trainer(dataclasses_replace(cfg, steps=3), resume=out / "last.pt")
    assert t.rng_restored
    t.close()


def test_resuming_a_checkpoint_validated_with_the_old_psnr_picks_best_anew(data, tmp_path):
    out = tmp_path / "run"
    cfg, ckpt = _two_step_run(data, out)
    assert ckpt["psnr_max"] == pytest.approx(58.9226, abs=1e-4)
    del ckpt["psnr_max"]  # as written before the 8-bit floor
    ckpt["best_psnr"] = 106.0
    torch.save(ckpt, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="validated with an earlier PSNR"):
        t = Trainer(dataclasses_replace(cfg, steps=4, out=str(tmp_path / "more")), resume=tmp_path / "old.pt")
    assert t.best_psnr == -math.inf
    t.fit()
    assert ckpt_format.load(tmp_path / "more" / "best.pt")["step"] in (3, 4)  # picked anew


def test_resuming_on_another_split_is_refused_and_other_clips_pick_best_anew(data, tmp_path, capsys):
    """The checkpoint records the videos its run trained and validated on: a resumed run that
    would train on a held-out video (or hold out a trained-on one) is refused before training;
    one that validates on other clips of the same videos picks best.pt anew."""
    out = tmp_path / "run"
    cfg, ckpt = _two_step_run(data, out)
    split = ckpt["split"]
    assert split["train"] and split["val"] and not set(split["train"]) & set(split["val"])
    t = Trainer(dataclasses_replace(cfg, steps=3, out=str(tmp_path / "same")), resume=out / "last.pt")
    assert t.best_psnr == ckpt["best_psnr"]  # the same split and clips: nothing changes
    t.close()
    swapped = dict(ckpt, split=dict(split, train=split["val"], val=split["train"]))
    torch.save(swapped, tmp_path / "swapped.pt")
    argv = ["--resume", str(tmp_path / "swapped.pt"), "--steps", "3", "--out", str(tmp_path / "x")]
    capsys.readouterr()
    assert tr.main(argv + ["--no-progress"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "another split of the data" in line and "now held out" in line and "now trained on" in line, line
    assert split["val"][0] in line and "--test-fraction" in line and "--split-index" in line, line
    assert not (tmp_path / "x" / "last.pt").exists()
    # other validation clips of the same videos (another val_clips): a warning, best picked anew
    with pytest.warns(UserWarning, match="validates on other clips"):
        t = Trainer(
            dataclasses_replace(cfg, steps=3, val_clips=1, out=str(tmp_path / "more")), resume=out / "last.pt"
        )
    assert t.best_psnr == -math.inf
    t.close()
    # a checkpoint from before the record, or with a malformed one, resumes unchecked
    torch.save({k: v for k, v in ckpt.items() if k != "split"}, tmp_path / "old.pt")
    torch.save(dict(ckpt, split=dict(split, train=[["x"]])), tmp_path / "odd.pt")
    for name in ("old", "odd"):
        t = Trainer(
            dataclasses_replace(cfg, steps=3, out=str(tmp_path / name)), resume=tmp_path / f"{name}.pt"
        )
        assert t.best_psnr == ckpt["best_psnr"]
        t.close()
    # validating on every video (test_fraction 0) holds none out: such a run resumes; one that
    # held some out does not go on training on them
    with pytest.raises(ConfigError, match=r"it held out are now trained on") as err:
        Trainer(
            dataclasses_replace(cfg, steps=3, test_fraction=0.0, out=str(tmp_path / "y")),
            resume=out / "last.pt",
        )
    assert "now held out" not in str(err.value)
    every = dataclasses_replace(cfg, test_fraction=0.0, out=str(tmp_path / "every"))
    with pytest.warns(UserWarning, match="not held-out"):
        Trainer(every).fit()
    with pytest.warns(UserWarning, match="not held-out"):
        t = Trainer(dataclasses_replace(every, steps=3), resume=tmp_path / "every" / "last.pt")
    t.close()


def test_evaluate_warns_of_test_side_videos_the_checkpoint_trained_on(run, tmp_path, capsys):
    """The folder changed since training (here: the record says so), moving a video the run
    trained on to the test side: evaluate names it, its scores not being held-out ones."""
    ckpt = ckpt_format.load(run / "best.pt")
    split = ckpt["split"]
    assert ev.main([str(run / "best.pt"), "--steps", "2", "--out", str(tmp_path / "a.json")]) == 0
    assert "were trained on" not in capsys.readouterr().err
    moved = split["val"][0]
    record = dict(split, train=split["train"] + [moved], val=split["val"][1:])
    torch.save(dict(ckpt, split=record), tmp_path / "changed.pt")
    assert ev.main([str(tmp_path / "changed.pt"), "--steps", "2", "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert f"1 of the {len(split['val'])} test-side videos were trained on by this checkpoint" in err, err
    assert moved in err


def test_lr_given_with_resume_is_applied(data, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(
        model="autoencoder", data=str(data), out=str(out), preset="tiny", progress=False, steps=2, lr=0.002
    )
    Trainer(cfg).fit()
    saved = ckpt_format.load(out / "last.pt")["optimizer"]["param_groups"][0]
    same = Trainer(dataclasses_replace(cfg, steps=4), resume=out / "last.pt")
    assert same.opt.param_groups[0]["lr"] == saved["lr"]  # not given: as saved
    assert same.opt.param_groups[0]["initial_lr"] == saved["initial_lr"] == 0.002
    same.close()
    t = Trainer(dataclasses_replace(cfg, steps=4, lr=0.0005), resume=out / "last.pt")
    g = t.opt.param_groups[0]
    assert g["initial_lr"] == 0.0005 and t.sched.base_lrs == [0.0005]
    assert g["lr"] == pytest.approx(0.0005 * t.lr_lambda(2))
    t.fit()
    ck = ckpt_format.load(out / "last.pt")
    assert ck["config"]["lr"] == 0.0005
    assert [r["lr"] for r in ck["history"]["train"][2:]] == pytest.approx(
        [0.0005 * t.lr_lambda(3), 0.0005 * t.lr_lambda(4)]
    )


def test_seed_must_not_be_negative(data, tmp_path, capsys):
    assert (
        tr.main(
            ["--model", "autoencoder", "--data", str(data), "--seed", "-1", "--out", str(tmp_path / "o")]
            + TINY
        )
        == 2
    )
    assert "--seed must be in" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- full disk
def _limited(limit):
    def pre():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit get EFBIG

    return pre


def test_full_disk_during_a_checkpoint_save(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    before = (out / "last.pt").read_bytes()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    limit = len(before) // 2  # room for small files, not a checkpoint
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyframepred.train",
            "--resume",
            str(out / "last.pt"),
            "--steps",
            "6",
            "--no-progress",
            "--threads",
            "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limited(limit),
        timeout=600,
    )
    assert proc.returncode == EXIT_WRITE_FAILED == 5, proc.stderr
    line = _one_error_line("\n".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("training ")))
    assert "cannot write the checkpoint" in line and "previous checkpoint is intact" in line
    assert (out / "last.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_eval_json_is_written_atomically(run, tmp_path):
    out = tmp_path / "eval.json"
    out.write_text('{"old": true}')
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyframepred.evaluate",
            str(run / "last.pt"),
            "--clips",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limited(600),
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot write --out" in proc.stderr
    assert json.loads(out.read_text()) == {"old": True}  # still the complete old file
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_writer_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "h.json"
    atomic.atomic_write_json(p, {"a": 1})

    def fail(tmp):
        Path(tmp).write_text('{"a": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError):
        atomic.atomic_write(p, fail)
    assert json.loads(p.read_text()) == {"a": 1} and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("cli", ["evaluate", "predict"])
def test_out_through_a_symlink_replaces_the_link_not_its_target(cli, run, data, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    link = tmp_path / ("e.json" if cli == "evaluate" else "p.gif")
    link.symlink_to(victim)
    if cli == "evaluate":
        assert ev.main([str(run / "last.pt"), "--clips", "2", "--out", str(link)]) == 0
        assert json.loads(link.read_text())["clips"] == 2
    else:
        assert pr.main([str(run / "last.pt"), str(_video(data)), "--steps", "2", "--out", str(link)]) == 0
    assert not link.is_symlink() and victim.read_text() == "precious"


# ----------------------------------------------------------------------------- indexing
def _copy_data(data, tmp_path) -> Path:
    root = tmp_path / "videos"
    shutil.copytree(data, root, ignore=shutil.ignore_patterns(".*"))
    return root


def test_fifo_named_mp4_is_skipped(data, tmp_path):
    root = _copy_data(data, tmp_path)
    n = len(find_videos(root))
    cls = sorted(p for p in root.iterdir() if p.is_dir())[0]
    os.mkfifo(cls / "v_Fifo_g01_c01.mp4")
    os.symlink(root / "missing.mp4", cls / "v_Broken_g01_c01.mp4")
    assert len(find_videos(root)) == n
    infos = index_videos(root, cache=None, progress=False)  # returns: nothing blocks
    assert len(infos) == n and all(i.ok for i in infos)


def test_symlink_loop_is_walked_once(data, tmp_path):
    root = _copy_data(data, tmp_path)
    n = len(find_videos(root))
    cls = sorted(p for p in root.iterdir() if p.is_dir())[0]
    os.symlink(root, cls / "loop")  # a link back to the top
    os.symlink(cls, root / "again")  # a second link to a class folder
    found = find_videos(root)
    assert len(found) == n and not any("loop" in f or "again/" in f for f in found), found


def test_latin1_file_name_is_indexed_and_decoded(data, tmp_path):
    root = tmp_path / "videos"
    (root / "Cafe").mkdir(parents=True)
    name = os.fsdecode(b"v_Caf\xe9_g01_c01.mp4")
    shutil.copy(_video(data), root / "Cafe" / name)
    infos = index_videos(root, cache=None, progress=False)
    assert len(infos) == 1 and infos[0].ok and infos[0].frames > 0, infos
    frames = decode_frames(root / infos[0].path, [0, 1], 32)
    assert frames.shape == (2, 32, 32, 3)
    # the index file takes the name too and is reused
    index_videos(root, progress=False)
    again = index_videos(root, progress=False)
    assert again == infos


@pytest.mark.parametrize(
    "entry",
    [
        {"frames": "abc"},
        {"frames": -5},
        {"fps": float("nan")},
        {"error": 7},
        {"height": 0},
    ],
)
def test_crafted_index_entries_are_reprobed(entry, data, tmp_path):
    root = _copy_data(data, tmp_path)
    good = index_videos(root, cache="data", progress=False)
    index_file = root / ".pyframepred-index.json"
    doc = json.loads(index_file.read_text())
    first = good[0].path
    doc["videos"][first].update(entry)
    index_file.write_text(json.dumps(doc))
    again = index_videos(root, cache="data", progress=False)
    assert again == good


def test_non_utf8_index_file_is_ignored(data, tmp_path):
    root = _copy_data(data, tmp_path)
    good = index_videos(root, cache=None, progress=False)
    (root / ".pyframepred-index.json").write_bytes(b'{"version": 1, "videos": {"\xff": 1}}')
    assert index_videos(root, cache="data", progress=False) == good
