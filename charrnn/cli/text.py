"""The commands that run a trained model over text: `sample` writes text (drawn at random,
or the likeliest continuation by beam search), `eval` scores a text (and, with --per-char,
each of its characters). The model's work is charrnn.api.Model's."""

from __future__ import annotations

import math
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from charrnn import jsonout
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
    need_stdin,
    need_stdout,
    note,
    stdout,
    to_json,
    user_errors,
)
from charrnn.data import read_text, unknown_chars
from charrnn.outputs import Output, check_output, writing


@app.command(cls=PlainCommand)
def sample(
    ctx: typer.Context,
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
    length: Annotated[
        int, typer.Option(min=1, max=most("length"), metavar="N", help="Characters to generate.")
    ] = 500,
    temperature: Annotated[
        float,
        typer.Option(
            metavar="T", help="Softmax temperature, > 0: lower is safer, higher more varied."
        ),
    ] = 1.0,
    top_k: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=most("top_k"),
            metavar="K",
            help="Draw only among the K most likely characters.",
        ),
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
    beam: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=most("beam"),
            metavar="K",
            help="Beam search instead of drawing: keep the K most likely continuations (by "
            "total log-probability) and print the best; --num-samples M <= K prints the best M.",
        ),
    ] = None,
    num_samples: Annotated[
        int,
        typer.Option(
            min=1,
            max=most("num_samples"),
            metavar="M",
            help="Independent samples, computed together as one batch.",
        ),
    ] = 1,
    rng_seed: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=most("rng_seed"),
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
    stop: Annotated[
        list[str] | None,
        typer.Option(
            metavar="STR",
            help="End each sample where it first draws STR, which is not printed (repeat for "
            "several: the first one drawn ends it), e.g. --stop $'\\n\\n' for a paragraph.",
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the samples as one JSON list of objects with their text and why each "
            "ended: length (all N characters), stop (a --stop string), end (a record's end).",
        ),
    ] = False,
    adapt: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="First adapt the model to a UTF-8 text (a dynamic-evaluation pass over it, "
            "docs/dynamic.md), so that the sample continues in its manner: names, spelling, "
            "layout. The checkpoint is not changed.",
        ),
    ] = None,
    dynamic_method: DynamicMethodOption = DynamicMethod.rms,
    dynamic_lr: DynamicLrOption = None,
    dynamic_decay: DynamicDecayOption = None,
    dynamic_segment: DynamicSegmentOption = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Generate text from a trained model, streamed to stdout as it is drawn; with --beam,
    the likeliest continuation that a beam search finds, printed when the search is done."""
    settings = dynamic_settings(dynamic_method, dynamic_lr, dynamic_decay, dynamic_segment)
    if not (temperature > 0 and math.isfinite(temperature)):
        raise typer.BadParameter("must be a number > 0", param_hint="'--temperature'")
    if top_p is not None and not 0 < top_p <= 1:
        raise typer.BadParameter("must be > 0 and <= 1", param_hint="'--top-p'")
    if seed is not None and seed_file is not None:
        raise typer.BadParameter("give --seed or --seed-file, not both", param_hint="'--seed-file'")
    if any(not s for s in stop or ()):
        raise typer.BadParameter("must not be empty", param_hint="'--stop'")
    if beam is not None:
        _check_beam(ctx, beam, num_samples, stop)
    need_stdout()
    if seed_file is not None:
        need_stdin(seed_file)
    if adapt is not None and adapt == seed_file == Path("-"):
        raise typer.BadParameter("stdin can be read once; give a file", param_hint="'--adapt'")
    if adapt is not None:
        need_stdin(adapt)
    with user_errors():
        model = load_model(checkpoint, quiet)
        if adapt is not None:
            where = "<stdin>" if adapt == Path("-") else str(adapt)
            model, read = model.adapt(read_text(adapt), settings, name=where)
            if not quiet:
                note(f"adapted to {where}: {read.summary()}")
        prime = read_text(seed_file) if seed_file is not None else seed or ""
        dropped = unknown_chars(prime, model.vocab) if unknown is Unknown.skip else []
        if dropped and not quiet:
            from charrnn.sample import show_chars

            note(
                "Warning: the seed's characters not in the model's vocabulary were "
                f"skipped: {show_chars(dropped)}"
            )
        if beam is not None:
            beams = model.beam_search(
                prime,
                length,
                beam=beam,
                num_results=num_samples,
                unknown=unknown.value,
                echo_seed=not no_seed_echo,
            )
            _print_beams(beams, beam, json_out, quiet)
            return
        samples = model.samples(
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
            stop=stop or (),
            out=None if json_out else stdout(),  # streamed as it is drawn, nothing kept
            keep=False,
        )
    if json_out:
        emit(to_json([{"text": s.text, "ended": s.ended} for s in samples]))


# flags of `sample` that draw at random: beam search draws nothing, so they would do nothing
_DRAWING_FLAGS = ("temperature", "top_k", "top_p", "argmax", "rng_seed")


def _check_beam(ctx: typer.Context, beam: int, num_samples: int, stop) -> None:
    """Usage errors for what --beam cannot be combined with."""
    if stop:
        raise typer.BadParameter(
            "beam search keeps continuations of exactly --length characters, so it cannot "
            "end at a stop string; leave out --stop or --beam",
            param_hint="'--stop'",
        )
    for name in _DRAWING_FLAGS:
        source = ctx.get_parameter_source(name)  # an enum of Typer's own copy of click
        if source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            flag = f"--{name.replace('_', '-')}"
            raise typer.BadParameter(
                f"beam search draws nothing at random, so {flag} would change nothing; "
                f"leave out {flag} or --beam",
                param_hint=f"'{flag}'",
            )
    if num_samples > beam:
        raise typer.BadParameter(
            f"--beam {beam} keeps {beam} continuations; print at most that many, or widen the beam",
            param_hint="'--num-samples'",
        )


def _print_beams(beams: list[tuple[str, float]], beam: int, json_out: bool, quiet: bool) -> None:
    """The texts as `sample` prints samples: alone, or under headers that give log p."""
    if json_out:
        emit(to_json([text for text, _ in beams]))
        return
    if len(beams) == 1:
        text, logp = beams[0]
        emit(text)
        if not quiet:
            note(f"beam search, width {beam}: log p = {logp:.4f} nats given the seed")
        return
    n = len(beams)
    emit(
        "\n".join(
            f"==> beam {i} of {n}, log p = {logp:.4f} <==\n{text}\n"
            for i, (text, logp) in enumerate(beams, 1)
        ).removesuffix("\n")
    )


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
    encoding: Encoding = "utf-8",
    decode_errors: DecodeErrors = "strict",
    per_char: Annotated[
        str | None,
        typer.Option(
            metavar="FILE",
            help="Also write one JSON line per scored character to FILE (- for stdout): the "
            "char, its probability p, bits (-log2 p), the model's top 3 guesses. Replaced "
            "whole, never half-written; never the model, the text or a run's own file.",
        ),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print loss, bpc, perplexity, chars, unknown_chars (and with --dynamic its "
            "settings) as JSON.",
        ),
    ] = False,
    dynamic: Annotated[
        bool,
        typer.Option(
            "--dynamic",
            help="Dynamic evaluation: the weights take a small step on each segment once it is "
            "scored, so the model adapts to the text as it reads (docs/dynamic.md). The "
            "checkpoint is not changed.",
        ),
    ] = False,
    dynamic_method: DynamicMethodOption = DynamicMethod.rms,
    dynamic_lr: DynamicLrOption = None,
    dynamic_decay: DynamicDecayOption = None,
    dynamic_segment: DynamicSegmentOption = None,
    save_adapted: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="With --dynamic: write the model adapted to the whole text as a new "
            "checkpoint FILE (.npz), to sample or score with.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Score a text exactly: mean loss in nats per character, bits per character, perplexity;
    with --dynamic, while the model adapts to the text."""
    check_flags({"encoding": encoding, "decode_errors": decode_errors})
    if per_char == "-" and json_out:
        raise typer.BadParameter(
            "--per-char - and --json would both write to stdout; give --per-char a file",
            param_hint="'--per-char'",
        )
    settings = dynamic_settings(dynamic_method, dynamic_lr, dynamic_decay, dynamic_segment)
    if save_adapted is not None and not dynamic:
        raise typer.BadParameter(
            "only dynamic evaluation adapts the model; add --dynamic", param_hint="'--save-adapted'"
        )
    need_stdout()
    need_stdin(text)
    with user_errors():
        model = load_model(checkpoint, quiet)
        if per_char not in (None, "-"):  # refused before the work (outputs.py)
            per_char = check_output(per_char, "the per-character scores", [text, model.path])
        content = read_text(text, encoding, decode_errors)
        name = "<stdin>" if text == "-" else text
        with _Lines(per_char) as lines:  # the score and the lines from one pass
            write = None if per_char is None else lines.write
            if dynamic:
                adapted, result = model.adapt(
                    content, settings, unknown=unknown.value, name=name, per_char=write
                )
            else:
                result = model.evaluate(content, unknown=unknown.value, name=name, per_char=write)
        if save_adapted is not None:
            adapted.save(save_adapted)
    if json_out:
        emit(to_json(result.to_dict() | ({"dynamic": settings.to_dict()} if dynamic else {})))
    elif per_char != "-":
        emit(result.summary())
    elif not quiet:  # stdout holds the per-character lines
        note(result.summary())


class _Lines:
    """One JSON object per line (charrnn.jsonout: strict JSON) to the checked output dest
    (UTF-8; outputs.py: a file replaced atomically when the pass ends without an error, or a
    stream), opened at the first line, so that a text refused before any score leaves no
    file; or to stdout for "-"."""

    def __init__(self, dest: str | Output):
        self.dest, self.file, self.held = dest, None, ExitStack()

    def write(self, record: dict) -> None:
        if self.dest == "-":
            stdout().write(to_json(record, readable=True) + "\n")
            return
        if self.file is None:  # committed or removed by __exit__
            self.file = self.held.enter_context(writing(self.dest, "the per-character scores"))
        self.file.write((jsonout.dumps(record, ascii=False) + "\n").encode("utf-8"))

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        self.held.__exit__(*exc)
        if self.file is None and self.dest == "-":
            stdout().flush()
