"""The `charrnn` command line: thin commands that parse, call one library function, print.

stdout carries the product (sampled text, --json results); progress and notices go to stderr.
Library errors (CharRNNError) become one `Error: ...` line on stderr and exit code 1; usage
errors keep Typer's exit code 2; an interrupt exits 128 + the signal number (130 for Ctrl-C).

The standard streams are the shell's to hand over as it likes (streams.py): a product that
cannot be written to stdout is an error, except for a reader that stopped reading (`| head`),
a quiet exit 0; a notice that cannot be written to stderr is dropped; `-` with stdin closed
is an error.

One job per module:
  program.py      the Typer app, its plain help format, --version
  streams.py      stdout, stderr, stdin; `emit`, `note`, JSON; the error boundary `user_errors`
  options.py      what several commands share about their options: flag checks, --checkpoint
  training.py     train, prepare
  text.py         sample (and its beam search), eval
  inspection.py   info, show, plot, gradflow
  exporting.py    export
  serving.py      serve (the server itself is charrnn/serve/, an optional extra)
This file imports the commands in the order `charrnn --help` lists them, and holds `main`,
the console entry point (pyproject.toml: charrnn = "charrnn.cli:main").
"""

from __future__ import annotations

import sys

from charrnn.cli.program import app
from charrnn.cli.streams import Product, discard, prepare_streams
from charrnn.distributed import end_together

# each command joins `app` as its module is imported: this order is the order of --help
# isort: off
from charrnn.cli.training import prepare, train
from charrnn.cli.text import eval_text, sample
from charrnn.cli.inspection import gradflow, info, plot, show
from charrnn.cli.exporting import export_model
from charrnn.cli.serving import serve

# isort: on

__all__ = [
    "Product",
    "app",
    "eval_text",
    "export_model",
    "gradflow",
    "info",
    "main",
    "plot",
    "prepare",
    "sample",
    "serve",
    "show",
    "train",
]


def main() -> None:
    prepare_streams()
    try:
        with end_together():  # under MPI, an error that one rank alone met ends every rank
            app()
    finally:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
        except (OSError, ValueError):  # stderr went away: its notices are lost, not the exit code
            discard(sys.stderr)
