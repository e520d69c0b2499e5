"""The standard streams, as a shell hands them over: stdout closed (`>&-`), on a full device
(`>/dev/full`), or read by a consumer that stops early (`| head -c 10`); stdin closed (`<&-`);
stderr that goes away while training runs; a locale whose encoding cannot write the model's
characters (PYTHONIOENCODING=ascii).

The rules: stdout carries the product, so a product that could not be written is an error
(exit 1, one `Error:` line on stderr if stderr still works), except a broken pipe, which by Unix
convention is a quiet exit 0. stderr carries notices and progress: a line that cannot be written
there is dropped, and never stops training or costs a checkpoint. Every case runs a real
`python -m charrnn` under bash, with the redirection the user would type.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TEXT, cli, train_steps, write_corpus

from charrnn import checkpoint as ckpt_io
from charrnn.cli.progress import RichReporter
from charrnn.report import PlainReporter

SMALL = ["--hidden-size", 8, "--seq-length", 8, "--batch-size", 2, "--rng-seed", 1]
UNICODE_TEXT = "héllo wörld, ünïcode ☃ 日本語\n" * 80
CLOSED = (
    "Error: cannot write to standard output: it is closed; redirect it to /dev/null to discard it\n"
)
FULL = "Error: cannot write to standard output: No space left on device\n"


def sh(line: str, cwd: Path, encoding: str | None = None, timeout: float = 60):
    """Run a bash command line in which `charrnn` is `python -m charrnn` of this Python; its
    exit status is the script's (end a pipeline with `; exit ${PIPESTATUS[0]}`). stdout and
    stderr are bytes, so that what was written is checked, not what a decoder makes of it."""
    prelude = f'charrnn() {{ {shlex.quote(sys.executable)} -m charrnn "$@"; }}; '
    env = {k: v for k, v in os.environ.items() if k != "PYTHONIOENCODING"}
    if encoding:
        env["PYTHONIOENCODING"] = encoding
    return subprocess.run(
        ["bash", "-c", prelude + line], cwd=cwd, env=env, capture_output=True, timeout=timeout
    )


def q(*args) -> str:
    return shlex.join(str(a) for a in args)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with corpus.txt, a model trained on it (run/), and unicode.txt with its model
    (uni/), whose vocabulary is mostly outside ASCII."""
    folder = tmp_path_factory.mktemp("streams")
    corpus = write_corpus(folder, TEXT[:3000])
    (folder / "unicode.txt").write_text(UNICODE_TEXT, encoding="utf-8")
    for text, run in ((corpus, "run"), (folder / "unicode.txt", "uni")):
        result = cli("train", text, *SMALL, "--max-steps", 20, "--eval-every", 10,
                     "--out", folder / run, "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
    return folder


# ---- stdout closed, full, or read by a consumer that stops ----

PRODUCTS = {
    "sample": "sample --checkpoint run --length 20",
    "sample --json": "sample --checkpoint run --length 20 --json",
    "sample --beam": "sample --checkpoint run --length 20 --beam 3",
    "eval": "eval corpus.txt --checkpoint run",
    "eval --json": "eval corpus.txt --checkpoint run --json",
    "eval --per-char -": "eval corpus.txt --checkpoint run --per-char -",
    "info": "info run",
    "info --json": "info run --json",
    "plot": "plot run",
    "gradflow": "gradflow run corpus.txt --max-distance 20 --positions 4 --burn-in 5",
    "gradflow --json": "gradflow run corpus.txt --max-distance 20 --positions 4 --json",
    "prepare --json": "prepare corpus.txt --json",
    "--version": "--version",
}


@pytest.mark.parametrize("command", PRODUCTS)
def test_stdout_closed_is_an_error(command, work):
    result = sh(f"charrnn {PRODUCTS[command]} >&-", work)
    assert (result.returncode, result.stderr.decode()) == (1, CLOSED)


@pytest.mark.parametrize("command", PRODUCTS)
def test_stdout_on_a_full_device_is_an_error(command, work):
    result = sh(f"charrnn {PRODUCTS[command]} >/dev/full", work)
    assert (result.returncode, result.stderr.decode()) == (1, FULL)


def test_train_needs_stdout_only_for_json(work, tmp_path):
    args = q("train", work / "corpus.txt", *SMALL, "--max-steps", 5)
    result = sh(f"charrnn {args} --out quiet -q >&-", tmp_path)
    assert (result.returncode, result.stderr) == (0, b"")
    assert ckpt_io.load(tmp_path / "quiet" / "last.npz").step == 5
    # refused before training: nowhere to print the summary that --json asks for
    result = sh(f"charrnn {args} --out json --json >&-", tmp_path)
    assert (result.returncode, result.stderr.decode()) == (1, CLOSED)
    assert not (tmp_path / "json").exists()
    # a full device is found out only when the summary is written: the run is saved
    result = sh(f"charrnn {args} --out full --json -q >/dev/full", tmp_path)
    assert (result.returncode, result.stderr.decode()) == (1, FULL)
    assert ckpt_io.load(tmp_path / "full" / "last.npz").step == 5


STOPS_READING = {
    "sample": "sample --checkpoint run --length 300000",
    "sample, several": "sample --checkpoint run --length 100000 --num-samples 4",
    "sample --json": "sample --checkpoint run --length 70000 --json",  # more than a pipe holds
    "eval --per-char -": "eval corpus.txt --checkpoint run --per-char -",
}


@pytest.mark.parametrize("command", STOPS_READING)
def test_a_consumer_that_stops_reading_is_a_quiet_exit_0(command, work, tmp_path):
    result = sh(
        f"charrnn {STOPS_READING[command]} | head -c 10 > {q(tmp_path / 'head')}; "
        "exit ${PIPESTATUS[0]}",
        work,
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert len((tmp_path / "head").read_bytes()) == 10


# ---- stdin closed ----


@pytest.mark.parametrize(
    "command",
    [
        "train - --out r -q",
        "eval - --checkpoint run",
        "sample --checkpoint run --seed-file -",
        "gradflow run -",
    ],
)
def test_reading_a_closed_stdin_is_an_error(command, work):
    result = sh(f"charrnn {command} <&-", work)
    assert (result.returncode, result.stderr.decode()) == (
        1,
        "Error: standard input is closed; pipe the text in or give a file\n",
    )
    assert not (work / "r").exists()


def test_commands_that_do_not_read_stdin_do_not_need_it(work, tmp_path):
    result = sh(f"charrnn sample --checkpoint {q(work / 'run')} --length 5 <&-", tmp_path)
    assert result.returncode == 0 and len(result.stdout.decode()) == 6
    args = q("train", work / "corpus.txt", *SMALL, "--max-steps", 5, "--out", "r", "-q")
    assert sh(f"charrnn {args} <&-", tmp_path).returncode == 0
    assert ckpt_io.load(tmp_path / "r" / "last.npz").step == 5


# ---- stderr that goes away ----


@pytest.mark.parametrize(
    "redirect",
    [
        "2>&1 | head -1 > first; exit ${PIPESTATUS[0]}",  # the reader goes away at once
        "2>/dev/full",
        "2>&-",
    ],
)
def test_training_outlives_its_stderr(redirect, work, tmp_path):
    """Progress lines that cannot be written are dropped: training runs to its end and saves.
    (Validation every step prints a line every step.)"""
    args = q("train", work / "corpus.txt", *SMALL, "--max-steps", 300, "--eval-every", 1,
             "--sample-every", 50, "--out", "run")  # fmt: skip
    result = sh(f"charrnn {args} {redirect}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert ckpt_io.load(tmp_path / "run" / "last.npz").step == 300
    assert train_steps(tmp_path / "run") == list(range(1, 301))
    if "head" in redirect:
        assert (tmp_path / "first").read_text().startswith("training into run: ")


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_an_error_without_stderr_still_exits_1(redirect, tmp_path):
    result = sh(f"charrnn sample --checkpoint missing.npz {redirect}", tmp_path)
    assert (result.returncode, result.stdout) == (1, b"")


class BrokenStream:
    """A stream whose writes fail, like a terminal that was closed (EIO), after it has taken
    `good` of them."""

    def __init__(self, good: int = 0):
        self.good, self.writes, self.taken = good, 0, []

    def write(self, text):
        self.writes += 1
        if self.writes > self.good:
            raise OSError(errno.EIO, "Input/output error")
        self.taken.append(text)
        return len(text)

    def flush(self):
        if self.writes > self.good:
            raise OSError(errno.EIO, "Input/output error")

    def isatty(self):
        return True


INFO = {"run_dir": "r", "start_step": 0, "resumed": False, "max_steps": 10, "vocab_size": 3,
        "train_chars": 100, "val_chars": 10, "max_time": None, "notice": "a notice",
        "stops": "stops at step 10 (max_steps)"}  # fmt: skip
STEP = {"step": 1, "epoch": 0.1, "train_loss": 1.0, "val_loss": 1.0, "val_bpc": 1.4,
        "chars_per_sec": 1000.0, "elapsed": 0.1}  # fmt: skip


@pytest.mark.parametrize("good", [0, 1])
@pytest.mark.parametrize("make", [lambda s: PlainReporter(s), lambda s: RichReporter(file=s)])
def test_reporters_drop_what_they_cannot_write(make, good):
    """A write that fails is not raised to the training loop, and nothing more is tried after
    it; what was written before it stays written."""
    stream = BrokenStream(good)
    reporter = make(stream)
    reporter.start(INFO)
    for _ in range(3):
        reporter.step(STEP)
    reporter.sample(1, "text")
    reporter.end()
    assert stream.writes == good + 1  # the first failure, and no write after it
    assert len(stream.taken) == good
    if good:
        assert "a notice" in stream.taken[0]


# ---- an encoding that cannot write the model's characters ----


def both(line: str, cwd: Path, encoding: str = "ascii"):
    """The same command line under PYTHONIOENCODING=utf-8 and =encoding: (utf8, other)."""
    utf8, other = sh(line, cwd, "utf-8"), sh(line, cwd, encoding)
    assert utf8.returncode == 0, utf8.stderr.decode()
    assert other.returncode == 0, other.stderr.decode()
    assert b"Traceback" not in other.stderr
    return utf8, other


def strict_json(raw: bytes):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(raw.decode("ascii"), parse_constant=refuse)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_text_is_escaped_where_the_encoding_cannot_write_it(encoding, work):
    utf8, other = both(
        "charrnn sample --checkpoint uni --seed é --length 200 --rng-seed 1", work, encoding
    )
    text = utf8.stdout.decode("utf-8")
    assert any(ord(c) > 255 for c in text)
    assert other.stdout == text.encode(encoding, "backslashreplace")


@pytest.mark.parametrize(
    "command",
    [
        "sample --checkpoint uni --length 200 --rng-seed 1 --num-samples 2 --json",
        "info uni --json",
        "eval unicode.txt --checkpoint uni --json",
    ],
)
def test_json_stays_json_in_any_encoding(command, work):
    utf8, ascii_ = both(f"charrnn {command}", work)
    assert strict_json(ascii_.stdout) == json.loads(utf8.stdout.decode("utf-8"))


def test_per_char_lines_stay_json_in_any_encoding(work):
    utf8, ascii_ = both("charrnn eval unicode.txt --checkpoint uni --per-char -", work)
    lines = ascii_.stdout.splitlines()
    assert [strict_json(line) for line in lines] == [
        json.loads(line) for line in utf8.stdout.decode("utf-8").splitlines()
    ]
    assert any("☃" == json.loads(line)["char"] for line in lines)


@pytest.mark.parametrize(
    "command", ["info uni", "eval unicode.txt --checkpoint uni", "plot uni", "plot uni --x chars"]
)
def test_human_output_in_an_ascii_locale(command, work):
    _, ascii_ = both(f"charrnn {command}", work)
    ascii_.stdout.decode("ascii")
    assert ascii_.stderr == b""


def test_training_previews_in_an_ascii_locale(work, tmp_path):
    args = q("train", work / "unicode.txt", *SMALL, "--max-steps", 20, "--sample-every", 10,
             "--out", "r")  # fmt: skip
    result = sh(f"charrnn {args}", tmp_path, "ascii")
    assert result.returncode == 0 and b"Traceback" not in result.stderr
    assert b"--- sample at step 20 ---" in result.stderr
    result.stderr.decode("ascii")
