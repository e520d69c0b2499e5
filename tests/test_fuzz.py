"""Property-based fuzzing of what users hand the CLI (issue 5): random --set configs, random
bytes as a corpus or a config file, random mutations of a valid checkpoint.

The property is the same everywhere: the CLI either works (exit 0) or exits 1 or 2 with one
`Error:` line; never a traceback, never a hang. `checkpoint.load` either returns a checkpoint or
raises CheckpointError, nothing else.

Run time is bounded: tiny models, few steps, a fixed number of examples per test, and a SIGALRM
guard that fails an example running past HANG_S (a hang, not a slow machine). For a longer hunt,
CHARRNN_FUZZ_SCALE=20 pytest tests/test_fuzz.py runs 20 times as many examples.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import arrays, checkpoint_commands, cli, time_limit, user_error
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt_io
from charrnn.config import DEFAULTS
from charrnn.errors import CheckpointError

HANG_S = 20
SCALE = float(os.environ.get("CHARRNN_FUZZ_SCALE", "1"))
TEXT = "It was the best of times, it was the worst of times; it was the age of wisdom.\n" * 40
TINY = ["--hidden-size", "4", "--seq-length", "4", "--batch-size", "2", "--rng-seed", "0", "-q"]

FUZZ = settings(
    deadline=None,  # time is bounded by the sizes each example is given, and HANG_S guards hangs
    database=None,  # nothing written into the repository
    # CI (CI=true) replays the same examples every run, so a landing never hinges on a draw;
    # runs elsewhere draw new ones and keep finding new cases
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=max(1, round(n * SCALE)))


def run_cli(*args) -> tuple[int, str]:
    """Run the CLI in-process; assert it worked or failed cleanly; (exit code, stderr)."""
    with time_limit(HANG_S):
        result = cli(*args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"crashed: {result.exception!r}\n{result.output}"
    )
    assert "Traceback" not in result.output
    code, stderr = result.exit_code, result.stderr
    if currently_in_test_context():  # pytest --hypothesis-show-statistics shows the mix
        event(f"{args[0]}: exit {code}")
    if code == 1:
        assert len(user_error(result)) > 10  # says something
    elif code == 2:  # a usage error: typer's message, a box when rich is installed
        assert "Error" in stderr, stderr
    else:
        assert code == 0, result.output
    return code, stderr


def fresh(folder: Path, suffix: str = "") -> Path:
    """A new path in folder per example, so no example sees another's files or caches."""
    return folder / f"x{next(_names)}{suffix}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def corpus(work) -> Path:
    path = work / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# ---- random configs ----

# keys that decide how long a run takes are set by the test, not fuzzed
FUZZED_KEYS = sorted(set(DEFAULTS) - {"max_steps", "max_epochs", "max_time"})
KEYS = st.one_of(
    st.sampled_from(FUZZED_KEYS),
    st.sampled_from(["hidden-size", "hiden_size", "", "max steps", "=x"]),
)
CHOICES = {
    "dtype": ["float32", "float64"],
    "optimizer": ["adam", "rmsprop", "adagrad", "sgd"],
    "lr_decay": ["none", "step", "exponential", "cosine", "linear"],
    "clip_mode": ["norm", "value"],
    "decode_errors": ["strict", "replace"],
    "encoding": ["utf-8", "latin-1", "ascii", "utf-16", "utf-8-sig", "cp1252"],
}
VALUES = st.one_of(
    st.integers(-3, 24).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "true",
            "no",
            "null",
            "~",
            "",
            "[1, 2]",
            "{a: 1}",
            "1e-3",
            "0x10",
            "'8'",
            "adam",
            "sgd",
            "float64",
            "utf-16",
            "latin-1",
            "replace",
            "step",
            "value",
            "exponential",
            "2001-01-01",
            "!!python/object:os.system",
            "[",
            "&a *a",
        ]
    ),
    st.text(max_size=12),
)


@st.composite
def set_items(draw) -> tuple[str, str]:
    """(key, value): a value of the key's own kind four times in five (so that whole runs
    happen, not only config errors), of any kind otherwise."""
    key = draw(KEYS)
    if key not in DEFAULTS or draw(st.integers(0, 9)) >= 8:
        return key, draw(VALUES)
    if key in CHOICES:
        return key, draw(st.sampled_from(CHOICES[key]))
    if isinstance(DEFAULTS[key], float):
        return key, repr(draw(st.floats(0.001, 0.99)))
    return key, str(draw(st.integers(1, 12)))


@examples(40)
@given(items=st.lists(set_items(), max_size=5))
def test_random_set_items(items, work, corpus):
    sets = [f"--set={key}={value}" for key, value in items]
    run_cli("train", corpus, *TINY, *sets, "--set=max_steps=3", "--out", fresh(work))


# values built to get past a first look and then overflow, recurse, expand or take time
HOSTILE = st.one_of(
    st.integers(2**63 - 2, 10**4000).map(str),  # past int64, up to thousands of digits
    st.integers(1, 2**64).map(lambda n: "0x" + format(n, "x") * (1 + n % 3000)),  # unbounded hex
    st.lists(st.integers(0, 59).map(str), min_size=2, max_size=300).map(":".join),  # base 60
    st.sampled_from(["1.0e+308", "-1.0e+308", "5e-324", ".inf", "-.inf", ".nan", "1e400"]),
    st.floats(1e10, 1e308).map(repr),
    st.integers(1, 80).map(lambda d: "[" * d + "1" + "]" * d),  # past the nesting limit or not
    st.integers(1, 80).map(lambda d: "{a: " * d + "1" + "}" * d),
    st.text(max_size=40).map(json.dumps),  # NUL, lone surrogates (JSON escapes), anything
    st.builds(  # anchors and aliases, expanding width ** levels times (at most 7,776)
        lambda width, levels: (
            "["
            + "&a0 [x], "
            + ", ".join(
                f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)
            )
            + "]"
        ),
        st.integers(1, 6),
        st.integers(1, 5),
    ),
    st.sampled_from(["*a", "&a 1", "<<: *a", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]"]),
)


@examples(40)
@given(
    items=st.lists(st.tuples(st.sampled_from(FUZZED_KEYS), HOSTILE), min_size=1, max_size=3),
    in_file=st.booleans(),
)
def test_hostile_values_are_refused_or_used(items, in_file, work, corpus):
    """Every hostile value, in a config file or a --set item, is used or refused in one line,
    in bounded time; the sizes and the length are pinned, so what is used runs briefly."""
    if in_file:
        path = fresh(work, ".yaml")
        path.write_text(
            "".join(f"{k}: {v}\n" for k, v in items), encoding="utf-8", errors="replace"
        )
        given_as = ["--config", path]
    else:
        given_as = [f"--set={k}={v}" for k, v in items]
    out = fresh(work)
    code, _ = run_cli(
        "train",
        corpus,
        *given_as,
        *TINY,
        "--set=hidden_size=4",
        "--set=num_layers=1",
        "--set=batch_size=2",
        "--set=seq_length=4",
        "--set=max_steps=2",
        "--set=max_epochs=0",
        "--set=max_time=0",
        "--set=sample_every=0",
        "--out",
        out,
    )
    if code == 0:  # bounded work: the run was the tiny one the last --set items ask for
        saved = ckpt_io.load(out / "last.npz")
        assert saved.step <= 2 and saved.params["Whh"].shape[1] == 4  # hidden_size 4


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**200), 2**200),
        st.integers(min_value=10**300, max_value=10**4000),
        st.floats(),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)
TRAIN_STATE_KEYS = [
    "best_val_loss",
    "bad_evals",
    "chars_seen",
    "rng_state",
    "rng_state.bit_generator",
    "rng_state.has_uint32",
    "rng_state.uinteger",
    "rng_state.state.state",
    "rng_state.state.inc",
]


@examples(30)
@given(data=st.data())
def test_hostile_values_in_a_checkpoints_json(data, good_ckpt, corpus, work):
    """A saved config or train_state value replaced by any JSON value (huge integers, 1e308,
    nesting, text): train --resume, sample and eval use it or refuse it in one line."""
    contents = arrays(good_ckpt)
    field = data.draw(st.sampled_from(["config", "train_state"]))
    saved = json.loads(str(contents[field]))
    if field == "config":
        path = [data.draw(st.sampled_from(FUZZED_KEYS + ["unknown"]))]
    else:
        path = data.draw(st.sampled_from(TRAIN_STATE_KEYS)).split(".")
    where = saved
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = data.draw(JSON_VALUES)
    try:
        contents[field] = np.array(json.dumps(saved))
    except ValueError:  # an integer json cannot write (over 4300 digits)
        return
    path = fresh(work, ".npz")
    with open(path, "wb") as f:
        np.savez(f, **contents)
    load_or_refuse(path)
    cli_on_checkpoint(path, corpus, work)


@examples(30)
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(set_items(), max_size=5).map(
            lambda kv: "".join(f"{k}: {v}\n" for k, v in kv).encode()
        ),
    )
)
def test_random_config_file(raw, work, corpus):
    path = fresh(work, ".yaml")
    path.write_bytes(raw)
    # the sizes and the length are pinned by --set, which wins over the file
    run_cli(
        "train",
        corpus,
        "--config",
        path,
        *TINY,
        "--set=hidden_size=4",
        "--set=batch_size=2",
        "--set=seq_length=4",
        "--set=max_steps=2",
        "--set=max_epochs=0",
        "--set=max_time=0",
        "--out",
        fresh(work),
    )


# ---- random corpora ----


@examples(40)
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        st.binary(min_size=20, max_size=400),
        st.text(min_size=0, max_size=200).map(lambda t: t.encode("utf-8", "replace")),
    ),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_random_bytes_as_corpus(raw, errors, work):
    path, out = fresh(work, ".txt"), fresh(work)
    path.write_bytes(raw)
    code, _ = run_cli(
        "train",
        path,
        *TINY,
        "--decode-errors",
        errors,
        "--max-steps",
        2,
        "--eval-every",
        1,
        "--out",
        out,
    )
    if code == 0:
        assert ckpt_io.load(out / "last.npz").step == 2


# ---- random mutations of a valid checkpoint ----


@pytest.fixture(scope="module")
def good_ckpt(work, corpus) -> Path:
    out = work / "good"
    run_cli("train", corpus, *TINY, "--max-steps", 4, "--eval-every", 2, "--out", out)
    return out / "last.npz"


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def rezip(parts: dict[str, bytes]) -> bytes:
    """A well-formed zip (right CRCs) of parts, so a change reaches numpy and our checks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return buf.getvalue()


EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)
HEADER_EDITS = st.lists(
    st.tuples(st.integers(0, 127), st.integers(0, 255)), min_size=1, max_size=4
)  # within a .npy header


def mutate(data: bytes, edits, cut) -> bytes:
    buf = bytearray(data)
    for pos, byte in edits:
        if buf:
            buf[pos % len(buf)] = byte
    if cut is not None:
        del buf[cut % (len(buf) + 1) :]
    return bytes(buf)


def load_or_refuse(path: Path):
    """checkpoint.load returns a Checkpoint or raises CheckpointError with a one-line message."""
    with time_limit(HANG_S):
        try:
            ckpt = ckpt_io.load(path)
        except CheckpointError as e:
            assert "\n" not in str(e) and str(e)
            event("load: refused")
            return None
    event("load: loaded")
    return ckpt


def cli_on_checkpoint(path: Path, corpus: Path, work: Path) -> None:
    for command in checkpoint_commands(path, corpus, "--max-steps", 6, "--out", fresh(work)):
        run_cli(*command)


@examples(150)
@given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_mutated_checkpoint_bytes_load(edits, cut, good_ckpt, work):
    path = fresh(work, ".npz")
    path.write_bytes(mutate(good_ckpt.read_bytes(), edits, cut))
    load_or_refuse(path)


@examples(150)
@given(data=st.data())
def test_mutated_checkpoint_members_load(data, good_ckpt, work):
    """Byte edits inside one array of the .npz, re-zipped with valid CRCs: they get past zipfile
    to numpy's header parser and to the checks of shapes, types and values."""
    parts = members(good_ckpt)
    name = data.draw(st.sampled_from(sorted(parts)))
    edits = data.draw(st.one_of(HEADER_EDITS, EDITS))
    cut = data.draw(st.one_of(st.none(), st.integers(0, 10**6)))
    parts[name] = mutate(parts[name], edits, cut)
    if data.draw(st.booleans()):  # or drop another array
        parts.pop(data.draw(st.sampled_from(sorted(parts))))
    path = fresh(work, ".npz")
    path.write_bytes(rezip(parts))
    load_or_refuse(path)


@examples(20)
@given(data=st.data())
def test_mutated_checkpoint_through_cli(data, good_ckpt, corpus, work):
    raw = good_ckpt.read_bytes()
    if data.draw(st.booleans()):
        raw = mutate(raw, data.draw(EDITS), data.draw(st.one_of(st.none(), st.integers(0, 10**6))))
    else:
        parts = members(good_ckpt)
        name = data.draw(st.sampled_from(sorted(parts)))
        parts[name] = mutate(parts[name], data.draw(st.one_of(HEADER_EDITS, EDITS)), None)
        raw = rezip(parts)
    path = fresh(work, ".npz")
    path.write_bytes(raw)
    cli_on_checkpoint(path, corpus, work)


@examples(25)
@given(data=st.data())
def test_checkpoint_with_changed_arrays(data, good_ckpt, corpus, work):
    """Whole arrays replaced by random ones (other shapes, dtypes, values, NaN): refused or used,
    never a crash, whether loaded directly or resumed from."""
    contents = arrays(good_ckpt)
    name = data.draw(st.sampled_from(sorted(contents) + ["opt.x.Whh", "extra"]))
    shape = data.draw(
        st.one_of(
            st.just(contents.get(name, np.zeros(2)).shape),
            st.lists(st.integers(0, 5), max_size=3).map(tuple),
        )
    )
    dtype = data.draw(
        st.sampled_from(
            [
                "float32",
                "float64",
                "int64",
                "uint8",
                "bool",
                "<U1",
                "<U3",
                "complex64",
                "float16",
                "S2",
            ]
        )
    )
    fill = data.draw(st.sampled_from([0, 1, -1, 2**40, float("nan"), float("inf"), "a"]))
    try:
        with np.errstate(invalid="ignore", over="ignore"):
            contents[name] = np.full(shape, fill).astype(dtype)
    except (ValueError, TypeError, OverflowError):
        contents[name] = np.zeros(shape, dtype=dtype)
    path = fresh(work, ".npz")
    with open(path, "wb") as f:
        np.savez(f, **contents)
    load_or_refuse(path)
    cli_on_checkpoint(path, corpus, work)
