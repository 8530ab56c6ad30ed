"""Turn recorded pytest-benchmark JSON files into markdown tables.

    python benchmarks/report.py benchmarks/results/convlstm_cpu.json > benchmarks/results/convlstm_cpu.md

Each group (one operation, size and device) becomes a table row per implementation with the mean
time, the speed-up over the eager reference, and, where recorded, achieved bandwidth, its share
of the measured copy bandwidth, saved-for-backward bytes and peak GPU memory.
"""
from __future__ import annotations

import json
import sys
from collections import OrderedDict


def _fmt_time(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def render(path: str) -> str:
    with open(path) as fh:
        data = json.load(fh)
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}).get("brand_raw", "?")
    lines = [f"## {path}", "",
             f"Recorded {data.get('datetime', '?')} on {mi.get('node', '?')} — CPU: {cpu}, "
             f"{mi.get('cpu', {}).get('count', '?')} cores; Python {mi.get('python_version', '?')}.",
             ""]
    groups: "OrderedDict[str, list]" = OrderedDict()
    for b in data["benchmarks"]:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    for group, items in groups.items():
        info0 = items[0].get("extra_info", {})
        extra = f" — {info0['device_name']}" if "device_name" in info0 else ""
        versions = info0.get("torch")
        lines += [f"### {group}{extra}", ""]
        if any("saved_bytes_packed" in b["extra_info"] and "GBps" not in b["extra_info"]
               and b["extra_info"].get("mode") is None for b in items):
            lines += ["| impl | saved for backward (as packed) | distinct storage |",
                      "|---|---:|---:|"]
            for b in items:
                e = b["extra_info"]
                lines.append(f"| {e.get('impl')} | {e['saved_bytes_packed'] / 2**20:.1f} MiB | "
                             f"{e['saved_bytes_distinct'] / 2**20:.1f} MiB |")
            lines.append("")
            continue
        ref = next((b for b in items if b["extra_info"].get("impl") == "reference"), None)
        cols = ["impl", "mean", "vs reference"]
        has_bw = any("GBps" in b["extra_info"] for b in items)
        has_mem = any("peak_mem_MiB" in b["extra_info"] for b in items)
        has_saved = any("saved_bytes_distinct" in b["extra_info"] for b in items)
        if has_bw:
            cols += ["GB/s", "of copy BW"]
        if has_mem:
            cols.append("peak GPU mem")
        if has_saved:
            cols.append("saved for bwd (distinct)")
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for b in items:
            e = b["extra_info"]
            mean = b["stats"]["mean"]
            row = [str(e.get("impl", b["name"])), _fmt_time(mean),
                   f"{ref['stats']['mean'] / mean:.2f}×" if ref else "—"]
            if has_bw:
                row += [f"{e['GBps']:.1f}" if "GBps" in e else "—",
                        f"{100 * e['frac_of_copy_bw']:.0f}% of {e['copy_GBps']:.0f}"
                        if "frac_of_copy_bw" in e else "—"]
            if has_mem:
                row.append(f"{e['peak_mem_MiB']:.0f} MiB" if "peak_mem_MiB" in e else "—")
            if has_saved:
                row.append(f"{e['saved_bytes_distinct'] / 2**20:.1f} MiB"
                           if "saved_bytes_distinct" in e else "—")
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n".join(render(p) for p in sys.argv[1:]))
