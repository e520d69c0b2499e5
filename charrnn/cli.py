"""The `charrnn` command line: thin commands that parse, call one library function, print.

stdout carries the product (sampled text, --json results); progress and notices go to stderr.
Library errors (CharRNNError) become one `Error: ...` line on stderr and exit code 1; usage
errors keep Typer's exit code 2; an interrupt exits 128 + the signal number (130 for Ctrl-C).

The standard streams are the shell's to hand over as it likes (see "the standard streams"
below): a product that cannot be written to stdout is an error, except for a reader that
stopped reading (`| head`), a quiet exit 0; a notice that cannot be written to stderr is
dropped; `-` with stdin closed is an error.
"""

from __future__ import annotations

import codecs
import errno
import json
import math
import os
import sys
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from charrnn import __version__, api, cache
from charrnn.config import DEFAULTS
from charrnn.data import read_text, unknown_chars
from charrnn.distributed import PeerFailed, end_together
from charrnn.errors import CharRNNError, ConfigError
from charrnn.progress import make_encode_bar
from charrnn.runs import CHECKPOINT_ENV, choose_checkpoint

app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion, Typer's own
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click usage errors: "Error: ..." lines a script can read
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Train, sample and evaluate character-level language models (RNN, LSTM, GRU) in NumPy.",
)


class PlainCommand(TyperCommand):
    """Usage line and argument help written the plain click way, `charrnn train [OPTIONS]
    CORPUS` and `CORPUS  Text file...`: with rich_markup_mode=None this Typer writes
    `{corpus}` and `corpus <str>` instead. Arguments show their metavar; options are Typer's."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if _is_argument(param):
                pieces.append(param.metavar)
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: typer.Context, formatter) -> None:
        params = self.get_params(ctx)
        rows = {
            "Arguments": [
                (p.metavar, getattr(p, "help", "") or "") for p in params if _is_argument(p)
            ],
            "Options": [
                record
                for p in params
                if p.param_type_name == "option" and (record := p.get_help_record(ctx))
            ],
        }
        for section, records in rows.items():
            if records:
                with formatter.section(section):
                    formatter.write_dl(records)


def _is_argument(param) -> bool:
    return param.param_type_name == "argument" and param.metavar is not None


def _print_version(value: bool) -> None:
    if value:
        emit(f"charrnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Train, sample and evaluate character-level language models (RNN, LSTM, GRU) in NumPy."""


# ---- the standard streams ----


class OutputError(Exception):
    """stdout could not be written: the reader left (EPIPE), the disk is full, it is closed.
    Not an OSError, so that neither click (which turns a broken pipe into a silent exit 1) nor
    user_errors (which words an OSError as a problem with the user's files) takes it."""

    def __init__(self, e: OSError):
        super().__init__(e.strerror or str(e))
        self.errno = e.errno


class Product:
    """stdout as the commands write their product to it: a write that fails is an OutputError.
    Looked up at each call (`stdout()`), since the test runner swaps sys.stdout per command."""

    def __init__(self, stream):
        self.stream = stream  # None: closed when the program started (`>&-`)

    def _do(self, method: str, *args):
        if self.stream is None:
            raise OutputError(OSError(errno.EBADF, "closed"))
        try:
            return getattr(self.stream, method)(*args)
        except OSError as e:
            raise OutputError(e) from None

    def write(self, text: str) -> int:
        return self._do("write", text)

    def flush(self) -> None:
        self._do("flush")

    def isatty(self) -> bool:
        return self.stream is not None and self.stream.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def stdout() -> Product:
    return Product(sys.stdout)


def emit(text: str) -> None:
    """One line of the product on stdout (an OutputError ends the command: `output_failed`)."""
    out = stdout()
    try:
        out.write(text + "\n")
        out.flush()
    except OutputError as e:
        raise output_failed(e) from None


def note(text: str) -> None:
    """One line for the user on stderr. A line that cannot be written is dropped: stderr is
    the user's to close, and a notice lost must never cost the product or its exit code."""
    if sys.stderr is None:
        return
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: a stream closed under us
        pass


def output_failed(e: OutputError) -> typer.Exit:
    """How a command ends when stdout fails: a reader that stopped reading (`| head`) is a
    quiet exit 0, the Unix convention; anything else is an error, said on stderr if it works."""
    _discard(sys.stdout)
    if e.errno == errno.EPIPE:
        return typer.Exit(0)
    why = "it is closed; redirect it to /dev/null to discard it" if e.errno == errno.EBADF else e
    return error(f"cannot write to standard output: {why}")


def _discard(stream) -> None:
    """Point the file descriptor of a stream that failed at /dev/null, so that what is still
    buffered goes nowhere when the interpreter flushes it at exit, instead of failing again
    (which would print a traceback and turn the exit status into 120)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # None, or the test runner's in-memory stream
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def need_stdout() -> None:
    """Refuse before any work when stdout was closed (`>&-`) and the command must print."""
    if sys.stdout is None:
        raise output_failed(OutputError(OSError(errno.EBADF, "closed")))


def need_stdin(source) -> None:
    """Refuse "-" (read standard input) when stdin was closed (`<&-`)."""
    if str(source) == "-" and sys.stdin is None:
        raise error("standard input is closed; pipe the text in or give a file")


def to_json(obj: Any, readable: bool = False) -> str:
    """Always valid JSON: a number that is not finite (which json.dumps would write as NaN or
    Infinity) becomes null, and characters beyond ASCII are written as \\u escapes unless
    `readable` asks for them as they are and stdout is UTF-8."""
    plain = not readable or codecs.lookup(stdout().encoding).name != "utf-8"
    return json.dumps(_finite(obj), ensure_ascii=plain, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _standard_streams() -> None:
    """Before any command: a standard stream that the shell closed (`<&-`, `>&-`, `2>&-`) gets
    /dev/null in its place, so that no file the command opens takes its number (where a stray
    write to fd 1 or 2 would land in a checkpoint); Python has set sys.stdin/stdout/stderr to
    None for it, which need_stdin and need_stdout read as closed and note() as nowhere to
    write. Characters that stdout's encoding cannot write (PYTHONIOENCODING=ascii and a
    model's vocabulary beyond it) are written as backslash escapes instead of crashing."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)  # the lowest free number: fd itself, in order
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def error(message: str, code: int = 1) -> typer.Exit:
    note(f"Error: {message}")
    return typer.Exit(code)


@contextmanager
def user_errors():
    """Library errors to one stderr line and exit 1; Ctrl-C outside training to exit 130; a
    product that cannot be written to stdout as `output_failed` says."""
    try:
        yield
    except PeerFailed:  # another MPI rank failed and says why
        raise typer.Exit(1) from None
    except CharRNNError as e:
        raise error(str(e)) from None
    except OutputError as e:
        raise output_failed(e) from None
    except OSError as e:  # a backstop: the library words the failures it expects itself
        name = str(e.filename or "")
        name = f" '{name[:80]}...'" if len(name) > 80 else f" '{name}'" if name else ""
        raise error(
            f"cannot access{name}: {e.strerror or e}; check the path and its permissions"
        ) from None
    except KeyboardInterrupt:
        note("Interrupted.")
        raise typer.Exit(130) from None
    except (MemoryError, ValueError) as e:  # numpy: "array is too big", "maximum ... dimension"
        if isinstance(e, ValueError) and not any(m in str(e) for m in _TOO_BIG):
            raise
        raise error(
            "not enough memory for what this command was asked to do; lower the sizes given "
            "to it (--hidden-size, --batch-size, --seq-length, --num-samples, --length)"
        ) from None


_TOO_BIG = ("array is too big", "Maximum allowed dimension exceeded")


def check_flags(values: dict[str, Any]) -> None:
    """Flag values checked by the config's own rules; a bad one is a usage error (exit 2)
    worded as the config says it: "Invalid value for '--hidden-size': got 0, expected ..."."""
    for key, value in values.items():
        try:
            api.check_setting(key, value)
        except ConfigError as e:
            raise typer.BadParameter(
                str(e).removeprefix(f"config key '{key}': "),
                param_hint=f"'--{key.replace('_', '-')}'",
            ) from None


def _default(key: str, text: str) -> str:
    """Help text ending in the config default, the way Typer shows one: [default: 128]. The
    flags themselves default to None (not given), so --config and a resumed run's saved
    config are not overridden by defaults nobody typed."""
    value = DEFAULTS[key]
    return f"{text}  [default: {f'{value:g}' if isinstance(value, float) else value}]"


@app.command(cls=PlainCommand)
def train(
    ctx: typer.Context,
    corpus: Annotated[
        str,
        typer.Argument(metavar="CORPUS", help="Text file to train on (UTF-8), or - for stdin."),
    ],
    config: Annotated[
        Path | None, typer.Option(metavar="FILE", help="YAML config file; flags override it.")
    ] = None,
    cell: Annotated[
        str | None,
        typer.Option(metavar="rnn|lstm|gru", help=_default("cell", "Vanilla tanh, LSTM or GRU.")),
    ] = None,
    num_layers: Annotated[
        int | None,
        typer.Option(metavar="N", help=_default("num_layers", "Stacked recurrent layers.")),
    ] = None,
    hidden_size: Annotated[
        int | None,
        typer.Option(metavar="N", help=_default("hidden_size", "Hidden units H per layer.")),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            metavar="P",
            help=_default("dropout", "Dropout on each layer's outputs in training (0 = off)."),
        ),
    ] = None,
    seq_length: Annotated[
        int | None,
        typer.Option(
            metavar="T", help=_default("seq_length", "Characters per truncated-BPTT chunk.")
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(metavar="B", help=_default("batch_size", "Parallel streams."))
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(metavar="LR", help=_default("learning_rate", "Learning rate."))
    ] = None,
    optimizer: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=_default("optimizer", "adam, rmsprop, adagrad or sgd.")),
    ] = None,
    grad_clip: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            help=_default("grad_clip", "Clipping threshold (0 = off); see clip_mode."),
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            metavar="N", help=_default("max_steps", "Stop after N updates (0 = no limit).")
        ),
    ] = None,
    max_epochs: Annotated[
        float | None,
        typer.Option(
            metavar="N",
            help=_default("max_epochs", "Stop after N passes over the text (0 = no limit)."),
        ),
    ] = None,
    max_time: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help=_default(
                "max_time", "Stop after this many seconds of this invocation (0 = no limit)."
            ),
        ),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(
            metavar="N", help=_default("eval_every", "Validate every N steps (0 = never).")
        ),
    ] = None,
    sample_every: Annotated[
        int | None,
        typer.Option(
            metavar="N", help=_default("sample_every", "Print a sample every N steps (0 = never).")
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            metavar="N", help=_default("checkpoint_every", "Write last.npz every N steps.")
        ),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help=_default("patience", "Stop after N validations without improvement (0 = off)."),
        ),
    ] = None,
    rng_seed: Annotated[
        int | None,
        typer.Option(
            metavar="N",
            help="Seed for reproducible runs.  [default: random, recorded in config.yaml]",
        ),
    ] = None,
    encoding: Annotated[
        str | None,
        typer.Option(metavar="NAME", help=_default("encoding", "Text encoding of the corpus.")),
    ] = None,
    decode_errors: Annotated[
        str | None,
        typer.Option(
            metavar="strict|replace",
            help=_default("decode_errors", "Invalid bytes: an error, or U+FFFD."),
        ),
    ] = None,
    set_items: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any config key; repeatable; wins over everything.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(metavar="DIR", help="Run folder (default: a new folder under runs/)."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            metavar="RUN_OR_CKPT",
            help="Continue a run: its folder (uses last.npz) or a checkpoint file.",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Start over in an --out folder that holds a run, deleting its files; without "
            "it such a folder is refused.",
        ),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a model on a text corpus; writes config.yaml, metrics.jsonl, last.npz and best.npz.

    The defaults shown are the built-in ones; --config, and when resuming the run's saved
    config, take their place.
    """
    # every option named like a config key is a setting (None = not given on the command line)
    settings = {k: v for k, v in ctx.params.items() if k in DEFAULTS and v is not None}
    check_flags(settings)
    if json_out:
        need_stdout()
    need_stdin(corpus)
    with user_errors():
        result = api.train(
            corpus,
            config=config,
            out=out,
            resume=resume,
            overwrite=overwrite,
            quiet=quiet,
            set_items=set_items or [],
            **settings,
        )

    if not result.primary:  # an MPI rank other than 0: rank 0 reports
        raise typer.Exit(0 if result.signal is None else 128 + result.signal)
    if json_out:
        emit(to_json(result.to_dict()))
    if result.signal is not None:
        if not quiet:
            note(
                f"Interrupted at step {result.steps}; saved {result.last_checkpoint}; "
                f"continue with: charrnn train {corpus} --resume {result.run_dir}"
            )
        raise typer.Exit(128 + result.signal)
    if not quiet and not json_out:
        best = result.best_val_loss
        score = "" if best is None else f"; best val loss {best:.4f} ({best / math.log(2):.3f} bpc)"
        note(
            f"done: {result.steps} steps in {result.seconds:.1f}s{score}; "
            f"checkpoints in {result.run_dir}"
        )


@app.command(cls=PlainCommand)
def prepare(
    corpus: Annotated[
        str,
        typer.Argument(metavar="CORPUS", help="Text file to encode (UTF-8 unless --encoding)."),
    ],
    encoding: Annotated[
        str, typer.Option(metavar="NAME", help="Text encoding of the corpus.")
    ] = "utf-8",
    decode_errors: Annotated[
        str,
        typer.Option(metavar="strict|replace", help="strict (error on bad bytes) or replace."),
    ] = "strict",
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild the cache even when it is up to date.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Encode a corpus into its cache of character ids (CORPUS.charrnn-cache), so that every
    `train` on it starts at once; `train` does this itself when the cache is missing or stale."""
    if corpus == "-":
        raise typer.BadParameter(
            "prepare caches a file; `charrnn train -` encodes stdin into a temporary cache itself",
            param_hint="'CORPUS'",
        )
    if json_out:
        need_stdout()
    with user_errors():
        bar = make_encode_bar(quiet, corpus)
        with bar or nullcontext():
            prepared = cache.prepare(corpus, encoding, decode_errors, force=force, progress=bar)
    if json_out:
        emit(to_json(prepared.to_dict()))
    elif not quiet:
        note(prepared.summary())


class Unknown(str, Enum):
    """What to do with characters that are not in the model's vocabulary."""

    error = "error"
    skip = "skip"


CHECKPOINT_HELP = (
    "Checkpoint .npz, or a run folder (its best.npz). Default: the one $CHARRNN_CHECKPOINT "
    "names, else the most recently written runs/*/best.npz."
)


def _load(path: Path | None, quiet: bool) -> api.Model:
    """The model --checkpoint names, or the one the rule chooses; when chosen, say which run
    and step on stderr (a run folder in the path names the run)."""
    model = api.load(path)
    if not quiet and model.chosen_by != "given":
        how = (
            f"from ${CHECKPOINT_ENV}"
            if model.chosen_by == "env"
            else f"the most recently written runs/*/best.npz; pin one with --checkpoint or "
            f"{CHECKPOINT_ENV}"
        )
        note(f"Using checkpoint {model.path} (step {model.step}; {how})")
    return model


@app.command(cls=PlainCommand)
def sample(
    checkpoint: Annotated[
        Path | None, typer.Option(metavar="FILE_OR_RUN", help=CHECKPOINT_HELP)
    ] = None,
    seed: Annotated[
        str | None,
        typer.Option(
            metavar="TEXT",
            help="Prime text read before generating (default: none, the zero state).",
        ),
    ] = None,
    seed_file: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="Read the prime text from a UTF-8 file (- for stdin)."),
    ] = None,
    length: Annotated[int, typer.Option(min=1, metavar="N", help="Characters to generate.")] = 500,
    temperature: Annotated[
        float,
        typer.Option(
            metavar="T", help="Softmax temperature, > 0: lower is safer, higher more varied."
        ),
    ] = 1.0,
    top_k: Annotated[
        int | None,
        typer.Option(min=1, metavar="K", help="Draw only among the K most likely characters."),
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            metavar="P",
            help="Nucleus: draw among the fewest most likely characters holding mass P "
            "(0 < P <= 1).",
        ),
    ] = None,
    argmax: Annotated[
        bool, typer.Option("--argmax", help="Greedy: always take the most likely character.")
    ] = False,
    num_samples: Annotated[
        int,
        typer.Option(
            min=1, metavar="M", help="Independent samples, computed together as one batch."
        ),
    ] = 1,
    rng_seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Seed: the same inputs give the same text (default: random).",
        ),
    ] = None,
    no_seed_echo: Annotated[
        bool,
        typer.Option(
            "--no-seed-echo", help="Print only the generated text, not the seed before it."
        ),
    ] = False,
    unknown: Annotated[
        Unknown,
        typer.Option(
            metavar="error|skip",
            help="Seed characters not in the vocabulary: an error, or skip them.",
        ),
    ] = Unknown.error,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the samples as one JSON list of strings.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Generate text from a trained model, streamed to stdout as it is drawn."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise typer.BadParameter("must be a number > 0", param_hint="'--temperature'")
    if top_p is not None and not 0 < top_p <= 1:
        raise typer.BadParameter("must be > 0 and <= 1", param_hint="'--top-p'")
    if seed is not None and seed_file is not None:
        raise typer.BadParameter("give --seed or --seed-file, not both", param_hint="'--seed-file'")
    need_stdout()
    if seed_file is not None:
        need_stdin(seed_file)
    with user_errors():
        model = _load(checkpoint, quiet)
        prime = read_text(seed_file) if seed_file is not None else seed or ""
        dropped = unknown_chars(prime, model.vocab) if unknown is Unknown.skip else []
        if dropped and not quiet:
            from charrnn.sample import show_chars

            note(
                "Warning: the seed's characters not in the model's vocabulary were "
                f"skipped: {show_chars(dropped)}"
            )
        samples = model.sample(
            prime,
            length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            argmax=argmax,
            num_samples=num_samples,
            rng_seed=rng_seed,
            unknown=unknown.value,
            echo_seed=not no_seed_echo,
            out=None if json_out else stdout(),  # streamed as it is drawn
        )
    if json_out:
        emit(to_json([samples] if num_samples == 1 else samples))


@app.command("eval", cls=PlainCommand)
def eval_text(
    text: Annotated[
        str, typer.Argument(metavar="TEXT", help="Text file to score, or - for stdin.")
    ],
    checkpoint: Annotated[
        Path | None, typer.Option(metavar="FILE_OR_RUN", help=CHECKPOINT_HELP)
    ] = None,
    unknown: Annotated[
        Unknown,
        typer.Option(
            metavar="skip|error",
            help="Characters not in the vocabulary: skip them (counted), or an error.",
        ),
    ] = Unknown.skip,
    encoding: Annotated[str, typer.Option(metavar="NAME", help="Text encoding of TEXT.")] = "utf-8",
    decode_errors: Annotated[
        str,
        typer.Option(metavar="strict|replace", help="strict (error on bad bytes) or replace."),
    ] = "strict",
    per_char: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also write one JSON line per scored character to FILE (- for stdout): the "
            "char, its probability p, bits (-log2 p), the model's top 3 guesses.",
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print loss, bpc, perplexity, chars, unknown_chars as JSON."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Score a text exactly: mean loss in nats per character, bits per character, perplexity."""
    check_flags({"encoding": encoding, "decode_errors": decode_errors})
    if per_char == "-" and json_out:
        raise typer.BadParameter(
            "--per-char - and --json would both write to stdout; give --per-char a file",
            param_hint="'--per-char'",
        )
    need_stdout()
    need_stdin(text)
    with user_errors():
        model = _load(checkpoint, quiet)
        content = read_text(text, encoding, decode_errors)
        name = "<stdin>" if text == "-" else text
        result = model.evaluate(content, unknown=unknown.value, name=name)
        if per_char is not None:
            _write_lines(model.char_scores(content), per_char)
    if json_out:
        emit(to_json(result.to_dict()))
    elif per_char != "-":
        emit(result.summary())
    elif not quiet:  # stdout holds the per-character lines
        note(result.summary())


def _write_lines(records, dest: str) -> None:
    """One JSON object per line to the file dest (UTF-8), or to stdout for "-"."""
    if dest == "-":
        out = stdout()
        for rec in records:
            out.write(to_json(rec, readable=True) + "\n")
        out.flush()
        return
    with open(dest, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


@app.command(cls=PlainCommand)
def info(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="[CHECKPOINT_OR_RUN]",
            help="A checkpoint .npz, or a run folder (its best.npz). Default: the one sample "
            "and eval would use.",
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print everything as one JSON object.")
    ] = False,
) -> None:
    """Show what a checkpoint holds: cell, layers, sizes, vocabulary, step, characters seen,
    best and last validation bpc, the training config and the file's format version."""
    from charrnn.info import describe, summary

    need_stdout()
    with user_errors():
        described = describe(choose_checkpoint(checkpoint)[0])
    emit(to_json(described, readable=True) if json_out else summary(described))


class XAxis(str, Enum):
    """What the curves are drawn against."""

    steps = "steps"
    chars = "chars"
    time = "time"


@app.command(cls=PlainCommand)
def plot(
    runs: Annotated[
        list[Path],
        typer.Argument(metavar="RUN...", help="Run folders (or their metrics.jsonl files)."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Draw into an image file (PNG; .svg or .pdf by the name) instead of a text "
            "chart; needs pip install 'charrnn[plot]'.",
        ),
    ] = None,
    x: Annotated[
        XAxis,
        typer.Option(
            "--x",
            metavar="steps|chars|time",
            help="Against steps, training characters, or seconds of training.",
        ),
    ] = XAxis.steps,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Draw train and validation bits per character of one or more runs."""
    from charrnn.plot import read_curves, save_image, text_chart

    if output is None:
        need_stdout()
    with user_errors():
        curves = [read_curves(run, x.value) for run in runs]
        if output is not None:
            save_image(curves, output, x.value)
        else:
            from rich.console import Console

            chart = Console(file=stdout(), highlight=False)
            chart.print(text_chart(curves, x.value), end="", soft_wrap=True)
    if output is not None and not quiet:
        note(f"wrote {output}")


def main() -> None:
    _standard_streams()
    try:
        with end_together():  # under MPI, an error that one rank alone met ends every rank
            app()
    finally:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except (OSError, ValueError):  # stderr went away: its notices are lost, not the exit code
            _discard(sys.stderr)
