"""Loads the compiled operators (``pyframepred._C``) and explains clearly when that fails."""
from __future__ import annotations

import importlib

import torch

_REBUILD = ("Rebuild it against the installed torch, from the source folder:\n"
            "    pip install --no-build-isolation --force-reinstall --no-deps .")


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return True  # cannot tell: let the import decide
    return all(f" {f}" in flags for f in ("avx2", "fma", "f16c"))


def load():
    """Import ``pyframepred._C`` (which registers ``torch.ops.pyframepred``) and return it."""
    installed = torch.__version__.split("+")[0]
    try:
        config = importlib.import_module("pyframepred._build_config")
    except ImportError:
        config = None
    if config is not None and config.CPU_ISA == "avx2" and not _cpu_has_avx2():
        raise ImportError("pyframepred's CPU kernels were compiled for AVX2, which this processor "
                          "lacks. Build portable kernels with PYFRAMEPRED_CPU_ISA=default. " + _REBUILD)
    try:
        module = importlib.import_module("pyframepred._C")
    except ImportError as exc:
        built = f" It was built against torch {config.TORCH_VERSION}." if config else ""
        raise ImportError(
            f"pyframepred's compiled extension (pyframepred._C) could not be loaded: {exc}.{built} "
            f"The installed torch is {torch.__version__}. The extension is either not built (an "
            "in-place checkout without `pip install .`) or was compiled against another torch "
            "version, whose C++ ABI differs. " + _REBUILD) from exc
    built = module.built_with_torch
    if built.split(".")[:2] != installed.split(".")[:2]:
        raise ImportError(
            f"pyframepred's compiled extension was built against torch {built} but torch "
            f"{torch.__version__} is installed; the C++ ABI differs between releases. " + _REBUILD)
    return module
