"""The fused ConvLSTM cell: ``convlstm_gates`` and its fake kernel and autograd registration."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ._common import check_device, check_float, check_like, check_shape, check_state_dtype

_OP = "convlstm_gates"


def convlstm_gates(
    x_gates: Tensor,
    h_gates: Optional[Tensor],
    c_prev: Tensor,
    bias: Optional[Tensor] = None,
    peephole: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """One ConvLSTM state update from gate pre-activations, fused into one kernel.

    Args:
        x_gates: ``(N, 4C, H, W)`` input-convolution output, gate blocks in the order
            i, f, g, o (as ``torch.nn.LSTMCell``).
        h_gates: ``(N, 4C, H, W)`` hidden-convolution output, or ``None`` for a zero hidden
            state (first step).
        c_prev: ``(N, C, H, W)`` previous cell state.
        bias: optional ``(4C,)`` gate bias, added inside the kernel.
        peephole: optional ``(3, C)`` per-channel peephole weights: rows for i and f multiply
            ``c_prev``, the row for o multiplies the new ``c``.

    Returns:
        ``(h, c)``, each ``(N, C, H, W)``, in the memory format of ``x_gates`` (NCHW or
        channels_last); h in the gates' dtype, c in ``c_prev``'s.

    Mixed precision: with float16/bfloat16 gates, ``c_prev``, ``bias`` and ``peephole`` may be
    float32 (they must then all be): the gates are widened in registers, c stays float32, h comes
    out in the gates' dtype. Under ``torch.autocast`` the op arranges this itself (gates cast to
    the autocast dtype, state and parameters to float32).

    Gradients flow to every input that requires them. Only the activated gates and ``c_prev``
    are kept for backward; ``c`` and ``tanh(c)`` are recomputed.
    """
    # The C++ op keeps the activated gates for backward exactly when a gradient can be asked for.
    h, c = torch.ops.pyframepred.convlstm_gates(x_gates, h_gates, c_prev, bias, peephole)
    return h, c


def _view3_strides(t: Tensor):
    """Strides of ``t`` (N, K, H, W) seen as (N, K, H*W), mirroring csrc/convlstm_host.h."""
    _, K, H, W = t.shape
    s = t.stride()
    if not (H == 1 or W == 1 or s[2] == W * s[3]):
        return K * H * W, H * W, 1  # the kernel works on a contiguous copy
    if W > 1:
        return s[0], s[1], s[3]
    if H > 1:
        return s[0], s[1], s[2]
    return s[0], s[1], 1


def _memory_format(t: Tensor) -> torch.memory_format:
    _, K, H, W = t.shape
    _, s_c, s_p = _view3_strides(t)
    cl = H * W > 1 and K > 1 and s_c == 1 and s_p != 1
    return torch.channels_last if cl else torch.contiguous_format


def _check_forward(x_gates, h_gates, c_prev, bias, peephole) -> int:
    check_float(_OP, "x_gates", x_gates)
    if x_gates.dim() != 4:
        raise RuntimeError(f"{_OP}: x_gates must be 4-d (N, 4*C, H, W), got shape {tuple(x_gates.shape)}")
    if x_gates.shape[1] % 4 != 0 or x_gates.shape[1] == 0:
        raise RuntimeError(
            f"{_OP}: x_gates must have 4*C channels (gates i, f, g, o), got {x_gates.shape[1]}"
        )
    N, C4, H, W = x_gates.shape
    C = C4 // 4
    if h_gates is not None:
        check_like(_OP, "h_gates", h_gates, "x_gates", x_gates)
        check_shape(_OP, "h_gates", h_gates, x_gates.shape, "x_gates.shape")
    check_state_dtype(_OP, "c_prev", c_prev, "x_gates", x_gates.dtype)
    check_device(_OP, "c_prev", c_prev, "x_gates", x_gates)
    check_shape(_OP, "c_prev", c_prev, (N, C, H, W), "(N, C, H, W)")
    if bias is not None:
        check_like(_OP, "bias", bias, "c_prev", c_prev)
        check_shape(_OP, "bias", bias, (4 * C,), "(4*C,)")
    if peephole is not None:
        check_like(_OP, "peephole", peephole, "c_prev", c_prev)
        check_shape(_OP, "peephole", peephole, (3, C), "(3, C)")
    return C


@torch.library.register_fake("pyframepred::convlstm_gates_forward")
def _forward_fake(x_gates, h_gates, c_prev, bias, peephole, save_gates):
    C = _check_forward(x_gates, h_gates, c_prev, bias, peephole)
    N, _, H, W = x_gates.shape
    fmt = _memory_format(x_gates)
    h = torch.empty((N, C, H, W), dtype=x_gates.dtype, device=x_gates.device, memory_format=fmt)
    c = torch.empty_like(h, dtype=c_prev.dtype)
    if save_gates:
        gates = torch.empty((N, 4 * C, H, W), dtype=x_gates.dtype, device=x_gates.device, memory_format=fmt)
    else:
        gates = x_gates.new_empty((0,))
    return h, c, gates


@torch.library.register_fake("pyframepred::convlstm_gates_backward")
def _backward_fake(grad_h, grad_c, gates, c_prev, peephole, param_grads):
    op = "convlstm_gates_backward"
    check_float(op, "gates", gates)
    N, C4, H, W = gates.shape
    C = C4 // 4
    check_state_dtype(op, "c_prev", c_prev, "gates", gates.dtype)
    check_device(op, "c_prev", c_prev, "gates", gates)
    check_shape(op, "c_prev", c_prev, (N, C, H, W), "(N, C, H, W)")
    check_like(op, "grad_h", grad_h, "gates", gates)
    check_shape(op, "grad_h", grad_h, (N, C, H, W), "(N, C, H, W)")
    check_like(op, "grad_c", grad_c, "c_prev", c_prev)
    check_shape(op, "grad_c", grad_c, (N, C, H, W), "(N, C, H, W)")
    fmt = _memory_format(gates)
    grad_gates = torch.empty((N, C4, H, W), memory_format=fmt, dtype=gates.dtype, device=gates.device)
    grad_c_prev = torch.empty((N, C, H, W), memory_format=fmt, dtype=c_prev.dtype, device=gates.device)
    grad_params = c_prev.new_empty((7, C) if param_grads else (0,))
    return grad_gates, grad_c_prev, grad_params


# Autograd is registered in C++ (csrc/convlstm_autograd.cpp).
