"""The README's performance tables are what benchmarks/record.py generates from the results.

No benchmark runs here: only the table generation (``record.py --regen-only``) is checked, on the
recorded files in benchmarks/results/ and on small hand-made ones.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
pytestmark = pytest.mark.skipif(not (BENCH / "record.py").exists(), reason="needs a checkout")

if (BENCH / "record.py").exists():
    sys.path.insert(0, str(BENCH))
    import record  # noqa: E402
    import report  # noqa: E402


def _sections(text: str) -> dict:
    return dict(re.findall(r"<!-- results:(\S+) -->\n(.*?)<!-- /results:\1 -->", text, re.S))


def test_readme_tables_match_the_recorded_results(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    done = record.regen_readme(readme, BENCH / "results")
    assert set(done) == set(report.SECTIONS)
    regenerated = readme.read_text()
    assert regenerated == (ROOT / "README.md").read_text(), (
        "README.md's performance tables differ from the results: run "
        "`python benchmarks/record.py --regen-only`"
    )
    for name, body in _sections(regenerated).items():
        assert body.strip(), name
        for line in body.splitlines():
            assert len(line) <= report.WIDTH, (name, line)
            # a share of a bound is never printed above 100%
            for pct in re.findall(r"(\d+)% of \d+", line):
                assert int(pct) <= 100, (name, line)


def _bench(group, impl, times, **extra):
    times = sorted(times)
    n = len(times)
    q1, q3 = times[n // 4], times[(3 * n) // 4]
    return {
        "group": group,
        "name": f"t[{impl}]",
        "extra_info": dict(impl=impl, **extra),
        "stats": {"median": times[n // 2], "iqr": q3 - q1, "mean": sum(times) / n},
    }


def test_noisy_rows_cache_resident_share_and_allocator_label(tmp_path):
    group = "gdl forward large (8, 3, 256, 256) cpu"
    small = 1 << 20  # 1 MiB: fits the 32 MiB cache below
    data = {
        "machine_info": {"pyframepred": {"allocator": "plain", "llc_bytes": 32 << 20}},
        "benchmarks": [
            # 1 MiB in 10 µs = 105 GB/s against a 20 GB/s copy: above the ceiling, in cache
            _bench(
                group, "fused", [1e-5] * 5, device="cpu", bytes_moved=small, copy_GBps=20.0, allocator="plain"
            ),
            # one round in two is 3x slower: IQR/median far above 25%
            _bench(
                group,
                "reference",
                [1e-3, 3e-3, 1e-3, 3e-3, 1e-3, 3e-3],
                device="cpu",
                bytes_moved=small,
                copy_GBps=20.0,
                allocator="tuned",
            ),
        ],
    }
    path = tmp_path / "gdl_cpu.json"
    path.write_text(json.dumps(data))
    text = report.render(path)
    fused = next(line for line in text.splitlines() if line.startswith("| fused "))
    ref = next(line for line in text.splitlines() if line.startswith("| reference "))
    assert "cache-resident" in fused and "| plain |" in fused
    assert "noisy" in ref and "| tuned |" in ref and "% of 20" in ref
    assert "cache-resident: the op's bytes fit in the 32 MiB" in text
    # The same data over a larger working set: not cache-resident, still never above 100%.
    for b in data["benchmarks"]:
        b["extra_info"]["bytes_moved"] = 64 << 20
    data["benchmarks"][0]["stats"]["median"] = 1e-3
    path.write_text(json.dumps(data))
    fused = next(line for line in report.render(path).splitlines() if line.startswith("| fused "))
    assert "above copy BW" in fused and not re.search(r"\d{3,}% of", fused)


def _layer_row(size, mode, fused_ms, others):
    impls = {"fused": {"median_ms": fused_ms, "iqr_over_median": 0.02}}
    for impl, (ms, ratio) in others.items():
        impls[impl] = {"median_ms": ms, "iqr_over_median": 0.03, "fused_speedup_median": ratio}
    return {"size": size, "mode": mode, "impls": impls, "profile_fused": {"conv_share": 0.5}}


def test_layer_step_table_takes_cpu_and_gpu_records(tmp_path):
    """A GPU record of bench_layer.py (--device cuda) is listed after the CPU ones, under its
    GPU's name, with milliseconds to three significant digits and its CUDA settings said."""
    cpu = {
        "machine": {
            "date": "2026-12-05",
            "cpu": "Some CPU",
            "cpu_isa_flags": ["avx2"],
            "extension_cpu_isa": "avx2",
            "threads": 2,
            "torch": "2.13.0+cpu",
            "allocator": "glibc default",
        },
        "results": [_layer_row("8x16x[32]@32", "float32", 81.4, {"cat": (186.0, 2.29)})],
    }
    gpu = {
        "machine": {
            "date": "2026-12-06",
            "cpu": "Host CPU",
            "cpu_isa_flags": ["avx2"],
            "extension_cpu_isa": "avx2",
            "threads": 16,
            "torch": "2.11.0+cu130",
            "allocator": "glibc default",
            "device": "cuda",
            "gpu": "NVIDIA H100 80GB HBM3",
            "cuda": "13.0",
            "cudnn": 91500,
            "cudnn_allow_tf32": True,
            "cudnn_benchmark": False,
        },
        "results": [
            _layer_row("8x16x[32]@32", "bf16-cl", 1.234, {"cat": (3.21, 2.6), "cat-compile": (12.5, 1.7)}),
        ],
    }
    results = tmp_path / "results"
    results.mkdir()
    (results / "layer_cpu.json").write_text(json.dumps(cpu))
    (results / "layer_gpu_h100.json").write_text(json.dumps(gpu))
    files = record.files_for(results, "layer")
    assert [p.name for p in files] == ["layer_cpu.json", "layer_gpu_h100.json"]
    lines = report.section_layer_step([report.load(p) for p in files])
    cpu_row = next(line for line in lines if line.startswith("| 8x16x[32]@32 | float32"))
    gpu_row = next(line for line in lines if line.startswith("| 8x16x[32]@32 | bf16-cl"))
    assert cpu_row.startswith("| 8x16x[32]@32 | float32 | avx2 | plain | 81 | 186 2.29× | — |")
    assert gpu_row.startswith("| 8x16x[32]@32 | bf16-cl | H100 | cuda | 1.23 | 3.2 2.60× | 12.5 1.70× | — |")
    text = " ".join(lines)
    assert "NVIDIA H100 80GB HBM3, CUDA 13.0, cuDNN 91500" in text and "with TF32" in text
    assert "`layer_gpu_h100.json`" in text
    assert report.gpu_slug_of("NVIDIA H200") == "H200"
