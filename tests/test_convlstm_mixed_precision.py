"""Native mixed precision of the ConvLSTM operators: float16/bfloat16 gates with a float32 cell
state and parameters, the C++ autocast registration (one policy for Python and LibTorch), and
training under ``--amp bf16`` tracking float32 training."""

import math

import pytest
import torch

from pyframepred import ops, reference
from pyframepred.nn import ConvLSTM

LOW = [torch.bfloat16, torch.float16]
LOW_ID = {torch.bfloat16: "bf16", torch.float16: "fp16"}
# One rounding of a result to the low dtype (8 / 11 significant bits), a little headroom.
TOL = {torch.bfloat16: dict(atol=1.5e-2, rtol=1.5e-2), torch.float16: dict(atol=2e-3, rtol=2e-3)}


def _layout(t, cl):
    return t.contiguous(memory_format=torch.channels_last) if cl and t is not None else t


def _cell_inputs(dtype, cl, has_h=True, peephole=True, N=2, C=6, H=5, W=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    xg = _layout((torch.randn(N, 4 * C, H, W, generator=g) * 1.5).to(dtype), cl)
    hg = _layout((torch.randn(N, 4 * C, H, W, generator=g) * 0.5).to(dtype), cl) if has_h else None
    cp = _layout(torch.randn(N, C, H, W, generator=g), cl)
    b = torch.randn(4 * C, generator=g) * 0.3
    pw = torch.randn(3, C, generator=g) * 0.5 if peephole else None
    return xg, hg, cp, b, pw


def _d(t):
    return None if t is None else t.double()


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    ),
]


def _to(device, *ts):
    return [None if t is None else t.to(device) for t in ts]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=LOW_ID.get)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("has_h,peephole", [(True, True), (False, False), (True, False)])
def test_cell_forward_mixed(device, dtype, cl, has_h, peephole):
    xg, hg, cp, b, pw = _to(device, *_cell_inputs(dtype, cl, has_h, peephole))
    h, c = ops.convlstm_gates(xg, hg, cp, b, pw)
    assert h.dtype == dtype and c.dtype == torch.float32
    h_ref, c_ref = reference.convlstm_gates(_d(xg), _d(hg), _d(cp), _d(b), _d(pw))
    # c is float32 math on exactly representable inputs: float32 accuracy, not the low dtype's.
    torch.testing.assert_close(c.double(), c_ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(h.double(), h_ref, **TOL[dtype])
    if cl:
        assert h.is_contiguous(memory_format=torch.channels_last)
        assert c.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", LOW, ids=LOW_ID.get)
@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
def test_cell_backward_mixed(device, dtype, cl):
    xg, hg, cp, b, pw = _to(device, *_cell_inputs(dtype, cl))
    leaves = [t.clone().requires_grad_(True) for t in (xg, hg, cp, b, pw)]
    h, c = ops.convlstm_gates(*leaves)
    g = torch.Generator().manual_seed(3)
    gh, gc = _to(device, torch.randn(h.shape, generator=g), torch.randn(c.shape, generator=g))
    ((h.float() * gh).sum() + (c * gc).sum()).backward()
    ref_leaves = [t.double().requires_grad_(True) for t in (xg, hg, cp, b, pw)]
    hr, cr = reference.convlstm_gates(*ref_leaves)
    ((hr * gh.double()).sum() + (cr * gc.double()).sum()).backward()
    for name, a, r in zip(("x_gates", "h_gates", "c_prev", "bias", "peephole"), leaves, ref_leaves):
        assert a.grad.dtype == a.dtype, name
        # The saved activated gates are in the low dtype: gradients carry its rounding.
        scale = math.sqrt(xg.shape[0] * xg.shape[2] * xg.shape[3]) if name in ("bias", "peephole") else 1
        tol = {k: v * 2 * scale for k, v in TOL[dtype].items()}
        torch.testing.assert_close(a.grad.double(), r.grad, **tol, msg=name)


def test_cell_dtype_errors():
    xg, hg, cp, b, pw = _cell_inputs(torch.bfloat16, False)
    with pytest.raises(RuntimeError, match="float32 with float16/bfloat16 gates"):
        ops.convlstm_gates(xg.float(), hg.float(), cp.bfloat16(), b.bfloat16(), None)
    with pytest.raises(RuntimeError, match="bias has dtype BFloat16 but c_prev has dtype Float"):
        ops.convlstm_gates(xg, hg, cp, b.bfloat16(), None)
    with pytest.raises(RuntimeError, match="h_gates has dtype"):
        ops.convlstm_gates(xg, hg.half(), cp, b, None)
    with pytest.raises(RuntimeError, match="float32 with float16/bfloat16 gates"):
        ops.convlstm_gates(xg.double(), hg.double(), cp, b, None)  # float64 gates, float32 state


@pytest.mark.parametrize("dtype", LOW, ids=LOW_ID.get)
def test_opcheck_mixed(dtype):
    xg, hg, cp, b, pw = _cell_inputs(dtype, False, N=1, C=3, H=3, W=4)
    args = [t.requires_grad_(True) for t in (xg, hg, cp, b, pw)]
    torch.library.opcheck(
        torch.ops.pyframepred.convlstm_gates_forward.default,
        (*args, True),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )
    x, wx, wh = _layer_inputs(dtype, N=1, T=2, Cin=2, C=3, H=4, W=4)
    for x_in in (x, x.detach().float().requires_grad_(True)):  # float32 x: cast as it is read
        torch.library.opcheck(
            torch.ops.pyframepred.convlstm_layer.default,
            (x_in, 2, wx, wh, b, pw, None, None),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
        )


def _layer_inputs(dtype, N=2, T=4, Cin=3, C=6, H=6, W=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T * N, Cin, H, W, generator=g).to(dtype).requires_grad_(True)
    wx = (torch.randn(4 * C, Cin, 3, 3, generator=g) * 0.2).to(dtype).requires_grad_(True)
    wh = (torch.randn(4 * C, C, 3, 3, generator=g) * 0.2).to(dtype).requires_grad_(True)
    return x, wx, wh


@pytest.mark.parametrize("dtype", LOW, ids=LOW_ID.get)
def test_layer_mixed_matches_step_reference(dtype):
    """The layer with low-precision x/weights and float32 state equals stepping the reference
    cell on the same low-precision convolutions with a float32 state."""
    x, wx, wh = _layer_inputs(dtype)
    C, T = wh.shape[1], 4
    N = x.shape[0] // T
    g = torch.Generator().manual_seed(2)
    b = torch.randn(4 * C, generator=g) * 0.3
    h_seq, (h, c) = ops.convlstm_layer(x, T, wx, wh, b, None)
    assert h_seq.dtype == h.dtype == dtype and c.dtype == torch.float32
    xg = torch.nn.functional.conv2d(x, wx, padding=1)
    hr, cr, hs = None, torch.zeros(N, C, *x.shape[2:]), []
    for t in range(T):
        z = xg[t * N : (t + 1) * N]
        if hr is not None:
            z = z + torch.nn.functional.conv2d(hr, wh, padding=1)
        hr, cr = reference.convlstm_gates(z.double(), None, cr.double(), b.double(), None)
        hr = hr.to(dtype)  # h feeds the next low-precision convolution
        hs.append(hr)
    torch.testing.assert_close(h_seq.float(), torch.cat(hs).float(), **TOL[dtype])
    torch.testing.assert_close(c.double(), cr, **TOL[dtype])


@pytest.mark.parametrize("seq_layout", ["bm-nchw", "bm-cl"])
def test_layer_bf16_gradient_in_either_layout(seq_layout):
    """bf16 layer with a float32 state over a batch-first sequence (the modules' form; 16 + 16
    channels: the merged schedule): the sequence's gradient in NCHW or channels_last frames gives
    one set of gradients, and so do ones expanded (of .sum()) and dense. At the amx level, where
    oneDNN computes the hidden data gradient, a dense gradient in the other layout is converted
    once before its sums; elsewhere it is read in place."""
    g = torch.Generator().manual_seed(3)
    N, T, Cin, C, H, W = 2, 4, 16, 16, 6, 7
    cl = torch.channels_last

    def batch_first(t, channels_last):
        return t.flatten(0, 1).contiguous(memory_format=cl).unflatten(0, (N, T)) if channels_last else t

    x = batch_first(torch.randn(N, T, Cin, H, W, generator=g).bfloat16(), seq_layout == "bm-cl")
    wx = (torch.randn(4 * C, Cin, 3, 3, generator=g) * 0.2).bfloat16()
    wh = (torch.randn(4 * C, C, 3, 3, generator=g) * 0.2).bfloat16()
    b = torch.randn(4 * C, generator=g) * 0.3
    gv = torch.randn(N, T, C, H, W, generator=g).bfloat16()

    def grads(seq_grad):
        leaves = [t.detach().requires_grad_(True) for t in (x, wx, wh, b)]
        h_seq, _ = ops.convlstm_layer(leaves[0].transpose(0, 1), T, *leaves[1:], None)
        if seq_grad is None:
            h_seq.sum().backward()
        else:
            h_seq.backward(seq_grad.transpose(0, 1))
        return [t.grad for t in leaves]

    pairs = [
        (grads(batch_first(gv, False)), grads(batch_first(gv, True))),
        (grads(None), grads(batch_first(torch.ones_like(gv), False))),
    ]
    for got, want in pairs:
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, atol=0, rtol=0)


SEQ_FORMS = {
    "frames": lambda x, N, T: x,
    "bf-nchw": lambda x, N, T: x.unflatten(0, (N, T)).transpose(0, 1),
    "bf-cl": lambda x, N, T: (
        x.contiguous(memory_format=torch.channels_last).unflatten(0, (N, T)).transpose(0, 1)
    ),
}


@pytest.mark.cpu_isa
@pytest.mark.parametrize("dtype", LOW, ids=LOW_ID.get)
@pytest.mark.parametrize("form", list(SEQ_FORMS))
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero-h0", "h0"])
@pytest.mark.parametrize("C", [6, 16])
def test_layer_float32_x_cast_as_read(dtype, form, with_h0, C):
    """float32 x beside low-precision weights (what the autocast kernel passes): the layer casts x
    as it reads it (into the merged schedule's frames where that runs: 16 + 16 channels in bf16),
    with exactly the results of x cast beforehand, and x's gradient comes back float32."""
    N, T, Cin, H, W = 2, 3, 16, 5, 6
    g = torch.Generator().manual_seed(4)
    x32 = torch.randn(N * T, Cin, H, W, generator=g) * 3
    wx = (torch.randn(4 * C, Cin, 3, 3, generator=g) * 0.2).to(dtype)
    wh = (torch.randn(4 * C, C, 3, 3, generator=g) * 0.2).to(dtype)
    b = torch.randn(4 * C, generator=g) * 0.3
    h0 = torch.randn(N, C, H, W, generator=g).to(dtype) if with_h0 else None
    c0 = torch.randn(N, C, H, W, generator=g) if with_h0 else None
    gv = torch.randn(T, N, C, H, W, generator=g).to(dtype)

    def run(x):
        leaves = [t.detach().requires_grad_(True) for t in (SEQ_FORMS[form](x, N, T), wx, wh, b)]
        state = (h0, c0) if with_h0 else None
        h_seq, (h, c) = ops.convlstm_layer(leaves[0], T, *leaves[1:], None, state)
        seq_grad = gv if h_seq.dim() == 5 else gv.flatten(0, 1)
        torch.autograd.backward([h_seq, c], [seq_grad, torch.ones_like(c)])
        return (h_seq, h, c), [t.grad for t in leaves]

    (out32, grads32), (out_low, grads_low) = run(x32), run(x32.to(dtype))
    for a, e in zip(out32, out_low):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, atol=0, rtol=0)
    assert grads32[0].dtype == torch.float32
    torch.testing.assert_close(grads32[0], grads_low[0].float(), atol=0, rtol=0)
    for a, e in zip(grads32[1:], grads_low[1:]):
        torch.testing.assert_close(a, e, atol=0, rtol=0)


@pytest.mark.cpu_isa
@pytest.mark.parametrize("N, T, Cin, C", [(4, 3, 16, 16), (4, 3, 8, 24), (4, 3, 8, 16), (1, 8, 8, 16)])
def test_layer_bf16_weight_gradients_over_chunks(N, T, Cin, C):
    """bf16 steps of gates run in chunks in backward (of one step each at N = 4, of six and two
    steps at N = 1), whose weight gradients are summed (in float32 partial sums at the amx and
    avx512_bf16 levels, rounded once): every chunk's share counts, the result within bf16
    accuracy of float64. Step 0 (no h0) adds the products of its x alone into the sums laid out
    for the frames (x, h): by the tile kernel (16 channels), by the VDPBF16PS one (8) beside
    frames of either kernel (32, 24), and in a chunk of several steps after the others."""
    H, W = 64, 64
    g = torch.Generator().manual_seed(5)
    x = torch.randn(T * N, Cin, H, W, generator=g).bfloat16()
    wx = (torch.randn(4 * C, Cin, 3, 3, generator=g) * 0.1).bfloat16()
    wh = (torch.randn(4 * C, C, 3, 3, generator=g) * 0.1).bfloat16()
    b = torch.randn(4 * C, generator=g) * 0.3
    gv = torch.randn(T * N, C, H, W, generator=g)

    def grads(dtype, fused):
        leaves = [t.detach().to(dtype).requires_grad_(True) for t in (wx, wh)]
        xs = x.to(dtype)
        if fused:
            h_seq, _ = ops.convlstm_layer(xs, T, *leaves, b, None)
        else:
            h, c, hs = None, torch.zeros(N, C, H, W, dtype=torch.float64), []
            for t in range(T):
                z = torch.nn.functional.conv2d(xs[t * N : (t + 1) * N], leaves[0], padding=1)
                if h is not None:
                    z = z + torch.nn.functional.conv2d(h, leaves[1], padding=1)
                h, c = reference.convlstm_gates(z, None, c, b.double(), None)
                hs.append(h)
            h_seq = torch.cat(hs)
        h_seq.backward(gv.to(h_seq.dtype))
        return [t.grad.double() for t in leaves]

    for got, want in zip(grads(torch.bfloat16, True), grads(torch.float64, False)):
        rel = (got - want).norm() / want.norm()
        assert rel < 2e-2, rel


def test_layer_x_dtype_errors():
    wx = torch.randn(8, 3, 3, 3).bfloat16()
    wh = torch.randn(8, 2, 3, 3).bfloat16()
    with pytest.raises(RuntimeError, match="weight_x"):
        ops.convlstm_layer(torch.randn(4, 3, 5, 5).double(), 2, wx, wh)  # only float32 x is cast
    with pytest.raises(RuntimeError, match="weight_x"):
        ops.convlstm_layer(torch.randn(4, 3, 5, 5).bfloat16(), 2, wx.float(), wh.float())


def test_autocast_registration_cell():
    xg, hg, cp, b, pw = _cell_inputs(torch.float32, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, c = ops.convlstm_gates(xg, hg, cp.bfloat16(), b, pw)  # a bf16 state is widened
    assert h.dtype == torch.bfloat16 and c.dtype == torch.float32
    h2, c2 = ops.convlstm_gates(xg.bfloat16(), hg.bfloat16(), cp.bfloat16().float(), b, pw)
    assert torch.equal(h, h2) and torch.equal(c, c2)  # exactly the explicit mixed call
    xd = [_d(t) for t in (xg, hg, cp, b, pw)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hd, cd = ops.convlstm_gates(*xd)  # float64 is left alone, as autocast does
    assert hd.dtype == cd.dtype == torch.float64


@pytest.mark.parametrize("with_params", [True, False])
def test_autocast_registration_layer(with_params):
    x, wx, wh = _layer_inputs(torch.float32)
    C = wh.shape[1]
    b = torch.randn(4 * C) * 0.3 if with_params else None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h_seq, (h, c) = ops.convlstm_layer(x, 4, wx, wh, b, None)
    # c stays float32 even when nothing but autocast names the state's dtype.
    assert h_seq.dtype == h.dtype == torch.bfloat16 and c.dtype == torch.float32
    c0 = None if with_params else torch.zeros_like(c)
    h_seq2, (_, c2) = ops.convlstm_layer(
        x.bfloat16(),
        4,
        wx.bfloat16(),
        wh.bfloat16(),
        b,
        None,
        None if c0 is None else (torch.zeros_like(h), c0),
    )
    torch.testing.assert_close(h_seq, h_seq2, atol=0, rtol=0)
    torch.testing.assert_close(c, c2, atol=0, rtol=0)
    h_seq.float().sum().backward()
    assert wx.grad.dtype == wh.grad.dtype == x.grad.dtype == torch.float32


@pytest.mark.parametrize("cl", [False, True], ids=["nchw", "channels_last"])
def test_module_autocast_tracks_float32(cl):
    torch.manual_seed(0)
    m = ConvLSTM(3, [8, 8], 3, peephole=True)
    x = torch.randn(2, 5, 3, 10, 10)
    if cl:
        m = m.to(memory_format=torch.channels_last)
    out32, st32 = m(x)
    loss32 = out32.square().mean()
    grads32 = torch.autograd.grad(loss32, list(m.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, st = m(x)
        loss = out.float().square().mean()
    grads = torch.autograd.grad(loss, list(m.parameters()))
    assert out.dtype == torch.bfloat16 and all(c.dtype == torch.float32 for _, c in st)
    torch.testing.assert_close(out.float(), out32, atol=3e-2, rtol=3e-2)
    for g, g32 in zip(grads, grads32):
        assert g.dtype == torch.float32
        rel = (g - g32).norm() / g32.norm().clamp_min(1e-12)
        assert rel < 0.05, rel  # bf16 convolutions: ~1% relative error per gradient tensor


def test_compiled_module_under_autocast():
    torch.manual_seed(0)
    m = ConvLSTM(2, 4, 3)
    x = torch.randn(1, 3, 2, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager, _ = m(x)
        compiled, (state,) = torch.compile(m, fullgraph=True)(x)
    assert compiled.dtype == torch.bfloat16 and state[1].dtype == torch.float32
    torch.testing.assert_close(compiled.float(), eager.float(), atol=2e-2, rtol=2e-2)
