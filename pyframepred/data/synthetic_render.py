"""The scenes of the embedded synthetic data set: natural-looking textures seen by a moving camera.

:func:`render_video` draws one video as uint8 frames; :mod:`pyframepred.data.synthetic` encodes
them and caches the data set (a change here must bump its ``GENERATOR_VERSION``).

What real footage has and flat shapes on flat backgrounds lack, and how each scene gets it:

* **textures with natural statistics** -- 1/f-spectrum noise, "dead leaves" (overlapping
  textured discs with a power-law size distribution, the classic model of natural images'
  scale invariance) and man-made patterns (stripes, bricks, tiles) modulated by noise, in
  natural colours (mostly low saturation, luminance and chroma drawn separately);
* **camera motion** -- pans, zooms, hand-held shake with a slight roll, and still cameras;
* **depth** -- layers that move at different rates with the camera (parallax), a foreground of
  irregular blobs (foliage, posts) and textured objects that occlude each other and the layers
  behind them;
* **varied motion** -- object speeds from still to ~3 px per frame at 64x64, turning paths,
  objects that approach or recede, objects leaving and entering the frame, and motion that
  cannot be extrapolated: velocities that wander, sudden stops and turns, non-rigid wobble;
* **what a sensor adds** -- lighting that drifts or changes (a cloud passing), gaussian sensor
  noise, anti-aliasing (frames are rendered at twice the size and averaged down).

The scene of a *group* (its textures, colours and layers) is shared by all its videos, as a
UCF-101 group shares an actor and a place; each video draws its own camera path, objects,
lighting and noise.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CLASSES", "render_video"]

#: The classes, by what moves: nothing but light and noise, the camera (three ways), the
#: objects, and both with depth.
CLASSES = ("StillScene", "CameraPan", "CameraZoom", "Handheld", "MovingObjects", "Parallax")
_KINDS = frozenset(CLASSES)

_SS = 2  # supersampling: frames are rendered at twice their size, then averaged down
_WORLD = 4.0  # a layer's texture spans this many frame sizes: room for the camera path


# --------------------------------------------------------------------------- textures
def _pink(rng: np.random.Generator, h: int, w: int, beta: float) -> np.ndarray:
    """Zero-mean, unit-variance noise of shape ``(h, w)`` whose amplitude spectrum falls as
    ``1 / f**beta`` (beta ~ 1: natural images)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    f[0, 0] = 1.0
    amp = f ** (-beta)
    amp[0, 0] = 0.0
    spec = amp * (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape))
    img = np.fft.irfft2(spec, s=(h, w))
    return (img / (img.std() + 1e-12)).astype(np.float32)


def _ycc_to_rgb(y, cb, cr):
    return np.stack([y + 1.402 * cr, y - 0.344 * cb - 0.714 * cr, y + 1.772 * cb], axis=-1)


def _palette(rng: np.random.Generator, vivid: bool = False):
    """A natural colour as (luma, cb, cr): mostly greys, earth, foliage and sky tones."""
    y = rng.uniform(45, 200)
    hue = rng.uniform(0, 2 * math.pi)
    sat = rng.uniform(18, 45) if vivid else abs(rng.normal(0, 12))
    return y, sat * math.cos(hue), sat * math.sin(hue)


def _leaves(rng: np.random.Generator, h: int, w: int, count: int, rmin: float, rmax: float):
    """Dead leaves: ``count`` discs and ellipses painted one over another, radii drawn from
    ``p(r) ~ r**-3`` on [rmin, rmax]; each leaf its own colour. Returns (y, cb, cr) planes."""
    y = np.empty((h, w), np.float32)
    cb = np.empty_like(y)
    cr = np.empty_like(y)
    y0, cb0, cr0 = _palette(rng)
    y[:], cb[:], cr[:] = y0, cb0, cr0
    # inverse CDF of r^-3 on [rmin, rmax]
    u = rng.random(count)
    radii = 1.0 / np.sqrt(1.0 / rmin**2 - u * (1.0 / rmin**2 - 1.0 / rmax**2))
    for r in radii:
        cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
        ax = r * rng.uniform(0.6, 1.6)
        ay = r * rng.uniform(0.6, 1.6)
        th = rng.uniform(0, math.pi)
        rr = int(math.ceil(max(ax, ay))) + 1
        ys, xs = (
            slice(max(0, int(cy) - rr), min(h, int(cy) + rr + 1)),
            slice(max(0, int(cx) - rr), min(w, int(cx) + rr + 1)),
        )
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        gy, gx = np.mgrid[ys, xs].astype(np.float32)
        dy, dx = gy + 0.5 - cy, gx + 0.5 - cx
        a = dx * math.cos(th) + dy * math.sin(th)
        b = -dx * math.sin(th) + dy * math.cos(th)
        inside = (a / ax) ** 2 + (b / ay) ** 2 <= 1.0
        ly, lcb, lcr = _palette(rng, vivid=rng.random() < 0.15)
        # a gentle shading across the leaf, as light falls on a curved surface
        shade = 1.0 + 0.12 * (a / max(ax, 1e-3)) * rng.uniform(-1, 1)
        y[ys, xs][inside] = (ly * shade)[inside]
        cb[ys, xs][inside] = lcb
        cr[ys, xs][inside] = lcr
    return y, cb, cr


def _pattern(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """A man-made pattern in [-1, 1]: stripes, bricks or tiles at a random angle."""
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    th = rng.uniform(0, math.pi)
    u = gx * math.cos(th) + gy * math.sin(th)
    v = -gx * math.sin(th) + gy * math.cos(th)
    period = scale * rng.uniform(0.6, 2.0)
    kind = rng.integers(3)
    if kind == 0:  # stripes (planks, blinds)
        return np.tanh(3 * np.sin(2 * math.pi * u / period)).astype(np.float32)
    row = np.floor(v / period)
    if kind == 1:  # bricks: mortar lines, rows offset by half a brick
        uu = (u / (2 * period) + 0.5 * (row % 2)) % 1.0
        vv = (v / period) % 1.0
        mortar = (np.minimum(uu, 1 - uu) < 0.04) | (np.minimum(vv, 1 - vv) < 0.08)
        return np.where(mortar, -1.0, 0.4).astype(np.float32)
    col = np.floor(u / period)  # tiles: a checker of two tones with grout
    uu, vv = (u / period) % 1.0, (v / period) % 1.0
    grout = (np.minimum(uu, 1 - uu) < 0.05) | (np.minimum(vv, 1 - vv) < 0.05)
    return np.where(grout, -1.0, np.where((row + col) % 2 == 0, 0.6, -0.2)).astype(np.float32)


def _texture(rng: np.random.Generator, h: int, w: int, unit: float) -> np.ndarray:
    """A natural-looking colour texture, float32 ``(h, w, 3)`` in about [0, 255]; ``unit`` is
    the size in texels of one pixel of a 64x64 frame (feature sizes scale with it)."""
    kind = rng.choice(["leaves", "noise", "pattern"], p=[0.5, 0.3, 0.2])
    if kind == "leaves":
        area = h * w / (unit * unit)
        y, cb, cr = _leaves(rng, h, w, int(area / 25) + 20, 1.5 * unit, 40 * unit)
        y = y + rng.uniform(4, 12) * _pink(rng, h, w, rng.uniform(0.9, 1.3))
    else:
        y0, cb0, cr0 = _palette(rng)
        y = y0 + rng.uniform(15, 40) * _pink(rng, h, w, rng.uniform(0.8, 1.4))
        cb = cb0 + rng.uniform(3, 12) * _pink(rng, h, w, rng.uniform(1.2, 1.8))
        cr = cr0 + rng.uniform(3, 12) * _pink(rng, h, w, rng.uniform(1.2, 1.8))
        if kind == "pattern":
            y = y + rng.uniform(15, 35) * _pattern(rng, h, w, rng.uniform(4, 12) * unit)
    return np.clip(_ycc_to_rgb(y, cb, cr), 0, 255).astype(np.float32)


def _blobs(rng: np.random.Generator, h: int, w: int, unit: float, cover: float) -> np.ndarray:
    """Soft coverage in [0, 1] of irregular blobs (foliage, posts, rocks) over about ``cover``
    of the area: thresholded smooth noise, or vertical posts."""
    if rng.random() < 0.3:  # posts / trunks: vertical bands of random widths
        gx = np.arange(w, dtype=np.float32)
        m = np.zeros(w, np.float32)
        for _ in range(int(rng.integers(2, 6))):
            c, half = rng.uniform(0, w), rng.uniform(1.5, 5) * unit
            m = np.maximum(m, np.clip(half - np.abs(gx - c), 0, 1))
        return np.broadcast_to(m, (h, w)).astype(np.float32).copy()
    n = _pink(rng, h, w, rng.uniform(1.6, 2.2))
    thr = np.quantile(n, 1.0 - cover)
    return np.clip((n - thr) * 6.0, 0.0, 1.0).astype(np.float32)


def _sprite(rng: np.random.Generator, size: float, unit: float) -> np.ndarray:
    """A textured object as premultiplied RGBA, float32 ``(s, s, 4)``, ``size`` texels across
    (plus a transparent border)."""
    s = int(math.ceil(size)) + 4
    c = (np.arange(s, dtype=np.float32) + 0.5) - s / 2
    gy, gx = np.meshgrid(c, c, indexing="ij")
    r = size / 2
    kind = rng.integers(4)
    if kind == 0:  # ellipse
        ax, ay = r, r * rng.uniform(0.5, 1.0)
        alpha = np.clip((1.0 - np.sqrt((gx / ax) ** 2 + (gy / ay) ** 2)) * r + 0.5, 0, 1)
    elif kind == 1:  # rounded rectangle
        hx, hy, rad = r, r * rng.uniform(0.45, 1.0), r * rng.uniform(0.1, 0.4)
        qx, qy = np.abs(gx) - (hx - rad), np.abs(gy) - (hy - rad)
        d = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2) + np.minimum(np.maximum(qx, qy), 0) - rad
        alpha = np.clip(0.5 - d, 0, 1)
    elif kind == 2:  # irregular blob: a disc whose radius wobbles with the angle
        ang = np.arctan2(gy, gx)
        wob = sum(rng.uniform(0.05, 0.18) * np.cos(k * ang + rng.uniform(0, 6.3)) for k in (2, 3, 5))
        alpha = np.clip((r * (0.8 + wob) - np.sqrt(gx * gx + gy * gy)) + 0.5, 0, 1)
    else:  # convex polygon
        k = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        d = np.full(gx.shape, np.inf, np.float32)
        for a0, a1 in zip(angles, np.roll(angles, -1)):
            x0, y0, x1, y1 = r * math.cos(a0), r * math.sin(a0), r * math.cos(a1), r * math.sin(a1)
            nx, ny = y1 - y0, x0 - x1
            norm = math.hypot(nx, ny) or 1.0
            if nx * (0 - x0) + ny * (0 - y0) > 0:  # make the normal point outwards
                nx, ny = -nx, -ny
            d = np.minimum(d, -((gx - x0) * nx + (gy - y0) * ny) / norm)
        alpha = np.clip(d + 0.5, 0, 1)
    tex = _texture(rng, s, s, unit)
    if rng.random() < 0.5:  # vivid objects stand out from the scene, as people and cars do
        ly, lcb, lcr = _palette(rng, vivid=True)
        tex = 0.5 * tex + 0.5 * np.clip(_ycc_to_rgb(np.full_like(gx, ly), lcb + 0 * gx, lcr + 0 * gx), 0, 255)
    # light from one side: a shading gradient gives the object some relief
    th = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.25 * (gx * math.cos(th) + gy * math.sin(th)) / max(r, 1.0)
    rgb = np.clip(tex * shade[..., None], 0, 255)
    return np.concatenate([rgb * alpha[..., None], alpha[..., None]], axis=-1).astype(np.float32)


# --------------------------------------------------------------------------- motion
def _camera_path(cls: str, rng: np.random.Generator, t: np.ndarray, unit: float):
    """Per frame: camera translation (x, y) in pixels, zoom (world pixels per frame pixel) and
    roll (radians), for ``t = 0..T-1``."""
    n = len(t)
    cx, cy = np.zeros(n), np.zeros(n)
    zoom, roll = np.ones(n), np.zeros(n)
    if cls in ("CameraPan", "Parallax"):
        speed = rng.uniform(0.3, 2.0 if cls == "CameraPan" else 1.4) * unit
        # mostly horizontal, as pans are
        ang = rng.normal(0, 0.35) + (math.pi if rng.random() < 0.5 else 0.0)
        if rng.random() < 0.25:
            ang = rng.uniform(0, 2 * math.pi)
        accel = rng.uniform(-0.3, 0.3) * speed / max(n, 1)
        dist = speed * t + 0.5 * accel * t * t
        cx, cy = dist * math.cos(ang), dist * math.sin(ang)
    elif cls == "CameraZoom":
        rate = rng.uniform(0.004, 0.02) * (1 if rng.random() < 0.5 else -1)
        zoom = np.exp(-rate * t)  # rate > 0: zoom in (each frame pixel covers less world)
        drift = rng.uniform(0, 0.3) * unit
        ang = rng.uniform(0, 2 * math.pi)
        cx, cy = drift * t * math.cos(ang), drift * t * math.sin(ang)
    if cls in ("Handheld", "CameraZoom", "Parallax") or (cls == "CameraPan" and rng.random() < 0.4):
        amp = rng.uniform(0.3, 1.5 if cls == "Handheld" else 0.6) * unit
        for arr in (cx, cy):
            for _ in range(3):  # a sum of slow sinusoids: the sway of hands
                f = rng.uniform(0.02, 0.2)
                arr += amp / 2 * np.sin(2 * math.pi * f * t + rng.uniform(0, 2 * math.pi))
        if cls == "Handheld":
            drift = rng.uniform(0, 0.5) * unit
            ang = rng.uniform(0, 2 * math.pi)
            cx += drift * t * math.cos(ang)
            cy += drift * t * math.sin(ang)
            roll = rng.uniform(0.001, 0.006) * np.sin(
                2 * math.pi * rng.uniform(0.02, 0.1) * t + rng.uniform(0, 6.3)
            )
    return cx - cx[0], cy - cy[0], zoom, roll


def _objects(cls: str, rng: np.random.Generator, unit: float, view_w: float, view_h: float):
    """The moving objects of a video: sprite, start, velocity, turn rate, growth."""
    counts = {
        "StillScene": (0, 2),
        "CameraPan": (0, 2),
        "CameraZoom": (0, 2),
        "Handheld": (0, 3),
        "MovingObjects": (1, 4),
        "Parallax": (0, 2),
    }[cls]
    fast = {"StillScene": 0.5, "MovingObjects": 3.0}.get(cls, 1.5)
    objs = []
    for _ in range(int(rng.integers(counts[0], counts[1] + 1))):
        size = rng.uniform(8, 26) * unit
        speed = rng.uniform(0.0, fast) * unit if rng.random() > 0.15 else 0.0
        ang = rng.uniform(0, 2 * math.pi)
        objs.append(
            {
                "sprite": _sprite(rng, size * _SS, unit * _SS),
                "x": rng.uniform(-0.4, 0.4) * view_w,
                "y": rng.uniform(-0.4, 0.4) * view_h,
                "vx": speed * math.cos(ang),
                "vy": speed * math.sin(ang),
                "turn": rng.normal(0, 0.02) if rng.random() < 0.5 else 0.0,
                "spin": rng.normal(0, 0.01) if rng.random() < 0.3 else 0.0,
                "grow": rng.uniform(-0.01, 0.01) if rng.random() < 0.3 else 0.0,
                # real motion is not a straight line: a random walk of the velocity, sudden
                # stops and turns, and non-rigid wobble (a head, a walker), none predictable
                "jitter": rng.uniform(0.05, 0.5) * unit if rng.random() < 0.6 else 0.0,
                "jerk": rng.uniform(0.02, 0.1) if rng.random() < 0.4 else 0.0,
                "wobble": (rng.uniform(0.02, 0.08), rng.uniform(0.1, 0.4))
                if rng.random() < 0.4
                else (0.0, 0.0),
            }
        )
    return objs


# --------------------------------------------------------------------------- rendering
def _warp(img: np.ndarray, grid: np.ndarray, padding: str) -> np.ndarray:
    """Bilinear samples of ``img`` (C, h, w) at ``grid`` (T, H, W, 2): (x, y) in texels, edge
    convention (texel i spans [i, i + 1)). Outside the image: the nearest edge texel
    (``padding="border"``, opaque layers) or transparent (``"zeros"``, sprites). Returns
    (T, C, H, W)."""
    import torch
    import torch.nn.functional as F

    _, h, w = img.shape
    g = torch.from_numpy(grid.astype(np.float32))
    g[..., 0] = g[..., 0] * (2.0 / w) - 1.0
    g[..., 1] = g[..., 1] * (2.0 / h) - 1.0
    src = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0).expand(g.shape[0], -1, -1, -1)
    return F.grid_sample(src, g, mode="bilinear", padding_mode=padding, align_corners=False).numpy()


def _affine(cam, factor: float, ux: np.ndarray, uy: np.ndarray):
    """Layer coordinates (frame pixels, origin where the frame centre starts) of frame points
    ``ux, uy`` (relative to the frame centre) for every frame of the camera path ``cam``, on a
    layer that moves ``factor`` times the camera (parallax). Returns x, y of shape
    ``(T,) + ux.shape``."""
    cam_x, cam_y, zoom, roll = (np.asarray(v)[(...,) + (None,) * ux.ndim] for v in cam)
    z = zoom**factor
    cos, sin = np.cos(roll), np.sin(roll)
    return factor * cam_x + z * (cos * ux - sin * uy), factor * cam_y + z * (sin * ux + cos * uy)


_CHUNK = 8  # frames rendered at once (bounds the memory of the sampling grids)


def render_video(cls: str, n_frames: int, height: int, width: int, group_seed, clip_seed) -> np.ndarray:
    """Render one video of class ``cls`` as uint8 ``(n_frames, height, width, 3)`` RGB.

    ``group_seed`` fixes the scene (textures, layers), ``clip_seed`` the camera path, objects,
    lighting and noise (both are anything :func:`numpy.random.default_rng` accepts).
    """
    import torch
    import torch.nn.functional as F

    if cls not in _KINDS:
        raise ValueError(f"unknown class {cls!r}; choose from {', '.join(CLASSES)}")
    scene = np.random.default_rng(group_seed)
    rng = np.random.default_rng(clip_seed)
    unit = min(height, width) / 64.0  # sizes and speeds are given for 64x64 frames
    tu = unit * _SS  # texels per 64x64-frame pixel

    # -- the scene: a background layer and, with depth, a foreground of blobs in front
    wh, ww = int(_WORLD * height * _SS), int(_WORLD * width * _SS)
    background = _texture(scene, wh, ww, tu).transpose(2, 0, 1)
    far, near = 1.0, None
    if cls == "Parallax" or (cls in ("CameraPan", "Handheld") and scene.random() < 0.35):
        if cls == "Parallax":
            far = scene.uniform(0.35, 0.7)
        fg = _texture(scene, wh, ww, tu)
        alpha = _blobs(scene, wh, ww, tu, scene.uniform(0.15, 0.35))
        near = np.concatenate([fg * alpha[..., None], alpha[..., None]], axis=-1).transpose(2, 0, 1)
        near_factor = scene.uniform(1.4, 2.2)

    # -- the motion: camera path, objects (on the middle layer, factor 1), light, noise
    t = np.arange(n_frames, dtype=np.float64)
    cam = _camera_path(cls, rng, t, unit)
    objects = _objects(cls, rng, unit, width, height)
    for ob in objects:  # their paths, frame by frame
        ob["path"] = path = np.empty((n_frames, 4))  # x, y, angle, scale
        x, y, vx, vy, ang, scale = ob["x"], ob["y"], ob["vx"], ob["vy"], 0.0, 1.0
        c, s = math.cos(ob["turn"]), math.sin(ob["turn"])
        amp, freq = ob["wobble"]
        phase = rng.uniform(0, 2 * math.pi)
        for k in range(n_frames):
            path[k] = x, y, ang, scale * (1.0 + amp * math.sin(2 * math.pi * freq * k + phase))
            vx, vy = c * vx - s * vy, s * vx + c * vy
            if ob["jitter"]:
                vx += rng.normal(0, ob["jitter"])
                vy += rng.normal(0, ob["jitter"])
            if rng.random() < ob["jerk"]:  # stop, or set off another way
                speed = rng.uniform(0, 2.0) * unit
                a = rng.uniform(0, 2 * math.pi)
                vx, vy = speed * math.cos(a), speed * math.sin(a)
            x, y = x + vx, y + vy
            # stay near the view: turn back at the edges of a region a little larger than it
            if abs(x) > 0.7 * width:
                vx = -math.copysign(abs(vx), x)
            if abs(y) > 0.7 * height:
                vy = -math.copysign(abs(vy), y)
            ang += ob["spin"]
            scale *= 1.0 + ob["grow"]
    gain = np.ones(n_frames)
    light = rng.random()
    if light < 0.3:  # slow drift (auto exposure, the sun)
        gain = 1.0 + rng.uniform(0.02, 0.08) * np.sin(
            2 * math.pi * t / rng.uniform(40, 120) + rng.uniform(0, 6.3)
        )
    elif light < 0.45:  # a cloud: a smooth step in brightness
        step = np.tanh((t - rng.uniform(0, n_frames)) / rng.uniform(3, 10))
        gain = 1.0 + rng.uniform(-0.15, 0.15) * 0.5 * (1 + step)
    sigma = rng.uniform(0.3, 2.5)

    # where each layer's path lies in its texture: at a random spot where the whole path stays
    # inside (centred when it cannot); the extremes of an affine map are at the frame corners
    corners_x = np.array([-width / 2, width / 2, -width / 2, width / 2])
    corners_y = np.array([-height / 2, -height / 2, height / 2, height / 2])

    def origin(factor: float, shape) -> tuple[float, float]:
        x, y = _affine(cam, factor, corners_x, corners_y)
        start = []
        for v, extent in ((x, shape[2] / _SS), (y, shape[1] / _SS)):
            lo, span = float(v.min()), float(v.max() - v.min())
            start.append(lo - rng.uniform(0.0, extent - span) if extent > span else lo - (extent - span) / 2)
        return start[0], start[1]

    bg_origin = origin(far, background.shape)
    near_origin = origin(near_factor, near.shape) if near is not None else None

    # supersampled pixel centres, relative to the frame centre, in frame pixels
    uy, ux = np.meshgrid(
        (np.arange(height * _SS) + 0.5) / _SS - height / 2,
        (np.arange(width * _SS) + 0.5) / _SS - width / 2,
        indexing="ij",
    )
    out = np.empty((n_frames, height, width, 3), np.uint8)
    for k0 in range(0, n_frames, _CHUNK):
        ks = slice(k0, min(k0 + _CHUNK, n_frames))
        part = tuple(np.asarray(v)[ks] for v in cam)
        x, y = _affine(part, far, ux, uy)
        frames = _warp(
            background, np.stack([(x - bg_origin[0]) * _SS, (y - bg_origin[1]) * _SS], -1), "border"
        )
        mx, my = _affine(part, 1.0, ux, uy)
        for ob in objects:
            spr = ob["sprite"]
            sh, sw = spr.shape[:2]
            px, py, ang, scale = (v[:, None, None] for v in ob["path"][ks].T)
            cos, sin = np.cos(-ang), np.sin(-ang)
            dx, dy = mx - px, my - py
            grid = np.stack(
                [(cos * dx - sin * dy) / scale * _SS + sw / 2, (sin * dx + cos * dy) / scale * _SS + sh / 2],
                -1,
            )
            layer = _warp(spr.transpose(2, 0, 1), grid, "zeros")
            frames = frames * (1.0 - layer[:, 3:4]) + layer[:, :3]
        if near is not None:
            x, y = _affine(part, near_factor, ux, uy)
            grid = np.stack([(x - near_origin[0]) * _SS, (y - near_origin[1]) * _SS], -1)
            layer = _warp(near, grid, "zeros")
            frames = frames * (1.0 - layer[:, 3:4]) + layer[:, :3]
        # down to the frame size, then light and sensor noise
        frames = F.avg_pool2d(torch.from_numpy(frames), _SS).numpy() * gain[ks, None, None, None]
        frames = frames + rng.standard_normal(frames.shape).astype(np.float32) * sigma
        out[ks] = np.clip(frames.transpose(0, 2, 3, 1) + 0.5, 0, 255).astype(np.uint8)
    return out
