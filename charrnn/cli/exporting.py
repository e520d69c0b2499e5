"""`charrnn export`: a checkpoint written as a .safetensors file, a model-hub folder or an ONNX
graph, for programs other than charrnn (docs/export.md). The work is charrnn/export.py's."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from charrnn.cli.program import PlainCommand, app
from charrnn.cli.streams import emit, need_stdout, note, to_json, user_errors


class Format(str, Enum):
    """What `charrnn export` writes."""

    safetensors = "safetensors"
    hf = "hf"
    onnx = "onnx"


@app.command("export", cls=PlainCommand)
def export_model(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CHECKPOINT_OR_RUN",
            help="A checkpoint .npz (or .safetensors), or a run folder (its best.npz).",
        ),
    ],
    fmt: Annotated[
        Format,
        typer.Option(
            "--format",
            "-f",
            metavar="safetensors|hf|onnx",
            help="safetensors: the weights and vocabulary in one file, no optimizer state. "
            "hf: a folder for a model hub (model.safetensors, config.json, a README.md model "
            "card). onnx: one graph from ids and state to logits and the new state.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="PATH",
            help="The file (safetensors, onnx) or folder (hf) to write; written whole or "
            "not at all.",
        ),
    ],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace PATH if it exists (else refused).")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the path, format and bytes written as JSON.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")
    ] = False,
) -> None:
    """Write a trained model in a format other programs read: a .safetensors file of its
    weights and vocabulary (which sample, eval, info and show also read), a folder ready to
    upload to a model hub, or an ONNX graph for onnxruntime on servers, phones and browsers.
    Needs pip install 'charrnn[export]'."""
    from charrnn.export import export

    if json_out:
        need_stdout()
    with user_errors():
        done = export(checkpoint, fmt.value, output, overwrite=overwrite)
    if json_out:
        emit(to_json(done.to_dict()))
    elif not quiet:
        note(f"wrote {done.path} ({done.format}, {done.bytes:,} bytes)")
