"""The ConvLSTM layer under torch.compile: a training step traces the layer as two operators
(convlstm_layer_train, convlstm_layer_backward) tied by an autograd registered in Python, so the
compiled graphs keep it one node each way; results equal the C++ autograd's."""

import pytest
import torch
from conftest import requires_cuda
from torch._dynamo.testing import AotEagerAndRecordGraphs
from torch.library import opcheck

import pyframepred.ops  # noqa: F401  (registers the operators' fake kernels and autograd)
from pyframepred.nn import ConvLSTM

_OPS = torch.ops.pyframepred


def _args(
    form, T=3, N=2, Cin=3, C=4, H=5, W=6, dtype=torch.float64, state=True, bias=True, peephole=True, seed=0
):
    """The layer's arguments, x in one of the forms the operator takes, every tensor a leaf."""
    g = torch.Generator().manual_seed(seed)

    def t(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=dtype) * scale

    x = {
        "batch_first": lambda: t(N, T, Cin, H, W).transpose(0, 1),
        "time_major": lambda: t(T, N, Cin, H, W),
        "channels_last": lambda: (
            t(T * N, Cin, H, W).contiguous(memory_format=torch.channels_last).view(T, N, Cin, H, W)
        ),
        "frames": lambda: t(T * N, Cin, H, W),
    }[form]()
    tensors = [x, t(4 * C, Cin, 3, 3, scale=0.3), t(4 * C, C, 3, 3, scale=0.3)]
    tensors += [t(4 * C) if bias else None, t(3, C) if peephole else None]
    tensors += [t(N, C, H, W), t(N, C, H, W)] if state else [None, None]
    leaves = [None if v is None else v.detach().requires_grad_() for v in tensors]
    return leaves[:1] + [T] + leaves[1:]


def _run(op, args, autocast=False):
    """Outputs and the gradients of every tensor argument under a loss touching each output."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        outs = op(*args)[:3]
    loss = sum(
        (o.float() * torch.randn(o.shape, generator=torch.Generator().manual_seed(i))).sum()
        for i, o in enumerate(outs)
    )
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    return list(outs) + list(torch.autograd.grad(loss, leaves))


@pytest.mark.parametrize("form", ["batch_first", "time_major", "channels_last", "frames"])
@pytest.mark.parametrize(
    "case",
    [
        dict(),
        dict(state=False, bias=False, peephole=False),
        dict(T=1),
        # Channel counts of the CPU's own (Winograd) convolutions: the merged schedule, in float32.
        dict(Cin=16, C=16, H=8, W=8, dtype=torch.float32),
        dict(Cin=16, C=16, H=8, W=8, dtype=torch.float32, state=False),
        dict(Cin=16, C=16, H=8, W=8, dtype=torch.float32, autocast=True),
        dict(dtype=torch.float32, state=False, autocast=True),
    ],
    ids=["all", "bare", "T1", "f32-merged", "f32-merged-nostate", "bf16-autocast-merged", "bf16-autocast"],
)
def test_train_ops_equal_the_layer_and_its_cpp_autograd(form, case):
    case = dict(case)
    autocast = case.pop("autocast", False)
    args = _args(form, **case)
    expected = _run(_OPS.convlstm_layer, args, autocast)
    got = _run(_OPS.convlstm_layer_train, args, autocast)
    for e, g in zip(expected, got):
        assert g.dtype == e.dtype and g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def test_opcheck_train_and_backward():
    args = _args("batch_first")
    opcheck(_OPS.convlstm_layer_train.default, tuple(args))
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    h_seq, h, c, h_prev, gates, cells = _OPS.convlstm_layer_train(*plain)
    assert h_prev.shape == (2 * 2, 4, 5, 6)  # h of steps 0 .. T-2, time-major frames
    torch.testing.assert_close(h_prev, h_seq[:2].flatten(0, 1), rtol=0, atol=0)
    x, T, wx, wh, b, p, h0, c0 = plain
    for mask in ([True] * 7, [True, False, True, False, True, False, True]):
        opcheck(
            _OPS.convlstm_layer_backward.default,
            (
                torch.randn_like(h_seq),
                None,
                torch.randn_like(c),
                x,
                T,
                wx,
                wh,
                b,
                p,
                h0,
                c0,
                h_prev,
                gates,
                cells,
                mask,
            ),
        )
    # No incoming gradient: zeros, laid out as the fake kernel says (a transposed peephole too).
    p_t = p.t().contiguous().t()
    opcheck(
        _OPS.convlstm_layer_backward.default,
        (None, None, None, x, T, wx, wh, b, p_t, h0, c0, h_prev, gates, cells, [True] * 7),
    )


def test_backward_asks_only_for_present_arguments():
    x, T, wx, wh, *_ = _args("time_major", state=False, bias=False, peephole=False)
    h_seq, _, _, h_prev, gates, cells = _OPS.convlstm_layer_train(
        x.detach(), T, wx.detach(), wh.detach(), None, None, None, None
    )

    def backward(h_prev=h_prev, gates=gates, mask=[True] + [False] * 6):
        none4 = (None, None, None, None)  # bias, peephole, h0, c0
        return _OPS.convlstm_layer_backward(
            h_seq, None, None, x, T, wx, wh, *none4, h_prev, gates, cells, mask
        )

    with pytest.raises(RuntimeError, match="absent argument"):
        backward(mask=[True] * 7)
    with pytest.raises(RuntimeError, match="expected 3 gates and 2 cells"):
        backward(gates=gates[:2])
    with pytest.raises(RuntimeError, match="h_prev must hold"):
        backward(h_prev=h_prev[:2])


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_compiled_output_changed_in_place_before_backward(batch_first, channels_last):
    """Backward reads the h sequence from frames of its own, not from the output: an in-place
    change of the compiled module's output (outside the compiled graph, where autograd's version
    check does not reach) leaves the gradients those of the changed values, as in eager mode."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    lstm = ConvLSTM(3, 4, 3, batch_first=batch_first)
    x = torch.randn(2, 3, 3, 6, 6)
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (2, 3))
    params = list(lstm.parameters())
    out, _ = lstm(x)
    expected = torch.autograd.grad(out.relu().sum(), params)
    out, _ = torch.compile(lstm, backend="aot_eager", fullgraph=True)(x)
    out.relu_()
    for e, g in zip(expected, torch.autograd.grad(out.sum(), params)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_second_derivative_raises():
    args = _args("time_major")
    h_seq, *_ = _OPS.convlstm_layer_train(*args)
    (gx,) = torch.autograd.grad(h_seq.square().sum(), args[0], create_graph=True)
    with pytest.raises(RuntimeError, match="not differentiable"):
        gx.sum().backward()


def _graph_ops(gm):
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_compiled_training_step_keeps_the_layer_one_node(autocast):
    """AOTAutograd's forward graph calls convlstm_layer_train once per layer and none of the
    schedule's steps (convolutions, cells); its backward graph convlstm_layer_backward once per
    layer. Values and gradients equal eager ones."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    lstm = ConvLSTM(16, [16, 16], 3, num_layers=2, peephole=True)
    x = torch.randn(2, 4, 16, 8, 8, requires_grad=True)

    def step(model):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, states = model(x)
        loss = out.float().square().sum() + states[-1][1].float().sum()
        return [out, states[-1][1]] + list(torch.autograd.grad(loss, [x, *lstm.parameters()]))

    expected = step(lstm)
    graphs = AotEagerAndRecordGraphs()
    got = step(torch.compile(lstm, backend=graphs, fullgraph=True))
    (fw,), (bw,) = graphs.fw_graphs, graphs.bw_graphs
    fw_ops, bw_ops = _graph_ops(fw), _graph_ops(bw)
    assert sum("convlstm_layer_train" in o for o in fw_ops) == 2, fw_ops
    assert sum("convlstm_layer_backward" in o for o in bw_ops) == 2, bw_ops
    steps = ("conv2d_same", "convlstm_gates", "conv2d_weight_grad", "convolution")
    assert not [o for o in fw_ops + bw_ops if any(s in o for s in steps)]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_compiled_inference_calls_the_layer():
    """Without gradients the compiled graph calls convlstm_layer itself (nothing saved)."""
    torch._dynamo.reset()
    lstm = ConvLSTM(3, 4, 3)
    x = torch.randn(1, 3, 3, 6, 6)
    graphs = AotEagerAndRecordGraphs()
    with torch.no_grad():
        out, _ = torch.compile(lstm, backend=graphs, fullgraph=True)(x)
        ref, _ = lstm(x)
    torch.testing.assert_close(out, ref)
    (fw,) = graphs.fw_graphs
    ops = _graph_ops(fw)
    assert any(o.startswith("pyframepred.convlstm_layer.") for o in ops), ops
    assert not any("convlstm_layer_train" in o for o in ops), ops


@requires_cuda
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("form", ["batch_first", "channels_last", "frames"])
def test_cuda_train_ops_equal_the_layer(form, autocast):
    """On a GPU: the two training operators against the layer with its C++ autograd (the same
    CUDA schedule and kernels), and the compiled module against eager."""
    args = [
        a.detach().cuda().requires_grad_() if isinstance(a, torch.Tensor) else a
        for a in _args(form, dtype=torch.float32)
    ]

    def run(op):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            outs = op(*args)[:3]
        loss = sum((o.float() * (i + 1)).square().mean() for i, o in enumerate(outs))
        return list(outs) + list(torch.autograd.grad(loss, [a for a in args if isinstance(a, torch.Tensor)]))

    for e, g in zip(run(_OPS.convlstm_layer), run(_OPS.convlstm_layer_train)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    lstm = ConvLSTM(3, [4, 4], 3, num_layers=2).cuda()
    x = torch.randn(2, 3, 3, 8, 8, device="cuda")
    step = lambda m: list(torch.autograd.grad(m(x)[0].square().sum(), list(lstm.parameters())))  # noqa: E731
    for e, g in zip(step(lstm), step(torch.compile(lstm, fullgraph=True))):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
