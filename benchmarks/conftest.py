"""Shared benchmark fixtures: devices, the copy-bandwidth ceiling and result annotations.

Run: ``pytest benchmarks --benchmark-only`` (add ``--benchmark-json benchmarks/results/X.json`` to
record, then ``python benchmarks/report.py`` to refresh the tables). Devices come from
``PYFRAMEPRED_BENCH_DEVICES`` (comma-separated, default: cpu, plus cuda when available).
"""
from __future__ import annotations

import ctypes
import os
import time

import pytest
import torch


def _keep_freed_memory():
    """glibc returns every large free() to the OS (munmap), so each new output tensor is fresh
    pages that fault in and get zeroed by the kernel -- that cost, not the op, would dominate
    the CPU timings (a 64 MiB allocate-and-fill: ~28 ms vs ~5 ms). Keep freed memory in the
    process instead, as a caching allocator (or jemalloc/tcmalloc) would; this applies to every
    implementation alike."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve big blocks from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: don't give them back
    except OSError:
        pass


_keep_freed_memory()


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
        n = (64 << 20) if device == "cpu" else (512 << 20)  # floats
        src = torch.randn(n, device=device)
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        sync(device)
        best = float("inf")
        for _ in range(10):
            t0 = time.perf_counter()
            dst.copy_(src)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        _COPY_BW[device] = 2 * src.numel() * src.element_size() / best
        del src, dst
    return _COPY_BW[device]


@pytest.fixture
def annotate(benchmark, device):
    """Call after the benchmark ran: stores bytes moved, achieved GB/s and the copy ceiling."""

    def _annotate(bytes_moved: int | None = None, **extra):
        info = benchmark.extra_info
        info["device"] = device
        info["threads"] = torch.get_num_threads()
        if device.startswith("cuda"):
            info["device_name"] = torch.cuda.get_device_name()
        info.update(extra)
        if bytes_moved is not None and benchmark.stats is not None:
            mean = benchmark.stats.stats.mean
            bw = bytes_moved / mean
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
