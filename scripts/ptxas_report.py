#!/usr/bin/env python3
"""Static GPU evidence without a GPU: ptxas resource usage and SASS of the CUDA kernels.

Compiles csrc/cuda/*_cuda.cu with nvcc for each architecture (default sm_80 and sm_90) with
--resource-usage, records per kernel the registers, spill bytes, stack frame and static shared
memory and the occupancy they imply (resident warps per SM / the SM's maximum, from the
architecture's register file, shared memory and thread/block limits and the kernel's block
size), and checks:

  * no kernel spills (spill stores/loads == 0);
  * every kernel's occupancy >= --min-occupancy (default 0.25: 2 resident 256-thread blocks,
    the least that the kernels' __launch_bounds__ allow, i.e. at most 128 registers; most
    variants are bounded to 3 or 4 blocks, see min_blocks_* in the kernel headers);
  * SASS (cuobjdump -sass): the kernels that intend vector accesses (ConvLSTM vec variants, GDL
    pack variants) use 128-bit global loads and stores (LDG.E.128 / STG.E.128; 64-bit for
    16-bit element types, whose vector is 4 x 2 bytes), and the strided variants do not need to.

Writes benchmarks/results/ptxas_sm80_sm90.json and .md. Needs nvcc and an importable torch (for
its headers; a CPU build of torch ships them too). Exit status 1 when a check fails.

  python scripts/ptxas_report.py [--arch 80 --arch 90] [--min-occupancy 0.25] [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["csrc/cuda/convlstm_cuda.cu", "csrc/cuda/gdl_cuda.cu"]

# Per-SM limits (CUDA occupancy calculator data).
ARCH = {
    80: dict(regs=65536, max_warps=64, max_blocks=32, smem=167936, smem_reserved=1024, reg_unit=256),
    90: dict(regs=65536, max_warps=64, max_blocks=32, smem=233472, smem_reserved=1024, reg_unit=256),
}
BLOCK_THREADS = 256  # __launch_bounds__ of every kernel here


def nvcc_flags():
    import torch.utils.cpp_extension as ce

    inc = []
    for p in ce.include_paths():
        inc += ["-I", p]
    py_inc = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    import torch

    aten = Path(torch.__file__).parent / "include" / "ATen" / "ATen.h"
    needs20 = aten.exists() and "C++20" in aten.read_text(errors="ignore")
    std = "-std=c++20" if needs20 else "-std=c++17"
    return inc + [
        "-I",
        str(ROOT / "csrc"),
        "-I",
        py_inc,
        std,
        "-O3",
        "--expt-relaxed-constexpr",
        "-D__CUDA_NO_HALF_OPERATORS__",
        "-D__CUDA_NO_HALF_CONVERSIONS__",
        "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-D__CUDA_NO_HALF2_OPERATORS__",
        "-DTORCH_EXTENSION_NAME=_C",
        "-DPy_LIMITED_API=0x030A0000",
    ]


def find_cuobjdump():
    """cuobjdump from PATH, the toolkit behind nvcc, or the copy Triton bundles with torch."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    nvcc = shutil.which("nvcc")
    cands = []
    if nvcc:
        cands.append(Path(os.path.realpath(nvcc)).parent / "cuobjdump")
    cands += [Path("/usr/local/cuda/bin/cuobjdump")]
    try:
        import triton

        cands.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    except ImportError:
        pass
    for c in cands:
        if c.exists():
            return str(c)
    return None


def compile_one(src: str, arch: int, out_dir: Path, flags):
    # Device code only (-cubin): what ptxas reports and cuobjdump disassembles; the host half of
    # the file is compiled by the real build (CI step 2).
    obj = out_dir / f"{Path(src).stem}_sm{arch}.cubin"
    cmd = [
        "nvcc",
        "-cubin",
        str(ROOT / src),
        "-o",
        str(obj),
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        "--resource-usage",
        "-Xptxas",
        "-warn-spills",
    ] + flags
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed for {src} sm_{arch}:\n{res.stderr[-4000:]}")
    return obj, res.stdout + res.stderr


def demangle(names):
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    out = subprocess.run(
        ["c++filt"], input="\n".join(names), capture_output=True, text=True
    ).stdout.splitlines()
    return dict(zip(names, out))


def parse_resource_usage(text: str):
    """{mangled: {...}} from nvcc --resource-usage output."""
    kernels = {}
    cur = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
        if m:
            cur = m.group(1)
            kernels[cur] = dict(regs=0, spill_stores=0, spill_loads=0, stack=0, smem=0)
            continue
        m = re.search(r"Function properties for (\w+)", line)
        if m:
            cur = m.group(1) if m.group(1) in kernels else cur
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            kernels[cur].update(
                stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3))
            )
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[cur]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            kernels[cur]["smem"] = int(s.group(1)) if s else 0
    return kernels


def occupancy(regs: int, smem: int, arch: int, threads: int = BLOCK_THREADS):
    a = ARCH[arch]
    warps = (threads + 31) // 32
    regs_per_warp = -(-max(regs, 1) * 32 // a["reg_unit"]) * a["reg_unit"]
    by_regs = (a["regs"] // regs_per_warp) // warps
    by_smem = a["smem"] // (smem + a["smem_reserved"]) if smem else a["max_blocks"]
    by_threads = a["max_warps"] // warps
    blocks = min(by_regs, by_smem, by_threads, a["max_blocks"])
    return blocks * warps / a["max_warps"], blocks


def sass_vector_ops(obj: Path, cuobjdump: str):
    """{mangled: {'ldg128': n, 'stg128': n, 'ldg64': n, 'stg64': n}} from cuobjdump -sass."""
    res = subprocess.run([cuobjdump, "-sass", str(obj)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"cuobjdump failed on {obj}: {res.stderr[-2000:]}")
    text = res.stdout
    out, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            cur = m.group(1)
            out[cur] = dict(ldg128=0, stg128=0, ldg64=0, stg64=0)
            continue
        if cur is None:
            continue
        for op in ("LDG", "STG"):
            m = re.search(rf"\b{op}\.E(?:\.[A-Z0-9_]+)*?\.(128|64)\b", line)
            if m:
                out[cur][f"{op.lower()}{m.group(1)}"] += 1
    return out


def intent(name: str):
    """(wants_vector, element_bytes) for a demangled kernel name."""
    elem = 4
    if "c10::Half" in name or "c10::BFloat16" in name:
        elem = 2
    elif re.search(r"<double\b", name):
        elem = 8
    if "convlstm_" in name:
        m = re.search(r", (\d+)>\(", name)
        return (m is not None and int(m.group(1)) > 1), elem
    if "gdl_forward_kernel" in name or "gdl_backward_kernel" in name:
        m = re.search(r", (\d+)>\(", name)  # kD, the last template argument: 0 element-wise
        return (m is not None and int(m.group(1)) > 0), elem
    return False, elem


def short(name: str) -> str:
    name = name.replace("pyframepred::cuda::", "").replace("(anonymous namespace)::", "")
    name = name.replace("c10::BFloat16", "bf16").replace("c10::Half", "half")
    # The power template argument first: demangled as "(pyframepred::GdlPower)0", whose "(" the
    # argument list's removal below would otherwise take for the start of the parameters.
    name = re.sub(r"\(pyframepred::GdlPower\)(\d)", lambda m: "p" + m.group(1), name)
    name = name.replace("pyframepred::GdlPower::", "")
    name = re.sub(r"\(.*\)$", "", name)
    return name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, action="append", help="SM architecture (80, 90)")
    ap.add_argument("--min-occupancy", type=float, default=0.25)
    ap.add_argument(
        "--warn-only",
        action="store_true",
        help="report failed checks but exit 0 (while known failures are being fixed)",
    )
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ptxas_sm80_sm90"))
    args = ap.parse_args()
    archs = args.arch or [80, 90]
    if shutil.which("nvcc") is None:
        print("nvcc not found", file=sys.stderr)
        return 2
    cuobjdump = find_cuobjdump()
    if cuobjdump is None:
        print("cuobjdump not found (PATH, the CUDA toolkit, triton's bundled copy)", file=sys.stderr)
        return 2
    flags = nvcc_flags()
    version = (
        subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    )
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [(s, a) for s in SOURCES for a in archs]
        with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
            futs = {ex.submit(compile_one, s, a, Path(tmp), flags): (s, a) for s, a in jobs}
            results = {futs[f]: f.result() for f in cf.as_completed(futs)}
        for src, arch in jobs:
            obj, text = results[(src, arch)]
            usage = parse_resource_usage(text)
            sass = sass_vector_ops(obj, cuobjdump)
            names = demangle(list(usage))
            for mangled, u in sorted(usage.items(), key=lambda kv: names[kv[0]]):
                name = names[mangled]
                occ, blocks = occupancy(u["regs"], u["smem"], arch)
                wants_vec, elem = intent(name)
                s = sass.get(mangled, dict(ldg128=0, stg128=0, ldg64=0, stg64=0))
                width = "128" if elem >= 4 else "64"
                vec_ok = (not wants_vec) or (s[f"ldg{width}"] > 0 and s[f"stg{width}"] > 0)
                if "gdl_forward_kernel" in name and wants_vec:  # writes one partial per block
                    vec_ok = s[f"ldg{width}"] > 0
                row = dict(
                    source=src,
                    arch=f"sm_{arch}",
                    kernel=short(name),
                    regs=u["regs"],
                    spill_stores=u["spill_stores"],
                    spill_loads=u["spill_loads"],
                    stack=u["stack"],
                    smem=u["smem"],
                    blocks_per_sm=blocks,
                    occupancy=round(occ, 4),
                    vector_intended=wants_vec,
                    sass=s,
                    vector_ok=vec_ok,
                )
                rows.append(row)
                if u["spill_stores"] or u["spill_loads"]:
                    failures.append(
                        f"{row['arch']} {row['kernel']}: spills ({u['spill_stores']} B stores, {u['spill_loads']} B loads)"
                    )
                if occ < args.min_occupancy:
                    failures.append(
                        f"{row['arch']} {row['kernel']}: occupancy {occ:.2f} < {args.min_occupancy}"
                    )
                if not vec_ok:
                    failures.append(
                        f"{row['arch']} {row['kernel']}: no {width}-bit vector global loads/stores in SASS ({s})"
                    )
    meta = dict(
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        nvcc=version,
        archs=[f"sm_{a}" for a in archs],
        block_threads=BLOCK_THREADS,
        min_occupancy=args.min_occupancy,
        kernels=len(rows),
        failures=failures,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(meta=meta, kernels=rows), indent=1) + "\n")
    lines = [
        f"# ptxas resource usage and occupancy ({', '.join(meta['archs'])})",
        "",
        f"Recorded {meta['date']} with {version}; written by `python scripts/ptxas_report.py`.",
        f"Occupancy = resident warps per SM / 64 for {BLOCK_THREADS}-thread blocks, from registers,",
        "static shared memory and the SM's limits. Checks: no spills, occupancy >= "
        f"{args.min_occupancy}, vector variants use 128-bit (64-bit for 16-bit types) LDG/STG in SASS.",
        "",
    ]
    for arch in archs:
        sub = [r for r in rows if r["arch"] == f"sm_{arch}"]
        if not sub:
            continue
        occs = [r["occupancy"] for r in sub]
        half = sum(o >= 0.5 for o in occs)
        lines += [
            f"## sm_{arch}: {len(sub)} kernels, registers {min(r['regs'] for r in sub)}-{max(r['regs'] for r in sub)}, "
            f"occupancy {min(occs):.2f}-{max(occs):.2f} ({half} at 0.5 or more), "
            f"spills {sum(r['spill_stores'] + r['spill_loads'] for r in sub)} B",
            "",
            "| kernel | regs | spill B | smem B | blocks/SM | occupancy | LDG/STG .128 | LDG/STG .64 |",
            "|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in sub:
            s = r["sass"]
            lines.append(
                f"| `{r['kernel']}` | {r['regs']} | {r['spill_stores'] + r['spill_loads']} | {r['smem']} | "
                f"{r['blocks_per_sm']} | {r['occupancy']:.2f} | {s['ldg128']}/{s['stg128']} | {s['ldg64']}/{s['stg64']} |"
            )
        lines.append("")
    lines += ["## Result", "", "All checks passed." if not failures else "Failures:", ""] + [
        f"- {f}" for f in failures
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} kernels; {len(failures)} failure(s); written {out}.json/.md")
    for f in failures[:40]:
        print("FAIL", f)
    if failures and args.warn_only:
        print(f"--warn-only: {len(failures)} failed check(s) reported, not enforced")
        return 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
