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
            assert len(line) <= (report.TABLE_WIDTH if line.startswith("|") else report.WIDTH), (name, line)
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
    assert "(?)" in ref and "| tuned |" in ref and "% of 20" in ref
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


def _layer_record(day, cpu, flags, level, rows, allocator="glibc default", caps=None):
    return {
        "machine": {
            "date": day,
            "cpu": cpu,
            "cpu_isa_flags": flags,
            "extension_cpu_isa": level,
            "threads": 2,
            "torch": "2.13.0+cpu",
            "allocator": allocator,
            "torch_cpu_capability": "AVX2" if caps else "AVX512",
            "isa_caps": caps or {},
        },
        "results": rows,
    }


def test_layer_records_newest_first_capped_runs_and_mixed_precision_ratio(tmp_path):
    """CPU records are listed newest day first (plain before tuned); a run with ISA caps says so
    in its rows and its line; the bf16 fused step is set against float32 cat(x, h) per size."""
    rows = [
        _layer_row("8x16x[32]@32", "float32", 80.0, {"cat": (200.0, 2.5)}),
        _layer_row("8x16x[32]@32", "bf16-cl", 50.0, {"cat": (120.0, 2.4)}),
    ]
    results = tmp_path / "results"
    results.mkdir()
    old = _layer_record("2026-12-01", "AMD EPYC 7B13", ["avx2"], "avx2", rows[:1])
    new = _layer_record(
        "2026-12-06", "AMD EPYC 9B14", ["avx2", "avx512f", "avx512_bf16"], "avx512_bf16", rows
    )
    tuned = dict(new, machine=dict(new["machine"], allocator="glibc tuned (mmap/trim thresholds 1 GiB)"))
    caps = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "PYFRAMEPRED_CPU_ISA": "avx2"}
    capped = _layer_record("2026-12-06", "AMD EPYC 9B14", ["avx2", "avx512f"], "avx2", rows[:1], caps=caps)
    for name, rec in {
        "layer_cpu.json": old,
        "layer_cpu_zen4.json": new,
        "layer_cpu_zen4_malloc-tuned.json": tuned,
        "layer_cpu_zen4-avx2.json": capped,
    }.items():
        (results / name).write_text(json.dumps(rec))
    files = record.files_for(results, "layer")
    assert [p.name for p in files] == [
        "layer_cpu_zen4.json",
        "layer_cpu_zen4_malloc-tuned.json",
        "layer_cpu_zen4-avx2.json",
        "layer_cpu.json",
    ]
    lines = report.section_layer_step([report.load(p) for p in files])
    text = " ".join(lines)
    assert "| 8x16x[32]@32 | float32 | avx2† | plain | 80 |" in text
    assert (
        "ISA caps ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, PYFRAMEPRED_CPU_ISA=avx2, ATen at AVX2"
        in text
    )
    # 200 ms of float32 cat over 50 ms of bf16 fused, once per record that has both modes
    assert text.count("bf16 channels_last fused against float32 `cat(x, h)`: 4.00× at 8x16x[32]@32.") == 2
    assert report.cpu_family(report.load(files[0])) == "EPYC"


def test_plot_draws_the_newest_layer_and_op_records(tmp_path, monkeypatch):
    """The README's plot takes the newest CPU record of each plotted suite: the layer step's
    panels (one per size, the dtypes side by side) come from it, the older record is left out."""
    pytest.importorskip("matplotlib")
    import plot

    results = tmp_path / "results"
    results.mkdir()
    old = _layer_record(
        "2026-12-01", "AMD EPYC", ["avx2"], "avx2", [_layer_row("1x1x[1]@8", "float32", 9.0, {})]
    )
    new = _layer_record(
        "2026-12-06",
        "AMD EPYC",
        ["avx2", "avx512f"],
        "avx512",
        [
            _layer_row("8x16x[32]@32", "float32", 80.0, {"cat": (200.0, 2.5), "cat-compile": (160.0, 2.0)}),
            _layer_row("8x16x[32]@32", "bf16-cl", 50.0, {"cat": (120.0, 2.4)}),
        ],
    )
    (results / "layer_cpu.json").write_text(json.dumps(old))
    (results / "layer_cpu_zen4.json").write_text(json.dumps(new))
    drawn = {}
    monkeypatch.setattr(
        plot, "plot", lambda groups, out, note="", layer=None: drawn.update(layer=layer, note=note)
    )
    assert record.regen_plot(tmp_path / "p.png", results)
    assert list(drawn["layer"]) == ["layer training step, T=10\n8x16x[32]@32"]
    panel = drawn["layer"]["layer training step, T=10\n8x16x[32]@32"]
    assert panel["float32"] == {"fused": 0.08, "cat": 0.2, "compile": 0.16}
    assert panel["bf16-cl"] == {"fused": 0.05, "cat": 0.12}
    assert drawn["note"] == "EPYC avx512, 2 threads, plain allocator, 2026-12-06"


def test_capped_op_record_is_labelled_avx2(monkeypatch):
    """A pytest-benchmark record taken with ATen capped to AVX2 (an AVX2 CPU emulated on a wider
    one) is labelled AVX2† in the op tables and says which caps it ran under."""
    import machine

    for k in machine.ISA_CAPS:
        monkeypatch.delenv(k, raising=False)
    assert machine.isa_caps() == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine.isa_caps() == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    info = {
        "isa_flags": ["avx2", "avx512f"],
        "torch_cpu_capability": "AVX2",
        "isa_caps": {"ATEN_CPU_CAPABILITY": "avx2"},
    }
    data = {
        "machine_info": {
            "cpu": {"brand_raw": "AMD EPYC 9B14", "flags": ["avx2", "avx512f"]},
            "pyframepred": info,
        },
        "benchmarks": [],
    }
    assert report.device_label(data) == "EPYC AVX2†"
    assert machine.isa_level(info) == "AVX2 (capped)"
    assert machine.one_line(info).endswith("; ISA caps ATEN_CPU_CAPABILITY=avx2")
    uncapped = dict(info, isa_caps={}, torch_cpu_capability="AVX512")
    assert report.device_label(dict(data, machine_info=dict(data["machine_info"], pyframepred=uncapped))) == (
        "EPYC AVX-512"
    )
    assert machine.isa_level(uncapped) == "AVX-512"


def test_train_script_mode_records(tmp_path):
    """`record.py --suite train` runs bench_train.py as a script: both settings of a model train
    side by side (each in a run folder of its own) and the record and its table are written."""
    import subprocess

    stem = tmp_path / "train_cpu_x"
    cmd = [sys.executable, str(BENCH / "bench_train.py"), "--steps", "1", "--repeats", "1", "--batch", "2"]
    cmd += ["--models", "autoencoder", "--out", str(stem)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rec = json.loads(stem.with_suffix(".json").read_text())
    assert [r["model"] for r in rec["rows"]] == ["autoencoder"]
    assert rec["rows"][0]["fused_clips_per_s"] > 0 and rec["rows"][0]["reference_clips_per_s"] > 0
    assert "autoencoder" in stem.with_suffix(".md").read_text()


def test_op_tables_name_the_threads_and_list_bandwidth_per_record(tmp_path):
    """Two CPU records that differ only in their thread count stay apart in the op table (the
    'thr' column), and the fused op's bandwidth is one table row per record and pass, with the
    copy ceiling of each run in its cell."""
    group = "gdl forward large (8, 3, 256, 256) cpu"
    files = []
    for n, (t, median_s, copy) in enumerate(((2, 2e-4, 23.0), (1, 5e-4, 15.0))):
        data = {
            "machine_info": {"pyframepred": {"allocator": "tuned", "torch_threads": t}},
            "benchmarks": [
                _bench(group, "fused", [median_s] * 5, device="cpu", bytes_moved=12 << 20, copy_GBps=copy),
                _bench(group, "reference", [10 * median_s] * 5, device="cpu"),
            ],
        }
        data["_path"] = str(tmp_path / f"gdl_cpu_{n}.json")
        files.append(data)
    lines = report.section_gdl(files)
    rows = [line for line in lines if line.startswith("| ") and "forward" in line]
    op_rows = [r for r in rows if "µs" in r]
    assert [r.split(" | ")[4] for r in op_rows] == ["2", "1"]
    bw_rows = [r for r in rows if "MiB" in r]
    assert len(bw_rows) == 2
    assert "above copy BW (23 GB/s)" in bw_rows[0] and "above copy BW (15 GB/s)" in bw_rows[1]
    assert sum(line.startswith("* above copy BW") for line in lines) == 1  # one note per kind
