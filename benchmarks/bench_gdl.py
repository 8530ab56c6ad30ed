"""Gradient difference loss benchmarks: forward, and forward+backward.

Each group holds the fused op, the plain-PyTorch reference (eager) and ``torch.compile`` of the
reference on the same inputs (float32, alpha = 1, reduction "mean"). Achieved bandwidth counts
the bytes the op must move: forward reads pred and target once; forward+backward reads them
again in backward and writes grad_pred (5 tensors in all). The copy bandwidth of the device is
the ceiling (see conftest.py). By default only the small size runs, with few rounds;
``--bench-full`` adds the large ones, both sizes with channels_last inputs (``_cl``: what a
model running channels_last passes) and the GPU-only size (skipped on a CPU-only machine).

    pytest benchmarks/bench_gdl.py --benchmark-only [--bench-full]
    python benchmarks/record.py --suite gdl       # records benchmarks/results/gdl_cpu.json
"""

from __future__ import annotations

import pytest
import torch
from conftest import full_size, rounds, saved_tensor_bytes, sync

from pyframepred import ops, reference

SHAPES = {"small": (16, 3, 64, 64), "large": (8, 3, 256, 256)}
# The same in channels_last (the CPU kernels read them as interleaved planes).
CL_SHAPES = {"small_cl": (16, 3, 64, 64), "large_cl": (8, 3, 256, 256)}
# Larger inputs on a GPU, where the small ones are launch-bound.
CUDA_SHAPES = {"xlarge": (32, 3, 512, 512)}
IMPLS = ["fused", "reference", "compile"]
ALPHA, REDUCTION = 1.0, "mean"

_COMPILED = {}


def _fn(impl):
    if impl == "fused":
        return ops.gdl_loss
    if impl == "reference":
        return reference.gdl_loss
    if "compile" not in _COMPILED:
        _COMPILED["compile"] = torch.compile(reference.gdl_loss)
    return _COMPILED["compile"]


def _shapes():
    shapes = list(SHAPES.items()) + list(CL_SHAPES.items()) + list(CUDA_SHAPES.items())
    return shapes if full_size() else shapes[:1]


def _inputs(shape, device, requires_grad, size):
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if size in CL_SHAPES else torch.contiguous_format
    pred = torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt)
    target = torch.randn(shape, generator=g).to(device).contiguous(memory_format=fmt)
    return pred.requires_grad_(requires_grad), target


def _skip_if_not_applicable(size, device):
    if size in CUDA_SHAPES and not device.startswith("cuda"):
        pytest.skip("GPU-only size")


def _rounds(device, shape, impl):
    if device.startswith("cuda"):
        return rounds(50, 10)
    numel = 1
    for s in shape:
        numel *= s
    return rounds(40 if numel < 2**20 else (10 if impl == "reference" else 25), 5)


@pytest.mark.parametrize("size", [k for k, _ in _shapes()])
@pytest.mark.parametrize("impl", IMPLS)
def test_gdl_forward(benchmark, annotate, device, impl, size):
    _skip_if_not_applicable(size, device)
    shape = dict(_shapes())[size]
    benchmark.group = f"gdl forward {size} {shape} {device}"
    fn = _fn(impl)
    pred, target = _inputs(shape, device, requires_grad=False, size=size)

    def run():
        out = fn(pred, target, ALPHA, REDUCTION)
        sync(device)
        return out

    for _ in range(3):  # compiles (impl "compile") and warms caches outside the timed part
        run()
    benchmark.pedantic(run, rounds=_rounds(device, shape, impl), iterations=1, warmup_rounds=2)
    annotate(
        bytes_moved=2 * pred.numel() * pred.element_size(),
        impl=impl,
        mode="forward",
        shape=list(shape),
        torch=torch.__version__,
    )


@pytest.mark.parametrize("size", [k for k, _ in _shapes()])
@pytest.mark.parametrize("impl", IMPLS)
def test_gdl_forward_backward(benchmark, annotate, device, impl, size):
    _skip_if_not_applicable(size, device)
    shape = dict(_shapes())[size]
    benchmark.group = f"gdl forward+backward {size} {shape} {device}"
    fn = _fn(impl)
    pred, target = _inputs(shape, device, requires_grad=True, size=size)

    def run():
        loss = fn(pred, target, ALPHA, REDUCTION)
        (grad,) = torch.autograd.grad(loss, pred)
        sync(device)
        return grad

    for _ in range(3):
        run()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, rounds=_rounds(device, shape, impl), iterations=1, warmup_rounds=2)
    packed, distinct, _ = saved_tensor_bytes(lambda: fn(pred, target, ALPHA, REDUCTION))
    extra = dict(
        impl=impl,
        mode="forward+backward",
        shape=list(shape),
        torch=torch.__version__,
        saved_bytes_packed=packed,
        saved_bytes_distinct=distinct,
    )
    if device.startswith("cuda"):
        extra["peak_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    # forward reads pred + target; backward reads them again and writes grad_pred
    annotate(bytes_moved=5 * pred.numel() * pred.element_size(), **extra)
