"""The commands that train: `train` (a model on a corpus, fresh or resumed) and `prepare` (a
corpus's cache of character ids). The training itself is charrnn.api.train's."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer

from charrnn import api, cache
from charrnn.cli.options import check_flags
from charrnn.cli.program import PlainCommand, app
from charrnn.cli.progress import make_encode_bar, make_reporter
from charrnn.cli.streams import emit, need_stdin, need_stdout, note, to_json, user_errors
from charrnn.config import DEFAULTS
from charrnn.model import bpc


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
        list[str],
        typer.Argument(
            metavar="CORPUS...",
            help="Text files, folders of them (read recursively) and - for stdin; each file is "
            "a document (docs/texts.md).",
        ),
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
    glob: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATTERN",
            help="Read only the files of CORPUS folders that match (e.g. '*.txt'; repeatable). "
            "Default: every file that is not hidden and not binary.",
        ),
    ] = None,
    documents: Annotated[
        str | None,
        typer.Option(
            metavar="file|line|paragraph",
            help=_default(
                "documents",
                "What a document is: each file, or each line / blank-line-separated block as "
                "a record the model learns to end.",
            ),
        ),
    ] = None,
    val_file: Annotated[
        str | None,
        typer.Option(
            metavar="FILE_OR_DIR",
            help="Validate on this text (a file or folder); all of CORPUS then trains.  "
            "[default: the last val_fraction of CORPUS]",
        ),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            metavar="CHECKPOINT_OR_RUN",
            help="Fine-tune: start from this model's weights (a run folder: its best.npz), its "
            "architecture kept, its vocabulary joined with CORPUS's; optimizer and step start "
            "fresh.  [default: a fresh model]",
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
    for source in corpus:
        need_stdin(source)
    with user_errors():
        result = api.train(
            corpus if len(corpus) > 1 else corpus[0],
            glob=glob or (),
            config=config,
            out=out,
            resume=resume,
            overwrite=overwrite,
            reporter=make_reporter(quiet),  # a bar on a terminal, plain lines otherwise
            encode_bar=make_encode_bar(quiet, "<stdin>" if corpus[0] == "-" else corpus[0]),
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
                f"continue with: charrnn train {' '.join(corpus)} --resume {result.run_dir}"
            )
        raise typer.Exit(128 + result.signal)
    if not quiet and not json_out:
        best = result.best_val_loss
        score = "" if best is None else f"; best val loss {best:.4f} ({bpc(best):.3f} bpc)"
        note(
            f"done: {result.steps} steps in {result.seconds:.1f}s{score}; "
            f"checkpoints in {result.run_dir}"
        )


@app.command(cls=PlainCommand)
def prepare(
    corpus: Annotated[
        list[str],
        typer.Argument(
            metavar="CORPUS...",
            help="Text files and folders of them to encode (UTF-8 unless --encoding).",
        ),
    ],
    glob: Annotated[
        list[str] | None,
        typer.Option(
            metavar="PATTERN",
            help="Read only the files of CORPUS folders that match (repeatable), as train does.",
        ),
    ] = None,
    encoding: Annotated[
        str, typer.Option(metavar="NAME", help="Text encoding of the corpus.")
    ] = "utf-8",
    decode_errors: Annotated[
        str,
        typer.Option(metavar="strict|replace", help="strict (error on bad bytes) or replace."),
    ] = "strict",
    documents: Annotated[
        str,
        typer.Option(
            metavar="file|line|paragraph",
            help="What a document is, as the config key of train says.",
        ),
    ] = "file",
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild the cache even when it is up to date.")
    ] = False,
    clear: Annotated[
        bool,
        typer.Option("--clear", help="Delete the cache entries of CORPUS instead of building one."),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Encode a corpus into its entry of the id cache (in ~/.cache/charrnn, see `charrnn
    cache`), so that every `train` on it starts at once; `train` does this itself when the
    entry is missing or stale."""
    if "-" in corpus:
        raise typer.BadParameter(
            "prepare caches files; `charrnn train -` encodes stdin into a temporary cache itself",
            param_hint="'CORPUS'",
        )
    check_flags({"encoding": encoding, "decode_errors": decode_errors, "documents": documents})
    if json_out:
        need_stdout()
    source = corpus if len(corpus) > 1 else corpus[0]
    if clear:
        with user_errors():
            deleted = cache.clear(source)
        if json_out:
            emit(to_json({"deleted": [str(p) for p in deleted]}))
        elif not quiet:
            note(f"deleted {_entries(len(deleted))} of {' '.join(corpus)}")
        return
    with user_errors():
        bar = make_encode_bar(quiet, corpus[0])
        with bar or nullcontext():
            prepared = cache.prepare(
                source,
                encoding,
                decode_errors,
                documents=documents,
                globs=glob or (),
                force=force,
                progress=bar,
            )
    if json_out:
        emit(to_json(prepared.to_dict()))
    elif not quiet:
        note(prepared.summary())


def _entries(n: int) -> str:
    return f"{n} cache entr{'y' if n == 1 else 'ies'}"


cache_app = typer.Typer(
    no_args_is_help=True,
    help="The id cache: list its entries or delete them ($CHARRNN_CACHE_DIR, else "
    "$XDG_CACHE_HOME/charrnn or ~/.cache/charrnn).",
)
app.add_typer(cache_app, name="cache")


@cache_app.command("list", cls=PlainCommand)
def cache_list(
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the entries as a JSON list.")
    ] = False,
) -> None:
    """List the cache's entries, most recently used first: what each holds and its size."""
    if json_out:
        need_stdout()
    with user_errors():
        found = cache.entries()
    if json_out:
        emit(to_json([e.to_dict() for e in found], readable=True))
        return
    if not found:
        note(f"no cache entries in {', '.join(map(str, cache.cache_folders()))}")
        return
    for e in found:
        what = (
            "(incomplete: a build was killed)"
            if e.chars is None
            else (
                f"{e.documents:,} {'documents' if e.mode == 'file' else e.mode + ' records'}, "
                f"{e.chars:,} ids"
            )
        )
        emit(f"{e.path}  {e.bytes / 1e6:,.1f} MB  {' '.join(e.sources)}  {what}")


@cache_app.command("clear", cls=PlainCommand)
def cache_clear(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Say nothing.")] = False,
) -> None:
    """Delete every entry of the cache (an entry in use by another process is left alone);
    `charrnn prepare CORPUS --clear` deletes only CORPUS's."""
    with user_errors():
        deleted = cache.clear()
    if not quiet:
        note(f"deleted {_entries(len(deleted))}")
