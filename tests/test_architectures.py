"""Every cell, stacked layers and dropout through the real CLI: train, resume bitwise, sample,
eval exactly, and checkpoints of format 2 (and format 1 files of charrnn 0.1 still work)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TEXT, arrays, assert_same_arrays, cli, metrics, without_timing

from charrnn import checkpoint as ckpt_io
from charrnn.evaluate import total_loss
from charrnn.model import forward, log_softmax_loss, zero_state

DATA = REPO / "tests" / "data"
SMALL = ["--hidden-size", "12", "--seq-length", "8", "--batch-size", "4", "--rng-seed", "3"]
ARCHS = {
    "rnn, 2 layers, dropout": ["--cell", "rnn", "--num-layers", "2", "--dropout", "0.2"],
    "lstm": ["--cell", "lstm"],
    "lstm, 2 layers, dropout": ["--cell", "lstm", "--num-layers", "2", "--dropout", "0.3"],
    "gru, 2 layers, dropout": ["--cell", "gru", "--num-layers", "2", "--dropout", "0.1"],
}


def ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT[:3000], encoding="utf-8")
    return path


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_is_bitwise_identical_for_every_cell(arch, tmp_path):
    """Dropout masks and stream resets come from the run's generator: a run stopped at step 10
    and resumed to 35 is the run that went to 35 at once (an epoch is 29 steps)."""
    corpus = tmp_path / "short.txt"
    corpus.write_text(TEXT[:1000], encoding="utf-8")
    args = [*SMALL, *ARCHS[arch], "--eval-every", "5", "--checkpoint-every", "5", "-q"]
    args += ["--set", "reset_prob=0.3", "--set", "workers=2"]
    ok(cli("train", corpus, *args, "--max-steps", "10", "--out", "A"))
    ok(cli("train", corpus, "--resume", "A", "--max-steps", "35", "-q"))
    ok(cli("train", corpus, *args, "--max-steps", "35", "--out", "B"))
    assert_same_arrays(arrays(Path("A/last.npz")), arrays(Path("B/last.npz")))
    assert_same_arrays(arrays(Path("A/best.npz")), arrays(Path("B/best.npz")))
    assert without_timing(metrics(Path("A"))) == without_timing(metrics(Path("B")))


def test_dropout_and_resets_change_the_training(corpus):
    """The options do something: each changes the weights a run ends with."""
    base = [*SMALL, "--cell", "lstm", "--max-steps", "6", "-q"]
    ok(cli("train", corpus, *base, "--out", "plain"))
    ok(cli("train", corpus, *base, "--dropout", "0.5", "--out", "dropout"))
    ok(cli("train", corpus, *base, "--set", "reset_prob=1", "--out", "reset"))
    plain = arrays(Path("plain/last.npz"))["Wxh"]
    for other in ("dropout", "reset"):
        assert not np.array_equal(arrays(Path(other, "last.npz"))["Wxh"], plain), other


@pytest.mark.parametrize(
    "cell, layers, gates, states", [("rnn", 1, 1, 1), ("lstm", 2, 4, 2), ("gru", 3, 3, 1)]
)
def test_checkpoint_names_every_array_per_layer(cell, layers, gates, states, corpus):
    ok(cli("train", corpus, *SMALL, "--cell", cell, "--num-layers", layers, "--max-steps", 2,
           "--out", "run", "-q"))  # fmt: skip
    a = arrays(Path("run/last.npz"))
    H, V = 12, len(set(TEXT[:3000]))
    assert a["format_version"] == 3 and a["cell"] == cell and a["num_layers"] == layers
    assert a["documents"] == "file"
    assert a["Wxh"].shape == (gates * H, V) and a["Whh"].shape == (gates * H, H)
    assert a["Why"].shape == (V, H) and a["by"].shape == (V,)
    for layer in range(1, layers):
        assert a[f"Wxh_{layer}"].shape == (gates * H, H)
        assert a[f"Whh_{layer}"].shape == (gates * H, H)
        assert a[f"bh_{layer}"].shape == (gates * H,)
    assert f"Wxh_{layers}" not in a
    assert a["h_carry"].shape == (4, layers * states * H)
    if cell == "lstm":  # the forget gate's bias starts at 1 (training moved it a little)
        assert abs(a["bh"][H : 2 * H].mean() - 1) < 0.1


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_eval_is_the_exact_single_pass_for_every_cell(cell, corpus, tmp_path):
    """eval's blocked pass equals one forward over the whole text from a zero state, plus the
    first character scored by softmax(by)."""
    ok(cli("train", corpus, *SMALL, "--cell", cell, "--num-layers", 2, "--max-steps", 20,
           "--out", "run", "-q", "--set", "dtype=float64"))  # fmt: skip
    ckpt = ckpt_io.load("run/best.npz")
    text = TEXT[3000:3600]
    ids = np.array([ckpt.vocab.index(c) for c in text if c in ckpt.vocab])
    params = ckpt.params
    loss, _, _ = forward(params, ids[:-1, None], ids[1:, None], zero_state(params, 1))
    first = log_softmax_loss(params, np.zeros((1, 12)), ids[:1])[0]
    exact = (loss * (len(ids) - 1) + first) / len(ids)
    assert total_loss(params, ids, block=64) / len(ids) == pytest.approx(exact, rel=1e-12)
    (tmp_path / "held.txt").write_text(text, encoding="utf-8")
    result = ok(cli("eval", tmp_path / "held.txt", "--checkpoint", "run", "--json"))
    assert '"loss": ' in result.stdout
    import json

    assert json.loads(result.stdout)["loss"] == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sample_every_flag_for_gated_cells(cell, corpus):
    ok(cli("train", corpus, *SMALL, "--cell", cell, "--num-layers", 2, "--max-steps", 20,
           "--out", "run", "-q"))  # fmt: skip
    base = ["sample", "--checkpoint", "run", "--seed", "ROMEO:", "--length", 40, "-q"]
    one = ok(cli(*base, "--rng-seed", 4, "--json")).stdout
    assert one == ok(cli(*base, "--rng-seed", 4, "--json")).stdout  # the same seed, same text
    many = ok(cli(*base, "--rng-seed", 4, "--num-samples", 3, "--top-k", 5, "--json")).stdout
    texts = [s["text"] for s in json.loads(many)]
    assert len(texts) == 3 and all(s.startswith("ROMEO:") for s in texts)
    greedy = ok(cli(*base, "--argmax", "--no-seed-echo")).stdout
    assert len(greedy) == 41  # 40 characters and a newline
    ok(cli(*base, "--top-p", 0.9, "--temperature", 0.7))


# ---- checkpoints of format 1 (charrnn 0.1) ----

FORMAT1 = DATA / "format1.npz"  # a 20-step vanilla RNN (hidden 8) on format1-corpus.txt
FORMAT1_EVAL = 3.2323535437054103  # charrnn 0.1's `eval format1-corpus.txt --json` loss
FORMAT1_SAMPLE = "ROMEO:h ee!odI\neM !LtMUO\n.UMlEh:EdO.fOi:L Rd\nR"  # --length 40 --rng-seed 5


def test_format1_checkpoint_loads_as_a_one_layer_rnn():
    ckpt = ckpt_io.load(FORMAT1)
    assert sorted(ckpt.params) == ["Whh", "Why", "Wxh", "bh", "by"]
    assert ckpt.h_carry.shape == (2, 8) and ckpt.step == 20
    assert "cell" not in ckpt.config  # it predates the key: read as the vanilla RNN


def test_format1_checkpoint_evaluates_and_samples_as_before():
    result = ok(cli("eval", DATA / "format1-corpus.txt", "--checkpoint", FORMAT1, "--json"))
    assert json.loads(result.stdout)["loss"] == pytest.approx(FORMAT1_EVAL, rel=1e-7)
    sample = ok(cli("sample", "--checkpoint", FORMAT1, "--seed", "ROMEO:", "--length", 40,
                    "--rng-seed", 5, "--json", "-q"))  # fmt: skip
    assert json.loads(sample.stdout) == [{"text": FORMAT1_SAMPLE, "ended": "length"}]


def test_format1_checkpoint_resumes_and_saves_format2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(FORMAT1, run / "last.npz")
    ok(cli("train", DATA / "format1-corpus.txt", "--resume", run, "--max-steps", 25, "-q"))
    a = arrays(run / "last.npz")
    assert a["format_version"] == 3 and a["step"] == 25 and a["cell"] == "rnn"
    assert math.isfinite(ckpt_io.load(run / "best.npz").train_state["best_val_loss"])


# ---- starting from a zero state ----


def longest_run(text: str) -> int:
    best = run = 1
    for a, b in zip(text, text[1:], strict=False):
        run = run + 1 if a == b else 1
        best = max(best, run)
    return best


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_a_briefly_trained_model_samples_from_a_capitalised_seed(cell, tmp_path):
    """A few hundred steps with stream resets (the default reset_prob): from the zero state
    and a speaker's name as seed, the model writes words, not one character over and over
    (`ROMEO:]]]]]]...`)."""
    corpus = tmp_path / "play.txt"
    corpus.write_text(TEXT * 2, encoding="utf-8")
    args = ["--cell", cell, "--hidden-size", 48, "--seq-length", 32, "--batch-size", 8]
    ok(cli("train", corpus, *args, "--learning-rate", 0.01, "--max-steps", 300, "--rng-seed", 1,
           "--eval-every", 100, "--out", "run", "-q"))  # fmt: skip
    assert ckpt_io.load("run/last.npz").config["reset_prob"] > 0
    for seed in ("ROMEO:", "KING HENRY:", "MENENIUS:"):
        out = ok(cli("sample", "--checkpoint", "run", "--seed", seed, "--temperature", 0.7,
                     "--rng-seed", 2, "--length", 300, "--no-seed-echo", "-q")).stdout  # fmt: skip
        assert longest_run(out) < 12 and len(set(out)) >= 10, (seed, out)
        assert sum(c.isalpha() for c in out) > 150, (seed, out)
