"""Fused gradient difference loss: values, gradients, layouts, determinism, registration, errors."""

from __future__ import annotations

import pytest
import torch

import pyframepred
from pyframepred import ops, reference
from pyframepred.nn import GDLLoss

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

# The CPU kernel tests run at every CPU ISA level (conftest.py).
pytestmark = pytest.mark.cpu_isa

# (shape) covering 2-d input, H or W = 1, odd sizes (SIMD tails), batch dims, several row bands
# per image on the CPU (H * W > 16384).
SHAPES = [
    (5, 7),
    (1, 1, 1, 1),
    (2, 3, 1, 19),
    (2, 3, 19, 1),
    (2, 2, 17, 33),
    (2, 2, 3, 8, 13),
    (1, 2, 150, 131),
]
ALPHAS = [1.0, 2.0, 1.5, 3.25]
REDUCTIONS = ["none", "mean", "sum"]

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}


def make(shape, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(shape, generator=g, dtype=torch.float64)
    target = torch.randn(shape, generator=g, dtype=torch.float64)
    return pred.to(device=device, dtype=dtype), target.to(device=device, dtype=dtype)


def value_and_grads(fn, pred, target, alpha, reduction, grad_seed=1):
    pred = pred.detach().requires_grad_(True)
    target = target.detach().requires_grad_(True)
    out = fn(pred, target, alpha=alpha, reduction=reduction)
    g = torch.Generator().manual_seed(grad_seed)
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    gp, gt = torch.autograd.grad(out, (pred, target), grad_out)
    return out.detach(), gp, gt


def assert_matches_reference(pred, target, alpha, reduction, tol):
    out, gp, gt = value_and_grads(ops.gdl_loss, pred, target, alpha, reduction)
    ref_out, ref_gp, ref_gt = value_and_grads(reference.gdl_loss, pred, target, alpha, reduction)
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out, **tol)
    torch.testing.assert_close(gp, ref_gp, **tol)
    torch.testing.assert_close(gt, ref_gt, **tol)
    return gp, gt


def test_extension_is_this_checkout():
    assert pyframepred._C.built_with_torch.split(".")[:2] == torch.__version__.split(".")[:2]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(shape, alpha, reduction, dtype):
    pred, target = make(shape, dtype)
    assert_matches_reference(pred, target, alpha, reduction, TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.5])
def test_reduced_precision_cpu(dtype, alpha):
    pred, target = make((2, 3, 21, 37), dtype)
    assert_matches_reference(pred, target, alpha, "none", TOL[dtype])
    assert_matches_reference(pred, target, alpha, "mean", TOL[dtype])


def test_formula_by_hand():
    # One 2x2 image: pairs (0,0)-(1,0), (0,1)-(1,1) vertical, (0,0)-(0,1), (1,0)-(1,1) horizontal.
    p = torch.tensor([[0.0, 1.0], [3.0, -1.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 1.0], [0.0, 2.0]], dtype=torch.float64)
    terms = [
        abs(abs(0 - 1) - abs(3 - 0)),
        abs(abs(2 - 1) - abs(-1 - 1)),
        abs(abs(1 - 1) - abs(1 - 0)),
        abs(abs(2 - 0) - abs(-1 - 3)),
    ]
    assert ops.gdl_loss(p, t, reduction="sum").item() == pytest.approx(sum(terms))
    assert ops.gdl_loss(p, t, alpha=2, reduction="sum").item() == pytest.approx(sum(x * x for x in terms))
    assert ops.gdl_loss(p, t).item() == pytest.approx(sum(terms) / 4)
    # Not |grad t - grad p|: flipping the sign of both gradients of p changes nothing.
    torch.testing.assert_close(ops.gdl_loss(p, t), ops.gdl_loss(-p, t))


def test_height_or_width_one_is_zero_for_that_direction():
    pred, target = make((3, 1, 10))
    ref = reference.gdl_loss(pred, target, reduction="none")
    torch.testing.assert_close(ops.gdl_loss(pred, target, reduction="none"), ref)
    single = torch.randn(4, 1, 1)
    assert torch.equal(ops.gdl_loss(single, torch.randn(4, 1, 1), reduction="none"), torch.zeros(4))


def test_reduction_shapes():
    pred, target = make((2, 3, 4, 5, 6))
    assert ops.gdl_loss(pred, target, reduction="none").shape == (2, 3, 4)
    assert ops.gdl_loss(pred, target, reduction="mean").shape == ()
    assert ops.gdl_loss(pred, target, reduction="sum").shape == ()
    assert ops.gdl_loss(pred[0, 0, 0], target[0, 0, 0], reduction="none").shape == ()
    total = ops.gdl_loss(pred, target, reduction="sum")
    torch.testing.assert_close(ops.gdl_loss(pred, target, reduction="none").sum(), total)
    torch.testing.assert_close(ops.gdl_loss(pred, target), total / pred.numel())


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_kinks_have_zero_subgradient(alpha, reduction):
    # Small integers: many zero image gradients and zero differences (kinks).
    g = torch.Generator().manual_seed(3)
    pred = torch.randint(0, 3, (2, 2, 9, 11), generator=g).double()
    target = torch.randint(0, 3, (2, 2, 9, 11), generator=g).double()
    gp, gt = assert_matches_reference(pred, target, alpha, reduction, TOL[torch.float64])
    # Identical inputs: every pair is a kink, so the loss and all gradients are exactly 0.
    out, gp, gt = value_and_grads(ops.gdl_loss, pred, pred.clone(), alpha, reduction)
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(gp) == 0 and torch.count_nonzero(gt) == 0


def _sliced(x):
    big = x.new_zeros(x.shape[:-2] + (2 * x.shape[-2], 2 * x.shape[-1] + 1))
    big[..., ::2, 1::2] = x
    return big[..., ::2, 1::2]


# Non-contiguous layouts: (name, function of a contiguous tensor giving an equal tensor).
LAYOUTS = {
    "transposed": lambda x: x.transpose(-1, -2).contiguous().transpose(-1, -2),
    "sliced": _sliced,
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "permuted_batch": lambda x: x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("reduction", ["none", "mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous(layout, reduction, dtype):
    pred, target = make((2, 3, 13, 10), dtype)
    p, t = LAYOUTS[layout](pred), LAYOUTS[layout](target)
    assert torch.equal(p, pred) and not p.is_contiguous()
    gp, gt = assert_matches_reference(p, t, 1.5, reduction, TOL[dtype])
    # Gradients are laid out as torch.empty_like (so the fake kernel's metadata is exact).
    assert gp.stride() == torch.empty_like(p).stride()
    assert gt.stride() == torch.empty_like(t).stride()


def _copies(fn) -> int:
    """The copies of whole tensors (aten::copy_ of more than one element) that fn() runs, per
    torch.profiler (a 0-d grad_out converted to float32 is not one)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    big = [e for e in prof.events() if e.name == "aten::copy_" and e.input_shapes and any(e.input_shapes[0])]
    return len(big)


# (N, C, H, W): interleaved rows of W*C values that leave SIMD tails, W = 1 and H = 1, several
# row bands per image (H * W * C > 16384), and C = 2 (a pair distance below the vector width).
CL_SHAPES = [(2, 3, 17, 33), (3, 2, 1, 19), (2, 5, 19, 1), (1, 4, 150, 131), (2, 3, 64, 64)]


@pytest.mark.parametrize("shape", CL_SHAPES, ids=["x".join(map(str, s)) for s in CL_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("alpha,reduction", [(1.0, "mean"), (2.0, "sum"), (1.5, "mean")])
def test_channels_last_is_read_as_interleaved_planes(shape, dtype, alpha, reduction):
    """channels_last inputs with one result (mean, sum): the CPU kernels read each image's
    channels as one plane of W*C interleaved values (horizontal pairs C apart) with no layout
    copy, and write the gradients channels_last in place."""
    pred, target = make(shape, dtype, seed=3)
    p = pred.contiguous(memory_format=torch.channels_last)
    t = target.contiguous(memory_format=torch.channels_last)
    gp, gt = assert_matches_reference(p, t, alpha, reduction, TOL[dtype])
    assert gp.stride() == p.stride() and gt.stride() == t.stride()
    if shape[-1] > 1 and shape[-3] > 1:  # a true channels_last layout (W stride C)

        def fwd_bwd():
            x = p.detach().requires_grad_(True)
            ops.gdl_loss(x, t, alpha=alpha, reduction=reduction).backward()

        assert _copies(fwd_bwd) == 0


def test_strided_rows_are_copied_when_not_interleaved():
    """Rows with W stride != 1 that are not read as interleaved planes (reduction 'none', a
    transposed view, channels_last pred with an NCHW target) are copied once to contiguous rows
    (several times faster than reading them element by element) and give the reference's values."""
    pred, target = make((2, 3, 13, 10))
    cl = torch.channels_last
    cases = {
        "none": (pred.contiguous(memory_format=cl), target.contiguous(memory_format=cl), "none"),
        "transposed": (LAYOUTS["transposed"](pred), LAYOUTS["transposed"](target), "mean"),
        "mixed": (pred.contiguous(memory_format=cl), target, "sum"),
    }
    for name, (p, t, reduction) in cases.items():
        gp, gt = assert_matches_reference(p, t, 1.5, reduction, TOL[torch.float32])
        assert gp.stride() == torch.empty_like(p).stride(), name
        assert _copies(lambda p=p, t=t, r=reduction: ops.gdl_loss(p, t, alpha=1.5, reduction=r)) >= 1, name


@pytest.mark.parametrize("batch_dims", [3, 7])
def test_channels_last_rows_under_batch_dims_that_do_not_merge(batch_dims):
    """Channels-last strides in the last three dims under batch dims that do not merge: 3 fit the
    kernels' batch map (read as interleaved planes), 7 do not (the plan copies them)."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(*([3] * batch_dims), 5, 6, 3, generator=g, dtype=torch.float64)
    view = base[(slice(1, None),) * batch_dims]  # sizes 2, strides 3x apart: no two dims merge
    pred, target = view.movedim(-1, -3), (view * 0.5 + 1).movedim(-1, -3)
    assert pred.stride()[-3:] == (1, 18, 3)
    assert_matches_reference(pred, target, 1.5, "mean", TOL[torch.float64])
    copies = _copies(lambda: ops.gdl_loss(pred, target, alpha=1.5, reduction="mean"))
    assert (copies == 0) == (batch_dims == 3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_channels_last_gradcheck_and_determinism(reduction):
    pred, target = make((2, 3, 5, 6), torch.float64, seed=11)
    p = pred.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    t = target.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ops.gdl_loss(a, b, alpha=1.5, reduction=reduction), (p, t))
    big_p, big_t = (x.contiguous(memory_format=torch.channels_last) for x in make((3, 3, 160, 150)))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, threads, 1):
            torch.set_num_threads(n)
            results.append(value_and_grads(ops.gdl_loss, big_p, big_t, 1.5, reduction))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_expanded_and_many_batch_dims():
    # Expanded target (stride 0 over the batch) and a 9-d input whose batch dims cannot be merged
    # (the kernel then reads a contiguous copy).
    pred, target = make((4, 3, 8, 9))
    assert_matches_reference(pred, target[:1].expand_as(pred), 2.0, "none", TOL[torch.float32])
    x, y = make((2,) * 7 + (5, 6))
    perm = (6, 5, 4, 3, 2, 1, 0, 7, 8)
    xp = x.permute(perm).contiguous().permute(tuple(perm.index(i) for i in range(9)))
    assert torch.equal(xp, x) and not xp.is_contiguous()
    assert_matches_reference(xp, y, 1.0, "sum", TOL[torch.float32])


def test_expanded_and_non_contiguous_grad_out():
    pred, target = make((4, 3, 8, 9))
    pred.requires_grad_(True)
    out = ops.gdl_loss(pred, target, reduction="none")  # (4, 3)
    grad_out = torch.randn(3, 4).t()
    (gp,) = torch.autograd.grad(out, pred, grad_out)
    ref = reference.gdl_loss(pred, target, reduction="none")
    (ref_gp,) = torch.autograd.grad(ref, pred, grad_out)
    torch.testing.assert_close(gp, ref_gp)
    # .sum() backward gives an expanded (stride 0) gradient.
    (gp,) = torch.autograd.grad(ops.gdl_loss(pred, target, reduction="none").sum(), pred)
    (ref_gp,) = torch.autograd.grad(reference.gdl_loss(pred, target, reduction="none").sum(), pred)
    torch.testing.assert_close(gp, ref_gp)


def test_only_target_or_only_pred_requires_grad():
    pred, target = make((2, 5, 6), torch.float64)
    t = target.clone().requires_grad_(True)
    (gt,) = torch.autograd.grad(ops.gdl_loss(pred, t), t)
    (ref,) = torch.autograd.grad(reference.gdl_loss(pred, t), t)
    torch.testing.assert_close(gt, ref)
    p = pred.clone().requires_grad_(True)
    (gp,) = torch.autograd.grad(ops.gdl_loss(p, target, alpha=2.0), p)
    (ref,) = torch.autograd.grad(reference.gdl_loss(p, target, alpha=2.0), p)
    torch.testing.assert_close(gp, ref)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.7])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(alpha, reduction):
    # Random doubles: no pair is within the finite-difference step of a kink.
    pred, target = make((2, 2, 5, 6), torch.float64, seed=7)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p, t: ops.gdl_loss(p, t, alpha=alpha, reduction=reduction), (pred, target)
    )


def test_deterministic_across_runs_and_thread_counts():
    pred, target = make((3, 2, 160, 150))
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, threads, 1, threads):
            torch.set_num_threads(n)
            out, gp, gt = value_and_grads(ops.gdl_loss, pred, target, 1.5, "sum")
            none = ops.gdl_loss(pred, target, alpha=1.5, reduction="none")
            results.append((out, gp, gt, none))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def _opcheck_samples(device="cpu", dtypes=(torch.float32, torch.float64)):
    samples = []
    for dtype in dtypes:
        pred, target = make((2, 3, 6, 7), dtype, device)
        samples.append((pred.requires_grad_(True), target, 1.0, 1))
        samples.append((pred.detach().requires_grad_(True), target.requires_grad_(True), 2.5, 0))
        samples.append((pred.detach().transpose(-1, -2), target.detach().transpose(-1, -2), 2.0, 2))
    return samples


def test_opcheck_forward():
    for args in _opcheck_samples():
        torch.library.opcheck(torch.ops.pyframepred.gdl_loss_forward.default, args)


def test_opcheck_backward():
    pred, target = make((2, 3, 6, 7))
    for reduction, grad_out in (
        (0, torch.randn(2, 3)),
        (1, torch.tensor(0.5)),
        (2, torch.tensor(2.0).expand(())),
    ):
        for target_grad in (False, True):
            torch.library.opcheck(
                torch.ops.pyframepred.gdl_loss_backward.default,
                (grad_out, pred, target, 1.5, reduction, target_grad),
            )


def test_torch_compile_fullgraph():
    pred, target = make((2, 3, 8, 9))

    def step(p, t):
        loss = ops.gdl_loss(p, t, alpha=1.0, reduction="mean") * 2.0
        return loss

    compiled = torch.compile(step, fullgraph=True)
    p = pred.clone().requires_grad_(True)
    out = compiled(p, target)
    out.backward()
    q = pred.clone().requires_grad_(True)
    ref = step(q, target)
    ref.backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(p.grad, q.grad)


def test_module():
    pred, target = make((2, 3, 8, 9))
    loss = GDLLoss(alpha=2, reduction="sum")
    assert "alpha=2.0" in repr(loss) and "'sum'" in repr(loss)
    torch.testing.assert_close(loss(pred, target), reference.gdl_loss(pred, target, 2.0, "sum"))
    torch.testing.assert_close(GDLLoss()(pred, target), reference.gdl_loss(pred, target))
    with pytest.raises(ValueError, match="reduction"):
        GDLLoss(reduction="avg")
    with pytest.raises(ValueError, match="alpha"):
        GDLLoss(alpha=0.5)
    ref_module = GDLLoss(alpha=2, reduction="sum", fused=False)
    assert "fused=False" in repr(ref_module)
    torch.testing.assert_close(ref_module(pred, target), loss(pred, target))


@pytest.mark.parametrize("fused", [True, False])
def test_module_mixed_dtypes_and_scalar_types(fused):
    np = pytest.importorskip("numpy")
    pred, target = make((2, 3, 8, 9))
    # Two float dtypes: computed in the common one, as MSELoss does (e.g. a bf16 prediction under
    # autocast against a float32 target).
    low = pred.bfloat16()
    got = GDLLoss(fused=fused)(low, target)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference.gdl_loss(low.float(), target))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert GDLLoss(fused=fused)(low, target).dtype == torch.float32
    # NumPy scalars for alpha, as Python numbers
    for alpha in (np.float32(2), np.float64(2), np.int64(2)):
        torch.testing.assert_close(GDLLoss(alpha, fused=fused)(pred, target), GDLLoss(2.0)(pred, target))
    with pytest.raises(ValueError, match="a Python or NumPy scalar"):
        GDLLoss(torch.tensor(2.0))
    # integer images: the same error, fused or not (the reference summed them as integers)
    with pytest.raises(RuntimeError, match="pred must be a floating-point tensor"):
        GDLLoss(fused=fused)(pred.long(), target.long())


def test_double_backward_is_a_clear_error_not_a_wrong_result():
    pred, target = make((2, 3, 8, 9), dtype=torch.float64)
    pred.requires_grad_(True)
    (plain,) = torch.autograd.grad(ops.gdl_loss(pred, target, 2.0, "sum"), pred)
    (graph,) = torch.autograd.grad(ops.gdl_loss(pred, target, 2.0, "sum"), pred, create_graph=True)
    torch.testing.assert_close(graph.detach(), plain, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="second derivatives.*reference"):
        graph.square().sum().backward()
    (graph,) = torch.autograd.grad(GDLLoss(2.0, "sum", fused=False)(pred, target), pred, create_graph=True)
    graph.square().sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_bad_input():
    pred, target = make((2, 3, 8, 9))
    # messages name the function called, not the operator behind it (gdl_loss_forward)
    with pytest.raises(RuntimeError, match=r"^gdl_loss: target must have the shape of pred \(2, 3, 8, 9\)"):
        ops.gdl_loss(pred, target[..., :8])
    with pytest.raises(RuntimeError, match="target has dtype .* but pred has dtype"):
        ops.gdl_loss(pred, target.double())
    with pytest.raises(RuntimeError, match="at least 2 dims"):
        ops.gdl_loss(pred[0, 0, 0], target[0, 0, 0])
    with pytest.raises(RuntimeError, match="must not be empty"):
        ops.gdl_loss(pred[:0], target[:0])
    with pytest.raises(RuntimeError, match="floating-point"):
        ops.gdl_loss(pred.long(), target.long())
    with pytest.raises(ValueError, match="alpha must be a finite number >= 1"):
        ops.gdl_loss(pred, target, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        ops.gdl_loss(pred, target, alpha=float("nan"))
    with pytest.raises(ValueError, match="reduction must be one of"):
        ops.gdl_loss(pred, target, reduction="elementwise")
    # The raw operator checks the same in C++.
    with pytest.raises(RuntimeError, match="alpha must be a finite number >= 1"):
        torch.ops.pyframepred.gdl_loss_forward(pred, target, 0.9, 1)
    with pytest.raises(RuntimeError, match="reduction must be 0"):
        torch.ops.pyframepred.gdl_loss_forward(pred, target, 1.0, 3)
    with pytest.raises(RuntimeError, match="grad_out must have the batch shape"):
        torch.ops.pyframepred.gdl_loss_backward(torch.ones(3), pred, target, 1.0, 0, False)
    with pytest.raises(RuntimeError, match="grad_out must be 0-d"):
        torch.ops.pyframepred.gdl_loss_backward(torch.ones(2, 3), pred, target, 1.0, 1, False)
    # Devices: the fake (meta) kernel reports the mismatch with the same message.
    with pytest.raises(RuntimeError, match="target is on meta but pred is on cpu"):
        ops.gdl_loss(pred, target.to("meta"))
    if CUDA:
        with pytest.raises(RuntimeError, match="must be on one device"):
            ops.gdl_loss(pred, target.cuda())


# ----------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU): against the CPU kernel / the reference, determinism, layouts.


@needs_cuda
@pytest.mark.parametrize("shape", SHAPES + [(3, 2, 70, 200)], ids=str)
@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cuda_matches_cpu(shape, alpha, reduction):
    for dtype in (torch.float64, torch.float32):
        pred, target = make(shape, dtype)
        cpu = value_and_grads(ops.gdl_loss, pred, target, alpha, reduction)
        gpu = value_and_grads(ops.gdl_loss, pred.cuda(), target.cuda(), alpha, reduction)
        for a, b in zip(gpu, cpu):
            assert a.is_cuda
            torch.testing.assert_close(a.cpu(), b, **TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.5])
def test_cuda_reduced_precision(dtype, alpha):
    pred, target = make((2, 3, 33, 70), dtype, "cuda")
    for reduction in REDUCTIONS:
        assert_matches_reference(pred, target, alpha, reduction, TOL[dtype])


@needs_cuda
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cuda_non_contiguous(layout):
    pred, target = make((2, 3, 13, 70), torch.float32, "cuda")
    p, t = LAYOUTS[layout](pred), LAYOUTS[layout](target)
    gp, gt = assert_matches_reference(p, t, 1.0, "none", TOL[torch.float32])
    assert gp.stride() == torch.empty_like(p).stride()
    assert_matches_reference(pred, target[:1].expand_as(pred), 2.0, "sum", TOL[torch.float32])


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 17, 36), (2, 3, 64, 64), (2, 4, 9, 20)], ids=str)
@pytest.mark.parametrize("alpha,reduction", [(1.0, "mean"), (2.0, "sum"), (1.5, "mean")])
def test_cuda_channels_last(dtype, shape, alpha, reduction):
    """channels_last frames on CUDA: RGB planes (float32, bf16, fp16) are read in place by the
    interleaved variant, with no copy; float64 and 4 channels are copied; gradients channels_last."""
    pred, target = make(shape, dtype, "cuda", seed=5)
    p = pred.contiguous(memory_format=torch.channels_last)
    t = target.contiguous(memory_format=torch.channels_last)
    gp, gt = assert_matches_reference(p, t, alpha, reduction, TOL[dtype])
    assert gp.stride() == p.stride() and gt.stride() == t.stride()

    def fwd_bwd():
        x = p.detach().requires_grad_(True)
        ops.gdl_loss(x, t, alpha=alpha, reduction=reduction).backward()

    in_place = shape[1] == 3 and dtype != torch.float64
    assert (_copies(fwd_bwd) == 0) == in_place


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_deterministic(dtype):
    pred, target = make((8, 3, 256, 256), dtype, "cuda")
    first = value_and_grads(ops.gdl_loss, pred, target, 1.0, "mean")
    for _ in range(3):
        again = value_and_grads(ops.gdl_loss, pred, target, 1.0, "mean")
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@needs_cuda
def test_cuda_64bit_offsets():
    # An image whose in-image offsets pass 2^30 (the 64-bit indexing path): rows 2^22 apart.
    big = torch.zeros(2**30 + 2**23, dtype=torch.float16, device="cuda")
    H, W, step = 257, 40, 2**22
    pred = big.as_strided((H, W), (step, 1))
    pred.copy_(torch.randn(H, W, device="cuda", dtype=torch.float16))
    target = torch.randn(H, W, device="cuda", dtype=torch.float16)
    assert_matches_reference(pred, target, 1.0, "sum", TOL[torch.float16])
    del big


@needs_cuda
def test_cuda_opcheck_and_compile():
    for args in _opcheck_samples("cuda", (torch.float32, torch.float16)):
        torch.library.opcheck(torch.ops.pyframepred.gdl_loss_forward.default, args)
    pred, target = make((2, 3, 8, 9), torch.float32, "cuda")
    compiled = torch.compile(lambda p, t: ops.gdl_loss(p, t, 2.0, "sum"), fullgraph=True)
    torch.testing.assert_close(compiled(pred, target), reference.gdl_loss(pred, target, 2.0, "sum"))


def test_source_folder_hiding_an_installed_package_is_detected(tmp_path, monkeypatch):
    """Running from a checkout after a non-editable install imports the source package, which has
    no compiled extension; the import error then names the installed copy it hides."""
    from pyframepred import _extension

    assert _extension._installed_elsewhere() is None  # this checkout has its extension
    other = tmp_path / "site-packages" / "pyframepred"
    other.mkdir(parents=True)
    (other / "_C.abi3.so").write_bytes(b"")
    monkeypatch.syspath_prepend(str(other.parent))
    assert _extension._installed_elsewhere() == other.resolve()
