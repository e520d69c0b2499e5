"""Data-parallel training over MPI: which process this is, the flat buffer that one Allreduce
sums each step, and how the processes agree on stopping and on errors.

`charrnn train` started by `mpiexec -n K` (or `srun` with K tasks) trains one model with K
processes, the ranks. Each rank runs forward and backward on its B / K of the batch's streams;
its gradients, written straight into views of one flat array, and its loss are summed by one
in-place Allreduce, and every rank applies the same update, so the weights stay the same on
all ranks. Each rank's gradients are the mean over its own streams, so the sum divided by K is
the mean over the whole batch: what one process computes from the same batch, up to rounding.
The random numbers of a step (stream resets, dropout masks) are drawn for the whole batch from
the same generator on every rank, and each rank takes its slice.

One process is `Solo`: the same methods, doing nothing, so the training loop reads the same for
both. mpi4py is imported only when the environment says an MPI launcher started this process
as one of several (`launched_size`); without that, charrnn runs as a single process whether or
not mpi4py is installed. Rank 0 alone writes the run folder and reports; train.py decides that.

Errors. A block that every rank runs (the set-up) runs under `together`: afterwards the ranks
agree whether it failed anywhere, the lowest rank that failed raises its error and every other
rank raises `PeerFailed`, which the CLI ends quietly: reported once, every rank exits 1. An
error every rank meets at the same point from values they share (training diverged) is
`everywhere`: rank 0 raises it, the others `PeerFailed`. Any other error on one rank (a disk
that fills up under rank 0's checkpoint) cannot be agreed on, as the other ranks are already
waiting in the next step's Allreduce: `end_together` aborts the whole job then, after the error
was reported, so no rank waits forever.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from charrnn.errors import CharRNNError, ConfigError
from charrnn.parallel import cpu_count

# The variables that MPI launchers set in each process they start: the number of processes.
# srun sets SLURM_STEP_NUM_TASKS for the tasks of a job step; SLURM_NTASKS alone is not used,
# as the batch script itself sees it too and is one process.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
# ... and this process's rank among them (PMIX_RANK: Open MPI 5 and srun --mpi=pmix)
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMIX_RANK")
INSTALL = "pip install 'charrnn[mpi]'"


class PeerFailed(CharRNNError):
    """Another rank failed and reports the error; this one ends quietly with exit code 1."""


def launched_size(environ=os.environ) -> int:
    """How many processes the MPI launcher started (1 when none did), from its variables."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return max(1, int(value))
    return 1


def launched_rank(environ=os.environ) -> int:
    for name in RANK_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def flat_gradients(params: dict[str, np.ndarray], extra: int) -> tuple[np.ndarray, dict]:
    """One flat array for every gradient and `extra` numbers after them, and the gradients as
    views into it shaped like params: backward writes into the views, Allreduce sums the
    array."""
    sizes = [p.size for p in params.values()]
    dtype = next(iter(params.values())).dtype
    flat = np.zeros(sum(sizes) + extra, dtype)  # (P + extra,)
    views, start = {}, 0
    for (name, p), size in zip(params.items(), sizes, strict=True):
        views[name] = flat[start : start + size].reshape(p.shape)
        start += size
    return flat, views


class Solo:
    """One process: every rank's part is the whole, and every agreement is with itself."""

    rank, size, root = 0, 1, True
    cores = None  # every core this process may use (parallel.cpu_count)

    def streams(self, batch_size: int) -> slice:
        """This rank's streams of the batch: all of them."""
        return slice(0, batch_size)

    def gradients(self, params: dict) -> dict[str, np.ndarray]:
        """Arrays for the step's gradients (views into one flat buffer), shaped like params."""
        self.flat, views = flat_gradients(params, extra=1)
        return views

    def mean(self, loss: float) -> float:
        """The batch's loss, with the gradients in the buffer made the batch's mean: as they
        are, for one process."""
        return loss

    def agree_stop(self, received: int | None, reason: str | None):
        """(signal, reason) to stop for: the signal received and the limit reached."""
        return received, reason

    def gather_rows(self, a: np.ndarray) -> None:
        """Every rank's rows of a (B, ...) array into every rank's copy: here all are ours."""

    def sum(self, x: float) -> float:
        return x

    def same(self, *numbers: int) -> bool:
        """Whether every rank passed the same numbers."""
        return True

    def bcast(self, obj):
        return obj

    @contextmanager
    def together(self) -> Iterator[None]:
        yield

    def everywhere(self, error: Exception) -> Exception:
        return error


class MPIWorld:
    """K processes of one MPI job, K > 1."""

    def __init__(self, MPI, comm):
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.root = self.rank == 0
        # the exit code every rank has agreed to end with (an error or a signal they all know
        # of): a process ending with it needs no abort
        self.agreed_exit: int | None = None
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local = node.Get_size()  # ranks on this machine
        node.Free()
        # a rank the launcher bound to its own cores uses them; unbound ranks share the machine
        bound = cpu_count() < (os.cpu_count() or 1)
        self.cores = cpu_count() if bound else max(1, cpu_count() // local)

    def streams(self, batch_size: int) -> slice:
        n = batch_size // self.size
        return slice(self.rank * n, (self.rank + 1) * n)

    def gradients(self, params: dict) -> dict[str, np.ndarray]:
        self.flat, views = flat_gradients(params, extra=1)  # the last number: the loss
        return views

    def mean(self, loss: float) -> float:
        # every rank's gradients and loss are means over its B / K streams: their sum over
        # the K ranks, divided by K, is the mean over the batch
        self.flat[-1] = loss
        self.comm.Allreduce(self.MPI.IN_PLACE, self.flat, op=self.MPI.SUM)
        self.flat *= 1.0 / self.size
        return float(self.flat[-1])

    def agree_stop(self, received: int | None, reason: str | None):
        # a signal that any rank received stops every rank; step and epoch limits are the same
        # on every rank; the time limit is rank 0's clock
        time_up = self.root and reason == "max_time"
        flags = np.array([received == signal.SIGINT, received == signal.SIGTERM, time_up], np.int32)
        self.comm.Allreduce(self.MPI.IN_PLACE, flags, op=self.MPI.MAX)
        received = signal.SIGINT if flags[0] else signal.SIGTERM if flags[1] else None
        if received is not None:
            self.agreed_exit = 128 + received
        reason = None if reason == "max_time" else reason
        return received, reason or ("max_time" if flags[2] else None)

    def gather_rows(self, a: np.ndarray) -> None:
        self.comm.Allgather(self.MPI.IN_PLACE, a)

    def sum(self, x: float) -> float:
        total = np.array([x], np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, total, op=self.MPI.SUM)
        return float(total[0])

    def same(self, *numbers: int) -> bool:
        low = np.array(numbers, np.int64)
        high = low.copy()
        self.comm.Allreduce(self.MPI.IN_PLACE, low, op=self.MPI.MIN)
        self.comm.Allreduce(self.MPI.IN_PLACE, high, op=self.MPI.MAX)
        return bool((low == high).all())

    def bcast(self, obj):
        """Rank 0's obj (a small setting: pickled), on every rank."""
        return self.comm.bcast(obj, root=0)

    @contextmanager
    def together(self) -> Iterator[None]:
        error = None
        try:
            yield
        except BaseException as e:  # noqa: B036 -- a Ctrl-C in the set-up is agreed on too
            error = e
        first = np.array([self.rank if error is not None else self.size], np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, first, op=self.MPI.MIN)
        if first[0] == self.size:
            return
        self.agreed_exit = 1
        if error is not None and first[0] == self.rank:
            raise error
        raise PeerFailed(f"rank {first[0]} failed")

    def everywhere(self, error: Exception) -> Exception:
        self.agreed_exit = 1
        return error if self.root else PeerFailed("rank 0 reports the error")

    def abort(self, code: int) -> None:
        sys.stderr.flush()
        # the launcher kills every rank at once on an abort, and output it has not yet read
        # from this one's pipes is lost then (measured: MPICH's own line about the abort, now
        # and then): a moment for it to pass the error on first
        time.sleep(0.2)
        self.comm.Abort(code)


World = Solo | MPIWorld
_world: World | None = None


def world() -> World:
    """This process's world, made on first use: MPIWorld when a launcher started several
    processes, Solo otherwise. ConfigError (on rank 0; PeerFailed on the others) when mpi4py is
    missing or sees one process where the launcher started several."""
    global _world
    if _world is None:
        _world = _connect(launched_size())
    return _world


def _connect(size: int) -> World:
    if size == 1:
        return Solo()
    quiet = launched_rank() != 0  # every rank fails alike here: rank 0 alone says why
    try:
        from mpi4py import MPI
    except ImportError:
        if quiet:
            raise PeerFailed("rank 0 reports the error") from None
        raise ConfigError(
            f"started by an MPI launcher as one of {size} processes, but mpi4py is not "
            f"installed; {INSTALL} (it brings MPICH's mpiexec), or train with one process "
            "without mpiexec"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        if quiet:
            raise PeerFailed("rank 0 reports the error")
        raise ConfigError(
            f"the launcher started {size} processes but MPI sees {comm.Get_size()}: mpi4py "
            f"uses another MPI library ({MPI.Get_library_version().splitlines()[0].strip()}) "
            "than the launcher; start it with that library's mpiexec, or under Slurm with "
            "srun --mpi=pmix (or pmi2)"
        )
    return MPIWorld(MPI, comm)


@contextmanager
def end_together() -> Iterator[None]:
    """Around a whole command: when this process ends with an error the other ranks do not
    know of, abort the MPI job (after the error was reported), so none waits for this one
    forever. Nothing for one process, or when MPI was never started."""
    try:
        yield
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if code != 0 and isinstance(_world, MPIWorld) and code != _world.agreed_exit:
            _world.abort(code)
        raise
    except BaseException:
        if isinstance(_world, MPIWorld):  # a crash: no rank expects it
            traceback.print_exc()
            _world.abort(1)
        raise


def alone() -> bool:
    """For everything but training, which alone shares its work among MPI ranks: whether this
    process is the one to do it. Started by a launcher as one of several processes, rank 0
    runs as one process (its world is Solo: MPI is never started, so no rank waits for
    another) and returns True; every other rank returns False and should end at once, so a
    command prints its result once and writes a file once. True without a launcher."""
    global _world
    if launched_size() == 1:
        return True
    if launched_rank() != 0:
        return False
    _world = Solo()
    return True
