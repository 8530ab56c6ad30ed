"""The frames task's pixel loss: per-pixel means, or each frame weighed by its own error."""

import types

import pytest
import torch
import torch.nn.functional as F

from pyframepred.errors import ConfigError
from pyframepred.nn import GDLLoss
from pyframepred.training.config import TrainConfig
from pyframepred.training.tasks import pixel_loss


def _cfg(frame_loss, lambda_gdl=1.0):
    return types.SimpleNamespace(
        lambda_l2=1.0, lambda_gdl=lambda_gdl, alpha=1.0, fused=True, frame_loss=frame_loss
    )


def _frames(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 3, 12, 10, generator=g) * 2 - 1
    # frames with errors of very different sizes: a still scene beside fast motion
    scale = torch.tensor([0.01, 0.3, 1.0, 0.03, 0.1, 0.5]).view(2, 3, 1, 1, 1)
    pred = (target + scale * torch.randn(target.shape, generator=g)).requires_grad_()
    return pred, target


def test_mean_is_the_per_pixel_means():
    pred, target = _frames()
    loss, parts = pixel_loss(_cfg("mean"), pred, target)
    l2 = F.mse_loss(pred, target)
    gdl = GDLLoss(1.0, "mean", True)(pred, target)
    torch.testing.assert_close(loss, l2 + gdl)
    torch.testing.assert_close(parts["l2"], l2.detach())
    torch.testing.assert_close(parts["gdl"], gdl.detach())


@pytest.mark.parametrize("shape", [(6, 3, 12, 10), (2, 3, 3, 12, 10)])
def test_log_has_the_gradient_of_the_mean_log_error(shape):
    pred, target = _frames()
    pred, target = pred.detach().reshape(shape).requires_grad_(), target.reshape(shape)
    loss, parts = pixel_loss(_cfg("log", lambda_gdl=0), pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    frame_l2 = (pred - target).square().flatten(-3).mean(-1)
    (want,) = torch.autograd.grad(torch.log(frame_l2 + 4e-5).sum(), pred)
    # the same direction (the weights only rescale the step as a whole)
    cos = F.cosine_similarity(grad.flatten(), want.flatten(), dim=0)
    assert cos > 1 - 1e-5
    # the reported parts stay the plain means, comparable with "mean" runs
    torch.testing.assert_close(parts["l2"], F.mse_loss(pred, target).detach())


def test_log_weighs_the_small_errors_up():
    pred, target = _frames()
    grads = {}
    for kind in ("mean", "log"):
        loss, _ = pixel_loss(_cfg(kind), pred, target)
        (grads[kind],) = torch.autograd.grad(loss, pred)
    share = {k: g.flatten(2).norm(dim=-1) / g.norm() for k, g in grads.items()}  # per frame
    # the frame with the smallest error (first) gets a larger share of the step under "log",
    # the one with the largest (third) a smaller one
    assert share["log"][0, 0] > 2 * share["mean"][0, 0]
    assert share["log"][0, 2] < share["mean"][0, 2]


def test_log_floor_keeps_a_perfect_frame_finite():
    target = torch.zeros(2, 3, 8, 8)
    pred = target.clone()
    pred[1] += 0.5
    pred.requires_grad_()
    loss, _ = pixel_loss(_cfg("log"), pred, target)
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[1].abs().sum() > 0


def test_frame_loss_setting_is_checked_and_defaults_per_model():
    with pytest.raises(ConfigError, match="frame_loss"):
        TrainConfig(model="seq2seq", frame_loss="median").resolved()
    with pytest.raises(ConfigError, match="setting of the frames task"):
        TrainConfig(model="multiscale", frame_loss="log").resolved()
    assert TrainConfig(model="seq2seq").resolved().frame_loss == "log"
    assert TrainConfig(model="autoencoder").resolved().frame_loss == "mean"
    assert TrainConfig(model="autoencoder", frame_loss="log").resolved().frame_loss == "log"
