"""The ConvLSTM layer as a GPU runs it, on the CPU execution model of the CUDA kernels.

``torch.ops.pyframepred_emu.convlstm_layer`` is the layer operator's schedule
(csrc/convlstm_layer_impl.h) with the CUDA backend: the layout a CUDA call runs in (NCHW unless
the input or the weights are channels_last), ATen's convolutions and their backward, the CUDA
chunk of batched steps, and the fused cell's CUDA kernels through their launchers, h written
straight into the layer's frames. Only the tensors are CPU ones. Fresh buffers of the schedule and
of the kernels are filled with NaN, so an element nothing writes fails the comparison. The oracle
is the step-by-step float64 reference. Run with ``python -m pytest tests -m cuda_emu``.
"""

from __future__ import annotations

import cuda_emu_build
import pytest
import torch
import torch.nn.functional as F

import pyframepred.ops  # noqa: F401  (the operators the schedule calls: conv2d_weight_grad)
from pyframepred import reference

pytestmark = pytest.mark.cuda_emu


@pytest.fixture(scope="module")
def emu():
    return cuda_emu_build.build()


@pytest.fixture(autouse=True)
def _defaults(emu):
    emu.set_options(False, 0)
    emu.set_layer_chunk_bytes(0)  # CUDA's chunk
    yield
    emu.set_options(False, 0)
    emu.set_layer_chunk_bytes(0)


# How the input sequence (T, N, C_in, H, W) is handed in: as time-major frames (T*N, ...) or as
# a 5-d sequence, in NCHW or channels_last frames, time-major or batch-first in memory.
LAYOUTS = ["frames", "frames_cl", "seq", "seq_cl", "batch_first", "batch_first_cl"]


def _lay_out(seq: torch.Tensor, layout: str) -> torch.Tensor:
    """A leaf holding seq's values (T, N, C, H, W) in `layout`, as the op takes it."""
    T, N = seq.shape[:2]
    cl = layout.endswith("_cl")
    if layout.startswith("frames"):
        x = seq.flatten(0, 1)
        x = x.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        return x.detach().requires_grad_()
    if layout.startswith("batch_first"):
        b = seq.transpose(0, 1).flatten(0, 1)
        b = b.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
        leaf = b.detach().requires_grad_()
        return leaf.unflatten(0, (N, T)).transpose(0, 1)  # a view of the leaf, batch-major
    x = seq.flatten(0, 1).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    return x.detach().unflatten(0, (T, N)).requires_grad_()


def _inputs(T, N, Cin, C, H, W, k=(3, 3), config="full", seed=0):
    """float64 values: x (T, N, C_in, H, W), weights, bias, peephole, h0, c0 (None where the
    config leaves them out)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    x = r(T, N, Cin, H, W)
    wx = r(4 * C, Cin, *k, scale=0.3)
    wh = r(4 * C, C, *k, scale=0.3)
    bias = r(4 * C, scale=0.5) if config in ("full", "bias_only") else None
    peep = r(3, C, scale=0.5) if config in ("full", "peephole_only") else None
    h0, c0 = (r(N, C, H, W), r(N, C, H, W)) if config == "full" else (None, None)
    return x, wx, wh, bias, peep, h0, c0


def _reference(x, wx, wh, bias, peep, h0, c0):
    """Step by step in plain PyTorch: h of every step (T, N, C, H, W), the last h and c."""
    T, N = x.shape[:2]
    C = wh.shape[1]
    pad = (wx.shape[2] // 2, wx.shape[3] // 2)
    h = h0
    c = c0 if c0 is not None else x.new_zeros((N, C) + x.shape[3:])
    hs = []
    for t in range(T):
        hg = None if h is None else F.conv2d(h, wh, padding=pad)
        h, c = reference.convlstm_gates(F.conv2d(x[t], wx, padding=pad), hg, c, bias, peep)
        hs.append(h)
    return torch.stack(hs), h, c


def _loss(h_seq, h, c):
    """Every output gets a gradient of its own, none of them trivial."""
    w = torch.linspace(-1, 1, h_seq.numel(), dtype=torch.float64).view(h_seq.shape)
    return (h_seq.double() * w).sum() + (h.double() * 0.7).sum() + (c.double() ** 2).sum()


def _run(fn, x, steps, wx, wh, bias, peep, h0, c0):
    """h of every step as (T, N, C, H, W), the last h and c, and the gradients of every tensor
    input (x's as (T, N, C_in, H, W))."""
    inputs = [x, wx, wh] + [t for t in (bias, peep, h0, c0) if t is not None]
    h_seq, h, c = fn(x, steps, wx, wh, bias, peep, h0, c0)
    seq = lambda t: t if t.dim() == 5 else t.unflatten(0, (steps, -1))  # noqa: E731
    grads = torch.autograd.grad(_loss(seq(h_seq), h, c), inputs)
    return seq(h_seq), h, c, [seq(grads[0]), *grads[1:]]


def _emu_args(values, layout, dtype, state_dtype, weights_cl=False):
    x, wx, wh, bias, peep, h0, c0 = values
    fmt = torch.channels_last if weights_cl else torch.contiguous_format
    low = lambda t: None if t is None else t.to(dtype).detach().requires_grad_()  # noqa: E731
    state = lambda t: None if t is None else t.to(state_dtype).detach().requires_grad_()  # noqa: E731
    return (
        _lay_out(x.to(dtype), layout),
        x.shape[0],
        wx.to(dtype).contiguous(memory_format=fmt).detach().requires_grad_(),
        wh.to(dtype).contiguous(memory_format=fmt).detach().requires_grad_(),
        state(bias),
        state(peep),
        low(h0),
        state(c0),
    )


def _ref_args(args):
    """float64 leaves of the values the op got (the same rounding)."""
    x, steps, *rest = args
    seq = x.detach() if x.dim() == 5 else x.detach().unflatten(0, (steps, -1))
    d = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    return (d(seq), steps, *map(d, rest))


def _check(emu, args, tol):
    """The emulated CUDA layer against the float64 reference: outputs, their layout, gradients."""
    x = args[0]
    out = emu.convlstm_layer(*args)[0]
    if x.dim() == 5:  # laid out as x: batch-major where x is, channels_last frames where x's are
        assert out.shape == x.shape[:2] + out.shape[2:]
        assert (out.stride(1) > out.stride(0)) == (x.stride(1) > x.stride(0))
        assert (out.stride(2) == 1) == (x.stride(2) == 1)
    got = _run(emu.convlstm_layer, *args)
    want = _run(lambda x, _steps, *r: _reference(x, *r), *_ref_args(args))
    names = ["h_seq", "h", "c"] + [f"grad {i}" for i in range(len(want[3]))]
    for name, a, b in zip(names, [*got[:3], *got[3]], [*want[:3], *want[3]]):
        assert not torch.isnan(a).any(), f"{name}: NaN (an element was not written)"
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double(), b, atol=tol * scale, rtol=0, msg=lambda m: f"{name}: {m}")


# chunk: CUDA's (every step in one batched convolution at these sizes), one step per chunk, and
# 3 steps per chunk (the last chunk partial).
CHUNKS = ["cuda", "1step", "3steps"]
CASES = [
    (layout, dtype, config, chunk)
    for layout in LAYOUTS
    for dtype in (torch.float64, torch.float32)
    for config in ("full", "bias_only", "peephole_only", "bare")
    for chunk in CHUNKS
]


def _set_chunk(emu, chunk, T, N, C, H, W, dtype):
    step = N * 4 * C * H * W * torch.empty((), dtype=dtype).element_size()
    cuda_bytes = emu.set_layer_chunk_bytes({"cuda": 0, "1step": 1, "3steps": 3 * step}[chunk])
    if chunk == "cuda":
        assert cuda_bytes >= T * step  # the whole sequence in one chunk


@pytest.mark.parametrize(
    "layout,dtype,config,chunk",
    CASES,
    ids=[f"{lay}-{str(dt)[6:]}-{cfg}-{ch}" for lay, dt, cfg, ch in CASES],
)
def test_layer_matches_reference(emu, layout, dtype, config, chunk):
    # C = 5: channel and pixel counts off the kernels' vector width (their scalar paths), partial
    # warps; T = 7 leaves a partial chunk of 3 steps.
    T, N, Cin, C, H, W = 7, 2, 3, 5, 6, 7
    _set_chunk(emu, chunk, T, N, C, H, W, dtype)
    args = _emu_args(_inputs(T, N, Cin, C, H, W, config=config), layout, dtype, dtype)
    _check(emu, args, 1e-12 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_mixed_precision_layer(emu, layout, dtype):
    # As autocast runs the layer on a GPU: x, weights and h0 in the low dtype, c0, bias and
    # peephole in float32; h comes out in the low dtype and c in float32. Against float64 from the
    # same rounded values; the bound (1/16 of each tensor's scale) is what a lost gradient term or
    # a misplaced chunk exceeds, rounding over the recurrence does not (as in the CPU's test).
    T, N, Cin, C, H, W = 5, 2, 4, 8, 6, 8
    _set_chunk(emu, "3steps", T, N, C, H, W, dtype)
    args = _emu_args(_inputs(T, N, Cin, C, H, W), layout, dtype, torch.float32)
    h_seq, h, c = emu.convlstm_layer(*args)
    assert h_seq.dtype == dtype and h.dtype == dtype and c.dtype == torch.float32
    _check(emu, args, 1 / 16)


@pytest.mark.parametrize("layout", ["frames", "batch_first"])
def test_channels_last_weights_rectangular_kernel_index64(emu, layout):
    # Weights in channels_last make a CUDA call run channels_last whatever x's layout; a 5x3
    # kernel; the kernels forced to their 64-bit index variant.
    emu.set_options(True, 0)
    args = _emu_args(
        _inputs(4, 3, 2, 4, 9, 5, k=(5, 3)), layout, torch.float64, torch.float64, weights_cl=True
    )
    _check(emu, args, 1e-12)
    assert " i64" in emu.launch_log()


@pytest.mark.parametrize(
    "needs", [("x",), ("wx", "wh"), ("bias", "peephole"), ("h0", "c0")], ids=lambda n: "+".join(n)
)
def test_only_some_inputs_need_grad(emu, needs):
    names = ("x", "wx", "wh", "bias", "peephole", "h0", "c0")
    x, steps, *rest = _emu_args(_inputs(4, 2, 3, 4, 5, 6), "seq", torch.float64, torch.float64)
    tensors = [t.detach().requires_grad_(name in needs) for name, t in zip(names, [x, *rest])]
    ref = [t.detach().clone().requires_grad_(name in needs) for name, t in zip(names, [x, *rest])]
    h_seq, h, c = emu.convlstm_layer(tensors[0], steps, *tensors[1:])
    got = torch.autograd.grad(_loss(h_seq, h, c), [t for t in tensors if t.requires_grad])
    want = torch.autograd.grad(_loss(*_reference(*ref)), [t for t in ref if t.requires_grad])
    assert len(got) == len(needs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_no_grad_forward_equals_training_forward(emu):
    args = _emu_args(_inputs(6, 2, 3, 5, 6, 7), "batch_first", torch.float32, torch.float32)
    emu.set_layer_chunk_bytes(1)
    with torch.no_grad():
        plain = emu.convlstm_layer(*args)
    trained = emu.convlstm_layer(*args)
    assert trained[0].requires_grad
    for a, b in zip(plain, trained):
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)


@pytest.mark.parametrize(
    "dtype,state_dtype",
    [(torch.float64, torch.float64), (torch.bfloat16, torch.float32)],
    ids=["f64", "bf16"],
)
@pytest.mark.parametrize("config", ["full", "bare"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_training_step_operators_equal_the_layer(emu, layout, config, dtype, state_dtype):
    """torch.compile's two operators of a training step (convlstm_layer_train, then
    convlstm_layer_backward on what it returned) on the CUDA schedule give the layer's outputs
    and the gradients of its C++ autograd, element for element (NaN-filled buffers: nothing
    left unwritten)."""
    T, N, Cin, C, H, W = 5, 2, 3, 5, 6, 7
    _set_chunk(emu, "3steps", T, N, C, H, W, dtype)
    args = _emu_args(_inputs(T, N, Cin, C, H, W, config=config), layout, dtype, state_dtype)
    x, steps, *rest = args
    tensors = [x] + [t for t in rest if t is not None]
    outs = emu.convlstm_layer(*args)
    g = torch.Generator().manual_seed(1)
    grads_in = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]
    want = list(outs) + list(torch.autograd.grad(outs, tensors, grads_in))
    with torch.no_grad():
        h_seq, h, c, h_prev, gates, cells = emu.convlstm_layer_train(*args)
        assert len(gates) == T and len(cells) == T - 1 and h_prev.shape[0] == (T - 1) * N
        mask = [True, True, True] + [t is not None for t in rest[2:]]
        got = [h_seq, h, c] + list(emu.convlstm_layer_backward(*grads_in, *args, h_prev, gates, cells, mask))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert not torch.isnan(a).any(), f"result {i}: NaN (an element was not written)"
        assert a.dtype == b.dtype and a.shape == b.shape, i
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m: f"result {i}: {m}")  # noqa: B023


@pytest.mark.parametrize("case", ["nchw", "x_cl", "w1x1_cl"])
def test_fake_kernels_give_the_cuda_schedules_strides(emu, case):
    """The fake kernels under a GPU's layout rules (those of any device but the CPU: here meta
    tensors) give the results the strides the CUDA schedule's have -- also where a layout shows
    only in the strides of size-1 dimensions (1x1 weights made channels_last)."""
    T, N, Cin, C, H, W = 3, 2, 3, 4, 5, 6
    k = 1 if case == "w1x1_cl" else 3
    x = torch.randn(T * N, Cin, H, W)
    if case == "x_cl":
        x = x.contiguous(memory_format=torch.channels_last)
    wx, wh = torch.randn(4 * C, Cin, k, k), torch.randn(4 * C, C, k, k)
    if case == "w1x1_cl":
        wx, wh = (w.to(memory_format=torch.channels_last) for w in (wx, wh))
    args = (x.unflatten(0, (T, N)), T, wx, wh, None, None, None, None)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    ops = torch.ops.pyframepred
    for real, fake in (
        (emu.convlstm_layer(*args), ops.convlstm_layer(*meta)),
        (emu.convlstm_layer_train(*args), ops.convlstm_layer_train(*meta)),
    ):
        flat = lambda r: [t for v in r for t in (v if isinstance(v, list) else [v])]  # noqa: E731
        for a, b in zip(flat(real), flat(fake)):
            assert a.shape == b.shape and a.stride() == b.stride(), (a.stride(), b.stride())


_COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")
_SYNCS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::equal")


def _profiled_ops(emu, T, layout):
    """Names of the ATen operators one forward + backward of the emulated CUDA layer calls."""
    from torch.profiler import ProfilerActivity, profile

    args = _emu_args(_inputs(T, 2, 4, 8, 12, 12), layout, torch.float32, torch.float32)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        h_seq, h, c = emu.convlstm_layer(*args)
        (h_seq.sum() + h.sum() + c.sum()).backward()
    return [e.name for e in prof.events()]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_no_copies_per_step_and_no_host_sync(emu, layout):
    """On the CUDA schedule, layout copies happen once per call (the input, the h sequence), never
    per step: the cell writes each h into the layer's frames and the sequence's gradient is added
    in place, so doubling the sequence leaves their number unchanged. And nothing in forward or
    backward reads a device value on the host (which would synchronise, and stop a CUDA graph
    from capturing the rollout)."""
    short, long = _profiled_ops(emu, 3, layout), _profiled_ops(emu, 6, layout)
    copies = lambda names: sum(n in _COPIES for n in names)  # noqa: E731
    assert copies(short) == copies(long), (copies(short), copies(long))
    assert "aten::convolution" in long  # ATen's convolutions, as on the GPU
    assert not [n for n in long if n in _SYNCS]


def _backward_schedule_ops(emu, T, layout):
    """Names of the ATen operators the emulated CUDA layer's backward calls itself (not inside
    the operators it calls)."""
    from torch.profiler import ProfilerActivity, profile

    args = _emu_args(_inputs(T, 2, 4, 8, 12, 12), layout, torch.float32, torch.float32)
    h_seq, h, c = emu.convlstm_layer(*args)
    loss = h_seq.sum() + h.sum() + c.sum()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        loss.backward()
    node = "torch::autograd::CppNode<pyframepred::layer::ConvLSTMLayerFunction"
    return [e.name for e in prof.events() if e.cpu_parent is not None and e.cpu_parent.name.startswith(node)]


@pytest.mark.parametrize("layout", ["frames", "seq_cl"])
def test_parameter_gradients_reduced_once_per_call(emu, layout):
    """The bias and peephole gradients leave the cell's CUDA kernel as per-block partial sums.
    The schedule sums every step's partials in one reduction after the sweep, instead of a
    reduction and an addition per step (two launches a step on a GPU)."""
    short, long = _backward_schedule_ops(emu, 3, layout), _backward_schedule_ops(emu, 6, layout)
    assert short.count("aten::sum") == long.count("aten::sum") == 1
    assert short.count("aten::add") == long.count("aten::add") <= 1  # the last step's h gradients
    assert long.count("pyframepred::convlstm_gates_backward") == 6


def _layer_matches(emu, layout) -> bool:
    args = _emu_args(_inputs(4, 2, 3, 6, 5, 6), layout, torch.float32, torch.float32)
    try:
        _check(emu, args, 2e-5)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("layout", ["frames_cl", "batch_first"])
def test_planted_bugs_are_caught(emu, layout):
    # The cell's channels_last backward shares partial sums through shared memory: without its
    # barriers the layer's parameter gradients go wrong. A shifted thread index breaks every kernel.
    assert _layer_matches(emu, layout)
    emu.set_options(False, 1)
    assert _layer_matches(emu, layout) == (layout != "frames_cl")
    emu.set_options(False, 2)
    assert not _layer_matches(emu, layout)
