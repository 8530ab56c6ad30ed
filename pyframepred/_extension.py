"""Loads the compiled operators (``pyframepred._C``) and explains clearly when that fails."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

_REBUILD = (
    "Rebuild it against the installed torch, from the source folder:\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps ."
)


def _installed_elsewhere():
    """The folder of another pyframepred on sys.path that has the compiled extension, when this
    one (a source checkout, say) has none; else None."""
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        pkg = Path(entry or ".").resolve() / "pyframepred"
        if pkg != here and pkg.is_dir() and any(pkg.glob("_C*.so")):
            return pkg
    return None


def load():
    """Import ``pyframepred._C`` (which registers ``torch.ops.pyframepred``) and return it."""
    installed = torch.__version__.split("+")[0]
    try:
        config = importlib.import_module("pyframepred._build_config")
    except ImportError:
        config = None
    # No instruction-set check here: the CPU kernels are compiled for every level and the
    # library picks one the processor supports when it loads (csrc/cpu/dispatch.cpp).
    try:
        module = importlib.import_module("pyframepred._C")
    except ImportError as exc:
        shadowed = _installed_elsewhere()
        if shadowed is not None:
            raise ImportError(
                f"pyframepred is imported from the source folder {Path(__file__).parent.parent}, "
                f"which has no compiled extension and hides the installed package in {shadowed}: "
                "run from another folder, or install in place with "
                "`pip install --no-build-isolation -e .`"
            ) from exc
        built = f" It was built against torch {config.TORCH_VERSION}." if config else ""
        raise ImportError(
            f"pyframepred's compiled extension (pyframepred._C) could not be loaded: {exc}.{built} "
            f"The installed torch is {torch.__version__}. The extension is either not built (an "
            "in-place checkout without `pip install .`) or was compiled against another torch "
            "version, whose C++ ABI differs. " + _REBUILD
        ) from exc
    built = module.built_with_torch
    if built.split(".")[:2] != installed.split(".")[:2]:
        raise ImportError(
            f"pyframepred's compiled extension was built against torch {built} but torch "
            f"{torch.__version__} is installed; the C++ ABI differs between releases. " + _REBUILD
        )
    return module
