"""Hostile values and requests bigger than the machine (issue 11, categories 2 and 3), through
the real command line: each is refused with one `Error:` line in bounded time and memory.

Where a regression could take gigabytes (a YAML alias bomb, a model of 10^10 units), the command
runs in its own process under RLIMIT_AS and a timeout, so this suite never does. Random hostile
values are fuzzed in test_fuzz.py; the config module's own rules are test_config.py's; crafted
checkpoints are test_checkpoint.py's.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXT, TINY, arrays, cli, time_limit, user_error, write_corpus

from charrnn.config import Config
from charrnn.data import build_corpus
from charrnn.memory import memory_limit, show_bytes
from charrnn.state import estimate_bytes
from charrnn.train import train

MAX_TIME = ["--max-time", "5"]  # a run that a regression lets start still ends
LIMIT = 1536 << 20  # address space of a bounded command: Python, NumPy and a small model fit

BOMB = (  # 9 levels of 9 references: 387 million strings once expanded, in 300 bytes
    "[&a [x,x,x,x,x,x,x,x,x], "
    + ", ".join(
        f"&{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "]"
)


def bounded(args, cwd: Path, memory: int = LIMIT, timeout: float = 60):
    """`python -m charrnn ARGS` in its own process, limited to `memory` bytes of address space
    and `timeout` seconds; (exit code, stderr, seconds)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "charrnn", *map(str, args)],
        cwd=cwd,
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stderr, time.monotonic() - start


def one_error(code: int, stderr: str) -> str:
    assert code == 1 and "Traceback" not in stderr, stderr[-2000:]
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr[-2000:]
    return lines[0].removeprefix("Error: ")


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path, TEXT[:3000])


# ---- category 2: values that pass a first look, then crash or eat memory ----


def test_an_alias_bomb_in_a_config_file_is_refused_at_once(tmp_path, corpus):
    """A 300-byte file that expands to hundreds of millions of strings (it took 1.6 GB and 40 s
    before any error) is refused in a moment, in a process that may not use 1.5 GB."""
    config = tmp_path / "bomb.yaml"
    config.write_text(f"hidden_size: {BOMB}\n")
    code, stderr, seconds = bounded(["train", corpus, "--config", config, *TINY], tmp_path)
    assert one_error(code, stderr) == (
        f"config file '{config}' is not valid YAML at line 1: aliases (*name) are not allowed "
        "in a config; fix the file"
    )
    assert seconds < 30


def test_an_alias_bomb_in_a_set_item_is_refused_at_once(tmp_path, corpus):
    code, stderr, seconds = bounded(["train", corpus, *TINY, "--set", f"dropout={BOMB}"], tmp_path)
    message = one_error(code, stderr)
    assert message.startswith("--set 'dropout=[&a [x,x,x,x,x,x,x,x,x], &b")
    assert message.endswith(
        ": the value is not valid YAML (aliases (*name) are not allowed in a config); quote it"
    )
    assert len(message) < 200 and seconds < 30


@pytest.mark.parametrize(
    "yaml_text, says",
    [
        ("hidden_size: " + "9" * 5000, "got an integer written with 5,000 characters"),
        ("rng_seed: 0x" + "f" * 100_000, "got an integer written with 100,002 characters"),
        ("max_steps: 99999999999999999999", "got 99999999999999999999, expected an integer"),
        ("hidden_size: " + "[" * 5000 + "]" * 5000, "lists or mappings nested more than 32 deep"),
        ("max_epochs: 1.0e+308", "got 1e+308, expected a number >= 0 and <= 1e+12"),
        ('encoding: "\\ud800"', "got '\\ud800', expected a text encoding"),
        ('encoding: "utf\\0-8"', "got 'utf\\x00-8', expected a text encoding"),
        ('optimizer: "\\ud83d\\ude00"', "got '\\ud83d\\ude00', expected one of adam"),
        ("workers: 1000000", "got 1000000, expected an integer >= 0 and <= 1,024"),
        ("? [1, 2]\n: 3", "not valid YAML at line 1: found unhashable key"),
        ("? 0x" + "f" * 10_000 + "\n: 1", "unknown config key an integer written with 10,002"),
    ],
)
def test_hostile_values_in_a_config_file(tmp_path, corpus, yaml_text, says):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text + "\n")
    with time_limit(10):
        result = cli("train", corpus, "--config", config, *TINY, *MAX_TIME, "--out", tmp_path / "r")
    message = user_error(result)
    assert says in message and len(message) < 250 + len(str(config)), message[:500]


@pytest.mark.parametrize(
    "flag, value, says",
    [
        ("--rng-seed", "9" * 4000, "got an integer of about 4,000 digits"),
        ("--max-steps", str(2**64), "got 18446744073709551616, expected"),
        ("--max-epochs", "1e308", "got 1e+308, expected a number >= 0 and <= 1e+12"),
        ("--encoding", "\udcff", "got '\\udcff', expected a text encoding"),
        ("--num-layers", "100000", "got 100000, expected an integer >= 1 and"),
    ],
)
def test_hostile_values_in_flags(tmp_path, corpus, flag, value, says):
    with time_limit(10):
        result = cli("train", corpus, *TINY, *MAX_TIME, flag, value, "--out", tmp_path / "run")
    assert result.exit_code in (1, 2) and "Traceback" not in result.output, result.output[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and says in errors[0] and len(errors[0]) < 300, result.stderr[:500]


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("hidden_size", 10**4000, "got an integer of about 4,000 digits"),
        ("max_epochs", 1e308, "got 1e+308, expected a number >= 0 and <= 1e+12"),
        ("dropout", [[[[[[1]]]]]], "got [[[[...]]]], expected a number"),
        ("encoding", "\ud800", "got '\\ud800', expected a text encoding"),
        ("x" * 10_000, 1, "unknown config key 'xxxxxxxx"),
    ],
)
def test_hostile_values_in_a_checkpoints_config(good_run, tmp_path, key, value, says):
    """A checkpoint's saved config is JSON: any of its values is refused on resume, briefly."""
    corpus, run = good_run
    contents = arrays(run / "last.npz")
    config = json.loads(str(contents["config"]))
    config[key] = value
    contents["config"] = np.array(json.dumps(config))
    path = tmp_path / "edited.npz"
    np.savez(path, **contents)
    with time_limit(10):
        result = cli("train", corpus, "--resume", path, "--out", tmp_path / "r", "-q")
    message = user_error(result)
    assert message.startswith(f"'{path}' holds an invalid config (")
    assert says in message and len(message) < 300 + len(str(path)), message[:500]


# ---- category 3: requests bigger than the machine ----


def test_a_hidden_size_of_ten_billion_is_refused_with_an_estimate(tmp_path, corpus):
    """'array is too big' after seconds, before: now the estimate and what to lower."""
    code, stderr, seconds = bounded(
        ["train", corpus, *TINY, "--hidden-size", 10_000_000_000, "--out", "run"], tmp_path
    )
    message = one_error(code, stderr)
    assert re.fullmatch(
        r"training a 1-layer rnn of hidden_size 10000000000 with batch_size 2 and seq_length 8 "
        r"over 61 characters needs about \d\.\de\+21 bytes of memory, more than the "
        r"\d\.\d GB this process can use; lower hidden_size or num_layers",
        message,
    ), message
    assert seconds < 30


def test_a_batch_bigger_than_memory_is_refused_with_what_to_lower(tmp_path):
    corpus = write_corpus(tmp_path, TEXT * 25)  # 200,000 characters
    args = ["--cell", "lstm", "--hidden-size", 512, "--batch-size", 2000, "--seq-length", 90]
    code, stderr, _ = bounded(["train", corpus, *args, "--out", "run", "-q"], tmp_path)
    message = one_error(code, stderr)
    assert message.startswith("training a 1-layer lstm of hidden_size 512 with batch_size 2000")
    assert " GB of memory, more than the " in message
    assert message.endswith("this process can use; lower batch_size or seq_length")
    assert not (tmp_path / "run" / "last.npz").exists()


def test_a_model_that_fits_the_machine_but_not_the_process(tmp_path, corpus):
    """Under an address-space limit the estimate is checked against what is left of it."""
    args = ["--hidden-size", 8000, "--set", "dtype=float64", "--out", "run", "-q"]
    code, stderr, _ = bounded(["train", corpus, *TINY, *args], tmp_path, memory=1 << 30)
    assert one_error(code, stderr).endswith(
        "this process can use; lower hidden_size or num_layers, or dtype float32"
    )


@pytest.mark.parametrize(
    "settings",
    [
        dict(hidden_size=128, batch_size=16, seq_length=32),
        dict(cell="lstm", num_layers=2, hidden_size=96, batch_size=8, seq_length=40, dropout=0.3),
        dict(cell="gru", hidden_size=256, batch_size=4, seq_length=50, dtype="float64"),
    ],
)
def test_the_estimate_bounds_what_training_holds(tmp_path, settings):
    """The estimate is at least what three steps of training hold (measured by tracemalloc,
    which sees NumPy's allocations), and not many times more: it refuses too much, never a
    run that fits."""
    corpus = build_corpus(TEXT)
    cfg = Config(
        **settings,
        max_steps=3,
        eval_every=0,
        val_fraction=0,
        rng_seed=0,
        workers=2,
    )
    tracemalloc.start()
    try:
        train(cfg, corpus, tmp_path / "run")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    model, step = estimate_bytes(cfg, len(corpus.vocab))
    assert peak <= model + step <= 3 * peak, (peak, model, step)


def test_an_mpi_rank_is_estimated_for_its_share_of_the_streams():
    # each of K ranks computes B / K streams: its activations are 1 / K of one process's
    cfg = Config(hidden_size=64, batch_size=64, seq_length=100, workers=1)
    model_1, step_1 = estimate_bytes(cfg, 65)
    model_2, step_2 = estimate_bytes(cfg, 65, ranks=2)
    assert model_2 == model_1
    assert 0.45 * step_1 < step_2 < 0.55 * step_1


def test_memory_limit_and_sizes_in_words():
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < memory_limit() <= physical
    sizes = [5, 1234, 1_234_567, 25_300_000_000, 7 * 10**12, 7.6e21, 10**400, 9.99e20]
    assert [show_bytes(int(n)) for n in sizes] == [
        "5 bytes",
        "1.2 kB",
        "1.2 MB",
        "25.3 GB",
        "7.0 TB",
        "7.6e+21 bytes",
        "1.0e+400 bytes",  # past any float
        "1.0e+21 bytes",
    ]
