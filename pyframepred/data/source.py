"""What a run's ``data`` setting names, decided in one place.

``None`` is the embedded synthetic data set, ``"moving-mnist"`` the Moving MNIST sequences
(:mod:`pyframepred.data.moving_mnist`), anything else a folder of videos. Training, resuming,
checkpoints and evaluation ask these functions instead of comparing names themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .moving_mnist import DATA_NAME as MOVING_MNIST

EMBEDDED, FOLDER = "embedded", "folder"


def kind(data: Optional[str]) -> str:
    """``"embedded"``, ``"moving-mnist"`` or ``"folder"``. An empty path (an unset variable, say)
    is a :class:`~pyframepred.errors.ConfigError`, not the current folder."""
    if data is None:
        return EMBEDDED
    if isinstance(data, str) and not data:
        raise ConfigError("`data` is an empty path; give a data folder ('.' for the current one)")
    return MOVING_MNIST if data == MOVING_MNIST else FOLDER


def is_folder(data: Optional[str]) -> bool:
    return kind(data) == FOLDER


def channels(data: Optional[str]) -> int:
    """Colour channels of the frames: 1 for Moving MNIST, 3 for videos."""
    return 1 if kind(data) == MOVING_MNIST else 3


def resolve(data: Optional[str]) -> Optional[str]:
    """A folder as an absolute path (a checkpoint must work from any folder); other names as given."""
    return os.path.abspath(data) if is_folder(data) else data


def check_exists(data: Optional[str], what: str = "the data folder", hint: str = "") -> None:
    """Raises :class:`~pyframepred.errors.ConfigError` when ``data`` is a folder that does not exist."""
    if is_folder(data) and not Path(str(data)).exists():
        raise ConfigError(f"{what} '{data}' does not exist{hint}")
