"""The ConvLSTM layer's copy between planar (NCHW) and interleaved (channels_last) frames
(csrc/cpu/frames_copy.h, the operator ``_copy_frames``): every element lands where ``copy_`` puts
it, at every ISA level, for whole and partial tiles; nothing outside the destination changes; and
what it does not take it declines without writing."""

from __future__ import annotations

import pytest
import torch

import pyframepred.ops  # noqa: F401  (loads the operators)

pytestmark = pytest.mark.cpu_isa

copy_frames = torch.ops.pyframepred._copy_frames

SENTINEL = -7.0


def planar_frames(shape, dtype):
    return torch.randn(shape).to(dtype)


def interleaved_frames(shape, dtype, extra=0):
    """Frames (…, C, H, W) as channels_last inside frames of C + extra channels (as the layer's
    frames of x_t and h_{t-1} side by side): channel stride 1, pixel stride C + extra."""
    *lead, C, H, W = shape
    full = torch.full((*lead, H, W, C + extra), SENTINEL, dtype=dtype)
    return full, full[..., :C].movedim(-1, -3)


# (frame dims, C, H, W): whole 16x16 and 8x8 tiles; channels and pixels that leave partial tiles;
# a single row of pixels.
SHAPES = [
    ((2,), 16, 4, 4),
    ((3,), 32, 8, 8),
    ((2, 3), 16, 8, 6),
    ((2,), 17, 5, 7),
    ((1,), 30, 3, 11),
    ((2, 2), 3, 9, 9),
    ((2,), 64, 1, 24),
    ((1,), 5, 2, 3),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,C,H,W", SHAPES)
@pytest.mark.parametrize("extra", [0, 5])
def test_planar_to_interleaved(lead, C, H, W, extra, dtype):
    src = planar_frames((*lead, C, H, W), dtype)
    full, dst = interleaved_frames(src.shape, dtype, extra)
    assert copy_frames(dst, src)
    assert torch.equal(dst, src)
    assert (full[..., C:] == SENTINEL).all()  # the other channels of the frames are untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,C,H,W", SHAPES)
@pytest.mark.parametrize("extra", [0, 5])
def test_interleaved_to_planar(lead, C, H, W, extra, dtype):
    full, src = interleaved_frames((*lead, C, H, W), dtype, extra)
    src.copy_(torch.randn(src.shape))
    dst = torch.full(src.shape, SENTINEL, dtype=dtype)
    assert copy_frames(dst, src)
    assert torch.equal(dst, src)


def test_batch_major_sequence_into_time_major_frames():
    """The layer's case: a batch-first sequence seen time-major, (T, N, C, H, W) with the batch dim
    outer in memory, into time-major channels_last frames, and its h sequence back out."""
    N, T, C, H, W = 3, 4, 20, 6, 10
    x = torch.randn(N, T, C, H, W).transpose(0, 1)  # (T, N, ...), batch-major
    frames = torch.empty(T * N, C + 8, H, W, memory_format=torch.channels_last)
    dst = frames.narrow(1, 0, C).unflatten(0, (T, N))
    assert copy_frames(dst, x)
    assert torch.equal(dst, x)
    out = torch.empty(N, T, C, H, W).transpose(0, 1)
    assert copy_frames(out, dst)
    assert torch.equal(out, x)


def test_destination_gaps_between_frames_untouched():
    """A destination whose frames are not adjacent in memory (every other frame of a buffer)."""
    src = torch.randn(3, 16, 4, 4)
    buf = torch.full((6, 16, 4, 4), SENTINEL).contiguous(memory_format=torch.channels_last)
    dst = buf[::2]
    assert copy_frames(dst, src)
    assert torch.equal(dst, src)
    assert (buf[1::2] == SENTINEL).all()


def filled(*shape, cl=False, dtype=torch.float32):
    t = torch.full(shape, SENTINEL, dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


@pytest.mark.parametrize(
    "make",
    [
        # same layout on both sides: nothing to transpose
        lambda: (filled(2, 8, 4, 4), torch.randn(2, 8, 4, 4)),
        lambda: (
            filled(2, 8, 4, 4, cl=True),
            torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last),
        ),
        # dtypes: differing, and one it does not move
        lambda: (filled(2, 8, 4, 4, cl=True), torch.randn(2, 8, 4, 4).double()),
        lambda: (
            filled(2, 8, 4, 4, cl=True, dtype=torch.float64),
            torch.randn(2, 8, 4, 4, dtype=torch.float64),
        ),
        # pixels at no single stride (a column slice of planar frames)
        lambda: (filled(2, 8, 4, 3, cl=True), torch.randn(2, 8, 4, 6)[..., ::2]),
        # one channel: both layouts at once
        lambda: (filled(2, 1, 4, 4, cl=True), torch.randn(2, 1, 4, 4)),
        # sizes differ; 3-d
        lambda: (filled(2, 8, 4, 4, cl=True), torch.randn(2, 8, 4, 5)),
        lambda: (filled(8, 4, 4), torch.randn(8, 4, 4)),
        # a destination overlapping itself (expanded)
        lambda: (filled(1, 8, 4, 4, cl=True).expand(3, 8, 4, 4), torch.randn(3, 8, 4, 4)),
    ],
    ids=[
        "same-nchw",
        "same-cl",
        "dtypes",
        "float64",
        "pixel-gaps",
        "one-channel",
        "sizes",
        "3d",
        "self-overlap",
    ],
)
def test_declines_without_writing(make):
    dst, src = make()
    before = dst.clone()
    assert not copy_frames(dst, src)
    assert torch.equal(dst, before)


def test_declines_overlapping_source():
    buf = torch.randn(2, 8, 4, 4)
    dst = buf.as_strided((2, 8, 4, 4), (128, 1, 32, 8))  # the same memory, channels_last strides
    before = buf.clone()
    assert not copy_frames(dst, buf)
    assert torch.equal(buf, before)
