"""Plain-PyTorch twins of ``pyframepred.ops.conv2d_weight_grad`` and ``conv2d_same``."""

from __future__ import annotations

from typing import Tuple, Union

import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight


def conv2d_same(input: Tensor, weight: Tensor) -> Tensor:
    """Stride-1, 'same'-padded convolution with an odd kernel, no bias: ``(B, C_out, H, W)``."""
    return F.conv2d(input, weight, padding=(weight.shape[2] // 2, weight.shape[3] // 2))


def conv2d_weight_grad(grad_out: Tensor, input: Tensor, kernel_size: Union[int, Tuple[int, int]]) -> Tensor:
    """Weight gradient of a stride-1, 'same'-padded convolution with an odd kernel (an int or a pair):
    ``(C_out, C_in, kh, kw)`` for ``grad_out (B, C_out, H, W)`` and ``input (B, C_in, H, W)``."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    weight_shape = (grad_out.shape[1], input.shape[1], kh, kw)
    return conv2d_weight(input, weight_shape, grad_out, padding=(kh // 2, kw // 2))
