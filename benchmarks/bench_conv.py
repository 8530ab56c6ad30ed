"""Weight gradient of the ConvLSTM layer's convolutions: ``ops.conv2d_weight_grad`` (on the CPU in
float32 our tiled kernel, csrc/cpu/conv_cpu.cpp) against ATen's convolution backward (oneDNN on
the CPU, cuDNN on a GPU; what the layer used before, and what ``reference.conv2d_weight_grad``
calls), on the batched shapes the layer hands it: channels_last gradients and inputs of a chunk
of steps, 3x3 kernels. ``gflops`` in each result's extra info is 2 * B*H*W * 9*C_in * C_out over
the median time.

    pytest benchmarks/bench_conv.py --benchmark-only [--bench-full]
    python benchmarks/record.py --suite conv      # records benchmarks/results/conv_cpu.json
"""

from __future__ import annotations

import pytest
import torch
from conftest import full_size, rounds, sync

from pyframepred import ops

# name -> (B, C_in, C_out, H, W): B = frames of a chunk of steps (chunks of at most 12 MiB of gates)
SHAPES = {
    "tiny": (4, 8, 32, 16, 16),
    "input-8x16x32@32": (24, 16, 128, 32, 32),  # (8, 16, [32]) layer: input conv, 3 steps
    "hidden-8x16x32@32": (24, 32, 128, 32, 32),  # the same layer's hidden conv
    "hidden-4x64x64@64": (4, 64, 256, 64, 64),  # (4, 64, [64]) at 64x64: one step per chunk
}
IMPLS = ["fused", "reference"]


def _shapes():
    items = list(SHAPES.items())
    return items[1:] if full_size() else items[:1]


def _aten(grad_out, input, kernel_size):
    kh, kw = kernel_size
    weight = torch.empty(
        grad_out.shape[1], input.shape[1], kh, kw, device=input.device, dtype=input.dtype
    ).contiguous(memory_format=torch.channels_last)
    return torch.ops.aten.convolution_backward(
        grad_out,
        input,
        weight,
        None,
        [1, 1],
        [kh // 2, kw // 2],
        [1, 1],
        False,
        [0, 0],
        1,
        [False, True, False],
    )[1]


@pytest.mark.parametrize("size", [k for k, _ in _shapes()])
@pytest.mark.parametrize("impl", IMPLS)
def test_conv_weight_grad(benchmark, annotate, device, impl, size):
    B, cin, cout, H, W = dict(_shapes())[size]
    benchmark.group = f"conv2d weight grad {size} (B={B}, {cin}->{cout}, {H}x{W}, 3x3) {device}"
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(B, cin, H, W, generator=g).to(device).contiguous(memory_format=cl)
    dy = torch.randn(B, cout, H, W, generator=g).to(device).contiguous(memory_format=cl)
    fn = ops.conv2d_weight_grad if impl == "fused" else _aten

    def run():
        out = fn(dy, x, (3, 3))
        sync(device)
        return out

    for _ in range(2):
        run()
    benchmark.pedantic(run, rounds=rounds(15, 3), iterations=1, warmup_rounds=1)
    extra = {}
    if benchmark.stats is not None:
        flop = 2 * B * H * W * 9 * cin * cout
        extra["gflops"] = round(flop / benchmark.stats.stats.median / 1e9, 1)
    annotate(impl=impl, shape=[B, cin, cout, H, W], torch=torch.__version__, **extra)
