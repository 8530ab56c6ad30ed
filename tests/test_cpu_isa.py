"""Runtime choice of the CPU kernels' ISA level (csrc/cpu/dispatch.cpp) and the separation of the
levels in the built library. The kernels' arithmetic at each level is tested by the op tests
(test_gdl.py, test_convlstm_op.py run at every level, conftest.py)."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pyframepred
from pyframepred import ops, reference

ROOT = Path(__file__).resolve().parent.parent
X86 = platform.machine().lower() in ("x86_64", "amd64")
NEEDS = {
    "avx2": ("avx2", "fma", "f16c"),
    "avx512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"),
}
NEEDS["avx512_bf16"] = NEEDS["avx512"] + ("avx512_bf16",)
NEEDS["amx"] = NEEDS["avx512_bf16"] + ("amx_tile", "amx_bf16")
LEVELS = ("default", "avx2", "avx512", "avx512_bf16", "amx")


def _cpu_flags():
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def _supported():
    """The levels /proc/cpuinfo says this CPU runs (Linux shows a feature only when the kernel
    enables its register state), or None when it cannot tell."""
    flags = _cpu_flags()
    if flags is None:
        return None
    levels = ["default"]
    for lvl in LEVELS[1:]:
        if X86 and all(f in flags for f in NEEDS[lvl]):
            levels.append(lvl)
    return levels


def _run(code: str, isa: str | None):
    env = dict(os.environ)
    env.pop("PYFRAMEPRED_CPU_ISA", None)
    if isa is not None:
        env["PYFRAMEPRED_CPU_ISA"] = isa
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


_PRINT = (
    "import torch, pyframepred.ops as o; p = torch.randn(2, 9, 20); "
    "print(o.cpu_isa(), float(o.gdl_loss(p, p.flip(-1))))"
)


def _stderr_lines(proc):
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("pyframepred:")]


def test_levels_compiled_and_in_use():
    levels = ops.cpu_isa_levels()
    assert levels == (LEVELS if X86 else ("default",))
    assert ops.cpu_isa() in levels
    from pyframepred import _build_config

    assert tuple(_build_config.CPU_ISA_LEVELS) == levels


def test_load_picks_the_best_supported_level():
    supported = _supported()
    if supported is None:
        pytest.skip("no /proc/cpuinfo to compare with")
    proc = _run(_PRINT, None)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == supported[-1]
    assert _stderr_lines(proc) == []


@pytest.mark.parametrize("level", ["default", "AVX2", " Avx512 ", "AVX512_bf16", "amx"])
def test_env_var_forces_the_level(level):
    want = level.strip().lower()
    supported = _supported() or ["default"]
    if want not in ops.cpu_isa_levels() or want not in supported:
        pytest.skip(f"this CPU or build cannot run {want}")
    proc = _run(_PRINT, level)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == want
    assert _stderr_lines(proc) == []


def test_env_var_unknown_value_warns_and_uses_the_best_level():
    proc = _run(_PRINT, "sse9")
    assert proc.returncode == 0, proc.stderr
    best = _run(_PRINT, None).stdout.split()[0]
    assert proc.stdout.split()[0] == best
    assert _stderr_lines(proc) == [
        "pyframepred: warning: ignoring PYFRAMEPRED_CPU_ISA=sse9 (not one of default, avx2, "
        f"avx512, avx512_bf16, amx); using the CPU kernels for {best}"
    ]


def test_env_var_level_the_cpu_lacks_warns_and_falls_back():
    supported = _supported()
    lacking = [lvl for lvl in ops.cpu_isa_levels() if supported and lvl not in supported]
    if not lacking:
        pytest.skip("this CPU runs every compiled level")
    proc = _run(_PRINT, lacking[-1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == supported[-1]
    [line] = _stderr_lines(proc)
    assert line.startswith(f"pyframepred: warning: PYFRAMEPRED_CPU_ISA={lacking[-1]} but this CPU lacks ")
    assert line.endswith(f"; using {supported[-1]}")


def test_set_cpu_isa_switches_and_rejects_what_cannot_run():
    before = ops.cpu_isa()
    assert ops._set_cpu_isa("DEFAULT") == before
    try:
        assert ops.cpu_isa() == "default"
        with pytest.raises(
            RuntimeError,
            match="'sse9' is not a CPU ISA level; expected one of default, avx2, avx512, avx512_bf16, amx",
        ):
            ops._set_cpu_isa("sse9")
        assert ops.cpu_isa() == "default"
        supported = _supported()
        for lvl in ops.cpu_isa_levels():
            if supported is not None and lvl not in supported:
                with pytest.raises(RuntimeError, match=f"{lvl} needs .*, which this CPU lacks"):
                    ops._set_cpu_isa(lvl)
                assert ops.cpu_isa() == "default"
    finally:
        ops._set_cpu_isa(before)


def test_levels_agree():
    """Every level this CPU runs gives the reference's values and gradients."""
    pred = torch.randn(3, 2, 19, 37, requires_grad=True)
    target = torch.randn(3, 2, 19, 37)
    x = torch.randn(2, 32, 5, 7, requires_grad=True)
    c = torch.randn(2, 8, 5, 7)
    ref_loss = reference.gdl_loss(pred, target, 1.5)
    (ref_gp,) = torch.autograd.grad(ref_loss, pred)
    ref_h, ref_c = reference.convlstm_gates(x, None, c)
    (ref_gx,) = torch.autograd.grad((ref_h.sum() + ref_c.sum()), x)
    before = ops.cpu_isa()
    ran = []
    try:
        for lvl in ops.cpu_isa_levels():
            try:
                ops._set_cpu_isa(lvl)
            except RuntimeError:
                continue
            ran.append(lvl)
            loss = ops.gdl_loss(pred, target, 1.5)
            (gp,) = torch.autograd.grad(loss, pred)
            torch.testing.assert_close(loss, ref_loss)
            torch.testing.assert_close(gp, ref_gp)
            h, c2 = ops.convlstm_gates(x, None, c)
            (gx,) = torch.autograd.grad(h.sum() + c2.sum(), x)
            torch.testing.assert_close(h, ref_h)
            torch.testing.assert_close(gx, ref_gx)
    finally:
        ops._set_cpu_isa(before)
    assert "default" in ran


def _checker():
    spec = importlib.util.spec_from_file_location("check_cpu_isa", ROOT / "scripts" / "check_cpu_isa.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not X86, reason="the AVX2/AVX512 levels exist on x86-64 only")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_built_library_keeps_the_levels_apart():
    """No AVX/AVX-512 instruction outside the AVX2/AVX512 kernels (the portable path cannot fault
    on an older CPU), and the AVX512 kernels really are AVX-512 code -- also where this CPU cannot
    run them."""
    problems, totals = _checker().check(pyframepred._C.__file__)
    assert problems == []
    assert totals["AVX2"][1] > 0 and totals["AVX2"][2] == 0
    assert totals["AVX512"][2] > 0 and totals["AVX512"][3] > 0
    assert totals["DEFAULT"][0] > 0 and totals["DEFAULT"][1:] == [0, 0, 0, 0, 0]
    assert totals["AVX512"][5] == 0  # no AVX512-BF16 instruction below its level
    assert totals["AVX512_BF16"][3] > 0 and totals["AVX512_BF16"][5] > 0  # its bf16 kernel
    assert totals["AMX"][3] > 0 and totals["AMX"][4] > 0  # AVX-512 code and the tile kernel


def test_checker_flags_avx512_code_outside_its_level(tmp_path):
    """The check itself: an inline function compiled for AVX-512 and kept by the linker for
    everyone is reported."""
    if not X86 or shutil.which("objdump") is None or shutil.which("c++") is None:
        pytest.skip("needs x86-64, objdump and a C++ compiler")
    src = tmp_path / "leak.cpp"
    src.write_text(
        "inline void scale(float* p, int n) { for (int i = 0; i < n; ++i) p[i] *= 3; }\n"
        "namespace pyframepred::cpu::AVX512 { void k(float* p) { scale(p, 1000); } }\n"
        "void (*keep)(float*, int) = &scale;\n"
    )
    lib = tmp_path / "leak.so"
    subprocess.run(["c++", "-O3", "-shared", "-fPIC", "-mavx512f", str(src), "-o", str(lib)], check=True)
    problems, _ = _checker().check(str(lib))
    assert any("portable function" in p and "scale(float*, int)" in p for p in problems)
