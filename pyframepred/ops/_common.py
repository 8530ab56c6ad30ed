"""Checks shared by the fake kernels (the C++ kernels check the same things in eager mode)."""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise RuntimeError(f"{op}: {name} must be a floating-point tensor (float32, float64, "
                           f"float16 or bfloat16), got {t.dtype}")


def check_like(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    check_float(op, name, t)
    if t.device != ref.device:
        raise RuntimeError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
                           "all inputs must be on one device")
    if t.dtype != ref.dtype:
        raise RuntimeError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype "
                           f"{ref.dtype}; all inputs must have one dtype")


def check_shape(op: str, name: str, t: torch.Tensor, expected, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise RuntimeError(f"{op}: {name} must have shape {what} = {tuple(expected)}, "
                           f"got {tuple(t.shape)}")
