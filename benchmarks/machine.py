"""What a benchmark result needs to be reproducible: the machine, the build and the allocator.

Shared by the pytest suites (``conftest.py`` adds :func:`describe` to pytest-benchmark's
``machine_info``), the script-mode suites (``bench_data.py``, ``bench_train.py``) and
``record.py``. Importing this module changes nothing; :func:`use_allocator` and
:func:`separate_inductor_cache` do.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
from pathlib import Path

# The allocator setting of a run. "plain" is what users get; "tuned" keeps freed memory in the
# process (see use_allocator). Chosen by --bench-malloc-tuned or this environment variable.
ALLOCATOR_ENV = "PYFRAMEPRED_BENCH_MALLOC"
ALLOCATORS = {
    "plain": "plain glibc malloc (what users get)",
    "tuned": "glibc malloc with mmap/trim thresholds at 1 GiB (freed memory kept in-process)",
}
_ALLOCATOR = {"name": "plain"}

# x86 feature flags that say which SIMD level the kernels and torch can use.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def allocator_from_env(default: str = "plain") -> str:
    value = os.environ.get(ALLOCATOR_ENV, default).strip().lower() or default
    if value not in ALLOCATORS:
        raise ValueError(f"{ALLOCATOR_ENV}={value!r}: expected one of {', '.join(ALLOCATORS)}")
    return value


def use_allocator(name: str) -> str:
    """Apply the allocator setting `name` to this process and remember it for the results.

    "tuned": glibc returns every large free() to the OS (munmap), so each new output tensor is
    fresh pages that fault in and get zeroed by the kernel; that cost, not the op, can dominate
    CPU timings (a 64 MiB allocate-and-fill: ~28 ms vs ~5 ms). The tuned setting keeps freed
    memory in the process, as a caching allocator (or jemalloc/tcmalloc) would, for every
    implementation alike. Users do not get it unless they set it themselves (e.g.
    ``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824``), so results made
    with it carry the label "tuned".
    """
    if name not in ALLOCATORS:
        raise ValueError(f"allocator {name!r}: expected one of {', '.join(ALLOCATORS)}")
    if name == "tuned":
        try:
            libc = ctypes.CDLL("libc.so.6")
        except OSError as exc:
            raise RuntimeError("the tuned allocator setting needs glibc (libc.so.6)") from exc
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve big blocks from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: don't give them back
    _ALLOCATOR["name"] = name
    return name


def allocator() -> str:
    return _ALLOCATOR["name"]


def _cpuinfo() -> dict:
    info = {"model": platform.processor() or platform.machine(), "flags": set()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and info["model"] in ("", platform.machine(), platform.processor()):
            info["model"] = value.strip()
        elif key == "flags" and not info["flags"]:
            info["flags"] = set(value.split())
    return info


def last_level_cache_bytes() -> int | None:
    """Size of the largest cache of CPU 0 as the OS reports it (sysfs), in bytes."""
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text.rstrip("KMG")) * mult
        except ValueError:
            continue
        best = size if best is None else max(best, size)
    return best


def _build_config() -> dict:
    try:
        from pyframepred import _build_config as cfg
    except ImportError:
        return {}
    from pyframepred.ops import cpu_isa

    # cpu_isa: the level the CPU kernels run at (chosen at load time; the build has every level).
    return {
        "cpu_isa": cpu_isa(),
        "cpu_isa_levels": list(cfg.CPU_ISA_LEVELS),
        "with_cuda": cfg.WITH_CUDA,
        "built_with_torch": cfg.TORCH_VERSION,
    }


def _load() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


# Environment variables that cap the vector ISA of ATen (and Inductor's generated code), of
# oneDNN, and of our kernels: a run with any of them set emulates a CPU without the wider ISA.
ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "PYFRAMEPRED_CPU_ISA")


def isa_caps() -> dict:
    """The ISA caps set for this process ({} for none)."""
    return {k: os.environ[k] for k in ISA_CAPS if os.environ.get(k)}


def separate_inductor_cache() -> str | None:
    """Under an ATen ISA cap, point torch.compile's cache (TORCHINDUCTOR_CACHE_DIR, unless set) at
    a directory of that cap's own, and return it. Inductor's cache key leaves the cap out: kernels
    generated for 8-lane AVX2 vectors, found by a later uncapped run (16 lanes on AVX-512),
    corrupted its heap (torch 2.13, 2026-12-06); and an uncapped run's kernels found by a capped
    one would time AVX-512 code as AVX2. Call before the first compile."""
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if not cap or os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return None
    import getpass
    import tempfile

    path = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_isa-{cap}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    return path


def describe() -> dict:
    """The machine, CPU model and ISA level, versions, date and allocator of this process."""
    import torch

    cpu = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "node": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu["model"],
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "isa_flags": [f for f in ISA_FLAGS if f in cpu["flags"]],
        "torch_cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "isa_caps": isa_caps(),
        "llc_bytes": last_level_cache_bytes(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pyframepred_build": _build_config(),
        "allocator": allocator(),
        "allocator_detail": ALLOCATORS[allocator()],
        "load_average_1min": _load(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


# ATen's CPU capability -> the ISA name the tables use.
CAPABILITY_ISA = {"DEFAULT": "no AVX", "AVX2": "AVX2", "AVX512": "AVX-512"}


def capped_isa(info: dict) -> str:
    """The ISA a run with ISA caps was held to, by ATen's level ('AVX2', ...); '' for a run
    without caps. `info`: a :func:`describe` record or a layer record's machine."""
    if not info.get("isa_caps"):
        return ""
    return CAPABILITY_ISA.get(info.get("torch_cpu_capability", ""), "")


def caps_text(caps: dict) -> str:
    """'ATEN_CPU_CAPABILITY=avx2, ...': the caps as they were set."""
    return ", ".join(f"{k}={v}" for k, v in caps.items())


def isa_level(info: dict) -> str:
    """'AVX2', 'AVX-512', 'AVX-512 + AMX', ... from a :func:`describe` record; a run with ISA
    caps (:data:`ISA_CAPS`) is named by ATen's level, e.g. 'AVX2 (capped)'."""
    flags = set(info.get("isa_flags", []))
    if capped := capped_isa(info):
        return f"{capped} (capped)"
    if {"amx_tile", "avx512f"} <= flags:
        return "AVX-512 + AMX"
    if "avx512f" in flags:
        return "AVX-512" + (" (bf16)" if "avx512_bf16" in flags else "")
    if "avx2" in flags:
        return "AVX2"
    return "SSE" if flags else "?"


def one_line(info: dict) -> str:
    """A one-line summary of a :func:`describe` record, for tables' headers."""
    build = info.get("pyframepred_build") or {}
    return (
        f"{info.get('date', '?')}: {info.get('cpu_model', '?')} ({isa_level(info)}; "
        f"kernels built for {build.get('cpu_isa', '?')}), {info.get('usable_cores', '?')} "
        f"cores usable, {info.get('torch_threads', '?')} torch threads; torch "
        f"{info.get('torch', '?')}, Python {info.get('python', '?')}; allocator: "
        f"{info.get('allocator', '?')}; load average {info.get('load_average_1min', '?')}"
        + (f"; ISA caps {caps_text(info['isa_caps'])}" if info.get("isa_caps") else "")
    )
