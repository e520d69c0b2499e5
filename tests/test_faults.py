"""Fault injection and bad inputs (issue 5: nothing lost, nothing crashes).

Faults: SIGKILL at random moments of a real `python -m charrnn train` writing a checkpoint every
step; a save that fails (disk full, unwritable folder); SIGINT and SIGTERM; divergence to NaN/inf;
exact resume; two trainings into one folder. Bad inputs: corpora, checkpoints and configs that
the CLI must refuse with one `Error:` line, exit 1 or 2 and no traceback.

The property-based versions of the bad inputs are in test_fuzz.py.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charrnn import atomic
from charrnn import checkpoint as ckpt_io
from charrnn.cli import app
from charrnn.config import Config
from charrnn.data import build_corpus
from charrnn.errors import CheckpointError
from charrnn.runs import RunLock, latest_checkpoint
from charrnn.train import train

REPO = Path(__file__).resolve().parent.parent
with open(REPO / "data" / "shakespeare.txt", encoding="utf-8") as _f:
    TEXT = _f.read(8000)  # plain ASCII

# a model small enough that a step takes about a millisecond
TINY = ["--hidden-size", "16", "--seq-length", "8", "--batch-size", "2", "--rng-seed", "1"]
IS_ROOT = os.geteuid() == 0


# ---- helpers ----


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(result, code: int = 1, says: str | None = None) -> str:
    """Exit `code`, stderr exactly one `Error: ...` line (mentioning `says`), no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed: {result.exception!r}\n{result.output}"
    )
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    if says is not None:
        assert says in lines[0], lines[0]
    return lines[0]


def write_corpus(folder: Path, text: str = TEXT) -> Path:
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


def start_training(corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A real `python -m charrnn train` in its own process, writing last.npz every step (and a
    checkpoint is big enough, at hidden size 48, that kills often land in the middle of one)."""
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
    # stderr to a file, not a pipe that nobody reads while it runs
    with open(out.parent / f"{out.name}.stderr", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=log)
    proc.log = Path(log.name)
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


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


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
    steps = [
        r["step"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "train_loss" in r
    ]
    assert steps == list(range(1, target + 1))


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
    line = assert_clean_error(result, 1, says)
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
        wait_for(lambda: mtime(out / "last.npz") > 0, proc)
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


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_resumes(sig, code, tmp_path):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    proc = start_training(corpus, out)
    try:
        wait_for(lambda: mtime(out / "last.npz") > 0, proc)
        proc.send_signal(sig)
    finally:
        stderr = finish(proc)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    m = re.search(
        r"Interrupted at step (\d+); saved .*last\.npz; continue with: "
        r"charrnn train .* --resume ",
        stderr,
    )
    assert m, stderr
    step = int(m.group(1))
    assert ckpt_io.load(out / "last.npz").step == step  # the final checkpoint
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
        wait_for(lambda: mtime(out / "last.npz") > 0, proc)
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


# ---- divergence ----


@pytest.mark.parametrize(
    "optimizer, lr, what",
    [
        ("sgd", "1e38", "loss became inf"),  # the loss overflows first
        ("adam", "1e38", "loss became nan"),
        ("sgd", "3e38", "loss became nan"),
        ("sgd", "1e39", "weights became NaN or infinite"),  # the first update overflows the weights
    ],
)
def test_divergence_names_step_and_keeps_last_good(optimizer, lr, what, tmp_path):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    result = cli(
        "train",
        corpus,
        *TINY,
        "--optimizer",
        optimizer,
        "--learning-rate",
        lr,
        "--grad-clip",
        0,
        "--checkpoint-every",
        1,
        "--eval-every",
        0,
        "--max-steps",
        50,
        "--out",
        out,
        "-q",
    )
    line = assert_clean_error(result, 1, f"{what} at step ")
    step = int(re.search(r"at step (\d+)", line).group(1))
    assert f"lower --learning-rate (now {float(lr):g}) or set --grad-clip 5" in line
    if step == 1:
        assert line.endswith("no checkpoint was written") and not (out / "last.npz").exists()
        return
    good = ckpt_io.load(out / "last.npz")  # load refuses non-finite weights: this one is good
    assert line.endswith(f"last.npz from step {good.step} is kept") and good.step == step - 1
    ckpt_io.load(out / "best.npz")


# ---- exact resume ----


def _metrics(path: Path) -> list[dict]:
    drop = ("elapsed", "chars_per_sec")
    return [
        {k: v for k, v in json.loads(ln).items() if k not in drop}
        for ln in path.read_text().splitlines()
    ]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_is_bitwise_exact(optimizer, tmp_path):
    """6 steps then resumed to 15 == 15 straight: every array (weights, optimizer state, h_carry,
    step), train_state (rng, best val loss, patience count), config, best.npz and metrics.
    A step-decayed learning rate, validation, and an epoch boundary (11 steps an epoch) fall in
    the resumed part."""
    corpus = write_corpus(tmp_path, TEXT[:200])
    common = [
        *TINY,
        "--optimizer",
        optimizer,
        "--eval-every",
        3,
        "--checkpoint-every",
        3,
        "--set",
        "lr_decay=step",
        "--set",
        "lr_decay_steps=4",
        "--set",
        "lr_decay_rate=0.5",
        "--set",
        "val_fraction=0.1",
        "-q",
    ]
    straight, split_run = tmp_path / "straight", tmp_path / "split"
    assert cli("train", corpus, *common, "--max-steps", 15, "--out", straight).exit_code == 0
    assert cli("train", corpus, *common, "--max-steps", 6, "--out", split_run).exit_code == 0
    result = cli("train", corpus, "--resume", split_run, "--max-steps", 15, "-q")
    assert result.exit_code == 0, result.output

    for name in ("last.npz", "best.npz"):
        a, b = arrays_of(straight / name), arrays_of(split_run / name)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), (name, k)
    a, b = ckpt_io.load(straight / "last.npz"), ckpt_io.load(split_run / "last.npz")
    assert a.step == 15 and a.train_state == b.train_state
    assert a.train_state["best_val_loss"] is not None
    assert _metrics(straight / "metrics.jsonl") == _metrics(split_run / "metrics.jsonl")


# ---- two trainings into one folder ----


def test_second_training_into_same_folder_is_refused(tmp_path):
    corpus, out = write_corpus(tmp_path), tmp_path / "run"
    first = start_training(corpus, out, "--quiet")
    try:
        wait_for(lambda: mtime(out / "last.npz") > 0, first)
        config_before = (out / "config.yaml").read_text()
        metrics_before = (out / "metrics.jsonl").read_bytes()  # the first run only appends
        for extra in (["--hidden-size", "8", "--rng-seed", "2"], ["--resume", str(out)]):
            result = cli("train", corpus, "--out", out, *extra, "-q")
            assert_clean_error(
                result,
                1,
                f"run folder '{out}' is in use by another training "
                "process; wait for it to finish or pass another --out",
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


def test_run_lock_in_process(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(Exception, match="in use by another training process"):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released on exit
        pass


# ---- bad corpora ----


def _unreadable(tmp_path: Path) -> Path:
    if IS_ROOT:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    path = write_corpus(tmp_path)
    path.chmod(0)
    return path


CORPORA = {
    "missing": (lambda d: d / "nope.txt", "not found"),
    "directory": (lambda d: d, "is a directory"),
    "empty": (lambda d: write_corpus(d, ""), "is empty"),
    "too short": (lambda d: write_corpus(d, "abcdefg"), "too short for one chunk"),
    "binary": (
        lambda d: (d / "x.bin").write_bytes(bytes(range(256)) * 8) and d / "x.bin",
        "is not valid utf-8 at byte offset 128",
    ),
    "unreadable": (_unreadable, "permission denied"),
}


@pytest.mark.parametrize("case", CORPORA)
def test_bad_corpus(case, tmp_path):
    make, says = CORPORA[case]
    result = cli("train", make(tmp_path), *TINY, "--max-steps", 2, "--out", tmp_path / "r", "-q")
    assert_clean_error(result, 1, says)


# ---- bad checkpoints ----


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, run folder) of a 4-step run: the valid checkpoint the bad ones are made from."""
    folder = tmp_path_factory.mktemp("good")
    corpus = write_corpus(folder, TEXT[:2000])
    cfg = Config.from_dict(
        {
            "hidden_size": 8,
            "seq_length": 8,
            "batch_size": 2,
            "max_steps": 4,
            "eval_every": 2,
            "checkpoint_every": 2,
            "rng_seed": 3,
        }
    )
    train(cfg, build_corpus(corpus.read_text()), folder / "run")
    return corpus, folder / "run"


def _edit(**changes):
    """A change to the checkpoint's arrays: name=None drops one, name=f(arrays) or a value sets
    one. (The other cases are functions of the file's bytes.)"""

    def make(arrays):
        for k, v in changes.items():
            if v is None:
                del arrays[k]
            else:
                arrays[k] = v(arrays) if callable(v) else v
        return arrays

    make.on_arrays = True
    return make


def _truncated(raw: bytes) -> bytes:
    return raw[: len(raw) * 2 // 3]


def _foreign_zip(_raw: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a model")
    return buf.getvalue()


def _npy(_raw: bytes) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


def _f32(shape, fill=0.0):
    return np.full(shape, fill, dtype=np.float32)


def _past_unicode(a: np.ndarray) -> np.ndarray:
    """A copy of unicode array a whose first code unit is past U+10FFFF (no str can hold it)."""
    a = np.ascontiguousarray(a).copy()
    a.reshape(-1).view(np.uint32)[0] = 0x110000
    return a


# name: (a function of the valid file's bytes or of its arrays, what the Error line says)
BAD_CHECKPOINTS = {
    "truncated": (_truncated, "is truncated or corrupt"),
    "empty file": (lambda raw: b"", "it is empty"),
    "not a zip": (lambda raw: b"Wxh Whh bh Why by\n" * 20, "not an .npz file"),
    "a .npy": (_npy, "single .npy array"),
    "a zip not ours": (_foreign_zip, "its 'hello.txt' is not a NumPy array"),
    "a zip of other arrays": (
        _edit(**{k: None for k in ("Wxh", "Whh", "bh", "Why", "by")}),
        "it has no Wxh, Whh, bh, Why, by",
    ),
    "missing arrays": (_edit(Whh=None, vocab=None), "it has no Whh, vocab"),
    "shapes disagree": (_edit(Why=lambda a: _f32((a["Why"].shape[0], 5))), "'Why' has shape"),
    "Whh not square": (_edit(Whh=lambda a: _f32((8, 9))), "'Whh' has shape (8, 9)"),
    "vocab disagrees": (_edit(vocab=lambda a: a["vocab"][:-3]), "'Wxh' has shape"),
    "vocab unsorted": (_edit(vocab=lambda a: a["vocab"][::-1].copy()), "not sorted distinct"),
    "vocab past Unicode": (
        _edit(vocab=lambda a: _past_unicode(a["vocab"])),
        "'vocab' must be a 1-D array of single characters",
    ),
    "config past Unicode": (
        _edit(config=lambda a: _past_unicode(a["config"])),
        "array 'config' has the wrong type",
    ),
    "NaN weights": (_edit(Whh=lambda a: a["Whh"] * np.float32("nan")), "NaN or infinite"),
    "inf optimizer state": (
        _edit(**{"opt.v.by": lambda a: a["opt.v.by"] + np.inf}),
        "optimizer state 'opt.v.by' contains NaN",
    ),
    "optimizer state misshapen": (
        _edit(**{"opt.m.Whh": _f32((2, 2))}),
        "optimizer state 'opt.m.Whh' does not match",
    ),
    "h_carry misshapen": (_edit(h_carry=_f32((2, 3))), "'h_carry' is float32 (2, 3)"),
    "newer format_version": (
        _edit(format_version=np.array(99)),
        "format_version 99, newer than this charrnn reads (1); upgrade",
    ),
    "negative step": (_edit(step=np.array(-1)), "invalid step -1"),
    "config not JSON": (_edit(config=np.array("{hidden_size: 8")), "not valid JSON"),
    "config a list": (_edit(config=np.array("[1, 2]")), "must be JSON objects"),
    "weights float16": (_edit(Wxh=lambda a: a["Wxh"].astype(np.float16)), "float32 or all"),
}

# refused by `train --resume` only: the file loads, but its training state is unusable
BAD_RESUME_STATE = {
    "rng state garbage": (
        _edit(
            train_state=np.array(json.dumps({"rng_state": {"bit_generator": "PCG64", "state": 5}}))
        ),
        "random-generator state",
    ),
    "train_state wrong types": (
        _edit(
            train_state=lambda a: np.array(
                json.dumps({**json.loads(a["train_state"].item()), "bad_evals": "x"})
            )
        ),
        "wrong type",
    ),
    "optimizer state of another optimizer": (
        _edit(
            **{
                "opt.m.Wxh": None,
                "opt.m.Whh": None,
                "opt.m.bh": None,
                "opt.m.Why": None,
                "opt.m.by": None,
            }
        ),
        "optimizer state is not adam's",
    ),
    "config invalid": (
        _edit(
            config=lambda a: np.array(
                json.dumps({**json.loads(a["config"].item()), "hidden_size": "many"})
            )
        ),
        "hidden_size",
    ),
    "config disagrees with weights": (
        _edit(
            config=lambda a: np.array(
                json.dumps({**json.loads(a["config"].item()), "hidden_size": 9})
            )
        ),
        "do not match hidden_size 9",
    ),
    "h_carry of another batch size": (_edit(h_carry=_f32((3, 8))), "'h_carry'"),
}


def bad_file(good: Path, dest: Path, how) -> Path:
    """Write the valid checkpoint `good` changed by `how` to dest."""
    if getattr(how, "on_arrays", False):
        np.savez(dest, **how(arrays_of(good)))
    else:
        dest.write_bytes(how(good.read_bytes()))
    return dest


def _checkpoint_commands(corpus: Path, ckpt: Path) -> list[list]:
    """The CLI commands that read a checkpoint: train --resume, and sample/eval once cli.py
    has them (added in parallel by the sample/eval issue)."""
    commands = [["train", corpus, "--resume", ckpt, "--max-steps", 99, "-q"]]
    names = {c.name or c.callback.__name__ for c in app.registered_commands}
    if "sample" in names:
        commands.append(["sample", "--checkpoint", ckpt, "--length", 5])
    if "eval" in names:
        commands.append(["eval", "--checkpoint", ckpt, corpus])
    return commands


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint(case, good_run, tmp_path):
    corpus, run = good_run
    how, says = BAD_CHECKPOINTS[case]
    path = bad_file(run / "last.npz", tmp_path / "bad.npz", how)
    with pytest.raises(CheckpointError, match=re.escape(says)):
        ckpt_io.load(path)
    for command in _checkpoint_commands(corpus, path):
        assert_clean_error(cli(*command), 1, says)


@pytest.mark.parametrize("case", BAD_RESUME_STATE)
def test_bad_resume_state(case, good_run, tmp_path):
    corpus, run = good_run
    how, says = BAD_RESUME_STATE[case]
    path = bad_file(run / "last.npz", tmp_path / "bad.npz", how)
    result = cli("train", corpus, "--resume", path, "--max-steps", 99, "-q")
    assert_clean_error(result, 1, says)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before training


def test_missing_checkpoint(good_run, tmp_path):
    corpus, _ = good_run
    for command in _checkpoint_commands(corpus, tmp_path / "nope.npz"):
        assert_clean_error(cli(*command), 1, "not found")
    # a run folder without last.npz
    assert_clean_error(
        cli("train", corpus, "--resume", tmp_path, "-q"), 1, f"'{tmp_path / 'last.npz'}' not found"
    )
    # a name the file system refuses (longer than 255 bytes)
    too_long = tmp_path / ("x" * 300 + ".npz")
    with pytest.raises(CheckpointError, match="File name too long"):
        ckpt_io.load(too_long)
    for command in _checkpoint_commands(corpus, too_long):
        assert_clean_error(cli(*command), 1, "File name too long")


class _Evil:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["vocab", "extra array"])
def test_pickled_object_array_is_refused_never_unpickled(where, good_run, tmp_path):
    corpus, run = good_run
    marker = tmp_path / "unpickled.marker"
    arrays = arrays_of(run / "last.npz")
    evil = np.array([_Evil(marker)] * 3, dtype=object)
    arrays["vocab" if where == "vocab" else "notes"] = evil
    path = tmp_path / "evil.npz"
    np.savez(path, **arrays)  # np.savez pickles object arrays
    # the control: numpy with allow_pickle=True would run the payload
    name = "vocab" if where == "vocab" else "notes"
    with np.load(path, allow_pickle=True) as z:
        z[name]
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="pickled Python objects, which are refused"):
        ckpt_io.load(path)
    for command in _checkpoint_commands(corpus, path):
        assert_clean_error(cli(*command), 1, "refused because loading them can run code")
    assert not marker.exists()


# ---- bad configs ----


CONFIGS = {
    "invalid YAML": ("hidden_size: [16\n", "is not valid YAML at line 2"),
    "a list at the top": ("- hidden_size\n- 16\n", "top level must be a mapping"),
    "a scalar at the top": ("16\n", "top level must be a mapping of keys to values, got a number"),
    "unknown key": (
        "hiden_size: 16\n",
        "unknown config key 'hiden_size' (did you mean 'hidden_size'?)",
    ),
    "wrong type": (
        "hidden_size: lots\n",
        "config key 'hidden_size': got 'lots', expected an integer >= 1",
    ),
    "zero size": ("batch_size: 0\n", "config key 'batch_size': got 0"),
    "negative size": ("seq_length: -4\n", "config key 'seq_length': got -4"),
    "zero learning rate": (
        "learning_rate: 0\n",
        "config key 'learning_rate': got 0, expected a number > 0",
    ),
    "negative learning rate": ("learning_rate: -0.1\n", "config key 'learning_rate': got -0.1"),
    "bool for a size": ("hidden_size: yes\n", "config key 'hidden_size': got true"),
    "binary file": (b"\xff\xfe\x00h\x00", "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_bad_config_file(case, tmp_path):
    text, says = CONFIGS[case]
    corpus, path = write_corpus(tmp_path), tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = cli("train", corpus, "--config", path, "--max-steps", 2, "--out", tmp_path / "r", "-q")
    assert_clean_error(result, 1, says)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, code, says",
    [
        (["--set", "hidden_size=abc"], 1, "config key 'hidden_size': got 'abc'"),
        (["--set", "learning_rate=0"], 1, "expected a number > 0 (in --set)"),
        (["--set", "nonsense"], 1, "expected the form key=value"),
        (["--set", "seq_lenght=4"], 1, "did you mean 'seq_length'?"),
        (
            ["--seq-length", "5000", "--batch-size", "2"],
            1,
            "too short for one chunk",
        ),  # 8,000 chars
        (["--hidden-size", "0"], 1, "config key 'hidden_size': got 0"),
        (["--config", "missing.yaml"], 1, "not found"),
        (["--hidden-size", "abc"], 2, "Invalid value for '--hidden-size'"),
    ],
)
def test_bad_config_values(args, code, says, tmp_path):
    corpus = write_corpus(tmp_path)
    result = cli("train", corpus, *args, "--max-steps", 2, "--out", tmp_path / "r", "-q")
    if code == 1:
        assert_clean_error(result, 1, says)
    else:  # a usage error: typer's own message (a box when rich is installed), exit 2
        assert result.exit_code == 2 and says in result.stderr and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    # nothing written: no run folder, or (for a corpus too short) one holding only its lock
    assert [p.name for p in (tmp_path / "r").glob("*")] in ([], [".lock"])


# ---- a run that cannot start ----


@pytest.mark.parametrize(
    "args, says",
    [
        (["--out", "afile"], "cannot create run folder 'afile': File exists; pass another --out"),
        (["--out", "afile/run"], "cannot create run folder 'afile/run': Not a directory"),
        (["--hidden-size", "1000000"], "not enough memory for hidden_size 1000000"),
    ],
)
def test_run_cannot_start(args, says, tmp_path):
    corpus = write_corpus(tmp_path)
    (tmp_path / "afile").write_text("")
    result = cli("train", corpus, *args, "--max-steps", 2, "-q")
    assert_clean_error(result, 1, says)
