"""The `charrnn` command line: thin commands that parse, call one library function, print.

stdout carries the product (sampled text, --json results); progress and notices go to stderr.
Library errors (CharRNNError) become one `Error: ...` line on stderr and exit code 1; usage
errors keep Typer's exit code 2; an interrupt exits 128 + the signal number (130 for Ctrl-C).
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn import cache
from charrnn import checkpoint as ckpt_io
from charrnn.config import DEFAULTS
from charrnn.data import DECODE_ERRORS, read_text
from charrnn.errors import CharRNNError
from charrnn.progress import make_encode_bar, make_reporter
from charrnn.runs import latest_checkpoint

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click usage errors: "Error: ..." lines a script can read
    help="Train, sample and evaluate character-level vanilla RNN language models (NumPy).",
)


@app.callback()
def _root() -> None:
    """Train, sample and evaluate character-level vanilla RNN language models (NumPy)."""


def error(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"Error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def user_errors():
    """Library errors to one stderr line and exit 1; Ctrl-C outside training to exit 130."""
    try:
        yield
    except CharRNNError as e:
        raise error(str(e)) from None
    except BrokenPipeError:  # `charrnn sample | head`: main() exits quietly
        raise
    except OSError as e:  # a backstop: the library words the failures it expects itself
        name = str(e.filename or "")
        name = f" '{name[:80]}...'" if len(name) > 80 else f" '{name}'" if name else ""
        raise error(
            f"cannot access{name}: {e.strerror or e}; check the path and its permissions"
        ) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130) from None


@app.command()
def train(
    ctx: typer.Context,
    corpus: Annotated[str, typer.Argument(help="Text file to train on (UTF-8), or - for stdin.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML config file; flags override it.")
    ] = None,
    cell: Annotated[
        str | None, typer.Option(help="rnn (vanilla tanh, the default), lstm or gru.")
    ] = None,
    num_layers: Annotated[int | None, typer.Option(help="Stacked recurrent layers.")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden units H per layer.")] = None,
    dropout: Annotated[
        float | None, typer.Option(help="Dropout on each layer's outputs in training (0 = off).")
    ] = None,
    seq_length: Annotated[
        int | None, typer.Option(help="Characters per truncated-BPTT chunk T.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Parallel streams B.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, rmsprop, adagrad or sgd.")] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help="Clipping threshold (0 = off); see clip_mode.")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Stop after N updates (0 = no limit).")
    ] = None,
    max_epochs: Annotated[
        float | None, typer.Option(help="Stop after N passes over the text (0 = no limit).")
    ] = None,
    max_time: Annotated[
        float | None, typer.Option(help="Stop after N seconds of this invocation (0 = no limit).")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Validate every N steps (0 = never).")
    ] = None,
    sample_every: Annotated[
        int | None, typer.Option(help="Print a sample every N steps (0 = never).")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Write last.npz every N steps.")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Stop after N validations without improvement (0 = off).")
    ] = None,
    rng_seed: Annotated[
        int | None,
        typer.Option(help="Seed for reproducible runs (default: random, recorded in config.yaml)."),
    ] = None,
    encoding: Annotated[str | None, typer.Option(help="Text encoding of the corpus.")] = None,
    decode_errors: Annotated[
        str | None, typer.Option(help="strict (error on bad bytes) or replace.")
    ] = None,
    set_items: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="key=value for any config key; repeatable; wins over everything."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default: a new folder under runs/).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue a run: its folder (uses last.npz) or a checkpoint file."),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a model on a text corpus; writes config.yaml, metrics.jsonl, last.npz and best.npz."""
    from charrnn.train import train_corpus

    # every option named like a config key is a setting (None = not given on the command line)
    settings = {k: v for k, v in ctx.params.items() if k in DEFAULTS}
    with user_errors():
        result = train_corpus(
            corpus,
            config_file=config,
            overrides=settings,
            set_items=set_items or [],
            out=out,
            resume=resume,
            reporter=make_reporter(quiet),
            encode_bar=make_encode_bar(quiet, "<stdin>" if corpus == "-" else corpus),
        )

    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    if result.signal is not None:
        if not quiet:
            typer.echo(
                f"Interrupted at step {result.steps}; saved {result.last_checkpoint}; "
                f"continue with: charrnn train {corpus} --resume {result.run_dir}",
                err=True,
            )
        raise typer.Exit(128 + result.signal)
    if not quiet and not json_out:
        best = result.best_val_loss
        score = "" if best is None else f"; best val loss {best:.4f} ({best / math.log(2):.3f} bpc)"
        typer.echo(
            f"done: {result.steps} steps in {result.seconds:.1f}s{score}; "
            f"checkpoints in {result.run_dir}",
            err=True,
        )


@app.command()
def prepare(
    corpus: Annotated[str, typer.Argument(help="Text file to encode (UTF-8 unless --encoding).")],
    encoding: Annotated[str, typer.Option(help="Text encoding of the corpus.")] = "utf-8",
    decode_errors: Annotated[
        str, typer.Option(help="strict (error on bad bytes) or replace.")
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
    with user_errors():
        bar = make_encode_bar(quiet, corpus)
        with bar or nullcontext():
            prepared = cache.prepare(corpus, encoding, decode_errors, force=force, progress=bar)
    if json_out:
        typer.echo(json.dumps(prepared.to_dict()))
    elif not quiet:
        typer.echo(prepared.summary(), err=True)


class Unknown(str, Enum):
    """What to do with characters that are not in the model's vocabulary."""

    error = "error"
    skip = "skip"


CHECKPOINT_HELP = (
    "Checkpoint .npz, or a run folder (its best.npz). "
    "Default: the most recent run's best.npz under ./runs."
)


def _checkpoint(path: Path | None, quiet: bool) -> ckpt_io.Checkpoint:
    """Load --checkpoint, a run folder's best.npz, or the latest run's; say which on stderr."""
    if path is None:
        path = latest_checkpoint()
        if not quiet:
            typer.echo(f"Using checkpoint {path}", err=True)
    elif path.is_dir():
        path = path / "best.npz"
    return ckpt_io.load(path)


@app.command()
def sample(
    checkpoint: Annotated[Path | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    seed: Annotated[
        str | None,
        typer.Option(help="Prime text read before generating (default: none, the zero state)."),
    ] = None,
    seed_file: Annotated[
        Path | None, typer.Option(help="Read the prime text from a UTF-8 file (- for stdin).")
    ] = None,
    length: Annotated[int, typer.Option(min=1, help="Characters to generate.")] = 500,
    temperature: Annotated[
        float, typer.Option(help="Softmax temperature, > 0: lower is safer, higher more varied.")
    ] = 1.0,
    top_k: Annotated[
        int | None, typer.Option(min=1, help="Draw only among the K most likely characters.")
    ] = None,
    top_p: Annotated[
        float | None,
        typer.Option(
            help="Nucleus: draw among the fewest most likely characters holding mass P "
            "(0 < P <= 1)."
        ),
    ] = None,
    argmax: Annotated[
        bool, typer.Option("--argmax", help="Greedy: always take the most likely character.")
    ] = False,
    num_samples: Annotated[
        int, typer.Option(min=1, help="Independent samples, computed together as one batch.")
    ] = 1,
    rng_seed: Annotated[
        int | None,
        typer.Option(min=0, help="Seed: the same inputs give the same text (default: random)."),
    ] = None,
    no_seed_echo: Annotated[
        bool,
        typer.Option(
            "--no-seed-echo", help="Print only the generated text, not the seed before it."
        ),
    ] = False,
    unknown: Annotated[
        Unknown, typer.Option(help="Seed characters not in the vocabulary: an error, or skip them.")
    ] = Unknown.error,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the samples as one JSON list of strings.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Generate text from a trained model, streamed to stdout as it is drawn."""
    from charrnn.sample import collect, encode_prime, generate, show_chars, write_samples

    if not (temperature > 0 and math.isfinite(temperature)):
        raise typer.BadParameter("must be a number > 0", param_hint="'--temperature'")
    if top_p is not None and not 0 < top_p <= 1:
        raise typer.BadParameter("must be > 0 and <= 1", param_hint="'--top-p'")
    if seed is not None and seed_file is not None:
        raise typer.BadParameter("give --seed or --seed-file, not both", param_hint="'--seed-file'")
    with user_errors():
        ckpt = _checkpoint(checkpoint, quiet)
        prime = read_text(seed_file) if seed_file is not None else seed or ""
        prime_ids, dropped = encode_prime(prime, ckpt.vocab, unknown.value)
        if dropped and not quiet:
            typer.echo(
                "Warning: the seed's characters not in the model's vocabulary were "
                f"skipped: {show_chars(dropped)}",
                err=True,
            )
        steps = generate(
            ckpt.params,
            prime_ids,
            length,
            rng_seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            argmax=argmax,
            num_samples=num_samples,
        )
        prefix = "" if no_seed_echo else prime
        if json_out:
            typer.echo(json.dumps(collect(steps, ckpt.vocab, num_samples, prefix)))
        else:
            write_samples(steps, ckpt.vocab, sys.stdout, num_samples=num_samples, prefix=prefix)


@app.command("eval")
def eval_text(
    text: Annotated[str, typer.Argument(help="Text file to score, or - for stdin.")],
    checkpoint: Annotated[Path | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    unknown: Annotated[
        Unknown,
        typer.Option(help="Characters not in the vocabulary: skip them (counted), or an error."),
    ] = Unknown.skip,
    encoding: Annotated[str, typer.Option(help="Text encoding of TEXT.")] = "utf-8",
    decode_errors: Annotated[
        str, typer.Option(help="strict (error on bad bytes) or replace.")
    ] = "strict",
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print loss, bpc, perplexity, chars, unknown_chars as JSON."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Score a text exactly: mean loss in nats per character, bits per character, perplexity."""
    from charrnn.evaluate import evaluate

    if decode_errors not in DECODE_ERRORS:
        raise typer.BadParameter(
            f"must be {' or '.join(DECODE_ERRORS)}", param_hint="'--decode-errors'"
        )
    with user_errors():
        ckpt = _checkpoint(checkpoint, quiet)
        name = "<stdin>" if text == "-" else text
        result = evaluate(
            ckpt.params,
            ckpt.vocab,
            read_text(text, encoding, decode_errors),
            unknown=unknown.value,
            name=name,
        )
    typer.echo(json.dumps(result.to_dict()) if json_out else result.summary())


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `charrnn sample | head` closed the pipe: not an error
        sys.stderr.close()
        sys.exit(0)
