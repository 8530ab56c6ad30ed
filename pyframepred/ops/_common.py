"""Checks shared by the fake kernels (the C++ kernels check the same things in eager mode)."""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise RuntimeError(
            f"{op}: {name} must be a floating-point tensor (float32, float64, "
            f"float16 or bfloat16), got {t.dtype}"
        )


def check_like(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    check_float(op, name, t)
    if t.device != ref.device:
        raise RuntimeError(
            f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
            "all inputs must be on one device"
        )
    if t.dtype != ref.dtype:
        raise RuntimeError(
            f"{op}: {name} has dtype {t.dtype} but {ref_name} has dtype {ref.dtype}; they must have one dtype"
        )


def check_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise RuntimeError(
            f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}; "
            "all inputs must be on one device"
        )


def valid_state_dtype(gate: torch.dtype, state: torch.dtype) -> bool:
    """Mixed precision: float16/bfloat16 gates may come with a float32 cell state and
    parameters; otherwise one dtype (mirrors csrc/convlstm_host.h)."""
    return state == gate or (gate in (torch.float16, torch.bfloat16) and state == torch.float32)


def check_state_dtype(op: str, name: str, t: torch.Tensor, gate_name: str, gate: torch.dtype) -> None:
    check_float(op, name, t)
    if not valid_state_dtype(gate, t.dtype):
        raise RuntimeError(
            f"{op}: {name} has dtype {t.dtype} but {gate_name} has dtype {gate}; "
            "the cell state and parameters take the gates' dtype, or float32 with "
            "float16/bfloat16 gates (mixed precision)"
        )


def check_shape(op: str, name: str, t: torch.Tensor, expected, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise RuntimeError(f"{op}: {name} must have shape {what} = {tuple(expected)}, got {tuple(t.shape)}")
