import pytest
import torch

import pyframepred  # noqa: F401  (loads the compiled operators once, with a clear error if not built)

CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
