"""JSON as charrnn writes it, to every file and stream: strict JSON, never NaN or Infinity.

Python's json.dumps writes a float that is not finite as the tokens NaN and Infinity, which
no JSON parser but Python's reads; here such a value becomes null (what it means is for the
writer to say, as `EvalResult.to_dict` says it in `reason`).
"""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(obj: Any, *, ascii: bool = True, compact: bool = False, sort_keys: bool = False) -> str:
    """obj as one line of strict JSON: a float that is not finite becomes null. ascii=False
    writes characters beyond ASCII as they are (not as \\u escapes); compact=True leaves out
    the spaces after , and :."""
    separators = (",", ":") if compact else None
    options = {"ensure_ascii": ascii, "separators": separators, "sort_keys": sort_keys}
    try:  # the usual case, all finite: no walk over a large object
        return json.dumps(obj, allow_nan=False, **options)
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False, **options)


def finite(obj: Any) -> Any:
    """obj with every float that is not finite, at any depth of dicts, lists and tuples, as None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
