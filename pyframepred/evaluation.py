"""Evaluation of a model against the copy-last-frame baseline.

:func:`evaluate_model` predicts ``steps`` frames from ``n_input`` frames on a fixed set of clips
and reports PSNR, SSIM, sharpness difference, L2 and GDL per predicted step for the model and
for the baseline that repeats the last input frame (see :mod:`pyframepred.metrics`; frames in
[-1, 1], data range 2). :func:`heldout_clips` gives the reproducible held-out clips of a
checkpoint's data (``VideoClips(train=False)``: the same clips on every run for the same seed).
The command line is ``python -m pyframepred.evaluate`` (:mod:`pyframepred.cli.evaluate`).
"""

from __future__ import annotations

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import Dataset, default_collate

from . import metrics as M
from .errors import ConfigError
from .models.registry import rollout

__all__ = ["METRICS", "evaluate_model", "format_table", "heldout_clips", "match_channels", "with_channels"]

METRICS = ("psnr", "ssim", "sharpness", "l2", "gdl", "mse", "mae")


def _shapes(item):
    if isinstance(item, (tuple, list)):
        return tuple(_shapes(x) for x in item)
    return tuple(getattr(item, "shape", ()))


def clip_loader(dataset: Dataset, batch_size: int, max_clips: int | None, empty: str):
    """The first ``max_clips`` items of ``dataset`` in order, collated in batches of up to
    ``batch_size`` consecutive items of one shape: a batch ends early where the next clip's
    frames differ in size (a test set of clips of several sizes); :class:`ConfigError` ``empty``
    when there are none."""
    count = len(dataset) if max_clips is None else min(len(dataset), max_clips)
    if count <= 0:
        raise ConfigError(empty)

    def batches():
        batch, shape = [], None
        for i in range(count):
            item = dataset[i]
            if batch and (len(batch) == batch_size or _shapes(item) != shape):
                yield default_collate(batch)
                batch = []
            batch.append(item)
            shape = _shapes(item)
        yield default_collate(batch)

    return batches()


@contextmanager
def eval_mode(model: torch.nn.Module):
    """``model`` in evaluation mode for the block, its training mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset: Dataset,
    n_input: int,
    steps: int,
    device="cpu",
    batch_size: int = 8,
    max_clips: int | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict:
    """Metrics per predicted step, model vs copy-last-frame baseline.

    ``dataset`` yields clips ``(n_input + steps, C, H, W)`` in [-1, 1] (``C``: the model's
    channels); the first ``max_clips`` are used, in order, batched by ``batch_size`` (clips of
    different sizes go in different batches). Returns ``{"clips", "steps", "model": {metric:
    [per step]}, "baseline": {...}, "model_mean": {metric: mean}, "baseline_mean": {...}}``.
    """
    device = torch.device(device)
    loader = clip_loader(dataset, batch_size, max_clips, "no held-out clips to evaluate on")
    sums = {w: {m: torch.zeros(steps, dtype=torch.float64) for m in METRICS} for w in ("model", "baseline")}
    n = 0
    with eval_mode(model):
        for clips in loader:
            clips = clips.to(device, non_blocking=True)
            if clips.shape[1] < n_input + steps:
                raise ConfigError(f"clips have {clips.shape[1]} frames, need {n_input + steps}")
            inputs = clips[:, :n_input]
            target = clips[:, n_input : n_input + steps].float()
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                pred = rollout(model, inputs, steps)
            pred = pred.float()
            base = inputs[:, -1:].float().expand_as(target)
            for who, p in (("model", pred), ("baseline", base)):
                vals = M.all_metrics(p, target)
                for m in METRICS:
                    sums[who][m] += vals[m].double().sum(0).cpu()
            n += clips.shape[0]
    out: dict = {"clips": n, "steps": steps}
    for who in ("model", "baseline"):
        per_step = {m: (sums[who][m] / n).tolist() for m in METRICS}
        out[who] = per_step
        out[f"{who}_mean"] = {m: float(sum(v) / len(v)) for m, v in per_step.items()}
    return out


_BETTER = {"psnr": "higher", "ssim": "higher", "sharpness": "higher"}


def format_table(result: dict) -> str:
    """The means over the predicted steps, model beside copy-last, one metric per row (the
    values per step are in the result, ``eval.json``)."""
    lines = [
        f"{result['clips']} clips, {result['steps']} predicted steps: mean over the steps "
        f"(per step: in the JSON)",
        f"{'metric':<10} {'model':>12} {'copy-last':>12}  better",
    ]
    for m in METRICS:
        lines.append(
            f"{m:<10} {result['model_mean'][m]:>12.4f} "
            f"{result['baseline_mean'][m]:>12.4f}  {_BETTER.get(m, 'lower')}"
        )
    lines.append(
        "mse/mae: per frame, summed over its pixels in [0, 1] (as OpenSTL reports them); "
        "l2: mean over pixels in [-1, 1]"
    )
    return "\n".join(lines)


def _trained_on(data, cfg: dict) -> bool:
    """Whether the folder ``data`` (``None``: the checkpoint's own) is the one the checkpoint's
    settings ``cfg`` trained on."""
    if data is None:
        return True
    trained = cfg.get("data")
    if not isinstance(trained, str) or not os.path.isabs(trained):
        return False  # the embedded set, or an older checkpoint's relative path
    try:
        return Path(data).resolve() == Path(trained).resolve()
    except (OSError, RuntimeError):
        return False


def check_mnist_test(mnist_test, source) -> None:
    """:class:`ConfigError` where a Moving MNIST test file is given for clips of another
    ``source`` (it would be ignored, the scores silently of other clips)."""
    from .data import source as data_source

    if mnist_test is not None and data_source.kind(source) != data_source.MOVING_MNIST:
        where = f"'{source}'" if source else "the embedded data set"
        raise ConfigError(f"`mnist_test` applies to Moving MNIST clips; these come from {where}")


def heldout_clips(
    cfg: dict,
    data,
    frames: int,
    seed: int = 0,
    clips_per_video: int = 1,
    count: int = 256,
    mnist_test=None,
    all_videos: bool = False,
    channels: int = 3,
    split_record=None,
):
    """The held-out clips of ``frames`` frames for a checkpoint's settings ``cfg``, from the
    folder ``data`` (``None``: the data set the checkpoint was trained on; ``"moving-mnist"``:
    Moving MNIST, from the standard test file ``mnist_test`` or ``count`` fixed sequences of the
    held-out digits). On the data the checkpoint was trained on, the test side of the split it
    trained with (its ``test_fraction``, or its ``split_dir`` lists); on another folder, the
    test side of a group split with ``test_fraction`` 0.2. ``all_videos`` takes fixed clips of
    every video in the folder instead: for footage the model never saw. ``channels``: the
    model's; the clips are given to it as :func:`match_channels` makes them (colour clips grey for
    a grey model, grey Moving MNIST clips as RGB for a colour one).
    ``split_record``: the checkpoint's record of the videos it trained on and held out
    (``checkpoint["split"]``); where the test side now holds videos it trained on only (the
    folder changed since), a warning names them."""
    from .data import VideoClips, default_dataset_root, moving_mnist
    from .data import source as data_source
    from .training.checkpoint import data_root

    source = data if data is not None else cfg.get("data")
    check_mnist_test(mnist_test, source)
    if data_source.kind(source) == data_source.MOVING_MNIST:
        clips = moving_mnist.clips(
            frames,
            False,
            mnist=cfg.get("mnist"),
            mnist_test=mnist_test or cfg.get("mnist_test"),
            seed=seed,
            count=count,
        )
        return with_channels(clips, channels, data_source.channels(source))
    own_data = _trained_on(data, cfg)
    if data is None:
        data = data_root(cfg)
    root = data if data is not None else default_dataset_root()
    split: dict = dict(test_fraction=0.2)
    if all_videos:
        split = dict(test_fraction=0)
    elif own_data:
        split = dict(
            test_fraction=cfg.get("test_fraction", 0.2),
            split_dir=cfg.get("split_dir"),
            split_index=cfg.get("split_index", 1),
        )
        if split["split_dir"] is None and not split["test_fraction"]:
            warnings.warn(
                "the checkpoint was trained with test_fraction 0, on every video of its data: "
                "these scores are on training videos, not held-out ones",
                stacklevel=2,
            )
    try:
        clips = VideoClips(
            root,
            frames=frames,
            interval=cfg.get("interval", 0),
            fps=cfg.get("fps"),
            size=cfg.get("size", 64),
            train=False,
            seed=seed,
            clips_per_video=clips_per_video,
            progress=False,
            **split,
        )
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(str(exc)) from exc
    if own_data and not all_videos and isinstance(split_record, dict):
        _warn_trained_on(clips, split_record)
    return with_channels(clips, channels, data_source.channels(source))


def _warn_trained_on(clips, record: dict) -> None:
    from .data.splits import names
    from .training.resume import recorded_paths

    train, val = recorded_paths(record.get("train")), recorded_paths(record.get("val"))
    if train is None or val is None:
        return
    seen = sorted(v.path for v in clips.videos if v.path in train - val)
    if seen:
        warnings.warn(
            f"{len(seen)} of the {len(clips.videos)} test-side videos were trained on by this "
            f"checkpoint (its data folder changed since): their scores are not held-out ones "
            f"({names(seen)})",
            stacklevel=3,
        )


def match_channels(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """Frames ``(..., C, H, W)`` with the ``channels`` a model takes: colour frames grey (the mean
    of the channels) for a grey model (``channels`` 1), grey frames as RGB (the channel repeated,
    as the written GIFs and videos show them) for a colour one; :class:`ConfigError` for other
    mismatches."""
    have = frames.shape[-3]
    if have == channels:
        return frames
    if channels == 1:
        return frames.mean(-3, keepdim=True)
    if have == 1:
        return frames.expand(*frames.shape[:-3], channels, *frames.shape[-2:]).contiguous()
    raise ConfigError(f"the checkpoint's model takes frames of {channels} channels, the data has {have}")


def with_channels(clips: Dataset, channels: int, have: int) -> Dataset:
    """``clips`` (clips of ``have`` channels, or tuples whose first item is such a clip) with the
    ``channels`` of a model (:func:`match_channels`); :class:`ConfigError` when they cannot be."""
    if have == channels:
        return clips
    match_channels(torch.zeros(have, 1, 1), channels)  # refused now, not at the first clip
    return _Channels(clips, channels)


class _Channels(Dataset):
    """Another data set's clips with a model's channels (:func:`match_channels`); its other
    attributes (``root``, ``videos``) are the data set's."""

    def __init__(self, clips, channels: int):
        self.clips, self.channels = clips, channels

    def __len__(self) -> int:
        return len(self.clips)

    def __getattr__(self, name):
        if name in ("clips", "channels"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.clips, name)

    def __getitem__(self, index):
        item = self.clips[index]
        if isinstance(item, (tuple, list)):
            return (match_channels(item[0], self.channels), *item[1:])
        return match_channels(item, self.channels)
