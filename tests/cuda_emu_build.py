"""Builds the CUDA kernels against the CPU execution model (csrc/cuda/emu) as a test extension.

The sources are compiled with the host compiler by torch.utils.cpp_extension.load into a build
folder kept between runs (build/cuda_emu-<torch version>[-asan], or $PYFRAMEPRED_EMU_BUILD_DIR);
ninja's dependency files make a changed .cu/.cuh/.h rebuild what includes it, so the next test
run executes the current kernels. PYFRAMEPRED_EMU_ASAN=1 builds with AddressSanitizer (run
python with LD_PRELOAD of the compiler's libasan, see benchmarks/results/cuda_emu_asan.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "csrc" / "cuda" / "emu"
SOURCES = [
    EMU / "emu_runtime.cpp",
    EMU / "emu_ops.cpp",
    EMU / "convlstm_emu.cpp",
    EMU / "gdl_emu.cpp",
    EMU / "layer_emu.cpp",
    EMU / "selftest.cpp",
]

BUILD_SECONDS: float | None = None


def asan_enabled() -> bool:
    return os.environ.get("PYFRAMEPRED_EMU_ASAN", "0") == "1"


def build():
    """Loads (building when needed) the emulated-kernel extension; returns torch.ops.pyframepred_emu.
    Once per process: the test modules that use it share one load."""
    global BUILD_SECONDS
    if BUILD_SECONDS is not None:
        return torch.ops.pyframepred_emu
    from torch.utils.cpp_extension import load

    asan = asan_enabled()
    tag = torch.__version__.replace("+", "_") + ("-asan" if asan else "")
    build_dir = Path(os.environ.get("PYFRAMEPRED_EMU_BUILD_DIR", ROOT / "build" / f"cuda_emu-{tag}"))
    build_dir.mkdir(parents=True, exist_ok=True)
    cflags = ["-O1"]
    ldflags = []
    if asan:
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    os.environ.setdefault("MAX_JOBS", "2")
    start = time.perf_counter()
    load(
        name="pyframepred_cuda_emu" + ("_asan" if asan else ""),
        sources=[str(s) for s in SOURCES],
        extra_include_paths=[str(ROOT / "csrc")],
        extra_cflags=cflags,
        extra_ldflags=ldflags,
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    BUILD_SECONDS = time.perf_counter() - start
    return torch.ops.pyframepred_emu
