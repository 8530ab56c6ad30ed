"""Where a run runs: the device, the ``torchrun`` process group (DDP), seeding."""

from __future__ import annotations

import contextlib
import os
import random
import re
import warnings

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ConfigError

__all__ = [
    "dist_env",
    "seed_everything",
    "resolve_device",
    "all_ranks_max",
    "all_ranks_mean",
    "warn_once",
]


def dist_env() -> tuple:
    """``(world size, rank, local rank)`` from ``torchrun``'s environment (1, 0, 0 without)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


@contextlib.contextmanager
def warn_once(main: bool):
    """Around set-up that every rank does alike (indexing the same videos with the same
    settings): warnings show on the main rank only, so a ``torchrun`` run of N processes prints
    each once rather than N times. Errors are not touched."""
    if main:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device; :class:`ConfigError` if CUDA (or
    device ``N``) is not there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", device) if isinstance(device, str) else None
    if m is None:
        raise ConfigError(f"`device` must be auto, cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"`device` {device} was requested but no CUDA device is available")
    if m.group(1) is not None:
        n = torch.cuda.device_count()
        if int(m.group(1)) >= n:
            raise ConfigError(
                f"`device` {device}: there is no CUDA device {int(m.group(1))} "
                f"({n} found: cuda:0 to cuda:{n - 1})"
            )
    return torch.device(device)


def all_ranks_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (``value`` itself outside DDP)."""
    t = torch.tensor([float(value)])
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            t = t.to(device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_ranks_mean(values: dict, device: torch.device) -> dict:
    """``values`` (name -> number, the same names on every rank) averaged over all ranks, in
    one all-reduce: the loss of the whole batch rather than rank 0's share (``values`` itself
    outside DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(values)
    names = sorted(values)
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: v / dist.get_world_size() for k, v in zip(names, t.tolist())}
