"""The instruction-set level of the CPU kernels.

The CPU kernels are compiled for several levels in one build (``default``: portable; ``avx2``:
AVX2 + FMA + F16C; ``avx512``: AVX-512 F/BW/VL/DQ; ``avx512_bf16``: ``avx512`` plus AVX512-BF16,
whose bfloat16 weight gradients run on its dot-product instruction; ``amx``: ``avx512_bf16`` plus
the AMX tile unit, whose bfloat16 weight gradients run on tiles; all but the first on x86-64
only).
When the library loads it uses the best level the processor and operating system support, at
most the one the environment variable ``PYFRAMEPRED_CPU_ISA`` names (``default``, ``avx2``,
``avx512``, ``avx512_bf16`` or ``amx``, any case); a value naming no level, or a level this CPU
or build lacks, is reported on one line on stderr and the best supported level is used instead.
"""

from __future__ import annotations

import torch


def cpu_isa() -> str:
    """The level the CPU kernels run at now: ``"default"``, ``"avx2"``, ``"avx512"``,
    ``"avx512_bf16"`` or ``"amx"``."""
    return torch.ops.pyframepred.cpu_isa()


def cpu_isa_levels() -> tuple[str, ...]:
    """The levels compiled into this build, lowest first (not all may run on this CPU)."""
    return tuple(torch.ops.pyframepred.cpu_isa_levels())


def _set_cpu_isa(level: str) -> str:
    """Switch the CPU kernels to ``level`` and return the previous level (tests, benchmarks).

    Raises RuntimeError, naming the missing CPU feature, for a level that cannot run here.
    """
    return torch.ops.pyframepred._set_cpu_isa(level)
