"""Markdown tables from recorded benchmark results, for a terminal and for the README.

    python benchmarks/report.py benchmarks/results/convlstm_cpu.json     # one file's tables
    python benchmarks/record.py --regen-only                             # the README's tables

Times are medians over the rounds (robust to a preempted round on a shared machine). Every row
says how far it can be trusted: IQR/med (interquartile range over median), marked "noisy" above
25%. Bandwidth is the bytes the op must move over the median time, next to its share of the
device's measured copy bandwidth; a share above 100% is never printed as such: an op whose bytes
fit in the last-level cache is "cache-resident", any other is marked with the reason. Each row
names the allocator setting it was measured with ("plain": what users get; "tuned": freed memory
kept in-process, see benchmarks/machine.py).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import machine

NOISY = 0.25  # IQR / median above this: the row is flagged
WIDTH = 100  # the widest line of prose
TABLE_WIDTH = 110  # the widest table row (the project's code line length)
# The allocator tuning was applied to every pytest benchmark run from this commit time on,
# before results said which setting they used.
_TUNED_SINCE = "2026-11-24T21:05:01"


# --------------------------------------------------------------------------- formatting
def fmt_time(s: float) -> str:
    """Three significant digits: 12.5 ms, 102 ms, 165 µs, 1.23 s."""
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if s >= scale or unit == "µs":
            v = s / scale
            return f"{v:#.3g} {unit}" if v < 100 else f"{v:.0f} {unit}"
    raise AssertionError


def fmt_ratio(x: float) -> str:
    return f"{x:.1f}×" if x < 10 else f"{x:.0f}×"


def wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, break_on_hyphens=False) or [""]


def table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    """A markdown table; `align` is one character per column, 'l' or 'r'."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    too_wide = [line for line in lines if len(line) > TABLE_WIDTH]
    if too_wide:  # a warning, not an error: a recording must not be lost over a table's width
        print(f"warning: table line over {TABLE_WIDTH} columns: {too_wide[0]!r}", file=sys.stderr)
    return lines


# --------------------------------------------------------------------------- reading results
def load(path) -> dict:
    data = json.loads(Path(path).read_text())
    data["_path"] = str(path)
    return data


def median(b: dict) -> float:
    return b["stats"]["median"]


def spread(b: dict) -> float:
    """IQR / median of one benchmark's rounds."""
    st = b["stats"]
    return st["iqr"] / st["median"] if st["median"] > 0 else float("inf")


def fmt_spread(x: float) -> str:
    return (f"{100 * x:.0f}%" if x < 10 else ">999%") + (" (?)" if x > NOISY else "")


def run_info(data: dict) -> dict:
    """Our machine record of a pytest-benchmark file ({} for files recorded before it existed)."""
    return data.get("machine_info", {}).get("pyframepred", {})


def record_day(data: dict) -> str:
    """The day (YYYY-MM-DD) a result file was recorded: a layer record's machine date, a
    pytest-benchmark file's datetime."""
    m = data.get("machine")
    m = m if isinstance(m, dict) else {}
    return str(m.get("date") or data.get("datetime") or data.get("date") or "")[:10]


def cpu_family(data: dict) -> str:
    """'EPYC', 'Xeon', ... from the CPU's model name of either kind of record ('CPU' if unknown)."""
    m = data.get("machine")
    if isinstance(m, dict):
        brand = m.get("cpu")
    else:
        brand = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "")
    return next((f for f in ("EPYC", "Ryzen", "Xeon", "Core") if f in str(brand)), "CPU")


def plot_note(data: dict) -> str:
    """One line naming a CPU record in the plot: CPU, ISA, threads, allocator, day."""
    m = data.get("machine")
    if isinstance(m, dict):  # a layer record
        isa, threads = m["extension_cpu_isa"], m["threads"]
        alloc = "tuned" if "tuned" in m["allocator"] else "plain"
    else:
        info = run_info(data)
        isa = (info.get("pyframepred_build") or {}).get("cpu_isa") or _vector_isa(data)
        threads = info.get("torch_threads", "?")
        alloc = allocator(data)
    return f"{cpu_family(data)} {isa}, {threads} threads, {alloc} allocator, {record_day(data)}"


def allocator(data: dict, b: dict | None = None) -> str:
    """The allocator label of a result: 'plain', 'tuned', 'caching' (a GPU's own allocator) or
    'unknown'."""
    e = (b or {}).get("extra_info", {})
    if str(e.get("device", "cpu")).startswith("cuda"):
        return "caching"
    label = e.get("allocator") or run_info(data).get("allocator")
    if label:
        return label
    # Files recorded before the setting was labelled: pytest runs used the tuned one from the
    # commit that made conftest apply it to every run.
    when = (data.get("commit_info") or {}).get("time") or data.get("datetime") or ""
    if "benchmarks" in data and when:
        return "tuned" if when[:19] >= _TUNED_SINCE else "plain"
    return "unknown"


def llc_bytes(data: dict) -> int | None:
    return run_info(data).get("llc_bytes")


def bandwidth(b: dict, llc: int | None) -> tuple[str, str, str | None]:
    """(GB/s, share of the copy bandwidth, footnote or None) of one benchmark."""
    e = b.get("extra_info", {})
    if "bytes_moved" not in e or "copy_GBps" not in e:
        return "—", "—", None
    bw = e["bytes_moved"] / median(b)
    frac = bw / (e["copy_GBps"] * 1e9)
    gbps = f"{bw / 1e9:.1f}" if bw < 100e9 else f"{bw / 1e9:.0f}"
    if frac <= 1:
        return gbps, f"{100 * frac:.0f}% of {e['copy_GBps']:.0f}", None
    if llc is not None and e["bytes_moved"] <= llc:
        return (
            gbps,
            "cache-resident",
            (
                f"cache-resident: the op's bytes fit in the {llc / 2**20:.0f} MiB last-level cache, "
                "so the memory copy bandwidth does not bound it"
            ),
        )
    return (
        gbps,
        "above copy BW",
        (
            f"above copy BW: faster than the measured copy bandwidth ({e['copy_GBps']:.0f} GB/s), "
            "so not bound by it: part of its bytes stay in the caches"
            + ("" if llc else " (the cache size was not recorded)")
            + ", or the ceiling was "
            "measured low"
        ),
    )


def header_lines(data: dict) -> list[str]:
    info = run_info(data)
    if info:
        return wrap("Recorded " + machine.one_line(info) + ".")
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {})
    flags = set(cpu.get("flags", []))
    isa = "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "?")
    return wrap(
        f"Recorded {data.get('datetime', '?')[:16]} on {mi.get('node', '?')}: "
        f"{cpu.get('brand_raw', '?')} ({isa}), {cpu.get('count', '?')} cores; Python "
        f"{mi.get('python_version', '?')}; allocator: {allocator(data)} (from the "
        "recording's date; the file predates the allocator label)."
    )


# --------------------------------------------------------------------------- one file's tables
def render(path) -> str:
    data = load(path)
    if "benchmarks" not in data:  # a script-mode suite's own format
        kind = "data" if "results" in data else "train"
        return "\n".join([f"## {Path(path).name}", ""] + SECTIONS[kind]([data])) + "\n"
    lines = [f"## {Path(path).name}", ""] + header_lines(data) + [""]
    groups: "OrderedDict[str, list]" = OrderedDict()
    for b in data["benchmarks"]:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    llc = llc_bytes(data)
    for group, items in groups.items():
        info0 = items[0].get("extra_info", {})
        lines += [f"### {group}", ""]
        if "device_name" in info0:
            lines += [f"Device: {info0['device_name']}", ""]
        if "saved" in group:
            rows = [
                [
                    str(b["extra_info"].get("impl")),
                    f"{b['extra_info']['saved_bytes_packed'] / 2**20:.1f} MiB",
                    f"{b['extra_info']['saved_bytes_distinct'] / 2**20:.1f} MiB",
                ]
                for b in items
                if "saved_bytes_packed" in b.get("extra_info", {})
            ]
            lines += table(["impl", "saved for backward (as packed)", "distinct storage"], rows, "lrr") + [""]
            continue
        ref = next((b for b in items if b["extra_info"].get("impl") == "reference"), None)
        has_bw = any("bytes_moved" in b["extra_info"] for b in items)
        has_mem = any("peak_mem_MiB" in b["extra_info"] for b in items)
        has_saved = any("saved_bytes_distinct" in b["extra_info"] for b in items)
        header = ["impl", "median", "IQR/med", "vs ref", "alloc"]
        align = "lrrrl"
        if has_bw:
            header += ["GB/s", "of copy GB/s"]
            align += "rr"
        if has_mem:
            header.append("peak GPU")
            align += "r"
        if has_saved:
            header.append("saved (distinct)")
            align += "r"
        rows, notes = [], []
        for b in items:
            e = b["extra_info"]
            row = [
                str(e.get("impl", b["name"])),
                fmt_time(median(b)),
                fmt_spread(spread(b)),
                fmt_ratio(median(ref) / median(b)) if ref else "—",
                allocator(data, b),
            ]
            if has_bw:
                gbps, share, note = bandwidth(b, llc)
                row += [gbps, share]
                if note and note not in notes:
                    notes.append(note)
            if has_mem:
                row.append(f"{e['peak_mem_MiB']:.0f} MiB" if "peak_mem_MiB" in e else "—")
            if has_saved:
                row.append(
                    f"{e['saved_bytes_distinct'] / 2**20:.1f} MiB" if "saved_bytes_distinct" in e else "—"
                )
            rows.append(row)
        lines += table(header, rows, align)
        for note in notes:
            lines += wrap("* " + note + ".")
        lines.append("")
    lines += wrap(
        f"Median over the rounds; IQR/med: interquartile range over median, (?): noisy, "
        f"above {100 * NOISY:.0f}% (don't quote those rows); vs ref: the eager "
        "reference's median over this one; alloc: the allocator setting (plain: what "
        "users get; tuned: freed memory kept in-process; caching: the GPU's own)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/report.py RESULTS.json [...]")
    print("\n".join(render(p) for p in sys.argv[1:]))


# --------------------------------------------------------------------------- README sections
# Each renders one README table (between <!-- results:NAME --> markers) from the result files
# of its suite; record.py picks the files and writes the README.
_GROUP = re.compile(
    r"^(?P<family>convlstm-op|gdl|convlstm-layer T=\d+) "
    r"(?P<mode>forward\+backward|forward|backward) (?P<size>\w+) (?P<shape>.*) "
    r"(?P<device>cpu|cuda\S*)$"
)
_PASS = {"forward": "forward", "forward+backward": "fwd+bwd", "backward": "backward"}


def _vector_isa(data: dict) -> str:
    """The widest vector ISA of a pytest-benchmark file's CPU: 'AVX-512', 'AVX2' or ''; a run
    with ISA caps (machine.ISA_CAPS) is named by ATen's level and marked, e.g. 'AVX2†'."""
    capped = machine.capped_isa(run_info(data))
    if capped:
        return capped + "†"
    flags = set(data.get("machine_info", {}).get("cpu", {}).get("flags", []))
    return "AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "")


def device_label(data: dict) -> str:
    """The GPU's short name ('H100') of a pytest-benchmark file, or 'CPU' with the widest vector ISA
    of the machine after its family ('EPYC AVX2', 'Xeon AVX-512'): records of two CPUs side by side
    stay apart."""
    for b in data.get("benchmarks", []):
        name = b.get("extra_info", {}).get("device_name")
        if name:
            m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]*)\b", name)
            return m.group(1) if m else name
    return f"{cpu_family(data)} {_vector_isa(data)}".strip()


def _groups(data: dict, family: str) -> "OrderedDict[tuple, dict]":
    """{(mode, size, shape): {impl: benchmark}} of one family's timed groups, in file order."""
    out: "OrderedDict[tuple, dict]" = OrderedDict()
    for b in data.get("benchmarks", []):
        m = _GROUP.match(b.get("group") or "")
        if not m or not m.group("family").startswith(family):
            continue
        impl = b.get("extra_info", {}).get("impl")
        if impl is not None:
            out.setdefault((m.group("mode"), m.group("size"), m.group("shape")), {})[impl] = b
    return out


def _device_line(data: dict) -> list[str]:
    dev = device_label(data)
    info = run_info(data)
    if info:
        what = machine.one_line(info)
    else:  # recorded before our machine record: what pytest-benchmark kept
        mi = data.get("machine_info", {})
        cpu = mi.get("cpu", {})
        isa = _vector_isa(data) or "?"
        e0 = data["benchmarks"][0].get("extra_info", {})
        what = f"{data.get('datetime', '?')[:10]}: "
        if "device_name" in e0:
            what += f"{e0['device_name']}, host {cpu.get('brand_raw', '?')}"
        else:
            what += (
                f"{cpu.get('brand_raw', '?')} ({isa}), {cpu.get('count', '?')} cores, "
                f"{e0.get('threads', '?')} threads, allocator {allocator(data)}"
            )
        what += f", Python {mi.get('python_version', '?')}"
    return wrap(f"{dev} — {what} (`{Path(data['_path']).name}`).")


def _worst(items) -> str:
    return fmt_spread(max(spread(b) for b in items))


def threads(data: dict, b: dict | None = None) -> str:
    """The torch threads a CPU record ran with ('?' where it did not say; '—' for a GPU record)."""
    if any("device_name" in x.get("extra_info", {}) for x in data.get("benchmarks", [])):
        return "—"
    t = (b or {}).get("extra_info", {}).get("threads")
    if t is None:
        t = run_info(data).get("torch_threads")
    if t is None:
        t = next(
            (
                x["extra_info"]["threads"]
                for x in data.get("benchmarks", [])
                if "threads" in x.get("extra_info", {})
            ),
            "?",
        )
    return str(t)


def _shape_cell(shape: str, size: str) -> str:
    """A group's shape as a table cell ('8,3,256,256'); 'cl' after it for the channels_last sizes
    ('large_cl')."""
    return shape.replace(" ", "").strip("()") + (" cl" if size.endswith("_cl") else "")


def _fused_bandwidth(files, family, sizes) -> list[str]:
    """The fused op's bytes it must move / median time, per record and pass: one table, with the
    reason where the share of the copy bandwidth does not apply (once per kind)."""
    rows, notes = [], {}
    for data in files:
        llc = llc_bytes(data)
        for (mode, size, shape), impls in _groups(data, family).items():
            b = impls.get("fused")
            if size not in sizes or b is None or "bytes_moved" not in b["extra_info"]:
                continue
            gbps, share, note = bandwidth(b, llc)
            if share == "above copy BW":  # the ceiling differs per record: in the cell
                share = f"above copy BW ({b['extra_info']['copy_GBps']:.0f} GB/s)"
                note = (
                    "above copy BW: faster than the copy bandwidth measured in that run, so not "
                    "bound by it: part of its bytes stay in the caches (the cache size was not "
                    "recorded), or the ceiling was measured low"
                )
            if note:
                notes.setdefault(share.split(" (")[0], note)
            rows.append(
                [
                    device_label(data),
                    _shape_cell(shape, size),
                    _PASS[mode],
                    allocator(data, b),
                    threads(data, b),
                ]
                + [f"{b['extra_info']['bytes_moved'] / 2**20:.1f} MiB", gbps, share]
            )
    if not rows:
        return []
    header = ["device", "shape", "pass", "alloc", "thr", "must move", "GB/s", "share of copy BW"]
    lines = wrap("The fused op's bytes it must move / median time, against the measured copy bandwidth:")
    lines += [""] + table(header, rows, "llllrrrl")
    if notes:
        lines += [""] + [line for note in notes.values() for line in wrap("* " + note + ".")]
    return lines


def _op_section(files, family, sizes, with_shape) -> list[str]:
    header = (
        ["device"]
        + (["shape"] if with_shape else [])
        + ["pass", "alloc", "thr", "fused", "reference", "compile", "vs ref", "vs compile", "IQR/med"]
    )
    align = "l" + ("l" if with_shape else "") + "llrrrrrrr"
    rows = []
    for data in files:
        for (mode, size, shape), impls in _groups(data, family).items():
            if size not in sizes or "fused" not in impls:
                continue
            f, r, c = impls.get("fused"), impls.get("reference"), impls.get("compile")
            rows.append(
                [device_label(data)]
                + ([_shape_cell(shape, size)] if with_shape else [])
                + [
                    _PASS[mode],
                    allocator(data, f),
                    threads(data, f),
                    fmt_time(median(f)),
                    fmt_time(median(r)) if r else "—",
                    fmt_time(median(c)) if c else "—",
                    fmt_ratio(median(r) / median(f)) if r else "—",
                    fmt_ratio(median(c) / median(f)) if c else "—",
                    _worst([x for x in (f, r, c) if x]),
                ]
            )
    return table(header, rows, align)


def _legend() -> list[str]:
    return wrap(
        f"Medians; IQR/med: the widest interquartile range / median of the row's "
        f"implementations, (?): noisy, above {100 * NOISY:.0f}% (don't quote those rows)."
    )


def section_convlstm_op(files) -> list[str]:
    lines = _op_section(files, "convlstm-op", ("realistic",), with_shape=False) + [""]
    lines += _fused_bandwidth(files, "convlstm-op", ("realistic",))
    for data in files:
        saved = {
            b["extra_info"].get("impl"): b["extra_info"]
            for b in data["benchmarks"]
            if "saved-for-backward realistic" in (b.get("group") or "")
        }
        if "fused" in saved and "reference" in saved:
            f, r = saved["fused"], saved["reference"]
            lines += [""] + wrap(
                f"Saved for backward ({device_label(data)}): fused "
                f"{f['saved_bytes_packed'] / 2**20:.0f} MiB, reference "
                f"{r['saved_bytes_packed'] / 2**20:.0f} MiB as autograd packs it "
                f"({r['saved_bytes_distinct'] / 2**20:.0f} MiB of distinct storage)."
            )
            break
    return lines + [""] + _legend() + [""] + [line for d in files for line in _device_line(d)]


def section_convlstm_layer(files) -> list[str]:
    header = ["device", "pass", "alloc", "fused", "reference", "compile", "conv(cat)", "vs cat", "IQR/med"]
    rows, shapes = [], OrderedDict()
    for data in files:
        for (mode, size, shape), impls in _groups(data, "convlstm-layer").items():
            f = impls.get("fused")
            if size != "realistic" or f is None:
                continue
            cells = [
                fmt_time(median(impls[i])) if i in impls else "—"
                for i in ("fused", "reference", "compile", "cat")
            ]
            cat = impls.get("cat")
            shapes[device_label(data)] = shape.split("=")[-1]
            rows.append(
                [device_label(data), _PASS[mode], allocator(data, f)]
                + cells
                + [fmt_ratio(median(cat) / median(f)) if cat else "—", _worst(impls.values())]
            )
    lines = table(header, rows, "lllrrrrrr") + [""]
    lines += wrap(
        "Shapes (N, T, Cin, C, H, W): "
        + "; ".join(f"{dev} {shape}" for dev, shape in shapes.items())
        + ". conv(cat): the common formulation, one "
        "convolution over cat(x, h) per step with eager gate math; vs cat: its median "
        "over fused's."
    )
    return lines + [""] + _legend() + [""] + [line for d in files for line in _device_line(d)]


def section_gdl(files) -> list[str]:
    sizes = ("small", "large", "small_cl", "large_cl", "xlarge")
    lines = _op_section(files, "gdl", sizes, with_shape=True) + [""]
    lines += _fused_bandwidth(files, "gdl", ("large", "large_cl", "xlarge"))
    return lines + [""] + _legend() + [""] + [line for d in files for line in _device_line(d)]


def section_data(files) -> list[str]:
    lines = []
    for data in files:
        res, info = data["results"], data["machine"]
        rate = {(r["dataset"], r["loader"], r["workers"]): r["clips_per_s"] for r in res}

        def ratio(r):  # slowest over fastest pass
            t = r.get("seconds_per_pass") or [1.0]
            return max(t) / min(t)

        rows = []
        alloc = info.get("allocator") or "not recorded"
        for ds in OrderedDict.fromkeys(r["dataset"] for r in res):

            def cell(loader, workers):
                v = rate.get((ds, loader, workers))  # noqa: B023 - called at once
                return f"{v:.0f} clips/s" if v is not None else "—"

            worst = max(ratio(r) for r in res if r["dataset"] == ds)
            rows.append(
                [
                    ds,
                    alloc.replace("not recorded", "?"),
                    cell("VideoClips", 0),
                    cell("VideoClips", 2),
                    cell("naive-full-decode", 0),
                    cell("naive-full-decode", 2),
                    f"{worst:.2f}" + (" noisy" if worst > 1 + 2 * NOISY else ""),
                ]
            )
        lines += table(
            ["data set", "alloc", "0 workers", "2 workers", "naive, 0 w.", "naive, 2 w.", "max/min"],
            rows,
            "llrrrrr",
        ) + [""]
        lines += wrap(
            f"Clips/s: clips / mean time of one pass. Naive: decode the whole video at its own "
            f"size, then resize the 8 kept frames. max/min: the slowest pass over the fastest "
            f"(widest of the row), 'noisy' above {1 + 2 * NOISY:.1f}. {info.get('date', '?')[:16]}: "
            f"{info.get('cpu', '?')}, {info.get('usable_cores', '?')} cores, torch "
            f"{info.get('torch', '?')}, decord {info.get('decord', '?')}; allocator: {alloc}; "
            f"load average at start {info.get('load_average_1min_at_start', '?')} "
            f"(`{Path(data['_path']).name}`)."
        ) + [""]
    return lines


# What each model's training step runs of the fused ops.
_MODEL_OPS = {
    "seq2seq": "seq2seq (ConvLSTM + GDL)",
    "autoencoder": "autoencoder (GDL only)",
    "multiscale": "multi-scale GAN (GDL only)",
}


def section_train(files) -> list[str]:
    lines = []
    for data in files:
        rows = []
        alloc = data.get("allocator") or "plain"  # the script mode never applied the tuning
        for r in data["rows"]:
            rows.append(
                [
                    _MODEL_OPS.get(r["model"], r["model"]),
                    alloc,
                    f"{r['fused_clips_per_s']:.1f}",
                    f"{r['reference_clips_per_s']:.1f}",
                    f"{r['ratio']:.3f}×",
                    f"{r['paired_ratio_min']:.2f}–{r['paired_ratio_max']:.2f}"
                    + (" mixed" if r["paired_ratio_min"] < 1 < r["paired_ratio_max"] else ""),
                    f"{r['fused_faster_in']} of {data['repeats']}",
                ]
            )
        lines += table(
            [
                "model (fused ops)",
                "alloc",
                "fused clips/s",
                "ref. clips/s",
                "speed-up",
                "pair range",
                "fused faster",
            ],
            rows,
            "llrrrrr",
        ) + [""]
        lines += wrap(
            f"Batch {data['rows'][0]['batch']}, 64×64, {data['device'].upper()}; speed-up: median "
            f"over {data['repeats']} back-to-back pairs (order alternating) of the reference / "
            f"fused time ratio; pair range: the lowest and highest of those ratios ('mixed': "
            "some pairs say fused is faster, some slower; read the speed-up as within the noise). "
            f"{data.get('date', '?')[:16]}: {data.get('machine', '?')}"
            + ("" if "allocator" in data.get("machine", "") else f"; allocator: {alloc}")
            + " "
            f"(`{Path(data['_path']).name}`)."
        ) + [""]
    return lines


def _ms(v: float) -> str:
    """Milliseconds to about three significant digits (CPU steps of tens to thousands of ms,
    GPU steps of a few)."""
    return f"{v:.0f}" if v >= 20 else f"{v:.1f}" if v >= 2 else f"{v:.2f}"


def _layer_isa_alloc(m: dict) -> tuple[str, str]:
    """The ISA column (the kernels' level, * where oneDNN has AMX, † for an ISA-capped run; on a
    GPU, the GPU) and the allocator column of a layer record's machine."""
    gpu = m.get("device") == "cuda"
    alloc = "cuda" if gpu else "tuned" if "tuned" in m["allocator"] else "plain"
    caps = m.get("isa_caps") or {}
    isa = (
        gpu_slug_of(m["gpu"])
        if gpu
        else m["extension_cpu_isa"] + ("†" if caps else "*" if "amx_bf16" in m["cpu_isa_flags"] else "")
    )
    return isa, alloc


def _layer_machine_lines(files, mixed: bool = True) -> list[str]:
    """One line per layer record: the machine it ran on and how."""
    lines = []
    for data in files:
        m = data["machine"]
        extra = _mixed_vs_float32(data) if mixed else ""
        if m.get("device") == "cuda":
            lines += [""] + wrap(
                f"{m['date']}: {m['gpu']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, torch {m['torch']}; "
                f"float32 convolutions {'with' if m['cudnn_allow_tf32'] else 'without'} TF32 "
                f"(torch's default, for every implementation alike), cuDNN benchmark mode "
                f"{'on' if m['cudnn_benchmark'] else 'off'}; host CPU {m['cpu']} "
                f"(`{Path(data['_path']).name}`).{extra}"
            )
            continue
        caps = m.get("isa_caps") or {}
        aten = m.get("torch_cpu_capability", "?")
        capped = f"; ISA caps {machine.caps_text(caps)}, ATen at {aten}" if caps else ""
        lines += [""] + wrap(
            f"{m['date']}: {m['cpu']} ({', '.join(m['cpu_isa_flags']) or 'no AVX2'}; "
            f"our kernels ran at {m['extension_cpu_isa']}{capped}), {m['threads']} "
            f"threads, torch {m['torch']}, allocator {m['allocator']} "
            f"(`{Path(data['_path']).name}`).{extra}"
        )
    return lines


def _layer_rows(files, names: dict, share: bool) -> list[list[str]]:
    """Rows of layer records: size, dtype, ISA, allocator, fused's milliseconds, then per
    implementation in `names` its milliseconds and its time over fused's; the convolutions'
    share of the fused step where `share`."""
    rows = []
    for data in files:
        isa, alloc = _layer_isa_alloc(data["machine"])
        for r in data["results"]:
            f = r["impls"]["fused"]
            cells = []
            for impl in names:
                v = r["impls"].get(impl)
                cells.append("—" if v is None else f"{_ms(v['median_ms'])} {v['fused_speedup_median']:.2f}×")
            noisy = max(v["iqr_over_median"] for v in r["impls"].values()) > 0.25
            row = [r["size"] + (" (?)" if noisy else ""), r["mode"], isa, alloc, _ms(f["median_ms"])] + cells
            if share:
                s = r.get("profile_fused", {}).get("conv_share")
                row.append(f"{100 * s:.0f}%" if s is not None else "—")
            rows.append(row)
    return rows


def section_layer_step(files) -> list[str]:
    """The round-robin layer training-step record of bench_layer.py (CPU and GPU records)."""
    names = {"cat": "cat(x, h)", "cat-compile": "compile(cat)", "reference": "reference"}
    header = ["N×Cin×[C]@H", "dtype", "ISA", "alloc", "fused", *names.values(), "conv %"]
    lines = table(header, _layer_rows(files, names, share=True), "lllllrrrr") + [""]
    lines += wrap(
        "Milliseconds per training step (forward over T = 10 + backward of out.sum()), medians of "
        "round-robin rounds in one process; each cell after fused: its median and, "
        "after it, the median over rounds of its time / fused's (above 1×: fused is "
        "faster). ISA: the level the CPU kernels ran at (*: the CPU has AMX, which oneDNN's bf16 "
        "convolutions use; at the amx level our bf16 weight gradients do too; †: a run with ISA "
        "caps, named in its line below, a CPU without the wider ISA emulated), or the GPU. conv %: "
        "share of the fused step's CPU time in convolutions (on a GPU: of its kernels' GPU time). "
        "(?): noisy, some implementation's IQR/median above 25%."
    )
    return lines + _layer_machine_lines(files)


def section_layer_compile(files) -> list[str]:
    """The fused layer under torch.compile (record.py --suite layer_compile)."""
    names = {
        "fused-compile": "compile(fused)",
        "fused-compile-traced": "compile(fused), traced",
        "cat-compile": "compile(cat)",
    }
    header = ["N×Cin×[C]@H", "dtype", "ISA", "alloc", "fused (eager)", *names.values()]
    lines = table(header, _layer_rows(files, names, share=False), "lllllrrr") + [""]
    lines += wrap(
        "Milliseconds per training step as in the table above (round-robin in one process, "
        "medians), the ConvLSTM module eager and compiled with `torch.compile(model)` (default "
        "Inductor backend), beside the compiled common formulation; after each median, the "
        "median over rounds of its time / eager fused's (above 1×: eager fused is faster). "
        "Compiled, a training step calls the layer as two operators (its forward, returning what "
        "backward reads, and its backward) that AOTAutograd keeps one node each; *traced*: "
        "compiled as before those operators, the C++ autograd traced into the schedule's steps. "
        "(?): noisy, some implementation's IQR/median above 25%."
    )
    return lines + _layer_machine_lines(files, mixed=False)


def _mixed_vs_float32(data: dict) -> str:
    """' bf16 channels_last fused against float32 cat(x, h): ...' of a layer record: the mixed
    precision step against the common formulation as a user without mixed precision runs it
    (medians of the same process), per size; '' where the record lacks either."""
    by = {(r["size"], r["mode"]): r["impls"] for r in data["results"]}
    parts = [
        f"{by[size, 'float32']['cat']['median_ms'] / impls['fused']['median_ms']:.2f}× at {size}"
        for (size, mode), impls in by.items()
        if mode == "bf16-cl" and "cat" in by.get((size, "float32"), {}) and "fused" in impls
    ]
    return f" bf16 channels_last fused against float32 `cat(x, h)`: {', '.join(parts)}." if parts else ""


def gpu_slug_of(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100'."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]*)\b", name)
    return m.group(1) if m else name


SECTIONS = {
    "convlstm-op": section_convlstm_op,
    "convlstm-layer": section_convlstm_layer,
    "layer-step": section_layer_step,
    "layer-compile": section_layer_compile,
    "gdl": section_gdl,
    "data": section_data,
    "train": section_train,
}
