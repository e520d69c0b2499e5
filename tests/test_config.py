"""Tests of charrnn.config: defaults, files, precedence and every kind of error message."""

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import time_limit
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn.config import (
    DEFAULTS,
    Config,
    _show,
    config_to_yaml,
    load_config_file,
    parse_set,
    resolve_config,
)
from charrnn.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(d: dict) -> str:
    with pytest.raises(ConfigError) as e:
        Config.from_dict(d)
    return str(e.value)


# ---- defaults and round trips ----


def test_defaults():
    cfg = Config()
    assert (cfg.hidden_size, cfg.seq_length, cfg.batch_size) == (128, 100, 32)
    assert cfg.learning_rate == 2e-3 and cfg.optimizer == "adam"
    assert cfg.rng_seed is None and cfg.encoding == "utf-8"
    assert isinstance(cfg.max_epochs, float) and isinstance(cfg.max_time, float)
    assert DEFAULTS == cfg.to_dict()
    assert Config.from_dict({}) == cfg


BUNDLED = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_every_bundled_config_loads(path):
    """configs/*.yaml as `make demo` and the docs use them: a typo there fails here."""
    given = load_config_file(path)
    assert given, f"{path.name} sets nothing"
    cfg = resolve_config(path)  # ConfigError for an unknown key or a bad value
    assert {k: getattr(cfg, k) for k in given} == {
        k: Config.from_dict(given).to_dict()[k] for k in given
    }


def test_the_bundled_configs_are_there():
    assert {"default.yaml", "demo.yaml", "shakespeare.yaml", "tiny.yaml"} <= {
        p.name for p in BUNDLED
    }


def test_to_dict_is_plain_json_and_yaml_round_trips():
    cfg = Config(hidden_size=64, rng_seed=7, eps=1e-6)
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    text = config_to_yaml(cfg)
    assert text.splitlines()[0] == "cell: rnn"  # field order, not sorted
    assert Config.from_dict(yaml.safe_load(text)) == cfg


def test_with_seed_replaces_only_the_seed_and_validates():
    cfg = Config(hidden_size=16)
    assert cfg.with_seed(5) == Config(hidden_size=16, rng_seed=5)
    with pytest.raises(ConfigError, match="rng_seed"):
        cfg.with_seed(-1)


def test_default_yaml_equals_builtin_defaults_and_lists_every_key():
    data = load_config_file(CONFIGS / "default.yaml")
    assert list(data) == list(DEFAULTS)
    assert Config.from_dict(data) == Config()


def test_tiny_yaml_loads():
    cfg = resolve_config(CONFIGS / "tiny.yaml", {}, [])
    assert (cfg.hidden_size, cfg.seq_length, cfg.batch_size) == (32, 16, 4)
    assert (cfg.max_steps, cfg.eval_every, cfg.checkpoint_every) == (60, 20, 20)
    assert (cfg.sample_every, cfg.val_max_chars, cfg.rng_seed) == (0, 2000, 1)
    assert cfg.learning_rate == 0.01


# ---- precedence ----


def test_precedence_defaults_file_overrides_set(tmp_path):
    path = write(tmp_path, "hidden_size: 64\nseq_length: 50\nbatch_size: 8\n")
    cfg = resolve_config(
        path,
        {"seq_length": 25, "batch_size": 4, "max_steps": None},  # None = flag not given
        ["batch-size=2"],
    )
    assert cfg.hidden_size == 64  # file over default
    assert cfg.seq_length == 25  # override over file
    assert cfg.batch_size == 2  # --set over override
    assert cfg.max_steps == DEFAULTS["max_steps"]  # None override ignored


def test_later_set_item_wins_and_set_can_clear_the_seed(tmp_path):
    path = write(tmp_path, "rng_seed: 3\n")
    cfg = resolve_config(path, {}, ["hidden_size=8", "hidden_size=9", "rng_seed="])
    assert cfg.hidden_size == 9 and cfg.rng_seed is None


def test_error_says_which_layer_the_bad_value_came_from(tmp_path):
    path = write(tmp_path, "hidden_size: 0\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(path, {}, [])
    assert str(e.value) == (
        f"config key 'hidden_size': got 0, expected an integer >= 1 (in config file '{path}')"
    )
    with pytest.raises(ConfigError, match=r"\(in --set\)$"):
        resolve_config(None, {}, ["optimizer=adamw"])
    with pytest.raises(ConfigError) as e:  # the caller's own settings: named by the key alone
        resolve_config(None, {"batch_size": -1}, [])
    assert str(e.value) == "config key 'batch_size': got -1, expected an integer >= 1"


# ---- validation messages ----


def test_unknown_key_suggests_close_match():
    assert error_of({"hiden_size": 3}) == (
        "unknown config key 'hiden_size' (did you mean 'hidden_size'?)"
    )


def test_unknown_key_without_close_match_points_to_readme():
    assert error_of({"zzz": 1}) == "unknown config key 'zzz' (see docs/config.md)"


def test_unknown_dashed_key_in_file_suggests_underscore(tmp_path):
    path = write(tmp_path, "hidden-size: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        resolve_config(path, {}, [])


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("hidden_size", -3, "got -3, expected an integer >= 1"),
        ("max_steps", -1, "got -1, expected an integer >= 0"),
        ("hidden_size", 1.5, "got 1.5, expected an integer >= 1"),
        ("hidden_size", "many", "got 'many', expected an integer >= 1"),
        ("hidden_size", True, "got true, expected an integer >= 1"),
        ("patience", False, "got false, expected an integer >= 0"),
        ("learning_rate", 0, "got 0, expected a number > 0"),
        ("learning_rate", "fast", "got 'fast', expected a number > 0"),
        ("learning_rate", "nan", "got 'nan', expected a number > 0"),
        ("learning_rate", float("inf"), "got inf, expected a number > 0"),
        ("beta2", 1.0, "got 1.0, expected a number >= 0 and < 1"),
        ("val_fraction", -0.1, "got -0.1, expected a number >= 0 and < 1"),
        ("lr_decay_rate", 0, "got 0, expected a number > 0 and <= 1"),
        ("grad_clip", [1, 2], "got [1, 2], expected a number >= 0"),
        ("optimizer", "adamw", "got 'adamw', expected one of adam, rmsprop, adagrad, sgd"),
        ("lr_decay", None, "got null, expected one of none, step, exponential, cosine, linear"),
        ("lr_final", 1.5, "got 1.5, expected a number >= 0 and <= 1"),
        ("warmup_steps", -1, "got -1, expected an integer >= 0"),
        ("clip_mode", "Norm", "got 'Norm', expected one of norm, value"),
        ("dtype", 32, "got 32, expected one of float32, float64"),
        ("decode_errors", "ignore", "got 'ignore', expected one of strict, replace"),
        ("encoding", "utf-99", "got 'utf-99', expected a text encoding Python knows"),
        ("encoding", "base64", "got 'base64', expected a text encoding Python knows"),
        ("rng_seed", -5, "got -5, expected an integer >= 0 or null"),
    ],
)
def test_bad_value_message_names_key_value_and_allowed(key, value, message):
    assert error_of({key: value}).startswith(f"config key '{key}': {message}")


def test_long_values_are_cut_short_in_messages():
    message = error_of({"optimizer": "x" * 500})
    assert len(message) < 150
    assert message.endswith("xxx..., expected one of adam, rmsprop, adagrad, sgd")


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match="'batch_size': got 0"):
        Config(batch_size=0)


def test_patience_without_validation_is_rejected():
    with pytest.raises(ConfigError, match="early stopping needs validation"):
        Config(patience=3, eval_every=0)
    with pytest.raises(ConfigError, match="early stopping needs validation"):
        Config(patience=3, val_fraction=0)
    assert Config(patience=3).patience == 3


def test_weight_decay_that_would_flip_the_weights_is_rejected():
    with pytest.raises(ConfigError, match="'weight_decay': 0.5 x learning_rate 2 is 1 or more"):
        Config(optimizer="sgd", learning_rate=2.0, weight_decay=0.5)
    assert Config(learning_rate=1.9, weight_decay=0.5).weight_decay == 0.5


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_an_annealed_learning_rate_needs_an_end_to_the_run(decay):
    with pytest.raises(ConfigError, match="anneals over the run's length, but the run has no end"):
        Config(lr_decay=decay, max_steps=0)
    ends = ({"max_steps": 10}, {"max_steps": 0, "max_epochs": 0.5}, {"max_steps": 0, "max_time": 9})
    for end in ends:
        assert Config(lr_decay=decay, **end).lr_decay == decay


# ---- coercion ----


def test_numeric_strings_and_ints_become_floats(tmp_path):
    # YAML 1.1 reads 1e-3 as a string; it must still work in files and --set items.
    path = write(tmp_path, "learning_rate: 1e-3\neps: 1e-6\nmax_epochs: 2\n")
    cfg = resolve_config(path, {}, ["init_scale=5e-2"])
    assert cfg.learning_rate == 1e-3 and cfg.eps == 1e-6 and cfg.init_scale == 0.05
    assert isinstance(cfg.max_epochs, float) and cfg.max_epochs == 2.0


def test_integer_string_is_accepted_for_int_field():
    cfg = Config.from_dict({"hidden_size": "64", "rng_seed": "0"})
    assert cfg.hidden_size == 64 and cfg.rng_seed == 0


def test_other_codec_names_are_accepted():
    assert Config(encoding="latin-1").encoding == "latin-1"


# ---- config files ----


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value).startswith(f"config file '{path}' not found")


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config_file(tmp_path)


def test_invalid_yaml_reports_line_number(tmp_path):
    path = write(tmp_path, "hidden_size: 64\nseq_length: 10\noptimizer: [adam\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert f"config file '{path}' is not valid YAML at line 4" in str(e.value)
    path = write(tmp_path, "hidden_size: 64\n  bad: indent\n")
    with pytest.raises(ConfigError, match="at line 2"):
        load_config_file(path)


def test_python_tags_are_not_loaded(tmp_path):
    path = write(tmp_path, "hidden_size: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 1"):
        load_config_file(path)


@pytest.mark.parametrize(
    "text, kind",
    [("- hidden_size: 3\n", "a list"), ("just words\n", "a string"), ("42\n", "a number")],
)
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value) == (
        f"config file '{path}': top level must be a mapping of keys to values, got {kind}"
    )


def test_empty_file_is_empty_mapping(tmp_path):
    assert load_config_file(write(tmp_path, "")) == {}
    assert load_config_file(write(tmp_path, "# only a comment\n")) == {}
    assert resolve_config(write(tmp_path, ""), {}, []) == Config()


# ---- --set items ----


@pytest.mark.parametrize(
    "item, expected",
    [
        ("hidden_size=256", ("hidden_size", 256)),
        ("hidden-size=256", ("hidden_size", 256)),
        ("learning_rate=0.5", ("learning_rate", 0.5)),
        ("learning_rate=1e-3", ("learning_rate", "1e-3")),  # coerced later, in validation
        ("optimizer=sgd", ("optimizer", "sgd")),
        ("encoding=a=b", ("encoding", "a=b")),  # only the first '=' splits
        ("rng_seed=", ("rng_seed", None)),
        ("rng_seed=null", ("rng_seed", None)),
    ],
)
def test_parse_set(item, expected):
    assert parse_set(item) == expected


@pytest.mark.parametrize("item", ["hidden_size", "=3", ""])
def test_parse_set_needs_key_equals_value(item):
    with pytest.raises(ConfigError) as e:
        parse_set(item)
    assert str(e.value) == (
        f"--set {item!r}: expected the form key=value, e.g. --set hidden_size=256"
    )


def test_parse_set_rejects_invalid_yaml_value():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_set("optimizer=[adam")


def test_set_with_unknown_key_suggests():
    with pytest.raises(ConfigError) as e:
        resolve_config(None, {}, ["hiden-size=3"])
    assert str(e.value) == (
        "unknown config key 'hiden_size' (did you mean 'hidden_size'?) (in --set)"
    )


# ---- hostile values: every one refused in bounded time and memory (issue 11) ----

BOMB = (  # 9 levels of 9 references: 387 million strings once expanded, in 300 bytes
    "[&a [x,x,x,x,x,x,x,x,x], "
    + ", ".join(
        f"&{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "]"
)


def test_yaml_aliases_are_refused_in_files_and_set_items(tmp_path):
    path = write(tmp_path, f"hidden_size: {BOMB}\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value) == (
        f"config file '{path}' is not valid YAML at line 1: aliases (*name) are not allowed "
        "in a config; fix the file"
    )
    with pytest.raises(ConfigError, match=r"the value is not valid YAML \(aliases"):
        parse_set(f"hidden_size={BOMB}")
    # a merge key is an alias too
    path = write(tmp_path, "base: &b {hidden_size: 8}\n<<: *b\n")
    with pytest.raises(ConfigError, match="at line 2: aliases"):
        load_config_file(path)


def test_an_anchor_without_an_alias_is_harmless(tmp_path):
    assert load_config_file(write(tmp_path, "hidden_size: &h 8\n")) == {"hidden_size": 8}


def test_deep_nesting_is_refused_before_python_recurses(tmp_path):
    path = write(tmp_path, "hidden_size: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="at line 1: lists or mappings nested more than 32 deep"):
        load_config_file(path)
    nested = "[" * 30 + "]" * 30
    with pytest.raises(ConfigError, match=r"got \[\[\[\[\.\.\.\]\]\]\], expected an integer"):
        resolve_config(None, {}, [f"hidden_size={nested}"])


@pytest.mark.parametrize(
    "text, shown",
    [
        ("9" * 5000, "an integer written with 5,000 characters"),  # int() refuses > 4300 digits
        ("0x" + "f" * 100_000, "an integer written with 100,002 characters"),  # no limit in hex
        ("0b" + "1" * 1000, "an integer written with 1,002 characters"),
        (":".join(["59"] * 200), "an integer written with 599 characters"),  # base 60
    ],
)
def test_integers_too_long_to_be_a_setting(tmp_path, text, shown):
    path = write(tmp_path, f"rng_seed: {text}\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(path, {}, [])
    assert str(e.value) == (
        f"config key 'rng_seed': got {shown}, expected an integer >= 0 or null "
        f"(in config file '{path}')"
    )
    with pytest.raises(ConfigError, match=f"got {shown}"):
        resolve_config(None, {}, [f"rng_seed={text}"])


@pytest.mark.parametrize("key", ["hidden_size", "max_steps", "rng_seed", "eval_every"])
def test_integers_past_int64_are_refused(key):
    assert error_of({key: 2**63}) == (
        f"config key '{key}': got 9223372036854775808, expected "
        f"{Config.__dataclass_fields__[key].metadata['rule'].expected}, below 2**63"
    )
    assert error_of({key: 10**4000}).startswith(
        f"config key '{key}': got an integer of about 4,000 digits, expected"
    )
    assert error_of({key: "9" * 5000}).startswith(f"config key '{key}': got '9999")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("max_epochs", 1e308, "got 1e+308, expected a number >= 0 and <= 1e+12"),
        ("max_epochs", "1e308", "got '1e308', expected a number >= 0 and <= 1e+12"),
        ("num_layers", 1025, "got 1025, expected an integer >= 1 and <= 1,024"),
        ("workers", 100_000, "got 100000, expected an integer >= 0 and <= 1,024"),
        ("sample_length", 10**7, "got 10000000, expected an integer >= 1 and <= 1,000,000"),
        ("init_scale", 1e300, "got 1e+300, expected a number > 0 and <= 1,000"),
        ("learning_rate", "1e400", "got '1e400', expected a number > 0"),  # inf
        ("momentum", 10**400, "got an integer of about 400 digits, expected a number >= 0"),
    ],
)
def test_values_that_would_overflow_later_are_refused_now(key, value, message):
    assert error_of({key: value}).startswith(f"config key '{key}': {message}")


@pytest.mark.parametrize(
    "text, shown",
    [
        ('"utf\\0-8"', "'utf\\x00-8'"),
        ('"\\ud800"', "'\\ud800'"),  # a lone surrogate: no codec can encode it
        ('"\\U0010ffff"', "'\\U0010ffff'"),
        ('"' + "x" * 10_000 + '"', "'" + "x" * 56 + "..."),
    ],
)
def test_unencodable_and_nul_strings_are_refused_cleanly(tmp_path, text, shown):
    path = write(tmp_path, f"encoding: {text}\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(path, {}, [])
    assert str(e.value).startswith(f"config key 'encoding': got {shown}")


def test_unknown_keys_of_any_kind_are_shown_briefly(tmp_path):
    for key in ["0x" + "f" * 10_000, "k" * 10_000, '"\\ud800"', "2001-01-01", "[1, 2]"]:
        path = write(tmp_path, f"? {key}\n: 1\n")
        try:
            resolve_config(path, {}, [])
        except ConfigError as e:
            assert len(str(e)) < 200 + len(str(path)), str(e)[:300]
        else:
            raise AssertionError(key)


def test_a_huge_config_file_is_not_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(64 << 20)  # sparse: nothing is written
    with pytest.raises(ConfigError) as e:
        load_config_file(path)
    assert str(e.value) == (
        f"config file '{path}' is larger than 1 MiB; a config is a short mapping of keys to "
        "values: check the --config path"
    )


def test_a_set_item_is_shown_briefly():
    with pytest.raises(ConfigError) as e:
        parse_set("x" * 1_000_000)
    assert len(str(e.value)) < 150


# values of every kind YAML and JSON can make, big and deep
ANY_VALUE = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**60).map(lambda n: n ** (1 + n % 64)),  # up to thousands of bits
        st.floats(),
        st.text(max_size=200),
        st.binary(max_size=50),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=50), st.dictionaries(st.text(max_size=5), inner, max_size=50)
    ),
    max_leaves=40,
)
EXAMPLES = float(os.environ.get("CHARRNN_FUZZ_SCALE", "1"))
HANG_S = 30  # a guard against a hang (a quadratic int(), an exponential expansion), not a timing


@settings(max_examples=max(1, round(100 * EXAMPLES)), deadline=None, database=None)
@given(key=st.sampled_from(sorted(DEFAULTS) + ["unknown"]), value=ANY_VALUE)
def test_any_value_is_coerced_or_refused_with_a_short_message(key, value):
    with time_limit(HANG_S):
        try:
            Config.from_dict({key: value})
        except ConfigError as e:
            assert len(str(e)) < 200 and "\n" not in str(e)


@settings(max_examples=max(1, round(100 * EXAMPLES)), deadline=None, database=None)
@given(value=ANY_VALUE)
def test_show_is_short_whatever_it_is_given(value):
    with time_limit(HANG_S):
        assert len(_show(value)) <= 60
