"""Files the commands are asked to write (charrnn/outputs.py, issue 22 class 1): `eval
--per-char`, `show -o`, `plot -o` and `gradflow -o` never replace what they were not asked to
create (the model they read, their input text, a run's own files, a checkpoint, a folder), write
to a FIFO or a character device as a stream, and replace a file atomically, so that a write that
fails (here: a file-size limit, RLIMIT_FSIZE, in a real process) leaves the old file whole."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import TEXT, cli, temp_files, user_error

from charrnn.errors import DataError
from charrnn.outputs import check_output, image_format, write_output

OLD = b"old contents, kept whole\n"


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    """A copy of a small trained run folder of this test's own (config, metrics, checkpoints)."""
    return Path(shutil.copytree(good_run[1], tmp_path / "run"))


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT[:1500], encoding="utf-8")
    return path


def commands(run: Path, text: Path, out) -> dict[str, list]:
    """Each command that writes a file, writing it to `out`."""
    return {
        "eval": ["eval", text, "--checkpoint", run, "--per-char", out, "-q"],
        "show": ["show", text, "--checkpoint", run, "--length", 300, "-o", out, "-q"],
        "plot": ["plot", run, "-o", out, "-q"],
        "gradflow": ["gradflow", run, text, "--max-distance", 5, "--positions", 4, "-o", out],
    }


NAMES = ["eval", "show", "plot", "gradflow"]


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("command", NAMES)
def test_nothing_a_command_reads_or_a_run_holds_is_replaced(run, text, tmp_path, command):
    shutil.copy(run / "best.npz", tmp_path / "model.npz")  # a checkpoint under another name
    targets = {
        "the model it reads": run / "best.npz",
        "the other checkpoint": run / "last.npz",
        "metrics": run / "metrics.jsonl",
        "config": run / "config.yaml",
        "a checkpoint elsewhere": tmp_path / "model.npz",
        "a new file named like a run's": tmp_path / "best.npz",
        "a folder": tmp_path,
    }
    if command != "plot":
        targets["its input text"] = text
    before, kept_text, kept_model = _bytes(run), text.read_bytes(), (tmp_path / "model.npz")
    kept_model = kept_model.read_bytes()
    for what, target in targets.items():
        message = user_error(cli(*commands(run, text, target)[command]))
        assert message.startswith("refusing to write ") or "is a folder" in message, (what, message)
        assert "name another file" in message or "name a file" in message, message
    assert _bytes(run) == before and text.read_bytes() == kept_text
    assert (tmp_path / "model.npz").read_bytes() == kept_model
    assert not (tmp_path / "best.npz").exists()


def test_the_refusals_say_why(run, text):
    said = user_error(cli(*commands(run, text, run / "best.npz")["eval"]))
    assert said == (
        f"refusing to write the per-character scores to '{run / 'best.npz'}': best.npz is the name "
        "of a run's own file (config.yaml, metrics.jsonl, last.npz, best.npz); name another file"
    )
    said = user_error(cli(*commands(run, text, text)["show"]))
    assert said == (
        f"refusing to write the page to '{text}': it is '{text}', which this command reads; "
        "name another file"
    )
    (run.parent / "copy.npz").write_bytes((run / "last.npz").read_bytes())
    said = user_error(cli(*commands(run, text, run.parent / "copy.npz")["gradflow"]))
    assert said.endswith("it is a charrnn checkpoint; name another file")


def test_a_link_to_an_input_is_refused_and_a_link_elsewhere_is_followed(run, text, tmp_path):
    (tmp_path / "to-text").symlink_to(text)
    assert "which this command reads" in user_error(
        cli(*commands(run, text, tmp_path / "to-text")["eval"])
    )
    (tmp_path / "scores.jsonl").write_bytes(OLD)
    (tmp_path / "link").symlink_to("scores.jsonl")
    assert cli(*commands(run, text, tmp_path / "link")["eval"]).exit_code == 0
    assert (tmp_path / "link").is_symlink()  # the link kept, its target replaced
    assert (tmp_path / "scores.jsonl").read_text().count("\n") == 1500


@pytest.mark.parametrize("command", NAMES)
def test_a_character_device_is_written_to_not_replaced(run, text, command):
    result = cli(*commands(run, text, "/dev/null")[command])
    assert result.exit_code == 0, result.output
    assert Path("/dev/null").is_char_device()


@pytest.mark.parametrize("command", ["eval", "show"])
def test_a_fifo_is_written_to_as_a_stream(run, text, tmp_path, command):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    result = cli(*commands(run, text, fifo)[command])
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert fifo.is_fifo() and got and len(got[0]) > 1000


def test_a_fifo_that_nobody_reads_is_refused_not_waited_on(run, text, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert user_error(cli(*commands(run, text, fifo)["show"])) == (
        f"'{fifo}' is a FIFO (named pipe) that nothing reads; start its reader first"
    )


def _limited(args, cwd: Path, size: int) -> subprocess.CompletedProcess:
    """`python -m charrnn ARGS` with files limited to `size` bytes (SIGXFSZ ignored, so a write
    past it fails with EFBIG instead of killing the process)."""

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    cmd = [sys.executable, "-m", "charrnn", *map(str, args)]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        cmd, cwd=cwd, preexec_fn=limit, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize("command", NAMES)
def test_a_write_that_fails_leaves_the_old_file_whole(run, text, tmp_path, command):
    out = tmp_path / ("out.png" if command in ("plot", "gradflow") else "out.txt")
    out.write_bytes(OLD)
    done = _limited(commands(run, text, out)[command], tmp_path, size=4096)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Error: cannot write the ") and "File too large" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert f"'{out}' is as it was" in done.stderr
    assert out.read_bytes() == OLD
    assert temp_files(tmp_path) == []


def test_plot_writes_the_name_it_was_given_and_says_it(run, tmp_path):
    (tmp_path / "curves.png").write_bytes(OLD)
    result = cli("plot", run, "-o", tmp_path / "curves")
    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote {tmp_path / 'curves'} (PNG: the name has no suffix)\n"
    assert (tmp_path / "curves").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "curves.png").read_bytes() == OLD  # a file it was not asked for
    result = cli("plot", run, "-o", tmp_path / "c.svg")
    assert result.stderr == f"wrote {tmp_path / 'c.svg'}\n"
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]


def test_an_output_is_refused_before_the_work(run, text, tmp_path):
    """A refused output costs nothing: the text is not read (a missing one is not noticed)."""
    said = user_error(cli("eval", tmp_path / "missing.txt", "--checkpoint", run,
                          "--per-char", run / "metrics.jsonl"))  # fmt: skip
    assert said.startswith("refusing to write")
    said = user_error(cli("gradflow", run, text, "-o", tmp_path / "x.txt"))
    assert said == (
        f"cannot write '{tmp_path / 'x.txt'}': .txt is not an image format; name a .png, .svg "
        "or .pdf file"
    )


# ---- the library's rule itself ----


def _made(path: Path) -> Path:
    path.write_text("a text")
    return path


def test_check_output_in_python(run, tmp_path):
    with pytest.raises(DataError, match="does not exist; create it first"):
        check_output(tmp_path / "no" / "such" / "file", "x")
    with pytest.raises(DataError, match="which this command reads"):
        check_output(run / ".." / "run" / "t.txt", "x", reads=[None, "-", _made(run / "t.txt")])
    assert check_output("/dev/null", "x").stream
    out = check_output(tmp_path / "new.txt", "x", reads=[tmp_path / "other.txt"])
    assert not out.stream and out.target == (tmp_path / "new.txt").resolve()
    write_output(out, lambda f: f.write(b"abc"))
    assert (tmp_path / "new.txt").read_bytes() == b"abc"
    with pytest.raises(ZeroDivisionError):  # an error of the writer: the file is kept
        write_output(tmp_path / "new.txt", lambda f: (f.write(b"half"), 1 / 0))
    assert (tmp_path / "new.txt").read_bytes() == b"abc" and temp_files(tmp_path) == []
    assert image_format("a/curves") == "png" and image_format("x.SVG") == "svg"
    with pytest.raises(DataError, match="not an image format"):
        image_format("x.jsonl")
