"""Forward and backward of one training step, split across the CPU cores by batch streams.

The B streams of a batch are independent until their gradients are summed, so each of n worker
threads runs `forward` and `backward` on its own contiguous share of streams, with BLAS held to
one thread, and the gradients are combined weighted by share. Every core then works on the
whole step: the GEMMs, the tanh and the elementwise work alike (NumPy releases the GIL in all
of them), instead of only inside each multi-threaded (B, H) x (H, H) product.

BLAS runs single-threaded even with one worker: the products of a step are small, and a
multi-threaded OpenBLAS spin-waits for its second thread on every call, which costs more than it
gains at these sizes and collapses when the machine is busy (measured: 27x slower at hidden 128,
batch 1 with another process on the second core).

The split is fixed by `workers`, so a run is bitwise reproducible for the same number of
workers. BLAS thread control goes through the OpenBLAS library NumPy loaded; where it cannot
be found (another BLAS), everything runs in one worker.
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

import numpy as np

from charrnn.model import Workspace, backward, forward

_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GETTERS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)


@cache
def _openblas():
    """(set_num_threads, get_num_threads) of the OpenBLAS in this process, or None."""
    try:
        with open("/proc/self/maps") as f:
            paths = {ln.split()[-1] for ln in f if "openblas" in ln and ".so" in ln}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, getter.restype = [ctypes.c_int], ctypes.c_int
            return setter, getter
    return None


@contextmanager
def blas_threads(n: int):
    """Run the block with BLAS limited to n threads (no-op when OpenBLAS is not found)."""
    blas = _openblas()
    if blas is None:
        yield
        return
    setter, getter = blas
    before = getter()
    setter(n)
    try:
        yield
    finally:
        setter(before)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def auto_workers(batch_size: int, requested: int = 0) -> int:
    """`requested` workers (0 = one per CPU core), never more than streams, 1 without OpenBLAS."""
    n = requested or cpu_count()
    if _openblas() is None:
        n = 1
    return max(1, min(n, batch_size))


class GradientWorkers:
    """Computes (loss, grads, h_last) of a batch with its streams shared among n threads."""

    def __init__(self, batch_size: int, workers: int):
        self.n = workers
        bounds = np.linspace(0, batch_size, workers + 1).round().astype(int)
        self.shares = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.weights = [(s.stop - s.start) / batch_size for s in self.shares]
        self.workspaces = [Workspace() for _ in self.shares]
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def __call__(self, params: dict, X: np.ndarray, Y: np.ndarray, h0: np.ndarray):
        if self.pool is None:
            with blas_threads(1):
                loss, cache, h_last = forward(params, X, Y, h0, self.workspaces[0])
                return loss, backward(params, cache), h_last

        def part(i: int):
            s = self.shares[i]
            loss, cache, h_last = forward(params, X[:, s], Y[:, s], h0[s], self.workspaces[i])
            return loss, backward(params, cache), h_last

        with blas_threads(1):
            results = list(self.pool.map(part, range(self.n)))
        # each share's loss is a mean over its own characters: weight by share to get the mean
        # over the batch, and the same for the gradients
        loss = sum(w * r[0] for w, r in zip(self.weights, results, strict=True))
        grads = results[0][1]
        for g in grads.values():
            g *= self.weights[0]
        for w, (_, g_i, _) in zip(self.weights[1:], results[1:], strict=True):
            for k, g in grads.items():
                g += w * g_i[k]
        h_last = np.concatenate([r[2] for r in results], axis=0)  # (B, H)
        return loss, grads, h_last

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
