"""The CUDA kernels' global-memory traffic, by construction, on the CPU execution model.

The execution model's memory-access model (csrc/cuda/emu/cuda_emu.h) groups each warp's accesses
into the requests the device issues and counts the 32-byte sectors they touch. Here: its counts on
access patterns whose answer is known, then every kernel family (scripts/cuda_memory_report.py's
cases): the distinct bytes read and written equal what the kernel must move, the hot lines'
requests use every byte of the sectors they touch, with the intended access width, and loads ask
for each sector about once. A case built to be uncoalesced must be reported as such.

Run alone with ``python -m pytest tests -m cuda_emu``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import cuda_emu_build
import pytest
import torch

pytestmark = pytest.mark.cuda_emu

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cuda_memory_report.py"
_spec = importlib.util.spec_from_file_location("cuda_memory_report", SCRIPT)
report = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("cuda_memory_report", report)  # its dataclasses look their module up
_spec.loader.exec_module(report)

CASES = report.cases()


@pytest.fixture(scope="module")
def emu():
    ops = cuda_emu_build.build()
    yield ops
    ops.set_memory_trace(False)
    ops.memory_trace()


def _gather(emu, stride, threads=64):
    src = torch.arange(4096, dtype=torch.float32)
    emu.memory_trace()
    emu.set_memory_trace(True)
    try:
        out = emu.selftest("gather", src, threads, stride, 1, 0)
    finally:
        emu.set_memory_trace(False)
    torch.testing.assert_close(out, src[: threads * stride : stride] if stride else src[:1].expand(threads))
    (launch,) = json.loads(emu.memory_trace())
    return {s["op"]: s for s in launch["sites"]}, launch["footprint"]


@pytest.mark.parametrize(
    "stride,sectors_per_request,min_sectors_per_request,distinct_load_bytes,distinct_load_sectors",
    [
        (1, 4, 4, 256, 8),  # 32 lanes x 4 consecutive bytes: 128 bytes, 4 sectors
        (2, 8, 4, 256, 16),  # every other float: 8 sectors for 4 sectors' worth
        (8, 32, 4, 256, 64),  # one sector per lane
        (0, 1, 1, 4, 1),  # every lane reads the same float: one sector, a broadcast
    ],
)
def test_model_counts_known_patterns(
    emu, stride, sectors_per_request, min_sectors_per_request, distinct_load_bytes, distinct_load_sectors
):
    sites, fp = _gather(emu, stride)
    load, store = sites["load"], sites["store"]
    assert load["requests"] == 2 and store["requests"] == 2  # 64 threads: two warps, one request each
    assert load["lane_accesses"] == 64 and load["bytes"] == 256
    assert load["sectors"] == 2 * sectors_per_request
    assert load["min_sectors"] == 2 * min_sectors_per_request
    assert store["sectors"] == store["min_sectors"] == 8  # the output is written contiguously
    assert fp["load_bytes"] == distinct_load_bytes and fp["store_bytes"] == 256
    assert fp["load_sectors"] == distinct_load_sectors and fp["store_sectors"] == 8


def test_model_groups_by_source_line_and_warp(emu):
    # 96 threads: three warps, the last one full; each thread issues one load and one store.
    sites, _ = _gather(emu, 1, threads=96)
    assert {s["site"].split(":")[0] for s in sites.values()} == {"selftest.cpp"}
    assert sites["load"]["line"] != sites["store"]["line"]
    assert sites["load"]["requests"] == 3 and sites["load"]["max_sectors"] == 4


def test_trace_is_off_unless_asked(emu):
    emu.memory_trace()
    emu.selftest("gather", torch.zeros(64), 32, 1, 1, 0)
    assert json.loads(emu.memory_trace()) == []


@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}-{c.dtype}-{c.shape}" for c in CASES])
def test_kernel_memory_traffic(emu, case):
    row = report.run_case(emu, case)
    fails = report.failures(row)
    if case.uncoalesced:
        # Built to be uncoalesced: right bytes, but the model must see the scattered requests.
        assert (row["load_bytes"], row["store_bytes"]) == (row["must_load"], row["must_store"])
        assert row["hot_efficiency"] <= 0.25, row
        assert any("sector efficiency" in f for f in fails), fails
    else:
        assert fails == [], "\n".join(fails)


def test_report_verdict_flags_a_coalesced_miss(emu):
    """check() fails a run where the case built to be uncoalesced came out coalesced, and one
    where a regular case misses its floor: the report's exit status can fail."""
    regular = next(c for c in CASES if not c.uncoalesced and c.floor == 1.0)
    bad = next(c for c in CASES if c.uncoalesced)
    good_row, bad_row = report.run_case(emu, regular), report.run_case(emu, bad)
    assert report.check([good_row, bad_row]) == []
    assert report.check([dict(bad_row, uncoalesced=False)])  # a regular case this scattered fails
    assert report.check([dict(good_row, uncoalesced=True)])  # coalesced where a miss was built


KERNELS = Path(__file__).resolve().parents[1] / "csrc" / "cuda" / "convlstm_kernels.cuh"


def _param_lines() -> set[int]:
    """The source lines of the ConvLSTM kernels' bias and peephole loads."""
    lines = KERNELS.read_text().splitlines()
    return {i + 1 for i, line in enumerate(lines) if "load_params(bias" in line or "load_params(peep" in line}


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_parameter_loads_are_vectors_where_aligned(emu, pass_):
    """channels_last vector variants load a thread's channels' bias and peephole weights with one
    vector load per row when the row is aligned for it, and fall back to one load per channel
    (with the same results) when it is not."""
    g = torch.Generator().manual_seed(5)
    n, c, h, w = 2, 32, 8, 8
    cl = torch.channels_last

    def t(ch):
        return torch.randn(n, ch, h, w, generator=g).contiguous(memory_format=cl)

    x, c_prev, gh, gc, gates = t(4 * c), t(c), t(c), t(c), t(4 * c).sigmoid()
    bias, peep = torch.randn(4 * c, generator=g), torch.randn(3, c, generator=g)
    # The same values one element off the vector alignment.
    bias_off = torch.cat([torch.zeros(1), bias])[1:]
    peep_off = torch.cat([torch.zeros(1), peep.flatten()])[1:].view(3, c)

    def run(b, p):
        emu.memory_trace()
        emu.set_memory_trace(True)
        try:
            if pass_ == "forward":
                out = emu.convlstm_forward(x, x, c_prev, b, p, True)
            else:
                out = emu.convlstm_backward(gh, gc, gates, c_prev, p, True)[:3]
        finally:
            emu.set_memory_trace(False)
        (launch,) = [x for x in json.loads(emu.memory_trace()) if "cl peep vec=4" in x["variant"]]
        params = [s for s in launch["sites"] if s["line"] in _param_lines()]
        return out, params

    aligned, p_aligned = run(bias, peep)
    shifted, p_shifted = run(bias_off, peep_off)
    for a, b in zip(aligned, shifted):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(p_aligned) == (2 if pass_ == "forward" else 1) == len(p_shifted)  # bias, peephole lines
    assert all(s["bytes"] == 16 * s["lane_accesses"] for s in p_aligned)  # one 16-byte load
    assert all(s["bytes"] == 4 * s["lane_accesses"] for s in p_shifted)  # one float at a time
    assert sum(s["requests"] for s in p_shifted) == 4 * sum(s["requests"] for s in p_aligned)
