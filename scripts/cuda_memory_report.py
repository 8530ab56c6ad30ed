#!/usr/bin/env python3
"""Global-memory traffic of the CUDA kernels by construction, measured without a GPU.

Runs the kernels on the CPU execution model (csrc/cuda/emu) with its memory-access model on:
every global load and store reports its source line, address and size, the k-th execution of a
line by the lanes of one warp is one request (as the device issues it), and per request the
model counts the 32-byte sectors it touches, the unit in which the device moves global memory.
Per kernel launch it reports:

  * footprint: the distinct bytes read and written, which must equal the bytes the kernel has to
    move (docs/cuda-kernels.md, "Bytes each kernel must move"): nothing read that is not needed,
    nothing needed left unread, every access seen by the model;
  * sector efficiency: the distinct bytes a request asks for / 32 x the sectors it touches (1.0:
    every byte of every sector moved is used), over the hot lines (those holding at least 1/16
    of the launch's sectors) and over all requests;
  * bytes per lane access on the hot lines (16: one 128-bit access per lane; 8 for 16-bit types);
  * re-reads: the sectors all requests touch / the distinct sectors of the footprint (1.0: every
    sector is asked for once; the GDL's neighbour loads at the warp edges ask again).

Checks (exit status 1 on a failure; tests/test_cuda_emu_memory.py runs the same checks): the
footprint equals the bytes the kernel must move, the hot lines' sector efficiency reaches the
case's floor (1.0, except the float64 GDL whose 32-byte lane packs are two 16-byte loads: 0.5 per
load) with the case's access width, the re-read factor stays under the case's bound; and the one
case built to be uncoalesced (c_prev channels_last while the gates are NCHW: correct results, one
sector per lane) is reported as such.

Writes benchmarks/results/cuda_memory_model.json and .md.

  python scripts/cuda_memory_report.py [--out benchmarks/results/cuda_memory_model]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
SECTOR = 32
CL = torch.channels_last
ACC = {torch.float32: 4, torch.float64: 8, torch.bfloat16: 4, torch.float16: 4}  # opmath bytes
DT = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}


@dataclass
class Case:
    name: str
    kernel: str  # the launch checked (its variant line starts with this)
    run: Callable  # run(ops) calls the emulated op
    must_move: Callable  # must_move(launch) -> (load bytes, store bytes)
    width: int  # bytes per lane access on the hot lines
    floor: float = 1.0  # least sector efficiency of the hot lines (0: not checked)
    reread: float = 1.10  # most load request sectors / distinct sectors read (0: not checked)
    uncoalesced: bool = False  # built to fail the floor (shows the model sees it)
    note: str = ""
    shape: str = ""
    dtype: str = ""
    extra: dict = field(default_factory=dict)


def _lstm_inputs(n, c, h, w, dtype, fmt, state_dtype=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = state_dtype or dtype

    def t(ch, dt_=dtype, f=fmt):
        return torch.randn(n, ch, h, w, generator=g).to(dt_).contiguous(memory_format=f)

    return t, sd, g


def convlstm_forward_case(n, c, h, w, dtype, fmt, state_dtype=None, cprev_fmt=None, peep=True, **kw):
    t, sd, g = _lstm_inputs(n, c, h, w, dtype, fmt, state_dtype)
    xg, hg = t(4 * c), t(4 * c)
    cp = t(c, sd, cprev_fmt or fmt)
    bias = torch.randn(4 * c, generator=g).to(sd)
    pw = torch.randn(3, c, generator=g).to(sd) if peep else None
    e, es, ncp = xg.element_size(), cp.element_size(), n * c * h * w

    def must_move(_launch):
        loads = 8 * ncp * e + ncp * es + 4 * c * es + (3 * c * es if peep else 0)
        stores = ncp * e + ncp * es + 4 * ncp * e
        return loads, stores

    fmt_name = "cl" if fmt == CL else "nchw"
    return Case(
        name=f"convlstm forward {fmt_name}" + (" c_prev cl" if cprev_fmt else ""),
        kernel="convlstm_forward",
        run=lambda ops: ops.convlstm_forward(xg, hg, cp, bias, pw, True),
        must_move=must_move,
        shape=f"({n}, {c}, {h}, {w})",
        dtype=DT[dtype] + (f"/{DT[sd]}" if sd != dtype else ""),
        **kw,
    )


def convlstm_backward_case(n, c, h, w, dtype, fmt, state_dtype=None, peep=True, **kw):
    t, sd, g = _lstm_inputs(n, c, h, w, dtype, fmt, state_dtype, seed=1)
    gh, gc, gates, cp = t(c), t(c, sd), t(4 * c).sigmoid(), t(c, sd)
    pw = torch.randn(3, c, generator=g).to(sd) if peep else None
    e, es, ncp = gh.element_size(), gc.element_size(), n * c * h * w
    acc = ACC[dtype]

    def must_move(launch):
        rows = launch["grid"][0] * launch["grid"][2]
        loads = ncp * e + ncp * es + 4 * ncp * e + ncp * es + (3 * c * es if peep else 0)
        stores = 4 * ncp * e + ncp * es + rows * 7 * c * acc
        return loads, stores

    return Case(
        name=f"convlstm backward {'cl' if fmt == CL else 'nchw'}",
        kernel="convlstm_backward",
        run=lambda ops: ops.convlstm_backward(gh, gc, gates, cp, pw, True),
        must_move=must_move,
        shape=f"({n}, {c}, {h}, {w})",
        dtype=DT[dtype] + (f"/{DT[sd]}" if sd != dtype else ""),
        **kw,
    )


def _gdl_inputs(b, h, w, dtype, strided, cl=False):
    g = torch.Generator().manual_seed(2)
    p = torch.randn(b, 3, h, w, generator=g).to(dtype)
    t = torch.randn(b, 3, h, w, generator=g).to(dtype)
    if cl:  # channels_last frames: read in place as interleaved planes of W * 3 values
        p, t = p.contiguous(memory_format=CL), t.contiguous(memory_format=CL)
    if strided:  # rows one element off the 16-byte alignment: the element-wise variant
        p, t = (torch.cat([torch.zeros(1, dtype=dtype), x.flatten()])[1:].view(x.shape) for x in (p, t))
    return p, t


def gdl_band_rows(b, h, w) -> int:
    """The band height of the GDL kernels' work split (make_plan in csrc/cuda/gdl_launch.cuh)."""
    strips, rows = -(-w // 128), 32
    while rows > 4 and b * strips * -(-h // rows) < 8192:
        rows //= 2
    return min(rows, h)


def gdl_reread_bound(b, h, w, dtype, halo_rows: int, d: int = 1) -> float:
    """Each warp item also loads `halo_rows` rows next to its band of R rows (1 forward, 2
    backward), and per row at most two edge lanes load outside its strip: one element, or in an
    interleaved plane (horizontal pairs d <= 4 apart) one lane Pack, one sector each, against the
    strip row's 128 * element size / 32 sectors; the float64 lane packs are two loads that each
    touch every sector of the strip row. b images of 3 channels, w columns; an interleaved plane
    (d > 1) is one image of w * 3 columns."""
    size = torch.tensor([], dtype=dtype).element_size()
    images, cols = (b * 3, w) if d == 1 else (b, w * 3)
    bound = (1 + halo_rows / gdl_band_rows(images, h, cols)) * (1 + 2 / (128 * size / SECTOR))
    return 2 * bound if dtype == torch.float64 else bound


def gdl_forward_case(b, h, w, dtype, strided=False, cl=False, **kw):
    p, t = _gdl_inputs(b, h, w, dtype, strided, cl)
    e, bhw = p.element_size(), p.numel()

    def must_move(launch):
        return 2 * bhw * e, launch["grid"][0] * ACC[dtype]  # one partial sum per group

    return Case(
        name="gdl forward" + (" misaligned" if strided else "") + (" channels_last" if cl else ""),
        kernel="gdl_forward",
        run=lambda ops: ops.gdl_forward(p, t, 1.0, 1),
        must_move=must_move,
        shape=f"({b}, 3, {h}, {w})" + (" misaligned" if strided else "") + (" cl" if cl else ""),
        dtype=DT[dtype],
        **kw,
    )


def gdl_backward_case(b, h, w, dtype, strided=False, target=True, cl=False, **kw):
    p, t = _gdl_inputs(b, h, w, dtype, strided, cl)
    e, bhw = p.element_size(), p.numel()
    grad = torch.tensor(1.3, dtype=dtype)

    def must_move(_launch):
        return 2 * bhw * e + ACC[dtype], bhw * e * (2 if target else 1)  # + the scale

    return Case(
        name="gdl backward"
        + (" misaligned" if strided else "")
        + (" channels_last" if cl else "")
        + (" +target" if target else ""),
        kernel="gdl_backward",
        run=lambda ops: ops.gdl_backward(grad, p, t, 1.0, 1, target),
        must_move=must_move,
        shape=f"({b}, 3, {h}, {w})" + (" misaligned" if strided else "") + (" cl" if cl else ""),
        dtype=DT[dtype],
        **kw,
    )


def cases() -> list[Case]:
    """Every kernel family in its vector and scalar variants, each element type, both layouts."""
    f32, f64, bf16, f16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
    out = []
    for fmt in (torch.contiguous_format, CL):
        out += [
            convlstm_forward_case(2, 32, 16, 16, f32, fmt, width=16),
            convlstm_forward_case(2, 32, 16, 16, bf16, fmt, state_dtype=f32, width=8),
            convlstm_forward_case(2, 32, 16, 16, f64, fmt, width=16),
            convlstm_backward_case(2, 32, 16, 16, f32, fmt, width=16),
            convlstm_backward_case(2, 32, 16, 16, bf16, fmt, state_dtype=f32, width=8),
            convlstm_backward_case(2, 32, 16, 16, f64, fmt, width=16),
        ]
    # The scalar variant: 7x7 frames (P = 49) in NCHW, 30 channels in channels_last.
    # Rows of 49 or 30 floats do not start on sector boundaries: a 128-byte request can touch 5
    # sectors where 4 would hold it, and neighbouring rows share a sector.
    scalar = dict(width=4, floor=0.75, reread=1.5)
    out += [
        convlstm_forward_case(2, 32, 7, 7, f32, torch.contiguous_format, note="P % 4 != 0", **scalar),
        convlstm_backward_case(2, 32, 7, 7, f32, torch.contiguous_format, note="P % 4 != 0", **scalar),
        convlstm_forward_case(2, 30, 8, 8, f32, CL, note="C % 4 != 0", **scalar),
        convlstm_backward_case(2, 30, 8, 8, f32, CL, note="C % 4 != 0", **scalar),
    ]
    # GDL: 144 columns (a full strip of 128 and a partial one), bands of 4 rows at this size.
    for dtype, width, floor in ((f32, 16, 1.0), (bf16, 8, 1.0), (f16, 8, 1.0), (f64, 16, 0.5)):
        note = "two 16-byte loads per 32-byte lane pack" if dtype == f64 else ""
        fwd, bwd = gdl_reread_bound(2, 40, 144, dtype, 1), gdl_reread_bound(2, 40, 144, dtype, 2)
        out += [
            gdl_forward_case(2, 40, 144, dtype, width=width, floor=floor, reread=fwd, note=note),
            gdl_backward_case(2, 40, 144, dtype, width=width, floor=floor, reread=bwd, note=note),
        ]
    # channels_last frames: interleaved planes of 48 x 3 = 144 values read in place (no copy),
    # left and right neighbours 3 values away.
    for dtype, width in ((f32, 16), (bf16, 8)):
        note = "interleaved plane, pairs 3 apart"
        fwd, bwd = gdl_reread_bound(2, 40, 48, dtype, 1, d=3), gdl_reread_bound(2, 40, 48, dtype, 2, d=3)
        out += [
            gdl_forward_case(2, 40, 48, dtype, cl=True, width=width, reread=fwd, note=note),
            gdl_backward_case(2, 40, 48, dtype, cl=True, width=width, reread=bwd, note=note),
        ]
    strided = "element-wise variant (rows not 16-byte aligned): not checked"
    out += [
        gdl_backward_case(
            2, 40, 144, f32, target=False, width=16, reread=gdl_reread_bound(2, 40, 144, f32, 2)
        ),
        gdl_forward_case(2, 40, 144, f32, strided=True, width=4, floor=0, reread=0, note=strided),
        gdl_backward_case(2, 40, 144, f32, strided=True, width=4, floor=0, reread=0, note=strided),
    ]
    # Built to be uncoalesced: c_prev channels_last while the gates are NCHW (the op accepts it,
    # the layer never passes it): each lane's c_prev element lies C elements from its neighbour's.
    out.append(
        convlstm_forward_case(
            2,
            32,
            16,
            16,
            f32,
            torch.contiguous_format,
            cprev_fmt=CL,
            width=4,
            uncoalesced=True,
            note="built to fail: mixed layouts",
        )
    )
    return out


def efficiency(site: dict) -> float:
    """The fewest sectors the requests' distinct bytes could lie in / the sectors they touch."""
    return site["min_sectors"] / site["sectors"] if site["sectors"] else 1.0


def summarize(case: Case, launch: dict) -> dict:
    sites = launch["sites"]
    sectors = sum(s["sectors"] for s in sites)
    hot = [s for s in sites if 16 * s["sectors"] >= sectors]
    fp = launch["footprint"]
    must_load, must_store = case.must_move(launch)
    return {
        "case": case.name,
        "dtype": case.dtype,
        "shape": case.shape,
        "variant": launch["variant"],
        "grid": launch["grid"],
        "block": launch["block"],
        "requests": sum(s["requests"] for s in sites),
        "hot_lines": [s["site"] for s in hot],
        "hot_efficiency": min(efficiency(s) for s in hot),
        "hot_bytes_per_access": min(s["bytes"] / s["lane_accesses"] for s in hot),
        "hot_sectors_per_request": sum(s["sectors"] for s in hot) / sum(s["requests"] for s in hot),
        "efficiency": sum(s["min_sectors"] for s in sites) / sectors,
        "reread": sum(s["sectors"] for s in sites if s["op"] == "load") / max(fp["load_sectors"], 1),
        "rewrite": sum(s["bytes"] for s in sites if s["op"] == "store") / max(fp["store_bytes"], 1),
        "load_bytes": fp["load_bytes"],
        "store_bytes": fp["store_bytes"],
        "must_load": must_load,
        "must_store": must_store,
        "dram_bytes": SECTOR * (fp["load_sectors"] + fp["store_sectors"]),
        "floor": case.floor,
        "width": case.width,
        "reread_bound": case.reread,
        "uncoalesced": case.uncoalesced,
        "note": case.note,
        "sites": sites,
    }


def failures(row: dict) -> list[str]:
    """What of the case's expectations the launch misses (empty: all met)."""
    out = []
    what = f"{row['case']} {row['dtype']} {row['shape']} ({row['variant']})"
    if (row["load_bytes"], row["store_bytes"]) != (row["must_load"], row["must_store"]):
        out.append(
            f"{what}: footprint {row['load_bytes']} B read / {row['store_bytes']} B written, "
            f"must move {row['must_load']} / {row['must_store']}"
        )
    if row["floor"] and row["hot_efficiency"] < row["floor"] - 1e-9:
        out.append(f"{what}: hot lines' sector efficiency {row['hot_efficiency']:.3f} < {row['floor']}")
    if row["hot_bytes_per_access"] < row["width"]:
        out.append(f"{what}: {row['hot_bytes_per_access']:.1f} bytes per lane access < {row['width']}")
    if row["reread_bound"] and row["reread"] > row["reread_bound"]:
        out.append(f"{what}: loads ask for {row['reread']:.3f} x the sectors read, > {row['reread_bound']}")
    if row["rewrite"] > 1.0 + 1e-9:
        out.append(f"{what}: stores write {row['rewrite']:.3f} x the distinct bytes (bytes written twice)")
    return out


def run_case(ops, case: Case) -> dict:
    ops.memory_trace()  # drop anything traced before
    ops.set_memory_trace(True)
    try:
        case.run(ops)
    finally:
        ops.set_memory_trace(False)
    launches = [x for x in json.loads(ops.memory_trace()) if x["variant"].startswith(case.kernel)]
    if len(launches) != 1:
        raise RuntimeError(f"{case.name}: expected one {case.kernel} launch, traced {len(launches)}")
    return summarize(case, launches[0])


def check(rows: list[dict]) -> list[str]:
    """The report's verdict: every case meets its expectations, and the case built to be
    uncoalesced misses its floor (else the model could not see uncoalesced access)."""
    problems = []
    for row in rows:
        fails = failures(row)
        if row["uncoalesced"]:
            if not any("sector efficiency" in f for f in fails):
                problems.append(f"{row['case']}: built to be uncoalesced, but the model reports it coalesced")
        else:
            problems += fails
    return problems


def markdown(rows: list[dict], when: str) -> str:
    lines = [
        "# CUDA kernels' global-memory traffic, by construction (CPU execution model)",
        "",
        f"{when}; torch {torch.__version__}; `python scripts/cuda_memory_report.py` (the counts",
        "depend on the kernels, the launch configuration and the shapes only, not on the machine).",
        "",
        "Per launch: the requests a warp issues (the k-th execution of a source line by its lanes),",
        "the 32-byte sectors each touches, and the distinct bytes read and written. Hot lines: those",
        "with >= 1/16 of the launch's sectors. B/lane and sectors/req: on the hot lines. Efficiency:",
        "the fewest sectors the requested bytes fit in / the sectors touched, on the hot lines (and",
        "over all requests). Re-reads: the sectors all loads ask for / the distinct sectors read.",
        "",
        "| kernel | dtype | shape | variant | B/lane | sectors/req | efficiency hot (all) | re-reads "
        "| read + written = must move | DRAM sectors x 32 | |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ok = r["load_bytes"] == r["must_load"] and r["store_bytes"] == r["must_store"]
        moved = f"{r['load_bytes'] + r['store_bytes']:,} B" + (" ✓" if ok else " ✗")
        lines.append(
            f"| {r['case']} | {r['dtype']} | {r['shape']} | {r['variant'].split(' ', 1)[-1]} "
            f"| {r['hot_bytes_per_access']:.0f} | {r['hot_sectors_per_request']:.1f} "
            f"| {r['hot_efficiency']:.2f} ({r['efficiency']:.2f}) | {r['reread']:.3f} "
            f"| {moved} | {r['dram_bytes']:,} B | {r['note']} |"
        )
    lines += [
        "",
        "✓: the distinct bytes read and written equal what the kernel must move (its operands once;",
        "the ConvLSTM backward's and the GDL forward's per-block partial sums included).",
        "Efficiency 1.00: the requests touch no sector their bytes could have done without. The",
        "scalar ConvLSTM variants (7x7 frames, 30 channels) read rows that do not start on a sector",
        "boundary: 4 sectors' worth can touch 5, and neighbouring rows share a sector. The float64",
        "GDL loads its 32-byte lane packs as two 16-byte loads, each touching every other 16 bytes",
        "(0.50 per load; the second finds the sectors the first brought in). The GDL's re-reads: each",
        "warp item also loads the row above its band (and the backward the row below), 1/R more",
        "with bands of R = 4 rows at this size (up to 32 at sizes that fill a GPU), and its edge",
        "lanes load one element of the neighbouring strip per row. The element-wise GDL variant",
        "(rows not aligned for the lane packs; rows whose W stride is not 1 are copied to contiguous",
        "ones first) loads each lane's 4 columns one at a time: its footprint is checked, its",
        "requests are not. The ConvLSTM's re-reads are the parameter loads (each thread loads",
        "its channels' bias and peephole weights once).",
        "The last case is built to be uncoalesced (c_prev channels_last under NCHW gates: right",
        "values, one sector per lane) and shows what the model reports for such an access.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cuda_memory_model"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    import cuda_emu_build

    ops = cuda_emu_build.build()
    rows = [run_case(ops, c) for c in cases()]
    problems = check(rows)
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps({"when": when, "torch": torch.__version__, "problems": problems, "cases": rows}, indent=1)
        + "\n"
    )
    out.with_suffix(".md").write_text(markdown(rows, when))
    print(out.with_suffix(".md").read_text())
    for p in problems:
        print("FAIL:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
