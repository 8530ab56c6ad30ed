"""Models: shapes at two frame sizes, fused vs reference, teacher forcing, learning, loss weights."""

import pytest
import torch

from pyframepred import reference
from pyframepred.models import (
    MultiScaleDiscriminator,
    MultiScaleGenerator,
    MultiScaleLoss,
    Seq2Seq,
    SkipAutoencoder,
    scale_sizes,
)

SIZES = [(64, 64), (48, 80)]


def frames(b=2, t=8, h=64, w=64):
    return torch.rand(b, t, 3, h, w) * 2 - 1


def small_seq2seq(**kw):
    return Seq2Seq(conv_channels=(8, 16), hidden_channels=16, **kw)


def small_ae(**kw):
    return SkipAutoencoder(widths=(8, 16, 32, 64, 128), **kw)


@pytest.mark.parametrize("hw", SIZES)
def test_seq2seq_shapes(hw):
    x = frames(2, 8, *hw)
    m = small_seq2seq(batch_norm=True)
    assert m(x[:, :4], 4, x[:, 4:]).shape == (2, 4, 3, *hw)
    m.eval()
    assert m(x[:, :4]).shape == (2, 4, 3, *hw)  # default out_steps
    assert m.rollout(x[:, :4], 6).shape == (2, 6, 3, *hw)
    assert m(x[:, :1], 2).shape == (2, 2, 3, *hw)  # a single input frame works too


@pytest.mark.parametrize("hw", SIZES)
def test_autoencoder_shapes(hw):
    x = frames(2, 6, *hw)
    m = small_ae()
    assert m(x[:, :4]).shape == (2, 3, *hw)
    assert m(x[:, :4].reshape(2, 12, *hw)).shape == (2, 3, *hw)
    assert m.rollout(x, 3).shape == (2, 3, 3, *hw)


def test_autoencoder_default_widths():
    m = SkipAutoencoder()
    convs = [mod.out_channels for mod in m.down.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs[::2] == [32, 64, 128, 256, 512]
    ups = [mod.out_channels for mod in m.up.modules() if isinstance(mod, torch.nn.ConvTranspose2d)]
    assert ups == [256, 128, 64, 32]


@pytest.mark.parametrize("hw", SIZES)
def test_multiscale_shapes(hw):
    x = frames(2, 5, *hw)
    g = MultiScaleGenerator(width=0.0625)
    d = MultiScaleDiscriminator(width=0.0625)
    preds = g(x[:, :4])
    expect = scale_sizes((4, 16, 32, 64), 64, *hw)
    assert [tuple(p.shape[-2:]) for p in preds] == expect
    assert all(p.shape[:2] == (2, 3) for p in preds)
    logits = d(x[:, :4], preds)
    assert [tuple(lg.shape) for lg in logits] == [(2,)] * 4
    # a list of per-scale inputs gives the same as the full-size frames
    pyr = g.pyramid(x[:, :4])
    assert torch.allclose(g(pyr)[-1], preds[-1])
    assert g.rollout(x[:, :4], 3).shape == (2, 3, 3, *hw)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_multiscale_generator_units_below_zero_keep_a_gradient_only_when_leaky(activation):
    torch.manual_seed(0)
    g = MultiScaleGenerator(width=0.0625, activation=activation)
    finest = g.stages[-1]
    hidden = [m for m in finest if isinstance(m, torch.nn.Conv2d)][-2]  # the last hidden layer
    with torch.no_grad():
        hidden.bias.fill_(-100.0)  # every unit of it below zero, as after a collapse
        torch.nn.init.normal_(finest[-1].weight, std=0.1)
    acts = [type(m) for m in finest if not isinstance(m, torch.nn.Conv2d)]
    assert set(acts) == {torch.nn.ReLU if activation == "relu" else torch.nn.LeakyReLU}
    x = frames(2, 5, 16, 16)
    g(x[:, :4])[-1].sum().backward()
    dead = hidden.weight.grad.abs().max().item() == 0
    assert dead == (activation == "relu")
    with pytest.raises(ValueError, match="activation must be"):
        MultiScaleGenerator(activation="gelu")


def test_scale_sizes_proportional():
    assert scale_sizes((4, 16, 32, 64), 64, 64, 64) == [(4, 4), (16, 16), (32, 32), (64, 64)]
    assert scale_sizes((4, 16, 32, 64), 64, 128, 128) == [(8, 8), (32, 32), (64, 64), (128, 128)]


def test_residual_start_copies_last_frame():
    x = frames(1, 5) * 0.9
    assert torch.allclose(small_ae().eval()(x[:, :4]), x[:, 3], atol=1e-5)
    assert torch.allclose(MultiScaleGenerator(width=0.0625)(x[:, :4])[-1], x[:, 3], atol=1e-5)
    assert torch.allclose(small_seq2seq().eval()(x[:, :4], 2)[:, 0], x[:, 3], atol=1e-5)


def test_warp_moves_content_by_the_field():
    from pyframepred.models._common import warp

    x = torch.rand(2, 3, 9, 11)
    flow = torch.zeros(2, 2, 9, 11)
    assert torch.allclose(warp(x, flow), x, atol=1e-6)  # zero field: the frame itself
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # 2 px right, 1 px up
    moved = warp(x, flow)
    assert torch.allclose(moved[..., :-1, 2:], x[..., 1:, :-2], atol=1e-5)
    assert torch.allclose(moved[..., :, 0], moved[..., :, 2], atol=1e-5)  # edge pixel repeated
    flow[:, 0] = 0.5  # half a pixel: bilinear
    half = warp(x, flow, "bilinear")
    assert torch.allclose(half[..., :-1, 1:], 0.5 * (x[..., 1:, 1:] + x[..., 1:, :-1]), atol=1e-5)
    assert warp(x.bfloat16(), flow.bfloat16()).dtype == torch.float32  # sampled in float32
    assert torch.allclose(warp(x.bfloat16(), flow), warp(x.bfloat16().float(), flow))
    sharp = warp(x, flow)  # bicubic: the cubic kernel at half a pixel
    w = [-0.09375, 0.59375, 0.59375, -0.09375]  # (torch's a = -0.75), taps c-2 .. c+1
    inner = sum(w[j] * x[..., 1:, j : x.shape[-1] - 3 + j] for j in range(4))
    assert torch.allclose(sharp[..., :-1, 2:-1], inner, atol=1e-5)
    torch.autograd.gradcheck(
        lambda f: warp(x[:1, :1, :4, :5].double(), f),
        (flow[:1, :, :4, :5].double().add(0.3).requires_grad_(),),
    )


def test_seq2seq_motion_head():
    x = frames(2, 8, 32, 32) * 0.9
    m = small_seq2seq(motion=True).eval()
    conv = m.decoder[-1]
    assert conv.out_channels == 2 + 1 + 3  # field, where, change
    assert torch.allclose(m(x[:, :4], 2)[:, 0], x[:, 3], atol=1e-5)  # untrained: copy-last
    with torch.no_grad():  # a field of one pixel to the right
        conv.bias[0], conv.bias[2] = 1.0, 0.5  # changing everywhere
    moved = m(x[:, :4], 1)[:, 0]
    assert torch.allclose(moved[..., 1:], x[:, 3, ..., :-1], atol=1e-3)
    with torch.no_grad():  # half: a blend of both
        conv.bias[2] = 0.0
    half = m(x[:, :4], 1)[:, 0]
    assert torch.allclose(half, 0.5 * (moved + x[:, 3]), atol=1e-3)
    with torch.no_grad():  # nowhere: the frame kept
        conv.bias[2], conv.bias[3:] = -0.7, 0.3
    assert torch.allclose(m(x[:, :4], 1)[:, 0], x[:, 3], atol=1e-5)
    # it learns a pan: frames that shift right by a pixel per step; the field finds it
    torch.manual_seed(0)
    base = (
        torch.nn.functional.interpolate(
            torch.rand(4, 3, 8, 8), size=(40, 60), mode="bicubic", align_corners=False
        ).clamp(0, 1)
        * 1.6
        - 0.8
    )
    pan = torch.stack([base[..., 8 - k : 52 - k] for k in range(8)], 1)[..., 4:36, 6:38]
    m = small_seq2seq(motion=True)
    copy = torch.nn.functional.mse_loss(pan[:, 3:4].expand(-1, 4, -1, -1, -1), pan[:, 4:])
    losses = _fit(
        m, lambda: torch.nn.functional.mse_loss(m(pan[:, :4], 4, pan[:, 4:]), pan[:, 4:]), steps=40, lr=3e-3
    )
    assert losses[-1] < 0.5 * copy.item(), (losses[-1], copy.item())
    with pytest.raises(ValueError, match="needs residual"):
        small_seq2seq(motion=True, residual=False)


def test_clip_output_never_saturates():
    from pyframepred.models._common import clip_through

    x = torch.tensor([-3.0, -1.0, 0.2, 0.99, 2.5], requires_grad=True)
    y = clip_through(x)
    assert torch.equal(y.detach(), x.detach().clamp(-1, 1))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(5))  # the gradient passes the clip, even far outside
    # a background at exactly -1 (Moving MNIST): the clip output copies it and still learns
    x = -torch.ones(2, 5, 1, 16, 16)
    x[..., 4:8, 4:8] = 1.0
    m = small_seq2seq(channels=1, motion=True, output="clip").eval()
    assert torch.equal(m(x[:, :4], 2)[:, 0], x[:, 3])  # untrained: copy-last, exactly
    m.train()
    target = x[:, 4:5].roll(2, dims=-1)
    loss = torch.nn.functional.mse_loss(m(x[:, :4], 1), target)
    loss.backward()
    assert m.decoder[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="output must be"):
        small_seq2seq(output="sigmoid")


def test_seq2seq_fused_matches_reference():
    x = frames(2, 6, 32, 32)
    m = small_seq2seq(residual=False)
    m.eval()
    a = m(x[:, :4], 2)
    m.fused = False
    b = m(x[:, :4], 2)
    assert torch.allclose(a, b, atol=1e-5)


def test_seq2seq_teacher_forcing_flag():
    torch.manual_seed(0)
    x = frames(2, 8, 32, 32)
    m = small_seq2seq(residual=False).train()
    forced = m(x[:, :4], 4, x[:, 4:])
    free = m(x[:, :4], 4)
    assert torch.equal(forced[:, 0], free[:, 0])  # same first step
    assert (forced[:, 1:] - free[:, 1:]).abs().max() > 1e-6  # then the true frames
    m.teacher_forcing = False
    assert torch.equal(m(x[:, :4], 4, x[:, 4:]), free)
    m.teacher_forcing = True
    m.eval()  # never forced at test time
    assert torch.equal(m(x[:, :4], 4, x[:, 4:]), m(x[:, :4], 4))


def test_bad_inputs():
    with pytest.raises(ValueError, match="Seq2Seq expects"):
        small_seq2seq()(torch.zeros(2, 4, 64, 64))
    with pytest.raises(ValueError, match="input frames"):
        small_ae()(torch.zeros(2, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="scales"):
        MultiScaleGenerator(width=0.0625)([torch.zeros(1, 12, 4, 4)])
    with pytest.raises(ValueError, match="increasing"):
        MultiScaleGenerator(scales=(16, 4))
    for kwargs in (dict(scales=(4, 16, 32)), dict(base_size=32), dict(scales=(16, 64, 128))):
        with pytest.raises(ValueError, match="must be base_size"):  # it failed at the first validation
            MultiScaleGenerator(**kwargs)
    with pytest.raises(ValueError, match="lambda_adv"):
        MultiScaleLoss(lambda_adv=-1)


def _fit(model, loss_fn, steps=15, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _moving_square(b=4, t=8, h=32, w=32):
    x = -torch.ones(b, t, 3, h, w)
    for i in range(b):
        for k in range(t):
            y0 = 4 + i
            x0 = 2 + 2 * k
            x[i, k, :, y0 : y0 + 8, x0 : x0 + 8] = 1.0
    return x * 0.9


@pytest.mark.parametrize("fused", [True, False])
def test_training_steps_reduce_loss(fused):
    torch.manual_seed(0)
    x = _moving_square()
    s2s = small_seq2seq(fused=fused, residual=False)
    losses = _fit(s2s, lambda: torch.nn.functional.mse_loss(s2s(x[:, :4], 4, x[:, 4:]), x[:, 4:]))
    assert losses[-1] < 0.7 * losses[0]
    ae = small_ae(residual=False)
    losses = _fit(ae, lambda: torch.nn.functional.mse_loss(ae(x[:, :4]), x[:, 4]))
    assert losses[-1] < 0.7 * losses[0]
    g = MultiScaleGenerator(width=0.0625, residual=False)
    d = MultiScaleDiscriminator(width=0.0625)
    crit = MultiScaleLoss(fused=fused)
    tg = [
        torch.nn.functional.interpolate(x[:, 4], size=s, mode="area")
        for s in scale_sizes(g.scales, 64, 32, 32)
    ]

    def gen_loss():
        preds = g(x[:, :4])
        return crit.generator(preds, tg, d(x[:, :4], preds))[0]

    losses = _fit(g, gen_loss)
    assert losses[-1] < 0.8 * losses[0]


def test_multiscale_loss_weights_take_effect():
    torch.manual_seed(0)
    preds = [torch.rand(2, 3, s, s) * 2 - 1 for s in (4, 16)]
    tgts = [torch.rand(2, 3, s, s) * 2 - 1 for s in (4, 16)]
    fake = [torch.randn(2), torch.randn(2)]
    base, parts = MultiScaleLoss().generator(preds, tgts, fake)
    assert set(parts) == {"l2", "gdl", "adv"}
    expect = parts["l2"] + parts["gdl"] + 0.05 * parts["adv"]  # paper defaults
    # the paper's normalisation: image terms summed over pixels, averaged over the batch
    assert torch.allclose(parts["l2"], sum(((p - t) ** 2).sum() / 2 for p, t in zip(preds, tgts)))
    assert torch.allclose(
        parts["gdl"], sum(reference.gdl_loss(p, t, 1.0, "sum") / 2 for p, t in zip(preds, tgts))
    )
    assert torch.allclose(base, expect)
    l2_only, _ = MultiScaleLoss(lambda_gdl=0, lambda_adv=0).generator(preds, tgts, fake)
    assert torch.allclose(l2_only, parts["l2"])
    doubled, _ = MultiScaleLoss(lambda_l2=2).generator(preds, tgts, fake)
    assert torch.allclose(doubled - base, parts["l2"], atol=1e-3)
    adv, _ = MultiScaleLoss(lambda_adv=1).generator(preds, tgts, fake)
    assert torch.allclose(adv - base, 0.95 * parts["adv"], atol=1e-3)
    a2, p2 = MultiScaleLoss(alpha=2).generator(preds, tgts, fake)
    assert not torch.allclose(p2["gdl"], parts["gdl"])
    ref, _ = MultiScaleLoss(fused=False).generator(preds, tgts, fake)
    assert torch.allclose(ref, base, atol=1e-5)
    # summed over scales
    one, _ = MultiScaleLoss().generator(preds[:1], tgts[:1], fake[:1])
    two, _ = MultiScaleLoss().generator(preds[1:], tgts[1:], fake[1:])
    assert torch.allclose(one + two, base, atol=1e-6)
    # discriminator: real -> 1, fake -> 0
    crit = MultiScaleLoss()
    good = crit.discriminator([torch.full((2,), 9.0)], [torch.full((2,), -9.0)])
    bad = crit.discriminator([torch.full((2,), -9.0)], [torch.full((2,), 9.0)])
    assert good < 0.01 < bad
