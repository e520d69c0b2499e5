"""Dynamic evaluation (charrnn/dynamic.py) and the flags over it: `eval --dynamic` (with
--per-char, --json, --save-adapted), `show --dynamic`, `sample --adapt`. First that it never
peeks: each character's score depends on the text before it alone, and a random segment that
repeats scores like a static eval's the first time (a scorer that peeked would not); then that
the step is the one the docstring writes, for every cell and two layers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXT, cli, user_error

from charrnn import api
from charrnn import checkpoint as ckpt_io
from charrnn.dynamic import EPS, Adapter, Settings, gradient_rms
from charrnn.errors import CheckpointError, ConfigError
from charrnn.evaluate import evaluate
from charrnn.model import backward, forward, init_params, zero_state

LN2 = math.log(2.0)
CORPUS = TEXT[:6000]


def train(folder: Path, *args, hidden: int = 24, steps: int = 150) -> Path:
    corpus = folder / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    result = cli(
        "train", corpus, "--hidden-size", hidden, "--seq-length", 32, "--batch-size", 8,
        "--learning-rate", 0.01, "--max-steps", steps, "--eval-every", 50, "--rng-seed", 1,
        "--set", "init_scale=0.1", "--out", folder / "run", "-q", *args,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return folder / "run" / "best.npz"


@pytest.fixture(scope="module", params=["rnn", "lstm", "gru"])
def two_layers(request, tmp_path_factory) -> Path:
    """best.npz of a 2-layer model of each cell, trained a little on Shakespeare (adam)."""
    folder = tmp_path_factory.mktemp(request.param)
    return train(folder, "--cell", request.param, "--num-layers", 2, steps=300)


@pytest.fixture(scope="module")
def gru(tmp_path_factory) -> Path:
    """A one-layer GRU of 64 units, large enough to learn a segment from one reading."""
    return train(tmp_path_factory.mktemp("gru"), "--cell", "gru", hidden=64, steps=300)


def random_text(rng: np.random.Generator, n: int) -> str:
    """n characters drawn uniformly from the letters of the corpus: nothing in them to learn."""
    letters = sorted({c for c in CORPUS if c.isalpha()})
    return "".join(rng.choice(letters, n))


def dynamic_losses(model: api.Model, text: str, settings: Settings) -> np.ndarray:
    """Each character's loss (nats) in the dynamic pass over text."""
    ids = np.array([model.vocab.index(c) for c in text])
    return np.concatenate([s.losses for s in model.adapter(settings).read(ids)])


def static_losses(model: api.Model, text: str) -> np.ndarray:
    return np.array([-math.log(r["p"]) for r in model.char_scores(text)])


STRONG = Settings(lr=3e-3, decay=0.01, segment=20)  # large steps: adaptation shows at once


def test_a_score_depends_only_on_the_text_before_it(two_layers):
    """Cut a text mid-segment, or change what follows: every score before the cut is the same
    (to float64 rounding: BLAS may sum a product of another size in another order). A step
    taken before its segment is scored, or statistics from the whole text, would change them."""
    model = api.load(two_layers)
    model.params = {k: v.astype(np.float64) for k, v in model.params.items()}
    rng = np.random.default_rng(0)
    text = CORPUS[:300]
    full = dynamic_losses(model, text, STRONG)

    def same(a, b):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=0)

    for cut in (1, 2, 21, 35, 130):
        other = text[:cut] + random_text(rng, 300 - cut)
        same(dynamic_losses(model, text[:cut], STRONG), full[:cut])
        same(dynamic_losses(model, other, STRONG)[:cut], full[:cut])
    static = static_losses(model, text)
    # the first segment (x_1 and the 20 after it) is the trained weights'; later ones adapt
    np.testing.assert_allclose(full[:21], static[:21], rtol=1e-5, atol=1e-6)
    assert np.abs(full[21:] - static[21:]).max() > 0.01


def peeking_losses(model: api.Model, text: str, settings: Settings) -> np.ndarray:
    """What a dishonest scorer gives: each segment scored after the step on it."""
    adapter = model.adapter(settings)
    ids = np.array([model.vocab.index(c) for c in text])
    params, state, out = adapter.params, zero_state(adapter.params, 1), []
    for start in range(1, len(ids), settings.segment):
        end = min(start + settings.segment, len(ids))
        X, Y = ids[start - 1 : end - 1, None], ids[start:end, None]
        _, cache, _ = forward(params, X, Y, state)
        backward(params, cache, out=adapter._grads)
        adapter._update()
        _, cache, state = forward(params, X, Y, state)
        out.append(cache["losses"])
    return np.concatenate(out)


def test_a_repeated_random_segment_scores_like_static_the_first_time(gru):
    """A random segment R in `A R B R`, drawn from the model itself: its first occurrence costs
    what it costs a static eval (nothing in the text before it tells what R holds), its second
    far less (the model has read it). The same test catches a scorer that peeks: its first R is
    far cheaper."""
    model = api.load(gru)
    R = model.sample(length=200, rng_seed=1)  # what the model expects: nothing to learn in it
    A, B = CORPUS[:400], CORPUS[1000:1400]
    text = A + R + B + R
    first = slice(len(A), len(A) + len(R))
    second = slice(len(text) - len(R), len(text))
    settings = Settings(lr=3e-4, decay=0.0, segment=10)
    honest = dynamic_losses(model, text, settings) / LN2
    static = static_losses(model, text) / LN2
    peek = peeking_losses(model, text, settings)[first.start - 1 : first.stop - 1] / LN2
    assert abs(honest[first].mean() - static[first].mean()) < 0.1
    assert honest[second].mean() < static[second].mean() - 0.25
    assert peek.mean() < static[first].mean() - 0.4


def test_one_step_is_the_rms_update_of_the_docstring(gru):
    """After the first segment the weights are theta_0 - lr g / (R + eps mean R) (no pull yet,
    theta = theta_0), with g the model's backward of that segment's loss."""
    model = api.load(gru)
    settings = Settings(lr=1e-3, decay=0.05, segment=10)
    ids = np.array([model.vocab.index(c) for c in CORPUS[:11]])
    adapter = model.adapter(settings)
    list(adapter.read(ids))
    _, cache, _ = forward(
        model.params, ids[:10, None], ids[1:11, None], zero_state(model.params, 1)
    )
    grads = backward(model.params, cache)
    R = gradient_rms(model.opt_state, model.config, model.step)
    mean = np.mean(np.concatenate([r.ravel() for r in R.values()]))
    for k, p in model.params.items():
        expected = p - settings.lr * grads[k] / (R[k] + EPS * mean)
        np.testing.assert_allclose(adapter.params[k], expected, rtol=1e-4, atol=1e-7)


def test_the_pull_toward_the_trained_weights():
    """sgd with lr 0: nothing moves. A model with no second moment (sgd-trained) refuses rms,
    naming the way out; settings out of range are ConfigErrors."""
    rng = np.random.default_rng(0)
    params = init_params(5, 6, rng, dtype=np.float64, cell="lstm", num_layers=2)
    ids = rng.integers(0, 5, 60)
    adapter = Adapter(params, Settings(method="sgd", lr=0.0, decay=0.5, segment=7))
    list(adapter.read(ids))
    for k, p in params.items():
        assert np.array_equal(adapter.params[k], p)
    with pytest.raises(CheckpointError, match="--dynamic-method sgd"):
        Adapter(params, Settings(method="rms"), None)
    for bad in ({"segment": 0}, {"lr": math.nan}, {"decay": 1.5}, {"method": "adam"}):
        with pytest.raises(ConfigError, match="dynamic evaluation's"):
            Settings(**bad)


def test_adapting_lowers_the_score_of_a_text_that_repeats(two_layers):
    """Every cell, two layers: on a passage read six times, dynamic evaluation scores below static,
    and the model file is unchanged."""
    before = two_layers.read_bytes()
    text = CORPUS[2000:2150] * 6
    model = api.load(two_layers)
    adapted, result = model.adapt(text, Settings(lr=1e-3))
    static = evaluate(model.params, model.vocab, text)
    assert result.chars == static.chars == len(text)
    assert result.bpc < static.bpc - 0.05
    assert evaluate(adapted.params, model.vocab, text).bpc < static.bpc  # it learnt the text
    assert two_layers.read_bytes() == before


# ---- the command line ----


def test_eval_dynamic_json_per_char_and_save_adapted(gru, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[3000:3250] * 4, encoding="utf-8")
    before = gru.read_bytes()
    static = json.loads(cli("eval", text, "--checkpoint", gru, "--json").stdout)
    result = cli(
        "eval", text, "--checkpoint", gru, "--dynamic", "--json", "--dynamic-lr", "2e-4",
        "--dynamic-segment", 25, "--per-char", tmp_path / "pc.jsonl",
        "--save-adapted", tmp_path / "adapted.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["dynamic"] == {"method": "rms", "lr": 2e-4, "decay": 0.001, "segment": 25}
    assert out["chars"] == 1000 and out["bpc"] < static["bpc"] - 0.05
    lines = [json.loads(x) for x in (tmp_path / "pc.jsonl").read_text().splitlines()]
    assert "".join(r["char"] for r in lines) == text.read_text()
    assert abs(np.mean([r["bits"] for r in lines]) - out["bpc"]) < 1e-4
    assert gru.read_bytes() == before
    adapted = ckpt_io.load(tmp_path / "adapted.npz")
    assert adapted.vocab == ckpt_io.load(gru).vocab
    again = json.loads(cli("eval", text, "--checkpoint", tmp_path / "adapted.npz", "--json").stdout)
    assert again["bpc"] < static["bpc"]  # the adapted model knows the text
    # and it adapts again: its optimiser state (the RMS statistics) came along
    assert cli("eval", text, "--checkpoint", tmp_path / "adapted.npz", "--dynamic").exit_code == 0


def test_save_adapted_that_cannot_be_written_is_one_line_saying_try_again(gru, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[3000:3250], encoding="utf-8")
    (tmp_path / "file").write_text("not a folder")
    target = tmp_path / "file" / "adapted.npz"  # its folder is a file: the write fails
    result = cli("eval", text, "--checkpoint", gru, "--dynamic", "--save-adapted", target)
    message = user_error(result)
    assert message.startswith(f"could not write checkpoint '{target}'")
    assert message.endswith("then try again)") and "--resume" not in message


def test_sgd_method_and_its_json(gru, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[:400], encoding="utf-8")
    result = cli(
        "eval", text, "--checkpoint", gru, "--dynamic", "--dynamic-method", "sgd", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dynamic"]["method"] == "sgd"


@pytest.mark.parametrize(
    "args",
    [
        ["--save-adapted", "x.npz"],  # without --dynamic
        ["--dynamic", "--dynamic-lr", "-1"],
        ["--dynamic", "--dynamic-decay", "2"],
        ["--dynamic", "--dynamic-segment", "0"],
        ["--dynamic", "--dynamic-segment", "10001"],
        ["--dynamic", "--dynamic-method", "adam"],
    ],
)
def test_bad_dynamic_flags_are_usage_errors(gru, tmp_path, args):
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[:100], encoding="utf-8")
    result = cli("eval", text, "--checkpoint", gru, *args)
    assert result.exit_code == 2
    flag = next(a for a in args if a.startswith("--") and a != "--dynamic")
    assert flag in result.stderr


def test_rms_on_an_sgd_trained_model_is_one_error_line(tmp_path):
    ckpt = train(tmp_path, "--optimizer", "sgd", steps=5)
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[:100], encoding="utf-8")
    message = user_error(cli("eval", text, "--checkpoint", ckpt, "--dynamic"))
    assert "--dynamic-method sgd" in message
    assert (
        cli("eval", text, "--checkpoint", ckpt, "--dynamic", "--dynamic-method", "sgd").exit_code
        == 0
    )


def test_sample_adapt_continues_the_text_it_read(gru, tmp_path):
    """Adapted to a text that repeats one line, greedy sampling after its start continues it
    more faithfully than the trained model does."""
    line = "BRUTUS: the moon is wet, quoth Marcius.\n"
    adapt = tmp_path / "a.txt"
    adapt.write_text(line * 30, encoding="utf-8")
    args = ["sample", "--checkpoint", gru, "--seed", "BRUTUS:", "--length", 60, "--argmax"]
    plain = cli(*args, "-q").stdout
    result = cli(*args, "--adapt", adapt, "--dynamic-lr", "1e-3", "--dynamic-segment", 10)
    assert result.exit_code == 0, result.output
    assert "adapted to" in result.stderr
    target = (line * 3)[: len(result.stdout)]

    def matches(s: str) -> int:
        return sum(a == b for a, b in zip(s, target, strict=False))

    assert matches(result.stdout) > matches(plain) + 10


def test_show_dynamic_colours_by_the_adapted_surprise(gru, tmp_path):
    """The page's surprise is eval --dynamic's, character by character."""
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[:300] * 2, encoding="utf-8")
    static = cli("show", text, "--checkpoint", gru, "-o", tmp_path / "s.html")
    result = cli("show", text, "--checkpoint", gru, "--dynamic", "-o", tmp_path / "d.html")
    assert result.exit_code == 0 and static.exit_code == 0, result.output
    page = (tmp_path / "d.html").read_text(encoding="utf-8")
    assert "adapting to them as it reads (dynamic evaluation)" in page

    def bpc(output: str) -> float:
        return float(output.split("characters, ")[1].split(" bpc")[0])

    dynamic = json.loads(cli("eval", text, "--checkpoint", gru, "--dynamic", "--json").stdout)
    assert bpc(result.stderr) == round(dynamic["bpc"], 3) < bpc(static.stderr)


def test_a_model_of_records_refuses_dynamic_evaluation_in_one_line(tmp_path):
    ckpt = train(tmp_path, "--set", "documents=line", steps=5)
    text = tmp_path / "t.txt"
    text.write_text(CORPUS[:100], encoding="utf-8")
    assert "model of line records" in user_error(
        cli("eval", text, "--checkpoint", ckpt, "--dynamic")
    )
