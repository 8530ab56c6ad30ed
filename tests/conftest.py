import re

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pyframepred  # noqa: F401  (loads the compiled operators once, with a clear error if not built)

CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


class CellCalls(TorchDispatchMode):
    """Records the fused cell's operator calls (under a dispatch mode the layer calls the
    operators, not the kernels directly): (name, the gates' tensor, the cell state read)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name == "pyframepred::convlstm_gates_forward":
            self.calls.append(("forward", args[0], args[2]))
        elif name == "pyframepred::convlstm_gates_backward":
            self.calls.append(("backward", args[2], args[3]))
        return func(*args, **(kwargs or {}))


#: Command-line flags of the smallest training run (4 steps, one thread, no progress bar).
TINY = ["--preset", "tiny", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """A small embedded-style data set shared by the training, checkpoint and CLI tests: two
    classes, two groups each (one held out), two videos per class, 16-20 frames of real H.264.
    Tests read it; none writes into it but the video index, which they all share."""
    from pyframepred.data import synthetic

    return synthetic.generate(
        tmp_path_factory.mktemp("videos"),
        seed=1,
        videos_per_class=2,
        groups_per_class=2,
        frames=(16, 20),
        classes=synthetic.CLASSES[:2],
        progress=False,
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# CPU kernel tests at every ISA level (csrc/cpu/dispatch.cpp). A module marked `cpu_isa` runs each
# of its tests once per level -- default, avx2, avx512, avx512_bf16, amx -- switching the kernels with
# pyframepred.ops._set_cpu_isa; a level this CPU cannot run is skipped with the feature it lacks.
# Tests of registration rather than arithmetic (torch.compile, opcheck) and of the CUDA kernels
# run once, at the level chosen at load time.
CPU_ISA_LEVELS = ("default", "avx2", "avx512", "avx512_bf16", "amx")
_ONCE = re.compile(r"compile|opcheck|cuda|bad_input|source_folder|extension_is")


def pytest_configure(config):
    config.addinivalue_line("markers", "cpu_isa: run each test at every CPU ISA level")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("cpu_isa") and not _ONCE.search(metafunc.function.__name__):
        metafunc.parametrize(
            "cpu_isa_level", CPU_ISA_LEVELS, indirect=True, ids=[f"isa-{lvl}" for lvl in CPU_ISA_LEVELS]
        )


@pytest.fixture(autouse=True)
def cpu_isa_level(request):
    """The CPU ISA level a test runs at (None: the one chosen at load time)."""
    level = getattr(request, "param", None)
    if level is None:
        yield None
        return
    from pyframepred.ops import _set_cpu_isa

    try:
        previous = _set_cpu_isa(level)
    except RuntimeError as exc:
        pytest.skip(str(exc).splitlines()[0])
    try:
        yield level
    finally:
        _set_cpu_isa(previous)
