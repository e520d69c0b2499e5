"""input_noise and reset_noise: input characters replaced by random ones in training, the
targets kept (train._noisy_inputs): anywhere at a rate, or at the start of streams just reset.
The draws come from the run's generator, so a resumed run is the run that never stopped, bit
for bit; each changes the training; 0 draws nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from helpers import TEXT, arrays, assert_same_arrays, cli, metrics, without_timing

from charrnn.config import Config
from charrnn.state import TrainState
from charrnn.train import _noisy_inputs

SMALL = ["--hidden-size", "12", "--seq-length", "8", "--batch-size", "4", "--rng-seed", "3"]


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def test_resume_with_input_noise_is_bitwise_identical(tmp_path):
    """Stopped at step 10 and resumed to 35 (past an epoch's end, with dropout, resets and
    two workers drawing from the same generator) is the run that went to 35 at once."""
    corpus = tmp_path / "short.txt"
    corpus.write_text(TEXT[:1000], encoding="utf-8")
    args = [*SMALL, "--cell", "gru", "--num-layers", "2", "--dropout", "0.1"]
    args += ["--eval-every", "5", "--checkpoint-every", "5", "-q", "--set", "input_noise=0.1"]
    args += ["--set", "reset_noise=5"]
    args += ["--set", "reset_prob=0.3", "--set", "workers=2"]
    ok(cli("train", corpus, *args, "--max-steps", "10", "--out", "A"))
    ok(cli("train", corpus, "--resume", "A", "--max-steps", "35", "-q"))
    ok(cli("train", corpus, *args, "--max-steps", "35", "--out", "B"))
    assert_same_arrays(arrays(Path("A/last.npz")), arrays(Path("B/last.npz")))
    assert without_timing(metrics(Path("A"))) == without_timing(metrics(Path("B")))
    for key in ("input_noise", "reset_noise"):
        ok(cli("train", corpus, *args, "--max-steps", "35", "--set", f"{key}=0", "--out", key))
        assert not np.array_equal(
            arrays(Path(key, "last.npz"))["Wxh"], arrays(Path("B/last.npz"))["Wxh"]
        )


def test_noisy_inputs_replace_about_the_rate_and_leave_the_batch_alone():
    cfg = Config.from_dict({"input_noise": 0.2, "rng_seed": 0, "batch_size": 50})
    s = TrainState.fresh(cfg, vocab_size=7)
    X = np.arange(100 * 50).reshape(100, 50) % 7  # (T, B)
    before = X.copy()
    noisy = _noisy_inputs(s, cfg, X, 7, np.zeros(50, bool))
    assert np.array_equal(X, before)  # the batch (its targets' source) is untouched
    changed = (noisy != X).mean()
    # a replaced id equals the old one with chance 1/7: 0.2 * 6/7 = 0.171 are different
    assert 0.15 < changed < 0.19
    assert noisy.min() >= 0 and noisy.max() < 7
    state = s.rng.bit_generator.state
    off = Config.from_dict({"rng_seed": 0, "reset_noise": 0})
    assert _noisy_inputs(s, off, X, 7, np.ones(50, bool)) is X
    assert s.rng.bit_generator.state == state  # nothing drawn


def test_reset_noise_touches_only_the_start_of_reset_streams():
    cfg = Config.from_dict({"reset_noise": 10, "rng_seed": 0, "batch_size": 40})
    s = TrainState.fresh(cfg, vocab_size=50)
    X = np.zeros((30, 40), np.intp)  # (T, B): all id 0, so a replaced id shows (49 in 50)
    reset = np.arange(40) % 2 == 0
    noisy = _noisy_inputs(s, cfg, X, 50, reset)
    assert not noisy[:, ~reset].any()  # streams carried on: untouched
    assert not noisy[10:].any()  # never past the first reset_noise inputs
    assert noisy[:, reset].any()
    assert _noisy_inputs(s, cfg, X, 50, np.zeros(40, bool)) is X  # no stream reset


def test_a_run_saved_before_the_noise_keys_resumes_without_noise(tmp_path):
    """A checkpoint whose config lacks reset_noise and input_noise (written before they
    existed) resumes training as it was trained: with both 0, not with the new default."""
    corpus = tmp_path / "short.txt"
    corpus.write_text(TEXT[:1000], encoding="utf-8")
    ok(cli("train", corpus, *SMALL, "--max-steps", "2", "-q", "--out", "old"))
    a = arrays(Path("old/last.npz"))
    config = json.loads(str(a["config"]))
    del config["reset_noise"], config["input_noise"]
    a["config"] = np.array(json.dumps(config))
    np.savez(Path("old/last.npz"), **a)
    ok(cli("train", corpus, "--resume", "old", "--max-steps", "4", "-q"))
    resumed = yaml.safe_load(Path("old/config.yaml").read_text())
    assert resumed["reset_noise"] == 0 and resumed["input_noise"] == 0
    assert Config().reset_noise == 40  # while a new run gets the default
