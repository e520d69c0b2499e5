"""The typed, validated training config: defaults, config files, overrides and --set items.

Every key is one field of the frozen `Config` dataclass, declared with its rule (type and
range) beside it, so validation is one loop over the fields instead of one if-block per key.
A `Config` cannot hold an invalid value: `__post_init__` checks and coerces every field.

A value may be anything YAML or JSON can say, so every step is bounded whatever it is given:
config files are read up to MAX_FILE_BYTES and parsed without aliases (`*name`, whose expansion
can be exponential in the size of the file) or nesting deeper than MAX_DEPTH; an integer is at
most 2**63 - 1 and its text at most MAX_NUMBER_CHARS long; and an error shows a value through
`_show`, which never turns more than a few dozen characters of it into text.

`settle` decides the rest of a run's config, new or resumed (seed, init_scale, workers, the
keys a resume may not change, the MPI ranks' share of the batch); turning `ConfigError` into a
message for the user is left to the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import operator
import reprlib
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from charrnn.cells import CELLS
from charrnn.data import DECODE_ERRORS, DOCUMENTS, text_codec
from charrnn.errors import ConfigError
from charrnn.model import INIT_SCALE
from charrnn.optim import ANNEALED
from charrnn.parallel import auto_workers

# ---- rules: one per field ----


@dataclass(frozen=True)
class _Rule:
    kind: type  # int, float or str: the type the value is coerced to
    expected: str  # said in errors: "expected an integer >= 1"
    ok: Callable[[Any], bool]  # range / membership check on the coerced value
    none_ok: bool = False  # None is a valid value (rng_seed)


MAX_LAYERS = 1024  # num_layers; checkpoint.load refuses more
INT_LIMIT = 2**63  # every integer setting is below it: a step, a seed or a size fits an int64
MAX_NUMBER_CHARS = 100  # text longer than this is never read as a number (int() is quadratic)
MAX_FILE_BYTES = 1 << 20  # a config file is a short mapping: a few kB
MAX_DEPTH = 32  # nesting of lists and mappings in a config file or --set value

# keyword bound -> (how errors say it, the check)
_BOUNDS = {
    "gt": (">", operator.gt),
    "ge": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "le": ("<=", operator.le),
}


def _within(bounds: dict[str, float]) -> tuple[str, Callable[[Any], bool]]:
    """{"ge": 0, "lt": 1} -> (">= 0 and < 1", a predicate that checks both)."""
    said = " and ".join(f"{_BOUNDS[k][0]} {_number_text(limit)}" for k, limit in bounds.items())
    return said, lambda v: all(_BOUNDS[k][1](v, limit) for k, limit in bounds.items())


def _number_text(limit: float) -> str:
    """1e12 -> '1e+12', 1_000_000 -> '1,000,000', 0.5 -> '0.5'."""
    return f"{limit:,}" if isinstance(limit, int) else f"{limit:g}"


def _rule(default: Any, rule: _Rule) -> Any:
    return field(default=default, metadata={"rule": rule})


def _integer(default: int | None, *, none_ok: bool = False, **bounds: int) -> Any:
    said, ok = _within(bounds)
    expected = f"an integer {said}" + (" or null" if none_ok else "")
    return _rule(default, _Rule(int, expected, ok, none_ok))


def _number(default: float | None, *, none_ok: bool = False, **bounds: float) -> Any:
    said, ok = _within(bounds)
    expected = f"a number {said}" + (" or null" if none_ok else "")
    return _rule(default, _Rule(float, expected, ok, none_ok))


def _one_of(*choices: str) -> Any:
    """The first choice is the default."""
    rule = _Rule(str, "one of " + ", ".join(choices), lambda v: v in choices)
    return _rule(choices[0], rule)


def _path() -> Any:
    """A path, or null (the default)."""
    return _rule(None, _Rule(str, "a path or null", lambda v: 0 < len(v) < 4096, True))


def _codec(default: str) -> Any:
    expected = "a text encoding Python knows, such as utf-8"
    return _rule(default, _Rule(str, expected, _known_codec))


def _known_codec(name: str) -> bool:
    # codec names are short ASCII: codecs.lookup raises UnicodeEncodeError on a surrogate
    return name.isascii() and len(name) <= 100 and text_codec(name) is not None


# ---- the config ----


@dataclass(frozen=True)
class Config:
    """All settings of a training run. Build with `Config.from_dict` or `resolve_config`."""

    # model
    cell: str = _one_of(*CELLS)  # the recurrent cell: vanilla tanh, LSTM or GRU
    num_layers: int = _integer(1, ge=1, le=MAX_LAYERS)  # stacked recurrent layers
    hidden_size: int = _integer(128, ge=1)  # hidden units H (per layer)
    dropout: float = _number(0.0, ge=0, lt=1)  # on each layer's outputs in training
    seq_length: int = _integer(100, ge=1)  # truncated-BPTT chunk length T
    batch_size: int = _integer(32, ge=1)  # parallel streams B
    # std of the normal init of Wxh, Why; None = the cell's own (model.INIT_SCALE)
    init_scale: float | None = _number(None, gt=0, le=1000, none_ok=True)
    dtype: str = _one_of("float32", "float64")
    # threads sharing a step's streams; 0 = one per core. Each holds its own gradients: a few
    # per core help, thousands would only exhaust threads and memory
    workers: int = _integer(0, ge=0, le=1024)
    # optimizer
    learning_rate: float = _number(2e-3, gt=0)
    optimizer: str = _one_of("adam", "rmsprop", "adagrad", "sgd")
    momentum: float = _number(0.9, ge=0, lt=1)  # sgd
    beta1: float = _number(0.9, ge=0, lt=1)  # adam
    beta2: float = _number(0.999, ge=0, lt=1)  # adam
    rmsprop_decay: float = _number(0.99, ge=0, lt=1)
    eps: float = _number(1e-8, gt=0)
    # each step shrinks the weight matrices (not the biases) by lr x weight_decay, apart from the
    # gradient, as AdamW does; 0 = off
    weight_decay: float = _number(0.0, ge=0, le=1)
    # none, step, exponential, or cosine / linear: annealed over the run's length (the step or
    # epoch limit, or max_time, whichever ends it), as nanoGPT anneals over max_iters
    lr_decay: str = _one_of("none", "step", "exponential", *ANNEALED)
    lr_decay_rate: float = _number(0.5, gt=0, le=1)
    lr_decay_steps: int = _integer(1000, ge=1)  # step: every N steps; exponential: rate**(s/N)
    lr_final: float = _number(0.1, ge=0, le=1)  # cosine, linear: the last lr, x learning_rate
    warmup_steps: int = _integer(0, ge=0)  # the first N updates rise linearly to the lr
    grad_clip: float = _number(5.0, ge=0)  # 0 = no clipping
    clip_mode: str = _one_of("norm", "value")
    # when to stop (0 = no limit)
    max_steps: int = _integer(2000, ge=0)
    # a float so 0.5 epochs works; bounded so that epochs x steps per epoch stays finite
    max_epochs: float = _number(0.0, ge=0, le=1e12)
    max_time: float = _number(0.0, ge=0)  # seconds
    patience: int = _integer(0, ge=0)  # validations without improvement; 0 = off
    # what to do along the way (0 = never)
    eval_every: int = _integer(200, ge=0)
    sample_every: int = _integer(0, ge=0)
    sample_length: int = _integer(200, ge=1, le=1_000_000)  # a preview, held as one string
    checkpoint_every: int = _integer(200, ge=1)
    # a stream's carried state is zeroed with this probability before each chunk, so that the
    # model learns to start well from a zero state, as sample and eval do
    reset_prob: float = _number(0.03, ge=0, le=1)
    # each input character is replaced by a random one with this probability in training (the
    # targets stay), so the model learns to fall back into text after characters it did not
    # expect, anywhere (docs/zero-state.md: 0.05 makes seeds safe too, but costs validation bpc)
    input_noise: float = _number(0.0, ge=0, lt=1)
    # after each reset, a stream's first n inputs (n uniform in 0..reset_noise) are random
    # characters (the targets stay): the odd start of an unusual seed, which it learns to leave
    # (docs/zero-state.md: with 40 every one of 50 odd seeds falls back into text, at no
    # measurable cost in validation bpc)
    reset_noise: int = _integer(40, ge=0, le=1_000_000)
    # randomness
    rng_seed: int | None = _integer(None, ge=0, none_ok=True)  # None = pick one at random
    # data
    val_fraction: float = _number(0.05, ge=0, lt=1)
    val_max_chars: int = _integer(1_000_000, ge=1)
    encoding: str = _codec("utf-8")
    decode_errors: str = _one_of(*DECODE_ERRORS)
    # what a document is: each file (file); each line, or each blank-line-separated block, a
    # record that ends with the end-of-record symbol (line, paragraph). docs/texts.md
    documents: str = _one_of(*DOCUMENTS)
    # validation text (a file or a folder) instead of the tail of the corpus; null = the tail
    val_file: str | None = _path()
    # fine-tuning: the checkpoint (or run folder) whose weights a new run started from; set by
    # --init-from, recorded so that the run says where it began. docs/texts.md
    init_from: str | None = _path()

    def __post_init__(self) -> None:
        for f in fields(self):
            # frozen: object.__setattr__ is the documented way to set fields in __post_init__
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))
        if self.lr_decay in ANNEALED and not (self.max_steps or self.max_epochs or self.max_time):
            raise ConfigError(
                f"config key 'lr_decay': {self.lr_decay} anneals over the run's length, but the "
                "run has no end; set max_steps, max_epochs or max_time, or another lr_decay"
            )
        if self.weight_decay * self.learning_rate >= 1:
            raise ConfigError(
                f"config key 'weight_decay': {self.weight_decay:g} x learning_rate "
                f"{self.learning_rate:g} is 1 or more, which would zero or flip the weights each "
                "step; lower one of them"
            )
        if self.patience > 0 and (self.eval_every == 0 or self.val_fraction == 0):
            raise ConfigError(
                f"config key 'patience': got {self.patience}, but early stopping needs "
                "validation; set eval_every and val_fraction above 0, or patience to 0"
            )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        """Validate every key and value of `d`; keys it leaves out keep their defaults."""
        _check_keys(d)
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats, strings and None, in field order: JSON- and YAML-able."""
        return dataclasses.asdict(self)

    def with_seed(self, seed: int) -> Config:
        return dataclasses.replace(self, rng_seed=seed)


_RULES: dict[str, _Rule] = {f.name: f.metadata["rule"] for f in fields(Config)}


def _check_keys(d: Mapping[str, Any]) -> None:
    for key in d:
        if key not in _RULES:
            close = isinstance(key, str) and difflib.get_close_matches(key[:100], _RULES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see docs/config.md"
            raise ConfigError(f"unknown config key {_show(key)} ({hint})")


def _coerce(name: str, value: Any) -> Any:
    """`value` as the field's type, or ConfigError naming key, value and what is allowed."""
    rule = _RULES[name]
    if value is None and rule.none_ok:
        return None
    coerced = _as_kind(value, rule.kind)
    expected = rule.expected
    if rule.kind is int and coerced is not None and not -INT_LIMIT < coerced < INT_LIMIT:
        coerced, expected = None, f"{expected}, below 2**63"
    if coerced is None or not rule.ok(coerced):
        raise ConfigError(f"config key '{name}': got {_show(value)}, expected {expected}")
    return coerced


def _as_kind(value: Any, kind: type) -> Any:
    """int/float/str value, or None if `value` is not one. A str that parses as the number
    is accepted: YAML 1.1 reads `1e-3` as a string, and so would a --set item."""
    if isinstance(value, bool):  # bool is an int subclass; `hidden_size: yes` is a mistake
        return None
    if kind is str:
        return value if isinstance(value, str) else None
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_CHARS:
            return None
        try:
            value = kind(value)
        except ValueError:
            return None
    if kind is int:
        return int(value) if isinstance(value, numbers.Integral) else None
    if not isinstance(value, numbers.Real):
        return None
    try:
        value = float(value)  # an int past float's range (10**400) overflows
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


class _Brief(reprlib.Repr):
    """repr cut short at every level: a few items of a few levels of a list or mapping, the
    start of a string, and an integer too long to print as its size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxstring, self.maxother = 3, 40, 40
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 4

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() <= 200:
            return repr(x)
        return f"an integer of about {round(x.bit_length() * math.log10(2)):,} digits"

    def repr_str(self, x: str, level: int) -> str:
        return repr(x[: self.maxstring]) + ("..." if len(x) > self.maxstring else "")


_BRIEF = _Brief()


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML, cut short if long: at most 60 characters, made
    from at most a few dozen characters of the value, whatever its size, depth or type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, _TooLong):
        return repr(value)
    text = repr(value[:60]) if isinstance(value, str) else _BRIEF.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


DEFAULTS: dict[str, Any] = Config().to_dict()


# ---- reading config files and --set items ----


class _TooLong:
    """A YAML integer written with more than MAX_NUMBER_CHARS characters: no setting is that
    long, and converting it would take time (decimal) or give a number too big to print
    (hexadecimal), so only its length is kept, to be shown in the error."""

    def __init__(self, chars: int):
        self.chars = chars

    def __repr__(self) -> str:
        return f"an integer written with {self.chars:,} characters"


class _Loader(yaml.SafeLoader):
    """yaml.SafeLoader less what a config never needs and a hostile file would use: aliases,
    deep nesting and integers too long to be a setting. Each is refused in bounded time."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.nesting = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a config", mark
            )
        if self.nesting >= MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"lists or mappings nested more than {MAX_DEPTH} deep", mark
            )
        self.nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_NUMBER_CHARS:
            return _TooLong(len(node.value))
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _parse_yaml(text: str) -> Any:
    """The value of a YAML document read with _Loader (yaml.YAMLError if it is refused)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file ({} for an empty file). Values are not validated."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # /dev/zero or a huge file: read no further
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found; check the --config path") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}' cannot be read: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"config file '{path}' is larger than {MAX_FILE_BYTES >> 20} MiB; a config is a "
            "short mapping of keys to values: check the --config path"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text; save it as UTF-8") from None
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(
            f"config file '{path}' is not valid YAML{where}: {problem}; fix the file"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}': top level must be a mapping of keys to values, "
            f"got {_kind_name(data)}"
        )
    return data


def _kind_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (numbers.Number, _TooLong)):
        return "a number"
    return f"a {type(value).__name__}"


def parse_set(item: str) -> tuple[str, Any]:
    """'hidden-size=256' -> ('hidden_size', 256). The value is read as YAML (as a config
    file's, without aliases); an empty value is None."""
    key, sep, raw = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(
            f"--set {_show(item)}: expected the form key=value, e.g. --set hidden_size=256"
        )
    try:
        value = _parse_yaml(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or "syntax error"
        raise ConfigError(
            f"--set {_show(item)}: the value is not valid YAML ({problem}); quote it"
        ) from None
    return key, value


def check_settings(settings: Mapping[str, Any]) -> None:
    """ConfigError unless every key of settings is a config key and its value keeps the key's
    rule: the one check of a setting, for a layer of `resolve_config` and a command-line flag."""
    _check_keys(settings)
    for key, value in settings.items():
        _coerce(key, value)


def resolve_config(
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    set_items: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Built-in defaults < base < config file < overrides (the caller's settings, CLI flags or
    keyword arguments; None = not given) < --set.

    `base` is a checkpoint's config when training resumes.

    Each layer is checked on its own first (`check_settings`), so an error says where the bad
    value came from: the config file or --set; an override is named by its key alone.
    """
    layers: list[tuple[str | None, Mapping[str, Any]]] = []
    if config_file is not None:
        layers.append((f"config file '{config_file}'", load_config_file(config_file)))
    layers.append((None, {k: v for k, v in (overrides or {}).items() if v is not None}))
    layers.append(("--set", dict(parse_set(item) for item in set_items)))

    merged: dict[str, Any] = dict(base or {})
    for source, layer in layers:
        try:
            check_settings(layer)
        except ConfigError as e:
            if source is None:
                raise
            raise ConfigError(f"{e} (in {source})") from None
        merged.update(layer)
    return Config.from_dict(_given_limits_only(merged, [layer for _, layer in layers]))


LIMITS = ("max_steps", "max_epochs", "max_time")  # the settings that stop a run


def _given_limits_only(merged: dict[str, Any], given: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The rule of limits: when the user gives any of max_steps, max_epochs and max_time (in a
    config file, a flag or --set), the ones not given are off (0), whatever their built-in
    default or a resumed run's value; when none is given, the defaults (or the resumed run's
    limits) hold. So `--max-time 60` trains for 60 seconds, not until max_steps' default 2000;
    limits given together all hold, and the first one reached stops the run."""
    named = {key for layer in given for key in layer if key in LIMITS}
    if not named:
        return merged
    return {**merged, **{key: 0 for key in LIMITS if key not in named}}


# ---- settling a run's config: the one place every value of a run is decided ----

# keys that fix the model's shape or the meaning of its saved state: a resumed run keeps them
FIXED_ON_RESUME = (
    "cell",
    "num_layers",
    "hidden_size",
    "batch_size",
    "seq_length",
    "dtype",
    "optimizer",
    "val_fraction",
    "encoding",
    "decode_errors",
    "documents",
    "val_file",
    "init_from",
)


# keys added with a default that trains differently, and the value that trains as runs did
# before them: a run saved without the key resumes with it
BEFORE_THE_KEY = {"reset_noise": 0, "input_noise": 0.0}


def settle(
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None = None,
    set_items: Iterable[str] = (),
    *,
    saved: Mapping[str, Any] | None = None,
    ranks: int = 1,
    cores: int | None = None,
) -> Config:
    """The config a run trains with, new or resumed: `resolve_config`'s layers over `saved`, the
    config of the run that is resumed (None for a new run), then what is left to decide.

    A resumed run may not change the keys FIXED_ON_RESUME. A new run gets a random seed when
    none is given, the cell's own init_scale when none is given, and the actual worker count
    (each of `ranks` MPI processes' over its `cores`): config.yaml then holds every value the
    run used, and the same seed and count reproduce the same bits anywhere. Under MPI the
    batch's streams are shared by the ranks, so batch_size must be a multiple of their number.
    """
    if saved is not None:  # a key newer than the run: the value it trained with
        saved = {**BEFORE_THE_KEY, **saved}
    cfg = resolve_config(config_file, overrides, set_items, base=saved)
    if saved is not None:
        before = Config.from_dict(saved)
        changed = [k for k in FIXED_ON_RESUME if getattr(cfg, k) != getattr(before, k)]
        if changed:
            raise ConfigError(
                f"cannot change {', '.join(changed)} when resuming; start a new run instead"
            )
    else:
        seed = secrets.randbelow(2**31) if cfg.rng_seed is None else cfg.rng_seed
        init_scale = INIT_SCALE[cfg.cell] if cfg.init_scale is None else cfg.init_scale
        workers = auto_workers(max(1, cfg.batch_size // ranks), cfg.workers, cores)
        cfg = dataclasses.replace(cfg, rng_seed=seed, workers=workers, init_scale=init_scale)
    if cfg.batch_size % ranks:
        raise ConfigError(
            f"batch_size {cfg.batch_size} cannot be shared by {ranks} MPI processes; "
            f"give a multiple of {ranks}"
        )
    return cfg


def config_to_yaml(cfg: Config) -> str:
    """The config as YAML, keys in field order; `load_config_file` reads it back."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False)
