"""Tests of `charrnn train` through typer's CliRunner (and two real processes): the run folder,
output streams, config precedence, bad inputs, NaN handling, bitwise resume, reproducibility
and Ctrl-C."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from charrnn import checkpoint as ckpt_io
from charrnn.cli import app
from charrnn.errors import CharRNNError

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
TIMING_KEYS = {"chars_per_sec", "elapsed"}


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


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def assert_same_arrays(a: dict, b: dict, keys=None) -> None:
    keys = sorted(a) if keys is None else keys
    assert sorted(a) == sorted(b)
    for k in keys:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"'{k}' differs"


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
    assert summary["seconds"] < 5


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


# ---- bad inputs: one `Error:` line, exit 1, no traceback ----


def user_error(result, message: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr, result.exception)
    assert result.stderr == f"Error: {message}\n"
    assert result.stdout == ""
    assert isinstance(result.exception, SystemExit)


def test_missing_corpus(train):
    user_error(train(corpus="missing.txt"), "file 'missing.txt' not found; check the path")


def test_corpus_is_a_directory(train):
    Path("adir").mkdir()
    user_error(train(corpus="adir"), "'adir' is a directory; give a text file")


def test_empty_corpus(train):
    Path("empty.txt").write_text("")
    user_error(
        train(corpus="empty.txt"),
        "'empty.txt' is empty; give a text with at least a few hundred characters",
    )


def test_corpus_too_short_for_one_chunk(train):
    user_error(
        train("--batch-size", "64", "--seq-length", "50"),
        "the training text has 1170 characters, too short for one chunk of "
        "batch_size x seq_length = 64 x 50 (needs 3201); use a longer corpus or lower "
        "--batch-size / --seq-length",
    )


def test_invalid_utf8_names_the_byte_offset(train):
    Path("bad.txt").write_bytes(b"hello\xffworld " * 50)
    user_error(
        train(corpus="bad.txt"),
        "'bad.txt' is not valid utf-8 at byte offset 5; pass --encoding (e.g. latin-1) "
        "or --decode-errors replace",
    )


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


def test_unknown_set_key_suggests_the_closest(train):
    user_error(
        train("--set", "hiden_size=3"),
        "unknown config key 'hiden_size' (did you mean 'hidden_size'?) (in --set)",
    )


def test_set_without_equals(train):
    user_error(
        train("--set", "hidden_size"),
        "--set 'hidden_size': expected the form key=value, e.g. --set hidden_size=256",
    )


def test_invalid_yaml_config_names_the_line(train):
    Path("bad.yaml").write_text("hidden_size: 16\nseq_length: 8\n\tbatch_size: 2\n")
    user_error(
        train(config=Path("bad.yaml")),
        "config file 'bad.yaml' is not valid YAML at line 3: found character '\\t' that "
        "cannot start any token; fix the file",
    )


def test_config_top_level_must_be_a_mapping(train):
    Path("list.yaml").write_text("- 1\n- 2\n")
    user_error(
        train(config=Path("list.yaml")),
        "config file 'list.yaml': top level must be a mapping of keys to values, got a list",
    )


def test_missing_config_file(train):
    user_error(
        train(config=Path("none.yaml")),
        "config file 'none.yaml' not found; check the --config path",
    )


def test_negative_hidden_size_names_key_and_value(train):
    user_error(
        train("--hidden-size", "-5"),
        "config key 'hidden_size': got -5, expected an integer >= 1 (in command-line options)",
    )


def test_unknown_optimizer(train):
    user_error(
        train("--optimizer", "adamw"),
        "config key 'optimizer': got 'adamw', expected one of adam, rmsprop, adagrad, sgd "
        "(in command-line options)",
    )


def test_usage_errors_exit_2(runner, train):
    assert train("--no-such-flag").exit_code == 2
    assert runner.invoke(app, ["train"]).exit_code == 2


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
    user_error(
        result,
        "the loss became nan at step 22: training diverged; lower "
        "--learning-rate (now 1e+38) or set --grad-clip 5; last.npz from step 20 "
        "is kept",
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
    user_error(
        result,
        "the weights became NaN or infinite at step 1: training diverged; lower "
        "--learning-rate (now 1e+38) or set --grad-clip 5; no checkpoint was "
        "written",
    )
    assert not Path("run/last.npz").exists()


# ---- resume ----


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_is_bitwise_identical_to_a_straight_run(train, workers):
    w = f"workers={workers}"
    ok(train("--out", "A", "-q", "--max-steps", "30", "--set", w))
    assert ckpt_io.load("A/last.npz").step == 30
    ok(train("--resume", "A", "-q", "--max-steps", "60", config=None))
    ok(train("--out", "B", "-q", "--max-steps", "60", "--set", w))
    # 60 steps cross an epoch (36 steps) after the resume: the carried state resets there
    a, b = arrays(Path("A/last.npz")), arrays(Path("B/last.npz"))
    assert int(a["step"]) == 60 and any(k.startswith("opt.") for k in a) and "h_carry" in a
    assert_same_arrays(a, b)  # weights, optimizer state, h_carry, step, config, rng, best val
    assert_same_arrays(arrays(Path("A/best.npz")), arrays(Path("B/best.npz")))
    assert without_timing(metrics(Path("A"))) == without_timing(metrics(Path("B")))


def test_resume_from_an_odd_step_continues_the_same_training(train):
    # stopping at 25 adds a validation at 25 that the straight run does not do; the weights,
    # optimizer state and carried state must not notice
    ok(train("--out", "A", "-q", "--max-steps", "25"))
    ok(train("--resume", "A", "-q", "--max-steps", "60", config=None))
    ok(train("--out", "B", "-q", "--max-steps", "60"))
    a, b = arrays(Path("A/last.npz")), arrays(Path("B/last.npz"))
    assert_same_arrays(a, b, keys=[k for k in a if k not in ("train_state",)])

    records = metrics(Path("A"))
    steps = [r["step"] for r in records if "train_loss" in r]
    assert steps == list(range(1, 61))  # no step lost or repeated
    vals = [r for r in records if r["val_loss"] is not None]
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
    user_error(
        train("--resume", "A", "--hidden-size", "32", config=None),
        "cannot change hidden_size when resuming; start a new run instead",
    )
    assert Path("A/last.npz").read_bytes() == before


def test_resume_with_another_corpus_is_refused(train):
    ok(train("--out", "A", "-q", "--max-steps", "10"))
    Path("other.txt").write_text("completely different text, longer than one chunk. " * 20)
    user_error(
        train("--resume", "A", corpus="other.txt", config=None),
        "the corpus's characters differ from the checkpoint's vocabulary; resume with "
        "the corpus the run was trained on",
    )


def test_resume_from_a_missing_checkpoint(train):
    user_error(
        train("--resume", "nothere", config=None), "checkpoint 'nothere' not found; check the path"
    )


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


# ---- Ctrl-C in a real process ----


def saved_step(path: str) -> int:
    try:
        return ckpt_io.load(path).step
    except CharRNNError:  # not written yet
        return -1


def test_ctrl_c_saves_last_and_exits_130_then_resumes(runner, corpus_file, tiny_config):
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        str(corpus_file),
        "--config",
        str(tiny_config),
        "--max-steps",
        "0",
        "--max-time",
        "120",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "5",
        "--out",
        "run",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while saved_step("run/last.npz") < 5:  # the loop runs, with the handler in place
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert out == "" and "Traceback" not in err
    step = ckpt_io.load("run/last.npz").step
    assert step >= 5
    assert (
        f"Interrupted at step {step}; saved run/last.npz; continue with: charrnn train "
        f"{corpus_file} --resume run" in err
    )

    ok(
        runner.invoke(
            app,
            [
                "train",
                str(corpus_file),
                "--resume",
                "run",
                "--max-steps",
                str(step + 10),
                "--max-time",
                "0",
                "-q",
            ],
        )
    )
    assert ckpt_io.load("run/last.npz").step == step + 10
