"""The parsing of scripts/ptxas_report.py (CI step 2b), on text shaped like nvcc's and cuobjdump's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ptxas_report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("ptxas_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_short_names_keep_the_power_argument(report):
    # "(pyframepred::GdlPower)1" holds a "(": the names of the three powers must stay apart.
    full = {
        (p, d): f"void pyframepred::cuda::gdl::gdl_backward_kernel<float, int, (pyframepred::GdlPower){p}, "
        f"true, {d}>(pyframepred::GdlOperand<float const>, long, long)"
        for p in range(3)
        for d in (0, 1, 3)
    }
    names = {report.short(n) for n in full.values()}
    assert names == {
        f"void gdl::gdl_backward_kernel<float, int, p{p}, true, {d}>" for p in range(3) for d in (0, 1, 3)
    }
    # Vector accesses are intended by the packed variants (kD > 0), not by the element-wise one.
    assert [report.intent(full[(1, d)]) for d in (0, 1, 3)] == [(False, 4), (True, 4), (True, 4)]
    assert (
        report.short(
            "void pyframepred::cuda::convlstm::convlstm_forward_kernel<c10::BFloat16, float, int, true, false, 4>(x)"
        )
        == "void convlstm::convlstm_forward_kernel<bf16, float, int, true, false, 4>"
    )


def test_resource_usage_and_occupancy(report):
    text = "\n".join(
        [
            "ptxas info    : Compiling entry function '_Z1av' for 'sm_80'",
            "ptxas info    : Function properties for _Z1av",
            "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads",
            "ptxas info    : Used 80 registers, 4096 bytes smem, 400 bytes cmem[0]",
            "ptxas info    : Compiling entry function '_Z1bv' for 'sm_80'",
            "ptxas info    : Function properties for _Z1bv",
            "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
            "ptxas info    : Used 64 registers, 400 bytes cmem[0]",
        ]
    )
    usage = report.parse_resource_usage(text)
    assert usage["_Z1av"] == dict(regs=80, spill_stores=4, spill_loads=12, stack=8, smem=4096)
    assert usage["_Z1bv"] == dict(regs=64, spill_stores=0, spill_loads=0, stack=0, smem=0)
    # 256-thread blocks: 64 registers -> 4 blocks (1/2 of 64 warps), 80 -> 3, 128 -> 2, 129 -> 1.
    assert [report.occupancy(r, 0, 80)[1] for r in (64, 80, 128, 129)] == [4, 3, 2, 1]
    assert report.occupancy(64, 0, 90)[0] == pytest.approx(0.5)
