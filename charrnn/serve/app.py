"""The HTTP face of the server: a FastAPI app, made from a loaded model by `create_app`, that
speaks OpenAI's completions API (POST /v1/completions, GET /v1/models) and GET /health.

    import charrnn
    from charrnn.serve import create_app
    app = create_app(charrnn.load("runs/shakespeare"))      # mount it, or run it with uvicorn

Each request is checked (protocol.py), its prompts read into states in a worker thread, then
its rows join the engine's batch (batcher.py); the response waits for them or streams their
text as server-sent events. Every refusal is an OpenAI-shaped JSON error; a client that hangs
up has its rows dropped before the next step. What the app bounds: requests in flight (429),
body bytes (413), max_tokens and choices per request (400). Running the app (the socket,
signals, shutdown) is server.py's.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from charrnn.data import encode
from charrnn.sample import Draw, warm_state
from charrnn.serve import protocol
from charrnn.serve.batcher import Engine, Group, Job
from charrnn.serve.protocol import APIError, Completion, Limits

Log = Callable[[str], None]
BODY_TIMEOUT = 30.0  # seconds a request body may take to arrive


def model_name(model) -> str:
    """The name a model is served under: its folder's for a run's best.npz or last.npz and for
    the model.safetensors of an exported model-hub folder, else the file's stem."""
    path = Path(model.path) if model.path is not None else None
    if path is None:
        return "charrnn"
    if path.name in ("best.npz", "last.npz", "model.safetensors") and path.parent.name:
        return path.parent.name
    return path.stem


def create_app(
    model,
    *,
    name: str | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    log: Log | None = None,
) -> FastAPI:
    """The ASGI app serving `model` (a charrnn.Model) as `name` (default: model_name).
    api_key: required as `Authorization: Bearer <key>` on /v1/ (None: open). log: called
    with one line per request (None: silent). app.state.engine is the batching engine."""
    server = _Server(model, name or model_name(model), api_key, limits or Limits(), log)

    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.engine.close()  # run by uvicorn, not when mounted: the engine's thread is a daemon

    app = FastAPI(
        title="charrnn",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )
    app.state.engine = server.engine
    app.state.server = server
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(_Guard, log=log)

    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id:path}", server.model, methods=["GET"])
    app.add_api_route("/v1/completions", server.completions, methods=["POST"])
    return app


async def _api_error(request: Request, e: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


async def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, a method the route does not take)."""
    message = {404: f"no such endpoint: {request.url.path}", 405: "method not allowed"}
    return JSONResponse(
        protocol.error_body(message.get(e.status_code, str(e.detail)), "invalid_request_error"),
        status_code=e.status_code,
        headers=getattr(e, "headers", None),
    )


class _Server:
    """The app's routes and what they share: the model, the engine, the requests in flight."""

    def __init__(self, model, name: str, api_key: str | None, limits: Limits, log: Log | None):
        self.params, self.vocab, self.name = model.params, model.vocab, name
        self.api_key = None if api_key is None else api_key.encode()
        self.limits = limits
        self.engine = Engine(model.params, model.vocab, log)
        self.in_flight = 0
        self.created = int(time.time())
        self._wakers: dict[asyncio.AbstractEventLoop, _Waker] = {}

    # ---- routes ----

    async def health(self) -> dict:
        return {
            "status": "draining" if self.engine.draining else "ok",
            "model": self.name,
            "requests_in_flight": self.in_flight,
            "rows_in_flight": self.engine.rows,
            "steps": self.engine.steps,
            "characters": self.engine.characters,
        }

    async def models(self, request: Request) -> dict:
        self._check_key(request)
        return protocol.models_body(self.name, self.created)

    async def model(self, request: Request, model_id: str) -> dict:
        self._check_key(request)
        if model_id != self.name:
            raise APIError(
                404, f"the model {model_id!r} does not exist", "model", "model_not_found"
            )
        return protocol.models_body(self.name, self.created)["data"][0]

    async def completions(self, request: Request):
        self._check_key(request)
        if self.engine.draining:
            raise APIError(
                503, "the server is shutting down", None, "shutting_down", "server_error"
            )
        if self.in_flight >= self.limits.max_requests:
            raise APIError(
                429,
                f"{self.in_flight} requests are in flight, the most this server takes; "
                "retry in a moment",
                None,
                "rate_limit_exceeded",
                "requests",
            )
        self.in_flight += 1
        try:
            req = protocol.parse_completion(
                await _read_body(request, self.limits.max_body), self.name, self.vocab, self.limits
            )
            event = asyncio.Event()
            job = await self._start(req, event)
        except BaseException:
            self.in_flight -= 1
            raise
        if req.stream:
            return _Stream(
                self._events(req, job, event), on_close=partial(self._finished, job, request)
            )
        try:
            await _until_done(job, event, request)
        finally:
            self._finished(job, request)
        echoed = [req.prompts[c.index // req.n] if req.echo else "" for c in job.choices]
        choices = [
            (prefix + "".join(c.pieces), c.finish)
            for prefix, c in zip(echoed, job.choices, strict=True)
        ]
        body = protocol.completion_body(
            protocol.new_id(),
            self.name,
            choices,
            sum(map(len, req.prompts)),
            sum(c.chars for c in job.choices),  # the characters drawn, not those echoed
        )
        return JSONResponse(body)

    # ---- the pieces ----

    def _check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if not (
            scheme.lower() == "bearer" and hmac.compare_digest(key.strip().encode(), self.api_key)
        ):
            raise APIError(
                401,
                "a valid API key is required: send the header Authorization: Bearer <key>",
                None,
                "invalid_api_key",
            )

    async def _start(self, req: Completion, event: asyncio.Event) -> Job:
        """Read every prompt into its state (in a worker thread: a long prompt takes time),
        then hand the job to the engine."""
        ids = [encode(p, self.vocab)[0] for p in req.prompts]
        states = await run_in_threadpool(
            lambda: [warm_state(self.params, x, req.n) for x in ids]
        )  # (n, W) each
        V = len(self.params["by"])  # a model trained on records has one more: the end of one
        draw = Draw.settle(V, req.temperature or 1.0, req.top_k, req.top_p, req.temperature == 0)
        groups = [
            Group(
                state,
                draw,
                np.random.default_rng(req.seed),
                req.max_tokens,
                req.stop,
                first_index=i * req.n,
            )
            for i, state in enumerate(states)
        ]
        job = Job(groups, notify=partial(self._waker(), event))
        self.engine.submit(job)
        return job

    def _waker(self) -> _Waker:
        loop = asyncio.get_running_loop()
        waker = self._wakers.get(loop)
        if waker is None:
            waker = self._wakers[loop] = _Waker(loop)
        return waker

    def _finished(self, job: Job, request: Request) -> None:
        """The response is done, sent or abandoned: free the job's rows and its place."""
        if not job.done:
            self.engine.cancel(job)
        self.in_flight -= 1
        finishes = sorted({c.finish or "abort" for c in job.choices})
        chars = sum(c.chars for c in job.choices)
        request.state.note = f"choices={len(job.choices)} chars={chars} finish={','.join(finishes)}"

    async def _events(self, req: Completion, job: Job, event: asyncio.Event):
        """The server-sent events of a streamed completion: each choice's new text as it is
        drawn (several characters to an event when the client reads slower than they come),
        its finish_reason in its last event, then usage (if asked) and [DONE]."""
        id, created = protocol.new_id(), int(time.time())
        chunk = partial(protocol.chunk, id, self.name, created)
        choices = job.choices
        sent = [0] * len(choices)
        open_ = set(range(len(choices)))
        if req.echo:
            yield b"".join(chunk(c.index, req.prompts[c.index // req.n], None) for c in choices)
        while open_:
            await event.wait()
            event.clear()
            out = []
            for k in sorted(open_):
                c = choices[k]
                finish = c.finish  # read first: once it is set, every piece is there
                ready = len(c.pieces)
                text = "".join(c.pieces[sent[k] : ready])
                sent[k] = ready
                if text or finish:
                    out.append(chunk(c.index, text, finish))
                if finish:
                    open_.discard(k)
            if out:
                yield b"".join(out)
        if req.include_usage:
            drawn = sum(c.chars for c in choices)
            yield chunk(None, usage=protocol.usage(sum(map(len, req.prompts)), drawn))
        yield protocol.DONE


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise APIError(413, _too_large(limit), None, "request_too_large")
    parts, size = [], 0

    async def read() -> None:
        nonlocal size
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise APIError(413, _too_large(limit), None, "request_too_large")
            parts.append(part)

    try:  # a client that sends its body slowly holds a place in flight: not for long
        await asyncio.wait_for(read(), BODY_TIMEOUT)
    except ClientDisconnect:
        raise APIError(400, "the client went away before sending the whole body") from None
    except asyncio.TimeoutError:
        raise APIError(
            408, f"the request body did not arrive within {BODY_TIMEOUT:g} s", None, "timeout"
        ) from None
    return b"".join(parts)


def _too_large(limit: int) -> str:
    return f"the request body is over {limit} bytes, the most this server reads"


async def _until_done(job: Job, event: asyncio.Event, request: Request) -> None:
    """Wait for every choice of a job that is not streamed, or for its client to hang up."""

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        while not job.done:
            waiting = asyncio.ensure_future(event.wait())
            await asyncio.wait({waiting, watch}, return_when=asyncio.FIRST_COMPLETED)
            waiting.cancel()
            event.clear()
            if watch.done():
                return
    finally:
        watch.cancel()


class _Waker:
    """From the engine's thread to the event loop: a job's event is set on the loop, with
    one call_soon_threadsafe for all the news of a step (or of several, if the loop is busy)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.news: set[asyncio.Event] = set()
        self.scheduled = False

    def __call__(self, event: asyncio.Event, job: Job) -> None:  # in the engine's thread
        with self.lock:
            self.news.add(event)
            if self.scheduled:
                return
            self.scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: no one is waiting any more
            pass

    def _deliver(self) -> None:
        with self.lock:
            news, self.news, self.scheduled = self.news, set(), False
        for event in news:
            event.set()


class _Stream(StreamingResponse):
    """A server-sent event stream that calls on_close however it ends: sent, or abandoned by
    a client that hung up (Starlette then cancels the stream)."""

    media_type = "text/event-stream"

    def __init__(self, content, on_close: Callable[[], None]):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class _Guard:
    """ASGI middleware: a bug met by a request is answered 500 with an OpenAI-shaped error
    (and one line in the log), never a traceback; and with a log, one line per request when
    it is done: client, method, path, status, seconds, and what the route noted."""

    def __init__(self, app, log: Log | None):
        self.app, self.log = app, log

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), [0]

        async def send_(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except Exception as e:  # not the client's doing
            if self.log is not None:
                self.log(f"internal error: {''.join(traceback.format_exception_only(e)).strip()}")
            if not status[0]:
                error = APIError(500, "internal server error", None, None, "server_error")
                await JSONResponse(error.body(), status_code=500)(scope, receive, send_)
        finally:
            if self.log is not None:
                client = scope.get("client") or ("-", 0)
                note = scope.get("state", {}).get("note", "")
                self.log(
                    f"{client[0]} {scope['method']} {scope['path']} {status[0]} "
                    f"{time.monotonic() - start:.3f}s {note}".rstrip()
                )
