"""conv2d_weight_grad: the weight gradient the ConvLSTM layer's backward batches over its steps.

The CPU kernel (csrc/cpu/conv_cpu.cpp) tiles output channels by groups of vectors (two on AVX2,
four on AVX-512, then tails of two and one) and columns by six; the cases below cover full and
partial tiles of both, kernels other than 3x3, one-pixel rows and columns, row counts that do not
split evenly over threads, both memory layouts, and the shapes it hands to ATen (float64, output
channels not a multiple of the vector width). The oracle is torch.nn.grad.conv2d_weight in
float64.
"""

import pytest
import torch

from pyframepred import ops, reference

pytestmark = pytest.mark.cpu_isa

CASES = [
    # B, Ci, Co, H, W, kh, kw
    (2, 16, 128, 8, 8, 3, 3),
    (3, 3, 64, 7, 5, 3, 3),  # RGB input: 27 columns, a partial group of 3
    (1, 5, 48, 6, 9, 3, 3),  # Co = 48: a one-vector tail at 8 lanes, 2 + 1 vectors at 16 lanes
    (2, 3, 112, 5, 6, 3, 3),  # Co = 112: 7 vectors at 16 lanes, a group of 4, tails of 2 and 1
    (2, 4, 32, 5, 5, 5, 5),
    (2, 6, 32, 4, 6, 1, 1),
    (2, 2, 16, 6, 4, 3, 5),  # non-square kernel
    (5, 3, 16, 1, 7, 3, 3),  # one-row frames
    (3, 7, 16, 9, 1, 3, 3),  # one-column frames
    (7, 1, 32, 3, 3, 3, 3),  # more rows than threads, not evenly split; one input channel
    (2, 8, 12, 5, 5, 3, 3),  # Co not a multiple of the vector width: ATen's path
]


def _ids(case):
    B, Ci, Co, H, W, kh, kw = case
    return f"B{B}-Ci{Ci}-Co{Co}-{H}x{W}-k{kh}x{kw}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_matches_reference(case, layout):
    B, Ci, Co, H, W, kh, kw = case
    x = torch.randn(B, Ci, H, W)
    g = torch.randn(B, Co, H, W)
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    got = ops.conv2d_weight_grad(g, x, (kh, kw))
    want = reference.conv2d_weight_grad(g.double(), x.double(), (kh, kw))
    assert got.shape == (Co, Ci, kh, kw) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_float64_matches_reference():
    x, g = torch.randn(2, 3, 6, 6, dtype=torch.float64), torch.randn(2, 16, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(
        ops.conv2d_weight_grad(g, x, (3, 3)), reference.conv2d_weight_grad(g, x, (3, 3))
    )


def test_strided_inputs_match_reference():
    x = torch.randn(3, 8, 10, 12)[:, 1:6, ::2, 1::2]  # neither NCHW- nor channels_last-contiguous
    g = torch.randn(3, 64, 5, 12)[..., ::2]
    torch.testing.assert_close(
        ops.conv2d_weight_grad(g, x, (3, 3)).double(),
        reference.conv2d_weight_grad(g.double(), x.double(), (3, 3)),
        rtol=1e-4,
        atol=1e-4,
    )


def test_deterministic():
    x, g = torch.randn(6, 16, 16, 16), torch.randn(6, 64, 16, 16)
    a, b = (ops.conv2d_weight_grad(g, x, (3, 3)) for _ in range(2))
    assert torch.equal(a, b)


def test_opcheck():
    x, g = torch.randn(2, 3, 6, 6), torch.randn(2, 16, 6, 6)
    torch.library.opcheck(torch.ops.pyframepred.conv2d_weight_grad.default, (g, x, 3, 3))


@pytest.mark.parametrize(
    "g_shape, x_shape, k, message",
    [
        ((2, 16, 6, 6), (2, 3, 6, 5), (3, 3), "must agree in batch, height and width"),
        ((2, 16, 6, 6), (1, 3, 6, 6), (3, 3), "must agree in batch, height and width"),
        ((2, 16, 6, 6), (2, 3, 6, 6), (2, 3), "kernel size must be odd"),
        ((16, 6, 6), (2, 3, 6, 6), (3, 3), "must be 4-d"),
    ],
)
def test_bad_input(g_shape, x_shape, k, message):
    with pytest.raises(RuntimeError, match=message):
        ops.conv2d_weight_grad(torch.randn(g_shape), torch.randn(x_shape), k)
