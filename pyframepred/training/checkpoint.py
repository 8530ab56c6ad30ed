"""The training checkpoint format: what a checkpoint holds, how it is written and read.

A checkpoint is a ``torch.save`` dictionary of tensors and plain values only (``dict``, ``list``,
``tuple``, ``str``, ``int``, ``float``, ``bool``, ``None``): the model and optimiser state dicts,
the settings, the step, the history and the random-number states, all as tensors or plain values
(:func:`rng_state`). :func:`load` reads it with ``torch.load(weights_only=True)``, which builds
no other objects, so **loading a checkpoint never runs code**: a file holding anything else (a
crafted pickle whose ``__reduce__`` calls ``os.system``, another program's pickle) is refused
with :class:`CheckpointError` before any of it is used.

A run trained with a weight average (``ema``) saves the average as ``model`` (what evaluation
and prediction load) and the trained weights as ``train_model``, with ``averaged_updates``; a
resumed run goes on from ``train_model``.

Format versions (``"format"``):

- 1 (pyframepred before the safe format): the numpy random state was a pickled numpy array.
  Such files still load: the few numpy names that rebuild a plain numpy array (and nothing else)
  are allowed for that one ``torch.load`` call (see :data:`LEGACY_NUMPY_GLOBALS`), still with
  ``weights_only=True``; the state is converted to the current form on load.
- 2: random states as tensors and plain values (:func:`rng_state`).

A file of a newer format, or one missing the fields a task needs (:func:`check_fields`), is a
:class:`CheckpointError`. Writing (:func:`save`) serialises to memory, checks every weight and
optimiser value is finite (:func:`nonfinite_entries`, done by the trainer before saving) and
goes through the package's atomic writer: a kill or a full disk leaves the previous file intact.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import random
import re
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from ..data import source as data_source
from ..errors import ConfigError, PyframepredError
from ..io import atomic_write_bytes, temp_name_pattern

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "load",
    "save",
    "to_bytes",
    "check_fields",
    "rng_state",
    "set_rng_state",
    "nonfinite_entries",
    "remove_stale_temps",
    "EVAL_FIELDS",
    "RESUME_FIELDS",
    "LEGACY_NUMPY_GLOBALS",
    "load_checkpoint",
    "load_state",
    "model_from_checkpoint",
    "data_root",
]

FORMAT_VERSION = 2

#: Fields every checkpoint has (enough to rebuild and run the model).
EVAL_FIELDS = ("config", "model_kwargs", "model", "step")
#: Fields a checkpoint needs to continue training.
RESUME_FIELDS = EVAL_FIELDS + ("optimizer", "scheduler", "scaler", "rng", "best_psnr", "history")


class CheckpointError(PyframepredError):
    """A file that is not a usable checkpoint (unreadable, foreign or tampered with, of an
    unknown format, or missing fields). The message is one line."""


def _legacy_numpy_globals() -> list:
    """The names ``pickle`` uses for a numpy array of a plain dtype (format 1's numpy random
    state): the array-rebuilding function (numpy 1 and 2 spellings), ``ndarray``, ``dtype`` and
    the ``uint32`` dtype class; and torch's version string class. Rebuilding an array this way
    creates a bare ``ndarray`` from a dtype and raw bytes; no other callable becomes
    reachable."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    out = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
    ]
    dtype_cls = type(np.dtype(np.uint32))
    if dtype_cls is not np.dtype:  # numpy >= 1.25: numpy.dtypes.UInt32DType
        out.append(dtype_cls)
    # Format 1 also stored ``torch.__version__`` as is: a ``str`` subclass.
    out.append(torch.torch_version.TorchVersion)
    return out


LEGACY_NUMPY_GLOBALS = _legacy_numpy_globals()


# ----------------------------------------------------------------------------- random states
def rng_state() -> dict:
    """The random states of python, numpy, torch (and CUDA when present) as tensors and plain
    values (what ``weights_only`` loading accepts)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss,
        },
        "numpy": {
            "bit_generator": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return st


def _normalize_rng(st) -> dict:
    """``st`` in the current form (format 1's python tuple and numpy array converted)."""
    if not isinstance(st, dict) or "python" not in st or "numpy" not in st or "torch" not in st:
        raise CheckpointError("the random states are missing or malformed")
    py, npst = st["python"], st["numpy"]
    if isinstance(py, (tuple, list)) and len(py) == 3:  # format 1
        py = {"version": py[0], "state": torch.tensor(list(py[1]), dtype=torch.int64), "gauss_next": py[2]}
    if isinstance(npst, (tuple, list)) and len(npst) == 5:  # format 1
        keys = npst[1]
        if not isinstance(keys, np.ndarray) or keys.dtype.kind not in "iu":
            raise CheckpointError("the numpy random state is malformed")
        npst = {
            "bit_generator": npst[0],
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": npst[2],
            "has_gauss": npst[3],
            "cached_gaussian": npst[4],
        }
    ok = (
        isinstance(py, dict)
        and isinstance(py.get("version"), int)
        and isinstance(py.get("state"), torch.Tensor)
        and (py.get("gauss_next") is None or isinstance(py.get("gauss_next"), float))
        and isinstance(npst, dict)
        and isinstance(npst.get("bit_generator"), str)
        and isinstance(npst.get("keys"), torch.Tensor)
        and all(isinstance(npst.get(k), int) for k in ("pos", "has_gauss"))
        and isinstance(npst.get("cached_gaussian"), (int, float))
        and isinstance(st["torch"], torch.Tensor)
        and st["torch"].dtype == torch.uint8
        and (
            st.get("cuda") is None
            or (
                isinstance(st["cuda"], (list, tuple))
                and all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in st["cuda"])
            )
        )
    )
    if not ok:
        raise CheckpointError("the random states are malformed")
    out = {"python": py, "numpy": npst, "torch": st["torch"]}
    if st.get("cuda") is not None:
        out["cuda"] = list(st["cuda"])
    return out


def set_rng_state(st: dict) -> None:
    """Restore states from :func:`rng_state` (or a format-1 checkpoint's); a malformed state is a
    :class:`CheckpointError` and leaves the generators as they were."""
    st = _normalize_rng(st)
    py, npst = st["python"], st["numpy"]
    old = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        np.random.set_state(
            (
                npst["bit_generator"],
                npst["keys"].numpy().astype(np.uint32),
                npst["pos"],
                npst["has_gauss"],
                float(npst["cached_gaussian"]),
            )
        )
        torch.set_rng_state(st["torch"])
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        random.setstate(old[0])
        np.random.set_state(old[1])
        torch.set_rng_state(old[2])
        raise CheckpointError(
            f"the random states cannot be restored: {' '.join(str(exc).split())[:200]}"
        ) from exc
    if "cuda" in st and torch.cuda.is_available():
        states = st["cuda"][: torch.cuda.device_count()]
        for i, s in enumerate(states):
            torch.cuda.set_rng_state(s, i)


# ----------------------------------------------------------------------------- checks
def nonfinite_entries(named: dict, limit: int = 5) -> list:
    """Names of the NaN/Inf values in ``named`` (``{name: state dict or optimiser state dict}``),
    searched recursively through tensors and floats; at most ``limit`` names."""
    bad = []

    def walk(obj, where):
        if len(bad) >= limit:
            return
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() or obj.is_complex():
                if not bool(torch.isfinite(obj).all()):
                    bad.append(where)
        elif isinstance(obj, float):
            if not math.isfinite(obj):
                bad.append(where)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}.{k}")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    for name, obj in named.items():
        if obj is not None:
            walk(obj, name)
    return bad


def check_fields(ckpt: dict, path, fields: Iterable[str] = EVAL_FIELDS, task: str = "be used") -> None:
    """:class:`CheckpointError` naming the ``fields`` that ``ckpt`` lacks or holds with a wrong
    type."""
    types = {
        "config": dict,
        "model_kwargs": dict,
        "model": dict,
        "step": int,
        "optimizer": dict,
        "scheduler": dict,
        "scaler": dict,
        "rng": dict,
        "best_psnr": (int, float),
        "history": dict,
    }
    missing = [f for f in fields if f not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint '{path}' lacks {', '.join(missing)}, so it cannot {task}")
    wrong = [
        f for f in fields if f in types and (not isinstance(ckpt[f], types[f]) or isinstance(ckpt[f], bool))
    ]
    if wrong:
        raise CheckpointError(f"checkpoint '{path}' holds malformed {', '.join(wrong)}, so it cannot {task}")
    if "model" in fields and not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt["model"].items()
    ):
        raise CheckpointError(f"checkpoint '{path}': the model state is not a mapping of names to tensors")
    if "config" in fields and not isinstance(ckpt["config"].get("model"), str):
        raise CheckpointError(f"checkpoint '{path}': its settings do not name the model")
    if "step" in fields and ckpt["step"] < 0:
        raise CheckpointError(f"checkpoint '{path}': negative step {ckpt['step']}")
    if "history" in fields:
        h = ckpt["history"]
        if not (isinstance(h.get("train"), list) and isinstance(h.get("val"), list)):
            raise CheckpointError(f"checkpoint '{path}': the history is malformed")


# ----------------------------------------------------------------------------- read / write
_GLOBAL_RE = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([A-Za-z_][\w.]*)")


def _refusal(path, exc: BaseException) -> CheckpointError:
    text = " ".join(str(exc).split())
    m = _GLOBAL_RE.search(text)
    what = f" ({m.group(1)})" if m else ""
    return CheckpointError(
        f"refusing checkpoint '{path}': it holds objects other than tensors and plain "
        f"values{what}, so it was not written by pyframepred or has been altered; loading it "
        f"could run code, so nothing of it was used"
    )


def _foreign_format(data: bytes) -> str | None:
    """Why ``data`` is neither torch.save's zip archive nor a legacy pickle (which starts with the
    PROTO opcode), so that a failed load is a foreign file rather than a refused one; None when it
    may be either."""
    if not data:
        return "the file is empty"
    if zipfile.is_zipfile(io.BytesIO(data)) or data.startswith(b"\x80"):
        return None
    if data.startswith(b"PK\x03\x04"):
        return "a truncated or damaged zip archive"
    return "it is neither a zip archive nor a pickle"


def load(path, map_location="cpu") -> dict:
    """Read the checkpoint at ``path`` with ``torch.load(weights_only=True)`` (see the module
    docstring); returns the dictionary with the random states in the current form. Any problem
    is a one-line :class:`CheckpointError`."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint '{path}' does not exist") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint '{path}': {exc.strerror or exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(
            f"checkpoint '{path}' is a directory, not a checkpoint file (e.g. "
            f"'{path / 'best.pt'}' or '{path / 'last.pt'}')"
        )
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"checkpoint '{path}' is not a regular file")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint '{path}': {exc.strerror or exc}") from exc
    try:
        with torch.serialization.safe_globals(LEGACY_NUMPY_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol
            ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        text = " ".join(str(exc).split())
        foreign = _foreign_format(data)
        if foreign is None and (
            isinstance(exc, pickle.UnpicklingError) or "weights_only" in text or "Unsupported global" in text
        ):
            raise _refusal(path, exc) from None
        if foreign is not None or len(text) < 20:
            # torch.load's own words for a foreign file are cryptic (e.g. a bare byte value).
            why = foreign or f"torch.load says: {text}"
            raise CheckpointError(
                f"'{path}' is not a checkpoint written by torch.save (e.g. a run's best.pt or "
                f"last.pt): {why[:200] or type(exc).__name__}"
            ) from None
        raise CheckpointError(f"cannot read checkpoint '{path}': {text[:300]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"'{path}' is not a pyframepred training checkpoint")
    version = ckpt.get("format", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint '{path}' has an invalid format field {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has format {version}, newer than this "
            f"pyframepred reads ({FORMAT_VERSION}); upgrade pyframepred"
        )
    if "rng" in ckpt:
        try:
            ckpt["rng"] = _normalize_rng(ckpt["rng"])
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint '{path}': {exc}") from None
    ckpt["format"] = FORMAT_VERSION
    return ckpt


def to_bytes(ckpt: dict) -> bytes:
    """``ckpt`` serialised by ``torch.save`` (in memory, so that writing it can fail only with
    an ``OSError`` of the file system)."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return buf.getvalue()


def save(ckpt: dict, paths, data: Optional[bytes] = None) -> None:
    """Write ``ckpt`` atomically to each of ``paths`` (one serialisation). ``OSError`` (e.g. a
    full disk) leaves every previous file intact."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    data = to_bytes(ckpt) if data is None else data
    for p in paths:
        atomic_write_bytes(p, data)


def remove_stale_temps(folder, names=("last.pt", "best.pt")) -> list:
    """Delete the temporary files that killed saves of ``names`` left in ``folder`` (call only
    while holding the folder's lock: another run's save in progress looks the same). Returns the
    paths removed."""
    removed = []
    for name in names:
        for p in Path(folder).glob(temp_name_pattern(name)):
            try:
                if p.is_file() and not p.is_symlink():
                    p.unlink()
                    removed.append(p)
            except OSError:
                pass
    return removed


# ----------------------------------------------------------------------------- using one
def load_checkpoint(path, map_location="cpu", fields=EVAL_FIELDS, task: str = "be used") -> dict:
    """:func:`load`, then :func:`check_fields`: the checkpoint at ``path`` with ``fields``, or
    a one-line :class:`CheckpointError` saying why not (``task``: what it was to be used for)."""
    ckpt = load(path, map_location=map_location)
    check_fields(ckpt, path, fields, task)
    return ckpt


def load_state(module: torch.nn.Module, state: dict, what: str) -> None:
    """``module.load_state_dict(state)``; a mismatch is a one-line :class:`CheckpointError`
    (``what``: the state's name in the message)."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4] if len(lines) > 1 else lines)
        raise CheckpointError(
            f"{what} does not fit the network built from its settings ({detail[:300]})"
        ) from exc


def model_from_checkpoint(ckpt: dict, device, fused: bool = True) -> torch.nn.Module:
    """The checkpoint's predicting network, with its weights, on ``device``, in eval mode."""
    from ..models.registry import build_model

    model = build_model(ckpt["config"]["model"], ckpt["model_kwargs"], fused)
    load_state(model, ckpt["model"], "the checkpoint's model")
    return model.to(device).eval()


def data_root(cfg: dict):
    """The data folder a checkpoint's settings ``cfg`` trained on (``None``: the embedded data
    set). A relative path (older checkpoints stored ``data`` as given) that does not exist from
    here is a :class:`~pyframepred.errors.ConfigError` that suggests giving ``data``."""
    data = cfg.get("data")
    if not data_source.is_folder(data):  # the embedded set; Moving MNIST
        return data
    if not os.path.isabs(data) and not os.path.exists(data):
        raise ConfigError(
            f"the checkpoint's data folder '{data}' is a relative path (relative "
            f"to the folder training ran in) and does not exist from here; pass "
            f"`data` DIR"
        )
    return data
