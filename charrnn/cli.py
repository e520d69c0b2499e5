"""The `charrnn` command line: thin commands that parse, call one library function, print.

stdout carries the product (sampled text, --json results); progress and notices go to stderr.
Library errors (CharRNNError) become one `Error: ...` line on stderr and exit code 1; usage
errors keep Typer's exit code 2; an interrupt exits 128 + the signal number (130 for Ctrl-C).
"""

from __future__ import annotations

import json
import math
import secrets
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn import cache
from charrnn import checkpoint as ckpt_io
from charrnn.config import Config, resolve_config
from charrnn.data import read_text
from charrnn.errors import CharRNNError, ConfigError
from charrnn.parallel import auto_workers
from charrnn.progress import make_encode_bar, make_reporter
from charrnn.runs import latest_checkpoint, new_run_dir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click usage errors: "Error: ..." lines a script can read
    help="Train, sample and evaluate character-level vanilla RNN language models (NumPy).",
)

# keys that fix the model's shape or the meaning of its saved state: a resumed run keeps them
FIXED_ON_RESUME = (
    "hidden_size",
    "batch_size",
    "seq_length",
    "dtype",
    "optimizer",
    "val_fraction",
    "encoding",
    "decode_errors",
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


def _read_corpus(
    source: str, encoding: str, decode_errors: str, quiet: bool, force: bool = False
) -> cache.PreparedCorpus:
    """The corpus as memory-mapped ids from its cache (built when missing or stale); a bar on
    stderr while a large one is encoded."""
    bar = make_encode_bar(quiet, "<stdin>" if source == "-" else source)
    with bar or nullcontext():
        return cache.prepare(source, encoding, decode_errors, force=force, progress=bar)


def _resume_checkpoint(path: Path) -> tuple[ckpt_io.Checkpoint, Path]:
    ckpt_path = path / "last.npz" if path.is_dir() else path
    ckpt = ckpt_io.load(ckpt_path)
    if ckpt.h_carry is None or "rng_state" not in ckpt.train_state:
        raise ConfigError(f"'{ckpt_path}' has no training state to resume from")
    try:
        Config.from_dict(ckpt.config)
    except ConfigError as e:
        raise ConfigError(
            f"'{ckpt_path}' holds an invalid config ({e}); it cannot be resumed, start a new run"
        ) from None
    return ckpt, ckpt_path.parent


@app.command()
def train(
    corpus: Annotated[str, typer.Argument(help="Text file to train on (UTF-8), or - for stdin.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML config file; flags override it.")
    ] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Hidden units H.")] = None,
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
    from charrnn.train import train as run_training

    flags = {
        "hidden_size": hidden_size,
        "seq_length": seq_length,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "optimizer": optimizer,
        "grad_clip": grad_clip,
        "max_steps": max_steps,
        "max_epochs": max_epochs,
        "max_time": max_time,
        "eval_every": eval_every,
        "sample_every": sample_every,
        "checkpoint_every": checkpoint_every,
        "patience": patience,
        "rng_seed": rng_seed,
        "encoding": encoding,
        "decode_errors": decode_errors,
    }
    with user_errors():
        ckpt = None
        if resume is not None:
            ckpt, resume_dir = _resume_checkpoint(resume)
            cfg = resolve_config(config, flags, set_items or [], base=ckpt.config)
            saved = Config.from_dict(ckpt.config)
            changed = [k for k in FIXED_ON_RESUME if getattr(cfg, k) != getattr(saved, k)]
            if changed:
                raise ConfigError(
                    f"cannot change {', '.join(changed)} when resuming; start a new run instead"
                )
            run_dir = out or resume_dir
        else:
            cfg = resolve_config(config, flags, set_items or [])
            if cfg.rng_seed is None:
                cfg = cfg.with_seed(secrets.randbelow(2**31))
            # record the actual worker count: the same count reproduces the same bits anywhere
            cfg = replace(cfg, workers=auto_workers(cfg.batch_size, cfg.workers))
            run_dir = out
        prepared = _read_corpus(corpus, cfg.encoding, cfg.decode_errors, quiet)
        if not quiet and not prepared.reused and prepared.source_bytes >= 32 << 20:
            typer.echo(prepared.summary(), err=True)
        text_corpus = prepared.corpus
        if ckpt is not None and text_corpus.vocab != ckpt.vocab:
            raise ConfigError(
                "the corpus's characters differ from the checkpoint's vocabulary; "
                "resume with the corpus the run was trained on"
            )
        run_dir = run_dir or new_run_dir()
        result = run_training(cfg, text_corpus, run_dir, resume=ckpt, reporter=make_reporter(quiet))

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
        Config.from_dict({"encoding": encoding, "decode_errors": decode_errors})  # train's checks
        prepared = _read_corpus(corpus, encoding, decode_errors, quiet, force)
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

    if decode_errors not in ("strict", "replace"):
        raise typer.BadParameter("must be strict or replace", param_hint="'--decode-errors'")
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
