"""The evaluation protocol of Mathieu, Couprie & LeCun (ICLR 2016), as their test code computes it.

Their table scores a model on a fixed subset of the UCF-101 test videos (every tenth of the 3,783
test videos): from 4 frames the model predicts one frame, then a second one with its own first
prediction fed back as input (the *recursive* steps), and only the pixels that move count. This
module computes the same quantities, so that a user with that subset can put our models next to
their table:

* **moving pixels** -- the authors ship, with each test clip, a colour-coded optical-flow image
  per predicted step (``pred_4_flow.png`` for the first: the flow at the last input frame;
  ``target_1_flow.png`` for the second); a pixel is *moving* when any channel of that image is
  below 0.2 (still pixels are white in that coding). Every other pixel is set to -1 in both the
  prediction and the target before scoring. :func:`mask_from_flow_image` reads that test.
  Without the authors' images (any other footage) :func:`estimate_flow` computes a dense flow
  (coarse-to-fine Lucas--Kanade) between the two ground-truth frames before the predicted one
  and :func:`moving_mask` marks the pixels that move at least ``threshold`` pixels: the same
  idea, not the same masks, so such numbers compare our models with each other and only
  approximately with the paper;
* **PSNR** (:func:`psnr`) -- the squared error of [-1, 1] frames averaged over *all* pixels of
  the frame (masked ones included, where it is zero), times 128^2, against 255^2; error floored
  at 1e-4;
* **SSIM** (:func:`ssim`) -- on luma (0.299 R + 0.587 G + 0.114 B) scaled to [0, 255], an 11x11
  Gaussian window of sigma 1.5 applied as a *full* convolution (zero padding, the map 10 pixels
  larger than the frame), K1 = 0.01, K2 = 0.03, the mean of the map;
* **sharpness** (:func:`sharpness`) -- the sum over the interior (one pixel in from each edge) of
  ``| |dx P| - |dx T| | + | |dy P| - |dy T| |`` with one-pixel differences, divided by the number
  of values of the whole frame, times 128^2, against 255^2 in dB (the code's version of the
  paper's formula, which :func:`pyframepred.metrics.sharpness` follows instead);
* a clip counts for a step only when its masked PSNR there is below 50 dB (which drops clips
  with no moving pixels); the averages are over the clips that count, per step.

:func:`evaluate_mathieu` runs a model and the copy-last baseline through all of it;
:class:`MathieuTestSet` reads the authors' test-set layout; ``python -m pyframepred.evaluate
CHECKPOINT --protocol mathieu`` is the command line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .errors import ConfigError
from .evaluation import clip_loader, eval_mode
from .io import denormalize, normalize
from .models.registry import rollout

__all__ = [
    "PSNR_CUTOFF",
    "MathieuTestSet",
    "estimate_flow",
    "evaluate_mathieu",
    "format_mathieu_table",
    "mask_from_flow_image",
    "moving_mask",
    "psnr",
    "sharpness",
    "ssim",
]

PSNR_CUTOFF = 50.0  # a clip counts for a step only below this masked PSNR (dB)
_SCALE = 128.0 * 128.0  # the code's scaling of [-1, 1] errors to 8-bit units
_PEAK = 255.0 * 255.0
_EPS = 1e-4


def _check(pred: Tensor, target: Tensor, name: str):
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(
            f"{name}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be images "
            "(..., C, H, W) of one shape"
        )
    return pred.double(), target.double()


def _db(err: Tensor) -> Tensor:
    return 10.0 * torch.log10(_PEAK / torch.where(err > _EPS, err, torch.full_like(err, _EPS)))


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """PSNR per image (dB) of [-1, 1] frames, as the authors' code computes it."""
    p, t = _check(pred, target, "psnr")
    return _db(_SCALE * (p - t).pow(2).mean(dim=(-3, -2, -1)))


def _luma(x: Tensor) -> Tensor:
    if x.shape[-3] > 2:
        w = x.new_tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
        return (x[..., :3, :, :] * w).sum(-3)
    return x[..., 0, :, :]


def ssim(pred: Tensor, target: Tensor) -> Tensor:
    """SSIM per image of [-1, 1] frames, as the authors' code computes it (luma, 8-bit range,
    11x11 Gaussian window of sigma 1.5 as a full, zero-padded convolution)."""
    p, t = _check(pred, target, "ssim")
    lead = p.shape[:-3]
    h, w = p.shape[-2:]
    a = denormalize(_luma(p)).reshape(-1, 1, h, w)  # to [0, 255]
    b = denormalize(_luma(t)).reshape(-1, 1, h, w)
    x = torch.arange(11, dtype=p.dtype, device=p.device) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    win = torch.outer(g, g)
    win = (win / win.sum()).view(1, 1, 11, 11)

    def blur(v):
        return F.conv2d(v, win, padding=10)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a**2
    sbb = blur(b * b) - mu_b**2
    sab = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    return m.mean(dim=(-3, -2, -1)).reshape(lead)


def sharpness(pred: Tensor, target: Tensor) -> Tensor:
    """Sharpness difference per image (dB) of [-1, 1] frames, as the authors' code computes it."""
    p, t = _check(pred, target, "sharpness")
    if p.shape[-1] < 3 or p.shape[-2] < 3:
        raise ValueError("sharpness: images must be at least 3x3")

    def grads(v):
        # |v[i, j] - v[i, j-1]| and |v[i, j] - v[i-1, j]| on the interior (one pixel in).
        inner = v[..., 1:-1, 1:-1]
        return (inner - v[..., 1:-1, :-2]).abs(), (inner - v[..., :-2, 1:-1]).abs()

    (pdx, pdy), (tdx, tdy) = grads(p), grads(t)
    total = ((pdx - tdx).abs() + (pdy - tdy).abs()).sum(dim=(-3, -2, -1))
    n = p.shape[-3] * p.shape[-2] * p.shape[-1]
    return _db(_SCALE * total / n)


def mask_from_flow_image(flow_image: Tensor) -> Tensor:
    """Moving pixels ``(H, W)`` (bool) of a colour-coded flow image ``(3, H, W)`` in [0, 1]: any
    channel below 0.2, the authors' test."""
    if flow_image.dim() != 3 or flow_image.shape[0] < 3:
        raise ValueError(f"a flow image must be (3, H, W), got {tuple(flow_image.shape)}")
    return (flow_image[:3] < 0.2).any(0)


def _gray(x: Tensor) -> Tensor:
    # (B, C, H, W) in [-1, 1] -> (B, 1, H, W) luma, lightly smoothed.
    y = _luma(x.double()).unsqueeze(1)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=y.dtype, device=y.device) / 16
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5))
    return F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1))


def _warp(img: Tensor, flow: Tensor) -> Tensor:
    # img sampled at x + flow(x) (flow in pixels, (B, 2, H, W) as (dx, dy)); border replicated.
    B, _, H, W = img.shape
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=img.dtype, device=img.device),
        torch.arange(W, dtype=img.dtype, device=img.device),
        indexing="ij",
    )
    gx = (xs + flow[:, 0]) * (2.0 / max(W - 1, 1)) - 1
    gy = (ys + flow[:, 1]) * (2.0 / max(H - 1, 1)) - 1
    grid = torch.stack((gx, gy), -1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def estimate_flow(prev: Tensor, cur: Tensor, levels: int = 4, iterations: int = 3, window: int = 7) -> Tensor:
    """Dense optical flow ``(B, 2, H, W)`` (dx, dy in pixels) from frames ``prev`` to ``cur``
    (``(B, C, H, W)`` in [-1, 1]): ``cur(x + flow(x)) ~ prev(x)``. Coarse-to-fine Lucas--Kanade
    over a ``window`` x ``window`` neighbourhood, ``iterations`` warped refinements per pyramid
    level; where the neighbourhood has no texture to tell motion (a small structure tensor) the
    flow is left as the coarser level's, and where no motion explains the neighbourhood as well
    as the flow does, the flow is zero."""
    if prev.shape != cur.shape or prev.dim() != 4:
        raise ValueError(
            f"estimate_flow: frames must be (B, C, H, W) of one shape, got "
            f"{tuple(prev.shape)} and {tuple(cur.shape)}"
        )
    a, b = _gray(prev), _gray(cur)
    pyramid = [(a, b)]
    while len(pyramid) < levels and min(pyramid[-1][0].shape[-2:]) >= 16:
        pa, pb = pyramid[-1]
        pyramid.append((F.avg_pool2d(pa, 2, ceil_mode=True), F.avg_pool2d(pb, 2, ceil_mode=True)))
    flow = None
    box = torch.ones(1, 1, window, window, dtype=a.dtype, device=a.device) / window**2

    def wsum(v):
        return F.conv2d(F.pad(v, (window // 2,) * 4, mode="replicate"), box)

    for pa, pb in reversed(pyramid):
        H, W = pa.shape[-2:]
        if flow is None:
            flow = pa.new_zeros(pa.shape[0], 2, H, W)
        else:
            flow = 2.0 * F.interpolate(flow, size=(H, W), mode="bilinear", align_corners=False)
        for _ in range(iterations):
            bw = _warp(pb, flow)
            m = 0.5 * (pa + bw)
            mp = F.pad(m, (1, 1, 1, 1), mode="replicate")
            ix = 0.5 * (mp[..., 1:-1, 2:] - mp[..., 1:-1, :-2])
            iy = 0.5 * (mp[..., 2:, 1:-1] - mp[..., :-2, 1:-1])
            it = bw - pa
            sxx, sxy, syy = wsum(ix * ix), wsum(ix * iy), wsum(iy * iy)
            sxt, syt = wsum(ix * it), wsum(iy * it)
            det = sxx * syy - sxy * sxy
            # the smaller eigenvalue of the structure tensor: texture in both directions
            half_tr = 0.5 * (sxx + syy)
            lam_min = half_tr - torch.sqrt((half_tr**2 - det).clamp_min(0))
            ok = lam_min > 1e-5
            safe = torch.where(ok, det, torch.ones_like(det))
            du = torch.where(ok, -(syy * sxt - sxy * syt) / safe, torch.zeros_like(det))
            dv = torch.where(ok, -(sxx * syt - sxy * sxt) / safe, torch.zeros_like(det))
            flow = flow + torch.cat((du, dv), 1).clamp(-2.0, 2.0)
        # A coarse level spreads a moving object's flow over its still surroundings; keep the
        # flow only where it explains the frames better than no motion does.
        moved = wsum((_warp(pb, flow) - pa) ** 2) < wsum((pb - pa) ** 2)
        flow = flow * moved
    return flow.float()


def moving_mask(prev: Tensor, cur: Tensor, threshold: float = 1.0) -> Tensor:
    """Moving pixels ``(B, H, W)`` (bool) between ground-truth frames ``prev`` and ``cur``
    (``(B, C, H, W)`` in [-1, 1]): those whose estimated flow is at least ``threshold`` pixels."""
    if not threshold > 0:
        raise ConfigError(f"the moving-pixel threshold must be positive, got {threshold}")
    return estimate_flow(prev, cur).norm(dim=1) >= threshold


_FRAME = re.compile(r"^(pred|target)_(\d+)\.png$")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ConfigError(f"cannot read image '{path}': {exc}") from exc


class MathieuTestSet(Dataset):
    """The authors' test-set layout: one folder per clip (named by its video's number), holding
    the input frames ``pred_1.png`` ... ``pred_N.png``, the targets ``target_1.png`` ...,
    and the flow images ``pred_N_flow.png`` (of the first predicted step) and
    ``target_K_flow.png`` (of step K + 1). Yields ``(clip, masks)``: the ``N + steps`` frames
    ``(N + steps, channels, H, W)`` in [-1, 1] (``channels`` 1, for a grey model: the mean of
    the colour channels) and the moving pixels ``(steps, H, W)`` (bool). Clips may differ in
    size (:func:`evaluate_mathieu` batches those of one size together). Clips that lack a frame or
    flow image for ``steps`` steps are skipped with a count in :attr:`skipped`; ``n_input`` keeps
    the last frames of longer inputs."""

    def __init__(self, root, n_input: int, steps: int, channels: int = 3):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ConfigError(f"test set folder '{self.root}' does not exist")
        if channels not in (1, 3):
            raise ConfigError(
                f"the checkpoint's model takes frames of {channels} channels, the test set has 3"
            )
        self.n_input, self.steps, self.channels = n_input, steps, channels
        self.items: list[tuple[list[Path], list[Path]]] = []
        self.skipped = 0
        folders = sorted(
            (p for p in self.root.iterdir() if p.is_dir()),
            key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name),
        )
        for folder in folders:
            frames = {"pred": {}, "target": {}}
            for f in folder.iterdir():
                m = _FRAME.match(f.name)
                if m:
                    frames[m.group(1)][int(m.group(2))] = f
            n = len(frames["pred"])
            if n < n_input or sorted(frames["pred"]) != list(range(1, n + 1)):
                self.skipped += 1
                continue
            inputs = [frames["pred"][i] for i in range(n - n_input + 1, n + 1)]
            targets = [frames["target"].get(k) for k in range(1, steps + 1)]
            flows = [folder / f"pred_{n}_flow.png"] + [
                folder / f"target_{k}_flow.png" for k in range(1, steps)
            ]
            if any(t is None for t in targets) or not all(f.is_file() for f in flows):
                self.skipped += 1
                continue
            self.items.append((inputs + targets, flows))

    @staticmethod
    def looks_like(root) -> bool:
        """True when ``root`` holds clip folders of this layout (a ``pred_1.png`` in one)."""
        root = Path(root)
        return root.is_dir() and any((p / "pred_1.png").is_file() for p in root.iterdir() if p.is_dir())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        frames, flows = self.items[i]
        clip = np.stack([_read_png(f) for f in frames])
        if len({a.shape for a in clip}) > 1:
            raise ConfigError(f"the frames of '{frames[0].parent}' differ in size")
        x = torch.from_numpy(normalize(clip)).permute(0, 3, 1, 2).contiguous()
        if self.channels == 1:
            x = x.mean(1, keepdim=True)
        masks = []
        for f in flows:
            img = torch.from_numpy(_read_png(f)).permute(2, 0, 1).float() / 255.0
            if img.shape[-2:] != x.shape[-2:]:
                raise ConfigError(
                    f"flow image '{f}' is {tuple(img.shape[-2:])}, its frames {tuple(x.shape[-2:])}"
                )
            masks.append(mask_from_flow_image(img))
        return x, torch.stack(masks)


class _ComputedMasks(Dataset):
    """Clips of another data set with moving pixels from :func:`moving_mask` of the two
    ground-truth frames before each predicted one."""

    def __init__(self, clips: Dataset, n_input: int, steps: int, threshold: float):
        self.clips, self.n_input, self.steps, self.threshold = clips, n_input, steps, threshold
        self.root = getattr(clips, "root", None)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int):
        clip = self.clips[i]
        if isinstance(clip, (tuple, list)):
            clip = clip[0]
        k = self.n_input
        prev = clip[k - 2 : k - 2 + self.steps]
        cur = clip[k - 1 : k - 1 + self.steps]
        return clip, moving_mask(prev, cur, self.threshold)


def with_computed_masks(clips: Dataset, n_input: int, steps: int, threshold: float = 1.0) -> Dataset:
    """``clips`` (yielding ``(n_input + steps, C, H, W)``) paired with moving pixels computed by
    :func:`moving_mask` (``n_input`` must be at least 2: the first step's mask is the motion
    between the last two input frames)."""
    if n_input < 2:
        raise ConfigError("the moving-pixel masks need at least 2 input frames")
    if not threshold > 0:
        raise ConfigError(f"the moving-pixel threshold must be positive, got {threshold}")
    return _ComputedMasks(clips, n_input, steps, threshold)


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.unsqueeze(-3), x, torch.full_like(x, -1.0))


@torch.no_grad()
def evaluate_mathieu(
    model: torch.nn.Module,
    dataset: Dataset,
    n_input: int,
    steps: int = 2,
    device="cpu",
    batch_size: int = 4,
    max_clips: int | None = None,
) -> dict:
    """The model and copy-last scored by the protocol: ``dataset`` yields ``(clip, masks)``
    (:class:`MathieuTestSet`, or :func:`with_computed_masks`), batched by ``batch_size`` (clips
    of different sizes go in different batches). Per step, PSNR, SSIM and
    sharpness of the masked frames averaged over the clips whose masked PSNR is below
    :data:`PSNR_CUTOFF` (each predictor's own), with how many clips counted and the share of
    moving pixels."""
    device = torch.device(device)
    loader = clip_loader(dataset, batch_size, max_clips, "no clips to evaluate on")
    names = ("psnr", "ssim", "sharpness")
    zeros = torch.zeros(steps, dtype=torch.float64)
    sums = {w: {m: zeros.clone() for m in names} for w in ("model", "baseline")}
    counted = {w: zeros.clone() for w in ("model", "baseline")}
    moving = zeros.clone()
    n = 0
    with eval_mode(model):
        for clips, masks in loader:
            clips, masks = clips.to(device), masks.to(device)
            if clips.shape[1] < n_input + steps or masks.shape[1] < steps:
                raise ConfigError(
                    f"clips have {clips.shape[1]} frames and {masks.shape[1]} masks, "
                    f"need {n_input + steps} and {steps}"
                )
            inputs = clips[:, :n_input]
            target = clips[:, n_input : n_input + steps].float()
            pred = rollout(model, inputs, steps).float().clamp(-1, 1)
            base = inputs[:, -1:].float().expand_as(target)
            m = masks[:, :steps]
            for who, p in (("model", pred), ("baseline", base)):
                mp, mt = _masked(p, m), _masked(target, m)
                vals = {"psnr": psnr(mp, mt), "ssim": ssim(mp, mt), "sharpness": sharpness(mp, mt)}
                keep = vals["psnr"] < PSNR_CUTOFF  # (B, steps)
                counted[who] += keep.sum(0).cpu()
                for name in names:
                    sums[who][name] += torch.where(keep, vals[name], 0.0).sum(0).cpu()
            moving += m.double().mean(dim=(-2, -1)).sum(0).cpu()
            n += clips.shape[0]
    out: dict = {"protocol": "mathieu", "clips": n, "steps": steps, "moving_share": (moving / n).tolist()}
    for who in ("model", "baseline"):
        c = counted[who]
        out[who] = {name: torch.where(c > 0, sums[who][name] / c, math.nan).tolist() for name in names}
        out[f"{who}_counted"] = [int(v) for v in c]
    return out


def format_mathieu_table(result: dict) -> str:
    """Per step: PSNR, SSIM and sharpness of the model beside copy-last, with the clips that
    counted (masked PSNR below the cut-off) and the share of moving pixels."""
    lines = [
        f"{result['clips']} clips, Mathieu et al.'s protocol: moving pixels only, clips counted "
        f"below {PSNR_CUTOFF:g} dB",
        f"{'step':<5} {'moving':>7} {'clips':>11}  {'PSNR model / copy':>19}  {'SSIM model / copy':>17}"
        f"  {'sharpness model / copy':>22}",
    ]
    for s in range(result["steps"]):
        mo, ba = result["model"], result["baseline"]
        lines.append(
            f"{s + 1:<5} {100 * result['moving_share'][s]:>6.1f}% "
            f"{result['model_counted'][s]:>5}/{result['baseline_counted'][s]:<5}"
            f"  {mo['psnr'][s]:>9.2f} / {ba['psnr'][s]:<7.2f}  {mo['ssim'][s]:>7.3f} / {ba['ssim'][s]:<7.3f}"
            f"  {mo['sharpness'][s]:>11.2f} / {ba['sharpness'][s]:<8.2f}"
        )
    return "\n".join(lines)
