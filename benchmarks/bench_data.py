"""Data-loading benchmark: clips per second through a ``DataLoader``.

Clips of 8 frames at 64x64 (the default training setting), batches of 16, random starts
(``train=True``), with 0 and 2 worker processes, for

* ``VideoClips`` -- decord decodes only the needed frames, directly at 64x64;
* a naive loader -- decord decodes the whole video at its own size, then 8 frames are picked and
  resized with ``torch.nn.functional.interpolate``,

on two data sets written at the start: the default synthetic set (72 H.264 MP4 videos, 64x64,
40-60 frames) and a UCF-101-like set (24 MPEG-4 AVI videos, 320x240, 150 frames, 25 fps: the
size, codec and typical length of UCF-101).

Run::

    pytest benchmarks/bench_data.py --benchmark-only       # quick: small data sets, one pass;
                                                           # --bench-full: the recorded sizes
    python benchmarks/record.py --suite data               # records the full sizes

Only the script mode (``python benchmarks/bench_data.py``, which ``record.py`` calls; about a
minute on 2 cores) writes ``benchmarks/results/data_cpu.json`` and ``data_cpu.md``; a pytest run
writes nothing.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import machine
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pyframepred.data import VideoClips, normalize, synthetic

RESULTS = Path(__file__).resolve().parent / "results"
FRAMES, SIZE, BATCH = 8, 64, 16

# data set -> (clips per measured pass, timed passes): recorded sizes, and the quick ones
DATASETS = {"synthetic-64x64": (144, 3), "ucf-like-320x240": (48, 2)}
QUICK_DATASETS = {"synthetic-64x64": (32, 1), "ucf-like-320x240": (16, 1)}
LOADERS = ("VideoClips", "naive-full-decode")
WORKERS = (0, 2)


# --------------------------------------------------------------------------- data sets
_LOAD_AT_START: list[float] = []


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def make_datasets(base: Path, full: bool = True) -> dict[str, Path]:
    """The two data sets; ``full=False`` writes small versions of them (quick runs)."""
    _LOAD_AT_START[:] = [_load()]
    if full:
        roots = {"synthetic-64x64": synthetic.generate(base / "synthetic", progress=False)}
    else:
        roots = {
            "synthetic-64x64": synthetic.generate(
                base / "synthetic", videos_per_class=2, groups_per_class=2, frames=(20, 24), progress=False
            )
        }
    ucf = base / "ucf-like"
    videos, frames = (6, 150) if full else (1, 40)
    if not (ucf / "done").exists():
        classes = ("MovingObjects", "CameraPan", "Parallax", "Handheld")
        for ci, cls in enumerate(classes):
            for k in range(videos):
                video = synthetic.render_video(cls, frames, 240, 320, [1, ci, k], [2, ci, k])
                path = ucf / cls / f"v_{cls}_g{k + 1:02d}_c01.avi"
                path.parent.mkdir(parents=True, exist_ok=True)
                synthetic.write_video(path, video, 25, codec="mpeg4", options={"qscale": "4", "g": "12"})
        (ucf / "done").write_text("")
    roots["ucf-like-320x240"] = ucf
    return roots


class NaiveClips(Dataset):
    """Baseline: decode the whole video, then select the frames and resize them."""

    def __init__(self, ref: VideoClips):
        self.paths = ref.paths
        self.frames = ref.frames
        self.clips_per_video = ref.clips_per_video

    def __len__(self):
        return len(self.paths) * self.clips_per_video

    def __getitem__(self, index):
        import decord

        vr = decord.VideoReader(self.paths[index // self.clips_per_video], num_threads=1)
        video = vr.get_batch(list(range(len(vr)))).asnumpy()  # every frame, full size
        start = random.randint(0, len(video) - self.frames)
        clip = torch.from_numpy(video[start : start + self.frames]).permute(0, 3, 1, 2).float()
        clip = F.interpolate(clip, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        return normalize(clip)


def make_loader(root: Path, kind: str, workers: int, n_clips: int):
    ds = VideoClips(root, frames=FRAMES, interval=0, size=SIZE, train=True, test_fraction=0, progress=False)
    ds.clips_per_video = -(-n_clips // len(ds.videos))  # ceil: one pass >= n_clips
    if kind == "naive-full-decode":
        ds = NaiveClips(ds)
    loader = DataLoader(
        ds,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=False,
    )
    return loader, len(ds)


def one_pass(loader) -> int:
    n = 0
    for batch in loader:
        assert batch.shape[1:] == (FRAMES, 3, SIZE, SIZE) and batch.dtype == torch.float32
        n += batch.shape[0]
    return n


# --------------------------------------------------------------------------- reporting
def machine_info() -> dict:
    import av
    import decord

    info = machine.describe()
    info.update(
        {
            "cpu": info["cpu_model"],
            "gpu": info["gpu"] or "none (CPU only)",
            "decord": decord.__version__,
            "av": av.__version__,
            "numpy": np.__version__,
            "load_average_1min_at_start": _LOAD_AT_START[0] if _LOAD_AT_START else None,
            "load_average_1min_at_end": _load(),
        }
    )
    return info


def write_results(rows: list[dict], path_stem: Path = RESULTS / "data_cpu") -> None:
    if not rows:
        return
    info = machine_info()
    setting = {
        "frames": FRAMES,
        "interval": 0,
        "size": [SIZE, SIZE],
        "batch_size": BATCH,
        "train": True,
        "shuffle": True,
        "persistent_workers": True,
    }
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    with open(path_stem.with_suffix(".json"), "w") as fh:
        json.dump({"machine": info, "setting": setting, "results": rows}, fh, indent=2)
        fh.write("\n")
    lines = [
        "# Data loading: clips per second (CPU)",
        "",
        f"{info['date']} -- {info['cpu']}, {info['usable_cores']} cores usable "
        f"({info['cpu_count']} logical), {info['gpu']}; Python {info['python']}, "
        f"torch {info['torch']}, decord {info['decord']}, PyAV {info['av']}, "
        f"NumPy {info['numpy']}; {machine.isa_level(info)}; allocator: {info['allocator']}. "
        "Load average (1 min) at start / end: "
        f"{info['load_average_1min_at_start']} / {info['load_average_1min_at_end']} "
        "(the machine may be shared with other jobs; above ~0.5 the numbers are pessimistic).",
        "",
        f"Clips of {FRAMES} frames at {SIZE}x{SIZE}, float32 in [-1, 1], batches of {BATCH}, "
        "random starts, shuffled, persistent workers (worker start-up not timed). "
        "`VideoClips` decodes only the 8 needed frames, at 64x64, with decord; the naive loader "
        "decodes every frame of the video at full size and resizes the 8 it keeps. "
        "Rate = clips / mean time of one pass (best pass in brackets). CPU ms/clip (0 workers: "
        "all the work is in the main process, decoder threads included) is the CPU cost of "
        "loading, which is what the training process competes with on a 2-core machine.",
        "",
        "| data set | loader | workers | clips/s | (best) | CPU ms/clip | speed-up vs naive |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    naive = {
        (r["dataset"], r["workers"]): r["clips_per_s"] for r in rows if r["loader"] == "naive-full-decode"
    }
    for r in rows:
        base = naive.get((r["dataset"], r["workers"]))
        speed = f"{r['clips_per_s'] / base:.1f}x" if base and r["loader"] == "VideoClips" else ""
        # CPU time is only complete without workers (theirs is not counted here).
        cpu_ms = f"{r['main_process_cpu_ms_per_clip']:.1f}" if r["workers"] == 0 else ""
        lines.append(
            f"| {r['dataset']} | {r['loader']} | {r['workers']} | "
            f"{r['clips_per_s']:.0f} | {r['best_clips_per_s']:.0f} | "
            f"{cpu_ms} | {speed} |"
        )
    two = [r for r in rows if r["loader"] == "VideoClips" and r["workers"] == 2]
    if two:
        lines += [
            "",
            "**Headline (64x64, 8 frames, 2 workers, VideoClips):** "
            + "; ".join(
                f"{r['dataset']}: {r['clips_per_s']:.0f} clips/s "
                f"({r['clips_per_s'] / BATCH:.1f} batches of {BATCH}/s)"
                for r in two
            )
            + ".",
        ]
    import report

    text = "\n".join(
        line if line.startswith("|") else "\n".join(report.wrap(line)) if line else "" for line in lines
    )
    with open(path_stem.with_suffix(".md"), "w") as fh:
        fh.write(text + "\n")


def measure(root: Path, dataset: str, kind: str, workers: int, timer=None, sizes: dict = DATASETS) -> dict:
    n_clips, passes = sizes[dataset]
    loader, n = make_loader(root, kind, workers, n_clips)
    torch.manual_seed(0)
    random.seed(0)
    one_pass(loader)  # warm-up: starts the workers, fills the page cache
    times, cpu = [], []

    def timed():
        c0, t0 = time.process_time(), time.perf_counter()
        count = one_pass(loader)  # noqa: F821 - bound above; deleted only after the timing
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)  # this process only (all of the work at 0 workers)
        assert count == n

    if timer is None:
        for _ in range(passes):
            timed()
    else:
        timer(timed, passes)
    del loader
    mean = sum(times) / len(times)
    return {
        "dataset": dataset,
        "loader": kind,
        "workers": workers,
        "clips_per_pass": n,
        "passes": len(times),
        "seconds_per_pass": [round(t, 4) for t in times],
        "clips_per_s": n / mean,
        "best_clips_per_s": n / min(times),
        "main_process_cpu_ms_per_clip": 1000 * sum(cpu) / (n * len(cpu)),
    }


# --------------------------------------------------------------------------- pytest entry
try:
    import pytest
except ImportError:  # pragma: no cover - the script mode needs no pytest
    pytest = None

if pytest is not None:
    from conftest import full_size

    @pytest.fixture(scope="module")
    def roots():
        with tempfile.TemporaryDirectory(prefix="pfp-bench-data-") as tmp:
            yield make_datasets(Path(tmp), full=full_size())

    @pytest.mark.parametrize("workers", WORKERS)
    @pytest.mark.parametrize("kind", LOADERS)
    @pytest.mark.parametrize("dataset", list(DATASETS))
    def test_clips_per_second(benchmark, roots, dataset, kind, workers):
        def timer(fn, passes):
            benchmark.pedantic(fn, rounds=passes, iterations=1)

        row = measure(
            roots[dataset], dataset, kind, workers, timer, DATASETS if full_size() else QUICK_DATASETS
        )
        assert row["passes"] >= 1 and row["clips_per_s"] > 0
        benchmark.extra_info.update({k: row[k] for k in ("clips_per_pass", "clips_per_s")})
        benchmark.extra_info.update(
            allocator=machine.allocator(), bench_size="full" if full_size() else "quick"
        )


def _order(row):
    return (list(DATASETS).index(row["dataset"]), LOADERS.index(row["loader"]), row["workers"])


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Record the data-loading benchmark.")
    p.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "data_cpu",
        help="path of the results without suffix (.json and .md are written)",
    )
    p.add_argument("--quick", action="store_true", help="small data sets, one pass")
    a = p.parse_args(argv)
    machine.use_allocator(machine.allocator_from_env())
    rows = []
    with tempfile.TemporaryDirectory(prefix="pfp-bench-data-") as tmp:
        roots = make_datasets(Path(tmp), full=not a.quick)
        for dataset in DATASETS:
            for kind in LOADERS:
                for workers in WORKERS:
                    row = measure(
                        roots[dataset], dataset, kind, workers, sizes=QUICK_DATASETS if a.quick else DATASETS
                    )
                    print(
                        f"{dataset:18s} {kind:18s} workers={workers}: {row['clips_per_s']:7.1f} clips/s",
                        flush=True,
                    )
                    rows.append(row)
    write_results(rows, a.out)
    print(f"wrote {a.out}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
