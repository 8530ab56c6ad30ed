"""Bar chart of recorded benchmark times, one panel per benchmark group: the ConvLSTM layer's
training step (fused vs the common ``cat(x, h)`` formulation vs ``torch.compile`` of it vs our
reference module, float32 and bf16 channels_last) and the fused ops (fused vs eager reference vs
``torch.compile``).

    python benchmarks/plot.py benchmarks/results/layer_cpu_epyc-zen4.json \
        benchmarks/results/convlstm_cpu_epyc-zen4.json benchmarks/results/gdl_cpu_epyc-zen4.json \
        --out docs/benchmarks-cpu.png

Layer records (``bench_layer.py``) give one panel per size; pytest-benchmark files give their
groups of the larger ("realistic"/"large") sizes. Bars are median times; each bar other than
fused is labelled with its time over fused's (how many times faster fused is).
``python benchmarks/record.py`` redraws the README's plot from the newest recorded results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMPL_ORDER = ("fused", "cat", "compile", "reference")
COLORS = {"fused": "#1f77b4", "reference": "#999999", "compile": "#ff7f0e", "cat": "#2ca02c"}
LABELS = {
    "fused": "fused (ours)",
    "cat": "conv(cat(x, h)) per step, eager",
    "compile": "torch.compile (of cat for the layer, of the reference for the ops)",
    "reference": "eager reference",
}
# bench_layer.py's implementation names -> the plot's.
LAYER_IMPLS = {"fused": "fused", "cat": "cat", "cat-compile": "compile", "reference": "reference"}


def load_groups(paths, keep=("realistic", "large"), skip_families=("convlstm-layer",)):
    """{group title: {impl: median seconds}} of the pytest-benchmark groups whose title has a
    `keep` word; `skip_families` (the layer over T steps, drawn from its round-robin record
    instead) are left out."""
    groups = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for b in data["benchmarks"]:
            group, impl = b["group"], b.get("extra_info", {}).get("impl")
            if impl is None or "saved" in group or not any(k in group for k in keep):
                continue
            if group.split(" ")[0] in skip_families:
                continue
            groups.setdefault(group, {})[impl] = b["stats"]["median"]
    return groups


def load_layer(path) -> dict:
    """{panel title: {mode: {impl: median seconds}}} of a bench_layer.py record, one panel per
    size, the modes (float32, bf16-cl) side by side in it."""
    data = json.loads(Path(path).read_text())
    panels: dict = {}
    for r in data["results"]:
        title = f"layer training step, T=10\n{r['size']}"
        panels.setdefault(title, {})[r["mode"]] = {
            LAYER_IMPLS[i]: v["median_ms"] / 1e3 for i, v in r["impls"].items() if i in LAYER_IMPLS
        }
    return panels


def _title(group: str) -> str:
    # "convlstm-op forward+backward realistic (16, 64, 64, 64) cpu" -> two short lines
    name, _, rest = group.partition(" ")
    rest = rest.replace(" realistic", "").replace(" large_cl", " channels_last").replace(" large", "")
    return f"{name}\n{rest}"


def _label(ax, bar, times: dict, impl: str) -> None:
    if impl == "fused" or "fused" not in times:
        return
    ax.annotate(
        f"{times[impl] / times['fused']:.1f}×",
        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
        ha="center",
        va="bottom",
        fontsize=7,
    )


def plot(groups, out: Path, note: str = "", layer: dict | None = None) -> None:
    """Draw the layer panels (if any), then the op groups, into `out` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layer = layer or {}
    n = len(layer) + len(groups)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    panels = list(axes.flat)
    for ax, (title, modes) in zip(panels, layer.items()):
        width = 0.8 / len(IMPL_ORDER)
        for m, times in enumerate(modes.values()):
            for k, impl in enumerate(i for i in IMPL_ORDER if i in times):
                x = m + (k - (len(IMPL_ORDER) - 1) / 2) * width
                (bar,) = ax.bar([x], [times[impl] * 1e3], width, color=COLORS[impl])
                _label(ax, bar, times, impl)
        ax.set_xticks(range(len(modes)))
        ax.set_xticklabels(list(modes), fontsize=8)
        ax.set_ylabel("ms per step (median)", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.margins(y=0.15)
    for ax, (group, times) in zip(panels[len(layer) :], groups.items()):
        impls = [i for i in IMPL_ORDER if i in times]
        bars = ax.bar(range(len(impls)), [times[i] * 1e3 for i in impls], color=[COLORS[i] for i in impls])
        for bar, impl in zip(bars, impls):
            _label(ax, bar, times, impl)
        ax.set_xticks(range(len(impls)))
        ax.set_xticklabels([i if i != "reference" else "eager" for i in impls], fontsize=8)
        ax.set_ylabel("ms (median)", fontsize=8)
        ax.set_title(_title(group), fontsize=8)
        ax.margins(y=0.15)
    for ax in panels[n:]:
        ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[i]) for i in IMPL_ORDER]
    fig.legend(
        handles, [LABELS[i] for i in IMPL_ORDER], loc="lower center", ncol=2, fontsize=8, frameon=False
    )
    fig.suptitle(
        "Median time, lower is better; labels: each bar's time over fused's (how many times faster fused is)"
        + (f"\n{note}" if note else ""),
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"wrote {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="+", help="bench_layer.py records and pytest-benchmark JSON files")
    p.add_argument("--out", default="docs/benchmarks.png")
    p.add_argument("--note", default="", help="a line under the title (e.g. machine and allocator)")
    a = p.parse_args(argv)
    layer_files = [f for f in a.json if "results" in json.loads(Path(f).read_text())]
    layer = {k: v for f in layer_files for k, v in load_layer(f).items()}
    groups = load_groups([f for f in a.json if f not in layer_files])
    if not groups and not layer:
        p.error("no timed groups of the larger sizes in these files")
    plot(groups, Path(a.out), a.note, layer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
