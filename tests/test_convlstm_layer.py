"""The ConvLSTM layer operator (whole-sequence schedule) against the step-by-step reference."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import CellCalls
from torch.library import opcheck

from pyframepred import ops, reference
from pyframepred.nn import ConvLSTM


def _reference_layer(x, steps, wx, wh, bias, peephole, state):
    """Step by step in plain PyTorch: the oracle."""
    N = x.shape[0] // steps
    pad = (wx.shape[2] // 2, wx.shape[3] // 2)
    C = wh.shape[1]
    if state is None:
        h = None
        c = x.new_zeros((N, C) + x.shape[2:])
    else:
        h, c = state
    hs = []
    for t in range(steps):
        xg = torch.nn.functional.conv2d(x[t * N : (t + 1) * N], wx, padding=pad)
        hg = None if h is None else torch.nn.functional.conv2d(h, wh, padding=pad)
        h, c = reference.convlstm_gates(xg, hg, c, bias, peephole)
        hs.append(h)
    return torch.cat(hs, 0), (h, c)


def _inputs(
    T=3,
    N=2,
    Cin=3,
    C=4,
    H=5,
    W=6,
    k=3,
    bias=True,
    peephole=False,
    state=False,
    dtype=torch.float64,
    channels_last=False,
    seed=0,
):
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    x = t(T * N, Cin, H, W)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    wx = t(4 * C, Cin, k, k, scale=0.3)
    wh = t(4 * C, C, k, k, scale=0.3)
    b = t(4 * C) if bias else None
    p = t(3, C) if peephole else None
    st = (t(N, C, H, W), t(N, C, H, W)) if state else None
    return x, T, wx, wh, b, p, st


def _leaves(args):
    x, _, wx, wh, b, p, st = args
    out = [x, wx, wh] + [v for v in (b, p) if v is not None]
    return out + (list(st) if st is not None else [])


def _compare(args, atol=1e-10):
    outs = {}
    for name, fn in (("fused", ops.convlstm_layer), ("ref", _reference_layer)):
        for leaf in _leaves(args):
            leaf.grad = None
        h_seq, (h, c) = fn(*args)
        # Every output gets a gradient of its own, none of them trivial.
        w = torch.linspace(-1, 1, h_seq.numel(), dtype=h_seq.dtype).view(h_seq.shape)
        loss = (h_seq * w).sum() + (h * 0.7).sum() + (c**2).sum()
        loss.backward()
        outs[name] = [h_seq, h, c] + [leaf.grad for leaf in _leaves(args)]
    for a, b in zip(outs["fused"], outs["ref"]):
        torch.testing.assert_close(a, b, atol=atol, rtol=1e-8)


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("state", [False, True])
def test_matches_reference(peephole, bias, state):
    _compare(_inputs(bias=bias, peephole=peephole, state=state))


@pytest.mark.parametrize("T", [1, 2, 7])
def test_steps(T):
    _compare(_inputs(T=T, state=True, peephole=True))


def test_channels_last_and_rectangular_kernel():
    _compare(_inputs(channels_last=True, state=True))
    x, T, wx, wh, b, p, st = _inputs(k=3)
    wx5 = torch.randn(wx.shape[0], wx.shape[1], 1, 5, dtype=wx.dtype, requires_grad=True)
    wh5 = torch.randn(wh.shape[0], wh.shape[1], 1, 5, dtype=wh.dtype, requires_grad=True)
    _compare((x, T, wx5, wh5, b, p, st))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_empty_batch(dtype):
    """A batch of no sequences (N = 0, e.g. a last partial batch split across devices): empty
    outputs and zero weight gradients, forward and backward."""
    x = torch.randn(3, 0, 16, 8, 8, dtype=dtype, requires_grad=True)
    wx = torch.randn(64, 16, 3, 3, dtype=dtype, requires_grad=True)
    wh = torch.randn(64, 16, 3, 3, dtype=dtype, requires_grad=True)
    h_seq, (h, c) = ops.convlstm_layer(x, 3, wx, wh)
    assert h_seq.shape == (3, 0, 16, 8, 8) and h.shape == c.shape == (0, 16, 8, 8)
    (h_seq.float().square().sum() + c.float().sum()).backward()
    assert x.grad.shape == x.shape
    assert not wx.grad.any() and not wh.grad.any()


def test_chunked_batches_match():
    # Gates per step 2*32*32*32 float64 = 512 KiB: the CPU's 3 MiB chunks hold 6 steps, so T = 14
    # runs the batched convolutions (forward and weight gradients) as chunks of 6, 6 and 2; a step
    # of 4 MiB (N=4, C=32, 32x32 float64) is a chunk of its own.
    _compare(_inputs(T=14, N=2, Cin=2, C=8, H=32, W=32, state=True), atol=1e-9)
    _compare(_inputs(T=3, N=4, Cin=2, C=8, H=32, W=32, state=True), atol=1e-9)
    # float32, one 2 MiB step per chunk (our tiled weight-gradient kernel on every chunk), with
    # and without an initial state.
    for state in (False, True):
        _compare(_inputs(T=3, N=4, Cin=16, C=32, H=32, W=32, state=state, dtype=torch.float32), atol=2e-3)


def _as_float64(args):
    return tuple(
        tuple(t.detach().double().requires_grad_() for t in a)
        if isinstance(a, tuple)
        else (a.detach().double().requires_grad_() if isinstance(a, torch.Tensor) else a)
        for a in args
    )


def _outputs_and_grads(fn, args, grad_format):
    """A forward and backward whose gradient of the h sequence is dense in `grad_format`."""
    h_seq, (h, c) = fn(*args)
    w = torch.linspace(-1, 1, h_seq.numel(), dtype=torch.float64).view(h_seq.shape).to(h_seq.dtype)
    loss = (h_seq * w.contiguous(memory_format=grad_format)).float().sum() + (h.float() * 0.7).sum()
    (loss + (c.float() ** 2).sum()).backward()
    return [h_seq, h, c] + [leaf.grad for leaf in _leaves(args)]


@pytest.mark.parametrize("grad_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("cpu_isa_level", ["default", "avx2", "avx512"], indirect=True)
def test_float32_winograd_convolutions_close_to_float64(cpu_isa_level, grad_format):
    # Channel counts the CPU's Winograd convolutions take (multiples of 16), odd frames (partial
    # tiles): the forward convolutions, the data gradients of h and x and the weight gradients run
    # as Winograd F(4x4, 3x3) in float32 (the layer's weights transformed once per call); the same
    # values in float64 are the oracle. A channels_last gradient of the sequence is summed into
    # the hidden data gradient as the convolution writes it, an NCHW one afterwards.
    args = _inputs(T=4, N=2, Cin=16, C=16, H=7, W=9, state=True, peephole=True, dtype=torch.float32)
    args64 = _as_float64(args)
    got = _outputs_and_grads(ops.convlstm_layer, args, grad_format)
    want = _outputs_and_grads(_reference_layer, args64, grad_format)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=2e-5 * b.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("grad_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "cl"])
@pytest.mark.parametrize("cpu_isa_level", ["avx512", "avx512_bf16"], indirect=True)
def test_bfloat16_layer_close_to_float64(cpu_isa_level, grad_format):
    # Mixed precision as autocast runs it (bfloat16 x, weights and h0; float32 c0, bias, peephole)
    # with channel counts in multiples of 16: at avx512_bf16 every convolution and weight gradient
    # is our bfloat16 Winograd, elsewhere ATen's, against float64 from the same bfloat16 values.
    # Rounding compounds over the recurrence: measured 0.4-4.6% of each tensor's scale here
    # (0.3-2.3% with ATen's direct bfloat16 convolutions). The bound, 1/16 of the scale, is what a
    # wrong transform, a lost gradient term or a misplaced chunk would exceed (errors of the order
    # of the scale); the float32 test above holds the same schedule to 2e-5.
    x, T, wx, wh, b, p, (h0, c0) = _inputs(
        T=4, N=2, Cin=16, C=16, H=7, W=9, state=True, peephole=True, dtype=torch.float32
    )
    low = [
        t.detach().bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_() for t in (x, h0)
    ]
    args = (
        low[0],
        T,
        wx.detach().bfloat16().requires_grad_(),
        wh.detach().bfloat16().requires_grad_(),
        b,
        p,
        (low[1], c0),
    )
    got = _outputs_and_grads(ops.convlstm_layer, args, grad_format)
    want = _outputs_and_grads(_reference_layer, _as_float64(args), grad_format)
    assert got[0].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=b.abs().max().item() / 16, rtol=0)


def _convolutions(fn):
    """How many convolutions (conv2d_same, ours or the operator) a call of fn runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = fn()
    return sum(e.name == "pyframepred::conv2d_same" for e in prof.events()), out


@pytest.mark.parametrize("wanted", ["all", "wx", "wh", "x-wx"])
@pytest.mark.parametrize("state", [False, True], ids=["no-state", "state"])
@pytest.mark.parametrize("T", [1, 3])
def test_one_convolution_per_step(T, state, wanted):
    # Channel counts the CPU's Winograd convolutions take: each step's gates come from one
    # convolution of x_t and h_{t-1} side by side in one frame (step 0 without h0: of x_t
    # alone), and both weight gradients from one call over those frames when both are wanted
    # (separate calls otherwise). Values and the wanted gradients against float64; the forward
    # without autograd (one reused frame) equals the one that saves its frames.
    args = _inputs(T=T, N=2, Cin=16, C=16, H=7, W=9, state=state, peephole=True, dtype=torch.float32)
    x, _, wx, wh, b, p, st = args
    names = {"all": ("x", "wx", "wh"), "wx": ("wx",), "wh": ("wh",), "x-wx": ("x", "wx")}[wanted]
    named = {"x": x, "wx": wx, "wh": wh}
    for name, leaf in named.items():
        leaf.requires_grad_(name in names)
    calls, (h_seq, (h, c)) = _convolutions(lambda: ops.convlstm_layer(*args))
    assert calls == T
    with torch.no_grad():
        h_seq2, (h2, c2) = ops.convlstm_layer(*args)
    for a, b2 in ((h_seq, h_seq2), (h, h2), (c, c2)):
        torch.testing.assert_close(a.detach(), b2, atol=0, rtol=0)

    args64 = _as_float64(args)
    named64 = dict(zip(("x", "wx", "wh"), (args64[0], args64[2], args64[3])))
    want_seq, (want_h, want_c) = _reference_layer(*args64)
    w = torch.linspace(-1, 1, h_seq.numel(), dtype=torch.float64).view(h_seq.shape)

    def loss(h_seq, h, c):
        return (h_seq.double() * w).sum() + (h.double() * 0.7).sum() + (c.double() ** 2).sum()

    calls, got = _convolutions(lambda: torch.autograd.grad(loss(h_seq, h, c), [named[n] for n in names]))
    # Backward's data gradients: one convolution per step whose h_{t-1} exists (all of them with
    # h0, which wants its gradient), and x's in one batched call (these small steps are one chunk).
    assert calls == (T if state else T - 1) + ("x" in names)
    # One step without h0 never uses weight_h: the reference leaves it out of its graph, the
    # layer gives zeros.
    want = torch.autograd.grad(loss(want_seq, want_h, want_c), [named64[n] for n in names], allow_unused=True)
    want = tuple(torch.zeros_like(named64[n]) if g is None else g for n, g in zip(names, want))
    for a, b2 in zip((h_seq, h, c) + got, (want_seq, want_h, want_c) + want):
        torch.testing.assert_close(a.double(), b2, atol=2e-5 * b2.abs().max().item(), rtol=1e-4)


def test_channels_the_joined_convolution_does_not_take():
    # C_in + C = 36 is no multiple of the vector width: the step's two convolutions run apart, as
    # before the merged schedule (x batched: the 3 small steps in one call; h per step), with the
    # same results.
    args = _inputs(T=3, N=2, Cin=16, C=20, H=5, W=6, state=True, dtype=torch.float32)
    calls, _ = _convolutions(lambda: ops.convlstm_layer(*args))
    assert calls == 1 + 3
    got = _outputs_and_grads(ops.convlstm_layer, args, torch.contiguous_format)
    want = _outputs_and_grads(_reference_layer, _as_float64(args), torch.contiguous_format)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, atol=2e-5 * b.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("grad", ["expanded", "nchw", "channels_last"])
def test_gradient_of_any_layout(grad):
    # The layer brings the sequence's gradient into its own layout step by step: an expanded
    # gradient (of .sum()) and dense ones in either layout give the reference's gradients.
    args = _inputs(state=True, peephole=True, T=4)
    got = {}
    for name, fn in (("fused", ops.convlstm_layer), ("ref", _reference_layer)):
        for leaf in _leaves(args):
            leaf.grad = None
        h_seq, (h, c) = fn(*args)
        if grad == "expanded":
            loss = h_seq.sum()
        else:
            fmt = torch.channels_last if grad == "channels_last" else torch.contiguous_format
            w = torch.linspace(-1, 1, h_seq.numel(), dtype=h_seq.dtype).view(h_seq.shape)
            loss = (h_seq * w.contiguous(memory_format=fmt)).sum()
        loss.backward()
        got[name] = [leaf.grad for leaf in _leaves(args)]
    for a, b in zip(got["fused"], got["ref"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_float32_close_to_reference():
    _compare(_inputs(dtype=torch.float32, state=True, peephole=True), atol=2e-5)


def test_gradcheck():
    x, T, wx, wh, b, p, st = _inputs(T=3, N=1, Cin=2, C=2, H=3, W=4, peephole=True, state=True)

    def fn(x, wx, wh, b, p, h0, c0):
        h_seq, (h, c) = ops.convlstm_layer(x, T, wx, wh, b, p, (h0, c0))
        return h_seq, h, c

    assert torch.autograd.gradcheck(fn, (x, wx, wh, b, p, *st))


def test_only_some_inputs_need_grad():
    x, T, wx, wh, b, p, st = _inputs(state=True)
    x.requires_grad_(False)
    wh.requires_grad_(False)
    h_seq, (h, c) = ops.convlstm_layer(x, T, wx, wh, b, p, st)
    h_seq.sum().backward()
    assert x.grad is None and wh.grad is None
    assert wx.grad is not None and torch.isfinite(wx.grad).all()


def test_no_grad_equals_grad_path():
    args = _inputs(state=True, peephole=True)
    with torch.no_grad():
        a, (ha, ca) = ops.convlstm_layer(*args)
    b, (hb, cb) = ops.convlstm_layer(*args)
    assert not a.requires_grad
    torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)
    torch.testing.assert_close(ca, cb.detach(), atol=0, rtol=0)


# A sequence (T, N, C, H, W) in each layout the op must take as it lies: time- or batch-major in
# memory (a batch-first tensor transposed), NCHW or channels_last frames, or not dense at all.
_SEQ_LAYOUTS = {
    "tm-nchw": lambda x5: x5.contiguous(),
    "bm-nchw": lambda x5: x5.transpose(0, 1).contiguous().transpose(0, 1),
    "tm-cl": lambda x5: x5.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3),
    "bm-cl": lambda x5: x5.permute(1, 0, 3, 4, 2).contiguous().permute(1, 0, 4, 2, 3),
    "strided": lambda x5: torch.cat([x5, x5], -1)[..., : x5.shape[-1]],
}


def _as_sequence(args, layout):
    x, T, *rest = args
    x5 = _SEQ_LAYOUTS[layout](x.detach().unflatten(0, (T, -1))).requires_grad_()
    return (x5, T, *rest)


@pytest.mark.parametrize("layout", list(_SEQ_LAYOUTS))
@pytest.mark.parametrize(
    "dtype,channels", [(torch.float64, (3, 4)), (torch.float32, (16, 16))], ids=["f64", "f32-merged"]
)
def test_sequence_input_equals_frames(layout, dtype, channels):
    # float64 runs the batched input convolution and per-step hidden one; float32 with 16 channels
    # the CPU's merged schedule, whose frames take x straight from the sequence. Either way a
    # sequence gives what its frames give, values and every gradient, and h_seq is laid out as x.
    cin, C = channels
    args = _inputs(T=3, N=2, Cin=cin, C=C, H=5, W=7, state=True, peephole=True, dtype=dtype)
    seq_args = _as_sequence(args, layout)
    x5 = seq_args[0]
    want = _outputs_and_grads(ops.convlstm_layer, args, torch.contiguous_format)
    for leaf in _leaves(args)[1:]:
        leaf.grad = None
    got = _outputs_and_grads(ops.convlstm_layer, seq_args, torch.contiguous_format)
    h_seq = got[0]
    assert h_seq.shape == (3, 2, C, 5, 7)
    frames_cl = layout.endswith("-cl")
    order = (1, 0) if layout.startswith("bm") else (0, 1)
    inner = (3, 4, 2) if frames_cl else (2, 3, 4)
    assert h_seq.permute(*order, *inner).is_contiguous(), (layout, h_seq.stride())
    assert x5.grad.shape == x5.shape
    got[0], got[3] = h_seq.flatten(0, 1), x5.grad.flatten(0, 1)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)


@pytest.mark.parametrize("layout", ["frames", "tm-cl"])
def test_in_place_change_of_the_output_before_backward_raises(layout):
    # float64 keeps the h sequence for backward (no merged frames); where the output's memory is
    # what backward reads (frames, or a time-major sequence with frames in the layout the layer
    # runs in, channels_last on the CPU), changing it in place must raise autograd's version
    # error rather than give wrong gradients. (Other layouts keep frames of their own.)
    args = _inputs(T=3, state=True)
    if layout != "frames":
        args = _as_sequence(args, layout)
    h_seq, _ = ops.convlstm_layer(*args)
    h_seq.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        h_seq.sum().backward()


@pytest.mark.parametrize("layout", ["bm-cl", "bm-nchw", "strided"])
def test_opcheck_sequence(layout):
    x, T, wx, wh, b, p, (h0, c0) = _as_sequence(
        _inputs(T=2, dtype=torch.float32, state=True, peephole=True), layout
    )
    opcheck(torch.ops.pyframepred.convlstm_layer.default, (x, T, wx, wh, b, p, h0, c0))


def _numel(shape):
    """Elements of a profiled input's shape; for a list of tensors (cat's input), their sum."""
    if shape and all(isinstance(d, list) for d in shape):
        return sum(_numel(d) for d in shape)
    return math.prod(shape) if shape and all(isinstance(d, int) for d in shape) else -1


@pytest.mark.parametrize("cin,hidden", [(3, 8), (16, 16)], ids=["batched", "merged"])
def test_module_copies_no_sequence_outside_the_op(cin, hidden):
    """A batch-first input goes into the fused layer as it lies and the output comes back in its
    layout: no operator outside the layer's own copies a sequence-sized tensor, forward or
    backward (before: the frames gathered by cat, the output transposed by a copy, and its
    gradient by another)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    m = ConvLSTM(cin, [hidden, hidden], 3)
    x = torch.randn(2, 5, cin, 12, 12)
    target = torch.randn(2, 5, hidden, 12, 12)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        out, _ = m(x)
        (out * target).sum().backward()  # a gradient with no copy of its own
    assert out.is_contiguous()
    seq_numel = {x.numel(), out.numel()}

    def inside_layer(ev):
        while ev is not None:
            if "convlstm_layer" in ev.name or "ConvLSTMLayer" in ev.name:
                return True
            ev = ev.cpu_parent
        return False

    copies = [
        e.name
        for e in prof.profiler.function_events
        if e.name in _COPIES + ("aten::cat", "aten::stack")
        and not inside_layer(e)
        and any(_numel(sh) in seq_numel for sh in e.input_shapes)
    ]
    assert copies == [], copies


def test_double_backward_raises():
    x, T, wx, wh, b, p, st = _inputs()
    h_seq, _ = ops.convlstm_layer(x, T, wx, wh, b, p, st)
    (g,) = torch.autograd.grad(h_seq.sum(), wx, create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        g.sum().backward()


@pytest.mark.parametrize("cin,W,layout", [(1, 3, "tm"), (3, 1, "tm"), (3, 3, "cl"), (16, 3, "cl")])
@pytest.mark.parametrize("state", [False, True])
def test_fake_kernel_gives_the_real_strides_in_mixed_precision(cin, W, layout, state):
    """bfloat16 gates with a float32 state, where the frames are contiguous in both layouts (one
    channel, one pixel across) or channels_last: the fake kernel's outputs (what torch.export and
    torch.compile plan with) have the real ones' strides, the last c's included."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    T, N, C, H = 2, 1, 16, 4
    x = torch.randn(T * N, cin, H, W, dtype=torch.bfloat16)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.view(T, N, cin, H, W)
    wx = torch.randn(4 * C, cin, 3, 3, dtype=torch.bfloat16)
    wh = torch.randn(4 * C, C, 3, 3, dtype=torch.bfloat16)
    b = torch.randn(4 * C)
    h0, c0 = (
        (torch.randn(N, C, H, W, dtype=torch.bfloat16), torch.randn(N, C, H, W)) if state else (None,) * 2
    )
    args = (x, T, wx, wh, b, None, h0, c0)
    real = torch.ops.pyframepred.convlstm_layer(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = torch.ops.pyframepred.convlstm_layer(
            *(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        )

    def layout_of(t):  # strides of the dimensions longer than 1 (the others' strides are free)
        return [st for size, st in zip(t.shape, t.stride()) if size > 1], t.dtype

    assert [layout_of(t) for t in fake] == [layout_of(t) for t in real]


@pytest.mark.parametrize("op", ["convlstm_layer", "convlstm_layer_train"])
def test_fake_kernel_refuses_frames_that_do_not_split_into_the_steps(op):
    """What torch.compile and torch.export plan with refuses the call the real op refuses (5
    frames in 3 steps), with the same message, instead of planning a batch of 2."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, T, wx, wh, b, p, st = _inputs(state=True, peephole=True)
    args = (x[:5], T, wx, wh, b, p, *st)
    with pytest.raises(RuntimeError, match=f"x has 5 frames, not a multiple of steps = {T}"):
        getattr(torch.ops.pyframepred, op)(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=f"x has 5 frames, not a multiple of steps = {T}"):
            getattr(torch.ops.pyframepred, op)(*fake)


@pytest.mark.parametrize("state", [False, True])
def test_opcheck(state):
    x, T, wx, wh, b, p, st = _inputs(T=2, dtype=torch.float32, state=state, peephole=True)
    h0, c0 = (None, None) if st is None else st
    opcheck(torch.ops.pyframepred.convlstm_layer.default, (x, T, wx, wh, b, p, h0, c0))


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: a.update(x=a["x"][:5]), "multiple of steps"),
        (lambda a: a.update(x=a["x"][0]), "must be a sequence"),
        (lambda a: a.update(x=a["x"].unflatten(0, (2, -1))), "sequence of 2 steps"),
        (lambda a: a.update(wx=a["wx"][:, :2]), "weight_x must be"),
        (lambda a: a.update(wx=a["wx"][..., :1, :]), r"one kernel size, got \(1, 3\) and \(3, 3\)"),
        (lambda a: a.update(wh=a["wh"][:8]), "weight_h must be"),
        (lambda a: a.update(b=a["b"][:3]), "bias must have shape"),
        (lambda a: a.update(p=torch.zeros(2, 4, dtype=torch.float64)), "peephole must have shape"),
        (lambda a: a.update(h0=torch.zeros(2, 4, 5, 5, dtype=torch.float64)), "h0 must have shape"),
        (lambda a: a.update(steps=0), "steps must be"),
    ],
)
def test_errors(mutate, match):
    x, T, wx, wh, b, p, st = _inputs(state=True, peephole=True)
    a = dict(x=x, steps=T, wx=wx, wh=wh, b=b, p=p, h0=st[0], c0=st[1])
    mutate(a)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.pyframepred.convlstm_layer(
            a["x"], a["steps"], a["wx"], a["wh"], a["b"], a["p"], a["h0"], a["c0"]
        )


def test_module_uses_layer_and_matches_reference_module():
    torch.manual_seed(0)
    m = ConvLSTM(3, [5, 4], 3, num_layers=2, peephole=True).double()
    with torch.no_grad():
        for cell in m.cells:
            cell.peephole.normal_()
    x = torch.randn(2, 4, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    res = {}
    for fused in (True, False):
        m.fused = fused
        m.zero_grad(set_to_none=True)
        x.grad = None
        y, states = m(x)
        assert y.is_contiguous() and y.shape == (2, 4, 4, 6, 7)
        ((y**2).sum() + states[-1][1].sum()).backward()
        res[fused] = [y, states[-1][1], x.grad] + [q.grad for q in m.parameters()]
    for a, b in zip(res[True], res[False]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


_COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")


def _copy_ops(T, amp, channels_last, cin=4, hidden=8):
    """Layout/dtype copies in one forward + backward of a two-layer ConvLSTM over T steps."""
    from torch.profiler import ProfilerActivity, profile

    from pyframepred.nn import ConvLSTM

    torch.manual_seed(0)
    m = ConvLSTM(cin, [hidden, hidden], 3)
    x = torch.randn(2 * T, cin, 12, 12)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.view(2, T, cin, 12, 12)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out, _ = m(x)
        out.float().sum().backward()
    return sum(e.name in _COPIES for e in prof.events())


@pytest.mark.parametrize("channels", [(4, 8), (16, 16)], ids=["4-8", "16-16"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_no_copies_per_step(amp, channels_last, channels):
    """Layout and dtype conversions happen once per layer (input, weights, output), never per
    step: doubling the sequence leaves their number unchanged, forward and backward. With 16
    channels the CPU runs the merged schedule (one convolution of x_t and h_{t-1} side by side),
    whose frames are filled without a copy per step."""
    cin, hidden = channels
    assert _copy_ops(3, amp, channels_last, cin, hidden) == _copy_ops(6, amp, channels_last, cin, hidden)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("state", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_cell_reads_its_state_in_the_gates_layout(amp, state, bias):
    """The cell state of every step, the first included, lies as the gates do (channels_last on the
    CPU, whatever the caller's layout): the cell reads it in order, never across channels (the
    zeros of a call without c0 were NCHW, which made step 0's cell 2-3 times slower)."""
    x, T, wx, wh, b, p, st = _inputs(
        T=3, N=2, Cin=4, C=8, H=6, W=7, bias=bias, state=state, dtype=torch.float32
    )
    with CellCalls() as log, torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        h_seq, (h, c) = ops.convlstm_layer(x, T, wx, wh, b, p, st)
        (h_seq.float().sum() + (c.float() ** 2).sum()).backward()
    assert [k for k, _, _ in log.calls] == ["forward"] * T + ["backward"] * T
    for kind, gates, c_prev in log.calls:
        assert gates.is_contiguous(memory_format=torch.channels_last), kind
        assert c_prev.is_contiguous(memory_format=torch.channels_last), kind


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_cuda_layer_matches_reference_and_graph_capture(amp):
    """On a GPU: the layer (float32, and bf16 autocast with a float32 cell state) equals the
    step-by-step reference, and its rollout holds no host synchronisation, so a CUDA graph
    captures a whole forward + backward that replays to the same values."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from pyframepred.nn import ConvLSTM

    torch.manual_seed(0)
    m = ConvLSTM(4, [16, 16], 3).cuda()
    ref = ConvLSTM(4, [16, 16], 3, fused=False).cuda()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 5, 4, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out, states = m(x)
        out_ref, _ = ref(x)
    tol = dict(atol=3e-2, rtol=3e-2) if amp else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.float(), out_ref.float(), **tol)
    if amp:
        assert out.dtype == torch.bfloat16 and states[-1][1].dtype == torch.float32
    static_x = x.clone()
    params = list(m.parameters())

    def step():  # (autocast's cast cache must be off under graph capture)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp, cache_enabled=False):
            o, _ = m(static_x)
        return torch.autograd.grad(o.float().square().sum(), params)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()  # warm-up outside the capture (allocator, cuDNN plans)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        grads = step()
    eager = step()
    static_x.copy_(x)
    graph.replay()
    torch.cuda.synchronize()
    for g, e in zip(grads, eager):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


_FAULTS_PER_STEP = """
import resource, torch
from pyframepred import ops
torch.set_num_threads(2)
T, N, Cin, C, H, W = 4, 4, 64, 64, 64, 64
g = torch.Generator().manual_seed(0)
cl = torch.channels_last
x = torch.randn(T * N, Cin, H, W, generator=g).contiguous(memory_format=cl).requires_grad_()
wx = (torch.randn(4 * C, Cin, 3, 3, generator=g) * 0.05).requires_grad_()
wh = (torch.randn(4 * C, C, 3, 3, generator=g) * 0.05).requires_grad_()
b = torch.zeros(4 * C, requires_grad=True)
gs = torch.randn(T * N, C, H, W, generator=g).contiguous(memory_format=cl)
def step():
    h_seq, _ = ops.convlstm_layer(x, T, wx, wh, b, None)
    torch.autograd.grad(h_seq, [x, wx, wh, b], gs)
"""

# Appended to a script that defines step(): page faults per step in steady state.
_MEASURE_FAULTS = """
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def _faults_per_step(script: str) -> float:
    """Page faults per training step of `script` in a fresh process (so that earlier tests leave
    no heap behind)."""
    out = subprocess.run([sys.executable, "-c", script + _MEASURE_FAULTS], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip())


def test_training_steps_fault_in_no_fresh_pages():
    # Item 6 of the layer's issue: under plain malloc, a training step must not fault in fresh
    # pages for the tensors it allocates again at every step. At (4, 64, [64], 64x64) the step's
    # gate-sized buffers span ~15,000 pages; they come from the buffer pool (buffer_pool.h), so
    # a step in steady state faults in almost none (measured ~300; ~9,500 with the pool off).
    assert _faults_per_step(_FAULTS_PER_STEP) < 1000


_MODULE_FAULTS_PER_STEP = """
import resource, torch
from pyframepred.nn import ConvLSTM
torch.set_num_threads(2)
torch.manual_seed(0)
m = ConvLSTM(64, 64, 3)
x = torch.randn(4, 10, 64, 64, 64)  # batch-first, NCHW: sequence-sized tensors of 42 MB
params = list(m.parameters())
def step():
    out, _ = m(x)
    torch.autograd.grad(out.sum(), params)
"""


def test_module_training_steps_fault_in_no_sequence_sized_pages():
    # The module at (4, 64, [64], 64x64), T = 10, float32, batch-first: sequence-sized tensors
    # (42 MB, above glibc's largest mmap threshold) faulted in ~10,240 fresh pages each per step:
    # the frames gathered by cat, their channels_last copy, the output's batch-first copy (20,481
    # faults per step recorded), and with those gone, a pooled block the 256 MiB budget let go.
    # Measured since: 0-3,000 per step.
    assert _faults_per_step(_MODULE_FAULTS_PER_STEP) < 5000


def _module_step(threads, amp, channels_last, N, Cin, hidden, H, W, T=4):
    """Output and all gradients of a two-term loss of ConvLSTM at `threads` threads (fixed data)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    m = ConvLSTM(Cin, list(hidden), 3, num_layers=len(hidden))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    x = torch.randn(N, T, Cin, H, W, generator=g)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (N, T))
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out, states = m(x)
    gy = torch.randn(out.shape, generator=g)
    loss = out.float().mul(gy).sum() + states[-1][1].float().sum()
    grads = torch.autograd.grad(loss, [x, *m.parameters()])
    return [out.float(), *(gr.float() for gr in grads)]


@pytest.mark.parametrize(
    "size",
    [(3, 5, (19, 13), 11, 13), (8, 16, (32,), 32, 32), (2, 3, (7,), 5, 70)],
    ids=["odd-2-layers", "16-32", "wide"],
)
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "cl"])
def test_module_agrees_across_thread_counts(channels_last, amp, size):
    # Every CPU kernel of the layer splits its work with at::parallel_for (Winograd tiles, weight
    # gradient partial sums, frames copies, the cell): the split differs with the thread count, and
    # only the order of float sums may change with it. More threads than this machine's cores
    # still split the work as a many-core CPU would.
    threads = torch.get_num_threads()
    try:
        one = _module_step(1, amp, channels_last, *size)
        for n in (3, 7, 16):
            other = _module_step(n, amp, channels_last, *size)
            assert len(other) == len(one) > 3
            for i, (a, b) in enumerate(zip(one, other)):
                tol = (2e-3 if amp else 1e-5) * a.abs().max().item()
                torch.testing.assert_close(b, a, atol=tol, rtol=0, msg=f"tensor {i}: {n} threads vs 1")
    finally:
        torch.set_num_threads(threads)
