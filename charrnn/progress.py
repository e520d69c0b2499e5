"""Training progress on stderr: a rich progress bar on a terminal, plain log lines otherwise;
and the bar (MB, MB/s) of encoding a large corpus into its cache.

Part of the command-line layer (only cli.py uses it); the training loop just calls the reporter
methods (start, step, sample, end), the encoder a `progress(phase, done, total)`
callback.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


def _fmt_rate(chars_per_sec: float) -> str:
    return f"{chars_per_sec / 1000:.1f}k chars/s"


class PlainReporter:
    """One line per validation and at most one every `every` seconds otherwise: fit for logs."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = stream or sys.stderr
        self.every = every
        self._last = 0.0
        self.max_steps = None

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def start(self, info: dict) -> None:
        self.max_steps = info["max_steps"]
        if info.get("notice"):
            self._print(info["notice"])
        verb = "resuming at step " + str(info["start_step"]) if info["start_step"] else "training"
        self._print(
            f"{verb} into {info['run_dir']}: {info['vocab_size']} characters, "
            f"{info['train_chars']:,} training / {info['val_chars']:,} validation chars"
        )
        self._last = time.monotonic()

    def step(self, m: dict) -> None:
        now = time.monotonic()
        if m["val_loss"] is None and now - self._last < self.every:
            return
        self._last = now
        total = f"/{self.max_steps}" if self.max_steps else ""
        val = (
            "" if m["val_loss"] is None else f" | val {m['val_loss']:.4f} ({m['val_bpc']:.3f} bpc)"
        )
        self._print(
            f"step {m['step']}{total} | epoch {m['epoch']:.2f} | loss "
            f"{m['train_loss']:.4f}{val} | {_fmt_rate(m['chars_per_sec'])} | "
            f"{m['elapsed']:.0f}s"
        )

    def sample(self, step: int, text: str) -> None:
        self._print(f"--- sample at step {step} ---\n{text}\n---")

    def end(self) -> None:
        pass


class RichReporter:
    """A live bar with step, loss, val loss, chars/s and ETA."""

    def __init__(self):
        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("step {task.completed:.0f}{task.fields[of]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.task = None
        self._loss = None

    def start(self, info: dict) -> None:
        if info.get("notice"):
            self.console.print(info["notice"], markup=False, highlight=False)
        self.console.print(
            f"training into [bold]{info['run_dir']}[/]: {info['vocab_size']} "
            f"characters, {info['train_chars']:,} training chars"
        )
        total = info["max_steps"]
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=total,
            completed=info["start_step"],
            of=f"/{total}" if total else "",
            loss="-",
            val="-",
            rate="",
        )

    def step(self, m: dict) -> None:
        self._loss = (
            m["train_loss"] if self._loss is None else 0.95 * self._loss + 0.05 * m["train_loss"]
        )  # smoothed for reading
        fields = {"loss": f"{self._loss:.3f}", "rate": _fmt_rate(m["chars_per_sec"])}
        if m["val_loss"] is not None:
            fields["val"] = f"{m['val_loss']:.3f}"
        self.progress.update(self.task, completed=m["step"], **fields)

    def sample(self, step: int, text: str) -> None:
        self.console.print(f"[dim]--- sample at step {step} ---[/]")
        self.console.print(text, markup=False, highlight=False)

    def end(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool):
    """Nothing with --quiet, a bar on a terminal, plain lines when stderr is a file or pipe."""
    if quiet:
        return None
    if sys.stderr.isatty():
        return RichReporter()
    return PlainReporter()


class EncodeBar:
    """The encoder's progress as a transient bar: corpus MB read and MB/s, then the ids written.
    Drawn only once the corpus turns out to be at least `min_bytes`, so small ones stay quiet."""

    def __init__(self, name: str, min_bytes: int = 32 << 20):
        self.name, self.min_bytes = name, min_bytes
        self.progress: Progress | None = None
        self.tasks: dict = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is None:
            if phase != "read" or max(done, total or 0) < self.min_bytes:
                return
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.progress.start()
        if phase not in self.tasks:
            what = f"encoding {self.name}" if phase == "read" else "writing ids"
            self.tasks[phase] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def make_encode_bar(quiet: bool, name: str) -> EncodeBar | None:
    """A bar on a terminal; nothing with --quiet or when stderr is a file or pipe."""
    if quiet or not sys.stderr.isatty():
        return None
    return EncodeBar(name)
