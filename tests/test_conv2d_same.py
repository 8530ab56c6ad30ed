"""conv2d_same: the ConvLSTM layer's stride-1 'same' convolutions (on the CPU, float32 3x3 ones are
a Winograd F(4x4, 3x3) kernel of ours, bfloat16 ones F(2x2, 3x3)), against the float64
convolution, at every CPU ISA level."""

import pytest
import torch

from pyframepred import ops, reference

pytestmark = pytest.mark.cpu_isa

CASES = [
    # B, Ci, Co, H, W
    (2, 16, 32, 8, 8),  # whole 2x2 tiles
    (3, 32, 48, 5, 7),  # odd frames: the last tile row and column half outside; Co = 48: the
    # last group of output channels narrower than a register tile
    (1, 16, 16, 1, 1),  # a one-pixel frame: one tile, three quarters padding
    (5, 64, 128, 9, 13),  # several blocks of tiles, a partial last block
    (2, 128, 32, 16, 16),  # the layer's data-gradient shape (4C -> C)
    (40, 16, 64, 6, 6),  # many frames of few tiles
    (3, 16, 16, 1, 17),  # one-row frames
    (3, 16, 16, 17, 2),  # two-column frames
]


# bfloat16 Winograd against float64: within this many times the direct convolution's error
BF16_FACTOR = 4


def _ids(case):
    return "x".join(map(str, case))


def _pair(B, Ci, Co, H, W, layout, dtype=torch.float32, k=(3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, Ci, H, W, generator=g, dtype=dtype)
    w = torch.randn(Co, Ci, *k, generator=g, dtype=dtype) / (Ci * k[0] * k[1]) ** 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        w = w.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other frame of a larger batch, every other column
        x = torch.randn(2 * B, Ci, H, 2 * W, generator=g, dtype=dtype)[::2, :, :, ::2]
    return x, w


def _check(got, x, w):
    want = reference.conv2d_same(x.double(), w.double())
    direct = torch.nn.functional.conv2d(x, w, padding=(w.shape[2] // 2, w.shape[3] // 2))
    assert got.shape == want.shape and got.dtype == x.dtype
    # Winograd F(4x4, 3x3)'s transforms multiply by up to 8 (csrc/cpu/conv_cpu.cpp): its float32
    # results were within 5e-6 of the outputs' scale on these cases and on the layer's shapes
    # (up to 128 input channels), 3-17x the direct float32 convolution's error. A wrong transform
    # coefficient is off by a sizeable fraction of the scale.
    scale = want.abs().max().item()
    err = (got.double() - want).abs().max().item()
    err_direct = (direct.double() - want).abs().max().item()
    assert err <= max(4 * err_direct, 1e-5 * scale), (err, err_direct, scale)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_float32_3x3_matches_float64(case, layout):
    x, w = _pair(*case, layout)
    got = ops.conv2d_same(x, w)
    _check(got, x, w)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize(
    "case,k,dtype",
    [
        ((2, 3, 16, 8, 8), (3, 3), torch.float32),  # C_in not a multiple of the vector width
        ((2, 16, 12, 8, 8), (3, 3), torch.float32),  # C_out neither
        ((2, 16, 16, 8, 8), (5, 5), torch.float32),
        ((2, 16, 16, 8, 8), (1, 3), torch.float32),
        ((2, 16, 16, 8, 8), (3, 3), torch.float64),
        ((0, 16, 16, 8, 8), (3, 3), torch.float32),  # no frames
    ],
    ids=["ci3", "co12", "5x5", "1x3", "float64", "empty"],
)
def test_other_cases_take_atens_convolution(case, k, dtype):
    x, w = _pair(*case, "channels_last", dtype=dtype, k=k)
    got = ops.conv2d_same(x, w)
    want = reference.conv2d_same(x, w)
    torch.testing.assert_close(got, want, atol=1e-6 if dtype == torch.float32 else 1e-12, rtol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bfloat16(case):
    """At the avx512_bf16 level bfloat16 3x3 convolutions are Winograd too (V and U rounded once to
    bfloat16, float32 products and sums, VDPBF16PS): held to float64 within a few times the error
    of oneDNN's direct bfloat16 convolution, which rounds only its output. That error varies with
    oneDNN's version (torch 2.11's is up to 2x smaller than 2.13's on these cases) and is small
    where the output is small beside its terms; rounding V and U errs with the size of the terms
    |x||w|, so the bound is also never below 2^-8 of their largest sum (measured up to 0.77 of
    that with torch 2.11 and 2.13, seeds 0-2). Elsewhere (the amx level: oneDNN's tile-unit
    convolutions are faster) bfloat16 is ATen's convolution."""
    x, w = _pair(*case, "channels_last", dtype=torch.bfloat16)
    got = ops.conv2d_same(x, w)
    direct = reference.conv2d_same(x, w)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    if ops.cpu_isa() != "avx512_bf16":
        torch.testing.assert_close(got, direct, atol=0, rtol=0)
        return
    want = reference.conv2d_same(x.double(), w.double())
    scale = want.abs().max().item()
    err = (got.double() - want).abs().max().item()
    err_direct = (direct.double() - want).abs().max().item()
    terms = reference.conv2d_same(x.double().abs(), w.double().abs()).max().item()
    assert err <= max(BF16_FACTOR * err_direct, 2**-8 * terms), (err, err_direct, scale, terms)


def test_data_gradient_as_flipped_convolution():
    # What the layer's backward computes with it: the input's gradient of a convolution is the
    # convolution of the output's gradient with the flipped, transposed weight.
    x, w = _pair(4, 32, 128, 10, 12, "channels_last")
    x.requires_grad_()
    dy = torch.randn(4, 128, 10, 12).contiguous(memory_format=torch.channels_last)
    torch.nn.functional.conv2d(x.double(), w.double(), padding=1).backward(dy.double())
    got = ops.conv2d_same(dy, w.flip(2, 3).transpose(0, 1).contiguous(memory_format=torch.channels_last))
    scale = x.grad.abs().max().item()
    assert (got.double() - x.grad).abs().max().item() <= 4e-6 * scale


def test_opcheck():
    x, w = _pair(2, 16, 32, 5, 7, "channels_last")
    torch.library.opcheck(torch.ops.pyframepred.conv2d_same.default, (x, w))


@pytest.mark.parametrize(
    "x_shape,w_shape,match",
    [
        ((2, 16, 8, 8), (32, 8, 3, 3), "channels in dim 1"),
        ((2, 16, 8), (32, 16, 3, 3), "must be 4-d"),
        ((2, 16, 8, 8), (32, 16, 2, 2), "must be odd"),
    ],
)
def test_bad_input(x_shape, w_shape, match):
    with pytest.raises(RuntimeError, match=match):
        ops.conv2d_same(torch.randn(x_shape), torch.randn(w_shape))


@pytest.mark.parametrize("channels", [4, 16], ids=["aten", "winograd"])
def test_autograd_of_both_convolution_ops(channels):
    # Differentiable in every tensor argument, whichever kernel runs (4 channels: ATen's, 16: our
    # Winograd kernels): gradients as those of F.conv2d in float64.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, channels, 7, 9, generator=g).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(32, channels, 3, 3, generator=g) / 6).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(2, 32, 7, 9, generator=g).contiguous(memory_format=torch.channels_last)

    def grads(x, w, dy, conv, wgrad):
        x, w, dy = (t.detach().requires_grad_() for t in (x, w, dy))
        y = conv(x, w)
        assert y.requires_grad
        loss = (y * dy.detach()).sum() + (wgrad(dy, x, w) * w.detach()).sum()
        return torch.autograd.grad(loss, [x, w, dy])

    got = grads(x, w, dy, ops.conv2d_same, lambda d, a, w: ops.conv2d_weight_grad(d, a, (3, 3)))
    want = grads(
        x.double(),
        w.double(),
        dy.double(),
        lambda a, w: torch.nn.functional.conv2d(a, w, padding=1),
        lambda d, a, w: torch.nn.grad.conv2d_weight(a, w.shape, d, padding=1),
    )
    for a, b in zip(got, want):
        scale = b.abs().max().item()
        assert (a.double() - b).abs().max().item() <= 2e-5 * scale


def test_second_order_gradients():
    # The derivatives are the two ops again, so gradgradcheck passes (float64: ATen's kernels).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(1, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(ops.conv2d_same, (x, w))
    torch.autograd.gradgradcheck(ops.conv2d_same, (x, w))
    torch.autograd.gradcheck(lambda d, a: ops.conv2d_weight_grad(d, a, (3, 3)), (dy, x))
    torch.autograd.gradgradcheck(lambda d, a: ops.conv2d_weight_grad(d, a, (3, 3)), (dy, x))


def test_opcheck_with_gradients():
    x, w = _pair(2, 16, 32, 5, 7, "channels_last")
    torch.library.opcheck(torch.ops.pyframepred.conv2d_same.default, (x.requires_grad_(), w.requires_grad_()))
    dy = torch.randn(2, 32, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(torch.ops.pyframepred.conv2d_weight_grad.default, (dy, x, 3, 3))
