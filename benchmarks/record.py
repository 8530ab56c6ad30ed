"""Record benchmark results and regenerate the README's performance tables and plot from them.

    python benchmarks/record.py                          # every suite, full sizes, plain allocator
    python benchmarks/record.py --suite convlstm gdl     # some suites
    python benchmarks/record.py --allocator both         # plain and tuned, side by side
    python benchmarks/record.py --device cuda            # on a GPU machine
    python benchmarks/record.py --suite layer --tag xeon-amx   # a second CPU, kept beside
    python benchmarks/record.py --regen-only             # README tables + plot from results/ only

Recording runs each suite in its own process and writes ``benchmarks/results/<suite>_<device>
[_malloc-tuned].json`` (with the machine, CPU model and ISA level, versions, date and allocator
setting) and a ``.md`` table next to it; the pytest suites run at their full sizes
(``--bench-full``), ``data`` and ``train`` through their own measuring protocols. Then the
README's tables between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` and the CPU plot
are rewritten from everything in the results folder. A plain ``pytest benchmarks
--benchmark-only`` never writes there. Take recordings on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402

from pyframepred.io import atomic_write  # noqa: E402

# Suites with their own measuring protocol and result format (a script mode that records).
SCRIPT_SUITES = ("data", "train", "layer", "layer_compile")
# README section -> the suite whose results it shows.
SECTION_SUITE = {
    "convlstm-op": "convlstm",
    "convlstm-layer": "convlstm",
    "gdl": "gdl",
    "data": "data",
    "train": "train",
    "layer-step": "layer",
    "layer-compile": "layer_compile",
}
PLOT_SUITES = ("layer", "convlstm", "gdl")


def suites() -> list[str]:
    # layer_compile: bench_layer.py's fused layer under torch.compile, a record of its own.
    return sorted([p.stem[len("bench_") :] for p in HERE.glob("bench_*.py")] + ["layer_compile"])


def gpu_slug() -> str:
    import torch

    return re.sub(r"\W+", "-", report.gpu_slug_of(torch.cuda.get_device_name())).lower()


def result_stem(results: Path, suite: str, device: str, alloc: str, tag: str = "") -> Path:
    dev = "cpu" if device == "cpu" else f"gpu_{gpu_slug()}"
    return results / (
        f"{suite}_{dev}" + (f"_{tag}" if tag else "") + ("_malloc-tuned" if alloc == "tuned" else "")
    )


def record_suite(suite: str, device: str, alloc: str, results: Path, quick: bool, tag: str = "") -> Path:
    stem = result_stem(results, suite, device, alloc, tag)
    env = dict(os.environ, PYFRAMEPRED_BENCH_MALLOC=alloc, PYFRAMEPRED_BENCH_DEVICES=device)
    env.pop("PYFRAMEPRED_BENCH_FULL", None)
    results.mkdir(parents=True, exist_ok=True)
    print(f"== recording {suite} on {device}, allocator {alloc} -> {stem}.json", flush=True)
    if suite in SCRIPT_SUITES:
        cmd = [sys.executable, str(HERE / f"bench_{suite}.py"), "--out", str(stem)]
        if suite in ("layer", "layer_compile"):
            if device != "cpu" and alloc == "tuned":
                print("   (glibc's tuning does not touch the GPU's memory: only the plain record)")
                return stem.with_suffix(".json")
            cmd = [sys.executable, str(HERE / "bench_layer.py"), "--out", str(stem.with_suffix(".json"))]
            cmd += ["--device", device] + (["--malloc-tuned"] if alloc == "tuned" else [])
            cmd += ["--sizes", "2x4x[8]@16", "--rounds", "3"] if quick else []
            compile_impls = ["fused", "fused-compile", "fused-compile-traced", "cat-compile"]
            cmd += ["--impls", *compile_impls] if suite == "layer_compile" else []
        elif suite == "train":
            cmd += ["--device", device] + (["--repeats", "2", "--steps", "1"] if quick else [])
        elif quick:
            cmd.append("--quick")
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
        if suite in ("layer", "layer_compile"):
            render = report.section_layer_step if suite == "layer" else report.section_layer_compile
            md = render([report.load(stem.with_suffix(".json"))])
            stem.with_suffix(".md").write_text("\n".join([f"## {stem.name}.json", ""] + md) + "\n")
        return stem.with_suffix(".json")

    # Through the package's atomic writer: a failed run leaves the old result in place.
    def run_into(tmp):
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(HERE / f"bench_{suite}.py"),
            "--benchmark-only",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={tmp}",
        ]
        cmd += [] if quick else ["--bench-full"]
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)

    atomic_write(stem.with_suffix(".json"), run_into, fsync=False)
    stem.with_suffix(".md").write_text(report.render(stem.with_suffix(".json")))
    return stem.with_suffix(".json")


def files_for(results: Path, suite: str) -> list[Path]:
    """The recorded files of a suite that the README shows: the CPU records, newest day first
    (plain before tuned within a machine), then the GPUs'."""
    cpu = sorted(
        results.glob(f"{suite}_cpu*.json"), key=lambda p: (p.stem.replace("_malloc-tuned", ""), p.name)
    )
    # stable: records of one day keep the name order
    cpu.sort(key=lambda p: report.record_day(report.load(p)), reverse=True)
    return cpu + sorted(results.glob(f"{suite}_gpu_*.json"))


def regen_readme(readme: Path, results: Path) -> list[str]:
    """Rewrite every results section of `readme` that has recorded files; returns their names."""
    text = readme.read_text()
    done = []
    for name, render in report.SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- results:{re.escape(name)} -->\n)(.*?)"
            rf"(<!-- /results:{re.escape(name)} -->)",
            re.S,
        )
        paths = files_for(results, SECTION_SUITE[name])
        if not pattern.search(text) or not paths:
            continue
        body = "\n".join(render([report.load(p) for p in paths]))
        text = pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text)  # noqa: B023 - used at once
        done.append(name)
    readme.write_text(text)
    return done


def regen_plot(out: Path, results: Path) -> bool:
    """Draw the newest CPU record of the layer step and of each op suite (the plain allocator's
    where a day has both) into `out`."""
    import plot

    newest = {s: next((f for f in files_for(results, s) if "_cpu" in f.name), None) for s in PLOT_SUITES}
    paths = [f for f in newest.values() if f is not None]
    if not paths:
        return False
    layer = plot.load_layer(newest["layer"]) if newest.get("layer") else {}
    groups = plot.load_groups([f for s, f in newest.items() if f is not None and s != "layer"])
    notes = [report.plot_note(report.load(p)) for p in paths]
    plot.plot(groups, out, note="; ".join(dict.fromkeys(notes)), layer=layer)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--suite",
        nargs="+",
        choices=suites(),
        metavar="SUITE",
        help=f"suites to record (default: all: {', '.join(suites())})",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument(
        "--allocator",
        default="plain",
        choices=("plain", "tuned", "both"),
        help="plain: what users get (default); tuned: freed memory kept in-process",
    )
    p.add_argument(
        "--regen-only",
        action="store_true",
        help="run nothing: regenerate the README's tables and plot from the results",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="quick sizes (to try the machinery out; don't commit such results)",
    )
    p.add_argument(
        "--tag",
        default="",
        help="a CPU record from another machine, kept beside the main one: <suite>_cpu_<TAG>.json",
    )
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--readme", type=Path, default=ROOT / "README.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "benchmarks-cpu.png")
    a = p.parse_args(argv)
    if not a.regen_only:
        allocs = ("plain", "tuned") if a.allocator == "both" else (a.allocator,)
        for suite in a.suite or suites():
            for alloc in allocs:
                print(f"wrote {record_suite(suite, a.device, alloc, a.results, a.quick, a.tag)}")
    done = regen_readme(a.readme, a.results)
    print(f"{a.readme}: regenerated {', '.join(done) if done else 'no'} tables")
    if not regen_plot(a.plot, a.results):
        print("no CPU results to plot")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
