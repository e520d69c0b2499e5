"""Training progress on stderr as the command line shows it: a rich progress bar on a terminal,
plain log lines otherwise (charrnn.report's PlainReporter), both with the ETA of whichever limit
stops the run; and the bar (MB, MB/s) of encoding a large corpus into its cache.

The training loop just calls the reporter methods (start, step, sample, end), the encoder a
`progress(phase, done, total)` callback; both are written through charrnn.report's `Dropping`,
so that progress that cannot be shown never stops training.
"""

from __future__ import annotations

import sys

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

from charrnn.report import (
    Dropping,
    Eta,
    PlainReporter,
    fmt_rate,
    fmt_time,
    limit_reached,
    ranks_text,
    start_verb,
)


class RichReporter:
    """A live bar with step, loss, val loss, chars/s and the ETA of whichever limit stops the run.
    The bar fills toward that limit too: the larger of the step and the time fraction."""

    def __init__(self, file=None):
        self.console = Console(file=Dropping(file or sys.stderr))
        self.progress = Progress(
            TextColumn("step {task.fields[step]}"),
            BarColumn(),
            TextColumn("loss {task.fields[loss]}  val {task.fields[val]}  {task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=self.console,
            transient=False,
        )
        self.task = None
        self._loss = None
        self.eta: Eta | None = None
        self.of = ""

    def start(self, info: dict) -> None:
        if info.get("notice"):
            self.console.print(info["notice"], markup=False, highlight=False)
        self.console.print(
            f"{start_verb(info)} [bold]{info['run_dir']}[/]{ranks_text(info)}: "
            f"{info['vocab_size']} characters, {info['train_chars']:,} training chars; "
            f"{info['stops']}"
        )
        if info.get("reached"):
            self.console.print(limit_reached(info), markup=False, highlight=False)
        self.eta = Eta(info)
        self.of = f"/{info['max_steps']}" if info["max_steps"] else ""
        self.progress.start()
        self.task = self.progress.add_task(
            "train",
            total=1.0 if self.eta.limited else None,
            completed=self.eta.done(info["start_step"], 0.0),
            step=f"{info['start_step']}{self.of}",
            loss="-",
            val="-",
            rate="",
            eta="",
        )

    def step(self, m: dict) -> None:
        self._loss = (
            m["train_loss"] if self._loss is None else 0.95 * self._loss + 0.05 * m["train_loss"]
        )  # smoothed for reading
        left = self.eta.left(m)
        fields = {
            "step": f"{m['step']}{self.of}",
            "loss": f"{self._loss:.3f}",
            "rate": fmt_rate(m["chars_per_sec"]),
            "eta": "" if left is None else f"eta {fmt_time(left[0])} ({left[1]})",
        }
        if m["val_loss"] is not None:
            fields["val"] = f"{m['val_loss']:.3f}"
        done = self.eta.done(m["step"], self.eta.seconds(m))
        self.progress.update(self.task, completed=done, **fields)

    def sample(self, step: int, text: str) -> None:
        self.console.print(f"[dim]--- sample at step {step} ---[/]")
        self.console.print(text, markup=False, highlight=False)

    def end(self) -> None:
        self.progress.stop()


def make_reporter(quiet: bool):
    """Nothing with --quiet or without a stderr (closed: `2>&-`), a bar on a terminal, plain
    lines when stderr is a file or pipe."""
    if quiet or sys.stderr is None:
        return None
    if Dropping(sys.stderr).isatty():
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
                console=Console(file=Dropping(sys.stderr)),
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
    """A bar on a terminal; nothing with --quiet or when stderr is a file, a pipe or closed."""
    if quiet or not Dropping(sys.stderr).isatty():
        return None
    return EncodeBar(name)
