"""The model registry: each trainable model by name, with what training needs to know of it.

A :class:`ModelSpec` ties a name (``--model``) to its network class, its sizes per preset, the
training task that trains it (:mod:`pyframepred.training.tasks`) and how the run's settings map
to the constructor. Adding a model is its module plus one :func:`register` call below.

Every registered network keeps one prediction contract, :func:`rollout`:
``model.rollout(inputs (B, T, C, H, W), steps) -> (B, steps, C, H, W)``, frames in [-1, 1].
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from torch import Tensor, nn

from ..errors import ConfigError
from .autoencoder import SkipAutoencoder
from .multiscale import MultiScaleDiscriminator, MultiScaleGenerator
from .seq2seq import Seq2Seq

__all__ = [
    "ModelSpec",
    "register",
    "get",
    "names",
    "build_model",
    "build_discriminator",
    "check_model_kwargs",
    "rollout",
]


@dataclass(frozen=True)
class ModelSpec:
    """What the library knows of one trainable model.

    ``presets``: constructor arguments per run preset (``tiny``, ``quick``, ``small``, ``full``).
    ``task``: the name of the training task (``"frames"``: pixel losses on predicted frames;
    ``"gan"``: the multi-scale adversarial game). ``sequence_output``: the network predicts all
    training target frames in one call (``net(inputs, steps, targets)``) rather than the next
    frame only (``net(inputs)``). ``run_settings(cfg)``: the constructor arguments that come from
    the run's settings. ``batch_norm``: the ``batch_norm`` setting applies to it.
    ``run_overrides``: run-preset settings this model changes (e.g. a smaller batch).
    ``discriminator``: the class of the adversary, for ``task="gan"``. ``frame_loss``: how the
    frames task weighs the frames of a batch by default (``"mean"`` or ``"log"``, see
    :func:`pyframepred.training.tasks.pixel_loss`).
    """

    name: str
    cls: type
    presets: Mapping[str, Mapping[str, Any]]
    task: str
    run_settings: Callable[[Any], dict]
    sequence_output: bool = False
    batch_norm: bool = True
    run_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    discriminator: Optional[type] = None
    frame_loss: str = "mean"
    #: ``check_run(cfg, model_kwargs)``: a ConfigError for settings the network cannot train with.
    check_run: Optional[Callable[[Any, dict], None]] = None

    def constructor_args(self) -> list:
        return [k for k in inspect.signature(self.cls.__init__).parameters if k != "self"]

    def default(self, name: str):
        """The constructor's default of argument ``name`` (``None`` when it has none)."""
        param = inspect.signature(self.cls.__init__).parameters.get(name)
        return None if param is None or param.default is inspect.Parameter.empty else param.default


_REGISTRY: dict = {}


def register(spec: ModelSpec) -> ModelSpec:
    _REGISTRY[spec.name] = spec
    return spec


def names() -> tuple:
    """The registered model names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; :class:`ConfigError` for an unknown name."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}") from None


#: What sets a constructor argument of the run's (by default the setting of its name).
_SET_BY = {"out_steps": "the `val_steps` setting", "channels": "the data (grey or colour frames)"}


def check_model_kwargs(name: str, kwargs: dict, reserved=("fused",)) -> None:
    """:class:`ConfigError` naming the keys of ``kwargs`` that the model's constructor does not
    take (``reserved``: chosen by the run's settings, not by ``model_kwargs``)."""
    spec = get(name)
    taken = sorted(k for k in kwargs if k in reserved and k in spec.constructor_args())
    if taken:
        where = [f"{k} from {_SET_BY.get(k, f'the `{k}` setting')}" for k in taken]
        raise ConfigError(
            f"`model_kwargs`: the run sets the {name} model's {', '.join(where)}, not `model_kwargs`"
        )
    known = sorted(k for k in spec.constructor_args() if k not in reserved)
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise ConfigError(
            f"`model_kwargs`: the {name} model takes no {', '.join(unknown)} (it takes {', '.join(known)})"
        )


def build_model(name: str, kwargs: dict, fused: bool = True) -> nn.Module:
    """The predicting network of ``name`` (the generator of a GAN). Networks that take ``fused``
    get it; unknown or bad keyword arguments are a :class:`ConfigError`."""
    check_model_kwargs(name, kwargs)
    spec = get(name)
    extra = {"fused": fused} if "fused" in spec.constructor_args() else {}
    try:
        return spec.cls(**kwargs, **extra)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build the {name} model from {kwargs}: {exc}") from exc


def build_discriminator(name: str, model_kwargs: dict) -> tuple:
    """``(discriminator, its kwargs)`` of the GAN model ``name``: the generator's arguments that
    the discriminator's constructor also takes (so both see the same frames and scales)."""
    spec = get(name)
    if spec.discriminator is None:
        raise ConfigError(f"the {name} model has no discriminator")
    params = inspect.signature(spec.discriminator.__init__).parameters
    kwargs = {k: v for k, v in model_kwargs.items() if k in params and k != "self"}
    return spec.discriminator(**kwargs), kwargs


def rollout(model: nn.Module, inputs: Tensor, steps: int) -> Tensor:
    """``steps`` predicted frames ``(B, steps, C, H, W)`` from ``inputs`` ``(B, T, C, H, W)``:
    the prediction contract every registered model keeps."""
    return model.rollout(inputs, steps)


# ----------------------------------------------------------------------------- the models
# Sizes per preset ("full": the sizes of the blog post / the paper).
register(
    ModelSpec(
        name="seq2seq",
        cls=Seq2Seq,
        task="frames",
        sequence_output=True,
        presets={
            "tiny": dict(conv_channels=(8, 16), hidden_channels=16, motion=True, output="clip"),
            "quick": dict(conv_channels=(16, 32), hidden_channels=32, motion=True, output="clip"),
            "small": dict(
                conv_channels=(32, 64), hidden_channels=64, batch_norm=True, motion=True, output="clip"
            ),
            "full": dict(
                conv_channels=(32, 64, 128),
                hidden_channels=128,
                num_layers=2,
                batch_norm=True,
                motion=True,
                output="clip",
            ),
        },
        run_settings=lambda c: dict(
            teacher_forcing=c.teacher_forcing, residual=c.residual, out_steps=c.val_steps
        ),
        # its where-map can keep a still frame exactly, so it gains from the still and slow
        # frames counting as much as the fast ones (the autoencoder, without one, learns to
        # predict no change at all from them)
        frame_loss="log",
    )
)


def _autoencoder_check(cfg, kwargs: dict) -> None:
    """Batch norm in training needs more than one value per channel: one clip a step whose
    deepest level is 1x1 (frames no larger than the levels' total downsampling) has one."""
    batch_norm = kwargs.get("batch_norm", get("autoencoder").default("batch_norm"))
    levels = len(kwargs.get("widths") or get("autoencoder").default("widths"))
    multiple = 2 ** (levels - 1)
    if batch_norm and cfg.batch_size == 1 and -(-cfg.size // multiple) == 1:
        raise ConfigError(
            f"the autoencoder's deepest level is 1x1 at `size` {cfg.size} ({levels} levels), where "
            f"batch norm needs more than one clip a step: use `batch_size` >= 2, a `size` above "
            f"{multiple}, or `batch_norm` false"
        )


register(
    ModelSpec(
        name="autoencoder",
        cls=SkipAutoencoder,
        task="frames",
        presets={
            "tiny": dict(widths=(8, 16, 32)),
            "quick": dict(widths=(16, 32, 64, 128, 256)),
            "small": dict(widths=(32, 64, 128, 256, 512)),
            "full": dict(widths=(32, 64, 128, 256, 512)),
        },
        run_settings=lambda c: dict(in_frames=c.in_frames, residual=c.residual),
        check_run=_autoencoder_check,
    )
)

register(
    ModelSpec(
        name="multiscale",
        cls=MultiScaleGenerator,
        task="gan",
        batch_norm=False,
        discriminator=MultiScaleDiscriminator,
        presets={
            "tiny": dict(width=0.0625, activation="leaky_relu"),
            "quick": dict(width=0.125, activation="leaky_relu"),
            "small": dict(width=0.5, activation="leaky_relu"),
            "full": dict(width=1.0, activation="leaky_relu"),
        },
        # A GAN step costs about twice an autoencoder step.
        run_overrides={"quick": dict(batch_size=4)},
        run_settings=lambda c: dict(in_frames=c.in_frames, residual=c.residual, base_size=64),
    )
)
