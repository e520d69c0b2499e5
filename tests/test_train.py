"""charrnn train, through typer's CliRunner: the run folder it writes, its output streams, config
precedence, the inputs it refuses, a diverging run, bitwise resume and reproducibility.

Training under faults (SIGKILL, SIGINT and SIGTERM, a save that fails) is in test_faults.py;
checkpoints that do not load, for every command, in test_checkpoint.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import (
    TEXT,
    TINY,
    arrays,
    assert_same_arrays,
    bad_file,
    cli,
    edit,
    f32,
    metrics,
    train_steps,
    user_error,
    without_timing,
    write_corpus,
)

import charrnn
from charrnn import checkpoint as ckpt_io
from charrnn import optim
from charrnn.cli import app
from charrnn.config import Config
from charrnn.report import NullReporter

METRIC_KEYS = {
    "step",
    "epoch",
    "train_loss",
    "val_loss",
    "val_bpc",
    "grad_norm",
    "lr",
    "chars_per_sec",
    "elapsed",
}


@pytest.fixture
def train(runner, corpus_file, tiny_config):
    """Run `charrnn train CORPUS --config TINY ARGS...` in-process; returns the Result."""

    def run(
        *args: str,
        corpus: str | Path = corpus_file,
        config: Path | None = tiny_config,
        input: str | bytes | None = None,
    ):
        cmd = ["train", str(corpus)] + (["--config", str(config)] if config else []) + list(args)
        return runner.invoke(app, cmd, input=input)

    return run


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.stderr, result.exception)
    return result


# ---- a normal run ----


def test_train_writes_the_run_folder(train, periodic_text):
    result = ok(train("--out", "run", "-q"))
    run = Path("run")
    assert {"config.yaml", "metrics.jsonl", "last.npz", "best.npz"} <= {
        p.name for p in run.iterdir()
    }
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["hidden_size"], cfg["seq_length"], cfg["batch_size"], cfg["rng_seed"]) == (
        16,
        8,
        4,
        1,
    )
    assert result.stdout == ""

    records = metrics(run)
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert all(set(r) == METRIC_KEYS for r in steps)
    assert all(r["lr"] == 0.01 and r["chars_per_sec"] > 0 for r in steps)
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]
    vals = [r for r in records if r["val_loss"] is not None]
    assert [r["step"] for r in vals] == [10, 20, 30, 40, 50, 60]  # every 10, 60 is the end
    assert all(r["val_bpc"] == pytest.approx(r["val_loss"] / math.log(2)) for r in vals)

    last = ckpt_io.load(run / "last.npz")
    assert last.step == 60
    assert last.vocab == sorted(set(periodic_text))
    assert last.params["Whh"].shape == (16, 16) and last.params["Whh"].dtype == np.float32
    assert last.h_carry.shape == (4, 16)
    assert last.config["hidden_size"] == 16
    best = ckpt_io.load(run / "best.npz")
    best_record = min(vals, key=lambda r: r["val_loss"])
    assert best.step == best_record["step"]
    assert best.train_state["best_val_loss"] == pytest.approx(best_record["val_loss"])
    assert last.train_state["best_val_loss"] == pytest.approx(best_record["val_loss"])


def test_json_prints_one_object_on_stdout(train):
    result = ok(train("--out", "run", "--json"))
    assert result.stdout.count("\n") == 1
    summary = json.loads(result.stdout)
    assert summary["steps"] == 60
    assert summary["chars_seen"] == 60 * 4 * 8
    assert summary["stopped_by"] == "max_steps"
    assert summary["best_val_loss"] <= summary["final_val_loss"]
    assert summary["best_val_bpc"] == pytest.approx(summary["best_val_loss"] / math.log(2))
    assert Path(summary["last_checkpoint"]) == Path("run/last.npz")
    assert Path(summary["best_checkpoint"]) == Path("run/best.npz")
    assert summary["seconds"] >= 0


def test_quiet_prints_nothing(train):
    result = ok(train("--out", "run", "--quiet"))
    assert result.stdout == "" and result.stderr == ""


def test_progress_and_samples_go_to_stderr(train):
    result = ok(train("--out", "run", "--sample-every", "30"))
    assert result.stdout == ""
    assert "--- sample at step 30 ---" in result.stderr
    assert "step 60/60" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("done: 60 steps")


def test_default_run_folder_is_under_runs_in_the_current_directory(train, in_tmp_path):
    summary = json.loads(ok(train("--json", "--max-steps", "5")).stdout)
    run = Path(summary["run_dir"])
    assert run.parent == Path("runs")
    assert (in_tmp_path / run / "best.npz").is_file()


def test_corpus_from_stdin(train, periodic_text):
    ok(train("--out", "run", "-q", corpus="-", input=periodic_text))
    assert ckpt_io.load("run/last.npz").vocab == sorted(set(periodic_text))


def test_random_seed_is_recorded_when_not_given(train):
    ok(train("--out", "run", "-q", "--max-steps", "2", "--set", "rng_seed=null"))
    seed = yaml.safe_load(Path("run/config.yaml").read_text())["rng_seed"]
    assert isinstance(seed, int) and seed >= 0
    assert ckpt_io.load("run/last.npz").config["rng_seed"] == seed


def test_max_epochs_stops_after_whole_passes(train):
    summary = json.loads(
        ok(train("--out", "run", "--max-steps", "0", "--max-epochs", "1", "--json")).stdout
    )
    # 1,170 training characters: 4 streams of 292, 36 chunks of 8 per stream
    assert (summary["steps"], summary["stopped_by"]) == (36, "max_epochs")


def test_max_time_stops(train):
    summary = json.loads(
        ok(
            train(
                "--out",
                "run",
                "--max-steps",
                "0",
                "--max-time",
                "0.3",
                "--eval-every",
                "0",
                "--json",
            )
        ).stdout
    )
    assert summary["stopped_by"] == "max_time" and summary["steps"] > 0
    assert summary["seconds"] >= 0.3  # it ran until the limit, not past its first step


def test_patience_stops_when_validation_stops_improving(train):
    # a learning rate so small that the weights do not change: every validation ties the first
    summary = json.loads(
        ok(
            train(
                "--out",
                "run",
                "--patience",
                "2",
                "--eval-every",
                "1",
                "--optimizer",
                "sgd",
                "--learning-rate",
                "1e-30",
                "--json",
            )
        ).stdout
    )
    assert (summary["steps"], summary["stopped_by"]) == (3, "patience")
    assert ckpt_io.load("run/best.npz").step == 1


def test_eval_every_zero_keeps_the_last_model_as_best(train):
    summary = json.loads(ok(train("--out", "run", "--eval-every", "0", "--json")).stdout)
    assert summary["best_val_loss"] is None and summary["final_val_loss"] is None
    assert all(r["val_loss"] is None for r in metrics(Path("run")))
    assert_same_arrays(arrays(Path("run/best.npz")), arrays(Path("run/last.npz")))


# ---- config precedence ----


def test_precedence_file_then_flags_then_set(train):
    ok(
        train(
            "--out",
            "run",
            "-q",
            "--max-steps",
            "3",
            "--hidden-size",
            "12",
            "--seq-length",
            "6",
            "--set",
            "seq_length=5",
            "--set",
            "optimizer=rmsprop",
        )
    )
    cfg = yaml.safe_load(Path("run/config.yaml").read_text())
    assert cfg["hidden_size"] == 12  # flag over file (16)
    assert cfg["seq_length"] == 5  # --set over flag (6) over file (8)
    assert cfg["batch_size"] == 4 and cfg["learning_rate"] == 0.01  # file over defaults
    assert cfg["optimizer"] == "rmsprop"  # --set over default
    assert cfg["grad_clip"] == 5.0  # default
    ckpt = ckpt_io.load("run/last.npz")
    assert ckpt.params["Whh"].shape == (12, 12) and "v.Whh" in ckpt.opt_state
    assert ckpt.config == cfg


def test_float64_training(train):
    ok(train("--out", "run", "-q", "--max-steps", "3", "--set", "dtype=float64"))
    ckpt = ckpt_io.load("run/last.npz")
    assert all(p.dtype == np.float64 for p in ckpt.params.values())


# ---- inputs it refuses: one `Error:` line, exit 1, no traceback, nothing trained ----


def _file(name: str, data: bytes):
    def make() -> str:
        Path(name).write_bytes(data)
        return name

    return make


def _folder() -> str:
    Path("adir").mkdir()
    return "adir"


def _unreadable() -> str:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    _file("locked.txt", b"hello world! " * 100)()
    Path("locked.txt").chmod(0)
    return "locked.txt"


# name: (makes the corpus and gives its name, more arguments, the message)
BAD_CORPORA = {
    "missing": (lambda: "missing.txt", [], "file 'missing.txt' not found; check the path"),
    "a directory": (
        _folder,
        [],
        "'adir' holds no text files; give text files or a folder of them (hidden files are "
        "skipped; --glob chooses which files)",
    ),
    "empty": (
        _file("empty.txt", b""),
        [],
        "'empty.txt' is empty; give a text with at least a few hundred characters",
    ),
    "too short for one chunk": (
        lambda: "corpus.txt",  # the corpus_file fixture's
        ["--batch-size", "64", "--seq-length", "50"],
        "the training text has 1170 characters, too short for one chunk of "
        "batch_size x seq_length = 64 x 50 (needs 3201); use a longer corpus or lower "
        "--batch-size / --seq-length",
    ),
    "seven characters": (
        _file("short.txt", b"abcdefg"),
        [],
        "the training text has 7 characters, too short for one chunk of "
        "batch_size x seq_length = 4 x 8 (needs 33); use a longer corpus or lower "
        "--batch-size / --seq-length",
    ),
    "invalid UTF-8": (
        _file("bad.txt", b"hello\xffworld " * 50),
        [],
        "'bad.txt' is not valid utf-8 at byte offset 5; pass --encoding latin-1 "
        "(or the text's own encoding) or --decode-errors replace",
    ),
    "binary": (
        _file("x.bin", bytes(range(256)) * 8),
        [],
        "'x.bin' looks like a binary file (a NUL at byte 0), not text; give text files",
    ),
    "unreadable": (_unreadable, [], "cannot read 'locked.txt': permission denied"),
}


@pytest.mark.parametrize("case", BAD_CORPORA)
def test_bad_corpus(case, train):
    make, args, message = BAD_CORPORA[case]
    assert user_error(train("--out", "r", "-q", *args, corpus=make())) == message


def test_decode_errors_replace_makes_it_work(train):
    Path("bad.txt").write_bytes(b"hello\xffworld " * 50)
    ok(
        train(
            "--out", "run", "-q", "--max-steps", "2", "--decode-errors", "replace", corpus="bad.txt"
        )
    )
    assert "\ufffd" in ckpt_io.load("run/last.npz").vocab


def test_other_encoding(train):
    Path("latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 100)
    ok(train("--out", "run", "-q", "--max-steps", "2", "--encoding", "latin-1", corpus="latin.txt"))
    assert "é" in ckpt_io.load("run/last.npz").vocab


def _in_file(what: str) -> str:
    return f"config key {what} (in config file 'c.yaml')"


# name: (the --config file's text, the message)
BAD_CONFIG_FILES = {
    "invalid YAML": (
        "hidden_size: [16\n",
        "config file 'c.yaml' is not valid YAML at line 2: expected ',' or ']', but got "
        "'<stream end>'; fix the file",
    ),
    "a tab": (
        "hidden_size: 16\nseq_length: 8\n\tbatch_size: 2\n",
        "config file 'c.yaml' is not valid YAML at line 3: found character '\\t' that "
        "cannot start any token; fix the file",
    ),
    "a list at the top": (
        "- hidden_size\n- 16\n",
        "config file 'c.yaml': top level must be a mapping of keys to values, got a list",
    ),
    "a number at the top": (
        "16\n",
        "config file 'c.yaml': top level must be a mapping of keys to values, got a number",
    ),
    "unknown key": (
        "hiden_size: 16\n",
        "unknown config key 'hiden_size' (did you mean 'hidden_size'?) (in config file 'c.yaml')",
    ),
    "wrong type": (
        "hidden_size: lots\n",
        _in_file("'hidden_size': got 'lots', expected an integer >= 1"),
    ),
    "zero size": ("batch_size: 0\n", _in_file("'batch_size': got 0, expected an integer >= 1")),
    "negative size": (
        "seq_length: -4\n",
        _in_file("'seq_length': got -4, expected an integer >= 1"),
    ),
    "zero learning rate": (
        "learning_rate: 0\n",
        _in_file("'learning_rate': got 0, expected a number > 0"),
    ),
    "negative learning rate": (
        "learning_rate: -0.1\n",
        _in_file("'learning_rate': got -0.1, expected a number > 0"),
    ),
    "bool for a size": (
        "hidden_size: yes\n",
        _in_file("'hidden_size': got true, expected an integer >= 1"),
    ),
    "binary file": (
        b"\xff\xfe\x00h\x00",
        "config file 'c.yaml' is not UTF-8 text; save it as UTF-8",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIG_FILES)
def test_bad_config_file(case, train):
    text, message = BAD_CONFIG_FILES[case]
    Path("c.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
    assert user_error(train("--out", "r", "-q", config=Path("c.yaml"))) == message
    assert not Path("r").exists()


# name: (the arguments after --config tiny.yaml, the message); a flag's value out of range is a
# usage error instead (exit 2, test_cli.py)
BAD_OPTIONS = {
    "misspelt --set key": (
        ["--set", "hiden_size=3"],
        "unknown config key 'hiden_size' (did you mean 'hidden_size'?) (in --set)",
    ),
    "another misspelt --set key": (
        ["--set", "seq_lenght=4"],
        "unknown config key 'seq_lenght' (did you mean 'seq_length'?) (in --set)",
    ),
    "--set key without a value": (
        ["--set", "hidden_size"],
        "--set 'hidden_size': expected the form key=value, e.g. --set hidden_size=256",
    ),
    "--set word": (
        ["--set", "nonsense"],
        "--set 'nonsense': expected the form key=value, e.g. --set hidden_size=256",
    ),
    "--set word for a size": (
        ["--set", "hidden_size=abc"],
        "config key 'hidden_size': got 'abc', expected an integer >= 1 (in --set)",
    ),
    "--set zero learning rate": (
        ["--set", "learning_rate=0"],
        "config key 'learning_rate': got 0, expected a number > 0 (in --set)",
    ),
    "missing config file": (
        ["--config", "none.yaml"],
        "config file 'none.yaml' not found; check the --config path",
    ),
    "a chunk longer than the text": (
        ["--seq-length", "5000", "--batch-size", "2"],
        "the training text has 1170 characters, too short for one chunk of "
        "batch_size x seq_length = 2 x 5000 (needs 10001); use a longer corpus or lower "
        "--batch-size / --seq-length",
    ),
    "--out a file": (
        ["--out", "afile"],
        "cannot create run folder 'afile': File exists; pass another --out",
    ),
    "--out under a file": (
        ["--out", "afile/run"],
        "cannot create run folder 'afile/run': Not a directory; pass another --out",
    ),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_bad_options(case, train):
    args, message = BAD_OPTIONS[case]
    Path("afile").write_text("")
    assert user_error(train("--out", "r", "-q", *args)) == message
    # nothing written: no run folder, or (for a corpus too short) one holding only its lock
    assert [p.name for p in Path("r").glob("*")] in ([], [".lock"])


def test_usage_errors_exit_2(runner, train):
    assert train("--no-such-flag").exit_code == 2
    assert runner.invoke(app, ["train"]).exit_code == 2
    # typer's own message (a box when rich is installed), no traceback, nothing written
    result = train("--hidden-size", "abc", "--out", "r")
    assert result.exit_code == 2 and "Invalid value for '--hidden-size'" in result.stderr
    assert "Traceback" not in result.output and not Path("r").exists()
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_python_dash_m_help(in_tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "charrnn", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=in_tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout


# ---- a diverging run ----


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(train, recwarn):
    ok(train("--out", "run", "-q", "--max-steps", "20"))
    before = {name: Path("run", name).read_bytes() for name in ("last.npz", "best.npz")}
    # adam moves every weight by about the learning rate: 1e38 overflows float32 at once
    result = train(
        "--resume",
        "run",
        "--max-steps",
        "60",
        "--learning-rate",
        "1e38",
        "--set",
        "grad_clip=0",
        "-q",
        config=None,
    )
    assert user_error(result) == (
        "the loss became nan at step 22: training diverged; lower "
        "--learning-rate (now 1e+38) or set --grad-clip 5; last.npz from step 20 "
        "is kept"
    )
    assert {name: Path("run", name).read_bytes() for name in before} == before
    assert ckpt_io.load("run/last.npz").step == 20
    # numpy's overflow warnings would print source lines around the one-line error
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_weights_that_overflow_are_never_saved(train):
    # rmsprop's first step is 10 * lr * sign(g): 1e39 is inf in float32 while the loss that
    # produced it was finite; saving after every step would write the infinite weights
    result = train(
        "--out",
        "run",
        "-q",
        "--optimizer",
        "rmsprop",
        "--learning-rate",
        "1e38",
        "--set",
        "grad_clip=0",
        "--checkpoint-every",
        "1",
    )
    assert user_error(result) == (
        "the weights became NaN or infinite at step 1: training diverged; lower "
        "--learning-rate (now 1e+38) or set --grad-clip 5; no checkpoint was "
        "written"
    )
    assert not Path("run/last.npz").exists()


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
    line = user_error(result)
    assert f"{what} at step " in line
    step = int(re.search(r"at step (\d+)", line).group(1))
    assert f"lower --learning-rate (now {float(lr):g}) or set --grad-clip 5" in line
    if step == 1:
        assert line.endswith("no checkpoint was written") and not (out / "last.npz").exists()
        return
    good = ckpt_io.load(out / "last.npz")  # load refuses non-finite weights: this one is good
    assert line.endswith(f"last.npz from step {good.step} is kept") and good.step == step - 1
    ckpt_io.load(out / "best.npz")


# ---- resume ----


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same bits: every array of last.npz and of best.npz (weights,
    optimizer state, h_carry, step, config, train_state), and every metrics line but timings."""
    assert_same_arrays(arrays(a / "last.npz"), arrays(b / "last.npz"))
    assert_same_arrays(arrays(a / "best.npz"), arrays(b / "best.npz"))
    assert without_timing(metrics(a)) == without_timing(metrics(b))


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_is_bitwise_identical_to_a_straight_run(train, workers):
    w = f"workers={workers}"
    ok(train("--out", "A", "-q", "--max-steps", "30", "--set", w))
    assert ckpt_io.load("A/last.npz").step == 30
    ok(train("--resume", "A", "-q", "--max-steps", "60", config=None))
    ok(train("--out", "B", "-q", "--max-steps", "60", "--set", w))
    # 60 steps cross an epoch (36 steps) after the resume: the carried state resets there
    a = arrays(Path("A/last.npz"))
    assert int(a["step"]) == 60 and any(k.startswith("opt.") for k in a) and "h_carry" in a
    assert_same_run(Path("A"), Path("B"))


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_resume_is_bitwise_exact_across_decay_validation_and_epochs(optimizer, tmp_path):
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

    assert_same_run(straight, split_run)
    a, b = ckpt_io.load(straight / "last.npz"), ckpt_io.load(split_run / "last.npz")
    assert a.step == 15 and a.train_state == b.train_state
    assert a.train_state["best_val_loss"] is not None


class _InterruptAt(NullReporter):
    """Sends this process SIGINT once the run has done `step` updates: a Ctrl-C at a known step,
    which the loop answers by saving and stopping (the run's limits, and so an annealed
    schedule's length, stay as given)."""

    def __init__(self, step: int):
        self.at = step

    def step(self, metrics: dict) -> None:
        if metrics["step"] == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_an_annealed_schedule_resumes_bitwise(decay, tmp_path):
    """A cosine (or linear) learning rate over max_steps, with warmup and weight decay: a run
    stopped by Ctrl-C at step 6 and resumed to 15 equals one that ran the 15 straight, every
    array and metric."""
    corpus = write_corpus(tmp_path, TEXT[:200])
    settings = dict(
        hidden_size=16, seq_length=8, batch_size=2, rng_seed=1, lr_decay=decay, lr_final=0.2,
        warmup_steps=3, max_steps=15, eval_every=3, checkpoint_every=3, val_fraction=0.1,
        weight_decay=0.1,
    )  # fmt: skip
    straight, split_run = tmp_path / "straight", tmp_path / "split"
    charrnn.train(corpus, out=straight, **settings)
    stopped = charrnn.train(corpus, out=split_run, reporter=_InterruptAt(6), **settings)
    assert (stopped.steps, stopped.stopped_by) == (6, "signal")
    charrnn.train(corpus, resume=split_run)
    assert_same_run(straight, split_run)
    lrs = [r["lr"] for r in metrics(straight) if "lr" in r]  # the schedule over the 15 steps
    cfg = Config(**settings)
    assert lrs == pytest.approx([optim.learning_rate(cfg, s, s / 15) for s in range(15)])
    assert lrs[0] < lrs[1] < lrs[2] and lrs[-1] < 0.002 * 0.3


def test_weight_decay_shrinks_the_trained_weight_matrices(tmp_path):
    """The same run with and without weight_decay: the decayed one ends with smaller weight
    matrices; its config records the setting."""
    corpus = write_corpus(tmp_path, TEXT[:200])
    settings = dict(hidden_size=16, seq_length=8, batch_size=2, rng_seed=1, max_steps=30,
                    eval_every=0, checkpoint_every=30, learning_rate=0.01)  # fmt: skip
    charrnn.train(corpus, out=tmp_path / "plain", **settings)
    charrnn.train(corpus, out=tmp_path / "decayed", weight_decay=1.0, **settings)
    plain = ckpt_io.load(tmp_path / "plain" / "last.npz").params
    decayed = ckpt_io.load(tmp_path / "decayed" / "last.npz")
    assert decayed.config["weight_decay"] == 1.0
    for k, p in plain.items():
        if p.ndim == 2:
            assert np.linalg.norm(decayed.params[k]) < np.linalg.norm(p), k


def test_a_run_annealed_to_zero_over_max_time_is_not_resumed_to_learn_nothing(tmp_path):
    """linear to lr_final 0 over max_time: once the time is spent the rate is 0 for good, so a
    plain resume is refused in one line (nothing written); the ways on it names both work."""
    corpus = write_corpus(tmp_path)
    annealed = [*TINY, "--set", "lr_decay=linear", "--set", "lr_final=0", "--set", "max_steps=0"]
    ok(cli("train", corpus, *annealed, "--max-time", 0.5, "--eval-every", 0, "--out", "r", "-q"))
    before = (tmp_path / "r" / "last.npz").read_bytes()
    message = user_error(cli("train", corpus, "--resume", "r", "--max-time", 0.5, "-q"))
    assert message.startswith("the run's learning rate has annealed over max_time down to 0")
    assert "--init-from" in message and "--set lr_final=0.05" in message
    assert (tmp_path / "r" / "last.npz").read_bytes() == before
    ok(cli("train", corpus, "--resume", "r", "--max-time", 0.3, "--set", "lr_final=0.05", "-q"))
    assert [r["lr"] for r in metrics(tmp_path / "r") if "lr" in r][-1] > 0
    ok(cli("train", corpus, "--init-from", "r", *annealed, "--max-time", 0.3, "--out", "f", "-q"))


def test_a_time_annealed_schedule_runs_its_course_over_max_time(tmp_path):
    """cosine over max_time: the lr falls from learning_rate toward learning_rate x lr_final
    as the seconds pass, and the checkpoint keeps how far it got, which a resume continues
    from (the rest of the way over the resumed run's max_time), never rising again."""
    corpus = write_corpus(tmp_path)
    settings = dict(
        hidden_size=16, seq_length=8, batch_size=2, rng_seed=1, lr_decay="cosine",
        lr_final=0.1, max_steps=0, max_time=1.5, eval_every=0, checkpoint_every=50,
    )  # fmt: skip
    charrnn.train(corpus, out=tmp_path / "run", **settings)
    first = [r["lr"] for r in metrics(tmp_path / "run") if "lr" in r]
    progress = ckpt_io.load(tmp_path / "run" / "last.npz").train_state["time_progress"]
    assert 0.9 <= progress <= 1.0 and len(first) > 20
    assert first[0] == pytest.approx(0.002, rel=0.01) and first[-1] < 0.002 * 0.15
    assert first == sorted(first, reverse=True)
    charrnn.train(corpus, resume=tmp_path / "run", max_time=0.5)
    after = [r["lr"] for r in metrics(tmp_path / "run") if "lr" in r][len(first) :]
    assert after and max(after) <= first[-1] + 1e-12


def test_resume_from_an_odd_step_continues_the_same_training(train):
    # stopping at 25 adds a validation at 25 that the straight run does not do; the weights,
    # optimizer state and carried state must not notice
    ok(train("--out", "A", "-q", "--max-steps", "25"))
    ok(train("--resume", "A", "-q", "--max-steps", "60", config=None))
    ok(train("--out", "B", "-q", "--max-steps", "60"))
    a, b = arrays(Path("A/last.npz")), arrays(Path("B/last.npz"))
    assert_same_arrays(a, b, keys=[k for k in a if k not in ("train_state",)])

    assert train_steps(Path("A")) == list(range(1, 61))  # no step lost or repeated
    vals = [r for r in metrics(Path("A")) if r["val_loss"] is not None]
    assert [r["step"] for r in vals] == [10, 20, 25, 30, 40, 50, 60]
    best = min(r["val_loss"] for r in vals)
    assert json.loads(str(a["train_state"]))["best_val_loss"] == pytest.approx(best)
    assert ckpt_io.load("A/best.npz").train_state["best_val_loss"] == pytest.approx(best)


def test_resume_drops_metrics_past_the_checkpoint(train):
    # checkpoints every 10 steps: a run killed at 25 resumes from 20, and its lines for
    # 21..25 must not stay in metrics.jsonl twice
    ok(train("--out", "A", "-q", "--max-steps", "20"))
    with open("A/metrics.jsonl", "a") as f:
        for step in range(21, 26):
            f.write(json.dumps({"step": step, "train_loss": 9.9, "val_loss": None}) + "\n")
    ok(train("--resume", "A", "-q", "--max-steps", "30", config=None))
    records = [r for r in metrics(Path("A")) if "train_loss" in r]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert all(r["train_loss"] != 9.9 for r in records)


def test_resume_with_another_hidden_size_is_refused(train):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    before = Path("A/last.npz").read_bytes()
    assert user_error(train("--resume", "A", "--hidden-size", "32", config=None)) == (
        "cannot change hidden_size when resuming; start a new run instead"
    )
    assert Path("A/last.npz").read_bytes() == before


def test_resume_with_another_corpus_is_refused(train):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    Path("other.txt").write_text("completely different text, longer than one chunk. " * 20)
    assert user_error(train("--resume", "A", corpus="other.txt", config=None)) == (
        "the corpus's characters differ from the checkpoint's vocabulary; resume with "
        "the corpus the run was trained on"
    )


def test_resume_from_a_missing_checkpoint(train):
    assert user_error(train("--resume", "nothere", config=None)) == (
        "checkpoint 'nothere' not found; check the path"
    )
    Path("empty_run").mkdir()  # a run folder without last.npz
    assert user_error(train("--resume", "empty_run", config=None)) == (
        f"checkpoint '{Path('empty_run', 'last.npz')}' not found; check the path"
    )


def _json_with(name: str, **changes):
    """An edit of the checkpoint that changes keys of the JSON object in its array `name`."""
    return edit(**{name: lambda a: np.array(json.dumps({**json.loads(a[name].item()), **changes}))})


# name: (a change to a valid checkpoint's arrays, what the message says). Each file loads (its
# arrays are sound), but its training state cannot be resumed.
BAD_RESUME_STATE = {
    "rng state garbage": (
        edit(
            train_state=np.array(json.dumps({"rng_state": {"bit_generator": "PCG64", "state": 5}}))
        ),
        "random-generator state",
    ),
    "train_state wrong types": (
        _json_with("train_state", bad_evals="x"),
        "'bad_evals' has the wrong type",
    ),
    "optimizer state of another optimizer": (
        edit(**{f"opt.m.{k}": None for k in ("Wxh", "Whh", "bh", "Why", "by")}),
        "optimizer state is not adam's",
    ),
    "config invalid": (_json_with("config", hidden_size="many"), "hidden_size"),
    "config disagrees with weights": (
        _json_with("config", hidden_size=9),
        "its weights are not a 1-layer rnn of hidden_size 9",
    ),
    "h_carry of another batch size": (edit(h_carry=f32((3, 8))), "'h_carry'"),
}


@pytest.mark.parametrize("case", BAD_RESUME_STATE)
def test_bad_resume_state(case, good_run, tmp_path):
    corpus, run = good_run
    how, says = BAD_RESUME_STATE[case]
    path = bad_file(run / "last.npz", tmp_path / "bad.npz", how)
    ckpt_io.load(path)  # a sound file
    result = cli("train", corpus, "--resume", path, "--max-steps", 99, "-q")
    assert says in user_error(result)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before training


# ---- a finished run is never replaced without a word ----


def run_bytes(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.name != ".lock"}


def test_training_into_a_folder_that_holds_a_run_is_refused(train):
    ok(train("--out", "A", "-q", "--max-steps", "20"))
    before = run_bytes(Path("A"))
    for args in (["-q"], ["--json"], ["--hidden-size", "8", "--max-steps", "5", "-q"]):
        assert user_error(train("--out", "A", *args)) == (
            "run folder 'A' already holds a run (config.yaml, metrics.jsonl, last.npz, "
            "best.npz); continue it with --resume A, or pass --overwrite to delete it and start "
            "over"
        )
    assert run_bytes(Path("A")) == before  # not a byte changed
    assert ckpt_io.load("A/last.npz").step == 20


@pytest.mark.parametrize("left", [["config.yaml"], ["best.npz"], ["metrics.jsonl", "best.npz"]])
def test_any_file_of_a_run_makes_a_folder_a_run(train, left):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    for p in Path("A").iterdir():
        if p.name not in left:
            p.unlink()
    before = run_bytes(Path("A"))
    assert user_error(train("--out", "A", "-q")) == (
        f"run folder 'A' already holds a run ({', '.join(left)}) with no last.npz to --resume "
        "from; pass --overwrite to delete it and start over, or another --out"
    )
    assert run_bytes(Path("A")) == before


def test_overwrite_starts_over(train):
    ok(train("--out", "A", "-q", "--max-steps", "30"))
    Path("A/notes.txt").write_text("mine")  # not a file of the run: kept
    result = ok(
        train("--out", "A", "--overwrite", "--max-steps", "5", "--eval-every", "0", "--json")
    )
    assert json.loads(result.stdout)["steps"] == 5
    assert train_steps(Path("A")) == [1, 2, 3, 4, 5]  # the old run's lines are gone
    assert ckpt_io.load("A/last.npz").step == 5
    assert ckpt_io.load("A/best.npz").step == 5  # not the old run's best
    assert Path("A/notes.txt").read_text() == "mine"


def test_overwrite_deletes_nothing_when_the_new_run_fails_its_checks(train):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    before = run_bytes(Path("A"))
    message = user_error(train("--out", "A", "--overwrite", "--seq-length", "5000", "-q"))
    assert "too short for one chunk" in message
    assert run_bytes(Path("A")) == before


def test_a_folder_without_a_run_is_used_as_it_is(train):
    Path("A").mkdir()
    Path("A/notes.txt").write_text("mine")
    ok(train("--out", "A", "-q", "--max-steps", "5"))
    assert ckpt_io.load("A/last.npz").step == 5 and Path("A/notes.txt").read_text() == "mine"


def test_resume_into_another_folder_that_holds_a_run(train):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    ok(train("--out", "B", "-q", "--max-steps", "20"))
    before = run_bytes(Path("B"))
    assert user_error(train("--resume", "A", "--out", "B", "-q", "--max-steps", "15")) == (
        "run folder 'B' already holds a run (config.yaml, metrics.jsonl, last.npz, best.npz); "
        "continue it with --resume B, or pass --overwrite to delete it and start over"
    )
    assert run_bytes(Path("B")) == before
    ok(train("--resume", "A", "--out", "B", "--overwrite", "-q", "--max-steps", "15"))
    assert ckpt_io.load("B/last.npz").step == 15 and ckpt_io.load("A/last.npz").step == 10
    assert train_steps(Path("B")) == list(range(11, 16))


def test_overwrite_with_resume_of_the_same_run_is_refused(train):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    before = run_bytes(Path("A"))
    for args in (["--resume", "A"], ["--resume", "A/last.npz", "--out", "A"]):
        assert user_error(train(*args, "--overwrite", "-q", config=None)) == (
            "--overwrite would delete the run that --resume continues; give one of them"
        )
    assert run_bytes(Path("A")) == before


# ---- leftovers ----


@pytest.mark.parametrize("out", [[], ["--out", "new/run"]])
def test_a_run_that_fails_its_checks_leaves_no_folder(train, out):
    # the corpus is too short for one chunk: refused once the run folder is locked
    message = user_error(train(*out, "-q", "--seq-length", "5000"))
    assert "too short for one chunk" in message
    assert not Path("runs").exists() and not Path("new").exists()


def test_a_folder_that_was_there_stays(train):
    Path("A").mkdir()
    assert "too short" in user_error(train("--out", "A", "-q", "--seq-length", "5000"))
    assert Path("A").is_dir()
    ok(train("--out", "A", "-q", "--max-steps", "3"))  # and holds no run


def test_a_corpus_dated_in_the_future_gets_a_trusted_cache(tmp_path, monkeypatch):
    """A corpus whose mtime is in the future (an archive from a machine whose clock is ahead,
    `touch -d tomorrow`) is trusted once its ctime, which the kernel sets, is old enough."""
    from charrnn import cache

    corpus = write_corpus(tmp_path, TEXT[:2000])
    future = (time.time() + 86400) * 1e9
    os.utime(corpus, ns=(int(future), int(future)))
    monkeypatch.setattr(cache, "TRUST_AFTER_NS", 10_000_000)  # 10 ms: a short test
    time.sleep(0.05)
    first = json.loads(cli("prepare", corpus, "--json").stdout)
    second = json.loads(cli("prepare", corpus, "--json").stdout)
    assert (first["reused"], second["reused"]) == (False, True)


# ---- reproducibility ----


def test_same_seed_gives_identical_checkpoints(train):
    for out in ("R1", "R2"):
        ok(train("--out", out, "-q", "--max-steps", "20", "--rng-seed", "7"))
    ok(train("--out", "R3", "-q", "--max-steps", "20", "--rng-seed", "8"))
    r1, r2, r3 = (arrays(Path(out, "last.npz")) for out in ("R1", "R2", "R3"))
    assert_same_arrays(r1, r2)
    assert_same_arrays(arrays(Path("R1/best.npz")), arrays(Path("R2/best.npz")))
    for k in ("Wxh", "Whh", "Why"):
        assert not np.array_equal(r1[k], r3[k])


def _worker_processes() -> list[int]:
    """The pids of this process's gradient worker processes (charrnn/gradproc.py)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            ppid = next(ln for ln in status.read_text().splitlines() if ln.startswith("PPid:"))
            cmdline = (status.parent / "cmdline").read_bytes()
        except (OSError, StopIteration):
            continue  # a process that ended meanwhile
        if int(ppid.split()[1]) == os.getpid() and b"charrnn.gradproc" in cmdline:
            found.append(int(status.parent.name))
    return found


class _InterruptAtAndLook(_InterruptAt):
    """_InterruptAt that also notes the worker processes alive at each step."""

    def __init__(self, step: int):
        super().__init__(step)
        self.seen: set[int] = set()

    def step(self, metrics: dict) -> None:
        self.seen.update(_worker_processes())
        super().step(metrics)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_run_big_enough_for_worker_processes_resumes_bitwise_and_leaves_none(tmp_path):
    """A step big enough for parallel.py to give a share to a worker process (GRU of 128, 2
    workers): the process is there while the run goes, gone when it ends (Ctrl-C included),
    and the run stopped at step 4 and resumed to 8 equals the straight one."""
    corpus = write_corpus(tmp_path)
    settings = dict(
        cell="gru", hidden_size=128, seq_length=32, batch_size=24, workers=2, rng_seed=1,
        max_steps=8, eval_every=4, checkpoint_every=4, dropout=0.1,
    )  # fmt: skip
    straight, split_run = tmp_path / "straight", tmp_path / "split"
    charrnn.train(corpus, out=straight, **settings)
    assert _worker_processes() == []
    look = _InterruptAtAndLook(4)
    stopped = charrnn.train(corpus, out=split_run, reporter=look, **settings)
    assert (stopped.steps, stopped.stopped_by) == (4, "signal")
    assert len(look.seen) == 1 and _worker_processes() == []
    charrnn.train(corpus, resume=split_run)
    assert_same_run(straight, split_run)
    assert _worker_processes() == []
