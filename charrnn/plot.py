"""Loss curves of training runs: train and validation bits per character against steps, training
characters or seconds, read from each run's metrics.jsonl.

Drawn as an image file through matplotlib (the optional `plot` extra; the Agg canvas, so no
display is needed and no global backend is changed) or as a compact text chart: pieces of text
with their colours, which the command line prints. Reading metrics is tolerant of a last line
cut short by a kill.
"""

from __future__ import annotations

import io
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charrnn.config import load_config_file
from charrnn.errors import CharRNNError, DataError, option
from charrnn.model import bpc
from charrnn.outputs import Output, image_format, write_output
from charrnn.runs import Metrics, regular_file

X_AXES = {"steps": "step", "chars": "training characters", "time": "seconds of training"}
MARKERS = "●◆▲■★✚"  # validation points of runs 1, 2, ... in the text chart
COLORS = ("cyan", "magenta", "yellow", "green", "red", "blue")


@dataclass
class Curves:
    """One run's curves, x in the unit asked for."""

    label: str
    train_x: np.ndarray  # (n,)
    train_bpc: np.ndarray  # (n,) a trailing moving average over 1% of the steps
    val_x: np.ndarray  # (m,)
    val_bpc: np.ndarray  # (m,)


def read_curves(
    run: str | Path, x: str = "steps", warn: Callable[[str], None] | None = None
) -> Curves:
    """The curves of a run folder (or of a metrics.jsonl file) against x: steps, chars, time.
    Lines that hold no valid record (runs.Metrics) are skipped, and `warn` told once."""
    run = Path(run)
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    if regular_file(metrics, "a run's metrics.jsonl") is None:
        raise DataError(
            f"'{run}' has no metrics.jsonl; give a run folder that 'charrnn train' wrote"
        )
    per_step = _chars_per_step(metrics.parent) if x == "chars" else 1
    train_x, train_bpc, val_x, val_bpc = array("d"), array("d"), array("d"), array("d")
    elapsed = 0.0  # the last line (a closing validation) has no elapsed of its own
    records = Metrics(metrics)
    for _, rec in records:
        elapsed = rec["elapsed"] if rec.get("elapsed") is not None else elapsed
        where = elapsed if x == "time" else rec["step"] * per_step
        if rec.get("train_loss") is not None:
            train_x.append(where)
            train_bpc.append(bpc(rec["train_loss"]))
        if rec.get("val_bpc") is not None:
            val_x.append(where)
            val_bpc.append(rec["val_bpc"])
    if warn is not None and records.problem():
        warn(records.problem())
    if not train_x and not val_x:
        raise DataError(f"'{metrics}' holds no training steps yet; nothing to plot")
    return Curves(
        str(run),
        np.array(train_x, dtype=float),
        _smooth(np.array(train_bpc, dtype=float)),
        np.array(val_x, dtype=float),
        np.array(val_bpc, dtype=float),
    )


def _chars_per_step(run_dir: Path) -> int:
    """batch_size x seq_length of the run's config.yaml, each a whole number from 1 to 2**31."""
    path = run_dir / "config.yaml"
    found = regular_file(path, "a run's config.yaml")  # a FIFO would never be read to its end
    try:
        cfg = load_config_file(path) if found else {}
        sizes = [cfg.get(key) for key in ("batch_size", "seq_length")]
    except (CharRNNError, AttributeError):  # AttributeError: a YAML list, not a mapping
        sizes = []
    if len(sizes) != 2 or not all(_whole(n) for n in sizes):
        raise DataError(
            f"{option('x', 'chars')} needs batch_size and seq_length, whole numbers from 1 to "
            f"2**31, from '{path}'; plot against {option('x', 'steps')} instead"
        )
    return sizes[0] * sizes[1]


def _whole(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 2**31


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average over max(1, n // 100) points: the trend of a noisy loss."""
    w = max(1, len(y) // 100)
    if w == 1:
        return y
    sums = np.cumsum(np.concatenate([[0.0], y]))  # (n + 1,)
    start = np.maximum(np.arange(1, len(y) + 1) - w, 0)  # (n,) first index of each window
    return (sums[1:] - sums[start]) / (np.arange(1, len(y) + 1) - start)


def new_figure(figsize: tuple[float, float], dpi: int, instead: str):
    """(figure, axes) of matplotlib, drawn off screen; without matplotlib (the `plot` extra) a
    CharRNNError that says how to install it or what to do `instead`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CharRNNError(
            "drawing an image needs matplotlib, which is not installed: "
            f"pip install 'charrnn[plot]' (or {instead})"
        ) from None
    fig = Figure(figsize=figsize, dpi=dpi, layout="tight")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig, out: str | Path | Output, what: str, reads=()) -> None:
    """Draw fig in the format out's name asks for (image_format), then write it by the rule
    of outputs.py: never over a file not asked for, atomically."""
    target = out.path if isinstance(out, Output) else out
    buf = io.BytesIO()  # drawn whole first: PDF and PS seek, which a pipe cannot
    fig.savefig(buf, format=image_format(target))
    write_output(out, lambda f: f.write(buf.getbuffer()), what, reads)


def save_image(curves: list[Curves], out: str | Path, x: str = "steps") -> None:
    """Draw the runs' curves into an image file (PNG, or SVG/PDF by its suffix)."""
    fig, ax = new_figure((9, 5), 110, "leave out -o for a text chart")
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        ax.plot(c.train_x, c.train_bpc, color=color, lw=1, alpha=0.55, label=f"{c.label} train")
        ax.plot(c.val_x, c.val_bpc, color=color, lw=2, marker="o", ms=3, label=f"{c.label} val")
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel("bits per character")
    ax.set_title("train (moving average) and validation bits per character")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    save_figure(fig, out, "the image")


def text_chart(
    curves: list[Curves], x: str = "steps", width: int = 64, height: int = 14
) -> list[tuple[str, str | None]]:
    """The curves as a text chart: train as dots, validation as one marker per run, y in bpc.
    Returned as (text, style) pieces in order, a style being a colour name such as "bold red"
    (None: plain), for the command line to print in colour or not."""
    ys = np.concatenate([a for c in curves for a in (c.train_bpc, c.val_bpc)])
    xs = np.concatenate([a for c in curves for a in (c.train_x, c.val_x)])
    lo, hi = float(ys.min()), float(ys.max())
    hi = hi if hi > lo else lo + 1.0
    x_hi = float(xs.max()) or 1.0
    grid = [[(" ", "")] * width for _ in range(height)]  # (char, style) per cell

    def put(px: np.ndarray, py: np.ndarray, mark: str, style: str, over: bool) -> None:
        cols = np.rint(px / x_hi * (width - 1)).astype(int)
        rows = np.rint((hi - py) / (hi - lo) * (height - 1)).astype(int)
        for r, col in zip(rows.tolist(), cols.tolist(), strict=True):
            if over or grid[r][col][0] == " ":
                grid[r][col] = (mark, style)

    for i, c in enumerate(curves):  # train first, so validation markers are drawn over it
        put(c.train_x, c.train_bpc, "·", COLORS[i % len(COLORS)], over=False)
    for i, c in enumerate(curves):
        put(c.val_x, c.val_bpc, MARKERS[i % len(MARKERS)], f"bold {COLORS[i % len(COLORS)]}", True)

    out: list[tuple[str, str | None]] = []

    def append(text: str, style: str | None = None) -> None:
        out.append((text, style))

    for r, row in enumerate(grid):
        value = hi - (hi - lo) * r / (height - 1)
        append(f"{value:7.3f} ┤" if r in (0, height // 2, height - 1) else " " * 8 + "│")
        for mark, style in row:
            append(mark, style=style or None)
        append("\n")
    append(" " * 8 + "└" + "─" * width + "\n")
    right = f"{x_hi:,.0f}" if x_hi >= 100 else f"{x_hi:.3g}"
    title = f"{X_AXES[x]} (y: bits per character)"
    gap = max(1, width - 1 - len(right) - len(title))
    append(" " * 9 + "0" + " " * (gap // 2) + title + " " * (gap - gap // 2) + right + "\n")
    for i, c in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        append(f"  {MARKERS[i % len(MARKERS)]} ", style=f"bold {color}")
        append(f"{c.label} val   ")
        append("·", style=color)
        append(" train\n")
    return out
