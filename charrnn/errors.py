"""Exception types of the library. The CLI turns each into one `Error: ...` line and exit 1.

A message that tells the user what to pass names the setting through `option`, so the same
error reads `--overwrite` on the command line and `overwrite=True` from Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any


class CharRNNError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(CharRNNError):
    """A config file or value is invalid."""


class DataError(CharRNNError):
    """A corpus or text cannot be read or used."""


class CheckpointError(CharRNNError):
    """A checkpoint is missing, corrupt, foreign or cannot be written."""


class TrainingError(CharRNNError):
    """Training cannot continue (e.g. the loss became NaN)."""


class RunLockedError(CharRNNError):
    """Another process is training into the same run directory."""


class ArgumentError(CharRNNError, ValueError):
    """A value given to a library function is of the wrong type or out of range (also a
    ValueError, which such a call raised before). charrnn.checks words it."""


# ---- naming a setting in a message: `--resume RUN` on the command line, `resume='RUN'` in Python

_FACE: ContextVar[str] = ContextVar("charrnn_face", default="python")
_PYTHON_NAMES = {"checkpoint": "path", "set": "set_items"}  # where the API's name differs


def option(name: str, value: Any = None) -> str:
    """How a message names the setting `name` (a Python argument, snake_case), with `value`
    when it says what to give: "--resume runs/a" or "--overwrite" (value True) while a
    command runs (`as_command`), "resume='runs/a'" or "overwrite=True" from Python."""
    if _FACE.get() == "cli":
        flag = "--" + name.replace("_", "-")
        return flag if value is None or value is True else f"{flag} {value}"
    py = _PYTHON_NAMES.get(name, name)
    if value is None:
        return py
    return f"{py}={str(value)!r}" if isinstance(value, os.PathLike) else f"{py}={value!r}"


@contextmanager
def as_command() -> Iterator[None]:
    """Within it, messages name settings as the command line's flags (`option`)."""
    token = _FACE.set("cli")
    try:
        yield
    finally:
        _FACE.reset(token)


class TooLargeError(CharRNNError):
    """An input or a request is larger than the stated limit or than this process can hold."""


class ExportError(CharRNNError):
    """A model cannot be exported: a missing package, an output that must not be replaced."""
