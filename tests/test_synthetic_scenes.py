"""The embedded data set's scenes: what makes them like real footage, checked on rendered frames
(no encoding): natural image statistics, camera motion that is a global motion, layers that
move at their depth's rate, still scenes that stay still, sensor noise, and any frame size."""

import numpy as np
import pytest

from pyframepred.data import synthetic
from pyframepred.data.synthetic_render import CLASSES, _affine, _pink, render_video


def luma(frames):
    f = frames.astype(np.float64)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def spectral_slope(img):
    """Slope of the radially averaged power spectrum in log-log (natural images: about -2)."""
    img = img - img.mean()
    h, w = img.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    p = np.abs(np.fft.fft2(img * win)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    f = np.sqrt(fx**2 + fy**2)
    band = (f > 2.0 / min(h, w)) & (f < 0.35)
    bins = np.logspace(np.log10(f[band].min()), np.log10(f[band].max()), 12)
    idx = np.digitize(f[band], bins)
    xs, ys = [], []
    for k in np.unique(idx):
        sel = idx == k
        xs.append(np.log(f[band][sel].mean()))
        ys.append(np.log(p[band][sel].mean()))
    return np.polyfit(xs, ys, 1)[0]


def best_shift(a, b, radius=6):
    """Integer shift (dy, dx) of ``a`` that best matches ``b`` on the centre, and its error."""
    h, w = a.shape
    r = radius
    core = b[r : h - r, r : w - r]
    best = None
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            err = np.mean((a[r - dy : h - r - dy, r - dx : w - r - dx] - core) ** 2)
            if best is None or err < best[2]:
                best = (dy, dx, err)
    return best


def test_pink_noise_has_the_requested_spectrum():
    rng = np.random.default_rng(0)
    for beta in (0.8, 1.0, 1.4):
        n = _pink(rng, 128, 128, beta)
        assert abs(n.mean()) < 1e-5 and abs(n.std() - 1) < 1e-4
        # amplitude ~ f^-beta is power ~ f^-2beta (the Hann window bends it a little)
        assert abs(spectral_slope(n) + 2 * beta) < 0.35, beta


@pytest.mark.parametrize("cls", CLASSES)
def test_frames_have_natural_image_statistics(cls):
    slopes = [spectral_slope(luma(render_video(cls, 2, 64, 64, [7, g], [7, g, 1]))[0]) for g in range(4)]
    # natural images: about -2 (between -3 and -1.5 for most photographs); flat shapes on a
    # flat background give a spectrum dominated by a few edges, white noise gives 0
    assert -3.3 < np.median(slopes) < -1.4, slopes


def test_a_pan_is_a_global_motion_and_a_still_scene_stays_still():
    pans, stills = [], []
    for g in range(4):
        pan = luma(render_video("CameraPan", 5, 64, 64, [3, g], [3, g, 1]))
        dy, dx, err = best_shift(pan[0], pan[4], radius=10)
        same = np.mean((pan[0][10:-10, 10:-10] - pan[4][10:-10, 10:-10]) ** 2)
        pans.append((abs(dy) + abs(dx), err, same))
        still = luma(render_video("StillScene", 9, 64, 64, [3, g], [3, g, 1]))
        stills.append(np.abs(still[1:] - still[:-1]).mean())
    for moved, err, same in pans:
        assert moved >= 1 and err < 0.5 * same  # a shift explains the pan
    # still: only light, sensor noise (a few levels) and slow objects
    assert max(stills) < 4 and min(stills) > 0


def test_depth_layers_move_at_their_own_rates():
    cam = (np.array([0.0, 2.0]), np.array([0.0, 0.0]), np.array([1.0, 1.0]), np.zeros(2))
    pts = np.array([0.0, 10.0])
    for factor in (0.5, 1.0, 2.0):
        x, y = _affine(cam, factor, pts, np.zeros(2))
        np.testing.assert_allclose(x[1] - x[0], 2.0 * factor)  # parallax: shift x factor
        np.testing.assert_allclose(y, 0.0)
    zoom = (np.zeros(2), np.zeros(2), np.array([1.0, 0.5]), np.zeros(2))
    x, _ = _affine(zoom, 1.0, pts, np.zeros(2))
    np.testing.assert_allclose(x[1], [0.0, 5.0])  # zooming in: a pixel covers less of the world


def test_rendering_is_deterministic_and_any_size_works():
    a = render_video("Handheld", 6, 48, 80, [1, 2], [1, 2, 3])
    b = render_video("Handheld", 6, 48, 80, [1, 2], [1, 2, 3])
    c = render_video("Handheld", 6, 48, 80, [1, 2], [1, 2, 4])
    assert a.shape == (6, 48, 80, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # frames use the range: not flat, not clipped
    assert 20 < a.std() * 4 and (a == 0).mean() < 0.01 and (a == 255).mean() < 0.01
    with pytest.raises(ValueError, match="unknown class"):
        render_video("BouncingSquares", 2, 64, 64, 0, 0)


def test_the_cache_folder_names_the_generator_version(tmp_path):
    root = synthetic.default_dataset_root(
        tmp_path, progress=False, videos_per_class=1, frames=4, classes=["StillScene"]
    )
    assert root.name.startswith(f"scenes-v{synthetic.GENERATOR_VERSION}-64x64-")
    assert synthetic.GENERATOR_VERSION >= 2
