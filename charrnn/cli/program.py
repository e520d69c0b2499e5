"""The `charrnn` program itself: the Typer app that every command registers with, the plain
help format the commands use (PlainCommand), and the root option --version. The commands live
in training.py, text.py, inspection.py and exporting.py; charrnn/cli/__init__.py imports them
in the order `charrnn --help` lists them."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperCommand

from charrnn import __version__
from charrnn.cli.streams import emit, note
from charrnn.distributed import alone, launched_size

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
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Train, sample and evaluate character-level language models (RNN, LSTM, GRU) in NumPy."""
    command = ctx.invoked_subcommand
    if command is not None and command != "train" and launched_size() > 1:
        if not alone():  # under mpiexec: rank 0 alone runs it, as one process
            raise typer.Exit(0)
        note(
            f"Note: started as {launched_size()} MPI processes; only train shares its work "
            f"among them, so {command} runs once, in rank 0"
        )
