"""A run folder's text files are the user's to edit (charrnn/runs.py `Metrics`, issue 22
classes 3 and 6): `plot`, `info` and `train --resume` read metrics.jsonl a bounded line at a
time, skip each line that is no valid record with one warning, refuse a config.yaml with
nonsense sizes in one line, and refuse a FIFO or device where a file should be instead of
waiting on it forever."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import cli, time_limit, user_error

from charrnn import runs
from charrnn.errors import DataError, TooLargeError

GOOD = {"step": 1, "train_loss": 4.0, "elapsed": 0.1}


@pytest.fixture
def run(good_run, tmp_path) -> Path:
    return Path(shutil.copytree(good_run[1], tmp_path / "run"))


def _with_line(run: Path, line: str) -> None:
    """metrics.jsonl with `line` between the run's own lines."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")


BAD_LINES = {
    "NaN": '{"step": 1, "train_loss": NaN}',
    "Infinity": '{"step": 1, "val_bpc": Infinity}',
    "-Infinity": '{"step": 1, "elapsed": -Infinity}',
    "1e308": '{"step": 1, "train_loss": 1e308}',
    "1e400": '{"step": 1, "train_loss": 1e400}',
    "401 digits": '{"step": 1' + "0" * 400 + ', "train_loss": 1.0}',
    "a 401-digit loss": '{"step": 1, "train_loss": 1' + "0" * 400 + "}",
    "negative step": '{"step": -5, "train_loss": 1.0}',
    "a step of true": '{"step": true, "val_bpc": true}',
    "a score of true": '{"step": 3, "val_bpc": true}',
    "a string step": '{"step": "7", "train_loss": 1.0}',
    "elapsed a string": '{"step": 1, "train_loss": 1.0, "elapsed": "soon"}',
    "a negative loss": '{"step": 1, "train_loss": -1.0}',
    "a list": "[1, 2, 3]",
    "deep nesting": "[" * 50_000 + "]" * 50_000,
    "cut short": '{"step": 1, "train_lo',
    "a 100 kB line": '{"step": 1, "note": "' + "x" * 100_000 + '"}',
}


@pytest.mark.parametrize("line", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_a_bad_line_is_skipped_and_counted(tmp_path, line):
    path = tmp_path / "metrics.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n{line}\n{json.dumps({**GOOD, 'step': 2})}\n")
    metrics = runs.Metrics(path)
    assert [rec["step"] for _, rec in metrics] == [1, 2]
    assert metrics.skipped == 1 and "(the first, line 2: " in metrics.problem()


def test_plot_and_info_skip_bad_lines_with_one_warning(run):
    for line in BAD_LINES.values():
        _with_line(run, line)
    for args in (
        ["plot", run],
        ["plot", run, "--x", "time"],
        ["info", run],
        ["info", run, "--json"],
    ):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
        assert result.stderr.startswith(
            f"Warning: skipped {len(BAD_LINES)} lines of '{run / 'metrics.jsonl'}' that hold no "
            "valid record (the first, line "
        )
        assert result.stderr.count("\n") == 1
    described = json.loads(cli("info", run, "--json").stdout)
    assert described["run_steps"] == 4 and described["last_val_step"] == 4  # the run's own
    assert isinstance(described["last_val_bpc"], float)


def test_a_null_elapsed_is_no_value_not_a_bad_line(run):
    _with_line(run, '{"step": 1, "train_loss": 3.5, "elapsed": null, "val_bpc": null}')
    result = cli("plot", run, "--x", "time")
    assert result.exit_code == 0 and result.stderr == ""


def test_the_records_that_are_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(
        b'{"step": 0}\n\n{"step": 9007199254740992, "val_bpc": 2}\r\n'
        b'{"step": 9007199254740993}\n{"step": 2, "train_loss": 1e100}\n'
    )
    metrics = runs.Metrics(path)
    assert [rec["step"] for _, rec in metrics] == [0, 2**53, 2]
    assert metrics.problem() == (
        f"skipped 2 lines of '{path}' that hold no valid record (the first, line 2: empty)"
    )


def test_a_long_line_is_skipped_without_being_held(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"step": 1, "train_loss": 2.0}\n')
        f.write(b"x" * (8 << 20) + b"\n")  # 8 MB: read past in pieces of 64 kB
        f.write(b'{"step": 2, "train_loss": 1.0}\n')
    import tracemalloc

    tracemalloc.start()
    steps = [rec["step"] for _, rec in runs.Metrics(path)]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert steps == [1, 2] and peak < 1 << 20


def test_a_metrics_file_past_the_limit_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    monkeypatch.setattr(runs, "MAX_METRICS_BYTES", 10)
    with pytest.raises(TooLargeError, match="input too large: .* more than the 10 bytes"):
        runs.Metrics(path)


@pytest.mark.parametrize("size, says", [(".inf", ".inf"), ("-5", "-5"), ("true", "true")])
def test_plot_chars_refuses_nonsense_sizes_in_config_yaml(run, size, says):
    config = run / "config.yaml"
    text = config.read_text()
    config.write_text(
        "\n".join(f"batch_size: {size}" if ln.startswith("batch_size:") else ln
                  for ln in text.splitlines()) + "\n"
    )  # fmt: skip
    assert user_error(cli("plot", run, "--x", "chars")) == (
        "--x chars needs batch_size and seq_length, whole numbers from 1 to 2**31, from "
        f"'{config}'; plot against --x steps instead"
    )


# ---- special files where a regular file is expected (class 6) ----


@pytest.mark.parametrize("name", ["metrics.jsonl", "config.yaml"])
def test_a_fifo_in_a_run_folder_is_refused_not_waited_on(run, good_run, name):
    (run / name).unlink()
    os.mkfifo(run / name)
    commands = [["plot", run, "--x", "chars"]]
    if name == "metrics.jsonl":
        commands += [["info", run], ["plot", run]]
        commands += [["train", good_run[0], "--resume", run, "--max-steps", 6, "-q"]]
    for args in commands:
        with time_limit(30):  # opening the FIFO would wait for a writer
            said = user_error(cli(*args))
        kind = "is a FIFO (named pipe), not a file"
        assert said == f"'{run / name}' {kind}; a run's {name} is a regular file"
    assert (run / name).is_fifo()


def test_dev_zero_as_metrics_is_refused(run, good_run):
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to("/dev/zero")
    for args in (["info", run], ["plot", run], ["train", good_run[0], "--resume", run, "-q"]):
        with time_limit(30):  # reading it would never end
            said = user_error(cli(*args))
        assert "is a character device, not a file" in said, args


def test_resume_keeps_the_good_lines_and_drops_the_rest(run, good_run):
    _with_line(run, '{"step": NaN}')
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "train_loss": 1.0}\n')  # past last.npz's step: dropped
    result = cli("train", good_run[0], "--resume", run, "--max-steps", 6, "-q")
    assert result.exit_code == 0, result.output
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and 99 not in steps and steps[-1] == 6


def test_regular_file(tmp_path):
    assert runs.regular_file(tmp_path / "none", "x") is None
    with pytest.raises(DataError, match="is a folder, not a file"):
        runs.regular_file(tmp_path, "a run's metrics.jsonl")
