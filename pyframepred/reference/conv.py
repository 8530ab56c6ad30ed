"""Plain-PyTorch twins of ``pyframepred.ops.conv2d_weight_grad`` and ``conv2d_same``."""

from __future__ import annotations

import operator
from typing import Tuple, Union

import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight


def conv2d_same(input: Tensor, weight: Tensor) -> Tensor:
    """Stride-1, 'same'-padded convolution with an odd kernel, no bias: ``(B, C_out, H, W)``."""
    return F.conv2d(input, weight, padding=(weight.shape[2] // 2, weight.shape[3] // 2))


def kernel_pair(kernel_size, who: str) -> Tuple[int, int]:
    """``(kh, kw)`` from an int or a pair of ints (numpy integers too, not bools); else a
    one-line ValueError naming ``who``."""
    pair = kernel_size if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
    try:
        if len(pair) != 2 or any(isinstance(k, bool) for k in pair):
            raise TypeError
        kh, kw = (operator.index(k) for k in pair)
    except TypeError:
        raise ValueError(
            f"{who}: kernel_size must be an int or a pair of ints, got {kernel_size!r}"
        ) from None
    return kh, kw


def conv2d_weight_grad(grad_out: Tensor, input: Tensor, kernel_size: Union[int, Tuple[int, int]]) -> Tensor:
    """Weight gradient of a stride-1, 'same'-padded convolution with an odd kernel (an int or a pair):
    ``(C_out, C_in, kh, kw)`` for ``grad_out (B, C_out, H, W)`` and ``input (B, C_in, H, W)``."""
    kh, kw = kernel_pair(kernel_size, "reference.conv2d_weight_grad")
    weight_shape = (grad_out.shape[1], input.shape[1], kh, kw)
    return conv2d_weight(input, weight_shape, grad_out, padding=(kh // 2, kw // 2))
