"""ConvLSTMCell / ConvLSTM modules: fused vs reference equivalence, state handling, errors."""

import copy

import pytest
import torch
from conftest import CellCalls, requires_cuda
from torch import nn

from pyframepred import ops, reference
from pyframepred.nn import ConvLSTM, ConvLSTMCell


def _grads(module, loss):
    return torch.autograd.grad(loss, list(module.parameters()))


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_cell_fused_equals_reference(peephole, bias):
    cell = ConvLSTMCell(3, 8, 3, bias=bias, peephole=peephole).double()
    if peephole:
        torch.nn.init.normal_(cell.peephole)
    x1, x2 = torch.randn(2, 2, 3, 9, 11, dtype=torch.float64).unbind(0)
    results = []
    for fused in (True, False):
        cell.fused = fused
        h, c = cell(x1)  # zero state
        h, c = cell(x2, (h, c))  # carried state: every parameter is used
        results.append((h, c, _grads(cell, (h**2).sum() + c.sum())))
    (h1, c1, g1), (h2, c2, g2) = results
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(c1, c2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("num_layers,hidden", [(1, 6), (3, [4, 6, 5])])
def test_convlstm_fused_equals_reference(batch_first, num_layers, hidden):
    m = ConvLSTM(
        3,
        hidden,
        kernel_size=[3, (5, 3), 1][:num_layers] if num_layers == 3 else 3,
        num_layers=num_layers,
        batch_first=batch_first,
        peephole=True,
    ).double()
    for cell in m.cells:
        torch.nn.init.normal_(cell.peephole, std=0.3)
    x = torch.randn(2, 5, 3, 10, 12, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    results = []
    for fused in (True, False):
        m.fused = fused
        out, states = m(x)
        loss = (out**2).sum() + sum(c.sum() for _, c in states)
        results.append((out, states, _grads(m, loss)))
    (o1, s1, g1), (o2, s2, g2) = results
    torch.testing.assert_close(o1, o2)
    for (h1, c1), (h2, c2) in zip(s1, s2):
        torch.testing.assert_close(h1, h2)
        torch.testing.assert_close(c1, c2)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    expected_shape = (2, 5) if batch_first else (5, 2)
    last = hidden if isinstance(hidden, int) else hidden[-1]
    assert o1.shape == (*expected_shape, last, 10, 12)


def test_convlstm_matches_unrolled_cells():
    """The batched input convolution gives exactly what stepping the cell does."""
    m = ConvLSTM(2, 4, 3, num_layers=2).double()
    x = torch.randn(3, 4, 2, 8, 8, dtype=torch.float64)
    out, states = m(x)
    hs = x
    for cell in m.cells:
        state, steps = None, []
        for t in range(x.shape[1]):
            state = cell(hs[:, t], state)
            steps.append(state[0])
        hs = torch.stack(steps, 1)
    torch.testing.assert_close(out, hs)
    torch.testing.assert_close(states[-1][0], hs[:, -1])


def test_state_passing_encoder_decoder():
    enc = ConvLSTM(3, [8, 8], 3, num_layers=2)
    dec = ConvLSTM(3, [8, 8], 3, num_layers=2)
    x = torch.randn(2, 4, 3, 16, 16)
    _, states = enc(x)
    out, _ = dec(x[:, -1:], states)
    assert out.shape == (2, 1, 8, 16, 16)
    out.sum().backward()
    # gradients reach the encoder through the passed state; no parameter is left unused
    for p in list(enc.parameters()) + list(dec.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_state_dict_interchangeable():
    a = ConvLSTM(3, 5, 3, fused=True, peephole=True)
    b = ConvLSTM(3, 5, 3, fused=False, peephole=True)
    b.load_state_dict(a.state_dict())
    assert a.state_dict().keys() == b.state_dict().keys()
    x = torch.randn(1, 3, 3, 7, 7)
    torch.testing.assert_close(a(x)[0], b(x)[0])


def test_any_frame_size_and_dtype():
    m = ConvLSTM(1, 4, (3, 5)).double()
    for hw in [(5, 5), (17, 9), (1, 1)]:
        out, _ = m(torch.randn(1, 2, 1, *hw, dtype=torch.float64))
        assert out.shape[-2:] == hw and out.dtype == torch.float64


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_bfloat16(fused):
    m = ConvLSTM(3, 6, 3, fused=fused, peephole=True)
    x = torch.randn(2, 3, 3, 8, 8)
    ref, _ = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, states = m(x)
    # The one autocast policy, fused or not: h in the autocast dtype, c in float32 (the reference
    # computes h in float32 by PyTorch's promotion, bfloat16 gates + float32 bias, and rounds it).
    assert out.dtype == states[0][0].dtype == torch.bfloat16
    assert states[0][1].dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_channels_last_input():
    m = ConvLSTM(3, 6, 3)
    x = torch.randn(2, 3, 3, 8, 8)
    ref, _ = m(x)
    xc = x.flatten(0, 1).to(memory_format=torch.channels_last).view(2, 3, 3, 8, 8)
    out, _ = m(xc)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Outputs in the input's layout: channels_last frames for channels_last frames.
    assert ref.is_contiguous()
    assert out.stride(2) == 1 and out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    # ... and the gradients agree whatever layout they flow back in.
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad((ref * w).sum(), list(m.parameters()))
    g_cl = torch.autograd.grad((m(xc)[0] * w).sum(), list(m.parameters()))
    for a, b in zip(g_cl, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_cell_zero_state_in_the_gates_layout(channels_last):
    """ConvLSTMCell started without a state hands the fused cell a zero state laid out as the
    gates: channels_last for a channels_last cell and input (read in order, not across channels)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cell = ConvLSTMCell(3, 8, 3).to(memory_format=fmt)
    x = torch.randn(2, 3, 6, 7).contiguous(memory_format=fmt)
    with CellCalls() as log:
        h, c = cell(x)
    ((_, x_gates, c_prev),) = log.calls
    assert x_gates.is_contiguous(memory_format=fmt) and c_prev.is_contiguous(memory_format=fmt)
    assert not c_prev.any()
    torch.testing.assert_close(h, cell(x.contiguous())[0], atol=1e-6, rtol=1e-6)


def test_fused_flag_switches_op(monkeypatch):
    calls = []
    monkeypatch.setattr(
        ops, "convlstm_layer", lambda *a: calls.append("layer") or ops._layer.convlstm_layer(*a)
    )
    monkeypatch.setattr(
        ops, "convlstm_gates", lambda *a: calls.append("cell") or reference.convlstm_gates(*a)
    )
    m = ConvLSTM(1, 2, 3)
    m(torch.randn(1, 2, 1, 4, 4))
    assert calls == ["layer"]  # the fused layer runs the whole sequence as one op
    m.cells[0](torch.randn(1, 1, 4, 4))
    assert calls == ["layer", "cell"]  # the cell is the step-by-step drop-in
    m.fused = False
    m(torch.randn(1, 2, 1, 4, 4))
    assert calls == ["layer", "cell"]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=4), "odd"),
        (dict(kernel_size=(3, 2)), "odd"),
        (dict(num_layers=2, hidden_channels=[4, 4, 4]), "one per layer"),
        (dict(num_layers=0), "num_layers"),
        (dict(kernel_size=(3, 3, 3)), r"kernel_size must be an odd int or a pair of them, or a list"),
    ],
)
def test_constructor_errors(kwargs, match):
    args = dict(in_channels=3, hidden_channels=4, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        ConvLSTM(**args)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_channels=4.0), "hidden_channels must be an int or a list of ints, got 4.0"),
        (dict(hidden_channels=[4, 4.5]), "hidden_channels must be an int, got 4.5"),
        (dict(num_layers=2.0), "num_layers must be an int, got 2.0"),
        (dict(in_channels=True), "in_channels must be an int, got True"),
    ],
)
def test_constructor_type_errors(kwargs, match):
    args = dict(in_channels=3, hidden_channels=4)
    args.update(kwargs)
    with pytest.raises(TypeError, match=match):
        ConvLSTM(**args)


def test_constructor_takes_numpy_ints_and_sequences():
    np = pytest.importorskip("numpy")
    assert ConvLSTM(np.int64(3), np.int64(4)).hidden_channels == [4]
    assert ConvLSTM(3, np.array([4, 5])).hidden_channels == [4, 5]
    assert ConvLSTM(3, range(2, 4)).hidden_channels == [2, 3]


@pytest.mark.parametrize(
    "hook",
    ["spectral_norm", "weight_norm", "prune", "forward_hook", "backward_hook", "backward_pre_hook"],
)
def test_hooks_on_the_convolutions_run_as_with_the_reference(hook):
    # The layer operator reads the weights itself; hook-based weight tools of torch.nn.utils
    # recompute the weight in a forward pre-hook, so a layer with hooks on its convolutions calls
    # the modules (step by step, fused cell). Values, gradients and the hooks' calls must equal
    # the reference path's.
    from torch.nn.utils import prune, spectral_norm, weight_norm

    calls = []

    def build(fused):
        torch.manual_seed(0)
        m = ConvLSTM(3, [4, 5], 3, fused=fused)
        for cell in m.cells:
            for conv in (cell.conv_x, cell.conv_h):
                if hook == "spectral_norm":
                    spectral_norm(conv)
                elif hook == "weight_norm":
                    weight_norm(conv)
                elif hook == "prune":
                    prune.l1_unstructured(conv, "weight", 0.3)
                elif hook == "forward_hook":
                    conv.register_forward_hook(lambda mod, args, out: calls.append(out.shape[0]))
                elif hook == "backward_hook":
                    conv.register_full_backward_hook(lambda mod, gin, gout: calls.append(gout[0].shape[0]))
                else:
                    conv.register_full_backward_pre_hook(lambda mod, gout: calls.append(-gout[0].shape[0]))
        return m.eval()  # spectral_norm: no power iteration, so both paths see the same weight

    m, ref = build(True), build(False)  # (modules with these hooks cannot be deep-copied)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 3, 6, 7)
    results = []
    for model in (m, ref):
        calls.clear()
        out, states = model(x)
        grads = torch.autograd.grad(out.square().sum() + states[-1][1].sum(), list(model.parameters()))
        results.append((out, grads, list(calls)))
    (out, grads, calls_fused), (out_ref, grads_ref, calls_ref) = results
    torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)
    for g, g_ref in zip(grads, grads_ref):  # (spectral_norm's are ~1e3: relative to their scale)
        torch.testing.assert_close(g, g_ref, atol=1e-4 * g_ref.abs().max().item(), rtol=1e-4)
    assert calls_fused == calls_ref
    if hook == "forward_hook":
        assert calls_fused == [6, 2, 2, 6, 2, 2]  # per layer: the batched input conv, then per step
    elif hook == "backward_hook":  # the last layer's steps, its input conv; then the first's
        assert sorted(calls_fused) == [2, 2, 2, 2, 6, 6]
    # Training steps run (the hook-based prune and weight_norm rebuild the weight every call).
    opt = torch.optim.SGD(m.parameters(), 0.1)
    m.train()
    for _ in range(2):
        opt.zero_grad()
        m(x)[0].sum().backward()
        opt.step()


def test_global_backward_hooks_see_the_convolutions():
    # A global module backward hook (as a gradient-logging tool registers) sends the layer down
    # the step-by-step path, so it fires for the convolutions as with fused=False.
    seen = {}
    for fused in (True, False):
        torch.manual_seed(0)
        m = ConvLSTM(3, 4, 3, fused=fused)
        names = []
        handle = nn.modules.module.register_module_full_backward_hook(
            lambda mod, gin, gout: names.append((type(mod).__name__, round(gout[0].norm().item(), 4)))
        )
        try:
            m(torch.randn(2, 3, 3, 6, 7, generator=torch.Generator().manual_seed(1)))[0].sum().backward()
        finally:
            handle.remove()
        seen[fused] = names
    assert [n for n, _ in seen[True]] == ["ConvLSTM", "Conv2d", "Conv2d", "Conv2d"]
    assert [n for n, _ in seen[True]] == [n for n, _ in seen[False]]
    for (_, a), (_, b) in zip(seen[True], seen[False]):
        assert a == pytest.approx(b, rel=1e-4)


class _StandardisedConv(nn.Conv2d):
    """A weight-standardised convolution: a subclass with a forward of its own."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


@pytest.mark.parametrize("change", ["subclass", "padding_mode", "conv_bias", "not_a_conv", "same"])
def test_convolutions_the_operator_does_not_compute_run_as_modules(change, monkeypatch):
    # The layer operator reads only the weights of plain convolutions; a convolution that computes
    # something else (its own forward, reflect padding, a bias, another module) runs as a module,
    # step by step, so fused=True equals fused=False; padding="same" is the plain convolution.
    torch.manual_seed(0)
    m = ConvLSTM(3, [4, 5], 3)
    cell = m.cells[1]
    if change == "subclass":
        conv = _StandardisedConv(5, 20, 3, padding=1, bias=False)
        conv.weight.data.copy_(cell.conv_h.weight)
        cell.conv_h = conv
    elif change == "padding_mode":
        cell.conv_h.padding_mode = "reflect"
    elif change == "conv_bias":
        cell.conv_x.bias = nn.Parameter(torch.randn(20))
    elif change == "not_a_conv":
        cell.conv_x = nn.Sequential(nn.Conv2d(4, 20, 1), nn.Conv2d(20, 20, 3, padding=1, bias=False))
    else:
        cell.conv_x.padding = "same"
    ref = copy.deepcopy(m)
    ref.fused = False
    calls = []
    monkeypatch.setattr(ops, "convlstm_layer", lambda *a: calls.append(1) or ops._layer.convlstm_layer(*a))
    x = torch.randn(2, 3, 3, 6, 7)
    out, states = m(x)
    out_ref, states_ref = ref(x)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    grads = _grads(m, out.square().sum() + states[-1][1].sum())
    grads_ref = _grads(ref, out_ref.square().sum() + states_ref[-1][1].sum())
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=1e-4)
    # the first layer keeps the operator; the second only where its convolutions are plain
    assert calls == ([1, 1] if change == "same" else [1])


@pytest.mark.parametrize("module", ["cell", "layer"])
@pytest.mark.parametrize("fused", [True, False])
def test_a_bfloat16_module_takes_autocasts_state_outside_autocast(module, fused):
    # The state autocast returns -- h bfloat16, c float32 -- fed back to a bfloat16 module with
    # autocast off: h stays bfloat16 (the next step's convolution takes it), c float32, fused or not.
    torch.manual_seed(0)
    cls = ConvLSTMCell if module == "cell" else ConvLSTM
    m = cls(3, 4, 3, peephole=True, fused=fused).bfloat16()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:  # peephole: nonzero, so its dtype matters
                p.normal_(0, 0.5)
    x = torch.randn(2, 3, 3, 5, 6).bfloat16()
    state = (torch.randn(2, 4, 5, 6).bfloat16(), torch.randn(2, 4, 5, 6))
    if module == "cell":
        h, c = m(x[:, 0], state)
        h, c = m(x[:, 1], (h, c))
    else:
        out, [(h, c)] = m(x, [state])
        assert out.dtype == torch.bfloat16
    assert (h.dtype, c.dtype) == (torch.bfloat16, torch.float32)
    # the same run in float32 (state and parameters as given): bfloat16's rounding apart
    m32 = copy.deepcopy(m).float()
    state32 = tuple(t.float() for t in state)
    if module == "cell":
        h32, c32 = m32(x[:, 1].float(), m32(x[:, 0].float(), state32))
    else:
        _, [(h32, c32)] = m32(x.float(), [state32])
    torch.testing.assert_close(c, c32, atol=0.05, rtol=0.05)
    torch.testing.assert_close(h.float(), h32, atol=0.05, rtol=0.05)


def test_parametrized_weights_keep_the_layer_operator(monkeypatch):
    from torch.nn.utils import parametrizations

    m = ConvLSTM(3, 4, 3)
    parametrizations.weight_norm(m.cells[0].conv_x)
    calls = []
    monkeypatch.setattr(ops, "convlstm_layer", lambda *a: calls.append(1) or ops._layer.convlstm_layer(*a))
    ref = copy.deepcopy(m)
    ref.fused = False
    x = torch.randn(2, 3, 3, 6, 7)
    torch.testing.assert_close(m(x)[0], ref(x)[0], atol=1e-5, rtol=1e-5)
    assert calls == [1]


def test_one_step_without_state_leaves_the_hidden_weight_without_gradient():
    # h_{-1} is zero, so conv_h is unused: None, as in the reference, not zeros (which an
    # optimiser with momentum or weight decay would step on).
    for fused in (True, False):
        m = ConvLSTM(3, 4, 3, fused=fused)
        m(torch.randn(2, 1, 3, 6, 7))[0].sum().backward()
        assert m.cells[0].conv_h.weight.grad is None
        assert m.cells[0].conv_x.weight.grad is not None


@pytest.mark.parametrize("module", ["layer", "cell"])
def test_autocast_output_dtype_is_the_same_fused_or_not(module):
    torch.manual_seed(0)
    m = ConvLSTM(3, 4, 3) if module == "layer" else ConvLSTMCell(3, 4, 3)
    ref = copy.deepcopy(m)
    ref.fused = False
    x = torch.randn(2, 3, 3, 6, 7) if module == "layer" else torch.randn(2, 3, 6, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (h, *_), (h_ref, *_) = m(x), ref(x)
    assert h.dtype == h_ref.dtype == torch.bfloat16
    torch.testing.assert_close(h.float(), h_ref.float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("frames", ["nchw", "channels_last"])
def test_last_states_are_laid_out_as_with_the_reference(frames):
    """The fused layer runs channels_last on the CPU; its last states come back laid out as the
    step-by-step path gives them (as the output's frames), so code written for NCHW states (a
    .view of them) works with either path."""
    torch.manual_seed(0)
    m = ConvLSTM(3, [8, 8], 3)
    ref = copy.deepcopy(m)
    ref.fused = False
    x = torch.randn(2, 3, 3, 6, 5)
    if frames == "channels_last":
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
    (out, states), (out_ref, states_ref) = m(x), ref(x)
    torch.testing.assert_close(out, out_ref)
    for (h, c), (h_ref, c_ref) in zip(states, states_ref):
        for t, t_ref in ((h, h_ref), (c, c_ref)):
            assert t.stride() == t_ref.stride()
            torch.testing.assert_close(t, t_ref)
    if frames == "nchw":
        assert states[-1][0].view(2, -1).shape == (2, 8 * 30)
    # Passed back in (an encoder's states to a decoder), they give what one call over both gives.
    out2, _ = m(x, states)
    out_both, _ = m(torch.cat([x, x], 1))
    torch.testing.assert_close(out2, out_both[:, 3:])


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_keeps_c_float32_without_bias(fused):
    """Without a bias or peephole the cell state still stays float32 under autocast (it took the
    gates' bfloat16 on the reference path), and h comes out in the autocast dtype."""
    torch.manual_seed(0)
    m = ConvLSTM(4, 4, 3, bias=False, fused=fused)
    cell = ConvLSTMCell(4, 4, 3, bias=False, fused=fused)
    x = torch.randn(2, 3, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, [(h, c)] = m(x)
        h1, c1 = cell(x[:, 0])
    assert (h.dtype, c.dtype) == (h1.dtype, c1.dtype) == (torch.bfloat16, torch.float32)


def test_reference_path_of_a_float64_model_under_autocast():
    """Autocast leaves float64 convolutions alone: the reference path keeps h float64 (it cast h
    to the autocast dtype, and the next step's float64 convolution then failed), as the fused."""
    torch.manual_seed(0)
    m = ConvLSTM(3, 4, 3, fused=False).double()
    x = torch.randn(1, 3, 3, 5, 5, dtype=torch.float64)
    expected, _ = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, [(h, c)] = m(x)
    assert out.dtype == h.dtype == c.dtype == torch.float64
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("fused", [True, False])
def test_modules_run_on_the_meta_device(fused):
    """Shapes without data (e.g. to size a model): the modules run on the meta device, where
    autocast has no state to ask about."""
    with torch.device("meta"):
        cell = ConvLSTMCell(3, 8, 3, fused=fused)
        layer = ConvLSTM(3, [8, 8], 3, fused=fused)
        h, c = cell(torch.randn(2, 3, 16, 16))
        out, _ = layer(torch.randn(2, 4, 3, 16, 16))
    assert h.shape == c.shape == (2, 8, 16, 16) and h.is_meta
    assert out.shape == (2, 4, 8, 16, 16) and out.is_meta


@pytest.mark.parametrize("frames", ["nchw", "channels_last"])
def test_reference_path_runs_under_torch_func(frames):
    """fused=False is the path for torch.func: vmap over a batch of sequences and per-sample
    gradients (vmap of grad) give what a loop over the samples gives."""
    torch.manual_seed(0)
    m = ConvLSTM(3, [4, 5], 3, peephole=True, fused=False).double()
    for cell in m.cells:
        torch.nn.init.normal_(cell.peephole)
    x = torch.randn(3 * 2 * 4, 3, 6, 7, dtype=torch.float64)
    if frames == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.view(3, 2, 4, 3, 6, 7)  # 3 samples of (N=2, T=4) sequences
    out = torch.func.vmap(lambda xs: m(xs)[0])(x)
    torch.testing.assert_close(out, torch.stack([m(xs)[0] for xs in x]), rtol=1e-12, atol=1e-12)

    params = dict(m.named_parameters())

    def loss(p, xs):
        return torch.func.functional_call(m, p, (xs,))[0].square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i, xs in enumerate(x):
        expected = torch.autograd.grad(loss(params, xs), list(params.values()))
        for name, g in zip(params, expected):
            torch.testing.assert_close(per_sample[name][i], g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["jvp", "jacfwd", "forward_ad_frozen", "forward_ad"])
def test_forward_mode_ad_of_the_fused_layer_is_refused_not_dropped(how):
    # The fused layer's autograd has no jvp: tangents must raise, never come out zero (as they
    # did where no input required a gradient); fused=False gives the finite-difference tangent.
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    fused = ConvLSTM(3, 4, 3).double()
    ref = copy.deepcopy(fused)
    ref.fused = False
    x, v = torch.randn(2, 2, 3, 5, 5, dtype=torch.float64), torch.randn(2, 2, 3, 5, 5, dtype=torch.float64)

    def tangent(m):
        if how == "jvp":
            return torch.func.jvp(lambda a: m(a)[0], (x,), (v,))[1]
        if how == "jacfwd":
            return torch.func.jacfwd(lambda a: m(a)[0].sum())(x)
        if how == "forward_ad_frozen":
            m.requires_grad_(False)
        with fwAD.dual_level():
            return fwAD.unpack_dual(m(fwAD.make_dual(x, v))[0]).tangent

    with pytest.raises(RuntimeError, match="forward-mode AD .* not supported by the fused layer"):
        tangent(fused)
    expected = tangent(ref)
    eps = 1e-6
    if how == "jacfwd":
        fd = (ref(x + eps * v)[0].sum() - ref(x - eps * v)[0].sum()) / (2 * eps)
        torch.testing.assert_close((expected * v).sum(), fd.detach(), rtol=1e-6, atol=1e-8)
    else:
        fd = (ref(x + eps * v)[0] - ref(x - eps * v)[0]) / (2 * eps)
        torch.testing.assert_close(expected, fd.detach(), rtol=1e-6, atol=1e-8)


def test_kernel_size_takes_numpy_ints_and_refuses_other_types():
    np = pytest.importorskip("numpy")
    assert ConvLSTMCell(3, 4, np.int64(3)).kernel_size == (3, 3)
    assert ConvLSTM(3, [4, 4], (np.int64(3), np.int64(5))).cells[1].kernel_size == (3, 5)
    assert ConvLSTM(3, 4, (np.int64(3), np.int64(5))).cells[0].kernel_size == (3, 5)
    assert ConvLSTMCell(3, 4, np.array([3, 5])).kernel_size == (3, 5)
    for bad in (3.0, True, "3"):
        with pytest.raises(
            TypeError, match=f"kernel_size must be an odd int or a pair of odd ints, got {bad!r}"
        ):
            ConvLSTMCell(3, 4, bad)
        with pytest.raises(TypeError, match="kernel_size must be an odd int or a pair of them, or a list"):
            ConvLSTM(3, 4, bad)
    with pytest.raises(TypeError, match="kernel_size must be an odd int or a pair of odd ints, got 3.0"):
        ConvLSTMCell(3, 4, (3.0, 3))


def test_forward_errors():
    m = ConvLSTM(3, 4, 3)
    with pytest.raises(ValueError, match="5-d input"):
        m(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="3 input channels"):
        m(torch.randn(2, 2, 4, 8, 8))
    with pytest.raises(ValueError, match="empty sequence"):
        m(torch.randn(2, 0, 3, 8, 8))
    with pytest.raises(ValueError, match="h must have shape"):
        m(torch.randn(2, 2, 3, 8, 8), [(torch.randn(2, 4, 8, 7), torch.randn(2, 4, 8, 8))])
    cell = ConvLSTMCell(3, 4, 3)
    with pytest.raises(ValueError, match="expects x of shape"):
        cell(torch.randn(2, 5, 8, 8))
    h = torch.zeros(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"state\[0\]: c must be a tensor, got NoneType"):
        m(torch.randn(2, 2, 3, 8, 8), [(h, None)])
    with pytest.raises(ValueError, match="state: c must be a floating-point tensor, got torch.int64"):
        cell(torch.randn(2, 3, 8, 8), (h, h.long()))


@requires_cuda
def test_convlstm_cuda_matches_cpu():
    m = ConvLSTM(3, [8, 8], 3, num_layers=2, peephole=True)
    x = torch.randn(2, 4, 3, 16, 16)
    out_cpu, _ = m(x)
    g_cpu = _grads(m, out_cpu.sum())
    m = m.cuda()
    out, _ = m(x.cuda())
    g = _grads(m, out.sum())
    torch.testing.assert_close(out.cpu(), out_cpu, atol=1e-4, rtol=1e-4)
    for a, b in zip(g, g_cpu):
        torch.testing.assert_close(a.cpu(), b, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("fused", [True, False])
def test_module_compiles_across_frame_sizes(fused):
    # A new frame size makes torch.compile recompile with dynamic shapes; the module must not
    # hit Inductor's symbolic-stride failure on flattened 5-d inputs (pytorch/pytorch#185510).
    torch._dynamo.reset()
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 8, 3, num_layers=2, fused=fused)
    compiled = torch.compile(lstm)
    for hw in ((12, 12), (16, 20), (20, 16)):
        x = torch.randn(2, 3, 3, *hw, requires_grad=True)
        out, states = compiled(x)
        ref, ref_states = lstm(x)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(states[-1][1], ref_states[-1][1], rtol=1e-4, atol=1e-5)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bf16"])
def test_module_compiles_at_sizes_the_buffer_pool_serves(dtype):
    """torch.compile traces the layer with fake tensors: the schedule's buffers of 1 MiB and more,
    which come from the CPU buffer pool in eager runs (as here before it), are made through the
    dispatcher then, where the pool's real tensors met the fake ones and tracing failed."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    lstm = ConvLSTM(8, 16, 3)
    x = torch.randn(4, 3, 8, 32, 32)  # gates of (4, 64, 32, 32): 1 MiB in float32
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    with autocast:
        ref, _ = lstm(x)
    (g_ref,) = torch.autograd.grad(ref.float().square().sum(), lstm.cells[0].conv_h.weight)
    compiled = torch.compile(lstm, fullgraph=True)
    with autocast:
        out, _ = compiled(x)
    (g,) = torch.autograd.grad(out.float().square().sum(), lstm.cells[0].conv_h.weight)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    torch.testing.assert_close(g, g_ref, **(tol if dtype == "float32" else dict(rtol=5e-2, atol=5e-2)))


def test_torch_export_and_pt2_round_trip(tmp_path):
    """A model with the fused layer exports with torch.export (the graph keeps the custom op, so a
    LibTorch/AOTInductor deployment needs libpyframepred_ops) and survives save/load."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = ConvLSTM(3, 8, 3, num_layers=2)

        def forward(self, x):
            out, states = self.lstm(x)
            return out, states[-1][1]

    net = Net().eval()
    x = torch.randn(2, 4, 3, 12, 16)
    ep = torch.export.export(net, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("pyframepred.convlstm_layer" in t for t in targets), targets
    path = tmp_path / "net.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    for a, b in zip(loaded(x), net(x)):
        torch.testing.assert_close(a, b)


def test_hidden_channels_list_sets_the_layer_count():
    m = ConvLSTM(3, [4, 6])
    assert m.num_layers == 2 and [c.hidden_channels for c in m.cells] == [4, 6]
    out, states = m(torch.randn(1, 2, 3, 5, 5))
    assert out.shape == (1, 2, 6, 5, 5) and len(states) == 2
    assert ConvLSTM(3, 4).num_layers == 1 and ConvLSTM(3, 4, num_layers=3).num_layers == 3


def test_public_names():
    assert {"convlstm_gates", "convlstm_layer", "gdl_loss"} <= set(ops.__all__)
    assert {"convlstm_gates", "gdl_loss"} <= set(reference.__all__)
    for mod in (ops, reference):
        for name in mod.__all__:
            assert callable(getattr(mod, name))
