"""`charrnn eval` and the exact scorer behind it: agreement with a plain per-character loop,
near-zero loss of an overfit model on its own text, unknown characters, bad inputs. (A checkpoint
that does not load is refused the same way by every command: test_checkpoint.py.)"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import PERIOD, cli, usage_error, user_error

from charrnn import checkpoint as ckpt_io
from charrnn.evaluate import evaluate, total_loss
from charrnn.model import init_params

VOCAB = list(" abcde")


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A float64 model with random weights and biases, far from uniform in its predictions."""
    rng = np.random.default_rng(0)
    params = init_params(len(VOCAB), 5, rng, dtype=np.float64, init_scale=0.8)
    params["bh"] = rng.standard_normal(5) * 0.5
    params["by"] = rng.standard_normal(len(VOCAB))
    path = tmp_path / "tiny.npz"
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=VOCAB, config={}), path)
    return path


def reference_loss(params: dict, vocab: list[str], text: str) -> tuple[float, int]:
    """Mean -log p per known character, the plain way: one-hot vectors and a loop, float64.

    h starts at 0; each known character is scored by softmax(Why h + by), then read into h.
    Unknown characters are neither scored nor read.
    """
    Wxh, Whh, bh, Why, by = (
        params[k].astype(np.float64) for k in ("Wxh", "Whh", "bh", "Why", "by")
    )
    h = np.zeros(Whh.shape[0])
    total, n = 0.0, 0
    for ch in text:
        if ch not in vocab:
            continue
        c = vocab.index(ch)
        y = Why @ h + by
        total -= y[c] - math.log(np.exp(y).sum())
        x = np.zeros(len(vocab))
        x[c] = 1.0
        h = np.tanh(Wxh @ x + Whh @ h + bh)
        n += 1
    return total / n, n


def run(*args: str, input: str | bytes | None = None):
    return cli("eval", *args, input=input)


def test_eval_equals_a_plain_reference_computation(tiny, tmp_path):
    rng = np.random.default_rng(1)
    text = "".join(rng.choice(list(" abcdeXY\n"), size=9000))  # crosses two block boundaries
    (tmp_path / "held_out.txt").write_text(text, encoding="utf-8")
    result = run("held_out.txt", "--checkpoint", str(tiny), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    ref, n = reference_loss(ckpt_io.load(tiny).params, VOCAB, text)
    assert abs(got["loss"] - ref) < 1e-9
    assert got["chars"] == n
    assert got["unknown_chars"] == len(text) - n > 0
    assert set(got) == {"loss", "bpc", "perplexity", "chars", "unknown_chars"}
    assert got["bpc"] == pytest.approx(ref / math.log(2), abs=1e-9)
    assert got["perplexity"] == pytest.approx(math.exp(ref), rel=1e-9)


def test_block_size_does_not_change_the_score(tiny):
    params = ckpt_io.load(tiny).params
    ids = np.random.default_rng(2).integers(0, len(VOCAB), 1000)
    whole = total_loss(params, ids, block=4096)
    for block in (1, 7, 999, 1000):
        assert total_loss(params, ids, block=block) == pytest.approx(whole, abs=1e-9)


def test_overfit_model_scores_its_own_text_near_zero(overfit, tmp_path):
    (tmp_path / "periodic.txt").write_text(PERIOD * 200, encoding="utf-8")
    result = run("periodic.txt", "--checkpoint", str(overfit), "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["loss"] < 0.05 and got["chars"] == 1600 and got["unknown_chars"] == 0


def test_human_summary_and_stdin(overfit):
    result = run("-", "--checkpoint", str(overfit), input=PERIOD * 10)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(
        r"loss 0\.\d{4} nats/char, 0\.\d{4} bpc, perplexity 1\.\d{3} "
        r"over 80 characters\n",
        result.stdout,
    ), result.stdout
    assert result.stderr == ""


def test_default_checkpoint_is_the_latest_run(overfit, tmp_path):
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "best.npz").write_bytes(overfit.read_bytes())
    result = run("-", "--json", input="abcd")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["chars"] == 4
    assert result.stderr == (
        f"Using checkpoint {Path('runs', 'x', 'best.npz')} (step {ckpt_io.load(overfit).step}; "
        "the most recently written runs/*/best.npz; pin one with --checkpoint or "
        "CHARRNN_CHECKPOINT)\n"
    )
    assert run("-", "-q", input="abcd").stderr == ""


def test_unknown_error_refuses_unknown_characters(tiny):
    result = run("-", "--checkpoint", str(tiny), "--unknown", "error", input="abc?zz")
    assert user_error(result) == (
        "'<stdin>' has 3 characters not in the model's vocabulary ('?', 'z'); "
        "pass --unknown skip to leave them out of the score"
    )


def test_skipped_characters_are_not_fed(tiny):
    params = ckpt_io.load(tiny).params
    with_unknown = evaluate(params, VOCAB, "ab?c\nd e", unknown="skip")
    without = evaluate(params, VOCAB, "abcd e", unknown="skip")
    assert with_unknown.loss == without.loss
    assert (with_unknown.chars, with_unknown.unknown_chars) == (6, 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "'<stdin>' is empty; give a text to score"),
        (
            "xyz\n",
            "none of the characters of '<stdin>' are in the model's vocabulary; "
            "nothing to score (was the model trained on another alphabet?)",
        ),
    ],
)
def test_nothing_to_score_is_an_error(tiny, text, message):
    assert user_error(run("-", "--checkpoint", str(tiny), input=text)) == message


def test_missing_text_file_is_an_error(tiny):
    assert "nope.txt" in user_error(run("nope.txt", "--checkpoint", str(tiny)))


def test_invalid_utf8_names_the_offset_and_replace_gets_past_it(tiny, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"abc\xffde")
    assert "byte offset 3" in user_error(run("bad.txt", "--checkpoint", str(tiny)))
    replaced = run("bad.txt", "--checkpoint", str(tiny), "--decode-errors", "replace", "--json")
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["unknown_chars"] == 1  # U+FFFD is not in the vocabulary
    latin = run("bad.txt", "--checkpoint", str(tiny), "--encoding", "latin-1", "--json")
    assert json.loads(latin.stdout)["unknown_chars"] == 1  # 'ÿ'


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--decode-errors", "ignore", "got 'ignore', expected one of strict, replace"),
        ("--encoding", "bogus", "got 'bogus', expected a text encoding"),
        ("--unknown", "drop", "'drop'"),
    ],
)
def test_bad_option_values_are_usage_errors(tiny, flag, value, says):
    result = run("-", "--checkpoint", str(tiny), flag, value, input="abc")
    assert says in usage_error(result, flag)


# ---- output that is what it says ----


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON: {text}")

    return json.loads(text, parse_constant=refuse)


def huge_model(path: Path, dtype, value: float) -> Path:
    """A model whose weights pass every check of `load` (finite) but whose outputs overflow
    `dtype`: Why h sums H terms of +-value."""
    params = init_params(len(VOCAB), 8, np.random.default_rng(0), dtype=dtype)
    params["Why"] = np.full_like(params["Why"], value)
    params["Why"][::2] *= -1
    params["Wxh"] = np.full_like(params["Wxh"], value)
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=VOCAB, config={}), path)
    return path


def test_a_perplexity_beyond_a_float_is_null_with_a_reason(tmp_path, recwarn):
    # float32 outputs overflow; the score is computed again in float64, where they do not
    model = huge_model(tmp_path / "huge.npz", np.float32, 3e38)
    got = strict_json(run("-", "--checkpoint", model, "--json", input="abcde abc").stdout)
    assert got["loss"] > 1e38 and got["bpc"] == pytest.approx(got["loss"] / math.log(2))
    assert got["perplexity"] is None
    assert got["reason"] == "perplexity, exp(loss), is larger than the largest float"
    assert (got["chars"], got["unknown_chars"]) == (9, 0)
    summary = run("-", "--checkpoint", model, input="abcde abc")
    assert summary.exit_code == 0 and summary.stderr == ""
    assert "perplexity larger than the largest float over 9 characters" in summary.stdout
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_a_model_with_no_finite_score_gives_nulls_and_the_reason(tmp_path, recwarn):
    model = huge_model(tmp_path / "huge.npz", np.float64, 1e308)
    got = strict_json(run("-", "--checkpoint", model, "--json", input="abcde abc").stdout)
    assert got == {
        "loss": None,
        "bpc": None,
        "perplexity": None,
        "chars": 9,
        "unknown_chars": 0,
        "reason": "the model's outputs overflow on this text (its weights are too large)",
    }
    summary = run("-", "--checkpoint", model, input="abcde abc")
    assert summary.stdout == (
        "no finite loss over 9 characters: the model's outputs overflow on this text (its "
        "weights are too large)\n"
    )
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("dest", ["file", "-"])
def test_per_char_scores_of_an_overflowing_float32_model_are_finite(tmp_path, dest, recwarn):
    """The per-character lines come from the same pass as the score, float64 retry included:
    finite bits beside a finite bpc, in strict JSON, to a file as to stdout."""
    model = huge_model(tmp_path / "huge.npz", np.float32, 3e38)
    out = tmp_path / "chars.jsonl"
    args = ["-", "--checkpoint", model, "--per-char", out if dest == "file" else "-"]
    result = run(*args, *(["--json"] if dest == "file" else []), input="abcde abc")
    assert result.exit_code == 0
    text = out.read_text(encoding="utf-8") if dest == "file" else result.stdout
    lines = [strict_json(line) for line in text.splitlines()]
    assert "".join(line["char"] for line in lines) == "abcde abc"
    bits = [line["bits"] for line in lines]
    assert all(isinstance(b, float) and math.isfinite(b) and b >= 0 for b in bits)
    assert max(bits) > 1e38  # the overflowing outputs, scored in float64
    if dest == "file":
        score = strict_json(result.stdout)
        assert score["bpc"] == pytest.approx(sum(bits) / len(bits), rel=1e-5)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_per_char_scores_with_no_finite_value_are_null_in_the_file(tmp_path):
    model = huge_model(tmp_path / "huge.npz", np.float64, 1e308)
    out = tmp_path / "chars.jsonl"
    result = run("-", "--checkpoint", model, "--per-char", out, "--json", input="abcde abc")
    assert result.exit_code == 0 and strict_json(result.stdout)["bpc"] is None
    lines = [strict_json(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 9 and lines[0]["bits"] == pytest.approx(math.log2(6))  # from h_0 = 0
    assert all(line["bits"] is None and line["p"] is None for line in lines[1:])


def test_a_refused_text_leaves_no_per_char_file(tiny, tmp_path):
    out = tmp_path / "chars.jsonl"
    result = run("-", "--checkpoint", tiny, "--per-char", out, "--unknown", "error", input="abz")
    assert result.exit_code == 1 and "not in the model's vocabulary" in result.stderr
    assert not out.exists()


def test_an_overflow_in_a_later_block_is_scored_again_from_there(tmp_path, monkeypatch):
    """A float32 model that overflows only on some characters: the pass scores the blocks before
    in float32 and from the first overflowing block on in float64, every block exactly once."""
    from charrnn import evaluate as evaluate_module

    params = init_params(len(VOCAB), 8, np.random.default_rng(0), dtype=np.float32)
    params["Why"][:, :] = 0.0
    params["Why"][VOCAB.index("e")] = 3e38  # logits overflow after an "e" lifts h
    params["Wxh"][:, VOCAB.index("e")] = 5.0
    ids = np.array([VOCAB.index(c) for c in "abcdabcdabcdeabcd"])
    monkeypatch.setattr(evaluate_module, "BLOCK", 4)
    blocks = list(evaluate_module.score(params, ids))
    assert [b.start for b in blocks] == [0, 4, 8, 12, 16]
    assert np.array_equal(np.concatenate([b.ids for b in blocks]), ids)
    assert [b.losses.dtype for b in blocks] == [np.float32] * 3 + [np.float64] * 2
    assert all(np.isfinite(b.losses).all() for b in blocks)
    wide = {k: v.astype(np.float64) for k, v in params.items()}
    assert total_loss(params, ids) == pytest.approx(total_loss(wide, ids), rel=1e-6)
