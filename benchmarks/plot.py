"""Bar chart of recorded benchmark times: fused vs eager reference vs torch.compile (and the
``cat(x, h)`` formulation for the ConvLSTM layer), one panel per benchmark group.

    python benchmarks/plot.py benchmarks/results/convlstm_cpu.json benchmarks/results/gdl_cpu.json \
        --out docs/benchmarks-cpu.png

Only the groups of the larger ("realistic"/"large") sizes are drawn; bars are median times,
labelled with the speed-up over the eager reference. ``python benchmarks/record.py`` redraws the
README's plot from the recorded results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMPL_ORDER = ("fused", "reference", "compile", "cat")
COLORS = {"fused": "#1f77b4", "reference": "#999999", "compile": "#ff7f0e", "cat": "#2ca02c"}
LABELS = {
    "fused": "fused",
    "reference": "eager reference",
    "compile": "torch.compile(ref)",
    "cat": "conv(cat(x, h)) per step",
}


def load_groups(paths, keep=("realistic", "large")):
    """{group title: {impl: median seconds}} for the timed groups whose title has a `keep` word."""
    groups = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for b in data["benchmarks"]:
            group, impl = b["group"], b.get("extra_info", {}).get("impl")
            if impl is None or "saved" in group or not any(k in group for k in keep):
                continue
            groups.setdefault(group, {})[impl] = b["stats"]["median"]
    return groups


def _title(group: str) -> str:
    # "convlstm-op forward+backward realistic (16, 64, 64, 64) cpu" -> two short lines
    name, _, rest = group.partition(" ")
    return f"{name}\n{rest.replace(' realistic', '').replace(' large', '')}"


def plot(groups, out: Path, note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(groups)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (group, times) in zip(axes.flat, groups.items()):
        impls = [i for i in IMPL_ORDER if i in times]
        ms = [times[i] * 1e3 for i in impls]
        bars = ax.bar(range(len(impls)), ms, color=[COLORS[i] for i in impls])
        ref = times.get("reference")
        for bar, impl in zip(bars, impls):
            label = f"{ref / times[impl]:.1f}×" if ref else ""
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(impls)))
        ax.set_xticklabels([i if i != "reference" else "eager" for i in impls], fontsize=8)
        ax.set_ylabel("ms (median)", fontsize=8)
        ax.set_title(_title(group), fontsize=8)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[i]) for i in IMPL_ORDER]
    fig.legend(
        handles, [LABELS[i] for i in IMPL_ORDER], loc="lower center", ncol=4, fontsize=8, frameon=False
    )
    fig.suptitle(
        "Median time, lower is better; labels: speed-up over the eager reference"
        + (f"; {note}" if note else ""),
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="pytest-benchmark JSON files")
    p.add_argument("--out", default="docs/benchmarks.png")
    p.add_argument("--note", default="", help="added to the title (e.g. the allocator setting)")
    a = p.parse_args(argv)
    groups = load_groups(a.json)
    if not groups:
        p.error("no timed groups of the larger sizes in these files")
    plot(groups, Path(a.out), a.note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
