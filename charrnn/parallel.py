"""Forward and backward of one training step, split across the CPU cores by batch streams.

The B streams of a batch are independent until their gradients are summed, so each of n
workers runs `forward` and `backward` on its own contiguous share of streams, with BLAS held to
one thread, and the gradients are combined weighted by share. Every core then works on the
whole step: the GEMMs, the nonlinearities and the elementwise work alike, instead of only
inside each multi-threaded (B, H) x (H, H) product.

The calling thread takes the first share. The others go to worker processes
(charrnn/gradproc.py) when a share is big enough to pay for one: a step is thousands of small
NumPy calls, each holding the GIL while it is dispatched, so worker threads of one process
mostly wait for each other (GRU 2 x 192, batch 32 on 2 cores: 111 ms a step with two threads,
74 ms with two processes). Small steps (tests, tiny models) keep threads, which cost nothing to
start.

BLAS runs single-threaded even with one worker: the products of a step are small, and a
multi-threaded OpenBLAS spin-waits for its second thread on every call, which costs more than it
gains at these sizes and collapses when the machine is busy (measured: 27x slower at hidden 128,
batch 1 with another process on the second core).

The split is fixed by `workers`, so a run is bitwise reproducible for the same number of
workers, whether they are threads or processes. BLAS threads are controlled through
threadpoolctl, which knows OpenBLAS, MKL and BLIS; where it finds no BLAS it can control,
everything runs in one worker.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from charrnn.gradproc import ProcessWorker
from charrnn.model import Workspace, architecture, backward, forward


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


# the multiply-adds of one share's forward pass above which the other shares go to worker
# processes rather than threads (a GRU 2 x 192 share of 16 x 100 has 590M; a process costs
# ~0.4 s to start, and each step ~0.1 ms to hand over)
PROCESS_WORK = 20_000_000


def share_work(params: dict, T: int, B: int) -> int:
    """Multiply-adds of the recurrent layers' forward pass over a (T, B) chunk."""
    arch = architecture(params)
    work, n_in = 0, arch.vocab_size
    for _ in range(arch.num_layers):
        work += arch.gates * arch.hidden_size * (n_in + arch.hidden_size)
        n_in = arch.hidden_size
    return int(T * B * work)


class GradientWorkers:
    """Computes (loss, grads, state_last) of a batch with its streams shared among n workers:
    the calling thread takes the first share, and the others go to worker processes
    (charrnn/gradproc.py) or, for small steps or where a process cannot start, to threads.
    Either way each share is the same `forward` and `backward` with BLAS on one thread, and
    the shares are combined in the same order: the same bits.

    `grads`: arrays shaped like the params that the batch's gradients are written into (the
    flat buffer of distributed.py); None: the first worker's gradients are new arrays.
    `processes`: True or False to choose, None (the default) by the size of a share."""

    def __init__(
        self,
        batch_size: int,
        workers: int,
        grads: dict | None = None,
        processes: bool | None = None,
    ):
        self.n = workers
        self.grads = grads
        bounds = np.linspace(0, batch_size, workers + 1).round().astype(int)
        self.shares = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.weights = [(s.stop - s.start) / batch_size for s in self.shares]
        self.workspaces = [Workspace() for _ in self.shares]
        self.processes = processes
        self.procs: list[ProcessWorker] = []  # for shares 1..n-1, started at the first call
        self.pool: ThreadPoolExecutor | None = None

    def _start(self, params: dict, T: int) -> None:
        """Workers for shares 1..n-1: processes when a share is big enough, else threads."""
        if self.processes is None:
            B = self.shares[0].stop - self.shares[0].start
            self.processes = bool(share_work(params, T, B) >= PROCESS_WORK)
        if self.processes:
            try:
                for _ in self.shares[1:]:
                    self.procs.append(ProcessWorker(params))
                return
            except OSError:  # no interpreter to start, or no shared memory: threads instead
                self._stop_processes()
                self.processes = False
        self.pool = ThreadPoolExecutor(self.n - 1)

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

        def columns(i: int) -> tuple:
            s = self.shares[i]
            k = None if keep is None else keep[:, :, s]
            r = None if resets is None else resets[:, s]
            return X[:, s], Y[:, s], state0[s], k, r

        def part(i: int):
            ws = self.workspaces[i]
            loss, cache, state = forward(params, *columns(i)[:3], ws, *columns(i)[3:])
            return loss, backward(params, cache, self.grads if i == 0 else None), state

        with blas_threads(1):
            if self.n == 1:
                return part(0)
            if self.pool is None and not self.procs:
                self._start(params, X.shape[0])
            if self.procs and all(p.fits(params) for p in self.procs):
                results = self._in_processes(params, columns, part)
            else:
                if self.pool is None:  # other params than the first call's: threads
                    self._stop_processes()
                    self.pool = ThreadPoolExecutor(self.n - 1)
                others = [self.pool.submit(part, i) for i in range(1, self.n)]
                results = [part(0)] + [f.result() for f in others]
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

    def _in_processes(self, params: dict, columns, part) -> list:
        """The results of every share, shares 1..n-1 in the worker processes. Whatever goes wrong
        (an error in a share, a worker that died, an interrupt) leaves the processes stopped,
        and a later call uses threads: no answer is left unread to be taken for the next one."""
        try:
            for i, proc in enumerate(self.procs, start=1):
                proc.submit(params, *columns(i))
            first = part(0)
            return [first] + [proc.result() for proc in self.procs]
        except BaseException:
            self._stop_processes()
            self.pool = ThreadPoolExecutor(self.n - 1)
            raise

    def _stop_processes(self) -> None:
        for proc in self.procs:
            proc.close()
        self.procs = []

    def close(self) -> None:
        self._stop_processes()
        if self.pool is not None:
            self.pool.shutdown()
