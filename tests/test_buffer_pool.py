"""The CPU buffer pool's queries and release (pyframepred.ops.cpu_buffer_pool_stats,
empty_cpu_buffer_pool): what the fused layer's training step leaves in it, and that a release
hands the idle blocks back and restarts the peak from what is in use."""

import os
import subprocess
import sys

import pytest
import torch

from pyframepred import ops

pytestmark = pytest.mark.skipif(
    os.environ.get("PYFRAMEPRED_CPU_BUFFER_POOL_MB", "") == "0", reason="the pool is turned off"
)


def _layer_step():
    # Gates of 4 x 64 x 32 x 32 float32 per step: 1 MiB blocks, the pool's smallest.
    T, N, C = 3, 4, 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, N, 8, 32, 32, generator=g)
    wx = torch.randn(4 * C, 8, 3, 3, generator=g, requires_grad=True)
    wh = torch.randn(4 * C, C, 3, 3, generator=g, requires_grad=True)
    h_seq, _ = ops.convlstm_layer(x, T, wx, wh)
    torch.autograd.grad(h_seq.sum(), [wx, wh])


def test_a_training_step_leaves_idle_blocks_and_a_release_frees_them():
    _layer_step()
    stats = ops.cpu_buffer_pool_stats()
    assert set(stats) == {"idle", "in_use", "peak_in_use", "budget"}
    if os.environ.get("PYFRAMEPRED_CPU_BUFFER_POOL_MB") is None:
        assert stats["budget"] is None  # the default: the peak in use
    assert stats["idle"] >= 1 << 20, stats
    assert stats["peak_in_use"] >= stats["in_use"] + (1 << 20), stats

    ops.empty_cpu_buffer_pool()
    after = ops.cpu_buffer_pool_stats()
    assert after["idle"] == 0 and after["in_use"] == stats["in_use"], after
    assert after["peak_in_use"] == after["in_use"], after

    _layer_step()  # the pool fills again from the working set of the next step
    again = ops.cpu_buffer_pool_stats()
    assert again["idle"] >= 1 << 20 and again["peak_in_use"] >= 1 << 20, again


_NEW_SIZES_TAKE_OVER = """
import torch
from pyframepred import ops

def gates(C):
    g = torch.Generator().manual_seed(0)
    xg, c = torch.randn(4, 4 * C, 32, 32, generator=g), torch.randn(4, C, 32, 32, generator=g)
    torch.ops.pyframepred.convlstm_gates_forward(xg, None, c, None, None, True)
    # the saved gates (4 x 4C x 32 x 32 float32) are freed on return

gates(32)  # a 2 MiB block, idle afterwards: 2 of the 4 MiB budget
gates(48)  # a 3 MiB block: keeping it needs the 2 MiB one to go
print(ops.cpu_buffer_pool_stats()["idle"] >> 20)
"""


def test_a_new_working_set_takes_the_place_of_an_old_one():
    # With a 4 MiB budget, an idle 2 MiB block of an earlier size and a 3 MiB block just freed do
    # not fit together: the older one goes and the new one is kept (before, the new block went
    # back to the system at every step while the stale one stayed: 2 MiB idle).
    env = dict(os.environ, PYFRAMEPRED_CPU_BUFFER_POOL_MB="4")
    out = subprocess.run(
        [sys.executable, "-c", _NEW_SIZES_TAKE_OVER], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "3", out.stdout
