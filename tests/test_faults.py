"""Training under faults: nothing lost, nothing crashes.

SIGKILL at random moments of a real `python -m charrnn train` that writes a checkpoint every step;
what a killed save leaves behind; a save that fails (disk full, unwritable folder, a file-size
limit); SIGINT and SIGTERM, once or twice. In every case the checkpoints on disk load, the error
is one `Error:` line with no traceback, and a resume carries on.

What each module promises on its own is in its test file: atomic replacement in test_atomic.py,
refused checkpoints in test_checkpoint.py, the run lock in test_runs.py; divergence and bitwise
resume are in test_train.py.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    TINY,
    cli,
    finish,
    mtime,
    start_training,
    temp_files,
    train_steps,
    user_error,
    wait_for,
    wait_for_checkpoint,
    write_corpus,
)

from charrnn import atomic
from charrnn import checkpoint as ckpt_io
from charrnn.runs import latest_checkpoint

IS_ROOT = os.geteuid() == 0


# ---- SIGKILL at random moments ----


def kill_and_resume(tmp_path: Path, kills: int, budget: float) -> None:
    """Kill a training `kills` times at random moments (each run resumes the killed one); after
    every kill both checkpoints load and the step never goes back; a last resume completes."""
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    rnd = random.Random(kills)
    last_step, deadline = 0, time.monotonic() + budget
    for _ in range(kills):
        if time.monotonic() > deadline:
            break
        before = mtime(out / "last.npz")
        resume = ["--resume", str(out)] if before else []
        proc = start_training(corpus, out, *resume)
        try:
            # it is saving (and has validated once, so best.npz exists too)
            wait_for(
                lambda b=before: mtime(out / "last.npz") != b and (out / "best.npz").exists(), proc
            )
            time.sleep(rnd.uniform(0, 0.15))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            finish(proc)
        assert proc.returncode == -signal.SIGKILL
        last, best = ckpt_io.load(out / "last.npz"), ckpt_io.load(out / "best.npz")
        # best.npz is saved before last.npz, so a kill between them leaves best one step ahead
        # (never behind the best val loss that last.npz records); a resume replays that step
        assert last.step >= last_step and 1 <= best.step <= last.step + 1
        last_step = last.step
    assert last_step > 0

    # whatever the kills left (temp files, a cut metrics line), a resume runs to the end
    target = last_step + 3
    result = cli("train", corpus, "--resume", out, "--max-steps", target, "--quiet")
    assert result.exit_code == 0, result.output
    assert ckpt_io.load(out / "last.npz").step == target
    assert temp_files(out) == []  # removed by the next run, under the lock
    # no step's metrics line lost or repeated across the kills
    assert train_steps(out) == list(range(1, target + 1))


def test_sigkill_a_few_times_then_resume(tmp_path):
    kill_and_resume(tmp_path, kills=3, budget=20)


@pytest.mark.slow
def test_sigkill_many_times_then_resume(tmp_path):
    kill_and_resume(tmp_path, kills=25, budget=60)


def test_stray_temp_files_break_nothing(tmp_path):
    """Temp files a killed save leaves beside the checkpoints are never read, and go away."""
    corpus, out = write_corpus(tmp_path), tmp_path / "runs" / "a"
    assert cli("train", corpus, *TINY, "--max-steps", 4, "--out", out, "-q").exit_code == 0
    raw = (out / "last.npz").read_bytes()
    (out / ".last.npz.k3j2h1.tmp").write_bytes(raw[: len(raw) // 2])  # a save cut short
    (out / ".best.npz.zz9.tmp").write_bytes(b"garbage")
    assert latest_checkpoint(tmp_path / "runs") == out / "best.npz"
    assert ckpt_io.load(out / "last.npz").step == 4
    result = cli("train", corpus, "--resume", out, "--max-steps", 6, "-q")
    assert result.exit_code == 0, result.output
    assert ckpt_io.load(out / "last.npz").step == 6
    assert temp_files(out) == []


# ---- a save that fails: disk full, unwritable folder ----


def _fail_after(real, n_ok: int, exc: OSError, only=lambda *a, **k: True):
    calls = {"n": 0}

    def fake(*args, **kwargs):
        if only(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > n_ok:
                raise exc
        return real(*args, **kwargs)

    return fake


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("how", ["savez-enospc", "replace-enospc", "unwritable-folder"])
def test_failed_save_keeps_previous_checkpoint(how, tmp_path, monkeypatch):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    # one checkpoint (last.npz + best.npz, no validation) at step 2, then the next save fails
    if how == "savez-enospc":
        monkeypatch.setattr(ckpt_io.np, "savez", _fail_after(np.savez, 2, ENOSPC))
        says = "No space left on device"
    elif how == "replace-enospc":
        monkeypatch.setattr(
            atomic.os,
            "replace",
            _fail_after(os.replace, 2, ENOSPC, only=lambda src, dst: str(dst).endswith(".npz")),
        )
        says = "No space left on device"
    else:
        real_save = ckpt_io.save

        def save_then_lock_folder(ckpt, path):
            real_save(ckpt, path)
            if Path(path).name == "best.npz":  # the first checkpoint is complete
                if IS_ROOT:  # root writes through a read-only folder: refuse like the kernel
                    monkeypatch.setattr(
                        atomic.tempfile,
                        "mkstemp",
                        _fail_after(
                            None, 0, PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                        ),
                    )
                else:
                    out.chmod(0o555)

        monkeypatch.setattr(ckpt_io, "save", save_then_lock_folder)
        says = "Permission denied"
    try:
        result = cli(
            "train",
            corpus,
            *TINY,
            "--checkpoint-every",
            2,
            "--eval-every",
            0,
            "--max-steps",
            10,
            "--out",
            out,
            "-q",
        )
    finally:
        if out.exists():
            out.chmod(0o755)
    line = user_error(result)
    assert says in line
    assert f"could not write checkpoint '{out / 'last.npz'}'" in line
    assert "previous checkpoint is unchanged" in line and "--resume" in line
    assert ckpt_io.load(out / "last.npz").step == 2
    assert ckpt_io.load(out / "best.npz").step == 2
    assert temp_files(out) == []


def test_real_write_failure_file_size_limit(tmp_path):
    """A real failing write (EFBIG via RLIMIT_FSIZE, which binds root too) in the middle of
    training: exit 1, one Error line, and the checkpoint from before still loads."""
    resource = pytest.importorskip("resource")
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    out.mkdir()
    proc = start_training(corpus, out, "--quiet")
    try:
        wait_for_checkpoint(proc, out)
        limit = (out / "last.npz").stat().st_size - 1  # no checkpoint fits any more
        try:
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (limit, limit))
        except (OSError, AttributeError):  # a sandbox that forbids it, or not Linux
            proc.kill()
            pytest.skip("cannot lower another process's RLIMIT_FSIZE here")
    finally:
        stderr = finish(proc)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "File too large" in lines[0] and "unchanged" in lines[0]
    assert ckpt_io.load(out / "last.npz").step >= 1
    assert temp_files(out) == []


# ---- SIGINT and SIGTERM ----


# a model whose steps parallel.py gives in part to a worker process (gradproc.py)
PROCESS_SIZED = ("--cell", "gru", "--hidden-size", "128", "--seq-length", "32", "--batch-size",
                 "24", "--set", "workers=2")  # fmt: skip


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("model", [(), PROCESS_SIZED], ids=["threads", "processes"])
def test_signal_saves_and_resumes(sig, code, model, tmp_path):
    """Ctrl-C (or a kill's SIGTERM) in the middle of training: the step finishes, last.npz is
    saved, the exit code is 128 + the signal, and stderr says how to continue. Sent to the
    whole process group, as a terminal's Ctrl-C is: a worker process leaves the stopping to
    the run, and ends with it."""
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    proc = start_training(corpus, out, *model)
    try:
        wait_for_checkpoint(proc, out)
        os.killpg(proc.pid, sig)
    finally:
        stderr = finish(proc)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and proc.out.read_text() == ""
    step = ckpt_io.load(out / "last.npz").step  # the final checkpoint, the step it names
    assert (
        f"Interrupted at step {step}; saved {out / 'last.npz'}; continue with: "
        f"charrnn train {corpus} --resume {out}"
    ) in stderr
    ckpt_io.load(out / "best.npz")
    result = cli("train", corpus, "--resume", out, "--max-steps", step + 2, "-q")
    assert result.exit_code == 0, result.output
    assert ckpt_io.load(out / "last.npz").step == step + 2


def test_second_sigint_stops_at_once(tmp_path):
    """Ctrl-C twice: the second one interrupts even the final save; still exit 130, no
    traceback, and last.npz is a complete checkpoint (the old or the new one)."""
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    proc = start_training(corpus, out)
    try:
        wait_for_checkpoint(proc, out)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.001)
        proc.send_signal(signal.SIGINT)
    finally:
        stderr = finish(proc)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted" in stderr
    step = ckpt_io.load(out / "last.npz").step
    # a save cut short may leave its temporary file (the rename never happened); the next run
    # removes it
    result = cli("train", corpus, "--resume", out, "--max-steps", step + 1, "-q")
    assert result.exit_code == 0, result.output
    assert temp_files(out) == []
