"""The accuracy price of larger Winograd tiles, by emulation: F(m x m, 3x3) built from a set of
interpolation points (Lavin & Gray's construction, plus the point at infinity), applied to random
frames and weights with the rounding of the CPU kernels (csrc/cpu/conv_cpu.cpp), against the
direct convolution's error, both measured against float64.

    python scripts/winograd_error.py [--dtype bf16|float32]

bf16: the transformed input V and weight U rounded to bfloat16 (what VDPBF16PS multiplies), the
products summed and transformed back exactly, the output rounded to bfloat16; the direct bf16
convolution rounds only its output. float32: every step in float32, against F.conv2d in float32.
Prints, per case and tiling, the largest and the RMS error as multiples of the direct
convolution's, and the largest error over the output's scale.
"""

from __future__ import annotations

import argparse
from fractions import Fraction

import torch
import torch.nn.functional as F

TILINGS = {
    "F(2x2) 0 1 -1": (2, [0, 1, -1]),
    "F(3x3) 0 1 -1 1/2": (3, [0, 1, -1, Fraction(1, 2)]),
    "F(3x3) 0 1 -1 -2": (3, [0, 1, -1, -2]),
    "F(4x4) 0 1 -1 2 -1/2": (4, [0, 1, -1, 2, Fraction(-1, 2)]),
    "F(4x4) 0 1 -1 2 -2": (4, [0, 1, -1, 2, -2]),
    "F(6x6) 0 1 -1 2 -2 1/2 -1/2": (6, [0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)]),
}
# (B, C_in, C_out, H): the layer's kinds of shape, small enough for an emulation
CASES = [(2, 16, 64, 32), (2, 64, 64, 32), (1, 128, 32, 32)]


def poly(roots):
    """Coefficients (constant first) of the product of (x - r) over roots."""
    c = [Fraction(1)]
    for r in roots:
        nxt = [Fraction(0)] * (len(c) + 1)
        for i, a in enumerate(c):
            nxt[i + 1] += a
            nxt[i] -= r * a
        c = nxt
    return c


def tiling(m: int, points):
    """A^T (m x n), G (n x 3), B^T (n x n) of F(m, 3), n = m + 2, from n - 1 finite points."""
    pts = [Fraction(p) for p in points]
    assert len(pts) == m + 1
    at = [[p**i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, bt = [], []
    for j, p in enumerate(pts):
        others = [q for k, q in enumerate(pts) if k != j]
        f = Fraction(1)
        for q in others:
            f *= p - q
        g.append([p**k / f for k in range(3)])
        bt.append(poly(others) + [Fraction(0)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    bt.append(poly(pts))

    def t(rows):
        return torch.tensor([[float(v) for v in r] for r in rows], dtype=torch.float64)

    return t(at), t(g), t(bt)


def winograd(x, w, m, points, round_vu, dtype):
    at, g, bt = (t.to(dtype) for t in tiling(m, points))
    a = m + 2
    B, C, H, W = x.shape
    th, tw = -(-H // m), -(-W // m)
    xp = torch.zeros(B, C, th * m + 2, tw * m + 2, dtype=dtype)
    xp[:, :, 1 : H + 1, 1 : W + 1] = x
    d = xp.unfold(2, a, m).unfold(3, a, m)  # (B, C, th, tw, a, a) patches
    v = round_vu(torch.einsum("ij,bctujk,lk->bctuil", bt, d, bt))
    u = round_vu(torch.einsum("ij,ocjk,lk->ocil", g, w, g))
    prod = torch.einsum("bctuil,ocil->botuil", v, u)
    y = torch.einsum("ij,botujk,lk->botuil", at, prod, at)
    return y.permute(0, 1, 2, 4, 3, 5).reshape(B, -1, th * m, tw * m)[:, :, :H, :W]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["bf16", "float32"], default="bf16")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    bf = lambda t: t.to(torch.bfloat16).to(torch.float64)  # noqa: E731
    for B, C, Co, H in CASES:
        for dist in ("normal", "uniform"):
            draw = torch.randn if dist == "normal" else (lambda *s, **k: torch.rand(*s, **k) * 2 - 1)
            x = draw(B, C, H, H, dtype=torch.float64)
            w = draw(Co, C, 3, 3, dtype=torch.float64) / (3 * C**0.5)
            if args.dtype == "bf16":
                x, w = bf(x), bf(w)
            exact = F.conv2d(x, w, padding=1)
            if args.dtype == "bf16":
                direct = bf(exact)
            else:
                direct = F.conv2d(x.float(), w.float(), padding=1).double()
            e_direct = (direct - exact).abs()
            print(f"(B, C_in, C_out, H) = {(B, C, Co, H)}, {dist} values, {args.dtype}")
            for name, (m, points) in TILINGS.items():
                if args.dtype == "bf16":
                    y = bf(winograd(x, w, m, points, bf, torch.float64))
                else:
                    y = winograd(x.float(), w.float(), m, points, lambda t: t, torch.float32).double()
                e = (y - exact).abs()
                print(
                    f"  {name:22s} max {e.max() / e_direct.max():6.2f}x  "
                    f"rms {e.pow(2).mean().sqrt() / e_direct.pow(2).mean().sqrt():6.2f}x direct  "
                    f"max/scale {e.max() / exact.abs().max():.1e}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
