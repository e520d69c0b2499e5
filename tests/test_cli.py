"""The conventions of the command line as a whole: --version, -h, shell completion, help with
defaults and clean metavars, flag values out of range as usage errors (exit 2) for every
command; which checkpoint sample and eval choose ($CHARRNN_CHECKPOINT) and saying so; eval
--per-char; and honest progress: the ETA of whichever limit stops the run, resuming messages,
`elapsed` continued across a resume."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, TEXT, cli, metrics, user_error, write_corpus

import charrnn
from charrnn import checkpoint as ckpt_io
from charrnn.cli import train as train_command
from charrnn.config import DEFAULTS
from charrnn.report import Eta

TYPE_METAVAR = r"<[a-z][a-z\[\] ]*>"  # Typer's <int>, <list[str]>, <int range>
SMALL = ["--hidden-size", 8, "--seq-length", 8, "--batch-size", 2, "--rng-seed", 1]


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def usage(result) -> str:
    """The usage line of a --help after "Usage: PROG " (CliRunner calls the program "root")."""
    return result.stdout.split("\n")[0].split(" ", 2)[2]


def flat(text: str) -> str:
    """Help text with its line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path, TEXT[:3000])


def train_run(corpus: Path, out: str, *args) -> Path:
    ok(cli("train", corpus, *SMALL, "--out", out, "-q", *args))
    return Path(out)


# ---- --version, -h, completion ----


def test_version_is_the_package_version(in_tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        f"charrnn {charrnn.__version__}\n",
        "",
    )
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^version = "(.*)"$', pyproject, re.M)[1] == charrnn.__version__ == "0.2.0"


@pytest.mark.parametrize(
    "command", [[], ["train"], ["sample"], ["eval"], ["info"], ["plot"], ["gradflow"]]
)
def test_dash_h_is_help(command):
    short, long = cli(*command, "-h"), cli(*command, "--help")
    assert short.exit_code == long.exit_code == 0
    assert short.stdout == long.stdout
    usage = short.stdout.split("\n")[0].split(" ")  # Usage: PROG COMMAND [OPTIONS] ...
    assert usage[2 : 3 + len(command)] == [*command, "[OPTIONS]"]


def test_bash_completion_script():
    charrnn_bin = Path(sys.executable).parent / "charrnn"
    # name the shell, as a user without shellingham's process-tree detection does
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    proc = subprocess.run(
        [str(charrnn_bin), "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    script = proc.stdout
    assert script.startswith("_charrnn_completion() {")
    assert "_CHARRNN_COMPLETE=complete_bash $1" in script
    assert script.rstrip().endswith("complete -o default -F _charrnn_completion charrnn")
    # what the script asks the program for: the completions of a partial command line
    for words, cword, want in [
        ("charrnn tr", 1, ["train"]),
        ("charrnn train c.txt --hidden", 3, ["--hidden-size"]),
        ("charrnn plot run --x ", 4, ["steps", "chars", "time"]),
    ]:
        env = {**os.environ, "_CHARRNN_COMPLETE": "complete_bash", "COMP_WORDS": words}
        env["COMP_CWORD"] = str(cword)
        proc = subprocess.run([charrnn_bin], env=env, capture_output=True, text=True, timeout=60)
        assert proc.stdout.split() == want, (words, proc.stdout, proc.stderr)


def test_completion_options_are_offered():
    assert "--install-completion" in cli("--help").stdout
    assert "--show-completion" in cli("--help").stdout


def test_train_help_shows_config_defaults_and_clean_metavars():
    result = ok(cli("train", "--help"))
    text = flat(result.stdout)
    assert usage(result) == "train [OPTIONS] CORPUS..."
    assert "CORPUS... Text files, folders of them (read recursively) and - for stdin" in text
    for flag, shown in [
        ("--hidden-size N Hidden units H per layer.", DEFAULTS["hidden_size"]),
        ("--cell rnn|lstm|gru Vanilla tanh, LSTM or GRU.", "rnn"),
        ("--learning-rate LR Learning rate.", "0.002"),
        ("--max-steps N Stop after N updates (0 = no limit).", 2000),
        ("--max-time SECONDS Stop after this many seconds of this invocation (0 = no limit).", 0),
        ("--eval-every N Validate every N steps (0 = never).", 200),
        ("--decode-errors strict|replace Invalid bytes: an error, or U+FFFD.", "strict"),
    ]:
        assert f"{flag} [default: {shown}]" in text
    assert "--set KEY=VALUE Any config key" in text
    assert "[default: random, recorded in config.yaml]" in text
    assert not re.search(TYPE_METAVAR, result.stdout)
    assert "{" not in result.stdout and "None" not in result.stdout
    # every config-key flag states its default
    flags = [k for k in inspect.signature(train_command).parameters if k in DEFAULTS]
    assert len(flags) == 22 and text.count("[default:") == len(flags)


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("sample", "sample [OPTIONS]"),
        ("eval", "eval [OPTIONS] TEXT"),
        ("info", "info [OPTIONS] [CHECKPOINT_OR_RUN]"),
        ("plot", "plot [OPTIONS] RUN..."),
        ("gradflow", "gradflow [OPTIONS] CHECKPOINT... TEXT"),
        ("prepare", "prepare [OPTIONS] CORPUS..."),
        ("export", "export [OPTIONS] CHECKPOINT_OR_RUN"),
        ("serve", "serve [OPTIONS] [CHECKPOINT_OR_RUN]"),
    ],
)
def test_other_commands_have_clean_metavars(command, line):
    result = ok(cli(command, "--help"))
    assert usage(result) == line
    assert not re.search(TYPE_METAVAR, result.stdout) and "{" not in result.stdout


# ---- out-of-range flag values: usage errors (exit 2), worded as the config's rule ----

ENCODING = "expected a text encoding Python knows, such as utf-8"

# (command, flag, value, what the error says after "Invalid value for '--flag': ")
OUT_OF_RANGE = [
    ("train", "--hidden-size", 0, "got 0, expected an integer >= 1"),
    ("train", "--hidden-size", -5, "got -5, expected an integer >= 1"),
    ("train", "--cell", "xyz", "got 'xyz', expected one of rnn, lstm, gru"),
    ("train", "--optimizer", "adamw", "got 'adamw', expected one of adam, rmsprop, adagrad, sgd"),
    ("train", "--dropout", 1, "got 1.0, expected a number >= 0 and < 1"),
    ("train", "--max-time", -1, "got -1.0, expected a number >= 0"),
    ("train", "--encoding", "bogus", f"got 'bogus', {ENCODING}"),
    ("eval", "--encoding", "bogus", f"got 'bogus', {ENCODING}"),
    ("eval", "--decode-errors", "ignore", "got 'ignore', expected one of strict, replace"),
    ("prepare", "--encoding", "bogus", f"got 'bogus', {ENCODING}"),
    ("prepare", "--decode-errors", "ignore", "got 'ignore', expected one of strict, replace"),
    ("show", "--encoding", "bogus", f"got 'bogus', {ENCODING}"),
    ("gradflow", "--encoding", "bogus", f"got 'bogus', {ENCODING}"),
    ("gradflow", "--decode-errors", "ignore", "got 'ignore', expected one of strict, replace"),
    ("sample", "--temperature", 0, "must be a number > 0"),
]


@pytest.mark.parametrize(("command", "flag", "value", "message"), OUT_OF_RANGE)
def test_out_of_range_flag_is_a_usage_error(command, flag, value, message, corpus):
    where = {
        "train": [corpus, "--out", "r"],
        "eval": [corpus],
        "prepare": [corpus],
        "show": [corpus, "-o", "r"],
        "gradflow": ["m.npz", corpus],
        "sample": [],
    }[command]
    result = cli(command, *where, flag, value, "-q")
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr.endswith(f"\nError: Invalid value for '{flag}': {message}\n")
    assert "Traceback" not in result.output
    assert not Path("r").exists()


def test_the_same_value_in_set_is_an_input_error(corpus):
    result = cli("train", corpus, "--set", "hidden_size=0", "--out", "r", "-q")
    assert user_error(result) == (
        "config key 'hidden_size': got 0, expected an integer >= 1 (in --set)"
    )


def test_a_weight_decay_too_large_for_the_rate_is_one_line_and_no_run(corpus):
    result = cli("train", corpus, "--set", "weight_decay=0.5", "--learning-rate", "4", "--out", "r")
    assert "weight_decay" in user_error(result) and "lower one of them" in user_error(result)
    assert not Path("r").exists()


# ---- which checkpoint sample and eval use ----


@pytest.fixture
def two_runs(corpus) -> tuple[Path, Path]:
    """runs/old (10 steps) and runs/new (20 steps, written last)."""
    old = train_run(corpus, "runs/old", "--max-steps", 10, "--eval-every", 5)
    new = train_run(corpus, "runs/new", "--max-steps", 20, "--eval-every", 5)
    return old, new


LATEST = (
    "the most recently written runs/*/best.npz; pin one with --checkpoint or CHARRNN_CHECKPOINT"
)


def test_the_latest_run_is_named_with_its_step(two_runs):
    step = ckpt_io.load(two_runs[1] / "best.npz").step
    for args in (["sample", "--length", 5], ["eval", "-"]):
        result = ok(cli(*args, input="First"))
        assert result.stderr == (
            f"Using checkpoint {Path('runs/new/best.npz')} (step {step}; {LATEST})\n"
        )
        assert ok(cli(*args, "-q", input="First")).stderr == ""


def test_charrnn_checkpoint_pins_a_run(two_runs, monkeypatch):
    old, new = two_runs
    monkeypatch.setenv("CHARRNN_CHECKPOINT", str(old))
    step = ckpt_io.load(old / "best.npz").step
    pinned = ok(cli("eval", "-", "--json", input=TEXT[:300]))
    assert pinned.stderr == (
        f"Using checkpoint {old / 'best.npz'} (step {step}; from $CHARRNN_CHECKPOINT)\n"
    )
    given = ok(cli("eval", "-", "--json", "--checkpoint", old, input=TEXT[:300]))
    assert json.loads(pinned.stdout) == json.loads(given.stdout)
    assert given.stderr == ""  # a --checkpoint given is not announced
    # --checkpoint wins over the variable
    other = ok(cli("eval", "-", "--json", "--checkpoint", new, input=TEXT[:300]))
    assert json.loads(other.stdout) != json.loads(pinned.stdout)
    # a file works as well as a run folder
    monkeypatch.setenv("CHARRNN_CHECKPOINT", str(new / "last.npz"))
    assert (
        f"Using checkpoint {new / 'last.npz'} (step 20;" in ok(cli("sample", "--length", 3)).stderr
    )


def test_charrnn_checkpoint_that_does_not_exist(monkeypatch, two_runs):
    monkeypatch.setenv("CHARRNN_CHECKPOINT", "nowhere")
    assert user_error(cli("sample", "--length", 3)) == (
        "CHARRNN_CHECKPOINT names 'nowhere', which does not exist; point it at a checkpoint "
        "or run folder, or unset it"
    )


# ---- files that are not files: FIFOs and devices never hang a command ----


def bounded(*args, env=None) -> subprocess.CompletedProcess:
    """A real `python -m charrnn ARGS` that must finish within 30 s (a FIFO would block its open
    forever, and a test in this process with it)."""
    return subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def refused(proc) -> str:
    assert (proc.returncode, proc.stdout) == (1, ""), proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    return proc.stderr.removeprefix("Error: ").strip()


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused(kind, corpus, tmp_path):
    if kind == "fifo":
        path = tmp_path / "model.npz"
        os.mkfifo(path)
        what = "a FIFO (named pipe)"
    else:
        path, what = Path("/dev/zero"), "a character device"
    says = f"checkpoint '{path}' is {what}, not a file; give a .npz file or a run folder"
    for args in (
        ["sample", "--checkpoint", path, "--length", 5],
        ["eval", corpus, "--checkpoint", path],
        ["info", path],
        ["train", corpus, "--resume", path, "--max-steps", 5, "-q"],
    ):
        assert refused(bounded(*args)) == says, args
    assert refused(bounded("sample", env={"CHARRNN_CHECKPOINT": str(path)})) == says


def test_a_run_folder_whose_checkpoint_is_a_fifo(corpus, tmp_path):
    (tmp_path / "run").mkdir()
    os.mkfifo(tmp_path / "run" / "best.npz")
    os.mkfifo(tmp_path / "run" / "last.npz")
    best, last = tmp_path / "run" / "best.npz", tmp_path / "run" / "last.npz"
    tail = "is a FIFO (named pipe), not a file; give a .npz file or a run folder"
    says = refused(bounded("sample", "--checkpoint", tmp_path / "run"))
    assert says == f"checkpoint '{best}' {tail}"
    assert refused(bounded("train", corpus, "--resume", tmp_path / "run", "-q")) == (
        f"checkpoint '{last}' {tail}"
    )


def test_a_config_file_that_is_a_fifo_is_refused(corpus, tmp_path):
    os.mkfifo(tmp_path / "c.yaml")
    assert refused(bounded("train", corpus, "--config", tmp_path / "c.yaml", "-q")) == (
        f"config file '{tmp_path / 'c.yaml'}' is a FIFO (named pipe), not a file; give a YAML file"
    )


# ---- eval --per-char ----


@pytest.fixture
def run_dir(corpus) -> Path:
    return train_run(corpus, "run", "--max-steps", 20, "--eval-every", 10)


def test_per_char_lines_to_a_file(run_dir):
    text = TEXT[:60] + "\x07" + TEXT[60:100]  # the bell is not in the vocabulary
    Path("held.txt").write_text(text, encoding="utf-8")
    result = ok(
        cli("eval", "held.txt", "--checkpoint", run_dir, "--per-char", "chars.jsonl", "--json")
    )
    score = json.loads(result.stdout)
    lines = [json.loads(ln) for ln in Path("chars.jsonl").read_text(encoding="utf-8").splitlines()]
    assert "".join(r["char"] for r in lines) == text.replace("\x07", "")  # skipped
    assert score["chars"] == len(lines) and score["unknown_chars"] == 1
    for r in lines:
        assert set(r) == {"char", "p", "bits", "top"}
        assert r["bits"] == pytest.approx(-math.log2(r["p"]), rel=1e-4)
        guesses = [p for _, p in r["top"]]
        assert len(guesses) == 3 and guesses == sorted(guesses, reverse=True)
        assert r["p"] <= guesses[0] * (1 + 1e-5)
        if r["char"] == r["top"][0][0]:
            assert r["p"] == pytest.approx(guesses[0], rel=1e-5)
    # the same single pass as the score: the mean of bits is bpc
    assert sum(r["bits"] for r in lines) / len(lines) == pytest.approx(score["bpc"], rel=1e-4)


def test_per_char_to_stdout_puts_the_summary_on_stderr(run_dir):
    result = ok(cli("eval", "-", "--checkpoint", run_dir, "--per-char", "-", input="First"))
    assert [json.loads(ln)["char"] for ln in result.stdout.splitlines()] == list("First")
    assert result.stderr.startswith("loss ") and result.stderr.endswith(" over 5 characters\n")
    quiet = ok(cli("eval", "-", "--checkpoint", run_dir, "--per-char", "-", "-q", input="First"))
    assert quiet.stderr == "" and quiet.stdout == result.stdout
    both = cli("eval", "-", "--checkpoint", run_dir, "--per-char", "-", "--json", input="First")
    assert both.exit_code == 2 and both.stdout == ""
    assert both.stderr.endswith(
        "Error: Invalid value for '--per-char': --per-char - and --json would both write to "
        "stdout; give --per-char a file\n"
    )


# ---- progress: resuming, the ETA, elapsed ----


def test_resume_says_from_which_step_and_elapsed_continues(corpus):
    run = train_run(corpus, "r", "--max-steps", 10, "--eval-every", 5)
    # as if the first 10 steps had taken 1000 s: the resumed steps' elapsed must continue from it
    records = metrics(run)
    records[-1]["elapsed"] = 1000.0
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = ok(cli("train", corpus, "--resume", run, "--max-steps", 20, "--eval-every", 5))
    assert result.stderr.startswith(f"resuming from step 10 into {run}: ")
    times = [r["elapsed"] for r in metrics(run) if "elapsed" in r]
    assert times[:10] == [r["elapsed"] for r in records[:10]]
    assert all(1000 <= t < 1100 for t in times[10:]) and times == sorted(times)
    fresh = ok(cli("train", corpus, *SMALL, "--max-steps", 5, "--out", "f"))
    assert fresh.stderr.startswith("training into f: ")


def test_resuming_a_run_that_reached_its_step_limit(corpus):
    run = train_run(corpus, "r", "--max-steps", 10, "--eval-every", 5)
    result = ok(cli("train", corpus, "--resume", run))
    assert (
        "step 10 already reached max_steps 10: nothing to train; to continue, resume with a "
        "higher limit, e.g. --max-steps 20\n"
    ) in result.stderr
    assert ckpt_io.load(run / "last.npz").step == 10
    longer = ok(cli("train", corpus, "--resume", run, "--max-steps", 12))
    assert "already reached" not in longer.stderr


def test_resuming_a_run_that_reached_its_epoch_limit(corpus):
    run = train_run(corpus, "r", "--max-steps", 0, "--max-epochs", 0.05, "--eval-every", 5)
    steps = ckpt_io.load(run / "last.npz").step
    result = ok(cli("train", corpus, "--resume", run))
    assert (
        f"step {steps} already reached max_epochs 0.05: nothing to train; to continue, resume "
        "with a higher limit, e.g. --max-epochs 0.1\n"
    ) in result.stderr


def test_eta_with_only_max_time(corpus):
    result = ok(
        cli(
            "train",
            corpus,
            *SMALL,
            "--max-steps",
            0,
            "--max-time",
            0.3,
            "--eval-every",
            20,
            "--out",
            "r",
        )
    )
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("step ")]
    assert lines and all(re.search(r" \| eta \d+:\d\d \(max_time\)$", ln) for ln in lines), lines


def _info(**changes) -> dict:
    info = {"max_steps": None, "max_time": None, "epoch_steps": None, "start_step": 0}
    return {**info, "start_elapsed": 0.0, **changes}


@pytest.mark.parametrize(
    ("info", "record", "left"),
    [
        # 100 steps in 10 s, 900 to go: 90 s; max_time has 290 s left
        (_info(max_steps=1000, max_time=300), {"step": 100, "elapsed": 10.0}, (90.0, "max_steps")),
        # max_time comes first
        (_info(max_steps=1000, max_time=50), {"step": 100, "elapsed": 10.0}, (40.0, "max_time")),
        # the step limit is max_epochs' when it is the nearer one
        (
            _info(max_steps=400, epoch_steps=400),
            {"step": 100, "elapsed": 10.0},
            (30.0, "max_epochs"),
        ),
        # a resumed run: speed and time from this invocation's start (step 500 at elapsed 70 s)
        (
            _info(max_steps=1000, max_time=100, start_step=500, start_elapsed=70.0),
            {"step": 600, "elapsed": 80.0},
            (40.0, "max_steps"),
        ),
        (_info(), {"step": 100, "elapsed": 10.0}, None),  # nothing limits the run
    ],
)
def test_eta_counts_toward_the_limit_that_stops_the_run(info, record, left):
    got = Eta(info).left(record)
    assert got == left if left is None else got == (pytest.approx(left[0]), left[1])
