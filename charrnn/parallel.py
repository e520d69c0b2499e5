"""Forward and backward of one training step, split across the CPU cores by batch streams.

The B streams of a batch are independent until their gradients are summed, so each of n worker
threads runs `forward` and `backward` on its own contiguous share of streams, with BLAS held to
one thread, and the gradients are combined weighted by share. Every core then works on the
whole step: the GEMMs, the nonlinearities and the elementwise work alike (NumPy releases the GIL
in all of them), instead of only inside each multi-threaded (B, H) x (H, H) product.

BLAS runs single-threaded even with one worker: the products of a step are small, and a
multi-threaded OpenBLAS spin-waits for its second thread on every call, which costs more than it
gains at these sizes and collapses when the machine is busy (measured: 27x slower at hidden 128,
batch 1 with another process on the second core).

The split is fixed by `workers`, so a run is bitwise reproducible for the same number of
workers. BLAS threads are controlled through threadpoolctl, which knows OpenBLAS, MKL and BLIS;
where it finds no BLAS it can control, everything runs in one worker.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from charrnn.model import Workspace, backward, forward


@cache
def _controller() -> ThreadpoolController:
    return ThreadpoolController()


def _blas_controllable() -> bool:
    return bool(_controller().select(user_api="blas").lib_controllers)


@contextmanager
def blas_threads(n: int):
    """Run the block with BLAS limited to n threads (no-op when no known BLAS is loaded)."""
    with _controller().limit(limits=n, user_api="blas"):
        yield


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def auto_workers(batch_size: int, requested: int = 0, cores: int | None = None) -> int:
    """`requested` workers (0 = one per CPU core, or per one of `cores`), never more than
    streams, 1 when BLAS threads cannot be limited (each worker would start a full set of BLAS
    threads)."""
    n = requested or cores or cpu_count()
    if not _blas_controllable():
        n = 1
    return max(1, min(n, batch_size))


class GradientWorkers:
    """Computes (loss, grads, state_last) of a batch with its streams shared among n threads.

    `grads`: arrays shaped like the params that the batch's gradients are written into (the
    flat buffer of distributed.py); None: the first worker's gradients are new arrays."""

    def __init__(self, batch_size: int, workers: int, grads: dict | None = None):
        self.n = workers
        self.grads = grads
        bounds = np.linspace(0, batch_size, workers + 1).round().astype(int)
        self.shares = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.weights = [(s.stop - s.start) / batch_size for s in self.shares]
        self.workspaces = [Workspace() for _ in self.shares]
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None

    def __call__(
        self,
        params: dict,
        X: np.ndarray,
        Y: np.ndarray,
        state0: np.ndarray,
        keep=None,
        resets=None,
    ):
        """X, Y (T, B) ids, state0 (B, W) the carried state, keep None or dropout masks
        (L, T, B, H), resets None or (T, B) where states are zeroed: each worker takes its
        columns of all of them."""

        def part(i: int):
            s = self.shares[i]
            k = None if keep is None else keep[:, :, s]
            r = None if resets is None else resets[:, s]
            ws = self.workspaces[i]
            loss, cache, state = forward(params, X[:, s], Y[:, s], state0[s], ws, k, r)
            return loss, backward(params, cache, self.grads if i == 0 else None), state

        with blas_threads(1):
            if self.pool is None:
                return part(0)
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
        state_last = np.concatenate([r[2] for r in results], axis=0)  # (B, W)
        return loss, grads, state_last

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
