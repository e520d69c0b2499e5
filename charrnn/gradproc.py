"""A gradient worker in a process of its own: one share of a training step's streams.

Why a process and not a thread: a step of a (B, H) recurrence is thousands of small NumPy calls
per layer, and each holds the GIL while NumPy dispatches it. Two threads of one process then
take turns more than they work together (measured on 2 cores, GRU 2 x 192, batch 32 x 100:
106 ms a step with two threads against 74 ms for one thread's half of the batch alone). A
second process has its own interpreter and runs its share at full speed beside the first.

The parent and its worker share one block of memory (a memfd, or an unlinked temporary file):
the parameters, which the parent copies in before each step, and the worker's gradients, which
the parent reads back. A step's inputs (ids, carried state, masks) and its answer (loss, last
state) travel over a private socket pair with multiprocessing's Connection (pickle between a
process and the child it started; no file is ever unpickled). The worker runs exactly the
thread worker's `forward` and `backward` on the same share with BLAS on one thread, so its
gradients are the same bits.

The worker is started with the interpreter's own `-m charrnn.gradproc` (not multiprocessing's
spawn, which would import the caller's main script again). It ignores SIGINT, SIGTERM and SIGHUP
(the parent decides when a run stops) and ends when the socket closes, so it never outlives its
parent. parallel.py decides when a step is worth a process.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import numpy as np

from charrnn.errors import TrainingError

_ALIGN = 64  # bytes: each array starts on a cache line
_READY_SECONDS = 60.0  # how long a new worker may take to import NumPy and charrnn


def _layout(params: dict) -> tuple[list[tuple[str, tuple, str, int]], int]:
    """[(name, shape, dtype, offset)] of the params and then of their gradients in one block,
    and the block's size in bytes."""
    rows, offset = [], 0
    for part in ("p", "g"):
        for name, a in params.items():
            rows.append((f"{part}.{name}", a.shape, a.dtype.str, offset))
            offset += -(-a.nbytes // _ALIGN) * _ALIGN
    return rows, max(offset, 1)


def _views(buf, rows) -> tuple[dict, dict]:
    """The params and grads dicts of arrays that live in the shared block."""
    views: dict[str, dict] = {"p": {}, "g": {}}
    for key, shape, dtype, offset in rows:
        part, name = key.split(".", 1)
        views[part][name] = np.ndarray(shape, np.dtype(dtype), buffer=buf, offset=offset)
    return views["p"], views["g"]


def _shared_block(nbytes: int) -> int:
    """A file descriptor of nbytes of memory that no path names (nothing to clean up)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("charrnn-gradients", os.MFD_CLOEXEC)
    else:  # macOS: an unlinked temporary file, kept in the page cache
        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    os.ftruncate(fd, nbytes)
    return fd


class ProcessWorker:
    """The parent's handle on one worker process. `submit` a share of a step, then `result`."""

    def __init__(self, params: dict):
        self.rows, nbytes = _layout(params)
        self.names = {name: (a.shape, a.dtype) for name, a in params.items()}
        self.proc = None
        fd = _shared_block(nbytes)
        try:
            self.buf = mmap.mmap(fd, nbytes)
            self.conn, child = Pipe(duplex=True)
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "charrnn.gradproc", str(child.fileno()), str(fd)],
                    pass_fds=(child.fileno(), fd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=_child_env(),
                )
            finally:
                child.close()
        finally:
            os.close(fd)
        self.params, self.grads = _views(self.buf, self.rows)
        try:
            self.conn.send((self.rows, nbytes))
            if not self.conn.poll(_READY_SECONDS) or self.conn.recv() != "ready":
                raise OSError
        except (OSError, EOFError):
            self.close()
            raise OSError("the worker process did not start") from None

    def fits(self, params: dict) -> bool:
        """Whether params have the names, shapes and dtypes this worker was made for."""
        return len(params) == len(self.names) and all(
            self.names.get(k) == (a.shape, a.dtype) for k, a in params.items()
        )

    def submit(self, params: dict, X, Y, state0, keep, resets) -> None:
        for name, a in params.items():
            np.copyto(self.params[name], a)
        try:
            self.conn.send((X, Y, state0, keep, resets))
        except OSError:  # BrokenPipeError: not to be taken for a closed stdout
            raise self._died() from None

    def result(self):
        """(loss, grads, state_last) of the share submitted; grads are views of the shared
        block, valid until the next submit."""
        try:
            answer = self.conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        if isinstance(answer, BaseException):
            raise answer
        loss, state_last = answer
        return loss, self.grads, state_last

    def _died(self) -> TrainingError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        return TrainingError(
            f"a training worker process ended unexpectedly (exit code {code}; a negative code "
            "is the signal that killed it, often the kernel's for lack of memory); saved "
            "checkpoints are kept; train again, or with workers=1 to train in one process"
        )

    def close(self) -> None:
        self.conn.close()  # the worker reads the end of the socket and exits
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.params = self.grads = None
        try:
            self.buf.close()
        except BufferError:  # a caller still holds a view of the gradients: freed with it
            pass


def _child_env() -> dict:
    """The parent's environment, BLAS held to one thread from the start, and charrnn importable
    from wherever the parent imported it (a source tree that was never installed too)."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _serve(conn: Connection, fd: int) -> None:
    from charrnn.model import Workspace, backward, forward
    from charrnn.parallel import blas_threads

    rows, nbytes = conn.recv()
    buf = mmap.mmap(fd, nbytes)
    os.close(fd)
    params, grads = _views(buf, rows)
    ws = Workspace()
    conn.send("ready")
    with blas_threads(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the parent checks the loss and gradients for overflow
        while True:
            try:
                X, Y, state0, keep, resets = conn.recv()
            except (EOFError, OSError):
                return  # the parent closed the socket, or is gone
            try:
                loss, cache, state_last = forward(params, X, Y, state0, ws, keep, resets)
                backward(params, cache, grads)
                answer = (loss, state_last)
            except Exception as e:  # noqa: BLE001 - raised again in the parent
                answer = e
            try:
                conn.send(answer)
            except (OSError, ValueError):
                return
            except Exception as e:  # noqa: BLE001 - an exception that does not pickle
                conn.send(RuntimeError(f"{type(e).__name__}: {e}"))


def main(argv: list[str]) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sock, fd = int(argv[0]), int(argv[1])
    _serve(Connection(sock), fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
