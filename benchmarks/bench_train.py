"""Training throughput (clips/s) of each model, fused vs reference ops.

One training step is exactly :meth:`pyframepred.training.Trainer.train_step` (forward, loss,
backward, gradient clipping, Adam; for the multi-scale GAN a discriminator and a generator
update) at the quick preset's model sizes, batches of 8 clips of 64x64 frames, on a fixed random
batch (data loading is measured separately, in ``bench_data.py``). ``fused`` switches every op
the model uses between the C++/CUDA kernels (ConvLSTM cell for seq2seq, GDL for all three) and
the plain-PyTorch reference. The two settings are timed interleaved, ``--repeats`` times each, and
the median is reported. The speed-up is the median over repeats of the paired ratio
(reference time / fused time of the same repeat): this VM's speed drifts by up to 2x over minutes
(other guests on the host), and a pair timed back to back cancels that drift; the table also
gives the range of the paired ratios and in how many repeats fused was faster.

Run::

    pytest benchmarks/bench_train.py --benchmark-only      # a few rounds per setting; writes nothing
    python benchmarks/record.py --suite train              # the paired protocol below, recorded
    python benchmarks/bench_train.py [--device cpu|cuda] [--steps 10] [--repeats 5]

The script mode (a few minutes on 2 cores; what ``record.py`` calls) writes
``benchmarks/results/train_<device>.json`` and ``train_<device>.md``.
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import machine
import pytest
import torch
from conftest import full_size, rounds

from pyframepred.data import synthetic
from pyframepred.training import TrainConfig, Trainer

MODELS = ("seq2seq", "autoencoder", "multiscale")
RESULTS = Path(__file__).resolve().parent / "results"
_DATA = {}


def _data_root() -> str:
    if "root" not in _DATA:
        tmp = tempfile.mkdtemp(prefix="pyframepred-bench-train-")
        atexit.register(shutil.rmtree, tmp, True)  # the videos go when the process ends
        _DATA["root"] = str(
            synthetic.generate(
                tmp,
                videos_per_class=2,
                groups_per_class=2,
                frames=(16, 20),
                classes=synthetic.CLASSES[:2],
                progress=False,
            )
        )
    return _DATA["root"]


def make_trainer(model: str, fused: bool, device: str, batch: int, out: str) -> Trainer:
    cfg = TrainConfig(
        model=model,
        data=_data_root(),
        out=out,
        preset="quick",
        fused=fused,
        device=device,
        batch_size=batch,
        workers=0,
        progress=False,
    )
    return Trainer(cfg)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, clips: torch.Tensor, steps: int) -> float:
    """Seconds per step (mean over ``steps``), after one warm-up step."""
    trainer.train_step(clips)
    _sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(clips)
    _sync(trainer.device)
    return (time.perf_counter() - t0) / steps


def run(device: str = "cpu", steps: int = 5, repeats: int = 15, batch: int = 8, models=MODELS) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for model in models:
            torch.manual_seed(0)
            t_in = 4
            t_out = 4 if model == "seq2seq" else 1
            clips = torch.rand(batch, t_in + t_out, 3, 64, 64) * 2 - 1
            # A run folder each: a training run claims its folder, so two trainers cannot share one.
            trainers = {
                f: make_trainer(
                    model, f, device, batch, os.path.join(out, model, "fused" if f else "reference")
                )
                for f in (True, False)
            }
            # Same starting weights for both settings.
            trainers[False].model.load_state_dict(trainers[True].model.state_dict())
            if trainers[True].disc is not None:
                trainers[False].disc.load_state_dict(trainers[True].disc.state_dict())
            times = {True: [], False: []}
            for rep in range(repeats):
                # Alternate which setting goes first, so neither always follows the other.
                for f in (True, False) if rep % 2 == 0 else (False, True):
                    times[f].append(time_steps(trainers[f], clips.to(trainers[f].device), steps))
            med = {f: statistics.median(v) for f, v in times.items()}
            # Each repeat times the two settings back to back: their ratio cancels slow drifts
            # of the machine, and its spread says how far the median ratio can be trusted.
            paired = [r / f for f, r in zip(times[True], times[False])]
            rows.append(
                {
                    "model": model,
                    "batch": batch,
                    "frames": t_in + t_out,
                    "size": 64,
                    "fused_clips_per_s": batch / med[True],
                    "reference_clips_per_s": batch / med[False],
                    "fused_ms_per_step": 1e3 * med[True],
                    "reference_ms_per_step": 1e3 * med[False],
                    "ratio": statistics.median(paired),
                    "ratio_of_medians": med[False] / med[True],
                    "paired_ratio_min": min(paired),
                    "paired_ratio_max": max(paired),
                    "fused_faster_in": sum(p > 1 for p in paired),
                    "fused_ms_all": [1e3 * t for t in times[True]],
                    "reference_ms_all": [1e3 * t for t in times[False]],
                }
            )
            print(
                f"{model:12s} fused {rows[-1]['fused_clips_per_s']:7.1f} clips/s  reference "
                f"{rows[-1]['reference_clips_per_s']:7.1f} clips/s  ratio {rows[-1]['ratio']:.3f}",
                flush=True,
            )
    return {"rows": rows, "device": device, "steps": steps, "repeats": repeats}


def _machine(device: str) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    info = machine.describe()
    dev = torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} CPU threads"
    return (
        f"{info['cpu_model']} ({machine.isa_level(info)}), {dev}, torch {torch.__version__}, "
        f"Python {platform.python_version()}, {torch.get_num_threads()} torch threads, "
        f"allocator: {info['allocator']}; load average (1 min) {load:.2f}"
    )


def write_results(res: dict, load_start: float, stem: Path | None = None) -> None:
    dev = res["device"]
    stem = Path(stem) if stem is not None else RESULTS / f"train_{dev}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    res = dict(
        res,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        machine=_machine(dev),
        machine_info=machine.describe(),
        allocator=machine.allocator(),
        load_average_start=load_start,
    )
    stem.with_suffix(".json").write_text(json.dumps(res, indent=2))
    import report

    lines = [f"# Training throughput, fused vs reference ops ({dev})", ""]
    lines += report.wrap(
        f"{res['date']} -- {res['machine']} (at start: {load_start:.2f}; the machine may be "
        "shared, above ~0.5 the numbers are pessimistic)."
    ) + [""]
    lines += report.wrap(
        "One `Trainer.train_step` (forward, loss, backward, clip, Adam; GAN: D and G updates) at "
        f"the quick preset's model sizes, batch {res['rows'][0]['batch']}, 64x64, fixed random "
        f"batch; {res['repeats']} repeats of {res['steps']} steps per setting, the two settings "
        "back to back in each repeat; speed-up = median of the per-repeat ratios."
    ) + [""]
    lines += report.section_train([dict(res, _path=str(stem.with_suffix(".json")))])
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


# ----------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("model", MODELS)
def test_train_step(benchmark, model, fused, tmp_path):
    benchmark.group = f"train-step-{model}"
    tr = make_trainer(model, fused, "cpu", 8, str(tmp_path))
    clips = torch.rand(8, 8 if model == "seq2seq" else 5, 3, 64, 64) * 2 - 1
    tr.train_step(clips)
    benchmark.pedantic(
        tr.train_step, args=(clips,), rounds=rounds(5, 2), iterations=1, warmup_rounds=1 if full_size() else 0
    )
    benchmark.extra_info.update(
        clips_per_step=8,
        allocator=machine.allocator(),
        impl=("fused" if fused else "reference"),
        bench_size="full" if full_size() else "quick",
    )
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="path of the results without suffix (default: results/train_<device>)",
    )
    a = p.parse_args(argv)
    machine.use_allocator(machine.allocator_from_env())
    load = os.getloadavg()[0]
    res = run(a.device, a.steps, a.repeats, a.batch, tuple(a.models))
    write_results(res, load, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
