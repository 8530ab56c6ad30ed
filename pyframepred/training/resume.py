"""The resume policy: which settings a resumed run takes from its checkpoint, which it may
change, and which must match.

:func:`resume_settings` merges explicit settings over a checkpoint's: every setting not given
again comes from the checkpoint; the :data:`RESUME_FIXED` ones (they fix the network's shape or
the layout of its data) must match it; the output folder defaults to the checkpoint's folder.

:func:`split_of` and :func:`check_split` keep the held-out videos held out: a checkpoint records
which videos its run trained on and validated on, and a resumed run whose split (its
``test_fraction``, ``split_dir``, ``split_index``, or the videos in ``data``) would now train on a
video it held out, or hold out one it trained on only, is refused; one that validates on other
clips picks ``best.pt`` anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from ..data import source as data_source
from ..errors import ConfigError
from ..models import registry
from . import checkpoint as ckpt_format
from .config import TrainConfig

__all__ = [
    "RESUME_FIXED",
    "resume_conflicts",
    "check_resumable",
    "check_same_model",
    "checkpoint_path",
    "resume_settings",
    "split_of",
    "check_split",
]

# Settings that fix the network's shape or the layout of its data: a resumed run keeps them.
RESUME_FIXED = (
    "model",
    "preset",
    "in_frames",
    "out_frames",
    "interval",
    "fps",
    "size",
    "residual",
    "batch_norm",
    "model_kwargs",
)


def _article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _fixed_value(cfg: dict, name: str):
    value = cfg.get(name, getattr(TrainConfig, name, None) if name != "model_kwargs" else {})
    if name == "batch_norm" and value is None:  # the preset's choice, else the model's default
        try:
            spec = registry.get(cfg.get("model"))
        except ConfigError:
            return None
        value = spec.presets.get(cfg.get("preset"), {}).get("batch_norm")
        if value is None:
            value = spec.default("batch_norm")
    return value


def resume_conflicts(cfg: TrainConfig, ckpt_cfg: dict) -> list:
    """``(name, checkpoint value, given value)`` of the :data:`RESUME_FIXED` settings in which
    the resolved ``cfg`` differs from a checkpoint's settings."""
    given = dataclasses.asdict(cfg)
    out = []
    mnist = data_source.kind(cfg.data) == data_source.MOVING_MNIST
    for name in RESUME_FIXED:
        if name == "batch_norm" and not cfg.spec.batch_norm:
            continue  # not used by this model
        if mnist and name in ("size", "interval", "fps"):
            continue  # Moving MNIST's frames are its own
        a, b = _fixed_value(ckpt_cfg, name), _fixed_value(given, name)
        if a != b:
            out.append((name, a, b))
    return out


def check_same_model(path, ckpt_model, model: str) -> None:
    if ckpt_model != model:
        raise ConfigError(
            f"checkpoint '{path}' holds {_article(str(ckpt_model))} model, not {_article(model)} model"
        )


def check_resumable(cfg: TrainConfig, ckpt_cfg: dict, path) -> None:
    """:class:`ConfigError` unless ``cfg`` can continue the checkpoint at ``path``."""
    check_same_model(path, ckpt_cfg.get("model"), cfg.model)
    bad = resume_conflicts(cfg, ckpt_cfg)
    if bad:
        diffs = "; ".join(
            f"`{k}` is {json.dumps(a, default=str)} in the checkpoint but "
            f"{json.dumps(b, default=str)} was given"
            for k, a, b in bad
        )
        raise ConfigError(
            f"cannot resume '{path}' with other model settings: {diffs} (these fix "
            f"the network or its data; leave them out to keep the checkpoint's, or "
            f"start a new run in another `out`)"
        )


def checkpoint_path(resume, explicit: dict) -> str:
    """The checkpoint file ``resume`` names: itself, ``<folder>/last.pt`` for a folder, and for
    ``"auto"`` ``<out>/last.pt`` of the explicit (or the model's default) output folder."""
    if resume == "auto":
        if "out" not in explicit and "model" not in explicit:
            raise ConfigError(
                "`resume` without a checkpoint needs `out` (or `model`, for the "
                "default output folder) to find <out>/last.pt"
            )
        out = (
            explicit.get("out")
            or TrainConfig(model=explicit["model"], preset=explicit.get("preset", "quick")).resolved().out
        )
        return os.path.join(os.path.expanduser(out), "last.pt")
    resume = os.path.expanduser(resume)
    if Path(resume).is_dir():
        return os.path.join(resume, "last.pt")
    return os.fspath(resume)


#: Settings added after checkpoints were first written, with what the runs before them did.
_BEFORE_ADDED = {"frame_loss": "mean", "ema": 0.0}


def resume_settings(explicit: dict, resume=None) -> tuple:
    """``(TrainConfig (resolved), checkpoint path or None, loaded checkpoint or None)``.

    ``explicit``: the settings given (by name); ``resume``: a checkpoint, its folder, ``"auto"``
    or ``None`` (a new run). See the module docstring for the merge.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(explicit) - fields)
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(unknown)}")
    ckpt = None
    if resume is not None:
        resume = checkpoint_path(resume, explicit)
        ckpt = ckpt_format.load_checkpoint(resume, fields=ckpt_format.RESUME_FIELDS, task="be resumed")
        base = {k: v for k, v in ckpt["config"].items() if k in fields}
        # settings added since: what a checkpoint without them was trained with
        for name, before in _BEFORE_ADDED.items():
            base.setdefault(name, before)
        if "model" in explicit:  # before the other model's settings are checked against it
            check_same_model(resume, base.get("model"), explicit["model"])
        if "data" not in explicit:
            base["data"] = ckpt_format.data_root(base)
            data_source.check_exists(base["data"], "the checkpoint's data folder", "; pass `data` DIR")
        base.pop("out", None)
        values = {**base, **explicit}
        values.setdefault("out", str(Path(resume).parent))
    else:
        values = dict(explicit)
    if values.get("split_dir") is not None and "test_fraction" in explicit:
        raise ConfigError("`split_dir` and `test_fraction` are alternatives (the lists decide the split)")
    if "model" not in values:
        raise ConfigError(f"`model` is required ({', '.join(registry.names())})")
    cfg = TrainConfig(**values)
    data_source.check_exists(cfg.data)
    cfg = cfg.resolved(inherited=set(values) - set(explicit))
    if ckpt is not None:
        check_resumable(cfg, ckpt["config"], resume)
    return cfg, resume, ckpt


def split_of(train_ds, val_ds) -> dict | None:
    """What a run trains and validates on, as its checkpoint records it: the videos of each side
    (paths relative to the data folder, sorted) and a digest of the validation clips (each one's
    video and frame numbers). ``None`` for data that is not a folder of videos (Moving MNIST)."""
    from ..data import VideoClips

    base = getattr(val_ds, "dataset", val_ds)  # the validation clips: a Subset of the first ones
    if not isinstance(train_ds, VideoClips) or not isinstance(base, VideoClips):
        return None
    clips = hashlib.sha1()
    for i in range(len(val_ds)):
        video, slot = base.locate(i)
        frames = base.frame_indices(video, base.eval_start(video, slot))
        clips.update(f"{base.videos[video].path}\0{frames}\n".encode("utf-8", "surrogatepass"))
    return {
        "train": sorted(v.path for v in train_ds.videos),
        "val": sorted(v.path for v in base.videos),
        "val_clips": clips.hexdigest(),
    }


def _names(paths: list) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def recorded_paths(value) -> set | None:
    """A recorded list of video paths as a set; ``None`` for anything else (a crafted record)."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        return None
    return set(value)


def check_split(saved, now, path) -> bool:
    """Whether a run resumed from the checkpoint at ``path`` validates on the clips it did
    (``saved`` and ``now``: :func:`split_of` of the checkpoint's run and of the resumed one's);
    :class:`ConfigError` where a video it trained on only is now held out, or one it held out is
    now trained on (``test_fraction`` 0 puts every video on both sides: it holds none out). A
    checkpoint without the record, or data without videos, is not checked."""
    old_train, old_val = (
        recorded_paths(saved.get(k)) if isinstance(saved, dict) else None for k in ("train", "val")
    )
    if old_train is None or old_val is None or now is None:
        return True
    now_train, now_val = set(now["train"]), set(now["val"])
    to_val = sorted((old_train - old_val) & (now_val - now_train))
    to_train = sorted((old_val - old_train) & now_train)
    if to_val or to_train:
        moved = [f"{len(to_val)} it trained on are now held out ({_names(to_val)})"] if to_val else []
        if to_train:
            moved.append(f"{len(to_train)} it held out are now trained on ({_names(to_train)})")
        raise ConfigError(
            f"cannot resume '{path}' on another split of the data: of its videos, "
            f"{'; '.join(moved)}. The split follows `test_fraction`, `split_dir` and "
            f"`split_index`, and the videos in `data` (added or removed ones can move a group): "
            f"resume with the checkpoint's settings and videos, or start a new run"
        )
    return saved.get("val_clips") == now["val_clips"] and old_val == now_val
