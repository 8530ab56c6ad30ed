"""The CPU buffer pool of the fused ConvLSTM cell and layer (``csrc/buffer_pool.h``).

The large CPU tensors the fused ops allocate at every step (blocks of 1 MiB and more: gates, cell
states, the layer's frames and h sequence, the gradients of backward) come from a pool that hands
a freed block of the same size out again, so a training step does not fault in fresh pages for
them. Idle blocks are kept up to the most bytes the pool's blocks were ever in use at once (or up
to ``PYFRAMEPRED_CPU_BUFFER_POOL_MB`` where that is set; ``0`` turns the pool off).
"""

from __future__ import annotations

import torch


def cpu_buffer_pool_stats() -> dict:
    """Bytes of the pool: ``idle`` (kept for reuse), ``in_use``, ``peak_in_use`` and ``budget``
    (the most idle bytes kept; ``None``: the peak in use, the default)."""
    idle, in_use, peak, budget = torch.ops.pyframepred.cpu_buffer_pool_stats()
    return {"idle": idle, "in_use": in_use, "peak_in_use": peak, "budget": None if budget < 0 else budget}


def empty_cpu_buffer_pool() -> None:
    """Free the pool's idle blocks (e.g. after training, before evaluating at other sizes) and
    reset its peak to the bytes in use now."""
    torch.ops.pyframepred.empty_cpu_buffer_pool()
