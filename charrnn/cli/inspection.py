"""The commands that look at a model or a run: `info` (what a checkpoint holds), `show` (an
HTML page of what a model sees in a text), `plot` (a run's loss curves) and `gradflow` (how
far back its gradient reaches). Each hands the work to its library module (charrnn/info.py,
show.py, plot.py, gradflow.py), imported when the command runs."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn import api
from charrnn.cli.options import (
    CHECKPOINT_HELP,
    DecodeErrors,
    DynamicDecayOption,
    DynamicLrOption,
    DynamicMethod,
    DynamicMethodOption,
    DynamicSegmentOption,
    Encoding,
    Unknown,
    check_flags,
    dynamic_settings,
    load_model,
    most,
)
from charrnn.cli.program import PlainCommand, app
from charrnn.cli.streams import (
    emit,
    error,
    need_stdin,
    need_stdout,
    note,
    stdout,
    to_json,
    user_errors,
)
from charrnn.data import read_prefix
from charrnn.outputs import check_output, image_format
from charrnn.runs import choose_checkpoint


@app.command(cls=PlainCommand)
def info(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            metavar="[CHECKPOINT_OR_RUN]",
            help="A checkpoint .npz or .safetensors, or a run folder (its best.npz). Default: "
            "the one sample and eval would use.",
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
        described = describe(choose_checkpoint(checkpoint)[0], warn=_warn)
    emit(to_json(described, readable=True) if json_out else summary(described))


@app.command(cls=PlainCommand)
def show(
    text: Annotated[
        str, typer.Argument(metavar="TEXT", help="Text file to look at, or - for stdin.")
    ],
    checkpoint: Annotated[
        Path | None, typer.Option(metavar="FILE_OR_RUN", help=CHECKPOINT_HELP)
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the page to FILE (replaced whole, never half-written). Without it, or "
            "with -, the page goes to stdout, which must then not be a terminal.",
        ),
    ] = None,
    length: Annotated[
        int,
        typer.Option(
            min=1, max=most("show_length"), metavar="N", help="Show the first N characters of TEXT."
        ),
    ] = 5000,
    unknown: Annotated[
        Unknown,
        typer.Option(
            metavar="skip|error",
            help="Characters not in the vocabulary: leave them out (counted), or an error.",
        ),
    ] = Unknown.skip,
    encoding: Encoding = "utf-8",
    decode_errors: DecodeErrors = "strict",
    dynamic: Annotated[
        bool,
        typer.Option(
            "--dynamic",
            help="Colour by the surprise of dynamic evaluation: the model adapts to the text "
            "as it reads (docs/dynamic.md).",
        ),
    ] = False,
    dynamic_method: DynamicMethodOption = DynamicMethod.rms,
    dynamic_lr: DynamicLrOption = None,
    dynamic_decay: DynamicDecayOption = None,
    dynamic_segment: DynamicSegmentOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Write one HTML page that shows what a model sees in a text. Each character is coloured
    by how much it surprised the model, with the model's top 5 guesses for it; or by the
    activation of any hidden unit, with the units that best track simple features of the text
    (position in the line, brackets, word starts, speaker names, ...) listed first. The page
    needs no network: open it in any browser."""
    from charrnn.show import make_page, model_name, save_page

    check_flags({"encoding": encoding, "decode_errors": decode_errors})
    settings = dynamic_settings(dynamic_method, dynamic_lr, dynamic_decay, dynamic_segment)
    to_stdout = output in (None, "-")
    if to_stdout:
        need_stdout()
        if stdout().isatty():
            raise error("the page is HTML, not for a terminal; give -o page.html")
    need_stdin(text)
    with user_errors():
        model = load_model(checkpoint, quiet)
        if not to_stdout:  # refused before the work (outputs.py)
            output = check_output(output, "the page", [text, model.path])
        content = read_prefix(text, length, encoding, decode_errors)  # no more than that
        name = "<stdin>" if text == "-" else Path(text).name
        page = make_page(
            model.params,
            model.vocab,
            content,
            model_name=model_name(model.path, model.step),
            name=name,
            unknown=unknown.value,
            adapter=model.adapter(settings) if dynamic else None,
        )
        if to_stdout:
            out = stdout()
            out.write(page.html)
            out.flush()
        else:
            save_page(page, output)
    if not quiet:
        note(page.summary() if to_stdout else f"wrote {output.path}: {page.summary()}")


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
            help="Draw into an image file (PNG; .svg or .pdf by the name), written under the "
            "name given, instead of a text chart; needs pip install 'charrnn[plot]'.",
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
        if output is not None:  # refused before the work (outputs.py)
            reads = [r / "metrics.jsonl" if r.is_dir() else r for r in runs]
            output = check_output(output, "the image", reads)
            kind = _kind(output.path)
        curves = [read_curves(run, x.value, warn=_warn) for run in runs]
        if output is not None:
            save_image(curves, output, x.value)
        else:
            from rich.console import Console
            from rich.text import Text

            chart = Text()
            for piece, style in text_chart(curves, x.value):
                chart.append(piece, style=style)
            Console(file=stdout(), highlight=False).print(chart, end="", soft_wrap=True)
    if output is not None and not quiet:
        note(f"wrote {output.path}{kind}")


def _kind(output: Path) -> str:
    """What the notice adds to `wrote FILE`: the image format when the name does not say it
    (a file is written under the name given, never FILE.png beside it); checks the suffix."""
    kind = image_format(output)
    return "" if output.suffix else f" ({kind.upper()}: the name has no suffix)"


def _warn(message: str) -> None:
    note(f"Warning: {message}")


@app.command(cls=PlainCommand)
def gradflow(
    checkpoints: Annotated[
        list[Path],
        typer.Argument(
            metavar="CHECKPOINT...",
            help="One or more checkpoints (.npz) or run folders (their best.npz).",
        ),
    ],
    text: Annotated[
        str, typer.Argument(metavar="TEXT", help="Text file to measure on, or - for stdin.")
    ],
    max_distance: Annotated[
        int,
        typer.Option(
            min=1, max=most("max_distance"), metavar="K", help="Measure k = 1 .. K characters back."
        ),
    ] = 200,
    positions: Annotated[
        int,
        typer.Option(
            min=1,
            max=most("positions"),
            metavar="N",
            help="Positions t of the text to average over, drawn at random (with --rng-seed).",
        ),
    ] = 256,
    burn_in: Annotated[
        int,
        typer.Option(
            min=0,
            max=most("burn_in"),
            metavar="N",
            help="Characters read from a zero state before each window, so the state is a "
            "typical one.",
        ),
    ] = 100,
    rng_seed: Annotated[
        int,
        typer.Option(
            min=0, max=most("rng_seed"), metavar="N", help="Seed for drawing the positions."
        ),
    ] = 0,
    encoding: Encoding = "utf-8",
    decode_errors: DecodeErrors = "strict",
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Also draw the curves on a log scale into an image file (PNG; .svg or .pdf "
            "by the name); needs pip install 'charrnn[plot]'.",
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print every k's mean, median and ratio as JSON."),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Measure the vanishing gradient: the norm of d loss_t / d h_(t-k), the gradient of the
    loss at position t with respect to the hidden state k characters earlier, for k = 1 .. K,
    averaged over many positions of a text. For the LSTM also its cell state c; with several
    layers, the h of every layer together (--json has each layer's). The positions are drawn
    from the first N x (burn-in + K + 1) characters of TEXT, room for N windows side by side;
    no more of it is read."""
    from charrnn.gradflow import measure, save_image, table

    check_flags({"encoding": encoding, "decode_errors": decode_errors})
    need_stdout()
    need_stdin(text)
    with user_errors():
        models = [(path, api.load(path)) for path in checkpoints]
        if output is not None:  # refused before the work (outputs.py)
            output = check_output(output, "the image", [text, *(m.path for _, m in models)])
            kind = _kind(output.path)
        window = burn_in + max_distance + 1  # what one position reads
        content = read_prefix(text, positions * window, encoding, decode_errors)
        name = "<stdin>" if text == "-" else text
        flows = [
            measure(
                model.params,
                model.vocab,
                content,
                max_distance=max_distance,
                positions=positions,
                burn_in=burn_in,
                rng_seed=rng_seed,
                label=str(path),
                name=name,
            )
            for path, model in models
        ]
        if output is not None:
            save_image(flows, output)
    if json_out:
        settings = {"text": name, "max_distance": max_distance, "positions": positions}
        settings.update({"burn_in": burn_in, "rng_seed": rng_seed})
        emit(to_json({**settings, "models": [flow.to_dict() for flow in flows]}))
    else:
        emit("\n\n".join(table(flow) for flow in flows))
    if output is not None and not quiet:
        note(f"wrote {output.path}{kind}")
