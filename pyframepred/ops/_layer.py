"""One ConvLSTM layer over a whole sequence: ``convlstm_layer`` and its fake kernel.

The schedule (csrc/convlstm_layer.cpp) is the one cuDNN uses for LSTM layers: the input
convolution of all steps batched, per step only the hidden convolution and the fused cell; in
backward the cell and the hidden convolution's data gradient per step, then every weight gradient
(and the input's) in batched calls over the steps. Autograd is registered in C++.

Under ``torch.compile`` a training step calls the same schedule split in two operators instead,
``convlstm_layer_train`` (the forward, returning what backward reads besides the arguments) and
``convlstm_layer_backward``, tied by an autograd registered here: AOTAutograd then keeps the layer
one node of the forward graph and one of the backward graph, where it would trace the C++
autograd into the schedule's steps (and run them slower than eager).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from torch._prims_common import suggest_memory_format

from ..reference.conv import kernel_pair

_State = Tuple[Tensor, Tensor]


def convlstm_layer(
    x: Tensor,
    steps: int,
    weight_x: Tensor,
    weight_h: Tensor,
    bias: Optional[Tensor] = None,
    peephole: Optional[Tensor] = None,
    state: Optional[_State] = None,
) -> Tuple[Tensor, _State]:
    """Run one ConvLSTM layer over ``steps`` time steps.

    Args:
        x: the input sequence ``(T, N, C_in, H, W)``, in any layout (e.g. a batch-first
            ``(N, T, ...)`` tensor transposed: ``x.transpose(0, 1)``, no copy needed); or the
            frames of all steps time-major, ``(T*N, C_in, H, W)`` (step t is ``x[t*N:(t+1)*N]``).
        steps: T.
        weight_x: ``(4C, C_in, kh, kw)`` input-convolution weight (odd kernel, 'same' padding,
            gate blocks i, f, g, o).
        weight_h: ``(4C, C, kh, kw)`` hidden-convolution weight.
        bias: optional ``(4C,)`` gate bias; peephole: optional ``(3, C)`` peephole weights.
        state: optional ``(h0, c0)``, each ``(N, C, H, W)``; zeros when absent.

    Returns:
        ``(h_seq, (h, c))``: h of every step and the last step's state. For a sequence ``x``,
        ``h_seq`` is ``(T, N, C, H, W)`` laid out as ``x`` is: batch-major in memory where ``x``
        is (so ``h_seq.transpose(0, 1)`` is a contiguous batch-first tensor), with channels_last
        frames where ``x``'s are -- the op reads ``x`` and writes ``h_seq`` in place of the
        copies a caller would otherwise make. For frames ``x``, ``h_seq`` is ``(T*N, C, H, W)``
        in the layout the layer runs in (channels_last on the CPU).

    Mixed precision: ``x``, the weights and ``h0`` share one dtype; with float16/bfloat16 ones,
    ``c0``, ``bias`` and ``peephole`` may be float32 -- the convolutions then run in the low
    dtype, h comes out in it and c stays float32 -- and ``x`` may be float32: the op casts it as
    it reads it (x's gradient comes back float32). Under ``torch.autocast`` the op casts to
    exactly that itself (one autocast policy, registered in C++), leaving a float32 ``x`` to that
    cast.
    """
    h0, c0 = (None, None) if state is None else state
    args = (x, steps, weight_x, weight_h, bias, peephole, h0, c0)
    if _compiling_a_training_step(args):
        h_seq, h, c, *_ = torch.ops.pyframepred.convlstm_layer_train(*args)
    else:
        h_seq, h, c = torch.ops.pyframepred.convlstm_layer(*args)
    return h_seq, (h, c)


# False: torch.compile traces a training step through the C++ autograd into the schedule's steps,
# as it did before the two operators existed (benchmarks/bench_layer.py measures both ways).
_compile_as_one_node = True


def _compiling_a_training_step(args) -> bool:
    """Whether torch.compile traces a call that autograd records (not torch.export's tracing,
    which keeps the one operator ``convlstm_layer``)."""
    if not _compile_as_one_node or not torch.compiler.is_compiling() or torch.compiler.is_exporting():
        return False
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(t, Tensor) and t.requires_grad for t in args)


def conv2d_weight_grad(grad_out: Tensor, input: Tensor, kernel_size: Union[int, Tuple[int, int]]) -> Tensor:
    """Weight gradient of a stride-1, 'same'-padded convolution with an odd kernel.

    ``grad_out`` is ``(B, C_out, H, W)``, ``input`` ``(B, C_in, H, W)``, ``kernel_size`` an odd
    int or a pair ``(kh, kw)``; returns
    ``(C_out, C_in, kh, kw)``, what ``torch.nn.grad.conv2d_weight`` returns for these
    convolutions. The ConvLSTM layer's backward computes its weight gradients with it, batched over
    all steps; on the CPU (float32) it is a tiled kernel of ours, elsewhere ATen's.
    Differentiable with respect to both tensors, to any order (its derivatives are
    :func:`conv2d_same` calls).
    """
    kh, kw = kernel_pair(kernel_size, "conv2d_weight_grad")
    return torch.ops.pyframepred.conv2d_weight_grad(grad_out, input, kh, kw)


def conv2d_same(input: Tensor, weight: Tensor) -> Tensor:
    """Stride-1, 'same'-padded convolution with an odd kernel and no bias.

    ``input`` is ``(B, C_in, H, W)``, ``weight`` ``(C_out, C_in, kh, kw)``; returns
    ``(B, C_out, H, W)`` in the input's memory format, what ``F.conv2d(input, weight,
    padding=(kh // 2, kw // 2))`` returns. The ConvLSTM layer runs its convolutions (and, with the
    flipped, transposed weight, their data gradients) through it: on the CPU, 3x3 ones with
    channel counts that are multiples of the vector width, in float32 (and in bfloat16 at the
    ``avx512_bf16`` ISA level), are a Winograd kernel of ours (F(4x4, 3x3) in float32: within 1e-5
    of the outputs' scale of float64, a few times the direct convolution's error; F(2x2, 3x3) in
    bfloat16); everything else is ATen's convolution. Differentiable with respect to ``input``
    and ``weight``, to any order: the data gradient is this convolution with the flipped,
    transposed weight, the weight gradient :func:`conv2d_weight_grad` (autograd in C++).
    """
    return torch.ops.pyframepred.conv2d_same(input, weight)


def _channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


# The layout rules of csrc/convlstm_layer.cpp (batch_major, frames_channels_last, run_format,
# sequence_like): the fake kernel's outputs must have the real ones' strides.
def _seq_batch_major(x: Tensor) -> bool:
    return x.shape[0] > 1 and x.shape[1] > 1 and x.stride(1) > x.stride(0)


def _seq_frames_channels_last(x: Tensor) -> bool:
    return x.shape[2] > 1 and x.stride(2) == 1


def _sequence_like(x: Tensor, C, dtype: torch.dtype) -> Tensor:
    T, N, _, H, W = x.shape
    frame = C * H * W
    sc, sw = (1, C) if _seq_frames_channels_last(x) else (H * W, 1)
    bm = _seq_batch_major(x)
    strides = (frame if bm else N * frame, T * frame if bm else frame, sc, W * sw, sw)
    return x.new_empty_strided((T, N, C, H, W), strides, dtype=dtype)


class _Plan(NamedTuple):
    """A layer call's sizes, the layout it runs in and its dtypes."""

    seq: bool  # x is a sequence (T, N, C_in, H, W), not frames
    T: int
    N: int
    cin: int
    C: int
    H: int
    W: int
    fmt: torch.memory_format  # the layout the layer runs in
    dtype: torch.dtype  # of the convolutions and h
    state: torch.dtype  # of c


def _plan(x, steps, weight_x, weight_h, bias, peephole, h0, c0) -> _Plan:
    """What the fake kernels need of a call: its sizes, layout and dtypes, by the C++ rules."""
    torch._check(x.dim() in (4, 5), lambda: f"convlstm_layer: x must be 4-d or 5-d, got {tuple(x.shape)}")
    torch._check(steps >= 1, lambda: f"convlstm_layer: steps must be >= 1, got {steps}")
    seq = x.dim() == 5
    if seq:
        torch._check(x.shape[0] == steps, lambda: f"convlstm_layer: x has {x.shape[0]} steps, not {steps}")
        N, cin = x.shape[1], x.shape[2]
    else:
        torch._check(
            x.shape[0] % steps == 0,
            lambda: f"convlstm_layer: x has {x.shape[0]} frames, not a multiple of steps = {steps}",
        )
        N, cin = x.shape[0] // steps, x.shape[1]
    # run_format's rule (suggest_memory_format, which also reads layouts that differ only in the
    # strides of size-1 dimensions, e.g. 1x1 weights made channels_last, as C++ does).
    x_cl = _seq_frames_channels_last(x) if seq else suggest_memory_format(x) == torch.channels_last
    w_cl = suggest_memory_format(weight_x) == torch.channels_last
    cl = (x.device.type == "cpu" or x_cl or w_cl) and cin > 0
    dtype = weight_x.dtype  # x's, or x cast to it (float32 x, float16/bfloat16 weights)
    state = next((t.dtype for t in (c0, bias, peephole) if t is not None), dtype)
    fmt = torch.channels_last if cl else torch.contiguous_format
    return _Plan(seq, steps, N, cin, weight_h.shape[1], x.shape[-2], x.shape[-1], fmt, dtype, state)


def _frames(p: _Plan, n: int, C: int, dtype: torch.dtype, like: Tensor) -> Tensor:
    return torch.empty((n, C, p.H, p.W), dtype=dtype, device=like.device, memory_format=p.fmt)


def _layer_results(p: _Plan, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """convlstm_layer's results (h_seq, h_last, c_last) for a call planned as `p`."""
    h_seq = _sequence_like(x, p.C, p.dtype) if p.seq else _frames(p, x.shape[0], p.C, p.dtype, x)
    return h_seq, _frames(p, p.N, p.C, p.dtype, x), _frames(p, p.N, p.C, p.state, x)


@torch.library.register_fake("pyframepred::convlstm_layer")
def _layer_fake(x, steps, weight_x, weight_h, bias, peephole, h0, c0):
    return _layer_results(_plan(x, steps, weight_x, weight_h, bias, peephole, h0, c0), x)


@torch.library.register_fake("pyframepred::convlstm_layer_train")
def _train_fake(x, steps, weight_x, weight_h, bias, peephole, h0, c0):
    p = _plan(x, steps, weight_x, weight_h, bias, peephole, h0, c0)
    h_prev = _frames(p, (steps - 1) * p.N, p.C, p.dtype, x)
    gates = [_frames(p, p.N, 4 * p.C, p.dtype, x) for _ in range(steps)]
    cells = [_frames(p, p.N, p.C, p.state, x) for _ in range(steps - 1)]
    return (*_layer_results(p, x), h_prev, gates, cells)


def _weight_format(w: Tensor) -> torch.memory_format:
    return torch.channels_last if _channels_last(w) else torch.contiguous_format


@torch.library.register_fake("pyframepred::convlstm_layer_backward")
def _layer_backward_fake(
    grad_h_seq,
    grad_h_last,
    grad_c_last,
    x,
    steps,
    weight_x,
    weight_h,
    bias,
    peephole,
    h0,
    c0,
    h_prev,
    gates,
    cells,
    output_mask,
):
    p = _plan(x, steps, weight_x, weight_h, bias, peephole, h0, c0)
    grads = []
    if output_mask[0]:  # time-major frames in the run layout
        gx = _frames(p, p.T * p.N, p.cin, x.dtype, x)
        grads.append(gx.unflatten(0, (p.T, p.N)) if p.seq else gx)
    for w, wanted in ((weight_x, output_mask[1]), (weight_h, output_mask[2])):
        if wanted:
            grads.append(
                torch.empty(w.shape, dtype=w.dtype, device=w.device, memory_format=_weight_format(w))
            )
    for t, wanted in ((bias, output_mask[3]), (peephole, output_mask[4])):
        if wanted:
            grads.append(torch.empty(t.shape, dtype=t.dtype, device=t.device))
    for t, wanted in ((h0, output_mask[5]), (c0, output_mask[6])):
        if wanted:
            grads.append(_frames(p, p.N, p.C, t.dtype, x))
    return grads


# The autograd of convlstm_layer_train (torch.compile's training steps, see convlstm_layer).
def _train_setup_context(ctx, inputs, output):
    x, steps, weight_x, weight_h, bias, peephole, h0, c0 = inputs
    _, _, _, h_prev, gates, cells = output
    ctx.steps = steps
    # h_prev, not the output h_seq: a caller may change the output in place before backward.
    ctx.save_for_backward(x, weight_x, weight_h, bias, peephole, h0, c0, h_prev, *gates, *cells)
    ctx.mark_non_differentiable(h_prev, *gates, *cells)
    ctx.set_materialize_grads(False)


def _train_backward(ctx, grad_h_seq, grad_h_last, grad_c_last, _grad_h_prev, _grad_gates, _grad_cells):
    x, weight_x, weight_h, bias, peephole, h0, c0, h_prev, *rest = ctx.saved_tensors
    T = ctx.steps
    tensors = (x, weight_x, weight_h, bias, peephole, h0, c0)
    need = (ctx.needs_input_grad[0], *ctx.needs_input_grad[2:])
    mask = [bool(n) and t is not None for n, t in zip(need, tensors)]
    grads = iter(
        torch.ops.pyframepred.convlstm_layer_backward(
            grad_h_seq,
            grad_h_last,
            grad_c_last,
            x,
            T,
            weight_x,
            weight_h,
            bias,
            peephole,
            h0,
            c0,
            h_prev,
            rest[:T],
            rest[T:],
            mask,
        )
    )
    out = [next(grads) if m else None for m in mask]
    return out[0], None, *out[1:]


torch.library.register_autograd(
    "pyframepred::convlstm_layer_train", _train_backward, setup_context=_train_setup_context
)
