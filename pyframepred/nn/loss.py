"""Loss modules built on the fused operators."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import reference
from ..ops import gdl_loss
from ..ops._gdl import check_alpha, reduction_code


class GDLLoss(nn.Module):
    """Gradient difference loss (Mathieu et al. 2015), a drop-in like :class:`torch.nn.MSELoss`.

    ``loss = GDLLoss(alpha=1.0, reduction="mean"); loss(pred, target)`` with ``pred`` and
    ``target`` of shape ``(..., H, W)``. See :func:`pyframepred.ops.gdl_loss` for the formula
    (the difference of absolute image gradients), the reductions and the supported dtypes.
    Floating-point inputs of two dtypes are computed in their common dtype (a bfloat16
    prediction under autocast against a float32 target: in float32), as ``MSELoss`` does; the op
    itself takes one dtype.

    Args:
        alpha: exponent, a finite float ``>= 1``.
        reduction: ``"mean"`` (sum / ``pred.numel()``), ``"sum"`` or ``"none"`` (one value per
            image, shape ``pred.shape[:-2]``).
        fused: the fused kernel (True) or the plain-PyTorch reference (False), which also
            supports second derivatives (the fused backward is not differentiable) and the
            ``torch.func`` transforms and forward-mode AD (the fused op's autograd is C++).
    """

    def __init__(self, alpha: float = 1.0, reduction: str = "mean", fused: bool = True) -> None:
        super().__init__()
        self.alpha = check_alpha(alpha)
        reduction_code(reduction)
        self.reduction = reduction
        self.fused = fused

    def forward(self, input: Tensor, target: Tensor) -> Tensor:  # noqa: A002 (nn.Module style)
        fn = gdl_loss if self.fused else reference.gdl_loss
        if input.dtype != target.dtype and input.is_floating_point() and target.is_floating_point():
            common = torch.promote_types(input.dtype, target.dtype)
            input, target = input.to(common), target.to(common)
        return fn(input, target, self.alpha, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, reduction={self.reduction!r}, fused={self.fused}"
