"""The fused gradient difference loss: ``gdl_loss`` and its fake kernels (autograd is in C++)."""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ._common import check_float, check_like

_OP = "gdl_loss"
REDUCTIONS = {"none": 0, "mean": 1, "sum": 2}


def reduction_code(reduction: str) -> int:
    """``"none"``/``"mean"``/``"sum"`` -> 0/1/2 (the op's integer argument)."""
    code = REDUCTIONS.get(reduction) if isinstance(reduction, str) else None
    if code is None:
        raise ValueError(f"{_OP}: reduction must be one of 'none', 'mean' or 'sum', got {reduction!r}")
    return code


def check_alpha(alpha) -> float:
    # numbers.Real: Python's int and float, and NumPy's scalars (which register as such)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"{_OP}: alpha must be a number >= 1 (a Python or NumPy scalar), got {alpha!r}")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha >= 1.0):
        raise ValueError(f"{_OP}: alpha must be a finite number >= 1, got {alpha}")
    return alpha


def gdl_loss(pred: Tensor, target: Tensor, alpha: float = 1.0, reduction: str = "mean") -> Tensor:
    """Gradient difference loss (Mathieu, Couprie & LeCun 2015), fused into one kernel.

    For each image (the last two dims, ``H x W``) and every pair of neighbouring pixels, with
    no padding::

        sum_{y=1..H-1, x} | |t[y,x] - t[y-1,x]| - |p[y,x] - p[y-1,x]| |^alpha     (vertical)
      + sum_{y, x=1..W-1} | |t[y,x] - t[y,x-1]| - |p[y,x] - p[y,x-1]| |^alpha     (horizontal)

    This is the paper's form: the difference of the *absolute* image gradients, not
    ``|grad t - grad p|^alpha`` (so a prediction whose edges have the right strength but the
    opposite polarity is not penalised).

    Args:
        pred: predicted frames, shape ``(..., H, W)`` (e.g. ``(N, C, H, W)`` or
            ``(N, T, C, H, W)``), float32/float64/float16/bfloat16. Any strides.
        target: ground truth, same shape, device and dtype as ``pred``.
        alpha: the exponent, any finite float ``>= 1`` (1 and 2 have fast paths).
        reduction: ``"mean"`` (the sum divided by ``pred.numel()``), ``"sum"``, or ``"none"``
            (one value per image, shape ``pred.shape[:-2]``).

    Returns:
        The loss in ``pred``'s dtype (accumulated in float for float16/bfloat16, in double on the
        CPU). Frames of height (width) 1 have no vertical (horizontal) pairs and contribute 0.

    Forward reads each element once and sums in fixed-size blocks, so results are bit-identical
    run after run. Gradients flow to ``pred`` and, when it requires grad, to ``target``; at a kink
    (a zero difference, or a zero image gradient) the subgradient is 0. Nothing is saved for
    backward but the inputs themselves.
    """
    code = reduction_code(reduction)
    alpha = check_alpha(alpha)
    return torch.ops.pyframepred.gdl_loss_forward(pred, target, alpha, code)


def _check(op: str, pred: Tensor, target: Tensor, alpha: float, reduction: int) -> None:
    check_float(op, "pred", pred)
    check_like(op, "target", target, "pred", pred)
    if pred.dim() < 2:
        raise RuntimeError(f"{op}: pred must have at least 2 dims (..., H, W), got shape {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise RuntimeError(
            f"{op}: target must have the shape of pred {tuple(pred.shape)}, got {tuple(target.shape)}"
        )
    if pred.numel() == 0:
        raise RuntimeError(f"{op}: pred and target must not be empty, got shape {tuple(pred.shape)}")
    if not (math.isfinite(alpha) and alpha >= 1.0):
        raise RuntimeError(f"{op}: alpha must be a finite number >= 1, got {alpha}")
    if reduction not in (0, 1, 2):
        raise RuntimeError(f"{op}: reduction must be 0 (none), 1 (mean) or 2 (sum), got {reduction}")


@torch.library.register_fake("pyframepred::gdl_loss_forward")
def _forward_fake(pred, target, alpha, reduction):
    _check("gdl_loss", pred, target, alpha, reduction)  # as the kernels: the public name
    shape = pred.shape[:-2] if reduction == 0 else ()
    return pred.new_empty(shape)


@torch.library.register_fake("pyframepred::gdl_loss_backward")
def _backward_fake(grad_out, pred, target, alpha, reduction, target_grad):
    op = "gdl_loss_backward"
    _check(op, pred, target, alpha, reduction)
    if grad_out.device != pred.device:
        raise RuntimeError(f"{op}: grad_out is on {grad_out.device} but pred is on {pred.device}")
    expected = pred.shape[:-2] if reduction == 0 else ()
    if grad_out.shape != expected:
        raise RuntimeError(f"{op}: grad_out must have shape {tuple(expected)}, got {tuple(grad_out.shape)}")
    grad_pred = torch.empty_like(pred)
    grad_target = torch.empty_like(target) if target_grad else pred.new_empty((0,))
    return grad_pred, grad_target


# Autograd is registered in C++ (csrc/gdl_autograd.cpp), so LibTorch users have it too.
