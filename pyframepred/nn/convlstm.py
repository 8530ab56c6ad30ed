"""ConvLSTM modules (Shi et al. 2015) on the fused cell kernel.

``ConvLSTMCell`` is one step; ``ConvLSTM`` runs stacked layers over a sequence, each fused layer
as one operator (``pyframepred.ops.convlstm_layer``) scheduled like cuDNN's LSTM layers: the
input convolution of all time steps batched and only the hidden convolution step by step, and in
backward every weight gradient batched over the steps (on the CPU, with channel counts its
Winograd convolutions take, one convolution per step over x_t and h_{t-1} side by side instead,
and one weight-gradient call for both weights). ``fused=False`` switches to the
plain-PyTorch cell with the same parameters and state_dict, so the two are interchangeable.
"""

from __future__ import annotations

import math
import operator
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .. import ops, reference
from ..ops._common import valid_state_dtype

State = Tuple[Tensor, Tensor]
IntOrPair = Union[int, Tuple[int, int]]


def _count(value, name: str, what: str = "an int") -> int:
    """``value`` as an int (Python or NumPy integers), or a one-line error naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be {what}, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {value!r}") from None


def _calls_its_convolutions(cell: "ConvLSTMCell") -> bool:
    """Whether ``cell``'s convolutions must run as modules, because the layer operator (which
    reads only their weights) would compute something else or skip code that must run:

    * hooks on them, forward or backward (e.g. the hook-based ``spectral_norm``, ``weight_norm``
      and ``prune`` of ``torch.nn.utils``, which recompute the weight before each call, or a
      user's hooks), or global module hooks;
    * a convolution that is not the cell's own kind: a module other than ``nn.Conv2d`` or a
      subclass with its own ``forward`` (a weight-standardised convolution, a LoRA wrapper), a
      bias, another ``padding_mode``, stride, dilation, groups or padding, or a kernel size other
      than the cell's. Parametrizations keep the operator: it gets the parametrized weight."""
    glob = nn.modules.module
    if (
        glob._global_forward_pre_hooks
        or glob._global_forward_hooks
        or glob._global_backward_pre_hooks
        or glob._global_backward_hooks
    ):
        return True
    return not all(_plain_conv(conv, cell.kernel_size) for conv in (cell.conv_x, cell.conv_h))


def _plain_conv(conv: nn.Module, kernel_size: Tuple[int, int]) -> bool:
    """Whether ``conv`` computes what the layer operator does with its weight: an unhooked
    ``nn.Conv2d`` of ``kernel_size``, stride 1, 'same' zero padding, no bias, no groups."""
    if not isinstance(conv, nn.Conv2d):
        return False
    kind = type(conv)
    if kind.forward is not nn.Conv2d.forward or kind._conv_forward is not nn.Conv2d._conv_forward:
        return False
    if conv._forward_pre_hooks or conv._forward_hooks or conv._backward_pre_hooks or conv._backward_hooks:
        return False
    same = (kernel_size[0] // 2, kernel_size[1] // 2)
    return (
        tuple(conv.kernel_size) == tuple(kernel_size)
        and conv.bias is None
        and conv.padding_mode == "zeros"
        and tuple(conv.stride) == (1, 1)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
        and (conv.padding == "same" or tuple(conv.padding) == same)
    )


def _is_int(value) -> bool:
    """Whether ``value`` is an integer :func:`_count` takes (Python or NumPy; a bool is not)."""
    try:
        _count(value, "value")
    except TypeError:
        return False
    return True


def _pair(kernel_size: IntOrPair) -> Tuple[int, int]:
    what = "an odd int or a pair of odd ints"
    if _is_int(kernel_size):
        kernel_size = (kernel_size, kernel_size)
    elif isinstance(kernel_size, (str, bytes)) or not hasattr(kernel_size, "__iter__"):
        raise TypeError(f"kernel_size must be {what}, got {kernel_size!r}")
    kernel_size = tuple(_count(k, "kernel_size", what) for k in kernel_size)
    if len(kernel_size) != 2 or any(k < 1 or k % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"kernel_size must be an odd int or a pair of odd ints (odd sizes keep "
            f"the frame size with 'same' padding), got {kernel_size}"
        )
    return kernel_size


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: ``(h, c) = cell(x, (h_prev, c_prev))``.

    Args:
        in_channels: channels of the input frames ``x`` (N, in_channels, H, W).
        hidden_channels: channels C of ``h`` and ``c``.
        kernel_size: odd int or pair; the convolutions keep H and W.
        bias: learn a gate bias (4C,), added inside the fused kernel.
        peephole: learn per-channel peephole weights (3, C): i and f see ``c_prev``, o sees ``c``.
        fused: use the fused kernel (True) or the plain-PyTorch reference (False).

    ``state=None`` starts from zeros (created on the input's device and dtype, for any frame
    size). Gate order of the convolution outputs is i, f, g, o.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: IntOrPair = 3,
        bias: bool = True,
        peephole: bool = False,
        fused: bool = True,
    ):
        super().__init__()
        in_channels = _count(in_channels, "in_channels")
        hidden_channels = _count(hidden_channels, "hidden_channels")
        if in_channels < 1 or hidden_channels < 1:
            raise ValueError(
                f"in_channels and hidden_channels must be positive, got {in_channels} and {hidden_channels}"
            )
        kh, kw = _pair(kernel_size)
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = (kh, kw)
        self.fused = fused
        padding = (kh // 2, kw // 2)
        self.conv_x = nn.Conv2d(in_channels, 4 * hidden_channels, (kh, kw), padding=padding, bias=False)
        self.conv_h = nn.Conv2d(hidden_channels, 4 * hidden_channels, (kh, kw), padding=padding, bias=False)
        self.bias = nn.Parameter(torch.empty(4 * hidden_channels)) if bias else None
        self.peephole = nn.Parameter(torch.empty(3, hidden_channels)) if peephole else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Like one convolution over cat(x, h): uniform(+-1/sqrt(fan_in)) for every weight.
        fan_in = (self.in_channels + self.hidden_channels) * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        for w in (self.conv_x.weight, self.conv_h.weight):
            nn.init.uniform_(w, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        if self.peephole is not None:
            nn.init.zeros_(self.peephole)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"bias={self.bias is not None}, peephole={self.peephole is not None}, "
            f"fused={self.fused}"
        )

    def init_state(self, like: Tensor) -> Tensor:
        """A zero cell state for input frames (or gates) like ``like`` (N, *, H, W), in the
        parameters' dtype (float32 beside float16/bfloat16 gates under autocast) and in
        ``like``'s memory format: the fused cell reads a channels_last state of channels_last
        gates in order (an NCHW one across channels, at 2-3 times the time of a step)."""
        n, _, h, w = like.shape
        param = self.bias if self.bias is not None else self.peephole
        if param is None:  # the weights' dtype: float32 beside autocast's gates too
            param = self.conv_h.weight
        dtype = param.dtype
        # channels_last and not contiguous, asked in a way torch.func.vmap also answers
        cl = not like.is_contiguous() and like.permute(0, 2, 3, 1).is_contiguous()
        fmt = torch.channels_last if cl else torch.contiguous_format
        shape = (n, self.hidden_channels, h, w)
        return torch.empty(shape, dtype=dtype, device=like.device, memory_format=fmt).zero_()

    def step(self, x_gates: Tensor, state: Optional[State]) -> State:
        """Advance one step from precomputed input gates ``x_gates = cell.conv_x(x)``
        (N, 4C, H, W): for a caller that computes the input convolution of many steps at once
        (``cell.conv_x(frames)`` over (T*N, C_in, H, W)) and then steps through them. ``state``
        is ``(h, c)`` or ``None`` (zeros); returns the new ``(h, c)``.

        Mixed precision needs no casts here: under autocast the fused op takes the
        float16/bfloat16 gates with the float32 bias and cell state directly (h in the autocast
        dtype, c float32), and the reference promotes as PyTorch does."""
        if state is None:
            h_gates, c_prev = None, self.init_state(x_gates)
        else:
            h_prev, c_prev = state
            h_gates = self.conv_h(h_prev)
        bias, peephole = self.bias, self.peephole
        autocast = _autocast_dtype(x_gates.device.type)
        if not self.fused:
            h, c = reference.convlstm_gates(x_gates, h_gates, c_prev, bias, peephole)
            # float16/bfloat16 gates with a float32 cell state (under autocast, or a low-precision
            # module given autocast's state): h in the gates' dtype, as the fused op's, which the
            # next step's convolution takes
            gate = x_gates.dtype if h_gates is None else torch.promote_types(x_gates.dtype, h_gates.dtype)
            if h.dtype != gate and c.dtype != gate and valid_state_dtype(gate, c.dtype):
                h = h.to(gate)
            return h, c
        if autocast is None:
            # Outside autocast the op takes one dtype, or float16/bfloat16 gates with a float32
            # state and parameters; any other mix runs in the widest dtype.
            x_gates, h_gates, c_prev, bias, peephole = _cell_dtypes(x_gates, h_gates, c_prev, bias, peephole)
        return ops.convlstm_gates(x_gates, h_gates, c_prev, bias, peephole)

    def forward(self, x: Tensor, state: Optional[State] = None) -> State:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ConvLSTMCell expects x of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if state is not None:
            _check_state(state, x, self.hidden_channels, "state")
        return self.step(self.conv_x(x), state)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The autocast dtype where autocast is on for ``device_type``, else ``None`` (also for
    devices autocast does not know, such as ``meta``)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _state_dtype(c: Tensor, bias, peephole) -> torch.dtype:
    """The one dtype of the cell state and the parameters beside it: the widest of theirs."""
    state = c.dtype
    for t in (bias, peephole):
        if t is not None:
            state = torch.promote_types(state, t.dtype)
    return state


def _to(t, dtype):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _cell_dtypes(x_gates, h_gates, c_prev, bias, peephole):
    """The fused cell's operands in dtypes it accepts (see ``ops.convlstm_gates``)."""
    gate = x_gates.dtype if h_gates is None else torch.promote_types(x_gates.dtype, h_gates.dtype)
    state = _state_dtype(c_prev, bias, peephole)
    if not valid_state_dtype(gate, state):
        gate = state = torch.promote_types(gate, state)
    return (
        _to(x_gates, gate),
        _to(h_gates, gate),
        _to(c_prev, state),
        _to(bias, state),
        _to(peephole, state),
    )


def _state_dtypes(gate: torch.dtype, bias, peephole, c0):
    """The layer's state-side operands (bias, peephole, ``c0``) in one dtype the fused layer
    takes beside gates of dtype ``gate``, where promoting them gives one; else unchanged (the
    operator then says what does not match)."""
    state = _state_dtype(c0, bias, peephole)
    if not valid_state_dtype(gate, state):
        return bias, peephole, c0
    return _to(bias, state), _to(peephole, state), _to(c0, state)


def _check_state(state, x: Tensor, hidden: int, name: str) -> None:
    if not (isinstance(state, (tuple, list)) and len(state) == 2):
        raise ValueError(f"{name} must be a pair (h, c), got {type(state).__name__}")
    expected = (x.shape[0], hidden, x.shape[-2], x.shape[-1])
    for part, t in zip("hc", state):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: {part} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: {part} must be a floating-point tensor, got {t.dtype}")
        if tuple(t.shape) != expected:
            raise ValueError(f"{name}: {part} must have shape {expected}, got {tuple(t.shape)}")


class ConvLSTM(nn.Module):
    """Stacked ConvLSTM layers over a sequence of frames.

    Args:
        in_channels: channels of the input frames.
        hidden_channels: int (every layer) or list with one entry per layer.
        kernel_size: odd int or pair, or a list with one per layer.
        num_layers: number of stacked layers (default: the length of a ``hidden_channels``
            list, else 1).
        batch_first: inputs/outputs are (N, T, C, H, W) if True (the default here, unlike
            ``torch.nn.LSTM``: video batches are usually batch-major), else (T, N, C, H, W).
        bias, peephole, fused: as in :class:`ConvLSTMCell`.

    Each layer runs as one operator (:func:`pyframepred.ops.convlstm_layer`), which reads the
    cells' weights itself. Where a cell's ``conv_x`` or ``conv_h`` has hooks (the hook-based
    ``torch.nn.utils.spectral_norm``, ``weight_norm`` or ``prune``, or forward or backward hooks
    of your own) or computes something else than a plain 'same' convolution without bias (a
    subclass with its own ``forward``, reflect padding, a bias, another module in its place), that
    layer calls its convolution modules instead, step by step with the fused cell, so they run as
    they do with ``fused=False``. Parametrizations
    (``torch.nn.utils.parametrizations``) need no such detour: the operator gets the
    parametrized weight.

    ``forward(x, state=None) -> (outputs, last_states)``: ``outputs`` holds the last layer's ``h``
    at every step (same layout as ``x``: contiguous, or channels_last frames for channels_last
    frames); ``last_states`` is a list of ``(h, c)`` per layer (laid out as the output's frames),
    which can be passed back as ``state`` (e.g. from an encoder to a decoder).

    Global module hooks, forward or backward (``torch.nn.modules.module.register_module_forward_hook``,
    which ``torch.utils.module_tracker.ModuleTracker`` and ``FlopCounterMode`` register) also send
    every layer down the step-by-step path, at about half the speed, so that they see the
    convolutions. The cells themselves are not called (on either path the input convolution of
    all steps is batched, then ``cell.step`` advances): hooks on a ``ConvLSTMCell`` in a
    ``ConvLSTM`` do not run, hooks on its ``conv_x``/``conv_h`` do.

    The fused modules' autograd is a C++ ``autograd.Function``: ``torch.func`` transforms
    (``grad``, ``jvp``, per-sample gradients as ``vmap(grad(...))``) and forward-mode AD need
    ``fused=False`` (``vmap`` alone runs the fused layer once per sample); the fused layer refuses
    forward-mode AD with an error.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Union[int, Sequence[int]],
        kernel_size: Union[IntOrPair, Sequence[IntOrPair]] = 3,
        num_layers: Optional[int] = None,
        batch_first: bool = True,
        bias: bool = True,
        peephole: bool = False,
        fused: bool = True,
    ):
        super().__init__()
        one_width = isinstance(hidden_channels, int) or not hasattr(hidden_channels, "__iter__")
        if one_width:
            hidden_channels = _count(hidden_channels, "hidden_channels", "an int or a list of ints")
        else:
            hidden_channels = list(hidden_channels)
        if num_layers is None:  # one layer, or one per entry of a hidden_channels list
            num_layers = 1 if one_width else len(hidden_channels)
        num_layers = _count(num_layers, "num_layers")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        hidden = self._per_layer(hidden_channels, num_layers, "hidden_channels", int)
        is_one = _is_int(kernel_size) or (
            isinstance(kernel_size, tuple) and len(kernel_size) == 2 and all(_is_int(k) for k in kernel_size)
        )
        kernels = (
            [kernel_size] * num_layers
            if is_one
            else self._per_layer(kernel_size, num_layers, "kernel_size", None)
        )
        self.batch_first = batch_first
        self.num_layers = num_layers
        self.hidden_channels = hidden
        self.cells = nn.ModuleList(
            ConvLSTMCell(
                in_channels if i == 0 else hidden[i - 1], hidden[i], kernels[i], bias, peephole, fused
            )
            for i in range(num_layers)
        )

    @staticmethod
    def _per_layer(value, num_layers, name, kind):
        what = "an int" if kind is int else "an odd int or a pair of them"
        if kind is int and isinstance(value, int):
            return [value] * num_layers
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise TypeError(f"{name} must be {what}, or a list with one per layer, got {value!r}")
        value = list(value)
        if kind is int:
            value = [_count(v, name) for v in value]
        if len(value) != num_layers:
            raise ValueError(
                f"{name} must be {what}, or a list with one per layer ({num_layers}), got {value}"
            )
        return value

    @property
    def fused(self) -> bool:
        return all(cell.fused for cell in self.cells)

    @fused.setter
    def fused(self, value: bool) -> None:
        for cell in self.cells:
            cell.fused = value

    def forward(self, x: Tensor, state: Optional[List[State]] = None) -> Tuple[Tensor, List[State]]:
        if x.dim() != 5:
            raise ValueError(
                f"ConvLSTM expects a 5-d input ({'N, T' if self.batch_first else 'T, N'}"
                f", C, H, W), got shape {tuple(x.shape)}"
            )
        tdim = 1 if self.batch_first else 0  # the time dimension of x and of the outputs
        T, N = x.shape[tdim], x.shape[1 - tdim]
        if T == 0:
            raise ValueError("ConvLSTM got an empty sequence (T = 0)")
        if x.shape[2] != self.cells[0].in_channels:
            raise ValueError(f"ConvLSTM expects {self.cells[0].in_channels} input channels, got {x.shape[2]}")
        if state is not None and len(state) != self.num_layers:
            raise ValueError(f"state must hold one (h, c) per layer ({self.num_layers}), got {len(state)}")
        last_states: List[State] = []
        # The sequence time-major, (T, N, C, H, W): a view of x. The fused layer reads it in
        # whatever layout it lies and writes its h sequence laid out the same way (batch-major
        # in memory for a batch-first x), so neither the input nor the output is copied here.
        seq = x.transpose(0, 1) if self.batch_first else x
        for li, cell in enumerate(self.cells):
            layer_state = None if state is None else state[li]
            if layer_state is not None:
                _check_state(layer_state, seq[0], cell.hidden_channels, f"state[{li}]")
            if cell.fused and not _calls_its_convolutions(cell):
                # The whole layer as one op: batched input convolution and weight gradients
                # (under autocast: bfloat16/float16 convolutions, float32 cell state).
                # With one step and no state the hidden weight is not used: it gets no gradient
                # (None, as in the per-step path), not zeros, which optimisers would step on.
                wh = cell.conv_h.weight if T > 1 or layer_state is not None else cell.conv_h.weight.detach()
                bias, peephole = cell.bias, cell.peephole
                if layer_state is not None and _autocast_dtype(seq.device.type) is None:
                    # a low-precision module given a float32 cell state (autocast's kind): the
                    # bias and peephole join the state's dtype, as in the cell's step
                    bias, peephole, c0 = _state_dtypes(seq.dtype, bias, peephole, layer_state[1])
                    layer_state = (layer_state[0], c0)
                seq, layer_state = ops.convlstm_layer(
                    seq, T, cell.conv_x.weight, wh, bias, peephole, layer_state
                )
            else:
                # (Also the fused cell's path when the convolutions have hooks, which must run.)
                # Input convolution of all T steps at once (over the frames time-major, (T*N, C,
                # H, W): built with cat rather than by flattening a 5-d tensor, which Inductor
                # (torch <= 2.13) fails on under dynamic shapes, pytorch/pytorch#185510); only the
                # hidden one runs per step. unbind, not x_gates[t]: its backward stacks the T
                # gradients once, where T separate selects would each scatter into a zero tensor
                # of the full sequence.
                frames = torch.cat(list(seq.unbind(0)), 0)
                hs = []
                for xg_t in cell.conv_x(frames).unflatten(0, (T, N)).unbind(0):
                    layer_state = cell.step(xg_t, layer_state)
                    hs.append(layer_state[0])
                seq = torch.stack(hs, 0)
            last_states.append(layer_state)
        # The output in x's layout, batch- or time-major: contiguous, or with channels innermost
        # when x's frames are (channels_last frames), so that a channels_last model gets
        # channels_last frames back and a gradient that comes back in the layout the layer runs
        # in. The fused layer's output is so already (no copy); the reference path's is copied.
        # The last states likewise, as the step-by-step path gives them: the fused layer keeps them
        # in the layout it runs in (channels_last on the CPU), which code written for NCHW states
        # (a .view of them) would trip over.
        # (Through permute, not memory_format=, which torch.func.vmap does not take.)
        outputs = seq.transpose(0, 1) if self.batch_first else seq
        if x.shape[2] > 1 and x.stride(2) == 1:
            outputs = outputs.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
            last_states = [
                tuple(t.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2) for t in st)
                for st in last_states
            ]
        else:
            outputs = outputs.contiguous()
            last_states = [tuple(t.contiguous() for t in st) for st in last_states]
        return outputs, last_states
