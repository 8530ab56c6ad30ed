"""Mathieu et al.'s evaluation protocol (pyframepred.mathieu): their metric code, the moving-pixel
masks (from their flow images, or estimated), the test-set layout, and the evaluation."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from pyframepred import mathieu as M
from pyframepred import metrics
from pyframepred.data.synthetic_render import _pink
from pyframepred.errors import ConfigError


def texture(h=128, w=128, seed=0):
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(_pink(rng, h, w, 2.0)).double()
    return ((t - t.mean()) / t.std() * 0.4).clamp(-1, 1)


def shifted(tex, dx, dy, size=64, off=32):
    """A (1, 3, size, size) view of ``tex`` whose content moved by (dx, dy): frame(x + d) = view(x)."""
    H, W = tex.shape
    ys, xs = torch.meshgrid(torch.arange(size).double(), torch.arange(size).double(), indexing="ij")
    grid = torch.stack(((xs + off - dx) / (W - 1) * 2 - 1, (ys + off - dy) / (H - 1) * 2 - 1), -1)
    out = torch.nn.functional.grid_sample(tex[None, None], grid[None], mode="bicubic", align_corners=True)
    return out.expand(1, 3, size, size).float()


# ----------------------------------------------------------------------------- metrics


def test_psnr_scales_errors_as_the_code_does_and_counts_every_pixel():
    t = torch.zeros(3, 8, 8)
    p = t + 0.1
    want = 10 * math.log10(255**2 / (128**2 * 0.01))
    assert M.psnr(p, t).item() == pytest.approx(want)
    half = t.clone()
    half[:, :4] = 0.1  # error on half the pixels: MSE halves
    assert M.psnr(half, t).item() == pytest.approx(want + 10 * math.log10(2))
    assert M.psnr(t, t).item() == pytest.approx(10 * math.log10(255**2 / 1e-4))  # the floor


def test_sharpness_of_a_step_edge_by_hand():
    t = torch.zeros(1, 6, 6)
    t[..., 3:] = 1.0  # a vertical edge between columns 2 and 3
    p = torch.zeros(1, 6, 6)  # flat: the edge is lost
    # interior rows 1..4, column 3 carries |dx| = 1 in the target, 0 in the prediction
    want = 10 * math.log10(255**2 / (128**2 * 4 / 36))
    assert M.sharpness(p, t).item() == pytest.approx(want)
    assert M.sharpness(t, t).item() == pytest.approx(10 * math.log10(255**2 / 1e-4))
    # the paper's formula (pyframepred.metrics) is a different number for the same pair
    assert metrics.sharpness(p, t).item() != pytest.approx(M.sharpness(p, t).item())


def _ssim_full_oracle(a, b):
    """Straight from the definition: 8-bit luma, 11x11 Gaussian (sigma 1.5), 'full' convolution
    with zero padding, mean of the SSIM map."""
    x = np.arange(11) - 5
    g = np.exp(-(x**2) / (2 * 1.5**2))
    win = np.outer(g, g)
    win /= win.sum()

    def luma(v):
        return (0.299 * v[0] + 0.587 * v[1] + 0.114 * v[2] + 1) * 127.5

    def full(v):
        H, W = v.shape
        pad = np.pad(v, 10)
        out = np.zeros((H + 10, W + 10))
        for i in range(H + 10):
            for j in range(W + 10):
                out[i, j] = (pad[i : i + 11, j : j + 11] * win).sum()
        return out

    a, b = luma(a), luma(b)
    ma, mb = full(a), full(b)
    saa, sbb, sab = full(a * a) - ma**2, full(b * b) - mb**2, full(a * b) - ma * mb
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma**2 + mb**2 + c1) * (saa + sbb + c2))
    return m.mean()


def test_ssim_matches_the_full_convolution_definition():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 12, 10, generator=g, dtype=torch.float64) * 2 - 1
    b = (a + 0.3 * torch.randn(3, 12, 10, generator=g, dtype=torch.float64)).clamp(-1, 1)
    assert M.ssim(a, b).item() == pytest.approx(_ssim_full_oracle(a.numpy(), b.numpy()), rel=1e-9)
    assert M.ssim(a, a).item() == pytest.approx(1.0)
    batch = torch.stack([a, b])
    assert M.ssim(batch, batch.flip(0)).shape == (2,)


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        M.psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="at least 3x3"):
        M.sharpness(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))


# ----------------------------------------------------------------------------- moving pixels


def test_mask_from_flow_image_is_any_channel_below_0_2():
    img = torch.ones(3, 2, 3)  # white: still
    img[:, 0, 0] = torch.tensor([1.0, 0.1, 1.0])  # saturated magenta: moving
    img[:, 0, 1] = torch.tensor([0.25, 0.3, 0.9])  # pale: still
    img[:, 1, 2] = torch.tensor([0.0, 0.0, 0.0])
    want = torch.tensor([[True, False, False], [False, False, True]])
    assert torch.equal(M.mask_from_flow_image(img), want)


@pytest.mark.parametrize("d", [(0.0, 0.0), (1.5, -2.0), (3.0, 1.0), (6.0, -4.0)])
def test_estimated_flow_recovers_a_known_shift(d):
    tex = texture()
    flow = M.estimate_flow(shifted(tex, 0, 0), shifted(tex, *d))
    inner = flow[0, :, 10:-10, 10:-10]
    assert (inner[0] - d[0]).abs().mean() < 0.3 and (inner[1] - d[1]).abs().mean() < 0.3


def test_moving_mask_finds_a_moving_object_on_a_still_background():
    bg, obj = shifted(texture(seed=1), 0, 0), shifted(texture(seed=2), 0, 0)

    def frame(x, y):
        f = bg.clone()
        f[..., y : y + 20, x : x + 20] = obj[..., 20:40, 20:40]
        return f

    mask = M.moving_mask(frame(18, 22), frame(21, 23))[0]  # the object moves by (3, 1)
    obj_px = torch.zeros(64, 64, dtype=torch.bool)
    obj_px[22:42, 18:38] = True  # where it was
    near = torch.zeros(64, 64, dtype=torch.bool)
    near[14:50, 10:46] = True  # within 8 px of it
    assert mask[obj_px].float().mean() > 0.9
    assert not mask[~near].any()
    assert not M.moving_mask(bg, bg).any()
    with pytest.raises(ConfigError, match="threshold"):
        M.moving_mask(bg, bg, threshold=0)


# ----------------------------------------------------------------------------- the test set


def write_clip(folder, frames, flow_images):
    """frames: uint8 (N, H, W, 3), the first n_in named pred_*, the rest target_*; flow_images:
    {name: uint8 (H, W, 3)}."""
    folder.mkdir(parents=True)
    n_in = len(frames) - 2
    for i, f in enumerate(frames):
        name = f"pred_{i + 1}.png" if i < n_in else f"target_{i - n_in + 1}.png"
        Image.fromarray(f).save(folder / name)
    for name, img in flow_images.items():
        Image.fromarray(img).save(folder / name)


def paper_layout(root, clips=3, H=16, W=24, seed=0):
    rng = np.random.default_rng(seed)
    for c in range(clips):
        frames = rng.integers(0, 256, (6, H, W, 3), dtype=np.uint8)
        white = np.full((H, W, 3), 255, np.uint8)
        flow4, flow_t1 = white.copy(), white.copy()
        flow4[2:6, 3:9] = (255, 30, 200)  # moving: a channel below 0.2
        flow_t1[8:12, 10:20] = (20, 255, 255)
        write_clip(root / str(1 + 10 * c), frames, {"pred_4_flow.png": flow4, "target_1_flow.png": flow_t1})
    return root


def test_test_set_layout_reads_frames_and_masks(tmp_path):
    root = paper_layout(tmp_path / "ucf")
    broken = tmp_path / "ucf" / "999"
    write_clip(broken, np.zeros((6, 16, 24, 3), np.uint8), {})  # no flow images: skipped
    assert M.MathieuTestSet.looks_like(root) and not M.MathieuTestSet.looks_like(tmp_path)
    ds = M.MathieuTestSet(root, n_input=4, steps=2)
    assert len(ds) == 3 and ds.skipped == 1
    clip, masks = ds[0]
    assert clip.shape == (6, 3, 16, 24) and clip.min() >= -1 and clip.max() <= 1
    raw = np.asarray(Image.open(root / "1" / "target_2.png"))
    assert torch.allclose(clip[5], torch.from_numpy((raw - 127.5) / 127.5).permute(2, 0, 1).float())
    assert masks.shape == (2, 16, 24) and masks[0].sum() == 24 and masks[1].sum() == 40
    assert masks[0, 2:6, 3:9].all() and masks[1, 8:12, 10:20].all()
    assert len(M.MathieuTestSet(root, n_input=3, steps=2)) == 3  # the last 3 of 4 inputs
    assert len(M.MathieuTestSet(root, n_input=5, steps=2)) == 0
    with pytest.raises(ConfigError, match="does not exist"):
        M.MathieuTestSet(tmp_path / "missing", 4, 2)


# ----------------------------------------------------------------------------- evaluation


class Oracle(torch.nn.Module):
    """Predicts the true future plus ``noise`` on moving pixels and ``junk`` on still ones."""

    def __init__(self, future, masks, noise, junk):
        super().__init__()
        self.future, self.masks, self.noise, self.junk = future, masks, noise, junk
        self.calls = 0

    def rollout(self, inputs, steps):
        i = self.calls
        self.calls += inputs.shape[0]
        fut = self.future[i : i + inputs.shape[0], :steps]
        m = self.masks[i : i + inputs.shape[0], :steps].unsqueeze(2)
        return torch.where(m, fut + self.noise, fut + self.junk)


def test_evaluation_counts_moving_pixels_only_and_drops_still_clips():
    tex = texture(160, 160)
    # clips of 6 frames panning by 2 px/frame; the last clip has no moving pixels
    clips = torch.stack([torch.cat([shifted(tex, 2 * t + c, 0) for t in range(6)]) for c in range(4)])
    masks = torch.zeros(4, 2, 64, 64, dtype=torch.bool)
    masks[:3, :, 16:48, 16:48] = True
    ds = torch.utils.data.TensorDataset(clips, masks)
    model = Oracle(clips[:, 4:], masks, noise=0.02, junk=0.8)
    res = M.evaluate_mathieu(model, ds, n_input=4, steps=2, batch_size=3)
    assert res["clips"] == 4 and res["model_counted"] == [3, 3] and res["baseline_counted"] == [3, 3]
    share = 32 * 32 / 64**2
    assert res["moving_share"] == pytest.approx([3 * share / 4] * 2)
    # the junk on still pixels does not count: PSNR of the noise on a quarter of the frame
    want = 10 * math.log10(255**2 / (128**2 * 0.02**2 * share))
    assert res["model"]["psnr"] == pytest.approx([want, want], abs=1e-3)
    assert all(b < m for b, m in zip(res["baseline"]["psnr"], res["model"]["psnr"]))
    assert res["baseline"]["psnr"][1] < res["baseline"]["psnr"][0]  # copy-last drifts further
    table = M.format_mathieu_table(res)
    assert "moving pixels only" in table and len(table.splitlines()) == 4


def test_computed_masks_follow_the_frames_before_each_step():
    tex = texture(160, 160)
    still = shifted(tex, 0, 0)
    frames = [still, still, still, still, shifted(tex, 3, 0), shifted(tex, 6, 0)]
    ds = M.with_computed_masks([torch.cat(frames)], n_input=4, steps=2)
    clip, masks = ds[0]
    assert clip.shape == (6, 3, 64, 64)
    assert not masks[0].any()  # frames 3 -> 4: still
    assert masks[1, 8:-8, 8:-8].all()  # frames 4 -> 5: a 3 px pan
    with pytest.raises(ConfigError, match="2 input frames"):
        M.with_computed_masks([torch.cat(frames)], n_input=1, steps=2)
