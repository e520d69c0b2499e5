"""Run directories: naming a new one, finding the latest, and locking one while it is trained.

A run directory holds config.yaml, metrics.jsonl, last.npz, best.npz and a `.lock` file. The
lock is an flock on that file: the kernel drops it when the process dies, even by SIGKILL, so a
killed run never leaves a directory locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from charrnn.errors import CheckpointError, RunLockedError

RUNS_DIR = "runs"


def new_run_dir(base: str | Path = RUNS_DIR) -> Path:
    """A fresh, empty folder under base named after the current time (runs/20261122-101500)."""
    base = Path(base)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise CheckpointError(f"could not create a new run folder under '{base}'")


def latest_checkpoint(base: str | Path = RUNS_DIR, name: str = "best.npz") -> Path:
    """The most recently written `name` under base/*/; an error naming what to do if none."""
    found = [p for p in Path(base).glob(f"*/{name}") if p.is_file()]
    if not found:
        raise CheckpointError(
            f"no trained model found under '{base}/' in this folder; "
            "run 'charrnn train CORPUS' first or pass --checkpoint FILE"
        )
    return max(found, key=lambda p: p.stat().st_mtime_ns)


class RunLock:
    """Exclusive lock on a run directory for the life of a training process."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"run folder '{self.path.parent}' is in use by another training process; "
                "wait for it to finish or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
