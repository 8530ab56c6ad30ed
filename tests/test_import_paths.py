"""Importing pyframepred from other folders than the checkout: the installed package must win.

Run from the folder that holds a checkout (``~`` for ``~/pyframepred``), ``import pyframepred``
finds the checkout folder itself first: a folder without ``__init__.py``, which Python would import
as an empty namespace package called pyframepred (and the ops then fail to register) unless the
installed package is on the normal import path, as pyproject.toml's ``package-dir`` makes it for
editable installs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyframepred

PKG = Path(pyframepred.__file__).resolve().parent
CHECKOUT = PKG.parent

# Uses the fused op, so a namespace-package import (which never loads the extension) fails here.
SCRIPT = """
import torch, pyframepred
from pyframepred import ops, reference
x, c = torch.randn(1, 8, 3, 3), torch.randn(1, 2, 3, 3)
got, want = ops.convlstm_gates(x, None, c), reference.convlstm_gates(x, None, c)
torch.testing.assert_close(got, want)
print(pyframepred.__file__)
"""


def _env():
    env = dict(os.environ)
    if env.get("PYTHONPATH"):  # relative entries would change meaning in another folder
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p
        )
    return env


def _import_in(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=folder, env=_env(), capture_output=True, text=True, timeout=600
    )


def _check(proc: subprocess.CompletedProcess, where: str) -> None:
    assert proc.returncode == 0, (
        f"import from {where} failed (an editable install made before pyproject.toml set "
        "package-dir must be redone: pip install --no-build-isolation -e .):\n" + proc.stderr[-3000:]
    )
    assert Path(proc.stdout.strip().splitlines()[-1]).resolve() == PKG / "__init__.py"


def test_import_from_an_unrelated_folder(tmp_path):
    _check(_import_in(tmp_path), "an unrelated folder")


@pytest.mark.skipif(not (CHECKOUT / "setup.py").exists(), reason="needs a source checkout")
def test_import_from_the_folder_that_holds_the_checkout(tmp_path):
    # tmp_path plays ~, tmp_path/pyframepred the clone (~/pyframepred).
    (tmp_path / "pyframepred").symlink_to(CHECKOUT, target_is_directory=True)
    _check(_import_in(tmp_path), "the checkout's parent folder")
