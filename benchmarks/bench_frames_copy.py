"""The ConvLSTM layer's copies between NCHW and channels_last frames, ours against ``copy_``.

On the CPU the layer runs channels_last whatever its input's layout, so an NCHW sequence costs two
copies per call that change the layout: x into the frames the layer convolves (x_t beside
h_{t-1} in the channels of one channels_last frame) and the h sequence out of them into the NCHW
output. ``_copy_frames`` (csrc/cpu/frames_copy.h) transposes each frame in register tiles; ATen's
``copy_`` was the layer's copy before. The cases are the layer's own: a batch-first sequence
(N, T, C, H, W) seen time-major, T = 10, at the sizes of the layer targets.

    pytest benchmarks/bench_frames_copy.py --benchmark-only
    python benchmarks/bench_frames_copy.py --rounds 15 --out benchmarks/results/frames_copy_rr_cpu_<tag>.json

The script mode alternates the two round by round in one process and records the medians and
the median per-round ratio, with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import pytest
import torch
from conftest import rounds
from round_robin import median_ratio, time_round_robin

import pyframepred.ops  # noqa: F401  (loads the operators)

T = 10
# (N, C_in, C, H): the layer target sizes' x and h (the two-layer case's second layer: C_in = 32)
SIZES = {"8x16x[32]@32": (8, 16, 32, 32), "8x32x[32]@32": (8, 32, 32, 32), "4x64x[64]@64": (4, 64, 64, 64)}
QUICK = {"2x4x[8]@16": (2, 4, 8, 16)}
DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ["copy_", "ours"]


def cases(N, Cin, C, H, dtype):
    """The layer's two copies at this size: {name: (dst, src)}."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, T, Cin, H, H, generator=g).to(dtype).transpose(0, 1)  # batch-first, time-major view
    frames = torch.empty(T * N, Cin + C, H, H, dtype=dtype, memory_format=torch.channels_last)
    into = frames.narrow(1, 0, Cin).unflatten(0, (T, N))
    hs = frames.narrow(0, N, (T - 1) * N).narrow(1, Cin, C).unflatten(0, (T - 1, N))
    out = torch.empty(N, T, C, H, H, dtype=dtype).transpose(0, 1)[: T - 1]
    return {"x into frames": (into, x), "h out of frames": (out, hs)}


def call(impl, dst, src):
    if impl == "ours":
        assert torch.ops.pyframepred._copy_frames(dst, src)
        return dst
    return dst.copy_(src)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("copy", ["x into frames", "h out of frames"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_frames_copy(benchmark, annotate, device, impl, copy, dtype):
    if device != "cpu":
        pytest.skip("a CPU kernel (on CUDA the layer copies with copy_)")
    size, (N, Cin, C, H) = next(iter(QUICK.items()))
    dst, src = cases(N, Cin, C, H, DTYPES[dtype])[copy]
    benchmark.group = f"layer frames copy {copy} {size} {dtype} {device}"
    benchmark.pedantic(lambda: call(impl, dst, src), rounds=rounds(15, 3), iterations=1, warmup_rounds=1)
    annotate(bytes_moved=2 * src.numel() * src.element_size(), impl=impl, dtype=dtype, copy=copy)


def measure_round_robin(sizes: dict, dtypes: list[str], n_rounds: int) -> list[dict]:
    out = []
    for size, (N, Cin, C, H) in sizes.items():
        for dtype in dtypes:
            for copy, (dst, src) in cases(N, Cin, C, H, DTYPES[dtype]).items():
                fns = {impl: (lambda impl=impl, dst=dst, src=src: call(impl, dst, src)) for impl in IMPLS}
                times = time_round_robin(fns, n_rounds)
                med = {k: statistics.median(v) for k, v in times.items()}
                ratio = median_ratio(times, "copy_", "ours")
                nbytes = src.numel() * src.element_size()
                out.append(
                    {
                        "size": size,
                        "copy": copy,
                        "dtype": dtype,
                        "shape": list(src.shape),
                        "mib": round(nbytes / 2**20, 1),
                        "median_ms": {k: round(v * 1e3, 3) for k, v in med.items()},
                        "copy_over_ours_median": round(ratio, 3),
                    }
                )
                print(
                    f"{size} {copy} {dtype}: copy_ {med['copy_'] * 1e3:.2f} ms, "
                    f"ours {med['ours'] * 1e3:.2f} ms, copy_/ours {ratio:.2f}",
                    file=sys.stderr,
                )
    return out


def markdown(record: dict) -> str:
    m = record["machine"]
    lines = [
        "| size | copy | dtype | MiB | copy_ | ours | copy_ / ours |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        lines.append(
            f"| {r['size']} | {r['copy']} | {r['dtype']} | {r['mib']} | {r['median_ms']['copy_']:.2f} ms | "
            f"{r['median_ms']['ours']:.2f} ms | {r['copy_over_ours_median']:.2f}× |"
        )
    lines += [
        "",
        "The ConvLSTM layer's copies between NCHW and channels_last frames (T = 10, a batch-first "
        f"sequence); medians of {record['rounds']} round-robin rounds in one process; copy_ / ours: "
        "the median over rounds of the ratio (above 1×: ours is faster). "
        f"{m['date']}: {m['cpu']} ({', '.join(m['cpu_isa_flags'])}), kernels at the {m['cpu_isa']} level, "
        f"{m['threads']} threads, torch {m['torch']}, allocator {m['allocator']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    from bench_layer import machine_info

    from pyframepred import ops

    ap = argparse.ArgumentParser(description="the layer's frames copies, ours vs copy_, round-robin")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--sizes", nargs="*", default=list(SIZES))
    ap.add_argument("--dtypes", nargs="*", default=list(DTYPES))
    ap.add_argument("--out", default=None, help="write the record (JSON) here, and its table (.md)")
    args = ap.parse_args(argv)
    machine = machine_info(False)
    machine["cpu_isa"] = ops.cpu_isa()
    sizes = {k: SIZES[k] for k in args.sizes}
    record = {
        "machine": machine,
        "rounds": args.rounds,
        "results": measure_round_robin(sizes, args.dtypes, args.rounds),
    }
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(record, fh, indent=1)
        with open(args.out.removesuffix(".json") + ".md", "w") as fh:
            fh.write(markdown(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
