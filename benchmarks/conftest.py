"""Shared benchmark fixtures and options: devices, sizes, the allocator, the copy-bandwidth ceiling.

Run every suite (quick sizes, a few rounds; writes nothing in the checkout)::

    pytest benchmarks --benchmark-only
    pytest benchmarks --benchmark-only --bench-full           # the sizes and rounds we record
    pytest benchmarks --benchmark-only --bench-malloc-tuned   # allocator tuning users don't get

Recording results is a separate command: ``python benchmarks/record.py`` (see its --help).
Devices come from ``PYFRAMEPRED_BENCH_DEVICES`` (comma-separated; default cpu, plus cuda when
available). Suites read the size setting with :func:`full_size` and :func:`rounds`.
"""

from __future__ import annotations

import os
import time

import machine
import pytest
import torch

_SETTINGS = {"full": os.environ.get("PYFRAMEPRED_BENCH_FULL", "") not in ("", "0")}


def pytest_addoption(parser):
    group = parser.getgroup("pyframepred benchmarks")
    group.addoption(
        "--bench-full",
        action="store_true",
        default=False,
        help="full sizes and round counts (as recorded); default: quick sizes, few "
        "rounds. Also PYFRAMEPRED_BENCH_FULL=1.",
    )
    group.addoption(
        "--bench-malloc-tuned",
        action="store_true",
        default=False,
        help="keep freed memory in-process (glibc mallopt; users don't get this); "
        f"default: the plain allocator. Also {machine.ALLOCATOR_ENV}=tuned.",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    # pytest-benchmark's default table is over 200 columns wide: show what fits a terminal
    # (--benchmark-columns still chooses others).
    if getattr(config.option, "benchmark_columns", "unset") is None:
        config.option.benchmark_columns = ["median", "iqr", "rounds"]
    _SETTINGS["full"] = _SETTINGS["full"] or config.getoption("--bench-full", False)
    tuned = config.getoption("--bench-malloc-tuned", False)
    machine.use_allocator("tuned" if tuned else machine.allocator_from_env())
    machine.separate_inductor_cache()


def pytest_report_header(config):
    sizes = "full sizes" if full_size() else "quick sizes (--bench-full: the recorded ones)"
    return f"pyframepred benchmarks: {sizes}; allocator: {machine.allocator()}"


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["pyframepred"] = dict(machine.describe(), bench_size=_size_label())


def full_size() -> bool:
    """True when the suites should use the full sizes and round counts (--bench-full)."""
    return _SETTINGS["full"]


def _size_label() -> str:
    return "full" if full_size() else "quick"


def rounds(full: int, quick: int = 2) -> int:
    """The round count of a benchmark: `full` with --bench-full, else `quick`."""
    return full if full_size() else min(full, quick)


def _devices():
    env = os.environ.get("PYFRAMEPRED_BENCH_DEVICES")
    if env:
        return [d.strip() for d in env.split(",") if d.strip()]
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", _devices(), scope="session")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


_COPY_BW = {}


def copy_bandwidth(device: str) -> float:
    """Measured bytes/s of a large tensor copy on `device`, counting read + write."""
    if device not in _COPY_BW:
        # Well above any last-level cache: the ceiling is the memory's.
        n = ((64 if full_size() else 32) << 20) if device == "cpu" else (512 << 20)  # floats
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        sync(device)
        best = float("inf")
        for _ in range(10 if full_size() else 4):
            t0 = time.perf_counter()
            dst.copy_(src)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        _COPY_BW[device] = 2 * src.numel() * src.element_size() / best
        del src, dst
    return _COPY_BW[device]


@pytest.fixture
def annotate(benchmark, device):
    """Call after the benchmark ran: stores bytes moved, achieved GB/s and the copy ceiling,
    the allocator setting and the size setting next to the time."""

    def _annotate(bytes_moved: int | None = None, **extra):
        info = benchmark.extra_info
        info["device"] = device
        info["threads"] = torch.get_num_threads()
        info["allocator"] = machine.allocator()
        info["bench_size"] = _size_label()
        if device.startswith("cuda"):
            info["device_name"] = torch.cuda.get_device_name()
        info.update(extra)
        if bytes_moved is not None and benchmark.stats is not None:
            median = benchmark.stats.stats.median
            bw = bytes_moved / median
            ceiling = copy_bandwidth(device)
            info["bytes_moved"] = int(bytes_moved)
            info["GBps"] = round(bw / 1e9, 2)
            info["copy_GBps"] = round(ceiling / 1e9, 2)
            info["frac_of_copy_bw"] = round(bw / ceiling, 3)

    return _annotate


def saved_tensor_bytes(fn):
    """Bytes autograd saves for backward while running fn(): (as packed, distinct storages)."""
    packed = 0
    storages = {}

    def pack(t):
        nonlocal packed
        nbytes = t.numel() * t.element_size()
        packed += nbytes
        try:
            key = t.untyped_storage().data_ptr()
            storages[key] = max(storages.get(key, 0), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            storages[id(t)] = nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return packed, sum(storages.values()), out
