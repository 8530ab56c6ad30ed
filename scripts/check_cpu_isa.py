"""Checks that a built pyframepred library keeps its AVX2 and AVX-512 code inside those levels.

The CPU kernels are compiled once per ISA level (csrc/cpu/isa_levels.txt) and linked into one
library; the portable path must not reach an instruction the CPU may lack. The risk is an inline
function of a header that objects of several levels instantiate: the linker keeps one copy, and
if it kept the AVX-512 one, portable code would call it. This script disassembles the library
(objdump) and classifies every function by the level namespace in its name
(pyframepred::cpu::AVX2 / AVX512 / AVX512_BF16 / AMX or at::vec::AVX2 / AVX512, also inside
template arguments and OpenMP outlined copies):

* functions of no level contain no VEX- or EVEX-encoded instruction (AVX, AVX2, FMA, F16C,
  AVX-512: what -mavx2/-mavx512f let the compiler emit),
* AVX2-level functions contain no EVEX-encoded (AVX-512) instruction,
* AMX tile instructions (tileloadd, tdpbf16ps, ...) appear in AMX-level functions only,
* AVX512-BF16 instructions (vdpbf16ps, vcvtneps2bf16) in AVX512_BF16- and AMX-level functions
  only, and the AVX512_BF16 level has some (its bfloat16 kernel),
* and, unless --no-avx512-required, the AVX512-level functions really use AVX-512 (zmm).

    python scripts/check_cpu_isa.py pyframepred/_C.abi3.so
    python scripts/check_cpu_isa.py build-cmake/libpyframepred_ops.so

Exit status 0 when the library is clean, 1 with the offending functions listed otherwise, 2 when
it cannot be checked (no objdump, not x86-64).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys

# Legacy prefixes that may precede a VEX (c4/c5) or EVEX (62) escape byte; in 64-bit mode those
# bytes always start a VEX/EVEX prefix (LES, LDS and BOUND do not exist there).
_PREFIXES = {"66", "67", "f2", "f3", "2e", "3e", "26", "64", "65", "36", "f0"}
_FUNC = re.compile(r"^[0-9a-f]+ <(.*)>:$")
_BF16 = {"vdpbf16ps", "vcvtneps2bf16", "vcvtne2ps2bf16"}
_LEVELS = ("DEFAULT", "AVX2", "AVX512", "AVX512_BF16", "AMX")


def level_of(name: str) -> str:
    """The ISA level a function belongs to, from the namespaces in its (de)mangled name."""
    if "AMX::" in name or "3AMX" in name:
        return "AMX"
    if "AVX512_BF16::" in name or "11AVX512_BF16" in name:
        return "AVX512_BF16"
    if "AVX512::" in name or "6AVX512" in name:
        return "AVX512"
    if "AVX2::" in name or "4AVX2" in name:
        return "AVX2"
    return "DEFAULT"


def scan(path: str) -> dict:
    """{function: [vex, evex, zmm-using, AMX tile, AVX512-BF16 instruction counts]}."""
    objdump = shutil.which("objdump")
    if objdump is None:
        raise FileNotFoundError("objdump not found")
    text = subprocess.run(
        [objdump, "-d", "-C", "-w", path], capture_output=True, text=True, check=True
    ).stdout
    if "x86-64" not in text[:2000]:
        raise ValueError(f"{path} is not an x86-64 library")
    stats: dict = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    func = None
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            func = m.group(1)
            continue
        parts = line.split("\t")
        if func is None or len(parts) < 3:
            continue
        raw = parts[1].split()
        i = 0
        while i < len(raw) and raw[i] in _PREFIXES:
            i += 1
        if i == len(raw):
            continue
        s = stats[func]
        if raw[i] in ("c4", "c5"):
            s[0] += 1
        elif raw[i] == "62":
            s[1] += 1
        if "zmm" in parts[2]:
            s[2] += 1
        mnemonic = parts[2].split()[0]
        if "tmm" in parts[2] or mnemonic in ("tilerelease", "ldtilecfg", "sttilecfg"):
            s[3] += 1
        if mnemonic in _BF16:
            s[4] += 1
    return stats


def check(path: str, require_avx512: bool = True) -> tuple[list[str], dict]:
    """(problems, per-level totals) for the library at `path`."""
    stats = scan(path)
    totals = {lvl: [0, 0, 0, 0, 0, 0] for lvl in _LEVELS}
    problems = []
    for func, (vex, evex, zmm, amx, bf16) in stats.items():
        lvl = level_of(func)
        t = totals[lvl]
        t[0] += 1
        t[1] += vex
        t[2] += evex
        t[3] += zmm
        t[4] += amx
        t[5] += bf16
        if amx and lvl != "AMX":
            problems.append(f"{lvl} function with {amx} AMX instructions: {func}")
        if bf16 and lvl not in ("AVX512_BF16", "AMX"):
            problems.append(f"{lvl} function with {bf16} AVX512-BF16 instructions: {func}")
        if lvl == "DEFAULT" and (vex or evex):
            problems.append(f"portable function with {vex} AVX and {evex} AVX-512 instructions: {func}")
        elif lvl == "AVX2" and evex:
            problems.append(f"AVX2 function with {evex} AVX-512 instructions: {func}")
    if require_avx512 and totals["AVX512"][3] == 0:
        problems.append(
            "no AVX512-level function uses zmm registers: the AVX-512 kernels are "
            "missing or were not compiled for AVX-512"
        )
    if totals["AMX"][0] > 0 and totals["AMX"][4] == 0:
        problems.append("no AMX-level function uses a tile instruction: the AMX kernel is missing")
    if totals["AVX512_BF16"][0] > 0 and totals["AVX512_BF16"][5] == 0:
        problems.append(
            "no AVX512_BF16-level function uses an AVX512-BF16 instruction: its bfloat16 kernel is missing"
        )
    return problems, totals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("library")
    ap.add_argument(
        "--no-avx512-required",
        action="store_true",
        help="do not require AVX-512 code (a build without the AVX512 level)",
    )
    args = ap.parse_args(argv)
    try:
        problems, totals = check(args.library, not args.no_avx512_required)
    except (FileNotFoundError, ValueError) as exc:
        print(f"cannot check {args.library}: {exc}", file=sys.stderr)
        return 2
    for lvl, (n, vex, evex, zmm, amx, bf16) in totals.items():
        print(
            f"{lvl:11s} {n:5d} functions, {vex:6d} VEX, {evex:6d} EVEX, {zmm:6d} zmm, "
            f"{amx:4d} AMX, {bf16:4d} AVX512-BF16 instructions"
        )
    for p in problems:
        print(p)
    print("ISA levels kept apart" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
