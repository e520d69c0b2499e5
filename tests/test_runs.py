"""charrnn.runs: run folders, named, found and locked.

What it promises: `new_run_dir` makes a fresh empty folder named after the time and never hands
out one that exists; `latest_checkpoint` finds the most recently written checkpoint of any run
(never a save's temporary file) or says what to do when there is none; `RunLock` lets one
training at a time use a folder, and a killed training never leaves it locked.
"""

from __future__ import annotations

import os
import signal

import pytest
from helpers import cli, finish, start_training, user_error, wait_for_checkpoint, write_corpus

from charrnn import checkpoint as ckpt_io
from charrnn import runs
from charrnn.errors import CheckpointError, RunLockedError, as_command

# ---- naming ----


def test_new_run_dir_is_named_after_the_time_and_never_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.time, "strftime", lambda fmt: "20261122-101500")
    first, second, third = (runs.new_run_dir(tmp_path / "runs") for _ in range(3))
    assert [p.name for p in (first, second, third)] == [
        "20261122-101500",
        "20261122-101500-1",
        "20261122-101500-2",
    ]
    assert all(p.is_dir() and not any(p.iterdir()) for p in (first, second, third))


# ---- finding the latest ----


def test_latest_checkpoint_is_the_most_recently_written(tmp_path):
    for n, run in enumerate(["b", "a", "c"]):  # written in this order
        (tmp_path / run).mkdir()
        for name in ("best.npz", "last.npz"):
            (tmp_path / run / name).write_bytes(b"x")
            os.utime(tmp_path / run / name, ns=((n + 1) * 10**18, (n + 1) * 10**18))
    (tmp_path / "a" / ".best.npz.k3j2h1.tmp").write_bytes(b"a save cut short")  # newest, ignored
    os.utime(tmp_path / "b" / "last.npz", ns=(9 * 10**18, 9 * 10**18))
    assert runs.latest_checkpoint(tmp_path) == tmp_path / "c" / "best.npz"
    assert runs.latest_checkpoint(tmp_path, "last.npz") == tmp_path / "b" / "last.npz"


def test_no_checkpoint_says_what_to_do(tmp_path):
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    with pytest.raises(CheckpointError) as e:
        runs.latest_checkpoint(tmp_path / "runs")
    assert str(e.value) == (  # from Python: load's argument
        f"no trained model found under '{tmp_path / 'runs'}/' in this folder; "
        "run 'charrnn train CORPUS' first or pass path='FILE'"
    )
    with pytest.raises(CheckpointError) as e, as_command():  # the command line's flag
        runs.latest_checkpoint(tmp_path / "runs")
    assert str(e.value).endswith("or pass --checkpoint FILE")


# ---- locking ----


def test_run_lock_in_process(tmp_path):
    with runs.RunLock(tmp_path):
        with pytest.raises(RunLockedError, match="in use by another training process"):
            runs.RunLock(tmp_path).__enter__()
    with runs.RunLock(tmp_path):  # released on exit
        pass


def test_second_training_into_same_folder_is_refused(tmp_path):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    first = start_training(corpus, out, "--quiet")
    try:
        wait_for_checkpoint(first, out)
        config_before = (out / "config.yaml").read_text()
        metrics_before = (out / "metrics.jsonl").read_bytes()  # the first run only appends
        for extra in (["--hidden-size", "8", "--rng-seed", "2"], ["--resume", str(out)]):
            result = cli("train", corpus, "--out", out, *extra, "-q")
            assert user_error(result) == (
                f"run folder '{out}' is in use by another training "
                "process; wait for it to finish or pass another --out"
            )
            # refused before writing anything: the first run's files are its own
            assert (out / "config.yaml").read_text() == config_before
            assert (out / "metrics.jsonl").read_bytes().startswith(metrics_before)
        os.kill(first.pid, signal.SIGKILL)  # the kernel drops a dead process's flock
    finally:
        finish(first)
    assert (out / ".lock").exists()
    step = ckpt_io.load(out / "last.npz").step
    result = cli("train", corpus, "--resume", out, "--max-steps", step + 1, "-q")
    assert result.exit_code == 0, result.output
