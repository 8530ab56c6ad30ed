"""The ConvLSTM layer's convolutions, ours against ATen's (oneDNN on the CPU, cuDNN on a GPU).

Weight gradients: ``ops.conv2d_weight_grad`` (on the CPU in
float32 our tiled kernel, in bfloat16 at the amx level our AMX tile kernel, csrc/cpu/conv_cpu.cpp;
the ISA level in use is in each record) against ATen's convolution backward (oneDNN on
the CPU, cuDNN on a GPU; what the layer used before, and what ``reference.conv2d_weight_grad``
calls), on the batched shapes the layer hands it: channels_last gradients and inputs of a chunk
of steps, 3x3 kernels. ``gflops`` in each result's extra info is 2 * B*H*W * 9*C_in * C_out over
the median time.

    pytest benchmarks/bench_conv.py --benchmark-only [--bench-full]
    python benchmarks/record.py --suite conv      # records benchmarks/results/conv_cpu.json
    python benchmarks/bench_conv.py --rounds 15 --out benchmarks/results/conv_rr_cpu_<tag>.json
    python benchmarks/bench_conv.py --op same --dtypes float32 --out results/conv_same_rr_cpu_<tag>.json

Forward convolutions (``--op same``, and the ``conv2d same`` benchmark groups): ``ops.conv2d_same``
(on the CPU in float32 our Winograd F(4x4, 3x3) kernel, in bfloat16 F(2x2, 3x3)) against
``F.conv2d``, with input and weight channels_last as the layer has them; the ``dgrad`` shapes are
the data gradients the layer's backward runs as convolutions with the flipped, transposed weight
(4C -> C).

The pytest cases time each implementation's rounds one after the other; the script mode (last
line) alternates them round by round in one process, so that a machine's drift falls on both
sides alike, and writes the medians and per-round ratios with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import pytest
import torch
from conftest import full_size, rounds, sync
from round_robin import median_ratio, time_round_robin

from pyframepred import ops

# name -> (B, C_in, C_out, H, W): B = frames of a chunk of steps (on the CPU at most 3 MiB of gates:
# one step of 8 frames at the (8, 16, [32]) layer's sizes; 3 steps as it was with 12 MiB chunks)
SHAPES = {
    "tiny": (4, 8, 32, 16, 16),
    "input-step-8x16x32@32": (8, 16, 128, 32, 32),  # (8, 16, [32]) layer: input conv, one step
    "hidden-step-8x16x32@32": (8, 32, 128, 32, 32),  # its hidden conv, one step
    "input-8x16x32@32": (24, 16, 128, 32, 32),  # (8, 16, [32]) layer: input conv, 3 steps
    "hidden-8x16x32@32": (24, 32, 128, 32, 32),  # the same layer's hidden conv
    "hidden-4x64x64@64": (4, 64, 256, 64, 64),  # (4, 64, [64]) at 64x64: one step per chunk
    "hidden-dgrad-step-8x16x32@32": (8, 128, 32, 32, 32),  # the data gradient of h, one step
    "hidden-dgrad-4x64x64@64": (4, 256, 64, 64, 64),
    # The merged schedule (the CPU's, csrc/convlstm_layer.cpp): one convolution per step over x_t
    # and h_{t-1} side by side, and one weight gradient over those frames (C_in + C channels).
    "merged-step-8x16x32@32": (8, 48, 128, 32, 32),  # (8, 16, [32])
    "merged-step-8x32x32@32": (8, 64, 128, 32, 32),  # the second layer of (8, 16, [32, 32])
    "merged-4x64x64@64": (4, 128, 256, 64, 64),  # (4, 64, [64]) at 64x64
}
OPS = ("weight_grad", "same")
IMPLS = ["fused", "reference"]
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


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
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", IMPLS)
def test_conv_weight_grad(benchmark, annotate, device, impl, dtype, size):
    B, cin, cout, H, W = dict(_shapes())[size]
    benchmark.group = f"conv2d weight grad {size} {dtype} (B={B}, {cin}->{cout}, {H}x{W}, 3x3) {device}"
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    dt = DTYPES[dtype]
    x = torch.randn(B, cin, H, W, generator=g).to(device, dt).contiguous(memory_format=cl)
    dy = torch.randn(B, cout, H, W, generator=g).to(device, dt).contiguous(memory_format=cl)
    fn = ops.conv2d_weight_grad if impl == "fused" else _aten
    _time(benchmark, annotate, device, lambda: fn(dy, x, (3, 3)), impl, dtype, (B, cin, cout, H, W))


def _time(benchmark, annotate, device, call, impl, dtype, shape):
    """Times ``call`` (synchronised on a GPU) and annotates the result, with the direct
    convolution's FLOPs over the median as ``gflops``."""

    def run():
        out = call()
        sync(device)
        return out

    for _ in range(2):
        run()
    benchmark.pedantic(run, rounds=rounds(15, 3), iterations=1, warmup_rounds=1)
    B, cin, cout, H, W = shape
    extra = {}
    if benchmark.stats is not None:
        flop = 2 * B * H * W * 9 * cin * cout
        extra["gflops"] = round(flop / benchmark.stats.stats.median / 1e9, 1)
    annotate(impl=impl, dtype=dtype, shape=list(shape), torch=torch.__version__, **extra)


def _inputs_same(B, cin, cout, H, W, dtype, device="cpu"):
    g = torch.Generator().manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(B, cin, H, W, generator=g).to(device, dtype).contiguous(memory_format=cl)
    w = (torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5).to(device, dtype)
    return x, w.contiguous(memory_format=cl)


def _aten_same(x, w):
    return torch.nn.functional.conv2d(x, w, padding=1)


@pytest.mark.parametrize("size", [k for k, _ in _shapes()])
@pytest.mark.parametrize("impl", IMPLS)
def test_conv2d_same(benchmark, annotate, device, impl, size):
    B, cin, cout, H, W = dict(_shapes())[size]
    benchmark.group = f"conv2d same {size} float32 (B={B}, {cin}->{cout}, {H}x{W}, 3x3) {device}"
    x, w = _inputs_same(B, cin, cout, H, W, torch.float32, device)
    fn = ops.conv2d_same if impl == "fused" else _aten_same
    _time(benchmark, annotate, device, lambda: fn(x, w), impl, "float32", (B, cin, cout, H, W))


# --- script mode: round-robin medians ---------------------------------------------------------


def measure_round_robin(
    shapes: dict, dtypes: list[str], n_rounds: int, op: str = "weight_grad"
) -> list[dict]:
    """Per shape and dtype: the median time of ours and ATen's, alternated round by round, and the
    median over rounds of ATen's time / ours (above 1: ours is faster). ``op``: the weight
    gradient (conv2d_weight_grad) or the convolution itself (conv2d_same)."""
    out = []
    for size, (B, cin, cout, H, W) in shapes.items():
        for dtype in dtypes:
            g = torch.Generator().manual_seed(0)
            cl, dt = torch.channels_last, DTYPES[dtype]
            x = torch.randn(B, cin, H, W, generator=g).to(dt).contiguous(memory_format=cl)
            dy = torch.randn(B, cout, H, W, generator=g).to(dt).contiguous(memory_format=cl)
            if op == "same":
                x, w = _inputs_same(B, cin, cout, H, W, dt)
                fns = {
                    "ours": lambda x=x, w=w: ops.conv2d_same(x, w),
                    "aten": lambda x=x, w=w: _aten_same(x, w),
                }
            else:
                fns = {
                    "ours": lambda dy=dy, x=x: ops.conv2d_weight_grad(dy, x, (3, 3)),
                    "aten": lambda dy=dy, x=x: _aten(dy, x, (3, 3)),
                }
            times = time_round_robin(fns, n_rounds)
            flop = 2 * B * H * W * 9 * cin * cout
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = median_ratio(times, "aten", "ours")
            out.append(
                {
                    "size": size,
                    "shape": [B, cin, cout, H, W],
                    "dtype": dtype,
                    "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
                    "tflops": {k: round(flop / v / 1e12, 3) for k, v in med.items()},
                    "aten_over_ours_median": round(ratio, 3),
                }
            )
            print(
                f"{size} {dtype}: ours {med['ours'] * 1e3:.3f} ms, ATen {med['aten'] * 1e3:.3f} ms, "
                f"ATen/ours {ratio:.2f}",
                file=sys.stderr,
            )
    return out


def main(argv=None) -> int:
    from bench_layer import machine_info

    ap = argparse.ArgumentParser(description="the layer's convolutions, ours vs ATen's, round-robin")
    ap.add_argument("--op", choices=OPS, default="weight_grad")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sizes", nargs="*", default=[k for k in SHAPES if k != "tiny"])
    ap.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    ap.add_argument("--out", default=None, help="write the record (JSON) here")
    args = ap.parse_args(argv)
    machine = machine_info(False)
    machine["cpu_isa"] = ops.cpu_isa()
    record = {
        "machine": machine,
        "op": args.op,
        "rounds": args.rounds,
        "results": measure_round_robin({k: SHAPES[k] for k in args.sizes}, args.dtypes, args.rounds, args.op),
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)
        with open(args.out.removesuffix(".json") + ".md", "w") as fh:
            fh.write(markdown(record))
    return 0


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        "| shape (B, C_in, C_out, H, W) | dtype | ours | ATen | ATen / ours | ours TFLOP/s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        lines.append(
            f"| {tuple(r['shape'])} | {r['dtype']} | {r['median_ms']['ours']:.3f} ms | "
            f"{r['median_ms']['aten']:.3f} ms | {r['aten_over_ours_median']:.2f}× | "
            f"{r['tflops']['ours']:.2f} |"
        )
    lines += [
        "",
        f"{'conv2d_same' if record.get('op') == 'same' else 'conv2d_weight_grad'}, 3x3, channels_last; "
        f"medians of {record['rounds']} round-robin rounds in one "
        "process; ATen / ours: the median over rounds of the ratio (above 1×: ours is faster). "
        f"{m['date']}: {m['cpu']} ({', '.join(m['cpu_isa_flags'])}), kernels at the {m['cpu_isa']} level, "
        f"{m['threads']} threads, torch {m['torch']}, allocator {m['allocator']}."
        # Both ops run 3x3 in the Winograd domain (the weight gradient since 2026-12-05).
        + " TFLOP/s: the direct convolution's FLOPs (2 B H W 9 C_in C_out) over the time; "
        "Winograd computes fewer multiplies: F(4x4, 3x3) (float32, since 2026-12-06) 4x, "
        "F(2x2, 3x3) (bf16) 2.25x.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
