"""The package's layering: what imports without the compiled extension, who may import the
command lines, module size, and the model registry as the one place a model is added."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pyframepred.cli import train as cli_train
from pyframepred.data import synthetic
from pyframepred.errors import ConfigError
from pyframepred.models import registry
from pyframepred.training import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pyframepred"
ENTRY_SHIMS = {"train.py", "evaluate.py", "predict.py"}  # `python -m pyframepred.X`


def test_pure_layers_import_without_the_extension():
    # A finder that refuses pyframepred._C stands for a checkout that was never built.
    code = """
import importlib.abc, sys
class NoExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "pyframepred._C":
            raise ImportError("no compiled extension (test)")
sys.meta_path.insert(0, NoExtension())
import pyframepred.data, pyframepred.metrics, pyframepred.reference, pyframepred.io
import pyframepred.errors
assert "pyframepred._C" not in sys.modules
try:
    import pyframepred.ops
except ImportError as exc:
    assert "compiled extension" in str(exc), exc
else:
    raise AssertionError("pyframepred.ops imported without its extension")
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _modules():
    return [p for p in PKG.rglob("*.py")]


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def _imports(path: Path):
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""


def test_library_layers_do_not_import_the_command_lines():
    offenders = []
    for p in _modules():
        rel = p.relative_to(PKG)
        if rel.parts[0] == "cli" or (len(rel.parts) == 1 and rel.name in ENTRY_SHIMS):
            continue
        offenders += [f"{rel}: {m}" for m in _imports(p) if m.startswith("pyframepred.cli")]
    assert not offenders, offenders
    # The check sees relative imports: the entry shims do import the command lines.
    assert any(m.startswith("pyframepred.cli") for m in _imports(PKG / "train.py"))


def test_library_errors_name_settings_neutrally(capsys):
    with pytest.raises(ConfigError) as exc:
        TrainConfig(model="autoencoder", batch_size=0).resolved()
    assert "`batch_size` must be >= 1" in str(exc.value) and "--" not in str(exc.value)
    assert cli_train.main(["--model", "autoencoder", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --batch-size must be >= 1")


class _LastFramePlusConv(nn.Module):
    """A fourth model for the test: the last frame plus a learned 3x3 correction."""

    def __init__(self, channels: int = 3, in_frames: int = 4, residual: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(channels * in_frames, channels, 3, padding=1)
        self.in_frames = in_frames

    def forward(self, x):
        b, t, c, h, w = x.shape
        return torch.tanh(x[:, -1] + self.conv(x[:, -self.in_frames :].reshape(b, t * c, h, w)))

    def rollout(self, inputs, steps):
        frames, out = list(inputs.unbind(1)), []
        for _ in range(steps):
            y = self(torch.stack(frames[-self.in_frames :], 1))
            out.append(y)
            frames.append(y)
        return torch.stack(out, 1)


def test_a_fourth_model_is_one_registry_entry(tmp_path):
    data = synthetic.generate(
        tmp_path / "videos",
        seed=3,
        videos_per_class=2,
        groups_per_class=2,
        frames=(12, 14),
        classes=synthetic.CLASSES[:1],
        progress=False,
    )
    spec = registry.ModelSpec(
        name="lastconv",
        cls=_LastFramePlusConv,
        task="frames",
        batch_norm=False,
        presets={p: {} for p in ("tiny", "quick", "small", "full")},
        run_settings=lambda c: dict(in_frames=c.in_frames, residual=c.residual),
    )
    registry.register(spec)
    try:
        cfg = TrainConfig(
            model="lastconv", data=str(data), out=str(tmp_path / "run"), preset="tiny", progress=False
        )
        res = Trainer(cfg).fit()
        assert res["status"] == "done" and res["step"] == 4
        assert (tmp_path / "run" / "last.pt").is_file()
        assert "lastconv" in cli_train.build_parser().format_help()  # --model choices
    finally:
        registry._REGISTRY.pop("lastconv")
