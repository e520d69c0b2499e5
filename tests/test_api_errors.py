"""The Python API's edge (charrnn/checks.py, issue 22 class 2): every value a caller can pass
is checked before any work, and every refusal is a CharRNNError (here: ArgumentError, also a
ValueError) whose message names the Python argument, never a command-line flag."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
from helpers import TEXT, write_corpus

import charrnn
from charrnn import checks
from charrnn.errors import ArgumentError, CharRNNError, TooLargeError, as_command, option
from charrnn.gradflow import measure


@pytest.fixture(scope="module")
def model(good_run) -> charrnn.Model:
    return charrnn.load(good_run[1])


def refused(call, *args, **kwargs) -> str:
    """The message of the CharRNNError that call(*args, **kwargs) raises."""
    with pytest.raises(CharRNNError) as e:
        result = call(*args, **kwargs)
        if hasattr(result, "__next__"):  # a generator checks its arguments when first asked
            next(result)
    assert "--" not in str(e.value), str(e.value)  # Python's terms, not the CLI's
    return str(e.value)


SAMPLE_CASES = [
    ({"length": -1}, "length must be from 0 to 1,000,000,000, got -1"),
    ({"length": 2.5}, "length must be an integer, not float 2.5"),
    ({"length": True}, "length must be an integer, not bool True"),
    ({"temperature": 0}, "temperature must be a finite number > 0, got 0.0"),
    ({"temperature": float("nan")}, "temperature must be a finite number > 0, got nan"),
    ({"temperature": float("inf")}, "temperature must be a finite number > 0, got inf"),
    ({"temperature": "hot"}, "temperature must be a number, not str 'hot'"),
    ({"rng_seed": -1}, "rng_seed must be from 0 to 18,446,744,073,709,551,615, got -1"),
    ({"rng_seed": 10**30}, "rng_seed must be from 0 to 18,446,744,073,709,551,615"),
    ({"num_samples": 0}, "num_samples must be from 1 to 1,000,000, got 0"),
    ({"num_samples": 10**30}, "num_samples must be from 1 to 1,000,000, got a number of 31 digits"),
    ({"top_k": 0}, "top_k must be from 1 to"),
    ({"top_p": 0}, "top_p must be a finite number > 0 and <= 1, got 0.0"),
    ({"top_p": 1.5}, "top_p must be a number > 0 and <= 1, got 1.5"),
    ({"unknown": "bogus"}, "unknown must be 'error' or 'skip', not str 'bogus'"),
    ({"argmax": "yes"}, "argmax must be True or False, not str 'yes'"),
    ({"echo_seed": 0}, "echo_seed must be True or False, not int 0"),
    ({"out": 5}, "out must be a text file (with a write method), not 5"),
]


@pytest.mark.parametrize("kwargs, says", SAMPLE_CASES)
def test_sample_refuses_bad_values(model, kwargs, says):
    assert refused(model.sample, "a", **{"length": 5, **kwargs}).startswith(says)


@pytest.mark.parametrize("seed", [None, b"bytes", 5])
def test_a_seed_must_be_text(model, seed):
    said = refused(model.sample, seed, 5)
    assert said.startswith(f"seed must be a str, not {type(seed).__name__}")
    assert ("decode it first" in said) == isinstance(seed, bytes)


def test_nothing_is_printed_before_the_values_are_checked(model):
    out = io.StringIO()
    refused(model.sample, "", 10, num_samples=10**30, out=out)
    with pytest.raises(TooLargeError) as e:  # in range, but more than memory: estimated first
        model.sample("", 10**9, num_samples=10**6, out=out)
    assert "lower length" in str(e.value) and out.getvalue() == ""


BEAM_CASES = [
    ({"beam": 0}, "beam must be from 1 to 1,000,000, got 0"),
    ({"beam": 3, "num_results": 5}, "beam=3 keeps 3 continuations; ask for num_results <= 3"),
    ({"num_results": 0}, "num_results must be from 1 to 1,000,000, got 0"),
    ({"length": 0}, "length must be from 1 to 1,000,000,000, got 0"),
    ({"unknown": "drop"}, "unknown must be 'error' or 'skip'"),
]


@pytest.mark.parametrize("kwargs, says", BEAM_CASES)
def test_beam_search_refuses_bad_values(model, kwargs, says):
    assert refused(model.beam_search, "a", **{"length": 5, **kwargs}).startswith(says)


def test_a_beam_bigger_than_memory_is_refused_before_the_search(model):
    with pytest.raises(TooLargeError) as e:
        model.beam_search("", 1000, beam=10**6)
    assert "a beam search of width 1,000,000 over 1,000 characters needs about" in str(e.value)
    assert str(e.value).endswith("; lower beam")


def test_evaluate_and_char_scores_refuse_bad_values(model):
    assert refused(model.evaluate, b"abc").startswith("text must be a str, not bytes")
    assert refused(model.evaluate, "abc", unknown="bogus").startswith("unknown must be")
    assert refused(model.evaluate, "abc", top=-1).startswith("top must be from 0 to")
    assert refused(model.evaluate, "abc", per_char=5).startswith("per_char must be a function")
    assert refused(model.char_scores, "abc", top=-1).startswith("top must be from 0 to")
    assert refused(model.char_scores, None).startswith("text must be a str, not NoneType")
    assert [r["top"] for r in model.char_scores("the", top=0)] == [[], [], []]


@pytest.mark.parametrize(
    "path, says",
    [
        (5, "path must be a path (a str or pathlib.Path), not int 5"),
        (b"run", "path must be a path (a str or pathlib.Path), not bytes b'run'"),
        ("ru\0n", "path must name a file, but the path given has a NUL: 'ru\\x00n'"),
        ("", "path must name a file, but the path given is empty"),
    ],
)
def test_load_refuses_what_is_not_a_path(path, says):
    assert refused(charrnn.load, path) == says


def test_train_refuses_bad_arguments_before_touching_anything(tmp_path, good_run):
    corpus = write_corpus(tmp_path, TEXT[:2000])
    run = good_run[1]
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    stdout_fd = os.dup(1)
    try:
        cases = {
            "overwrite must be True or False, not str 'no'": {"out": run, "overwrite": "no"},
            "config must be a path (a str or pathlib.Path), not int 1": {"config": 1},
            "quiet must be True or False, not int 0": {"quiet": 0},
            "set_items must be a list of str; it holds int 5": {"set_items": [5]},
            "set_items must be a list of str, not str 'a=1'": {"set_items": "a=1"},
            "out must name a file, but the path given has a NUL": {"out": "r\0"},
            "resume must be a path (a str or pathlib.Path), not float 1.0": {"resume": 1.0},
        }
        for says, kwargs in cases.items():
            assert refused(charrnn.train, corpus, **kwargs).startswith(says)
        assert refused(charrnn.train, 7).startswith("corpus must be a path")
        os.fstat(1)  # the caller's stdout is still open: config=1 opened nothing
    finally:
        os.close(stdout_fd)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # no run folder made
    sys.stdout.flush()


def test_gradflow_refuses_bad_counts(model):
    params, vocab = model.params, model.vocab
    for kwargs, says in [
        ({"max_distance": -3}, "max_distance must be from 1 to 1,000,000, got -3"),
        ({"positions": 0}, "positions must be from 1 to 10,000,000, got 0"),
        ({"burn_in": -1}, "burn_in must be from 0 to 1,000,000,000, got -1"),
        ({"rng_seed": -2}, "rng_seed must be from 0 to"),
    ]:
        assert refused(measure, params, vocab, TEXT[:3000], **kwargs).startswith(says)


def test_every_refusal_is_a_charrnn_error_and_a_value_error(model):
    with pytest.raises(ValueError):  # code that caught ValueError before still does
        model.sample("", -1)
    assert issubclass(ArgumentError, CharRNNError) and issubclass(TooLargeError, CharRNNError)


def test_a_message_names_a_setting_as_the_caller_gives_it(tmp_path, good_run):
    assert option("overwrite", True) == "overwrite=True"
    assert option("resume", tmp_path) == f"resume='{tmp_path}'"
    assert option("checkpoint", "FILE") == "path='FILE'"
    with as_command():
        assert option("overwrite", True) == "--overwrite"
        assert option("resume", "runs/a") == "--resume runs/a"
        assert option("max_distance") == "--max-distance"
    corpus = write_corpus(tmp_path, TEXT[:2000])
    with pytest.raises(CharRNNError) as e:  # a run in the way: named in Python's terms
        charrnn.train(corpus, out=good_run[1], max_steps=1)
    assert f"resume='{good_run[1]}'" in str(e.value) and "overwrite=True" in str(e.value)


def test_the_flags_share_the_librarys_bounds():
    from charrnn.cli import app

    sample = next(c for c in app.registered_commands if c.callback.__name__ == "sample")
    assert sample is not None
    assert checks.LIMITS["num_samples"] == (1, 10**6)
    assert checks.count("num_samples", np.int64(3)) == 3  # a NumPy integer is an integer
