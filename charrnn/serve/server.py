"""Running the app: the listening socket (`listen`) and uvicorn over it (`run`), with a
shutdown that lets streams end.

On SIGINT or SIGTERM the server stops accepting connections, refuses new requests on open
ones (503), gives the rows in flight `grace` seconds to finish, ends those still drawing with
finish_reason "abort" (a last event and [DONE] for a stream), waits for the responses to be
sent, and returns: the process exits 0. A second Ctrl-C quits at once. uvicorn itself would
re-raise the signal after its shutdown, so that the process ends by it; here the shutdown is
the expected way to stop, so it does not.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading

import uvicorn

from charrnn.errors import CharRNNError


class ServeError(CharRNNError):
    """The server cannot start: the address cannot be listened on."""


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to host:port and listening (port 0: a free port, see getsockname)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ServeError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; check --host"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ServeError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port or --host"
        ) from None
    sock.set_inheritable(True)
    return sock


def run(app, sock: socket.socket, *, grace: float = 5.0) -> None:
    """Serve app on sock until SIGINT or SIGTERM, then shut down as the module says."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,  # the app logs one line per request itself, when it is done
        timeout_graceful_shutdown=grace + 5.0,  # a backstop: the engine ends rows at grace
        lifespan="on",
    )
    _Server(config, app.state.engine, grace).run(sockets=[sock])


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine, grace: float):
        super().__init__(config)
        self.engine, self.grace = engine, grace

    def handle_exit(self, sig, frame) -> None:
        self.engine.drain(self.grace)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self):
        """uvicorn's, less the signal raised again at the end (the exit status stays 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)
