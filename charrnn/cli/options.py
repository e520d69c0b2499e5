"""What several commands share about their options: flag values checked by the config's own
rules (`check_flags`), the choices of --unknown, and --checkpoint, its help and the loading of
the model it names (`load_model`, which says on stderr which checkpoint it chose)."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from charrnn import api
from charrnn.checks import LIMITS
from charrnn.cli.streams import note
from charrnn.dynamic import DEFAULTS, MAX_SEGMENT, Settings
from charrnn.errors import ConfigError
from charrnn.runs import CHECKPOINT_ENV


def most(name: str) -> int:
    """The largest value of a count flag: the library's bound for it (checks.LIMITS), so the
    flag and the Python argument of the same name refuse the same values."""
    return LIMITS[name][1]


def check_flags(values: dict[str, Any]) -> None:
    """Flag values checked by the config's own rules; a bad one is a usage error (exit 2)
    worded as the config says it: "Invalid value for '--hidden-size': got 0, expected ..."."""
    for key, value in values.items():
        try:
            api.check_setting(key, value)
        except ConfigError as e:
            raise typer.BadParameter(
                str(e).removeprefix(f"config key '{key}': "),
                param_hint=f"'--{key.replace('_', '-')}'",
            ) from None


# --encoding and --decode-errors of the commands that read a text, as eval reads it
Encoding = Annotated[str, typer.Option(metavar="NAME", help="Text encoding of TEXT.")]
DecodeErrors = Annotated[
    str, typer.Option(metavar="strict|replace", help="strict (error on bad bytes) or replace.")
]


class Unknown(str, Enum):
    """What to do with characters that are not in the model's vocabulary."""

    error = "error"
    skip = "skip"


CHECKPOINT_HELP = (
    "Checkpoint .npz or .safetensors, or a run folder (its best.npz). Default: the one "
    "$CHARRNN_CHECKPOINT names, else the most recently written runs/*/best.npz."
)


def load_model(path: Path | None, quiet: bool) -> api.Model:
    """The model --checkpoint names, or the one the rule chooses; when chosen, say which run
    and step on stderr (a run folder in the path names the run)."""
    model = api.load(path)
    if not quiet and model.chosen_by != "given":
        how = (
            f"from ${CHECKPOINT_ENV}"
            if model.chosen_by == "env"
            else f"the most recently written runs/*/best.npz; pin one with --checkpoint or "
            f"{CHECKPOINT_ENV}"
        )
        note(f"Using checkpoint {model.path} (step {model.step}; {how})")
    return model


# ---- dynamic evaluation (charrnn.dynamic): the settings eval, show and sample share ----


class DynamicMethod(str, Enum):
    """How the weights step on each segment: RMS-normalised (Krause et al.) or plain SGD."""

    rms = "rms"
    sgd = "sgd"


_RMS, _SGD = DEFAULTS["rms"], DEFAULTS["sgd"]
DynamicMethodOption = Annotated[
    DynamicMethod,
    typer.Option(
        metavar="rms|sgd",
        help="Dynamic evaluation's step: rms (each weight's step divided by the RMS of its "
        "training gradients, from the checkpoint's optimiser state) or plain sgd.",
    ),
]
DynamicLrOption = Annotated[
    float | None,
    typer.Option(
        min=0,
        metavar="LR",
        help=f"Dynamic evaluation's step size [default: {_RMS.lr:g} for rms, {_SGD.lr:g} for sgd].",
    ),
]
DynamicDecayOption = Annotated[
    float | None,
    typer.Option(
        min=0,
        max=1,
        metavar="D",
        help="Dynamic evaluation's pull back toward the trained weights at each step, 0 = none "
        f"[default: {_RMS.decay:g} for rms, {_SGD.decay:g} for sgd].",
    ),
]
DynamicSegmentOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=MAX_SEGMENT,
        metavar="N",
        help=f"Dynamic evaluation: characters scored between steps [default: {_RMS.segment}].",
    ),
]


def dynamic_settings(
    method: DynamicMethod, lr: float | None, decay: float | None, segment: int | None
) -> Settings:
    """The Settings the flags give; a flag left out keeps the method's default."""
    if lr is not None and not math.isfinite(lr):
        raise typer.BadParameter("must be a finite number >= 0", param_hint="'--dynamic-lr'")
    given = {"lr": lr, "decay": decay, "segment": segment}
    return dataclasses.replace(
        DEFAULTS[method.value], **{k: v for k, v in given.items() if v is not None}
    )
