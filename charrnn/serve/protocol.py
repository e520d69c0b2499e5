"""The OpenAI completions protocol as charrnn speaks it: a request body checked field by field
(`parse_completion`), the JSON of responses and stream chunks, and OpenAI-shaped errors
(`APIError`: {"error": {"message", "type", "param", "code"}}).

Lengths are in characters: `max_tokens` is characters to generate, `usage` counts characters.
Which OpenAI fields are used, accepted and ignored, or refused is the table in docs/serve.md;
FIELDS below is that table in code. Knows nothing of HTTP or of the engine.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

from charrnn import jsonout
from charrnn.sample import show_chars


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None):
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may be in flight (the server's flags)."""

    max_tokens: int = 4096  # the largest max_tokens accepted
    max_n: int = 16  # the most choices per request: n times the number of prompts
    max_requests: int = 64  # requests in flight; one more is answered 429
    max_body: int = 1 << 20  # bytes of a request body; more is answered 413
    default_max_tokens: int = 256  # max_tokens when a request leaves it out


@dataclass(frozen=True)
class Completion:
    """A checked completion request."""

    prompts: list[str]
    max_tokens: int
    temperature: float  # 0: greedy, always the most likely character (sample --argmax)
    top_p: float | None
    top_k: int | None
    n: int
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool
    echo: bool


# every field a completion request may carry: "used", or "ignored" (accepted, changes nothing),
# or the one value it may have here ("refused" otherwise: e.g. logprobs, which we do not compute)
FIELDS = {
    "model": "used",
    "prompt": "used",
    "max_tokens": "used",
    "temperature": "used",
    "top_p": "used",
    "top_k": "used",
    "n": "used",
    "stop": "used",
    "seed": "used",
    "stream": "used",
    "stream_options": "used",
    "echo": "used",
    "user": "ignored",
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": None,
    "logit_bias": None,
    "suffix": None,
    "best_of": None,  # or equal to n: OpenAI's best_of = n draws n and returns them all
}

MAX_STOPS, MAX_STOP_LENGTH = 4, 256  # OpenAI allows up to 4 stop sequences
MAX_SEED = 2**64 - 1


def parse_completion(
    raw: bytes, model_name: str, vocab: list[str], limits: Limits = Limits()
) -> Completion:
    """The checked request in a JSON body, or APIError (400; 404 for a model not served)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise APIError(400, f"the request body is not valid JSON ({_reason(e)})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise APIError(400, f"unrecognized request field {unknown[0]!r}", unknown[0])
    for key, allowed in FIELDS.items():
        if allowed not in ("used", "ignored") and body.get(key, allowed) not in (allowed, None):
            if not (key == "best_of" and body[key] == body.get("n", 1)):
                raise APIError(
                    400, f"{key} is not supported by this server (charrnn); leave it out", key
                )
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model must be a string", "model")
    if model is not None and model != model_name:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {model_name!r}",
            "model",
            "model_not_found",
        )
    prompts = _prompts(body.get("prompt", ""), vocab)
    n = _integer(body, "n", 1, 1, limits.max_n)
    if n * len(prompts) > limits.max_n:
        raise APIError(
            400,
            f"n times the number of prompts is {n * len(prompts)}; this server allows at most "
            f"{limits.max_n} choices per request",
            "n",
        )
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not (
        isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise APIError(
            400, 'stream_options must be {"include_usage": true or false}', "stream_options"
        )
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    return Completion(
        prompts=prompts,
        max_tokens=_integer(body, "max_tokens", limits.default_max_tokens, 0, limits.max_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 100.0),
        top_p=None if top_p >= 1.0 else top_p,
        top_k=_integer(body, "top_k", None, 1, 2**31),
        n=n,
        stop=_stops(body.get("stop")),
        seed=_integer(body, "seed", None, 0, MAX_SEED),
        stream=stream,
        include_usage=bool(stream and options and options.get("include_usage")),
        echo=_boolean(body, "echo", False),
    )


def _reason(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno} column {e.colno}"
    return "nested too deeply" if isinstance(e, RecursionError) else "not UTF-8"


def _prompts(prompt: Any, vocab: list[str]) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) for p in prompts)):
        raise APIError(
            400,
            "prompt must be a string or a non-empty list of strings (token ids are not "
            "supported: this model reads characters)",
            "prompt",
        )
    known = set(vocab)
    for i, p in enumerate(prompts):
        missing = sorted(set(p) - known)
        if missing:
            where = "the prompt" if len(prompts) == 1 else f"prompt {i}"
            raise APIError(
                400,
                f"{where} has {len(missing)} character{'s' * (len(missing) != 1)} not in the "
                f"model's vocabulary: {show_chars(missing)}; remove or replace them",
                "prompt",
            )
    return prompts


def _stops(stop: Any) -> tuple[str, ...]:
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not (
        isinstance(stops, list)
        and len(stops) <= MAX_STOPS
        and all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops)
    ):
        raise APIError(
            400,
            f"stop must be a string or a list of at most {MAX_STOPS} strings, each of 1 to "
            f"{MAX_STOP_LENGTH} characters",
            "stop",
        )
    return tuple(dict.fromkeys(stops))


def _integer(body: dict, key: str, default, low: int, high: int):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 100.0 is the integer 100, as JSON does not tell them apart
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise APIError(
            400, f"{key} must be an integer from {low} to {high}, not {_shown(value)}", key
        )
    return value


def _number(body: dict, key: str, default: float, low: float, high: float, low_open=False):
    value = body.get(key)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (low < value if low_open else low <= value) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        raise APIError(
            400, f"{key} must be a number {bound} and <= {high:g}, not {_shown(value)}", key
        )
    return float(value)


def _boolean(body: dict, key: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(400, f"{key} must be true or false, not {_shown(value)}", key)
    return value


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---- responses ----


def new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"


def completion_body(
    id: str, model: str, choices: list[tuple[str, str]], prompt_chars: int, completion_chars: int
) -> dict:
    """The whole response: choices are (text, finish_reason) in index order."""
    return {
        "id": id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
            for i, (text, finish) in enumerate(choices)
        ],
        "usage": usage(prompt_chars, completion_chars),
    }


def usage(prompt_chars: int, completion_chars: int) -> dict:
    return {
        "prompt_tokens": prompt_chars,
        "completion_tokens": completion_chars,
        "total_tokens": prompt_chars + completion_chars,
    }


def chunk(
    id: str,
    model: str,
    created: int,
    index: int | None,
    text: str = "",
    finish: str | None = None,
    usage: dict | None = None,
) -> bytes:
    """One server-sent event of a streamed completion: one choice's new text, or (index None)
    no choice and the usage, the last event when stream_options.include_usage asks for it."""
    choices = (
        []
        if index is None
        else [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}]
    )
    event = {"id": id, "object": "text_completion", "created": created, "model": model}
    event["choices"] = choices
    if usage is not None:
        event["usage"] = usage
    return sse(event)


def sse(obj: Any) -> bytes:
    return b"data: " + jsonout.dumps(obj, ascii=False).encode() + b"\n\n"  # strict JSON


DONE = b"data: [DONE]\n\n"


def models_body(model: str, created: int) -> dict:
    return {
        "object": "list",
        "data": [{"id": model, "object": "model", "created": created, "owned_by": "charrnn"}],
    }
