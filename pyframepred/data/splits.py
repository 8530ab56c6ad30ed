"""Train/test splits: UCF-101's official split lists, or a deterministic split by group."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Sequence

from .index import group_of

__all__ = ["read_ucf_split", "group_split", "group_key"]


def _key(rel_path: str) -> str:
    # Lists are matched on the file name without extension, case-insensitively, so that a copy
    # converted to another container or stored in another folder layout still matches.
    return os.path.splitext(rel_path.replace("\\", "/").rsplit("/", 1)[-1])[0].lower()


def _listed_path(line: str) -> str:
    """The path of a split list's (stripped) line: all of it, less a trailing integer label."""
    parts = line.rsplit(None, 1)
    if len(parts) == 2 and parts[1].isascii() and parts[1].isdigit():
        return parts[0]
    return line


def read_ucf_split(split_dir, split_index: int = 1, train: bool = True) -> set[str]:
    """Video keys (lower-case file names without extension) listed in UCF-101's
    ``trainlist0N.txt`` (``train=True``) or ``testlist0N.txt`` in ``split_dir``.

    ``split_dir`` may also be the list file itself. Lines look like
    ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`` (train) or without the label (test): the
    path is the whole line less a trailing integer label after the last blank, so names may
    hold spaces (``My Class/clip 1.avi 3``).
    """
    split_path = Path(split_dir)
    if split_path.is_file():
        list_file = split_path
    else:
        name = f"{'train' if train else 'test'}list{int(split_index):02d}.txt"
        list_file = split_path / name
        if not list_file.is_file():
            # Tolerate case differences in the file name (TrainList01.txt...).
            matches = (
                [p for p in split_path.glob("*") if p.name.lower() == name] if split_path.is_dir() else []
            )
            if not matches:
                raise FileNotFoundError(
                    f"UCF-101 split list {name!r} not found in {str(split_path)!r} "
                    f"(expected the official trainlist0N.txt / testlist0N.txt files)"
                )
            list_file = matches[0]
    keys = set()
    with open(list_file, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                keys.add(_key(_listed_path(line)))
    if not keys:
        raise ValueError(f"UCF-101 split list {str(list_file)!r} lists no videos")
    return keys


def listed_side(split_dir, split_index: int, train: bool, paths: Sequence[str], root_txt: str) -> list[bool]:
    """Which of the videos ``paths`` (relative to the data folder ``root_txt``) the ``train`` or
    test list of ``split_dir`` names. The train side warns of the videos that neither list
    names (they are not used: lists written for a part of the folder); the listed videos the
    folder lacks are logged (lists of the whole of UCF-101 over a part of it are common)."""
    from ._common import logger

    listed = read_ucf_split(split_dir, split_index, train)
    keys = [list_key(p) for p in paths]
    missing = len(listed - set(keys))
    if missing:
        side = "train" if train else "test"
        logger.info(
            "%d of the %d videos of the %s list of split %d in '%s' are not in '%s'",
            missing, len(listed), side, split_index, split_dir, root_txt,
        )  # fmt: skip
    if train and Path(split_dir).is_dir():
        try:
            other = read_ucf_split(split_dir, split_index, False)
        except (OSError, ValueError):
            other = set()
        unlisted = [p for p, k in zip(paths, keys) if k not in listed and k not in other]
        if unlisted:
            warnings.warn(
                f"VideoClips: {len(unlisted)} of the {len(paths)} videos in '{root_txt}' are in "
                f"neither list of split {split_index} in '{split_dir}' and are not used "
                f"({names(unlisted)})",
                stacklevel=3,
            )
    return [k in listed for k in keys]


def list_key(rel_path: str) -> str:
    """Key under which :func:`read_ucf_split` matches a video path."""
    return _key(rel_path)


def _rank(text: str) -> str:
    # surrogatepass: a file name that is not UTF-8 reaches Python with surrogates; UTF-8 names
    # hash as before.
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def group_key(rel_path: str, cls: str) -> tuple[str, str]:
    """Key of the group of a video in :func:`group_split`: ``(class, "gN")`` for UCF-style names
    (``v_<Class>_gXX_cYY``), or ``(class, "file:<name>")`` for a video without a group."""
    group = group_of(rel_path)
    return cls.lower(), f"g{int(group)}" if group is not None else "file:" + _key(rel_path)


def group_split(paths: Sequence[str], classes: Sequence[str], test_fraction: float = 0.2) -> list[bool]:
    """Deterministic split of videos into train/test by group; returns ``is_test`` per video.

    Videos are grouped per class by the ``gXX`` of UCF-style names (``v_<Class>_gXX_cYY``; in
    UCF-101 a group is one actor/scene, so its clips are near duplicates); a video without a
    group is its own group. Within each class, the groups are ordered by a hash of their name and
    the first ``round(test_fraction * n_groups)`` go to the test set (at least one and at most
    ``n_groups - 1`` when the class has two or more groups and ``0 < test_fraction < 1``); a
    class with a single group keeps it on the train side. Where every class has a single group
    (a folder per video, say), the classes are split so together, as one class, rather than
    leave the test side empty. The split depends only on the file names: never on a seed or
    the machine.
    """
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    groups_per_class: dict[str, set[tuple[str, str]]] = {}
    keys = []
    for rel, cls in zip(paths, classes):
        key = group_key(rel, cls)
        keys.append(key)
        groups_per_class.setdefault(key[0], set()).add(key)
    units = list(groups_per_class.values())
    if len(units) > 1 and all(len(groups) == 1 for groups in units):
        units = [set().union(*units)]
    test_groups: set[tuple[str, str]] = set()
    for groups in units:
        n = len(groups)
        n_test = int(round(test_fraction * n))
        if 0.0 < test_fraction < 1.0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        ordered = sorted(groups, key=lambda k: _rank(f"{k[0]}/{k[1]}"))
        test_groups.update(ordered[:n_test])
    return [k in test_groups for k in keys]


def names(items, limit=8) -> str:
    """Up to ``limit`` of ``items``, comma-separated, with how many more there are."""
    items = list(items)
    text = ", ".join(items[:limit])
    if len(items) > limit:
        text += f", ... ({len(items) - limit} more)"
    return text


def empty_side_situation(root_txt, side, test_fraction, paths, classes) -> str:
    """Why the group split left the ``side`` (train/test) without videos."""
    groups: dict[str, set] = {}
    for p, c in zip(paths, classes):
        groups.setdefault(c, set()).add(group_key(p, c))
    n_groups = sum(len(g) for g in groups.values())
    per_class = names((f"{c}: {len(g)}" for c, g in sorted(groups.items())), 12)
    if side == "test":
        why = (
            "its one group stays on the train side" if n_groups == 1 else "no group is left for the test side"
        )
    else:
        why = f"test_fraction={test_fraction} sends every group to the test side" + (
            " (a single group)" if n_groups == 1 else ""
        )
    return (
        f"VideoClips: no videos for the {side} side in '{root_txt}': the group split "
        f"(test_fraction={test_fraction}) keeps all the clips of a group (gXX in UCF-101 "
        f"names; a file without one is its own group) on one side, and the "
        f"{len(paths)} readable videos form {n_groups} group(s) (per class: {per_class}): "
        f"{why}."
    )


def empty_side_advice(side) -> str:
    """The ways out of an empty side, in VideoClips' settings."""
    return (
        ("Pass a smaller test_fraction, or " if side == "train" else "Pass ")
        + "test_fraction=0 to use every video on both sides (no held-out data), give "
        "UCF-101 split lists (split_dir), or add videos from more groups (at least two)."
    )
