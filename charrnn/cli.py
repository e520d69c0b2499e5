"""The `charrnn` command line: thin commands that parse, call one library function, print.

stdout carries the product (sampled text, --json results); progress and notices go to stderr.
Library errors (CharRNNError) become one `Error: ...` line on stderr and exit code 1; usage
errors keep Typer's exit code 2; an interrupt exits 128 + the signal number (130 for Ctrl-C).
"""

from __future__ import annotations

import json
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from charrnn import checkpoint as ckpt_io
from charrnn.config import Config, resolve_config
from charrnn.data import build_corpus, read_text
from charrnn.errors import CharRNNError, ConfigError
from charrnn.progress import make_reporter
from charrnn.runs import new_run_dir

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train, sample and evaluate character-level vanilla RNN language models (NumPy).",
)

# keys that fix the model's shape or the meaning of its saved state: a resumed run keeps them
FIXED_ON_RESUME = ("hidden_size", "batch_size", "seq_length", "dtype", "optimizer",
                   "val_fraction", "encoding", "decode_errors")


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
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130) from None


def _read_corpus(source: str, cfg: Config):
    name = "<stdin>" if source == "-" else source
    return build_corpus(read_text(source, cfg.encoding, cfg.decode_errors), name)


def _resume_checkpoint(path: Path) -> tuple[ckpt_io.Checkpoint, Path]:
    ckpt_path = path / "last.npz" if path.is_dir() else path
    ckpt = ckpt_io.load(ckpt_path)
    if ckpt.h_carry is None or "rng_state" not in ckpt.train_state:
        raise ConfigError(f"'{ckpt_path}' has no training state to resume from")
    return ckpt, ckpt_path.parent


@app.command()
def train(
    corpus: Annotated[str, typer.Argument(help="Text file to train on (UTF-8), or - for stdin.")],
    config: Annotated[Optional[Path], typer.Option(
        help="YAML config file; flags override it.")] = None,
    hidden_size: Annotated[Optional[int], typer.Option(help="Hidden units H.")] = None,
    seq_length: Annotated[Optional[int], typer.Option(
        help="Characters per truncated-BPTT chunk T.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Parallel streams B.")] = None,
    learning_rate: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[Optional[str], typer.Option(
        help="adam, rmsprop, adagrad or sgd.")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(
        help="Clipping threshold (0 = off); see clip_mode.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after N updates (0 = no limit).")] = None,
    max_epochs: Annotated[Optional[float], typer.Option(
        help="Stop after N passes over the text (0 = no limit).")] = None,
    max_time: Annotated[Optional[float], typer.Option(
        help="Stop after N seconds of this invocation (0 = no limit).")] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        help="Validate every N steps (0 = never).")] = None,
    sample_every: Annotated[Optional[int], typer.Option(
        help="Print a sample every N steps (0 = never).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(
        help="Write last.npz every N steps.")] = None,
    patience: Annotated[Optional[int], typer.Option(
        help="Stop after N validations without improvement (0 = off).")] = None,
    rng_seed: Annotated[Optional[int], typer.Option(
        help="Seed for reproducible runs (default: random, recorded in config.yaml).")] = None,
    encoding: Annotated[Optional[str], typer.Option(help="Text encoding of the corpus.")] = None,
    decode_errors: Annotated[Optional[str], typer.Option(
        help="strict (error on bad bytes) or replace.")] = None,
    set_items: Annotated[Optional[list[str]], typer.Option(
        "--set", help="key=value for any config key; repeatable; wins over everything.")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Run folder (default: a new folder under runs/).")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue a run: its folder (uses last.npz) or a checkpoint file.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a model on a text corpus; writes config.yaml, metrics.jsonl, last.npz and best.npz."""
    from charrnn.train import train as run_training

    flags = {
        "hidden_size": hidden_size, "seq_length": seq_length, "batch_size": batch_size,
        "learning_rate": learning_rate, "optimizer": optimizer, "grad_clip": grad_clip,
        "max_steps": max_steps, "max_epochs": max_epochs, "max_time": max_time,
        "eval_every": eval_every, "sample_every": sample_every,
        "checkpoint_every": checkpoint_every, "patience": patience, "rng_seed": rng_seed,
        "encoding": encoding, "decode_errors": decode_errors,
    }
    with user_errors():
        ckpt = None
        if resume is not None:
            ckpt, resume_dir = _resume_checkpoint(resume)
            cfg = resolve_config(config, flags, set_items or [], base=ckpt.config)
            saved = Config.from_dict(ckpt.config)
            changed = [k for k in FIXED_ON_RESUME if getattr(cfg, k) != getattr(saved, k)]
            if changed:
                raise ConfigError(f"cannot change {', '.join(changed)} when resuming; "
                                  "start a new run instead")
            run_dir = out or resume_dir
        else:
            cfg = resolve_config(config, flags, set_items or [])
            if cfg.rng_seed is None:
                cfg = cfg.with_seed(secrets.randbelow(2**31))
            run_dir = out
        text_corpus = _read_corpus(corpus, cfg)
        if ckpt is not None and text_corpus.vocab != ckpt.vocab:
            raise ConfigError("the corpus's characters differ from the checkpoint's vocabulary; "
                              "resume with the corpus the run was trained on")
        run_dir = run_dir or new_run_dir()
        result = run_training(cfg, text_corpus, run_dir, resume=ckpt,
                              reporter=make_reporter(quiet))

    if json_out:
        typer.echo(json.dumps(result.to_dict()))
    if result.signal is not None:
        if not quiet:
            typer.echo(f"Interrupted at step {result.steps}; saved {result.last_checkpoint}; "
                       f"continue with: charrnn train {corpus} --resume {result.run_dir}",
                       err=True)
        raise typer.Exit(128 + result.signal)
    if not quiet and not json_out:
        best = result.best_val_loss
        score = "" if best is None else f"; best val loss {best:.4f} ({best / 0.6931471805599453:.3f} bpc)"
        typer.echo(f"done: {result.steps} steps in {result.seconds:.1f}s{score}; "
                   f"checkpoints in {result.run_dir}", err=True)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `charrnn sample | head` closed the pipe: not an error
        sys.stderr.close()
        sys.exit(0)
