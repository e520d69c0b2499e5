"""What several test files need: running the CLI and reading what it wrote, making bad checkpoints
from a good one, and driving a real `python -m charrnn train` process. Fixtures are in
conftest.py; the cases themselves are in the test file of the module they specify."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from charrnn.cli import app

REPO = Path(__file__).resolve().parent.parent
PERIOD = "abcdefgh"  # the text of the `overfit` model (conftest.py), repeated
with open(REPO / "data" / "shakespeare.txt", encoding="utf-8") as _f:
    TEXT = _f.read(8000)  # plain ASCII

# a model small enough that a step takes about a millisecond
TINY = ["--hidden-size", "16", "--seq-length", "8", "--batch-size", "2", "--rng-seed", "1"]
TIMING_KEYS = {"chars_per_sec", "elapsed"}


# ---- the CLI in-process ----


def cli(*args, input: str | bytes | None = None):
    """`charrnn ARGS...` through typer's CliRunner; paths and numbers may be passed as they are."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def user_error(result, code: int = 1) -> str:
    """Assert that the command refused cleanly: exit `code`, nothing on stdout, exactly one
    `Error: ...` line on stderr and no traceback. Returns the message after `Error: `."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed: {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert result.stderr == lines[0] + "\n"
    return lines[0].removeprefix("Error: ")


def usage_error(result, what: str) -> str:
    """Assert a usage error about `what` (a flag such as "--top-p", or an argument's metavar):
    exit code 2, nothing on stdout, no traceback, and on stderr the line "Error: Invalid value
    for '--top-p': ..." (or "Error: Missing argument 'WHAT'."), so that a renamed flag, or a
    refusal for another reason, fails the test. Returns what the line says after the flag."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == "" and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    for start in (f"Error: Invalid value for '{what}': ", f"Error: Missing argument '{what}'"):
        if errors[0].startswith(start):
            return errors[0].removeprefix(start)
    raise AssertionError(f"not a usage error about {what}: {errors[0]}")


def checkpoint_commands(ckpt: Path, corpus: Path, *train_args) -> list[list]:
    """The commands that read a checkpoint, each given `ckpt`: train --resume, sample, eval."""
    return [
        ["train", corpus, "--resume", ckpt, *train_args, "-q"],
        ["sample", "--checkpoint", ckpt, "--length", 5],
        ["eval", "--checkpoint", ckpt, corpus],
    ]


# ---- what a run wrote ----


def write_corpus(folder: Path, text: str = TEXT) -> Path:
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read without pickle."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_arrays(a: dict, b: dict, keys=None) -> None:
    """The same names, and for each of `keys` (default all) the same dtype, shape and bytes."""
    assert sorted(a) == sorted(b)
    for k in sorted(a) if keys is None else keys:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, f"'{k}' differs"
        assert a[k].tobytes() == b[k].tobytes(), f"'{k}' differs"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def train_steps(run_dir: Path) -> list[int]:
    """The step of every training line of metrics.jsonl, in order."""
    return [r["step"] for r in metrics(run_dir) if "train_loss" in r]


def temp_files(folder: Path) -> list[Path]:
    """The temporary files of atomic saves (atomic.replace_atomically's names) in folder."""
    return sorted(folder.glob(".*.tmp"))


# ---- bad checkpoints, made from a good one ----


def edit(**changes):
    """A change to a checkpoint's arrays: name=None drops one, name=f(arrays) or a value sets
    one. (The other ways to spoil a file are functions of its bytes, or of its path.)"""

    def make(arrays):
        for k, v in changes.items():
            if v is None:
                del arrays[k]
            else:
                arrays[k] = v(arrays) if callable(v) else v
        return arrays

    make.on_arrays = True
    return make


def elsewhere(where):
    """A path that holds no file: where(dest) is the path to give instead of dest."""
    where.on_path = True
    return where


def bad_file(good: Path, dest: Path, how) -> Path:
    """Write the valid checkpoint `good` changed by `how` to dest; the path to give."""
    if getattr(how, "on_path", False):
        return how(dest)
    if getattr(how, "on_arrays", False):
        np.savez(dest, **how(arrays(good)))
    else:
        dest.write_bytes(how(good.read_bytes()))
    return dest


def f32(shape, fill=0.0) -> np.ndarray:
    return np.full(shape, fill, dtype=np.float32)


# ---- a real training process ----


def start_training(corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A real `python -m charrnn train` in its own process, writing last.npz every step (and a
    checkpoint is big enough, at hidden size 48, that kills often land in the middle of one).
    Its stdout and stderr go to files beside `out`: `proc.out` and `proc.log`."""
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus),
        "--out",
        str(out),
        "--hidden-size",
        "48",
        "--seq-length",
        "8",
        "--batch-size",
        "2",
        "--rng-seed",
        "1",
        "--checkpoint-every",
        "1",
        "--eval-every",
        "5",
        "--max-steps",
        "100000",
        "--max-time",
        "60",
        *extra,
    ]
    # to files, not pipes that nobody reads while it runs
    stdout, stderr = out.parent / f"{out.name}.stdout", out.parent / f"{out.name}.stderr"
    with open(stdout, "w") as out_file, open(stderr, "w") as log:
        # its own process group, which a test can signal as a terminal's Ctrl-C would
        proc = subprocess.Popen(
            cmd, cwd=out.parent, stdout=out_file, stderr=log, start_new_session=True
        )
    proc.out, proc.log = stdout, stderr
    return proc


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """Wait for proc (killing it if it outlives timeout); its stderr."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.log.read_text()


def wait_for(condition, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {finish(proc)}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.005)


def mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def wait_for_checkpoint(proc: subprocess.Popen, out: Path) -> None:
    """Wait until the training in proc has written its first last.npz."""
    wait_for(lambda: mtime(out / "last.npz") > 0, proc)


# ---- bounding a block's time ----


class Hang(BaseException):
    """Not an Exception, so nothing in charrnn (or CliRunner) can catch it."""


@contextmanager
def time_limit(seconds: float):
    """Fail the block with Hang if it runs past `seconds` (SIGALRM): a value that a regression
    lets through must not hang the suite."""

    def expire(signum, frame):
        raise Hang(f"still running after {seconds}s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
