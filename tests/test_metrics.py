"""Metric functions: known values, data ranges, shapes."""

import math

import pytest
import torch

from pyframepred import metrics as M
from pyframepred.reference import gdl_loss


def imgs(*shape):
    return torch.rand(*shape) * 2 - 1


def test_psnr_known_value_and_range():
    t = imgs(2, 3, 16, 16) * 0.5
    p = t + 0.1
    assert torch.allclose(M.psnr(p, t), torch.full((2,), 10 * math.log10(4 / 0.01)), atol=1e-3)
    # same images scaled to [0, 255] with data_range=255 give the same PSNR
    assert torch.allclose(M.psnr(p * 127.5 + 127.5, t * 127.5 + 127.5, 255.0), M.psnr(p, t), atol=1e-3)
    # an exact frame, and one within 8-bit rounding, score the ceiling of 8-bit precision, in
    # any range; a frame one 8-bit step off everywhere scores 10 log10(255^2) = 48.13 dB
    assert M.PSNR_MAX == pytest.approx(58.9226, abs=1e-4)
    for scale in (1.0, 127.5):
        assert torch.allclose(M.psnr(t * scale, t * scale, 2.0 * scale), torch.full((2,), M.PSNR_MAX))
        near = t * scale + scale * 2 / 255 / 4  # a quarter step off
        assert torch.allclose(M.psnr(near, t * scale, 2.0 * scale), torch.full((2,), M.PSNR_MAX))
    step_off = M.psnr(t + 2 / 255, t)
    assert torch.allclose(step_off, torch.full((2,), 20 * math.log10(255)), atol=1e-3)
    assert M.psnr(t, t, eps=1e-10).min() > 100  # an explicit floor


def test_ssim_properties():
    t = imgs(2, 3, 32, 32)
    assert torch.allclose(M.ssim(t, t), torch.ones(2), atol=1e-5)
    noisy = (t + 0.3 * torch.randn_like(t)).clamp(-1, 1)
    s = M.ssim(noisy, t)
    assert (s < 0.95).all() and (s > -1).all()
    assert torch.allclose(M.ssim(noisy, t), M.ssim(t, noisy), atol=1e-6)
    more = (t + 0.8 * torch.randn_like(t)).clamp(-1, 1)
    assert (M.ssim(more, t) < s).all()
    assert M.ssim(imgs(4, 2, 3, 6, 6), imgs(4, 2, 3, 6, 6)).shape == (4, 2)  # small frames


def test_ssim_matches_direct_formula_on_constant_window():
    # With constant images the SSIM is the luminance term only.
    a = torch.full((1, 1, 11, 11), 0.2)
    b = torch.full((1, 1, 11, 11), -0.4)
    c1 = (0.01 * 2) ** 2
    expect = (2 * 0.2 * -0.4 + c1) / (0.2**2 + 0.4**2 + c1)
    assert M.ssim(a, b).item() == pytest.approx(expect, abs=1e-4)


def test_sharpness():
    t = imgs(2, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(t, 3, 1, 1)
    assert (M.sharpness(t, t) > 90).all()
    assert (M.sharpness(blurred, t) < M.sharpness(t + 0.01, t)).all()
    # definition check on a tiny example
    p = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    y = torch.zeros_like(p)
    # interior (1,1): grad_i P = |0 - 1| = 1, grad_j P = |0 - 0| = 0 -> mean |0 - 1| = 1
    assert M.sharpness(p, y).item() == pytest.approx(10 * math.log10(4.0), abs=1e-5)


def test_l2_gdl():
    p, t = imgs(2, 4, 3, 8, 8), imgs(2, 4, 3, 8, 8)
    assert M.l2(p, t).shape == (2, 4)
    assert torch.allclose(M.l2(p, t).mean(), ((p - t) ** 2).mean())
    assert torch.allclose(M.gdl(p, t).mean(), gdl_loss(p, t, 1.0, "mean"), atol=1e-6)


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        M.psnr(imgs(1, 3, 4, 4), imgs(1, 3, 4, 5))
    with pytest.raises(ValueError, match="images"):
        M.ssim(torch.zeros(4, 4), torch.zeros(4, 4))
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="window"):
            M.ssim(imgs(1, 3, 8, 8), imgs(1, 3, 8, 8), window=bad)
    with pytest.raises(ValueError, match="sigma"):
        M.ssim(imgs(1, 3, 8, 8), imgs(1, 3, 8, 8), sigma=0)
