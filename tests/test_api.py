"""The Python API (charrnn/api.py): the README's example runs as written (with small settings);
charrnn.train validates its settings like the flags and trains what `charrnn train` trains;
charrnn.load finds the model the commands find; Model.sample, .evaluate and .char_scores give
what `charrnn sample`, `eval` and `eval --per-char` print, for every cell."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, TEXT, arrays, assert_same_arrays, cli, write_corpus

import charrnn
from charrnn import api, evaluate
from charrnn.errors import ConfigError, DataError

SETTINGS = {"hidden_size": 8, "seq_length": 8, "batch_size": 2, "max_steps": 20, "rng_seed": 1}
FLAGS = [x for k, v in SETTINGS.items() for x in (f"--{k.replace('_', '-')}", v)]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path, TEXT[:3000])


@pytest.fixture
def run(corpus) -> Path:
    charrnn.train(corpus, out="run", eval_every=10, **SETTINGS)
    return Path("run")


def readme_example() -> str:
    """The first python code block of the README's "Use from Python" section."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Use from Python\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_example_runs(tmp_path, capsys):
    code = readme_example()
    assert 'charrnn.train("corpus.txt", hidden_size=256, max_time=60, out="runs/nb")' in code
    # the same calls, small enough for a test: a tiny model for 20 steps
    code = code.replace(
        "hidden_size=256", "hidden_size=8, seq_length=8, batch_size=2, max_steps=20"
    )
    write_corpus(tmp_path, TEXT[:3000] + "FALSTAFF.")
    (tmp_path / "held_out.txt").write_text(TEXT[3000:3500], encoding="utf-8")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("20 max_steps ")  # steps, stopped_by, best_val_loss
    assert printed[1].startswith("FALSTAFF.") and len("\n".join(printed[1:-1])) == 209
    assert 0 < float(printed[-1]) < 8  # bpc of the held-out text
    assert (tmp_path / "runs" / "nb" / "best.npz").is_file()


def test_version_and_the_names_exported():
    import charrnn.train  # the module: charrnn.train stays the function

    assert callable(charrnn.train) and charrnn.train is api.train
    assert sys.modules["charrnn.train"].train_corpus  # the loop's module, by its full name
    assert charrnn.load is api.load and charrnn.Model is api.Model
    assert re.fullmatch(r"\d+\.\d+\.\d+", charrnn.__version__)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hidden_size": 0}, "config key 'hidden_size': got 0, expected an integer >= 1"),
        ({"cell": "tcn"}, "config key 'cell': got 'tcn', expected one of rnn, lstm, gru"),
        ({"hiden_size": 8}, "unknown config key 'hiden_size' (did you mean 'hidden_size'?)"),
        (
            {"patience": 2, "eval_every": 0},
            "config key 'patience': got 2, but early stopping needs validation; set eval_every "
            "and val_fraction above 0, or patience to 0",
        ),
    ],
)
def test_bad_settings_raise_config_error_before_anything_is_written(corpus, settings, message):
    with pytest.raises(ConfigError) as e:
        charrnn.train(corpus, out="r", **settings)
    assert str(e.value) == message
    assert not Path("r").exists()


def test_api_trains_what_the_command_trains(corpus):
    result = charrnn.train(corpus, out="api", eval_every=10, **SETTINGS)
    assert isinstance(result, charrnn.TrainResult)
    assert (result.steps, result.stopped_by, result.run_dir) == (20, "max_steps", Path("api"))
    assert result.chars_seen == 20 * 2 * 8 and result.best_val_loss is not None
    command = cli("train", corpus, *FLAGS, "--eval-every", 10, "--out", "cli", "-q")
    assert command.exit_code == 0, command.output
    for name in ("last.npz", "best.npz"):
        assert_same_arrays(arrays(Path("api", name)), arrays(Path("cli", name)))


def test_train_with_a_config_file_set_items_and_resume(corpus, capsys):
    Path("c.yaml").write_text("hidden_size: 12\nseq_length: 8\nbatch_size: 2\n")
    charrnn.train(corpus, config="c.yaml", out="r", max_steps=6, set_items=["hidden_size=10"])
    assert charrnn.load("r").arch.hidden_size == 10  # --set over settings over the file
    assert capsys.readouterr().err == ""  # quiet by default
    result = charrnn.train(corpus, resume="r", max_steps=9, quiet=False)
    assert (result.steps, charrnn.load("r/last.npz").step) == (9, 9)
    assert capsys.readouterr().err.startswith("resuming from step 6 into r: ")


def test_load_finds_what_the_commands_find(run, monkeypatch):
    model = charrnn.load(run)
    assert model.path == run / "best.npz" and model.chosen_by == "given"
    assert model.step == 20 and model.config["hidden_size"] == 8
    assert (model.arch.cell, model.arch.num_layers, model.arch.hidden_size) == ("rnn", 1, 8)
    assert model.vocab == sorted(set(TEXT[:3000]))
    assert charrnn.load(run / "last.npz").path == run / "last.npz"
    with pytest.raises(charrnn.CharRNNError):
        charrnn.load("nowhere")  # the checkpoint error the commands print
    Path("runs").mkdir()
    run.rename("runs/r")
    assert (charrnn.load().path, charrnn.load().chosen_by) == (Path("runs/r/best.npz"), "latest")
    monkeypatch.setenv("CHARRNN_CHECKPOINT", "runs/r/last.npz")
    assert (charrnn.load().path, charrnn.load().chosen_by) == (Path("runs/r/last.npz"), "env")


def test_sample_is_what_the_command_prints(run):
    model = charrnn.load(run)
    args = {"length": 40, "temperature": 0.8, "top_k": 5, "rng_seed": 3}
    text = model.sample("First", **args)
    assert isinstance(text, str) and text.startswith("First") and len(text) == 45
    flags = ["--length", 40, "--temperature", 0.8, "--top-k", 5, "--rng-seed", 3]
    printed = cli("sample", "--checkpoint", run, "--seed", "First", *flags, "-q")
    assert printed.stdout == text + "\n"
    several = model.sample("First", num_samples=3, echo_seed=False, **args)
    assert isinstance(several, list) and len(several) == 3
    assert not any(t.startswith("First") for t in several)
    as_json = cli("sample", "--checkpoint", run, "--seed", "First", *flags, "--num-samples", 3,
                  "--no-seed-echo", "--json")  # fmt: skip
    assert [s["text"] for s in json.loads(as_json.stdout)] == several
    assert model.sample(length=10, argmax=True) == model.sample(length=10, argmax=True)
    with pytest.raises(DataError):
        model.sample("\x07")  # not in the vocabulary
    assert model.sample("\x07F", length=5, unknown="skip", rng_seed=1).startswith("\x07F")


def test_sample_streams_to_a_file(run, tmp_path):
    model = charrnn.load(run)
    with open(tmp_path / "out.txt", "w", encoding="utf-8") as f:
        texts = model.sample("The", length=30, num_samples=2, rng_seed=5, out=f)
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == (
        f"==> sample 1 of 2 <==\n{texts[0]}\n\n==> sample 2 of 2 <==\n{texts[1]}\n"
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_evaluate_and_char_scores_agree_with_eval(corpus, cell):
    charrnn.train(corpus, out=cell, cell=cell, num_layers=2, **{**SETTINGS, "max_steps": 6})
    model = charrnn.load(cell)
    text = TEXT[3000:3400]
    score = model.evaluate(text)
    command = cli("eval", "-", "--checkpoint", cell, "--json", input=text)
    assert json.loads(command.stdout) == score.to_dict()
    scores = list(model.char_scores(text))
    assert "".join(s["char"] for s in scores) == "".join(c for c in text if c in model.vocab)
    bits = np.array([s["bits"] for s in scores])
    assert bits.mean() == pytest.approx(score.bpc, rel=1e-5)
    top = [[c for c, _ in s["top"]] for s in scores]
    assert all(len(set(t)) == 3 for t in top)
    # top-1 is the character sample --argmax would draw from the same state
    first = model.sample("", length=1, argmax=True)
    assert top[0][0] == first


def test_char_scores_cross_blocks_like_one_pass(run, monkeypatch):
    model = charrnn.load(run)
    text = TEXT[:500]
    whole = list(model.char_scores(text))
    monkeypatch.setattr(evaluate, "BLOCK", 7)  # many blocks: the state must carry across them
    assert list(model.char_scores(text)) == whole


def test_train_never_replaces_a_run_unless_told(run, corpus):
    from charrnn.errors import TrainingError

    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    with pytest.raises(TrainingError) as e:
        charrnn.train(corpus, out=run, **{**SETTINGS, "max_steps": 3})
    assert "already holds a run" in str(e.value) and "overwrite=True" in str(e.value)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before
    result = charrnn.train(corpus, out=run, overwrite=True, **{**SETTINGS, "max_steps": 3})
    assert result.steps == 3 and charrnn.load(run / "last.npz").step == 3
