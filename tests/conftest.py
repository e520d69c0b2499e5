"""Shared fixtures. Every test runs in its own empty tmp_path as the current directory, so a
default run folder (runs/...) or any relative path a test writes never lands in the repository,
without $CHARRNN_CHECKPOINT, so the default checkpoint is the one the test made, and with
$XDG_CACHE_HOME in tmp_path (and no $CHARRNN_CACHE_DIR), so the id cache is the test's own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers import PERIOD, TEXT, cli, write_corpus
from typer.testing import CliRunner

from charrnn.cli import app

PERIODIC_TEXT = "hello world! " * 100  # 1,300 characters, 9 distinct

# small enough that a run of 60 steps takes a fraction of a second
TINY_CONFIG = """\
hidden_size: 16
seq_length: 8
batch_size: 4
learning_rate: 0.01
max_steps: 60
eval_every: 10
checkpoint_every: 10
sample_every: 0
val_fraction: 0.1
rng_seed: 1
"""


@pytest.fixture(scope="session", autouse=True)
def session_cache_home(tmp_path_factory):
    """The session's fixtures (overfit, good_run) train too: their cache is never the home's."""
    with pytest.MonkeyPatch.context() as mp:
        # matplotlib keeps its font cache where it always has: under the XDG cache folder
        # that this fixture moves, a fresh cache per test would be rebuilt (and written) each time
        home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
        mp.setenv("MPLCONFIGDIR", os.environ.get("MPLCONFIGDIR", os.path.join(home, "matplotlib")))
        mp.delenv("CHARRNN_CACHE_DIR", raising=False)
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache-home")))
        yield


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARRNN_CHECKPOINT", raising=False)  # a user's pin would choose models
    # the id cache goes to the user's cache folder: this test's, never the real home's
    monkeypatch.delenv("CHARRNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-home"))
    # and its fallback, <tmp>/charrnn-cache, is the test's too (`charrnn cache clear` clears it)
    tmp = tmp_path.with_name(tmp_path.name + "-tmp")  # beside it: tests list tmp_path
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp_path


@pytest.fixture
def periodic_text() -> str:
    return PERIODIC_TEXT


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    """A short periodic text: an RNN of 16 units learns it in a few hundred steps."""
    path = tmp_path / "corpus.txt"
    path.write_text(PERIODIC_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG, encoding="utf-8")
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="session")
def overfit(tmp_path_factory) -> Path:
    """best.npz of a model trained on PERIOD * 200 until it predicts it almost surely: greedy
    decoding reproduces the text and eval scores it near zero (test_sample, test_eval)."""
    folder = tmp_path_factory.mktemp("overfit")
    corpus = folder / "periodic.txt"
    corpus.write_text(PERIOD * 200, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        result = CliRunner().invoke(
            app,
            [
                "train",
                str(corpus),
                "--hidden-size",
                "16",
                "--seq-length",
                "16",
                "--batch-size",
                "4",
                "--learning-rate",
                "0.05",
                "--max-steps",
                "300",
                "--eval-every",
                "100",
                "--rng-seed",
                "1",
                "--set",
                "val_fraction=0.1",
                "--set",
                "reset_noise=0",  # no random starts: it is to predict its text almost surely
                "--out",
                str(folder / "run"),
                "-q",
            ],
        )
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.npz"


@pytest.fixture(scope="session")
def good_run(tmp_path_factory) -> tuple[Path, Path]:
    """(corpus, run folder) of a 4-step run with validation: its last.npz, with optimizer state,
    h_carry and train_state, is the valid checkpoint that bad ones are made from."""
    folder = tmp_path_factory.mktemp("good")
    corpus = write_corpus(folder, TEXT[:2000])
    result = cli(
        "train",
        corpus,
        "--hidden-size",
        8,
        "--seq-length",
        8,
        "--batch-size",
        2,
        "--max-steps",
        4,
        "--eval-every",
        2,
        "--checkpoint-every",
        2,
        "--rng-seed",
        3,
        "--out",
        folder / "run",
        "-q",
    )
    assert result.exit_code == 0, result.output
    return corpus, folder / "run"
