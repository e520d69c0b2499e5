"""The checks at the edge of the library: the values a caller passes to `charrnn.train`,
`charrnn.load`, `Model.sample` and the functions the commands call, checked for type and range
before any work, each failure an ArgumentError (a CharRNNError) that names the argument.

The bounds of the counts are here (LIMITS), so the command line's flags and the Python
arguments share them: the CLI declares its options with the same minimum and maximum. A bound
far beyond any real use is there so that no count reaches NumPy (which refuses a shape past
2**63) or an estimate unchecked; what a request really costs is checked by its memory estimate.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

from charrnn.errors import ArgumentError

# (lowest, highest) of each count, by its Python name (the flag is the name with dashes)
LIMITS: dict[str, tuple[int, int]] = {
    "length": (1, 10**9),  # characters to sample (0 is allowed from Python: the seed alone)
    "num_samples": (1, 10**6),
    "beam": (1, 10**6),
    "num_results": (1, 10**6),
    "top_k": (1, 2**31 - 1),
    "rng_seed": (0, 2**64 - 1),  # what NumPy's SeedSequence takes as one word
    "top": (0, 2**31 - 1),  # char_scores: guesses listed per character
    "max_distance": (1, 10**6),
    "positions": (1, 10**7),
    "burn_in": (0, 10**9),
    "show_length": (1, 10**9),  # `show --length`: characters of the page
    # `serve`'s limits of a request and of the server
    "max_requests": (1, 10**5),
    "max_tokens": (1, 10**9),  # as sample's length
    "max_n": (1, 10**6),  # as sample's num_samples
    "max_body": (1, 1 << 30),  # bytes of a request body
}
MAX_GRACE = 3600.0  # `serve --grace`: seconds a shutdown waits for the requests in flight


def count(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """value as an int, when it is an integer (not a bool) within LIMITS[name] (or low, high)."""
    lo, hi = LIMITS.get(name, (None, None))
    lo, hi = lo if low is None else low, hi if high is None else high
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentError(f"{name} must be an integer, not {_shown(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ArgumentError(f"{name} must be {_range(lo, hi)}, got {_number(value)}")
    return value


def optional_count(name: str, value: Any, low: int | None = None) -> int | None:
    return None if value is None else count(name, value, low)


def number(name: str, value: Any, *, above: float | None = None, at_most: float | None = None):
    """value as a finite float, when it is a real number (not a bool) > above and <= at_most."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentError(f"{name} must be a number, not {_shown(value)}")
    x = float(value)
    if not math.isfinite(x) or (above is not None and x <= above):
        raise ArgumentError(f"{name} must be a finite number{_bounds(above, at_most)}, got {x}")
    if at_most is not None and x > at_most:
        raise ArgumentError(f"{name} must be a number{_bounds(above, at_most)}, got {x}")
    return x


def choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """value, when it is one of the strings in options."""
    if not isinstance(value, str) or value not in options:
        shown = " or ".join(repr(o) for o in options)
        raise ArgumentError(f"{name} must be {shown}, not {_shown(value)}")
    return value


def boolean(name: str, value: Any) -> bool:
    """value, when it is True or False: a string such as "no" is not taken for either."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be True or False, not {_shown(value)}")
    return value


def text(name: str, value: Any) -> str:
    """value, when it is a str (bytes must be decoded by the caller, who knows the encoding)."""
    if not isinstance(value, str):
        hint = "; decode it first, e.g. data.decode('utf-8')" if isinstance(value, bytes) else ""
        raise ArgumentError(f"{name} must be a str, not {_shown(value)}{hint}")
    return value


def path(name: str, value: Any) -> Path:
    """value as a Path, when it is a str or os.PathLike naming a file: not empty, no NUL
    character, and not an int (which open() would take for a file descriptor)."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise ArgumentError(f"{name} must be a path (a str or pathlib.Path), not {_shown(value)}")
    s = os.fspath(value)
    if not isinstance(s, str):
        raise ArgumentError(f"{name} must be a path (a str or pathlib.Path), not {_shown(s)}")
    if s == "":
        raise ArgumentError(f"{name} must name a file, but the path given is empty")
    if "\0" in s:
        raise ArgumentError(f"{name} must name a file, but the path given has a NUL: {s!r:.80}")
    return Path(s)


def optional_path(name: str, value: Any) -> Path | None:
    return None if value is None else path(name, value)


def strings(name: str, value: Any) -> list[str]:
    """value as a list, when it is an iterable of str (not one str, whose characters it is)."""
    if isinstance(value, (str, bytes)) or not _iterable(value):
        raise ArgumentError(f"{name} must be a list of str, not {_shown(value)}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise ArgumentError(f"{name} must be a list of str; it holds {_shown(item)}")
    return items


def _iterable(value: Any) -> bool:
    try:
        iter(value)
    except TypeError:
        return False
    return True


def _shown(value: Any) -> str:
    """A value as an error message shows it: its type, and its repr when short."""
    r = repr(value)
    return f"{type(value).__name__} {r}" if len(r) <= 40 else type(value).__name__


def _number(n: int) -> str:
    """An integer for a message: its digits, or its size when it has more than 30."""
    s = str(n)
    return s if len(s) <= 30 else f"a number of {len(s.lstrip('-'))} digits"


def _range(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f">= {lo:,}"
    if lo is None:
        return f"<= {hi:,}"
    return f"from {lo:,} to {hi:,}"


def _bounds(above: float | None, at_most: float | None) -> str:
    parts = [f"> {above:g}"] if above is not None else []
    parts += [f"<= {at_most:g}"] if at_most is not None else []
    return " " + " and ".join(parts) if parts else ""
