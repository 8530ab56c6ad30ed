"""ConvLSTM benchmarks: the fused gate op and one ConvLSTM layer over T=10 steps.

Each group holds the fused implementation, the plain-PyTorch reference (eager), and
``torch.compile`` of the reference on the same inputs; the layer groups also hold the formulation
most code uses today (one convolution over ``cat(x, h)`` per step, eager gate math).

By default only the small sizes run, with few rounds; ``--bench-full`` adds the realistic sizes
and the recorded round counts.
"""

from __future__ import annotations

import pytest
import torch
from conftest import full_size, rounds, saved_tensor_bytes, sync
from torch import nn

from pyframepred import ops, reference
from pyframepred.nn import ConvLSTM

# (N, C, H, W) of the gate op
OP_SIZES = {"realistic": (16, 64, 64, 64), "small": (4, 16, 16, 16)}
# (N, T, Cin, C, H, W) of one layer; the CPU gets a lighter "realistic" size (convolutions dominate)
LAYER_SIZES = {
    "cpu": {"realistic": (8, 10, 16, 32, 32, 32), "small": (4, 10, 8, 16, 16, 16)},
    "cuda": {"realistic": (16, 10, 64, 64, 64, 64), "small": (4, 10, 8, 16, 16, 16)},
}
IMPLS = ["fused", "reference", "compile"]
# Sizes that run: the small ones always, the realistic ones with --bench-full.
RUN_SIZES = ["realistic", "small"] if full_size() else ["small"]

_COMPILED = {}


def _compiled(key, fn):
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=False)
    return _COMPILED[key]


def _op_fn(impl):
    if impl == "fused":
        return ops.convlstm_gates
    if impl == "reference":
        return reference.convlstm_gates
    return _compiled("op", reference.convlstm_gates)


def _op_inputs(size, device, requires_grad):
    N, C, H, W = size
    g = torch.Generator(device="cpu").manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(device).requires_grad_(requires_grad)

    return t(N, 4 * C, H, W), t(N, 4 * C, H, W), t(N, C, H, W), t(4 * C)


def _elem_bytes(size):
    N, C, H, W = size
    return N * C * H * W * 4  # float32, per channel-plane set of C channels


@pytest.mark.parametrize("size", RUN_SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_op_forward(benchmark, annotate, device, impl, size):
    benchmark.group = f"convlstm-op forward {size} {OP_SIZES[size]} {device}"
    fn = _op_fn(impl)
    xg, hg, cp, b = _op_inputs(OP_SIZES[size], device, requires_grad=False)

    def run():
        out = fn(xg, hg, cp, b)
        sync(device)
        return out

    for _ in range(3):
        run()
    benchmark.pedantic(run, rounds=rounds(20 if device == "cuda" else 8, 3), iterations=1, warmup_rounds=1)
    annotate(bytes_moved=11 * _elem_bytes(OP_SIZES[size]), impl=impl)  # read 4C+4C+C, write 2C


@pytest.mark.parametrize("size", RUN_SIZES)
@pytest.mark.parametrize("impl", IMPLS)
def test_op_forward_backward(benchmark, annotate, device, impl, size):
    benchmark.group = f"convlstm-op forward+backward {size} {OP_SIZES[size]} {device}"
    fn = _op_fn(impl)
    xg, hg, cp, b = _op_inputs(OP_SIZES[size], device, requires_grad=True)
    gh = torch.randn_like(cp)
    gc = torch.randn_like(cp)

    def run():
        h, c = fn(xg, hg, cp, b)
        grads = torch.autograd.grad((h, c), (xg, hg, cp, b), (gh, gc))
        sync(device)
        return grads

    for _ in range(3):
        run()
    benchmark.pedantic(run, rounds=rounds(20 if device == "cuda" else 6, 3), iterations=1, warmup_rounds=1)
    # forward reads 9C, writes h, c and the 4C saved gates; backward reads gates, c_prev, dh, dc
    # and writes 4C + C: 27 planes of C channels at the least.
    annotate(bytes_moved=27 * _elem_bytes(OP_SIZES[size]), impl=impl)


@pytest.mark.parametrize("size", RUN_SIZES)
@pytest.mark.parametrize("impl", ["fused", "reference"])  # compiled backward can't be re-run alone
def test_op_backward(benchmark, annotate, device, impl, size):
    """Backward alone (forward done once outside the timed part, graph retained)."""
    benchmark.group = f"convlstm-op backward {size} {OP_SIZES[size]} {device}"
    fn = _op_fn(impl)
    xg, hg, cp, b = _op_inputs(OP_SIZES[size], device, requires_grad=True)
    h, c = fn(xg, hg, cp, b)
    gh = torch.randn_like(cp)
    gc = torch.randn_like(cp)

    def run():
        grads = torch.autograd.grad((h, c), (xg, hg, cp, b), (gh, gc), retain_graph=True)
        sync(device)
        return grads

    for _ in range(3):
        run()
    benchmark.pedantic(run, rounds=rounds(20 if device == "cuda" else 8, 3), iterations=1, warmup_rounds=1)
    annotate(bytes_moved=12 * _elem_bytes(OP_SIZES[size]), impl=impl)  # read 4C+3C, write 5C


@pytest.mark.parametrize("size", RUN_SIZES)
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_op_saved_bytes(benchmark, device, impl, size):
    """Bytes autograd keeps for backward (recorded in extra_info; the time is one forward)."""
    benchmark.group = f"convlstm-op saved-for-backward {size} {OP_SIZES[size]} {device}"
    fn = ops.convlstm_gates if impl == "fused" else reference.convlstm_gates
    xg, hg, cp, b = _op_inputs(OP_SIZES[size], device, requires_grad=True)
    packed, distinct, _ = saved_tensor_bytes(lambda: fn(xg, hg, cp, b))
    benchmark.pedantic(lambda: fn(xg, hg, cp, b), rounds=1, iterations=1)
    benchmark.extra_info.update(
        impl=impl, device=device, saved_bytes_packed=packed, saved_bytes_distinct=distinct
    )
    assert packed > 0 and distinct > 0, "no tensor was saved for backward"


class CatConvLSTM(nn.Module):
    """The common formulation: one convolution over cat(x, h) per step, eager gate math."""

    def __init__(self, cin, hidden, k=3):
        super().__init__()
        self.hidden = hidden
        self.conv = nn.Conv2d(cin + hidden, 4 * hidden, k, padding=k // 2)

    def forward(self, x):  # x: (N, T, C, H, W)
        N, T, _, H, W = x.shape
        h = x.new_zeros(N, self.hidden, H, W)
        c = torch.zeros_like(h)
        outs = []
        for t in range(T):
            i, f, g, o = self.conv(torch.cat([x[:, t], h], 1)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, 1), (h, c)


def _layer(impl, size, device):
    N, T, Cin, C, H, W = size
    key = ("layer", impl, size, device)
    if key in _COMPILED:
        return _COMPILED[key]
    if impl == "cat":
        model = CatConvLSTM(Cin, C).to(device)
        fn = model
    else:
        model = ConvLSTM(Cin, C, 3, fused=(impl == "fused")).to(device)
        fn = torch.compile(model, dynamic=False) if impl == "compile" else model
    _COMPILED[key] = (model, fn)
    return model, fn


@pytest.mark.parametrize("size", RUN_SIZES)
@pytest.mark.parametrize("impl", IMPLS + ["cat"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_layer(benchmark, annotate, device, impl, size, mode):
    shape = LAYER_SIZES["cuda" if device.startswith("cuda") else "cpu"][size]
    N, T, Cin, C, H, W = shape
    benchmark.group = f"convlstm-layer T={T} {mode} {size} (N,T,Cin,C,H,W)={shape} {device}"
    model, fn = _layer(impl, shape, device)
    x = torch.randn(N, T, Cin, H, W, device=device)
    params = list(model.parameters())

    def run():
        if mode == "forward":
            with torch.no_grad():
                out = fn(x)[0]
        else:
            out, _ = fn(x)
            torch.autograd.grad(out.sum(), params)
        sync(device)

    for _ in range(2 if full_size() else 1):
        run()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(
        run, rounds=rounds(10 if device.startswith("cuda") else 3, 2), iterations=1, warmup_rounds=0
    )
    extra = {"impl": impl, "mode": mode}
    if device.startswith("cuda"):
        extra["peak_mem_MiB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if mode == "forward+backward":
        packed, distinct, _ = saved_tensor_bytes(lambda: fn(x))
        extra.update(saved_bytes_packed=packed, saved_bytes_distinct=distinct)
    annotate(**extra)


REPEAT = 20


@pytest.mark.parametrize("size", ["realistic"])
@pytest.mark.parametrize(
    "case", ["fused-forward", "fused-forward-save", "fused-backward", "reference-forward", "compile-forward"]
)
def test_op_device_throughput(benchmark, annotate, device, case, size):
    """GPU: 20 back-to-back calls then one sync, so host overhead hides behind the kernels and the
    time per call is the device's. Bandwidth is counted with the bytes each pass must move."""
    if not device.startswith("cuda"):
        pytest.skip("launch-pipelined throughput is a GPU measurement")
    benchmark.group = f"convlstm-op device throughput {size} {OP_SIZES[size]} {device}"
    xg, hg, cp, b = _op_inputs(OP_SIZES[size], device, requires_grad=False)
    fwd = torch.ops.pyframepred.convlstm_gates_forward
    planes = {
        "fused-forward": 11,
        "fused-forward-save": 15,
        "fused-backward": 12,
        "reference-forward": 11,
        "compile-forward": 11,
    }[case]
    if case == "fused-backward":
        _, _, gates = fwd(xg, hg, cp, b, None, True)
        gh, gc = torch.randn_like(cp), torch.randn_like(cp)
        bwd = torch.ops.pyframepred.convlstm_gates_backward

        def once():
            return bwd(gh, gc, gates, cp, None, True)
    elif case.startswith("fused"):
        save = case.endswith("save")

        def once():
            return fwd(xg, hg, cp, b, None, save)
    else:
        fn = _op_fn(case.split("-")[0])

        def once():
            return fn(xg, hg, cp, b)

    def run():
        for _ in range(REPEAT):
            once()
        sync(device)

    for _ in range(3):
        run()
    benchmark.pedantic(run, rounds=rounds(10, 3), iterations=1, warmup_rounds=1)
    annotate(bytes_moved=REPEAT * planes * _elem_bytes(OP_SIZES[size]), impl=case, calls_per_round=REPEAT)
