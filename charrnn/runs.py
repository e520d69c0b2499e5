"""Run directories: naming a new one, choosing the checkpoint that sample, eval and
`charrnn.load` use, locking one while it is trained, and never replacing one by accident.

A run directory holds config.yaml, metrics.jsonl, last.npz, best.npz and a `.lock` file. The
lock is an flock on that file: the kernel drops it when the process dies, even by SIGKILL, so a
killed run never leaves a directory locked. A folder that holds any of the four files holds a
run: a new training refuses it unless told to continue it (--resume) or to start over
(--overwrite), so a batch job that runs a script twice never destroys the first results.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from charrnn.atomic import remove_quietly, replace_atomically
from charrnn.errors import (
    CheckpointError,
    DataError,
    RunLockedError,
    TooLargeError,
    TrainingError,
    option,
)
from charrnn.memory import show_bytes

RUNS_DIR = "runs"
CHECKPOINT_ENV = "CHARRNN_CHECKPOINT"  # pins the checkpoint used when none is given
RUN_FILES = ("config.yaml", "metrics.jsonl", "last.npz", "best.npz")
LOCK = ".lock"


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


def make_run_dir(path: str | Path | None) -> tuple[Path, list[Path]]:
    """The run folder `path` (None: a new one under runs/), created with any missing parents;
    and the folders this call created, innermost first, for `remove_unused` (OSError when it
    cannot be created)."""
    target = Path(RUNS_DIR) if path is None else Path(path)
    made = [p for p in (target, *target.parents) if p != Path(".") and not os.path.lexists(p)]
    if path is None:
        return (run_dir := new_run_dir()), [run_dir, *made]
    target.mkdir(parents=True, exist_ok=True)
    return target, made


def remove_unused(made: list[Path]) -> None:
    """Delete the folders a run created (innermost first) when it failed before writing
    anything: the run folder if it holds only its lock, then each parent left empty. Called
    under the run's lock, so no other training can be using the folder."""
    if not made or [p.name for p in made[0].iterdir()] not in ([LOCK], []):
        return
    remove_quietly(made[0] / LOCK)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run was made beside it): keep it and its parents
            return


def run_files(run_dir: str | Path) -> list[str]:
    """The files of a run (RUN_FILES) that run_dir holds; any one of them makes it a run."""
    return [name for name in RUN_FILES if os.path.lexists(Path(run_dir) / name)]


def existing_run(run_dir: str | Path) -> TrainingError | None:
    """The error a new training into run_dir raises when the folder already holds a run: it
    names --resume (when there is a last.npz to continue from) and --overwrite."""
    found = run_files(run_dir)
    if not found:
        return None
    if "last.npz" in found:
        return TrainingError(
            f"run folder '{run_dir}' already holds a run ({', '.join(found)}); continue it "
            f"with {option('resume', run_dir)}, or pass {option('overwrite', True)} to delete "
            "it and start over"
        )
    return TrainingError(
        f"run folder '{run_dir}' already holds a run ({', '.join(found)}) with no last.npz to "
        f"{option('resume')} from; pass {option('overwrite', True)} to delete it and start "
        f"over, or another {option('out')}"
    )


def remove_run(run_dir: Path) -> None:
    """Delete a run's files (RUN_FILES) from run_dir, for --overwrite; anything else in the
    folder stays. The caller holds the run's lock; a file that cannot be deleted is an OSError,
    so an old file is never left to mix with the new run's."""
    for name in RUN_FILES:
        try:
            os.unlink(run_dir / name)
        except FileNotFoundError:
            pass


def special_file(path: str | Path) -> str | None:
    """What path is when it names neither a regular file nor a folder ("a FIFO (named pipe)",
    "a character device", ...), else None (a missing path too: opening it says so). Reading one
    of those never ends or never starts: opening a FIFO waits for a writer, /dev/zero never
    ends, so a command refuses them before it opens one."""
    try:
        mode = os.stat(path).st_mode  # a stat never blocks, even on a FIFO
    except (OSError, ValueError):
        return None
    kinds = {
        stat.S_ISFIFO: "a FIFO (named pipe)",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISSOCK: "a socket",
    }
    return next((what for test, what in kinds.items() if test(mode)), None)


HUB_MODEL = "model.safetensors"  # the model of a folder that `charrnn export --format hf` wrote


def checkpoint_file(path: str | Path, in_folder: str = "best.npz") -> Path:
    """The checkpoint a path names: the file itself, or `in_folder` of a run folder (of a
    model-hub folder without one: its model.safetensors); a FIFO, device or socket is a
    CheckpointError (see special_file)."""
    path = Path(path)
    file = path / in_folder if path.is_dir() else path
    if path.is_dir() and not os.path.lexists(file) and (path / HUB_MODEL).is_file():
        file = path / HUB_MODEL
    what = special_file(file)
    if what is not None:
        raise CheckpointError(
            f"checkpoint '{file}' is {what}, not a file; give a .npz file or a run folder"
        )
    return file


def latest_checkpoint(base: str | Path = RUNS_DIR, name: str = "best.npz") -> Path:
    """The most recently written `name` under base/*/; an error naming what to do if none."""
    found = [p for p in Path(base).glob(f"*/{name}") if p.is_file()]
    if not found:
        raise CheckpointError(
            f"no trained model found under '{base}/' in this folder; "
            f"run 'charrnn train CORPUS' first or pass {option('checkpoint', 'FILE')}"
        )
    return max(found, key=lambda p: p.stat().st_mtime_ns)


def choose_checkpoint(
    path: str | Path | None = None, base: str | Path = RUNS_DIR, environ=os.environ
) -> tuple[Path, str]:
    """The checkpoint file to use and why: `path` if given ("given"); else the one that
    $CHARRNN_CHECKPOINT names ("env"); else the most recently written best.npz under base/*/
    ("latest"). A run folder, given or named, stands for its best.npz."""
    why = "given"
    if path is None and environ.get(CHECKPOINT_ENV):
        path, why = Path(environ[CHECKPOINT_ENV]), "env"
        if not path.exists():
            raise CheckpointError(
                f"{CHECKPOINT_ENV} names '{path}', which does not exist; "
                "point it at a checkpoint or run folder, or unset it"
            )
    if path is None:
        return latest_checkpoint(base), "latest"
    return checkpoint_file(path), why


class RunLock:
    """Exclusive lock on a run directory for the life of a training process."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"run folder '{self.path.parent}' is in use by another training process; "
                f"wait for it to finish or pass another {option('out')}"
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


# ---- reading a run folder's text files back: they are the user's to edit ----

MAX_METRICS_BYTES = 1 << 30  # metrics.jsonl: a line a step, ~200 bytes: 5 million steps
MAX_LINE_BYTES = 1 << 16  # a line longer than this is no record train wrote: skipped unread
MAX_STEP = 2**53  # steps and counts are exact in a float up to here
MAX_VALUE = 1e100  # a loss, rate or time beyond this is no value train wrote
# the numbers of a record that plot and info read, and the least each may be
NUMBERS = {"train_loss": 0.0, "val_loss": 0.0, "val_bpc": 0.0, "elapsed": 0.0}


def regular_file(path: str | Path, what: str) -> Path | None:
    """path when it names a regular file, None when nothing is there; a DataError naming
    `what` it should be when it is a FIFO, a device, a socket or a folder (a FIFO would make
    the reader wait for a writer forever, /dev/zero never ends)."""
    path = Path(path)
    kind = special_file(path)
    if kind is None and path.is_dir():
        kind = "a folder"
    if kind is not None:
        raise DataError(f"'{path}' is {kind}, not a file; {what} is a regular file")
    return path if path.exists() else None


class Metrics:
    """The records of a metrics.jsonl, read a line at a time: `for line, record in metrics`.

    A record is a JSON object with a whole "step" from 0 to MAX_STEP and, for each of NUMBERS
    it holds, null or a finite number at least that least value and at most MAX_VALUE (JSON's
    true is not a number here). Any other line is skipped and counted: text that is not JSON
    (a line cut short by a kill), NaN or Infinity, a number of more than 20 digits, JSON nested
    past Python's recursion limit, a line over MAX_LINE_BYTES (skipped without reading it
    whole). `problem()` says how many were skipped and why the first was. A file over
    MAX_METRICS_BYTES is a TooLargeError, a FIFO or device a DataError, before any is read."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.skipped = 0
        self._first: str | None = None
        found = regular_file(self.path, "a run's metrics.jsonl")
        self.exists = found is not None
        if found is not None and found.stat().st_size > MAX_METRICS_BYTES:
            raise TooLargeError(
                f"input too large: '{path}' holds {show_bytes(found.stat().st_size)}, more "
                f"than the {show_bytes(MAX_METRICS_BYTES)} a metrics.jsonl may have"
            )

    def __iter__(self) -> Iterator[tuple[bytes, dict]]:
        if not self.exists:
            return
        with open(self.path, "rb") as f:
            for number, line in enumerate(_lines(f, MAX_LINE_BYTES, MAX_METRICS_BYTES), 1):
                record, why = (None, "longer than 64 kB") if line is None else _record(line)
                if record is None:
                    self.skipped += 1
                    if self._first is None:
                        self._first = f"line {number}: {why}"
                    continue
                yield line, record

    def problem(self) -> str | None:
        """None when every line was a record; else one sentence for the user."""
        if not self.skipped:
            return None
        lines = "line" if self.skipped == 1 else "lines"
        return (
            f"skipped {self.skipped:,} {lines} of '{self.path}' that hold no valid record "
            f"(the first, {self._first})"
        )


def _lines(f, max_line: int, max_total: int) -> Iterator[bytes | None]:
    """The lines of a binary file without their newline, each read in bounded pieces; None for
    a line longer than max_line (read past, never held); at most max_total bytes in all."""
    total = 0
    while total <= max_total:
        line = f.readline(max_line + 1)
        if not line:
            return
        total += len(line)
        if len(line) > max_line and not line.endswith(b"\n"):
            while (rest := f.readline(max_line)) and not rest.endswith(b"\n"):
                total += len(rest)
                if total > max_total:
                    return
            total += len(rest)
            yield None
            continue
        yield line.rstrip(b"\r\n")


def _refuse(text: str):
    raise ValueError(text)


def _int(text: str) -> int:
    return int(text) if len(text.lstrip("-")) <= 20 else _refuse("a number of over 20 digits")


def _record(line: bytes) -> tuple[dict | None, str]:
    """(the record, "") for a valid line, else (None, why not)."""
    if not line.strip():
        return None, "empty"
    try:
        rec = json.loads(
            line.decode("utf-8", "replace"),
            parse_constant=lambda c: _refuse(f"{c} is not a number JSON allows"),
            parse_int=_int,
        )
    except RecursionError:
        return None, "nested too deeply"
    except ValueError as e:
        return None, str(e).split(":")[0] if "JSON" not in str(e) else "not JSON"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    step = rec.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        return None, "its step is not a whole number from 0 to 2**53"
    for key, least in NUMBERS.items():
        x = rec.get(key)
        if x is None:
            continue
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not least <= x <= MAX_VALUE:
            return None, f"its {key} is not null or a number from {least:g} to {MAX_VALUE:g}"
    return rec, ""


def trim_metrics(path: Path, step: int) -> float:
    """For a resumed run: drop the lines of metrics.jsonl past `step` (and those that are no
    record), replacing it atomically; the last `elapsed` kept, which the run continues from."""
    metrics = Metrics(path)
    if not metrics.exists:
        return 0.0
    elapsed = 0.0

    def write(out) -> None:
        nonlocal elapsed
        for line, rec in metrics:
            if rec["step"] <= step:
                out.write(line + b"\n")
                elapsed = float(rec["elapsed"]) if rec.get("elapsed") is not None else elapsed

    replace_atomically(path, write)
    return elapsed
