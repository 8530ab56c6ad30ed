"""ConvLSTM layer training step, where users feel it: ``pyframepred.nn.ConvLSTM`` against the
formulation most code copies (one convolution over ``cat(x, h)`` per step, eager gate math),
``torch.compile`` of that formulation, and our own reference module (``fused=False``); and, with
``--impls fused fused-compile fused-compile-traced cat-compile`` (``record.py --suite
layer_compile``), the fused layer under ``torch.compile`` against itself eager, and compiled as it
was before its training operators (traced into the schedule's steps).

Two ways to run it:

* ``pytest benchmarks --benchmark-only`` collects the quick cases below (pytest-benchmark
  times each implementation in turn);
* ``python benchmarks/bench_layer.py [--malloc-tuned] [--out FILE.json]`` is the recorded
  measurement: every implementation timed **round-robin in one process** (the order rotates every
  round, so drift hits all alike), float32 NCHW and bf16 autocast channels_last, at the sizes of
  the project's targets, with page faults per step and a profile split (convolutions vs the rest)
  of the fused layer. ``--malloc-tuned`` first applies the glibc tuning of a caching allocator
  (big blocks kept in the process); the default is the plain allocator users get. The record says
  which.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import sys
import time
from datetime import date

import machine
import pytest
import torch
from torch import nn

from pyframepred.io import atomic_write_bytes
from pyframepred.nn import ConvLSTM
from pyframepred.ops import _layer as layer_ops

# (N, Cin, hidden per layer, H, W), T = 10: the sizes of the layer targets.
SIZES = {
    "8x16x[32]@32": (8, 16, [32], 32, 32),
    "8x16x[32,32]@32": (8, 16, [32, 32], 32, 32),
    "4x64x[64]@64": (4, 64, [64], 64, 64),
}
QUICK = {"2x4x[8]@16": (2, 4, [8], 16, 16)}
T = 10
IMPLS = ["fused", "cat", "cat-compile", "reference"]
# The layer under torch.compile (a model compiled whole, the layer in it): against eager fused and
# the compiled common formulation.
# fused-compile-traced: compiled as before the layer's two training operators, traced through the C++
# autograd into the schedule's steps.
COMPILE_IMPLS = ["fused", "fused-compile", "fused-compile-traced", "cat-compile"]
MODES = {
    "float32": (torch.float32, torch.contiguous_format),
    "bf16-cl": (torch.bfloat16, torch.channels_last),
}


class CatCell(nn.Module):
    """The common ConvLSTM cell: one convolution over cat(x, h), gates split, eager math."""

    def __init__(self, cin: int, hidden: int, k: int = 3):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(cin + hidden, 4 * hidden, k, padding=k // 2)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class CatConvLSTM(nn.Module):
    """Stacked common cells over (N, T, C, H, W), as blog-post ConvLSTMs do."""

    def __init__(self, cin: int, hidden: list):
        super().__init__()
        self.cells = nn.ModuleList(CatCell(cin if i == 0 else hidden[i - 1], c) for i, c in enumerate(hidden))

    def forward(self, x):
        N, steps, _, H, W = x.shape
        layer_in = list(x.unbind(1))
        for cell in self.cells:
            h = x.new_zeros(N, cell.hidden, H, W)
            c = torch.zeros_like(h)
            outs = []
            for t in range(steps):
                h, c = cell(layer_in[t], (h, c))
                outs.append(h)
            layer_in = outs
        return torch.stack(layer_in, 1)


def build(impl: str, size, fmt, device="cpu"):
    N, cin, hidden, H, W = size
    if impl.startswith("cat"):
        model = CatConvLSTM(cin, hidden)
    else:
        model = ConvLSTM(cin, hidden, 3, num_layers=len(hidden), fused=impl.startswith("fused"))
    model = model.to(device=device, memory_format=fmt)
    fn = model
    if "-compile" in impl:
        fn = torch.compile(model, dynamic=False)
    one_node = impl != "fused-compile-traced"

    def out_of(x):
        layer_ops._compile_as_one_node = one_node
        try:
            y = fn(x)
        finally:
            layer_ops._compile_as_one_node = True
        return y[0] if isinstance(y, tuple) else y

    return model, out_of


def make_step(impl, size, mode, device="cpu"):
    """One training step of `impl`: forward over T steps under autocast (bf16) or none, then the
    parameters' gradients of out.sum(). On CUDA the step ends with a synchronisation, so a timer
    around it measures the GPU's work."""
    dtype, fmt = MODES[mode]
    N, cin, hidden, H, W = size
    model, out_of = build(impl, size, fmt, device)
    x = torch.randn(N, T, cin, H, W, device=device)
    if fmt == torch.channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=fmt).unflatten(0, (N, T))
    params = list(model.parameters())
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
            out = out_of(x)
        torch.autograd.grad(out.float().sum(), params)
        sync()

    return step


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# Convolutions (ATen's, oneDNN's, cuDNN's, ours), not the fused cell's convlstm_gates_* (whose
# names contain "conv" too).
_CONV_KEYS = ("convolution", "mkldnn", "conv2d")


def _is_conv(name: str) -> bool:
    return any(k in name for k in _CONV_KEYS)


def _under_conv(ev) -> bool:
    """True when the operator event `ev` is a convolution or runs inside one."""
    while ev is not None:
        if _is_conv(ev.name):
            return True
        ev = ev.cpu_parent
    return False


def profile_split(step, device="cpu") -> dict:
    """One step's time split into convolutions and everything else: self CPU time of the
    operators on the CPU; on CUDA the GPU time of the kernels, each counted under the operator
    that launched it."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step()
    conv = other = 0.0
    if cuda:
        for ev in prof.events():
            if ev.device_type != DeviceType.CPU:
                continue  # kernels are counted through the operators that launched them
            us = ev.self_device_time_total
            if _under_conv(ev):
                conv += us
            else:
                other += us
    else:
        for ev in prof.key_averages():
            us = ev.self_cpu_time_total
            if _is_conv(ev.key):
                conv += us
            else:
                other += us
    total = conv + other
    return {
        "conv_ms": round(conv / 1e3, 2),
        "other_ms": round(other / 1e3, 2),
        "conv_share": round(conv / total, 3) if total else None,
        "time": "GPU kernels" if cuda else "CPU self",
        "top": top_events(prof, cuda),
    }


def top_events(prof, cuda: bool, n: int = 12) -> list:
    """The `n` costliest entries of one profiled step, for reading a record after the machine is
    gone (a GPU lease): on CUDA the kernels and copies by GPU time, on the CPU the operators by
    self CPU time; each with its milliseconds and count."""
    from torch.autograd import DeviceType

    rows = []
    for ev in prof.key_averages():
        if cuda and ev.device_type == DeviceType.CPU:
            continue  # operators: their kernels are listed themselves
        us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
        if us > 0:
            rows.append((us, ev.key, ev.count))
    rows.sort(key=lambda r: -r[0])
    return [{"name": key[:120], "ms": round(us / 1e3, 3), "calls": count} for us, key, count in rows[:n]]


def native_bf16() -> bool:
    """True on CPUs with bf16 arithmetic (AVX512-BF16 or AMX); elsewhere oneDNN emulates bf16
    convolutions, several times slower than float32 (8x for a 3x3 conv on an AVX2 EPYC)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def measure(sizes, modes, impls, rounds, warmup=2, device="cpu", on_row=None):
    """Round-robin timings of every implementation, per size and mode; `on_row(rows)` is called
    with the rows so far as each one is complete (a record that is cut short keeps them)."""
    results = []
    first = next(iter(sizes))
    cpu = device == "cpu"
    for size_name, size in sizes.items():
        for mode in modes:
            if cpu and mode == "bf16-cl" and size_name != first and not native_bf16():
                print(
                    f"{size_name} {mode}: skipped, no native bf16 on this CPU (emulated bf16 "
                    f"convolutions would take minutes per step)",
                    flush=True,
                )
                continue
            steps = {impl: make_step(impl, size, mode, device) for impl in impls}
            for impl in impls:
                for _ in range(warmup):
                    steps[impl]()
            times = {impl: [] for impl in impls}
            faults = {impl: [] for impl in impls}
            for r in range(rounds):
                order = impls[r % len(impls) :] + impls[: r % len(impls)]
                for impl in order:
                    f0 = _faults()
                    t0 = time.perf_counter()
                    steps[impl]()
                    times[impl].append(time.perf_counter() - t0)
                    faults[impl].append(_faults() - f0)
            row = {
                "size": size_name,
                "shape": {
                    "N": size[0],
                    "T": T,
                    "Cin": size[1],
                    "hidden": size[2],
                    "H": size[3],
                    "W": size[4],
                },
                "mode": mode,
                "impls": {},
            }
            for impl in impls:
                ts = sorted(times[impl])
                q = statistics.quantiles(ts, n=4) if len(ts) >= 4 else [ts[0], ts[0], ts[-1]]
                row["impls"][impl] = {
                    "median_ms": round(statistics.median(ts) * 1e3, 3),
                    "min_ms": round(ts[0] * 1e3, 3),
                    "max_ms": round(ts[-1] * 1e3, 3),
                    "iqr_over_median": round((q[2] - q[0]) / statistics.median(ts), 3),
                    "faults_per_step": int(statistics.median(faults[impl])),
                }
            # Paired ratios: in each round, the other implementation's time over fused's.
            for impl in impls:
                if impl == "fused":
                    continue
                ratios = sorted(b / a for a, b in zip(times["fused"], times[impl]))
                row["impls"][impl]["fused_speedup_median"] = round(statistics.median(ratios), 3)
                row["impls"][impl]["fused_speedup_range"] = [round(ratios[0], 3), round(ratios[-1], 3)]
            for impl in ("fused", "cat"):
                if impl in steps:
                    row[f"profile_{impl}"] = profile_split(steps[impl], device)
            results.append(row)
            print(json.dumps(row), flush=True)
            if on_row is not None:
                on_row(results)
            del steps
    return results


def machine_info(malloc_tuned: bool, device: str = "cpu") -> dict:
    flags = ""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not model.strip():
                    model = line.split(":", 1)[1].strip()
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in flags]
    from pyframepred import _extension  # noqa: F401

    try:  # the level the CPU kernels run at (chosen at load time from the CPU)
        from pyframepred.ops import cpu_isa

        built_isa = cpu_isa()
    except ImportError:
        built_isa = "unknown"
    return {
        "date": date.today().isoformat(),
        "cpu": model,
        "cpu_isa_flags": isa,
        "extension_cpu_isa": built_isa,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "allocator": "glibc tuned (mmap/trim thresholds 1 GiB)" if malloc_tuned else "glibc default",
        # ATen's vector level (ATEN_CPU_CAPABILITY caps it, and Inductor's with it) and any caps
        # set for this run: a record of a capped run says so (an AVX2 CPU emulated on an AVX-512 one)
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_caps": machine.isa_caps(),
    } | (gpu_info() if device.startswith("cuda") else {})


def gpu_info() -> dict:
    """The GPU and the settings its float32 convolutions ran with (TF32 is on by default for
    cuDNN's convolutions: every implementation's float32 steps use it alike)."""
    return {
        "device": "cuda",
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def tune_malloc() -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--malloc-tuned", action="store_true")
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--modes", nargs="*", default=list(MODES))
    ap.add_argument("--impls", nargs="*", default=IMPLS, choices=IMPLS + COMPILE_IMPLS[1:3])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=None, help="write the record (JSON) here, row by row")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    if args.malloc_tuned:
        tune_malloc()
    machine.separate_inductor_cache()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = {k: {**SIZES, **QUICK}[k] for k in args.sizes}
    record = {
        "machine": machine_info(args.malloc_tuned, args.device),
        "T": T,
        "rounds": args.rounds,
        "results": [],
    }

    def save(rows):  # after every row: a run cut short (a GPU lease ending) keeps what it has
        record["results"] = rows
        if args.out:
            atomic_write_bytes(args.out, json.dumps(record, indent=1).encode(), fsync=False)

    save(measure(sizes, args.modes, args.impls, args.rounds, device=args.device, on_row=save))
    return 0


# --- quick pytest-benchmark cases, collected by `pytest benchmarks --benchmark-only` ---------


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("impl", IMPLS + ["fused-compile"])
def test_layer_training_step(benchmark, impl, mode):
    if not os.environ.get("PYFRAMEPRED_BENCH_DEVICES", "cpu").startswith("cpu"):
        pytest.skip("CPU layer step")
    size = QUICK["2x4x[8]@16"]
    benchmark.group = f"convlstm-layer training step T={T} {mode} 2x4x[8]@16"
    step = make_step(impl, size, mode)
    step()
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(impl=impl, mode=mode)


if __name__ == "__main__":
    sys.exit(main())
