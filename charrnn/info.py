"""`charrnn info`: what a checkpoint holds, as a dict (for --json) and as a few lines of text.

The architecture and size come from the weights (model.architecture), the step, characters seen
and best validation loss from the checkpoint's train_state, the last validation from the run
folder's metrics.jsonl when the checkpoint sits in one. Loading and checking the file is
checkpoint.py's job; choosing it (a run folder, $CHARRNN_CHECKPOINT, the latest run) runs.py's.
"""

from __future__ import annotations

import textwrap
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charrnn import checkpoint as ckpt_io
from charrnn.model import architecture, bpc, param_names
from charrnn.runs import Metrics

PREVIEW_CHARS = 80  # vocabulary characters shown in the text summary
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", '"': '\\"'}


def describe(path: str | Path, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Everything `charrnn info` reports about the checkpoint file at path; `warn` hears of
    lines of the run's metrics.jsonl that were skipped."""
    path = Path(path)
    ckpt = ckpt_io.load(path)
    arch = architecture(ckpt.params)
    version = ckpt.format_version
    best = ckpt.train_state.get("best_val_loss")
    info = {
        "checkpoint": str(path),
        "format_version": version,
        "cell": arch.cell,
        "num_layers": arch.num_layers,
        "hidden_size": arch.hidden_size,
        "parameters": sum(int(ckpt.params[k].size) for k in param_names(arch)),
        "dtype": str(ckpt.params["Whh"].dtype),
        "vocab_size": len(ckpt.vocab),
        "documents_mode": ckpt.documents,  # file, or line / paragraph: records (one more output)
        "vocab_preview": show_vocab(ckpt.vocab),
        "vocab": ckpt.vocab,
        "step": ckpt.step,
        "chars_seen": ckpt.train_state.get("chars_seen"),
        "best_val_bpc": bpc(best),
        # what the run trained on (charrnn.train._corpus_record): documents, characters
        "corpus": _corpus(ckpt.train_state.get("corpus")),
        "init_from": ckpt.config.get("init_from"),
    }
    info.update(_run_metrics(path.parent / "metrics.jsonl", warn))
    info["config"] = ckpt.config
    return info


def _corpus(record) -> dict[str, int] | None:
    """{"documents", "chars"} of the corpus a checkpoint records, or None (older ones)."""
    if not isinstance(record, dict):
        return None
    values = {k: record.get(k) for k in ("documents", "chars")}
    ok = all(type(v) is int and 0 <= v < 2**63 for v in values.values())
    return values if ok else None


def _run_metrics(metrics: Path, warn: Callable[[str], None] | None) -> dict[str, Any]:
    """The run's last step and last validation, from its metrics.jsonl (None without one);
    lines that hold no valid record (runs.Metrics) are skipped, and `warn` told once."""
    last_step = last_val = last_val_step = None
    records = Metrics(metrics)
    for _, rec in records:
        last_step = rec["step"]
        if rec.get("val_bpc") is not None:
            last_val, last_val_step = rec["val_bpc"], rec["step"]
    if warn is not None and records.problem():
        warn(records.problem())
    return {"run_steps": last_step, "last_val_bpc": last_val, "last_val_step": last_val_step}


def show_vocab(vocab: list[str], limit: int = PREVIEW_CHARS) -> str:
    """The first `limit` characters side by side, newlines, tabs, quotes, backslashes and other
    control or invisible characters escaped (\\n, \\t, \\", \\x00, \\u200b)."""
    return "".join(_escape(c) for c in vocab[:limit])


def _escape(c: str) -> str:
    if c in _ESCAPES:
        return _ESCAPES[c]
    # control, format, surrogate, private and unassigned characters, and separators but space
    if c != " " and unicodedata.category(c)[0] in "CZ":
        n = ord(c)
        return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"
    return c


def summary(info: dict[str, Any]) -> str:
    """The text of `charrnn info`: one labelled line per fact, the config wrapped at the end."""

    def bpc(x):
        return "none" if x is None else f"{x:.4f} bpc"

    seen = info["chars_seen"]
    hidden = info["vocab_size"] - len(info["vocab"][:PREVIEW_CHARS])
    more = f" and {hidden:,} more" if hidden else ""
    val = f"best {bpc(info['best_val_bpc'])}"
    if info["last_val_step"] is not None:
        val += f"; last {bpc(info['last_val_bpc'])} at step {info['last_val_step']:,}"
    trained = f"{info['step']:,} steps" + ("" if seen is None else f", {seen:,} characters seen")
    if info["run_steps"] is not None and info["run_steps"] != info["step"]:
        trained += f" (the run went on to step {info['run_steps']:,})"
    config = " ".join(f"{k}={v}" for k, v in info["config"].items())
    rows = [
        ("checkpoint", f"{info['checkpoint']} (format {info['format_version']})"),
        (
            "model",
            f"{info['num_layers']}-layer {info['cell']}, hidden size {info['hidden_size']}, "
            f"{info['parameters']:,} parameters, {info['dtype']}",
        ),
        ("vocabulary", f'{info["vocab_size"]} characters: "{info["vocab_preview"]}"{more}'),
        *_corpus_rows(info),
        ("trained", trained),
        ("validation", val),
        ("config", _wrap(config) or "(none saved)"),
    ]
    return "\n".join(f"{label:<11} {text}" for label, text in rows)


def _corpus_rows(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The `corpus` row (what it trained on: documents or records, and characters) and the
    `started` row of a fine-tuned model."""
    rows = []
    corpus, mode = info.get("corpus"), info.get("documents_mode", "file")
    if mode == "file" and corpus is not None:
        n = corpus["documents"]
        what = f"{n:,} document{'s' * (n != 1)}, {corpus['chars']:,} characters"
        rows.append(("corpus", what))
    elif mode != "file":
        what = f"records (documents: {mode}), each ended by the end-of-record symbol"
        if corpus is not None:
            what = f"{corpus['documents']:,} {what}; {corpus['chars']:,} ids with the ends"
        rows.append(("corpus", what))
    if info.get("init_from"):
        rows.append(("started", f"from {info['init_from']} (fine-tuned)"))
    return rows


def _wrap(text: str, width: int = 100, indent: int = 12) -> str:
    """text wrapped at spaces only (not inside "utf-8"), lines after the first indented."""
    lines = textwrap.wrap(
        text,
        width - indent,
        break_on_hyphens=False,
        break_long_words=False,
    )
    return ("\n" + " " * indent).join(lines)
