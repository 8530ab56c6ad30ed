"""The fused ConvLSTM cell op against its plain-PyTorch reference, gradcheck, opcheck, compile,
and every bad-input case."""

import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch
from conftest import requires_cuda
from hypothesis import given, settings
from hypothesis import strategies as st

import pyframepred
from pyframepred import ops, reference

# The CPU kernel tests run at every CPU ISA level (conftest.py).
pytestmark = pytest.mark.cpu_isa

FWD = torch.ops.pyframepred.convlstm_gates_forward
BWD = torch.ops.pyframepred.convlstm_gates_backward


def make_inputs(
    N,
    C,
    H,
    W,
    *,
    dtype=torch.float32,
    device="cpu",
    has_h=True,
    bias=True,
    peephole=False,
    layout="nchw",
    requires_grad=True,
):
    def t(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    xg, hg, cp = t(N, 4 * C, H, W), (t(N, 4 * C, H, W) if has_h else None), t(N, C, H, W)
    if layout == "channels_last":
        xg = xg.to(memory_format=torch.channels_last)
        hg = hg.to(memory_format=torch.channels_last) if hg is not None else None
        cp = cp.to(memory_format=torch.channels_last)
    elif layout == "sliced":  # a channel slice of a bigger tensor: strided, still viewable
        xg = t(N, 4 * C + 3, H, W)[:, 2 : 2 + 4 * C]
    elif layout == "transposed":  # H and W swapped in memory: not (N, K, H*W)-viewable
        xg = t(N, 4 * C, W, H).transpose(2, 3)
        cp = t(N, C, W, H).transpose(2, 3)
    b = t(4 * C) if bias else None
    w = t(3, C) * 0.5 if peephole else None
    args = [xg, hg, cp, b, w]
    if requires_grad:
        for a in args:
            if a is not None:
                a.requires_grad_(True)
    return args


def run_both(args, gh=None, gc=None, upcast=False):
    """Forward + backward through fused and reference; returns (fused, reference) results."""
    results = []
    for fn, cast in ((ops.convlstm_gates, False), (reference.convlstm_gates, upcast)):
        inputs = [
            a.detach().clone().double()
            if (cast and a is not None)
            else (a.detach().clone() if a is not None else None)
            for a in args
        ]
        for a, orig in zip(inputs, args):
            if a is not None:
                a.requires_grad_(orig.requires_grad)
        h, c = fn(*inputs)
        gh_ = torch.randn_like(h) if gh is None else gh
        gc_ = torch.randn_like(c) if gc is None else gc
        gh, gc = gh_, gc_
        loss = (h * gh_.to(h.dtype)).sum() + (c * gc_.to(c.dtype)).sum()
        leaves = [a for a in inputs if a is not None and a.requires_grad]
        grads = torch.autograd.grad(loss, leaves)
        results.append((h, c, grads))
    return results


def assert_close_results(fused, ref, atol, rtol):
    (h1, c1, g1), (h2, c2, g2) = fused, ref
    torch.testing.assert_close(h1.double(), h2.double(), atol=atol, rtol=rtol)
    torch.testing.assert_close(c1.double(), c2.double(), atol=atol, rtol=rtol)
    assert len(g1) == len(g2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=rtol)


SHAPES = [(1, 1, 1, 1), (2, 3, 5, 7), (3, 8, 16, 16), (2, 17, 9, 13), (1, 4, 1, 33)]
LAYOUTS = ["nchw", "channels_last", "sliced", "transposed"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("peephole", [False, True])
def test_matches_reference_float64(shape, layout, peephole):
    args = make_inputs(*shape, dtype=torch.float64, layout=layout, peephole=peephole)
    fused, ref = run_both(args)
    assert_close_results(fused, ref, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("has_h,bias,peephole", list(itertools.product([False, True], repeat=3)))
def test_optional_inputs_float32(has_h, bias, peephole):
    args = make_inputs(2, 6, 11, 10, has_h=has_h, bias=bias, peephole=peephole)
    fused, ref = run_both(args)
    assert_close_results(fused, ref, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    N=st.integers(1, 3),
    C=st.integers(1, 12),
    H=st.integers(1, 12),
    W=st.integers(1, 12),
    has_h=st.booleans(),
    bias=st.booleans(),
    peephole=st.booleans(),
    layout=st.sampled_from(LAYOUTS),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
)
def test_property_matches_reference(N, C, H, W, has_h, bias, peephole, layout, scale):
    args = make_inputs(
        N,
        C,
        H,
        W,
        dtype=torch.float64,
        has_h=has_h,
        bias=bias,
        peephole=peephole,
        layout=layout,
        requires_grad=False,
    )
    args = [a * scale if a is not None else None for a in args]
    for a in args:
        if a is not None:
            a.requires_grad_(True)
    fused, ref = run_both(args)
    assert_close_results(fused, ref, atol=1e-11, rtol=1e-9)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("has_h,peephole", [(True, True), (False, False), (True, False)])
def test_dense_rows_and_saturated_gates_float32(layout, has_h, peephole):
    """Rows that are whole SIMD vectors (C = 32 channels_last, H*W = 64 NCHW: the kernels' dense
    path at every level) with gates far into saturation, +-inf included: the float32 kernels
    (a reciprocal estimate refined by a Newton step) against the float64 reference."""
    args = make_inputs(2, 32, 8, 8, has_h=has_h, peephole=peephole, layout=layout, requires_grad=False)
    xg = args[0]
    xg.mul_(4.0)
    memory = xg.as_strided((xg.numel(),), (1,))  # both layouts are dense: every element once
    picks = torch.randperm(xg.numel(), generator=torch.Generator().manual_seed(0))[:400]
    for k, v in enumerate((float("inf"), -float("inf"), 100.0, -100.0)):
        memory[picks[k::4]] = v
    assert torch.isinf(xg).sum() == 200
    for a in args:
        if a is not None:
            a.requires_grad_(True)
    fused, ref = run_both(args, upcast=True)
    assert torch.isfinite(fused[0]).all() and torch.isfinite(fused[1]).all()
    assert_close_results(fused, ref, atol=2e-5, rtol=1e-5)


def _tanh_through_the_cell(values, dtype, layout):
    """The cell run so that its outputs are tanh of `values`: with i on and f off, c = tanh(g)
    (g = values); with i off and f on, c = c_prev and h = sigmoid(o) tanh(c_prev) (c_prev =
    values, o = 0). Returns (c of the first, float64 tanh of its g), (h of the second, its
    float64 value). Rows of C = 20 channels (channels_last: a whole vector and a partial one) by
    W = 499 (NCHW: partial last vectors)."""
    C, W = 20, 499
    v = values.flatten()
    v = torch.cat([v, v.new_zeros((-v.numel()) % (C * W))]).reshape(-1, C, 1, W)
    on, off, zero = torch.full_like(v, 40.0), torch.full_like(v, -40.0), torch.zeros_like(v)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gates_c = torch.cat([on, off, v, zero], 1).to(dtype).contiguous(memory_format=fmt)
    _, c = ops.convlstm_gates(gates_c, None, zero.contiguous(memory_format=fmt))
    want_c = torch.tanh(gates_c[:, 2 * C : 3 * C].double())  # sigmoid(40) is 1 in float32
    gates_h = torch.cat([off, on, zero, zero], 1).to(dtype).contiguous(memory_format=fmt)
    h, _ = ops.convlstm_gates(gates_h, None, v.contiguous(memory_format=fmt))
    want_h = 0.5 * torch.tanh(v.double())
    return (c, want_c), (h, want_h)


def _max_rel(got, want):
    return ((got.double() - want).abs() / want.abs().clamp_min(1e-300)).max().item()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_float32_tanh_relative_accuracy_at_every_size(layout):
    """tanh in the float32 cell, for g (into c) and for the cell state (into h), within 5e-7
    relative of float64 over a sweep of float32 values of both signs from 1e-8 to 8 (every 997th
    float): small cell states and g gates are common, and the formula 1 - 2 / (1 + e^2x) alone,
    whose error is absolute, gave them relative errors of 1e-3 to 1 and more (tanh(x) = 0 below
    ~3e-8), twice as large for negative x. (Measured: 1.7e-7 to 3.9e-7, the largest per level;
    torch's float32 tanh: 1-2e-7.)"""
    positive = torch.arange(0x32000000, 0x41000000, 997, dtype=torch.int32).view(torch.float32)
    (c, want_c), (h, want_h) = _tanh_through_the_cell(torch.cat([positive, -positive]), torch.float32, layout)
    assert _max_rel(c, want_c) < 5e-7
    assert _max_rel(h, want_h) < 5e-7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_gates_keep_the_cell_state_accurate(dtype):
    """With 16-bit gates the kernels take a cheaper tanh; the float32 cell state they update
    still comes out within 3e-5 of tanh of the (rounded) gate, relative, for small and large g
    (the one-exp formula alone gave it relative errors up to ~0.8 at g = 1e-7; measured now
    2e-5). h is in the 16-bit type: held to that type's rounding, where it is normal."""
    g = torch.cat([torch.logspace(-12, -1, 3000), torch.linspace(0.1, 6.0, 3000)])
    (c, want_c), (h, want_h) = _tanh_through_the_cell(torch.cat([g, -g]), dtype, "nchw")
    assert c.dtype == torch.float32
    assert _max_rel(c, want_c) < 3e-5
    normal = want_h.abs() >= torch.finfo(dtype).tiny
    assert _max_rel(h[normal], want_h[normal]) < 1.5 * torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_reduced_precision_cpu(dtype, layout):
    args = make_inputs(2, 8, 12, 12, dtype=dtype, layout=layout, peephole=True)
    fused, ref = run_both(args, upcast=True)
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    # parameter gradients sum N*H*W terms: compare relative to their size
    assert_close_results(fused, ref, atol=tol * 10, rtol=tol * 4)
    assert fused[0].dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nan_propagates(dtype):
    """A NaN gate input must give NaN outputs (as the reference does), not hide divergence."""
    xg, hg, cp, b, _ = make_inputs(1, 4, 3, 9, dtype=dtype, requires_grad=False)
    xg[0, 0, 1, 2] = float("nan")  # gate i at one position
    xg[0, 12, 2, 5] = float("nan")  # gate o at another
    cp[0, 1, 0, 0] = float("nan")  # cell state
    h, c = ops.convlstm_gates(xg, hg, cp, b)
    h_ref, c_ref = reference.convlstm_gates(xg.double(), hg.double(), cp.double(), b.double())
    assert torch.equal(torch.isnan(h), torch.isnan(h_ref))
    assert torch.equal(torch.isnan(c), torch.isnan(c_ref))
    assert torch.isnan(h).sum() == 3


def test_output_layout_follows_input():
    xg, hg, cp, b, _ = make_inputs(2, 4, 6, 6, layout="channels_last", requires_grad=False)
    h, c = ops.convlstm_gates(xg, hg, cp, b)
    assert h.is_contiguous(memory_format=torch.channels_last)
    xg, hg, cp, b, _ = make_inputs(2, 4, 6, 6, requires_grad=False)
    h, c = ops.convlstm_gates(xg, hg, cp, b)
    assert h.is_contiguous()


def test_only_h_or_only_c_used():
    for use in ("h", "c"):
        args = make_inputs(2, 5, 7, 7, dtype=torch.float64, peephole=True)
        outs = []
        for fn in (ops.convlstm_gates, reference.convlstm_gates):
            h, c = fn(*args)
            out = h if use == "h" else c
            outs.append(torch.autograd.grad(out.sum(), [a for a in args if a is not None]))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b)


def test_no_grad_saves_nothing():
    xg, hg, cp, b, w = make_inputs(2, 4, 5, 5, requires_grad=False)
    h, c, gates = FWD(xg, hg, cp, b, w, False)
    assert gates.numel() == 0
    h2, c2, gates2 = FWD(xg, hg, cp, b, w, True)
    assert gates2.shape == xg.shape
    torch.testing.assert_close(h, h2)
    # the saved gates are the activated i, f, g, o
    i, f, g, o = gates2.chunk(4, 1)
    gi, gf, gg, go = (xg + hg + b.view(1, -1, 1, 1)).chunk(4, 1)
    torch.testing.assert_close(i, torch.sigmoid(gi))
    torch.testing.assert_close(g, torch.tanh(gg))


def test_backward_without_saved_gates_is_a_clear_error():
    xg, hg, cp, b, w = make_inputs(2, 4, 5, 5)
    h, c, _ = FWD(xg, hg, cp, b, w, False)
    with pytest.raises(RuntimeError, match="save_gates=False"):
        h.sum().backward()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_grads_are_deterministic_across_runs_and_thread_counts(layout):
    args = make_inputs(4, 16, 32, 32, peephole=True, layout=layout)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, max(threads, 2), 1):
            torch.set_num_threads(n)
            h, c = ops.convlstm_gates(*args)
            runs.append((h, c) + torch.autograd.grad((h + c).sum(), [a for a in args if a is not None]))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_cpu_kernels_use_torchs_thread_pool():
    # Without -fopenmp, at::parallel_for in the extension silently runs on one thread.
    if "parallel backend: OpenMP" in torch.__config__.parallel_info():
        assert pyframepred._C.with_openmp == 1


@pytest.mark.parametrize("peephole", [False, True])
def test_double_backward_is_a_clear_error_not_a_wrong_result(peephole):
    """Under create_graph=True the first-order gradients are the usual ones; differentiating them
    again (a gradient penalty) raises instead of treating the fused backward as a constant."""
    args = make_inputs(2, 3, 5, 4, dtype=torch.float64, peephole=peephole)
    leaves = [a for a in args if a is not None]
    h, c = ops.convlstm_gates(*args)
    plain = torch.autograd.grad((h * h).sum() + c.sum(), leaves)
    h, c = ops.convlstm_gates(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "autograd kernel was not registered" warning
        graph = torch.autograd.grad((h * h).sum() + c.sum(), leaves, create_graph=True)
    for a, b in zip(graph, plain):
        torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="second derivatives.*reference"):
        sum(g.square().sum() for g in graph).backward()
    # The reference op supports it (what the message recommends).
    h, c = reference.convlstm_gates(*args)
    graph = torch.autograd.grad((h * h).sum() + c.sum(), leaves, create_graph=True)
    sum(g.square().sum() for g in graph).backward()
    assert all(a.grad is not None for a in leaves)


def test_gradcheck():
    for peephole, has_h in ((True, True), (False, False)):
        args = make_inputs(2, 3, 4, 5, dtype=torch.float64, peephole=peephole, has_h=has_h)
        assert torch.autograd.gradcheck(ops.convlstm_gates, args, eps=1e-6, atol=1e-7)
    args = make_inputs(1, 2, 3, 3, dtype=torch.float64, peephole=True, layout="channels_last")
    assert torch.autograd.gradcheck(ops.convlstm_gates, args)


@pytest.mark.parametrize("save", [True, False])
@pytest.mark.parametrize("peephole", [True, False])
def test_opcheck_forward(save, peephole):
    args = make_inputs(2, 3, 4, 5, peephole=peephole, requires_grad=save)
    torch.library.opcheck(FWD, (*args, save))


def test_opcheck_backward():
    xg, hg, cp, b, w = make_inputs(2, 3, 4, 5, peephole=True, requires_grad=False)
    _, _, gates = FWD(xg, hg, cp, b, w, True)
    gh, gc = torch.randn_like(cp), torch.randn_like(cp)
    torch.library.opcheck(BWD, (gh, gc, gates, cp, w, True))
    torch.library.opcheck(BWD, (gh, gc, gates, cp, None, False))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(xg, hg, cp, b, w):
        h, c = ops.convlstm_gates(xg, hg, cp, b, w)
        return (h * 2).sum() + c.mean()

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    args = make_inputs(2, 4, 6, 6, peephole=True)
    eager = step(*args)
    g_eager = torch.autograd.grad(eager, [a for a in args if a is not None])
    out = compiled(*args)
    g_comp = torch.autograd.grad(out, [a for a in args if a is not None])
    torch.testing.assert_close(out, eager)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- bad input


def _valid(**over):
    xg, hg, cp, b, w = make_inputs(2, 3, 4, 5, peephole=True, requires_grad=False)
    d = dict(x_gates=xg, h_gates=hg, c_prev=cp, bias=b, peephole=w)
    d.update(over)
    return d


BAD = [
    ("x_gates 3-d", dict(x_gates=torch.randn(12, 4, 5)), "x_gates must be 4-d"),
    ("channels not 4C", dict(x_gates=torch.randn(2, 13, 4, 5)), "4\\*C channels"),
    ("h_gates shape", dict(h_gates=torch.randn(2, 12, 4, 6)), "h_gates must have shape"),
    ("c_prev shape", dict(c_prev=torch.randn(2, 4, 4, 5)), "c_prev must have shape"),
    ("bias shape", dict(bias=torch.randn(3)), "bias must have shape"),
    ("peephole shape", dict(peephole=torch.randn(4, 3)), "peephole must have shape"),
    ("dtype mismatch", dict(c_prev=torch.randn(2, 3, 4, 5, dtype=torch.float64)), "c_prev has dtype"),
    (
        "integer x_gates",
        dict(x_gates=torch.ones(2, 12, 4, 5, dtype=torch.int64)),
        "x_gates must be a floating-point",
    ),
    ("integer bias", dict(bias=torch.ones(12, dtype=torch.int32)), "bias must be a floating-point"),
]


@pytest.mark.parametrize("name,override,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_eager(name, override, match):
    with pytest.raises(RuntimeError, match=match):
        ops.convlstm_gates(**_valid(**override))


@pytest.mark.parametrize("name,override,match", BAD, ids=[b[0] for b in BAD])
def test_bad_input_fake(name, override, match):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        with pytest.raises(RuntimeError, match=match):
            FWD(*_valid(**override).values(), False)


def test_bad_input_device_mismatch():
    from torch._subclasses.fake_tensor import FakeTensorMode

    kwargs = _valid()
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = {k: mode.from_tensor(v) for k, v in kwargs.items()}
        fake["c_prev"] = torch.empty(2, 3, 4, 5, device="meta")
        with pytest.raises(RuntimeError, match="c_prev is on meta but x_gates is on cpu"):
            FWD(*fake.values(), False)


def test_backward_bad_input():
    xg, hg, cp, b, w = make_inputs(2, 3, 4, 5, requires_grad=False)
    _, _, gates = FWD(xg, hg, cp, b, w, True)
    with pytest.raises(RuntimeError, match="grad_h must have shape"):
        BWD(torch.randn(2, 3, 4, 4), cp, gates, cp, None, False)


# ---------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("peephole", [False, True])
def test_cuda_matches_reference(dtype, layout, peephole):
    for shape in [(2, 3, 5, 7), (3, 16, 20, 20), (1, 40, 33, 17)]:
        args = make_inputs(*shape, dtype=dtype, device="cuda", layout=layout, peephole=peephole)
        fused, ref = run_both(args, upcast=dtype in (torch.float16, torch.bfloat16))
        tol = {
            torch.float64: (1e-12, 1e-10),
            torch.float32: (1e-5, 1e-5),
            torch.float16: (4e-2, 1.6e-2),
            torch.bfloat16: (2e-1, 8e-2),
        }[dtype]
        assert_close_results(fused, ref, *tol)


@requires_cuda
def test_cuda_gradcheck_and_opcheck():
    args = make_inputs(2, 3, 4, 5, dtype=torch.float64, device="cuda", peephole=True)
    assert torch.autograd.gradcheck(ops.convlstm_gates, args)
    torch.library.opcheck(FWD, (*args, True))


@requires_cuda
def test_cuda_matches_cpu_bitwise_deterministic():
    args = make_inputs(4, 32, 24, 24, device="cuda", peephole=True)
    runs = []
    for _ in range(2):
        h, c = ops.convlstm_gates(*args)
        runs.append(torch.autograd.grad((h * c).sum(), [a for a in args if a is not None]))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@requires_cuda
def test_cuda_large_int64_indexing():
    # > 2^31 elements in x_gates: exercises the 64-bit index path.
    N, C, H, W = 1, 2**13, 2**8, 2**8 + 1  # x_gates has 4*C*H*W > 2^31 elements
    try:
        xg = torch.randn(N, 4 * C, H, W, device="cuda", dtype=torch.float16)
        cp = torch.randn(N, C, H, W, device="cuda", dtype=torch.float16)
    except torch.OutOfMemoryError:
        pytest.skip("not enough GPU memory")
    h, c = ops.convlstm_gates(xg, None, cp)
    sl = (0, slice(C - 3, C), slice(H - 2, H), slice(W - 2, W))
    gates = [xg[0, k * C + C - 3 : k * C + C, H - 2 :, W - 2 :][None] for k in range(4)]
    h_ref, c_ref = reference.convlstm_gates(torch.cat(gates, 1).float(), None, cp[sl][None].float())
    torch.testing.assert_close(h[sl][None].float(), h_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(c[sl][None].float(), c_ref, atol=2e-3, rtol=2e-3)


def _cell_args(N=4, C=32, H=32, W=32):
    g = torch.Generator().manual_seed(0)
    xg = torch.randn(N, 4 * C, H, W, generator=g)
    c = torch.randn(N, C, H, W, generator=g)
    return xg, c


def test_cell_buffers_are_reused_and_ordinary_tensors():
    # Buffers of >= 1 MiB (here the saved gates, 2 MiB) come from the pool of csrc/buffer_pool.h:
    # a freed one is handed out again, so a training step does not fault in fresh pages.
    xg, c = _cell_args()
    _, _, gates = torch.ops.pyframepred.convlstm_gates_forward(xg, None, c, None, None, True)
    ptr = gates.data_ptr()
    del gates
    _, _, again = torch.ops.pyframepred.convlstm_gates_forward(xg, None, c, None, None, True)
    assert again.data_ptr() == ptr
    # ... and they behave as any CPU tensor: resizable, and their values those of the reference.
    h, c_new = ops.convlstm_gates(xg, None, c, None, None)
    want_h, want_c = reference.convlstm_gates(xg, None, c, None, None)
    torch.testing.assert_close(h, want_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(c_new, want_c, atol=1e-5, rtol=1e-5)
    again.resize_(8, 4 * 32, 32, 32)
    again.fill_(1.0)
    assert again.sum().item() == again.numel()


def test_cell_buffer_pool_off_gives_the_same_results():
    # PYFRAMEPRED_CPU_BUFFER_POOL_MB=0: the cell's buffers come from at::empty; forward and
    # backward still equal the reference (run in a fresh process: the budget is read once).
    code = (
        "import torch, pyframepred\n"
        "from pyframepred import ops, reference\n"
        "g = torch.Generator().manual_seed(0)\n"
        "xg = torch.randn(4, 128, 32, 32, generator=g, requires_grad=True)\n"
        "c = torch.randn(4, 32, 32, 32, generator=g, requires_grad=True)\n"
        "outs = {}\n"
        "for name, f in (('fused', ops.convlstm_gates), ('ref', reference.convlstm_gates)):\n"
        "    h, c1 = f(xg, None, c, None, None)\n"
        "    outs[name] = [h, c1, *torch.autograd.grad((h * h).sum() + c1.sum(), (xg, c))]\n"
        "for a, b in zip(outs['fused'], outs['ref']):\n"
        "    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYFRAMEPRED_CPU_BUFFER_POOL_MB="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
