"""The scenes of the embedded synthetic data set: its classes, their shapes, textures and motion.

:func:`render_video` draws one video as uint8 frames; :mod:`pyframepred.data.synthetic` encodes
them and caches the data set (a change here must bump its ``GENERATOR_VERSION``).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CLASSES", "render_video"]


CLASSES = ("BouncingSquares", "TexturedCircles", "MovingDigits", "MixedShapes", "CameraPan", "GravityBalls")

# 5x7 pixel font for the digits 0-9.
_FONT = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}


# --------------------------------------------------------------------------- drawing primitives
def _shape_mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased coverage mask (float32 in [0, 1]) of a shape about ``size`` pixels wide."""
    if kind == "digit":
        bitmap = np.array(
            [[ch == "#" for ch in row] for row in _FONT[int(rng.integers(10))]], dtype=np.float32
        )
        cell = max(1, round(size / 5))
        return np.kron(bitmap, np.ones((cell, cell), np.float32))
    ss = 4  # supersampling factor
    n = size * ss
    c = (np.arange(n, dtype=np.float32) + 0.5) / ss - size / 2  # pixel centres, origin in the middle
    y, x = np.meshgrid(c, c, indexing="ij")
    r = size / 2
    if kind == "square":
        m = np.ones((n, n), bool)
    elif kind == "circle":
        m = x * x + y * y <= r * r
    elif kind == "ring":
        d2 = x * x + y * y
        m = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    elif kind == "diamond":
        m = np.abs(x) + np.abs(y) <= r
    elif kind == "triangle":  # pointing up
        m = (y <= r) & (np.abs(x) <= (y + r) / 2)
    elif kind == "cross":
        w = r * 0.35
        m = (np.abs(x) <= w) | (np.abs(y) <= w)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    return m.reshape(size, ss, size, ss).mean(axis=(1, 3), dtype=np.float32)


def _paste(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray, x: float, y: float) -> None:
    """Alpha-composite ``color`` through ``mask`` onto ``canvas`` at the sub-pixel top-left
    corner ``(x, y)``, using bilinear placement (premultiplied alpha)."""
    h, w = mask.shape
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    alpha = np.zeros((h + 1, w + 1), np.float32)
    for dy, dx, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        alpha[dy : dy + h, dx : dx + w] += wgt * mask
    big_h, big_w = canvas.shape[:2]
    y0, x0 = max(iy, 0), max(ix, 0)
    y1, x1 = min(iy + h + 1, big_h), min(ix + w + 1, big_w)
    if y0 >= y1 or x0 >= x1:
        return
    a = alpha[y0 - iy : y1 - iy, x0 - ix : x1 - ix, None]
    region = canvas[y0:y1, x0:x1]
    region *= 1.0 - a
    region += a * color


def _hsv_color(rng: np.random.Generator, value: float, sat=(0.6, 1.0)) -> np.ndarray:
    h = rng.random() * 6.0
    s = rng.uniform(*sat)
    i = int(h) % 6
    f = h - int(h)
    p, q, t = value * (1 - s), value * (1 - s * f), value * (1 - s * (1 - f))
    rgb = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)][i]
    return np.array(rgb, np.float32)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise plus a low-contrast stripe or checker pattern, float32 (h, w, 3)."""
    import torch
    import torch.nn.functional as F

    base = _hsv_color(rng, rng.uniform(70, 150), sat=(0.2, 0.6))
    cells = int(rng.integers(3, 7))
    noise = torch.from_numpy(rng.standard_normal((1, 3, cells, cells)).astype(np.float32))
    noise = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0]
    noise = noise.permute(1, 2, 0).numpy() * rng.uniform(18, 30)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(6, 14) * max(h, w) / 80
    if rng.random() < 0.5:
        theta = rng.uniform(0, math.pi)
        pattern = np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    else:
        pattern = np.sign(np.sin(math.pi * xx / period) * np.sin(math.pi * yy / period))
    tex = base + noise + rng.uniform(10, 22) * pattern[..., None]
    return np.clip(tex, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------- scenes
_KINDS = {
    "BouncingSquares": ("square",),
    "TexturedCircles": ("circle",),
    "MovingDigits": ("digit",),
    "MixedShapes": ("square", "circle", "triangle", "diamond", "ring", "cross"),
    "CameraPan": ("square", "circle", "triangle", "diamond", "ring", "cross"),
    "GravityBalls": ("circle",),
}
_COUNTS = {
    "BouncingSquares": (1, 3),
    "TexturedCircles": (1, 3),
    "MovingDigits": (1, 2),
    "MixedShapes": (2, 4),
    "CameraPan": (2, 3),
    "GravityBalls": (1, 3),
}


def _background(cls: str, rng: np.random.Generator, h: int, w: int):
    """Background of a group: (world image float32, camera pan padding)."""
    if cls in ("TexturedCircles", "MixedShapes"):
        return _texture(rng, h, w), 0
    if cls == "CameraPan":
        pad = max(8, round(0.2 * max(h, w)))
        # one spare pixel for the bilinear camera window at the far edge
        return _texture(rng, h + 2 * pad + 1, w + 2 * pad + 1), pad
    if cls == "MovingDigits":
        value = rng.uniform(0, 40)
    elif rng.random() < 0.5:
        value = rng.uniform(15, 70)  # dark
    else:
        value = rng.uniform(180, 235)  # light
    color = _hsv_color(rng, value, sat=(0.0, 0.5))
    return np.broadcast_to(color, (h, w, 3)).astype(np.float32), 0


def render_video(cls: str, n_frames: int, height: int, width: int, group_seed, clip_seed) -> np.ndarray:
    """Render one video of class ``cls`` as uint8 ``(n_frames, height, width, 3)`` RGB.

    ``group_seed`` fixes the background, ``clip_seed`` the objects and their motion (both are
    anything :func:`numpy.random.default_rng` accepts).
    """
    if cls not in _KINDS:
        raise ValueError(f"unknown class {cls!r}; choose from {', '.join(CLASSES)}")
    bg_rng = np.random.default_rng(group_seed)
    rng = np.random.default_rng(clip_seed)
    world, pad = _background(cls, bg_rng, height, width)
    wh, ww = world.shape[:2]
    unit = min(height, width) / 64.0  # sizes and speeds are given for 64x64 frames
    bg_value = float(world.mean())

    objects = []
    for _ in range(int(rng.integers(_COUNTS[cls][0], _COUNTS[cls][1] + 1))):
        kind = _KINDS[cls][int(rng.integers(len(_KINDS[cls])))]
        size = max(4, round(rng.uniform(9, 17) * unit * (1.25 if kind == "digit" else 1.0)))
        mask = _shape_mask(kind, size, rng)
        if cls == "MovingDigits":
            color = np.full(3, rng.uniform(200, 255), np.float32)
        else:
            value = rng.uniform(25, 80) if bg_value > 150 else rng.uniform(200, 255)
            color = _hsv_color(rng, value)
        speed = rng.uniform(0.8, 2.6) * unit
        angle = rng.uniform(0, 2 * math.pi)
        h, w = mask.shape
        objects.append(
            {
                "mask": mask,
                "color": color,
                "x": rng.uniform(0, ww - w),
                "y": rng.uniform(0, wh - h),
                "vx": speed * math.cos(angle),
                "vy": speed * math.sin(angle),
            }
        )
    gravity = rng.uniform(0.12, 0.3) * unit if cls == "GravityBalls" else 0.0
    if gravity:
        for ob in objects:  # start in the upper half so that they fall
            ob["y"] = rng.uniform(0, (wh - ob["mask"].shape[0]) / 2)
    cam_x = rng.uniform(0, 2 * pad) if pad else 0.0
    cam_y = rng.uniform(0, 2 * pad) if pad else 0.0
    cam_speed = rng.uniform(0.25, 0.6) * unit if pad else 0.0
    cam_angle = rng.uniform(0, 2 * math.pi)
    cam_vx, cam_vy = cam_speed * math.cos(cam_angle), cam_speed * math.sin(cam_angle)

    out = np.empty((n_frames, height, width, 3), np.uint8)
    for t in range(n_frames):
        canvas = world.copy()
        for ob in objects:
            _paste(canvas, ob["mask"], ob["color"], ob["x"], ob["y"])
        if pad:  # sub-pixel camera window
            ix, iy = math.floor(cam_x), math.floor(cam_y)
            fx, fy = cam_x - ix, cam_y - iy
            win = canvas[iy : iy + height + 1, ix : ix + width + 1]
            frame = (
                (1 - fx) * (1 - fy) * win[:-1, :-1]
                + fx * (1 - fy) * win[:-1, 1:]
                + (1 - fx) * fy * win[1:, :-1]
                + fx * fy * win[1:, 1:]
            )
        else:
            frame = canvas
        out[t] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
        # advance the physics
        for ob in objects:
            h, w = ob["mask"].shape
            ob["vy"] += gravity
            ob["x"] += ob["vx"]
            ob["y"] += ob["vy"]
            for pos, vel, hi in (("x", "vx", ww - w), ("y", "vy", wh - h)):
                if ob[pos] < 0:
                    ob[pos], ob[vel] = -ob[pos], abs(ob[vel])
                elif ob[pos] > hi:
                    ob[pos], ob[vel] = 2 * hi - ob[pos], -abs(ob[vel])
                ob[pos] = min(max(ob[pos], 0.0), float(hi))
        if pad:
            cam_x += cam_vx
            cam_y += cam_vy
            if not 0 <= cam_x <= 2 * pad:
                cam_vx = -cam_vx
                cam_x = min(max(cam_x, 0.0), 2.0 * pad)
            if not 0 <= cam_y <= 2 * pad:
                cam_vy = -cam_vy
                cam_y = min(max(cam_y, 0.0), 2.0 * pad)
    return out
