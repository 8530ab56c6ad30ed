"""conv2d_weight_grad: the weight gradient the ConvLSTM layer's backward batches over its steps.

The CPU kernel (csrc/cpu/conv_cpu.cpp) tiles output channels by groups of vectors (two on AVX2,
four on AVX-512, then tails of two and one) and columns by six; the cases below cover full and
partial tiles of both, kernels other than 3x3, one-pixel rows and columns, row counts that do not
split evenly over threads, both memory layouts, and the shapes it hands to ATen (float64, output
channels not a multiple of the vector width). 3x3 kernels with channels in whole vectors run in
the Winograd domain (csrc/cpu/conv_cpu.cpp's wgrad), float32 as F(4x4, 3x3) at every level and
bfloat16 as F(2x2, 3x3) at avx512_bf16; their cases cover partial tiles (1 to 3 of 4 rows or columns), one-pixel, one-row and two-column frames,
partial register tiles and channel groups, and several blocks of tiles. The oracle is
torch.nn.grad.conv2d_weight in float64.

bfloat16 runs on the AMX tile unit at the amx level (input and output channels multiples of 16),
on VDPBF16PS at the avx512_bf16 level (output channels multiples of 16), and on ATen's below
those or for other channel counts. Its cases cover one and several groups
of 16 channels on both sides, a last lone group of 16 output channels, odd numbers of (tap,
channel-group) pairs, rows that are one, one and a fraction, and several tiles of 32 positions,
kernels 1x1 to 5x5 and 3x1, frames of one row or one column, and row counts that do not split
evenly over threads.
"""

import numpy as np
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
    # 3x3 with channels in whole vectors: the Winograd kernel (Ci = 8: at avx2 and below only).
    # Odd frames (tiles half outside), a one-pixel frame, one-row and two-column frames, Co with
    # a narrower last group, input channels in 6-column register tiles and a tail (16, 48), more
    # tiles than a block, tile counts that do not split evenly over threads, the layer's shapes.
    (3, 32, 48, 5, 7, 3, 3),
    (1, 16, 16, 1, 1, 3, 3),
    (2, 16, 64, 1, 17, 3, 3),
    (2, 48, 32, 17, 2, 3, 3),
    (9, 16, 32, 9, 13, 3, 3),
    (3, 8, 16, 6, 6, 3, 3),
    (2, 64, 256, 16, 16, 3, 3),
    (4, 16, 128, 32, 32, 3, 3),
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


BF16_CASES = [
    # B, Ci, Co, H, W, kh, kw
    (2, 16, 32, 8, 8, 3, 3),  # one partial tile of positions per row
    (3, 32, 48, 5, 37, 3, 3),  # 2 input groups; Co = 48: a lone last group; 37 = 32 + 5 positions
    (2, 16, 16, 7, 33, 5, 5),  # 25 (tap, group) pairs: a lone last pair; shifts of +-2 columns
    (1, 48, 64, 3, 70, 1, 1),  # 3 input groups, 3 tiles per row (the last 6 wide), 1x1 kernel
    (5, 16, 32, 1, 64, 3, 3),  # one-row frames: both padding rows in every tap
    (3, 32, 64, 6, 1, 3, 1),  # one-column frames, a 3x1 kernel
    (7, 16, 32, 3, 3, 3, 3),  # rows not evenly split over threads
    (2, 8, 32, 5, 5, 3, 3),  # C_in not a multiple of 16: ATen's path below avx512_bf16
    # The avx512_bf16 kernel (pairs of positions, any C_in): an odd last pair, C_in tails of the
    # input pack (20 = 16 + 4, 5, 40 = 32 + 8) and of the 6-column tiles, 4 + 1 and 2 + 1
    # groups of 16 output channels, pairs of a row in several chunks of 32 positions (66), a 5x5
    # kernel's both parities of column shift, two-column frames.
    (2, 20, 80, 6, 9, 3, 3),
    (3, 5, 16, 4, 7, 3, 5),
    (1, 40, 48, 2, 66, 3, 3),
    (4, 3, 32, 9, 2, 3, 3),
    # 3x3, channels in multiples of 16: the Winograd kernel at avx512_bf16 (pairs of tiles; an
    # odd tile count leaves a last pair half empty), as in the float32 cases.
    (3, 32, 48, 5, 7, 3, 3),
    (1, 16, 16, 3, 1, 3, 3),
    (2, 16, 64, 1, 17, 3, 3),
    (9, 16, 32, 9, 13, 3, 3),
    (2, 64, 256, 16, 16, 3, 3),
    (7, 16, 32, 32, 31, 3, 3),  # several blocks of tiles per thread, an odd tile count
    # The amx level's slabs of padded input (512 KiB, all kw copies): 8 rows at C_in = 128 and
    # 64 columns (three slabs per 20-row image, the last of 4), 1 at a 5x5 kernel's C_in = 256,
    # and thread shares that start inside an image (3 x 13 rows over 2 threads).
    (2, 128, 64, 20, 64, 3, 3),
    (3, 128, 32, 13, 64, 3, 3),
    (1, 256, 16, 6, 40, 5, 5),
]


@pytest.mark.parametrize("case", BF16_CASES, ids=_ids)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bfloat16_matches_reference(case, layout):
    B, Ci, Co, H, W, kh, kw = case
    x = torch.randn(B, Ci, H, W).bfloat16()
    g = torch.randn(B, Co, H, W).bfloat16()
    if layout == "channels_last":
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    got = ops.conv2d_weight_grad(g, x, (kh, kw))
    assert got.shape == (Co, Ci, kh, kw) and got.dtype == torch.bfloat16
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got.is_contiguous(memory_format=memory_format)
    _assert_bfloat16_close(got, g, x, (kh, kw))


def _assert_bfloat16_close(got, g, x, k):
    """A bfloat16 weight gradient against float64, as close as its kernel at this level allows."""
    want = reference.conv2d_weight_grad(g.double(), x.double(), k)
    if _bf16_winograd(x.shape[1], g.shape[1], *k):
        # V and Y rounded once to bfloat16 before their products: within a few times the error of
        # ATen's direct bfloat16 weight gradient (measured: 1.5-2.2x on random data).
        direct = reference.conv2d_weight_grad(g, x, k)
        scale = want.abs().max().item()
        err = (got.double() - want).abs().max().item()
        err_direct = (direct.double() - want).abs().max().item()
        assert err <= max(BF16_WINOGRAD_FACTOR * err_direct, 2**-9 * scale), (err, err_direct, scale)
        return
    # float32 sums of exact bf16 products, rounded once to bf16 (relative error <= 2^-9).
    torch.testing.assert_close(got.double(), want, rtol=2**-8, atol=1e-4 * want.abs().max().item())


# bfloat16 Winograd weight gradients against float64: within this many times the direct error.
BF16_WINOGRAD_FACTOR = 4


def _bf16_winograd(Ci, Co, kh, kw):
    """Whether bfloat16 runs the Winograd weight gradient (the avx512_bf16 level, 3x3, channels in
    multiples of 16); the amx level keeps its tile kernel."""
    return ops.cpu_isa() == "avx512_bf16" and (kh, kw) == (3, 3) and Ci % 16 == 0 and Co % 16 == 0


def test_bfloat16_channel_slice_of_channels_last_frames():
    # The ConvLSTM layer's weight gradients over the x and h parts of its merged frames: channel
    # slices of channels_last tensors (the AMX kernel reads them in place) give the same results
    # as the slices copied.
    frames = torch.randn(4, 48, 9, 20).bfloat16().contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 64, 9, 20).bfloat16().contiguous(memory_format=torch.channels_last)
    for part in (frames[:, :16], frames[:, 16:]):
        got = ops.conv2d_weight_grad(g, part, (3, 3))
        copied = ops.conv2d_weight_grad(g, part.contiguous(memory_format=torch.channels_last), (3, 3))
        assert torch.equal(got, copied)
        _assert_bfloat16_close(got, g, part, (3, 3))


def test_bfloat16_deterministic():
    x = torch.randn(6, 32, 16, 40).bfloat16().contiguous(memory_format=torch.channels_last)
    g = torch.randn(6, 64, 16, 40).bfloat16().contiguous(memory_format=torch.channels_last)
    a, b = (ops.conv2d_weight_grad(g, x, (3, 3)) for _ in range(2))
    assert torch.equal(a, b)


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


def test_kernel_size_an_int_or_a_pair():
    x, g = torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    assert torch.equal(ops.conv2d_weight_grad(g, x, 3), ops.conv2d_weight_grad(g, x, (3, 3)))
    assert torch.equal(ops.conv2d_weight_grad(g, x, np.int64(3)), ops.conv2d_weight_grad(g, x, [3, 3]))
    for bad in ((3,), (3, 3, 3), (3.0, 3), "33", None, True, (True, 3)):
        for fn in (ops.conv2d_weight_grad, reference.conv2d_weight_grad):
            with pytest.raises(ValueError, match=r"conv2d_weight_grad: kernel_size must be an int or a pair"):
                fn(g, x, bad)
