"""The CUDA kernels (csrc/cuda/*_kernels.cuh) run on the CPU execution model (csrc/cuda/emu)
against the reference ops, values and gradients, through the launch configuration the GPU gets
(csrc/cuda/*_launch.cuh). Every template variant is covered: float32/float64/bfloat16/float16,
32- and 64-bit index, NCHW and channels_last, peephole/bias/no-state, vector and scalar paths,
misaligned, strided and expanded inputs, shapes with partial blocks and partial warps. Planted
bugs (barriers removed, thread index shifted) must make these comparisons fail.

Run alone with ``python -m pytest tests -m cuda_emu``.
"""

from __future__ import annotations

import math

import cuda_emu_build
import pytest
import torch

from pyframepred import reference

pytestmark = pytest.mark.cuda_emu

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
DT_ID = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}
TOL = {
    torch.float32: (2e-5, 1e-4),
    torch.float64: (1e-11, 1e-9),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (3e-3, 3e-3),
}  # (atol, rtol)


@pytest.fixture(scope="session")
def emu():
    return cuda_emu_build.build()


@pytest.fixture(autouse=True)
def _options(request):
    if "emu" in request.fixturenames:
        ops = request.getfixturevalue("emu")
        ops.set_options(False, 0)
        ops.launch_log()
        yield
        ops.set_options(False, 0)
    else:
        yield


def close(actual, expected, dtype, scale=1.0, what=""):
    atol, rtol = TOL[dtype]
    actual = actual.double()
    expected = expected.double()
    assert not torch.isnan(actual).any(), f"{what}: NaN (an element was not written)"
    torch.testing.assert_close(actual, expected, atol=atol * scale, rtol=rtol, msg=lambda m: f"{what}: {m}")


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """t's values in the memory layout `kind` (t is 4-d)."""
    if kind == "nchw":
        return t.contiguous()
    if kind == "cl":
        return t.contiguous(memory_format=torch.channels_last)
    if kind == "misaligned":  # data pointer one element off the vector alignment
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        return out
    if kind == "cl_misaligned":
        n, c, h, w = t.shape
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        out = buf[1:].view(n, h, w, c).permute(0, 3, 1, 2)
        out.copy_(t)
        return out
    if kind == "strided":  # a channel slice of a wider tensor: sN != K * P
        n, c, h, w = t.shape
        big = torch.zeros(n, c + 3, h, w, dtype=t.dtype)
        out = big[:, 1 : c + 1]
        out.copy_(t)
        return out
    raise ValueError(kind)


# ----------------------------------------------------------------------------- ConvLSTM


def _gates_ref(z, c_prev, peep):
    """Activated gates i, f, g, o (float64) of pre-activations z, as the forward saves them."""
    zi, zf, zg, zo = z.double().chunk(4, 1)
    c_prev = c_prev.double()
    if peep is not None:
        w = peep.double().view(3, 1, -1, 1, 1)
        zi = zi + w[0] * c_prev
        zf = zf + w[1] * c_prev
    i, f, g = torch.sigmoid(zi), torch.sigmoid(zf), torch.tanh(zg)
    c = f * c_prev + i * g
    if peep is not None:
        zo = zo + w[2] * c
    return torch.cat([i, f, g, torch.sigmoid(zo)], 1)


# (N, C, H, W): vector-friendly, P not a multiple of the vector width (scalar path), C not a
# multiple of it (scalar path in channels_last), partial warps (P/V < 32, C < tile), several
# blocks along both tile dimensions.
CL_SHAPES = [(2, 5, 6, 8), (2, 6, 7, 9), (1, 33, 4, 4), (2, 40, 12, 12)]
CL_CONFIGS = ["full", "no_state", "bias_only", "bare"]  # full: h_gates + bias + peephole


def _forward_inputs(shape, dtype, kind, config, gen):
    n, c, h, w = shape
    x = torch.randn(n, 4 * c, h, w, generator=gen) * 1.5
    hg = torch.randn(n, 4 * c, h, w, generator=gen) * 0.5 if config in ("full", "bias_only") else None
    c_prev = torch.randn(n, c, h, w, generator=gen)
    bias = torch.randn(4 * c, generator=gen) * 0.3 if config != "bare" else None
    peep = torch.randn(3, c, generator=gen) * 0.5 if config in ("full", "no_state") else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    x, hg, c_prev, bias, peep = map(cast, (x, hg, c_prev, bias, peep))
    lay = lambda t: None if t is None else layout(t, kind)  # noqa: E731
    return lay(x), lay(hg), lay(c_prev), bias, peep


def _run_forward(emu, shape, dtype, kind, config, force64=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, hg, c_prev, bias, peep = _forward_inputs(shape, dtype, kind, config, gen)
    if force64:
        emu.set_options(True, 0)
    h, c, gates = emu.convlstm_forward(x, hg, c_prev, bias, peep, True)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    h_ref, c_ref = reference.convlstm_gates(d(x), d(hg), d(c_prev), d(bias), d(peep))
    z = d(x) + (d(hg) if hg is not None else 0) + (d(bias).view(1, -1, 1, 1) if bias is not None else 0)
    return (h, c, gates), (h_ref, c_ref, _gates_ref(z, c_prev, peep))


FORWARD_CASES = [
    (s, dt, k, cfg)
    for dt in DTYPES
    for k in ("nchw", "cl", "misaligned", "strided")
    for s, cfg in zip(CL_SHAPES, CL_CONFIGS)
]


@pytest.mark.parametrize(
    "shape,dtype,kind,config",
    FORWARD_CASES,
    ids=[f"{DT_ID[dt]}-{k}-{cfg}-{'x'.join(map(str, s))}" for s, dt, k, cfg in FORWARD_CASES],
)
def test_convlstm_forward(emu, shape, dtype, kind, config):
    out, ref = _run_forward(emu, shape, dtype, kind, config)
    for name, a, e in zip(("h", "c", "gates"), out, ref):
        close(a, e, dtype, what=name)
    log = emu.launch_log()
    assert "convlstm_forward" in log and " i32" in log
    if kind == "cl":
        assert " cl" in log
    vec = f"vec={4 if dtype != torch.float64 else 2}"
    n, c, h, w = shape
    fast = c if kind == "cl" else h * w
    want_vec = kind in ("nchw", "cl", "strided") and fast % (2 if dtype == torch.float64 else 4) == 0
    assert (vec in log) == want_vec, log


def _backward_inputs(shape, dtype, kind, peep_on, grad_kind, gen):
    n, c, h, w = shape
    z = torch.randn(n, 4 * c, h, w, generator=gen, dtype=torch.float64) * 1.2
    c_prev = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64).to(dtype)
    peep = (torch.randn(3, c, generator=gen, dtype=torch.float64) * 0.5).to(dtype) if peep_on else None
    gates = _gates_ref(z, c_prev, peep).to(dtype)
    if grad_kind == "expanded":  # what (h.sum() + c.sum()).backward() hands in: stride 0
        gh = torch.full((1, 1, 1, 1), 0.75, dtype=dtype).expand(n, c, h, w)
        gc = torch.full((1, 1, 1, 1), -0.5, dtype=dtype).expand(n, c, h, w)
    else:
        gh = layout(torch.randn(n, c, h, w, generator=gen).to(dtype), kind)
        gc = layout(torch.randn(n, c, h, w, generator=gen).to(dtype), kind)
    return gh, gc, layout(gates, kind), layout(c_prev, kind), peep


def _backward_ref(gh, gc, gates, c_prev, peep):
    """Reference gradients by autograd through reference.convlstm_gates, in float64, at the
    pre-activations that give exactly the (rounded) saved gates."""
    g = gates.double()
    cp = c_prev.double()
    i, f, gg, o = g.chunk(4, 1)
    logit = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
    zi, zf, zg, zo = logit(i), logit(f), torch.atanh(gg), logit(o)
    C = cp.shape[1]
    w = None
    if peep is not None:
        w = peep.double().view(3, 1, C, 1, 1)
        zi = zi - w[0] * cp
        zf = zf - w[1] * cp
        zo = zo - w[2] * (f * cp + i * gg)
    z = torch.cat([zi, zf, zg, zo], 1).requires_grad_(True)
    cp_ = cp.clone().requires_grad_(True)
    bias = torch.zeros(4 * C, dtype=torch.float64, requires_grad=True)
    pw = peep.double().clone().requires_grad_(True) if peep is not None else None
    h, c = reference.convlstm_gates(z, None, cp_, bias, pw)
    (h * gh.double()).sum().add_((c * gc.double()).sum()).backward()
    params = torch.zeros(7, C, dtype=torch.float64)
    params[:4] = bias.grad.view(4, C)
    if pw is not None:
        params[4:] = pw.grad
    return z.grad, cp_.grad, params


BACKWARD_CASES = [
    (s, dt, k, peep, gk)
    for dt in DTYPES
    for k, gk in (
        ("nchw", "dense"),
        ("cl", "dense"),
        ("nchw", "expanded"),
        ("cl", "expanded"),
        ("misaligned", "dense"),
        ("cl_misaligned", "dense"),
    )
    for s, peep in zip(CL_SHAPES, (True, False, True, False))
]


@pytest.mark.parametrize(
    "shape,dtype,kind,peep,grad_kind",
    BACKWARD_CASES,
    ids=[
        f"{DT_ID[dt]}-{k}-{gk}-{'peep' if p else 'nopeep'}-{'x'.join(map(str, s))}"
        for s, dt, k, p, gk in BACKWARD_CASES
    ],
)
def test_convlstm_backward(emu, shape, dtype, kind, peep, grad_kind):
    gen = torch.Generator().manual_seed(1)
    gh, gc, gates, c_prev, pw = _backward_inputs(shape, dtype, kind, peep, grad_kind, gen)
    dgates, dcp, params, partial = emu.convlstm_backward(gh, gc, gates, c_prev, pw, True)
    rg, rcp, rparams = _backward_ref(gh, gc, gates, c_prev, pw)
    close(dgates, rg, dtype, what="grad_gates")
    close(dcp, rcp, dtype, what="grad_c_prev")
    n, c, h, w = shape
    close(params, rparams, dtype, scale=math.sqrt(n * h * w), what="grad_params")
    assert not torch.isnan(partial).any(), "a per-block partial sum was not written"
    log = emu.launch_log()
    assert "convlstm_backward" in log
    if kind.startswith("cl"):
        assert " cl" in log, log
    v = 2 if dtype == torch.float64 else 4
    fast = c if kind.startswith("cl") else h * w
    assert ("vec=1" in log) == (not (kind in ("nchw", "cl") and fast % v == 0)), log
    # Without parameter gradients the kernel skips the sums and gives the same input gradients.
    dgates2, dcp2, params2, _ = emu.convlstm_backward(gh, gc, gates, c_prev, pw, False)
    assert torch.equal(dgates2, dgates) and torch.equal(dcp2, dcp) and params2.numel() == 0


MIXED_CASES = [
    (s, dt, k, cfg)
    for dt in (torch.bfloat16, torch.float16)
    for k in ("nchw", "cl", "misaligned")
    for s, cfg in ((CL_SHAPES[0], "full"), (CL_SHAPES[3], "no_state"), (CL_SHAPES[1], "bias_only"))
]


def _f32(t):
    return None if t is None else t.float()


@pytest.mark.parametrize(
    "shape,dtype,kind,config",
    MIXED_CASES,
    ids=[f"{DT_ID[dt]}+f32-{k}-{cfg}-{'x'.join(map(str, s))}" for s, dt, k, cfg in MIXED_CASES],
)
def test_convlstm_mixed_precision(emu, shape, dtype, kind, config):
    """Mixed precision: 16-bit gates (and h, saved gates, grad_gates) with a float32 cell state,
    bias and peephole (and grad_c, grad_c_prev, grad_params)."""
    gen = torch.Generator().manual_seed(4)
    x, hg, c_prev, bias, peep = _forward_inputs(shape, dtype, kind, config, gen)
    c_prev, bias, peep = _f32(c_prev), _f32(bias), _f32(peep)
    h, c, gates = emu.convlstm_forward(x, hg, c_prev, bias, peep, True)
    assert h.dtype == gates.dtype == dtype and c.dtype == torch.float32
    d = lambda t: None if t is None else t.double()  # noqa: E731
    h_ref, c_ref = reference.convlstm_gates(d(x), d(hg), d(c_prev), d(bias), d(peep))
    z = d(x) + (d(hg) if hg is not None else 0) + (d(bias).view(1, -1, 1, 1) if bias is not None else 0)
    close(h, h_ref, dtype, what="h")
    close(c, c_ref, torch.float32, what="c")  # float32 math on exactly representable inputs
    close(gates, _gates_ref(z, c_prev, peep), dtype, what="gates")
    n, ch, hh, ww = shape
    fast = ch if kind == "cl" else hh * ww
    log = emu.launch_log()
    assert ("vec=4" in log) == (kind in ("nchw", "cl") and fast % 4 == 0), log

    gh, gc, g_saved, cp, pw = _backward_inputs(
        shape, dtype, kind if kind != "misaligned" else "nchw", peep is not None, "dense", gen
    )
    gc, cp, pw = _f32(gc), _f32(cp), _f32(pw)
    dgates, dcp, params, partial = emu.convlstm_backward(gh, gc, g_saved, cp, pw, True)
    assert dgates.dtype == dtype and dcp.dtype == params.dtype == torch.float32
    rg, rcp, rparams = _backward_ref(gh, gc, g_saved, cp, pw)
    close(dgates, rg, dtype, what="grad_gates")
    close(dcp, rcp, torch.float32, what="grad_c_prev")
    close(params, rparams, torch.float32, scale=math.sqrt(n * hh * ww), what="grad_params")
    assert not torch.isnan(partial).any()


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("kind", ["nchw", "cl", "misaligned"])
def test_convlstm_index64(emu, dtype, kind):
    """The 64-bit index variants (forced by the test hook) agree with the 32-bit ones and the reference."""
    out64, ref = _run_forward(emu, (2, 8, 5, 8), dtype, kind, "full", force64=True)
    assert " i64" in emu.launch_log()
    for name, a, e in zip(("h", "c", "gates"), out64, ref):
        close(a, e, dtype, what=name)
    gen = torch.Generator().manual_seed(2)
    args = _backward_inputs((2, 8, 5, 8), dtype, kind if kind != "misaligned" else "nchw", True, "dense", gen)
    emu.set_options(True, 0)
    g64 = emu.convlstm_backward(*args, True)
    assert " i64" in emu.launch_log()
    emu.set_options(False, 0)
    g32 = emu.convlstm_backward(*args, True)
    assert " i32" in emu.launch_log()
    for a, b in zip(g64[:3], g32[:3]):
        assert torch.equal(a, b)


def test_convlstm_deterministic_partials(emu):
    gen = torch.Generator().manual_seed(3)
    args = _backward_inputs((3, 16, 12, 12), torch.float32, "cl", True, "dense", gen)
    first = emu.convlstm_backward(*args, True)
    second = emu.convlstm_backward(*args, True)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert first[3].shape[1:] == (7, 16)


# ----------------------------------------------------------------------------- GDL

GDL_SHAPES = [(2, 2, 17, 45), (1, 1, 40, 136), (2, 2, 9, 64), (3, 5, 1)]  # partial warps/strips, bands


def gdl_layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "contiguous":
        return t.contiguous()
    if kind == "transposed":  # W stride != 1: the plan copies it to contiguous rows
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if kind == "misaligned":
        buf = torch.empty(t.numel() + 1, dtype=t.dtype)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        return out
    if kind == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t.contiguous()


def _gdl_inputs(shape, dtype, kind, seed):
    gen = torch.Generator().manual_seed(seed)
    pred = gdl_layout(torch.randn(shape, generator=gen).to(dtype), kind)
    target = gdl_layout(torch.randn(shape, generator=gen).to(dtype), kind)
    return pred, target


GDL_FWD = [
    (s, dt, a, k, r)
    for dt in DTYPES
    for a in (1.0, 2.0, 1.5)
    for (s, k, r) in zip(
        GDL_SHAPES, ("contiguous", "transposed", "misaligned", "channels_last"), (1, 0, 2, 0)
    )
]


@pytest.mark.parametrize(
    "shape,dtype,alpha,kind,reduction",
    GDL_FWD,
    ids=[f"{DT_ID[dt]}-a{a}-{k}-r{r}-{'x'.join(map(str, s))}" for s, dt, a, k, r in GDL_FWD],
)
def test_gdl_forward(emu, shape, dtype, alpha, kind, reduction):
    pred, target = _gdl_inputs(shape, dtype, kind, 4)
    out = emu.gdl_forward(pred, target, alpha, reduction)
    red = ("none", "mean", "sum")[reduction]
    ref = reference.gdl_loss(pred.double(), target.double(), alpha, red)
    n_terms = 2 * pred.numel()
    scale = 1.0 if reduction == 1 else max(1.0, math.sqrt(n_terms))
    close(out, ref, dtype, scale=scale, what="loss")
    log = emu.launch_log()
    assert "gdl_forward" in log and "gdl_finish" in log
    # Dense rows with W stride != 1 (transposed, channels_last) are copied to contiguous rows
    # first; misaligned rows (W stride 1) take the element-wise variant.
    want_pack = kind != "misaligned" and shape[-1] % 4 == 0
    assert (" pack" in log) == want_pack, log


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("shape", [(2, 3, 17, 45), (2, 40, 130)], ids=["17x45", "40x130"])
def test_gdl_partial_sums(emu, dtype, shape):
    """The forward kernel's per-group partial sums, before the finish kernel, sum to each image's loss."""
    pred, target = _gdl_inputs(shape, dtype, "contiguous", 5)
    partial = emu.gdl_partials(pred, target, 1.0)
    assert not torch.isnan(partial).any()
    ref = reference.gdl_loss(pred.double(), target.double(), 1.0, "none").reshape(-1)
    torch.testing.assert_close(
        partial.double().sum(1), ref, atol=1e-3 if dtype != torch.float64 else 1e-10, rtol=1e-5
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
@pytest.mark.parametrize("nout,per_out", [(1, 1), (3, 255), (2, 257), (5, 1000)])
def test_gdl_finish(emu, dtype, nout, per_out):
    """The finish kernel alone: partial blocks (per_out not a multiple of its 256 threads), one
    output per block in a grid-stride loop."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    partial = torch.randn(nout, per_out, dtype=acc)
    out = emu.gdl_finish(partial, 7.0, int(_SCALAR_TYPE[dtype]))
    assert out.dtype == dtype
    close(out, partial.double().sum(1) / 7.0, dtype, scale=math.sqrt(per_out), what="finish")


_SCALAR_TYPE = {torch.float32: 6, torch.float64: 7, torch.float16: 5, torch.bfloat16: 15}

GDL_BWD = [
    (s, dt, a, k, r, tg)
    for dt in DTYPES
    for a in (1.0, 2.0, 1.5)
    for (s, k, r, tg) in zip(
        GDL_SHAPES,
        ("contiguous", "transposed", "misaligned", "contiguous"),
        (1, 0, 2, 0),
        (True, False, True, False),
    )
]


@pytest.mark.parametrize(
    "shape,dtype,alpha,kind,reduction,target_grad",
    GDL_BWD,
    ids=[
        f"{DT_ID[dt]}-a{a}-{k}-r{r}-{'tg' if tg else 'p'}-{'x'.join(map(str, s))}"
        for s, dt, a, k, r, tg in GDL_BWD
    ],
)
def test_gdl_backward(emu, shape, dtype, alpha, kind, reduction, target_grad):
    pred, target = _gdl_inputs(shape, dtype, kind, 6)
    red = ("none", "mean", "sum")[reduction]
    batch = shape[:-2]
    grad_out = torch.randn(batch, dtype=dtype) if reduction == 0 else torch.tensor(1.3, dtype=dtype)
    gp, gt = emu.gdl_backward(grad_out, pred, target, alpha, reduction, target_grad)
    p = pred.double().requires_grad_(True)
    t = target.double().requires_grad_(True)
    reference.gdl_loss(p, t, alpha, red).backward(grad_out.double())
    close(gp, p.grad, dtype, what="grad_pred")
    if target_grad:
        close(gt, t.grad, dtype, what="grad_target")
    else:
        assert gt.numel() == 0
    log = emu.launch_log()
    assert "gdl_backward" in log and ((" target" in log) == target_grad)


# channels_last inputs of the mean and the sum: read in place as interleaved planes of W * C
# values, horizontal pairs C apart, for C = 3 (RGB frames, the channel count the CUDA variant is
# compiled for, in every type but float64); W * 3 a multiple of 4, 1-3 strips, partial strips and
# partial warps. C = 2, 4, 5, 130 and float64: copied to contiguous rows (the CPU kernels take any
# C and type).
GDL_IL_SHAPES = [
    (2, 3, 9, 52),
    (1, 3, 5, 44),
    (2, 3, 7, 4),
    (1, 3, 4, 96),
    (1, 2, 5, 66),
    (2, 4, 7, 40),
    (1, 5, 6, 36),
    (1, 130, 3, 2),
]
GDL_IL = [
    (s, dt, (1.0, 2.0, 1.5)[i % 3], 1 + i % 2, i % 2 == 0)
    for dt in DTYPES
    for i, s in enumerate(GDL_IL_SHAPES)
]
GDL_IL_IDS = [f"{DT_ID[dt]}-a{a}-r{r}-{'x'.join(map(str, s))}" for s, dt, a, r, _ in GDL_IL]


@pytest.mark.parametrize("shape,dtype,alpha,reduction,target_grad", GDL_IL, ids=GDL_IL_IDS)
def test_gdl_interleaved(emu, shape, dtype, alpha, reduction, target_grad):
    """channels_last pred and target of the mean or the sum, forward and backward: with 3
    channels without a copy (the interleaved variant), else copied; gradients channels_last."""
    interleaved = shape[1] == 3 and dtype != torch.float64  # float64: copied
    pred, target = _gdl_inputs(shape, dtype, "channels_last", 12)
    red = ("none", "mean", "sum")[reduction]
    p = pred.double().requires_grad_(True)
    t = target.double().requires_grad_(True)
    ref = reference.gdl_loss(p, t, alpha, red)
    out = emu.gdl_forward(pred, target, alpha, reduction)
    n_terms = 2 * pred.numel()
    close(out, ref.detach(), dtype, scale=1.0 if reduction == 1 else math.sqrt(n_terms), what="loss")
    log = emu.launch_log()  # read once: reading clears it
    assert "gdl_forward" in log and (" interleaved" in log) == interleaved, log
    grad_out = torch.tensor(1.3, dtype=dtype)
    ref.backward(grad_out.double())
    gp, gt = emu.gdl_backward(grad_out, pred, target, alpha, reduction, target_grad)
    assert (" interleaved" in emu.launch_log()) == interleaved
    close(gp, p.grad, dtype, what="grad_pred")
    assert gp.is_contiguous(memory_format=torch.channels_last)
    if target_grad:
        close(gt, t.grad, dtype, what="grad_target")
        assert gt.is_contiguous(memory_format=torch.channels_last)


def _cl_views():
    gen = torch.Generator().manual_seed(13)
    cl = torch.randn(6, 3, 5, 12, generator=gen).contiguous(memory_format=torch.channels_last)
    buf = torch.empty(cl.numel() + 1)
    shifted = buf[1:].as_strided(cl.shape, cl.stride())
    shifted.copy_(cl)
    return {
        # (N, T, C, H, W) from a channels_last (N * T, C, H, W): two batch dims
        "5d": (cl.view(2, 3, 3, 5, 12), True),
        # every other image: a batch stride of two images, not dense
        "sliced": (cl[::2], True),
        # a data pointer one element off: not a Pack at a time, copied
        "misaligned": (shifted, False),
        # W * C = 21: rows not a multiple of a Pack, copied
        "odd": (torch.randn(2, 3, 4, 7, generator=gen).contiguous(memory_format=torch.channels_last), False),
    }


@pytest.mark.parametrize("reduction", [1, 2])
@pytest.mark.parametrize("view", ["5d", "sliced", "misaligned", "odd"])
def test_gdl_interleaved_views(emu, view, reduction):
    """Batched and sliced channels_last views are read in place; planes the vector variant cannot
    read are copied to contiguous rows, with the same result."""
    pred, interleaved = _cl_views()[view]
    target = torch.empty_like(pred).copy_(
        torch.randn(pred.shape, generator=torch.Generator().manual_seed(14))
    )
    red = ("none", "mean", "sum")[reduction]
    p = pred.double().requires_grad_(True)
    ref = reference.gdl_loss(p, target.double(), 2.0, red)
    ref.backward()
    out = emu.gdl_forward(pred, target, 2.0, reduction)
    log = emu.launch_log()
    assert (" interleaved" in log) == interleaved, log
    gp, _ = emu.gdl_backward(torch.tensor(1.0), pred, target, 2.0, reduction, False)
    log = emu.launch_log()
    assert (" interleaved" in log) == interleaved, log
    close(out, ref.detach(), torch.float32, scale=math.sqrt(2 * pred.numel()), what="loss")
    close(gp, p.grad, torch.float32, what="grad_pred")


def test_gdl_interleaved_not_for_none(emu):
    """Reduction 'none' keeps one loss per channel image: channels_last inputs are copied."""
    pred, target = _gdl_inputs((2, 3, 6, 8), torch.float32, "channels_last", 15)
    out = emu.gdl_forward(pred, target, 1.0, 0)
    log = emu.launch_log()
    assert " interleaved" not in log and " pack" in log, log
    close(out, reference.gdl_loss(pred.double(), target.double(), 1.0, "none"), torch.float32, scale=10)


@pytest.mark.parametrize("dtype", DTYPES, ids=DT_ID.get)
def test_gdl_index64(emu, dtype):
    pred, target = _gdl_inputs((2, 19, 36), dtype, "contiguous", 7)
    emu.set_options(True, 0)
    f64 = emu.gdl_forward(pred, target, 2.0, 0)
    b64 = emu.gdl_backward(torch.ones(2, dtype=dtype), pred, target, 2.0, 0, True)
    log = emu.launch_log()
    assert "gdl_forward p2 pack i64" in log and "gdl_backward p2 pack i64 target" in log
    emu.set_options(False, 0)
    assert torch.equal(f64, emu.gdl_forward(pred, target, 2.0, 0))
    b32 = emu.gdl_backward(torch.ones(2, dtype=dtype), pred, target, 2.0, 0, True)
    assert " i32" in emu.launch_log()
    assert all(torch.equal(a, b) for a, b in zip(b64, b32))


# ----------------------------------------------------------------------------- the model itself


def test_emu_barrier_and_shared_memory(emu):
    x = torch.arange(3 * 128, dtype=torch.float32)
    out = emu.selftest("reverse", x, 128, 1, 3, 0)
    assert torch.equal(out, x.view(3, 128).flip(1).reshape(-1))
    emu.set_options(False, 1)  # without the barrier, early threads read unwritten shared memory
    wrong = emu.selftest("reverse", x, 128, 1, 3, 0)
    assert not torch.equal(wrong, out)


def test_emu_warp_collectives(emu):
    x = torch.arange(64, dtype=torch.float32) * 1.5
    out = emu.selftest("warp", x, 64, 1, 1, 0)
    lane = torch.arange(64) % 32
    base = torch.arange(64) - lane
    xv = x.view(-1)
    up = torch.where(lane >= 1, xv[(torch.arange(64) - 1).clamp(min=0)], xv)
    down = torch.where(lane + 3 < 32, xv[(torch.arange(64) + 3).clamp(max=63)], xv)
    assert torch.equal(out[:, 0], up) and torch.equal(out[:, 1], down)
    assert torch.equal(out[:, 2], xv[base + (lane ^ 5)])
    assert torch.equal(out[:, 3], xv[base + 7])
    assert torch.equal(out[:, 4], xv.view(2, 32).sum(1).repeat_interleave(32))
    assert torch.equal(out[:, 5], torch.ones(64))


def test_emu_block_sum(emu):
    x = torch.randn(4 * 256, dtype=torch.float32)
    out = emu.selftest("block_sum", x, 256, 1, 4, 0)
    torch.testing.assert_close(out, x.view(4, 256).sum(1), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "bx,bz,gy,smem,msg",
    [
        (1025, 1, 1, 0, "at most 1024 threads"),
        (64, 65, 1, 0, "z <= 64"),
        (32, 1, 65536, 0, "grid"),
        (32, 1, 1, 49 * 1024, "shared memory"),
        (0, 1, 1, 0, "zero"),
    ],
)
def test_emu_launch_checks(emu, bx, bz, gy, smem, msg):
    x = torch.zeros(4)
    with pytest.raises(RuntimeError, match=msg):
        emu.selftest("noop", x, bx, bz, gy, smem)
    emu.selftest("noop", x, 1024, 1, 1, 48 * 1024)  # the limits themselves are fine
    emu.selftest("noop", x, 1, 64, 65535, 0)


def test_emu_divergence_and_faults(emu):
    x = torch.zeros(8)
    with pytest.raises(RuntimeError, match="barrier divergence"):
        emu.selftest("divergent", x, 32, 1, 1, 0)
    with pytest.raises(RuntimeError, match="exited"):
        emu.selftest("exited_lane", x, 32, 1, 1, 0)
    assert emu.selftest("vector_load", torch.arange(8.0), 1, 4, 1, 0).item() == 4 + 5 + 6 + 7
    with pytest.raises(RuntimeError, match="misaligned"):
        emu.selftest("vector_load", torch.arange(8.0), 1, 1, 1, 0)


# ----------------------------------------------------------------------------- planted bugs


def _all_kernel_results(emu):
    """(name, ok) for one case of every kernel: True when it matches the reference."""
    results = []

    def check(name, fn):
        try:
            results.append((name, bool(fn())))
        except RuntimeError:  # the execution model reported a fault: the suite fails too
            results.append((name, False))

    def allclose(a, b, atol=1e-4):
        return (not torch.isnan(a).any()) and torch.allclose(a.double(), b.double(), atol=atol, rtol=1e-3)

    def fwd(kind):
        out, ref = _run_forward(emu, (2, 16, 8, 8), torch.float32, kind, "full", seed=8)
        return all(allclose(a, e) for a, e in zip(out, ref))

    def bwd(kind):
        gen = torch.Generator().manual_seed(9)
        args = _backward_inputs((2, 16, 8, 8), torch.float32, kind, True, "dense", gen)
        got = emu.convlstm_backward(*args, True)
        ref = _backward_ref(*args)
        return all(allclose(a, e, 1e-3) for a, e in zip(got[:3], ref))

    def gdl_f():
        pred, target = _gdl_inputs((2, 3, 17, 45), torch.float32, "contiguous", 10)
        return allclose(
            emu.gdl_forward(pred, target, 1.0, 0), reference.gdl_loss(pred, target, 1.0, "none"), 1e-3
        )

    def gdl_b():
        pred, target = _gdl_inputs((2, 3, 17, 45), torch.float32, "contiguous", 11)
        gp, _ = emu.gdl_backward(torch.tensor(1.0), pred, target, 1.0, 2, False)
        p = pred.clone().requires_grad_(True)
        reference.gdl_loss(p, target, 1.0, "sum").backward()
        return allclose(gp, p.grad)

    def finish():
        partial = torch.randn(3, 300)
        return allclose(emu.gdl_finish(partial, 1.0, 6), partial.sum(1), 1e-3)

    check("convlstm_forward_nchw", lambda: fwd("nchw"))
    check("convlstm_forward_cl", lambda: fwd("cl"))
    check("convlstm_backward_nchw", lambda: bwd("nchw"))
    check("convlstm_backward_cl", lambda: bwd("cl"))
    check("gdl_forward", gdl_f)
    check("gdl_finish", finish)
    check("gdl_backward", gdl_b)
    return dict(results)


def test_planted_bugs_are_caught(emu):
    clean = _all_kernel_results(emu)
    assert all(clean.values()), clean
    # Barriers removed: every kernel that shares data through shared memory goes wrong (the
    # ConvLSTM forward and NCHW backward and the GDL backward have no barrier).
    emu.set_options(False, 1)
    no_barriers = _all_kernel_results(emu)
    for name in ("convlstm_backward_cl", "gdl_forward", "gdl_finish"):
        assert not no_barriers[name], f"removing the barriers went unnoticed in {name}"
    # Thread index shifted by one: every kernel goes wrong.
    emu.set_options(False, 2)
    shifted = _all_kernel_results(emu)
    assert not any(shifted.values()), f"a shifted thread index went unnoticed: {shifted}"
    emu.set_options(False, 0)
    assert all(_all_kernel_results(emu).values())
