"""Export: a checkpoint into the formats that other programs read (docs/export.md).

    safetensors   the model's arrays under the checkpoint's names (no optimizer state), and in
                  the file's string metadata what sampling and scoring need: format_version,
                  cell, num_layers, vocab (a JSON list), config, step, train_state (JSON: the
                  best validation loss and characters seen, never the random state)
    hf            a folder for a model hub: model.safetensors, config.json, README.md (the
                  model card), export_hub.py's
    onnx          one ONNX graph: ids and the carried state in, logits and the new state out,
                  export_onnx.py's

Each output is written whole or not at all: a file through atomic.replace_atomically, the hf
folder built in a temporary folder and renamed into place. An existing output is refused
unless `overwrite` (a folder only when it holds nothing but the hub files), and the checkpoint
being read never is one, nor the folder that holds it. Writing needs
the `export` extra (the safetensors and onnx packages); reading a .safetensors back needs only
NumPy and is checkpoint.load's, the same loader as for an .npz. The command line is
cli/exporting.py.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn import checkpoint as ckpt_io
from charrnn import jsonout
from charrnn.atomic import replace_atomically
from charrnn.errors import ExportError
from charrnn.model import architecture
from charrnn.runs import checkpoint_file

FORMATS = ("safetensors", "hf", "onnx")
INSTALL = "pip install 'charrnn[export]'"
TRAIN_STATE_KEPT = ("best_val_loss", "chars_seen", "corpus")  # what `info` reports; no rng


@dataclass
class Exported:
    path: Path
    format: str
    bytes: int  # the file's size, or the sum of the folder's files

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "bytes": self.bytes}


def export(
    source: str | os.PathLike, fmt: str, out: str | os.PathLike, *, overwrite: bool = False
) -> Exported:
    """Write the checkpoint `source` (a file, or a run folder: its best.npz) as `fmt` to `out`.
    ExportError for an unknown format, a missing package, an output that exists (without
    overwrite) or that is the checkpoint itself; CheckpointError for a bad checkpoint."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    _module("onnx" if fmt == "onnx" else "safetensors", fmt)  # before any work
    file, out = checkpoint_file(source), Path(out)
    _check_output(file, out, fmt, overwrite)
    ckpt = ckpt_io.load(file)
    if fmt == "onnx":
        write_onnx(ckpt, out)
    elif fmt == "hf":
        from charrnn.export_hub import hub_files, replace_folder

        files = hub_files(file, out.name, safetensors_bytes(ckpt))
        try:
            replace_folder(out, files)
        except OSError as e:
            raise ExportError(
                f"could not write folder '{out}': {e.strerror or e}; {_kept(out)} (free disk "
                "space or check the folder's permissions)"
            ) from None
    else:
        write_file(out, safetensors_bytes(ckpt))
    return Exported(out, fmt, _size(out))


def _module(name: str, fmt: str):
    """The package `name`, or an ExportError that says how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ExportError(
            f"--format {fmt} needs the '{name}' package, which is not installed; "
            f"install it with {INSTALL}"
        ) from None


def _check_output(file: Path, out: Path, fmt: str, overwrite: bool) -> None:
    """Refuse an output that is the checkpoint (or a folder that holds it), one that exists
    without overwrite, a folder where a file goes (and the other way round), a missing folder."""
    if str(out) == "-":
        raise ExportError("-o - would write to standard output, which export does not; give a path")
    source = file.resolve()
    target = out.resolve()
    if target == source or (fmt == "hf" and target in source.parents):
        raise ExportError(
            f"-o '{out}' is where the checkpoint '{file}' is; give another output path"
        )
    if not out.parent.is_dir():
        raise ExportError(f"-o '{out}': folder '{out.parent}' does not exist; create it first")
    if not os.path.lexists(out):
        return
    is_dir = out.is_dir() and not out.is_symlink()
    if fmt == "hf" and not is_dir:
        raise ExportError(f"-o '{out}' is a file; --format hf writes a folder, give a new name")
    if fmt != "hf" and (is_dir or not out.is_file()):
        raise ExportError(f"-o '{out}' is not a file; give a file name")
    if not overwrite:
        raise ExportError(f"-o '{out}' exists; pass --overwrite to replace it, or give a new name")
    if fmt == "hf":
        from charrnn.export_hub import HUB_FILES

        others = sorted(p.name for p in out.iterdir() if p.name not in HUB_FILES)
        if others:
            shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if others[3:] else "")
            raise ExportError(
                f"-o '{out}' holds other files than a model-hub export ({shown}), which "
                "--overwrite would delete; give a new folder and copy what you need"
            )


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


# ---- safetensors ----


def safetensors_content(ckpt: ckpt_io.Checkpoint) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the .safetensors file of ckpt: its weights, contiguous and
    little-endian, and the strings checkpoint.load reads back (its META_SCALARS, META_TEXTS
    and vocab)."""
    arch = architecture(ckpt.params)
    tensors = {
        k: np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<")) for k, v in ckpt.params.items()
    }
    kept = {k: ckpt.train_state[k] for k in TRAIN_STATE_KEPT if k in ckpt.train_state}
    metadata = {
        "format": "charrnn",
        "format_version": str(ckpt_io.FORMAT_VERSION),
        "cell": arch.cell,
        "num_layers": str(arch.num_layers),
        "documents": ckpt.documents,  # "line" / "paragraph": one more output, a record's end
        "vocab": jsonout.dumps(ckpt.vocab, ascii=False),
        "config": jsonout.dumps(ckpt.config),
        "step": str(ckpt.step),
        "train_state": jsonout.dumps(kept),
    }
    return tensors, metadata


def safetensors_bytes(ckpt: ckpt_io.Checkpoint) -> bytes:
    """The file, as the safetensors package writes it but for the order of its header: the
    package writes the metadata in a random order (a Rust HashMap), which is put in sorted order
    here, so that one checkpoint always gives the same bytes (and the same hash on a hub)."""
    from safetensors.numpy import save

    tensors, metadata = safetensors_content(ckpt)
    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as the package keeps it
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


def write_onnx(ckpt: ckpt_io.Checkpoint, path: Path) -> None:
    from charrnn.export_onnx import MAX_BYTES, onnx_model

    if sum(4 * v.size for v in ckpt.params.values()) > MAX_BYTES - (1 << 20):
        raise ExportError(
            "the model's weights are over 2 GB in float32, more than one ONNX file holds "
            "(protobuf's limit); export it as safetensors instead"
        )
    write_file(path, onnx_model(ckpt.params, ckpt.vocab).SerializeToString())


def write_file(path: Path, data: bytes) -> None:
    """data to path atomically; an OSError (a full disk) as an ExportError that says what is
    left: the previous file unchanged, or nothing."""
    try:
        replace_atomically(path, lambda f: f.write(data))
    except OSError as e:
        raise ExportError(
            f"could not write '{path}': {e.strerror or e}; {_kept(path)} (free disk space or "
            "check the folder's permissions)"
        ) from None


def _kept(path: Path) -> str:
    return "the previous one is unchanged" if path.exists() else "nothing was written"
