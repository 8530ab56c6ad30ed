"""Reference ConvLSTM cell update (see :func:`pyframepred.ops.convlstm_gates`)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def _per_channel(w: Tensor) -> Tensor:
    return w.view(1, -1, 1, 1)


def convlstm_gates(
    x_gates: Tensor,
    h_gates: Optional[Tensor],
    c_prev: Tensor,
    bias: Optional[Tensor] = None,
    peephole: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Same contract as :func:`pyframepred.ops.convlstm_gates`, written with ordinary ops."""
    gates = x_gates if h_gates is None else x_gates + h_gates
    if bias is not None:
        gates = gates + _per_channel(bias)
    gi, gf, gg, go = gates.chunk(4, dim=1)
    if peephole is not None:
        gi = gi + _per_channel(peephole[0]) * c_prev
        gf = gf + _per_channel(peephole[1]) * c_prev
    i = torch.sigmoid(gi)
    f = torch.sigmoid(gf)
    g = torch.tanh(gg)
    c = f * c_prev + i * g
    if peephole is not None:
        go = go + _per_channel(peephole[2]) * c
    o = torch.sigmoid(go)
    h = o * torch.tanh(c)
    return h, c
