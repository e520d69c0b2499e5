"""charrnn.jsonout: the one JSON writer of files and streams never writes NaN or Infinity."""

from __future__ import annotations

import json
import math

from charrnn import jsonout


def strict(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON: {text}")

    return json.loads(text, parse_constant=refuse)


def test_values_that_are_not_finite_become_null_at_any_depth():
    obj = {"a": math.nan, "b": [1.5, math.inf, (-math.inf, {"c": math.nan})], "d": "é"}
    want = {"a": None, "b": [1.5, None, [None, {"c": None}]], "d": "é"}
    assert strict(jsonout.dumps(obj)) == want
    assert jsonout.dumps({"d": "é"}) == '{"d": "\\u00e9"}'
    assert jsonout.dumps({"d": "é", "e": [1]}, ascii=False, compact=True) == '{"d":"é","e":[1]}'


def test_finite_values_are_written_as_json_dumps_writes_them():
    obj = {"z": 1, "a": [0.1, 2, None, True, "x"]}
    assert jsonout.dumps(obj) == json.dumps(obj)
    assert jsonout.dumps(obj, sort_keys=True) == json.dumps(obj, sort_keys=True)
