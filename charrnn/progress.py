"""Training progress on stderr: a rich progress bar on a terminal, plain log lines otherwise,
both with the ETA of whichever limit stops the run (`Eta`); and the bar (MB, MB/s) of encoding
a large corpus into its cache.

Part of the command-line layer (charrnn/cli/, and `charrnn.train(quiet=False)` which shows what
the command shows); the training loop just calls the reporter methods (start, step, sample,
end), the encoder a `progress(phase, done, total)` callback.

Progress is written through `Dropping`: a line that cannot be written (the reader of a pipe
left, a full disk, a closed terminal) is dropped with everything after it, so that training
never stops, and never loses a checkpoint, because its progress could not be shown.
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


class Dropping:
    """A text stream (stderr) whose writes never fail: after the first one that does, every
    write is dropped. Has what print() and rich's Console use of a stream."""

    def __init__(self, stream):
        self.stream = stream
        self.lost = stream is None  # None: stderr was closed when the program started

    def _do(self, method: str, *args) -> None:
        if self.lost:
            return
        try:
            getattr(self.stream, method)(*args)
        except (OSError, ValueError):  # ValueError: a stream that was closed under us
            self.lost = True

    def write(self, text: str) -> int:
        self._do("write", text)
        return len(text)

    def flush(self) -> None:
        self._do("flush")

    def isatty(self) -> bool:
        try:
            return not self.lost and self.stream.isatty()
        except (OSError, ValueError):
            return False

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def _fmt_rate(chars_per_sec: float) -> str:
    return f"{chars_per_sec / 1000:.1f}k chars/s"


class PlainReporter:
    """One line per validation and at most one every `every` seconds otherwise: fit for logs."""

    def __init__(self, stream=None, every: float = 10.0):
        self.stream = Dropping(stream or sys.stderr)
        self.every = every
        self._last = 0.0
        self.max_steps = None
        self.eta: Eta | None = None

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def start(self, info: dict) -> None:
        self.max_steps = info["max_steps"]
        self.eta = Eta(info)
        if info.get("notice"):
            self._print(info["notice"])
        self._print(
            f"{_verb(info)} {info['run_dir']}{_ranks(info)}: {info['vocab_size']} characters, "
            f"{info['train_chars']:,} training / {info['val_chars']:,} validation chars; "
            f"{info['stops']}"
        )
        if info.get("reached"):
            self._print(limit_reached(info))
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
        left = self.eta.left(m)
        eta = "" if left is None else f" | eta {_fmt_time(left[0])} ({left[1]})"
        self._print(
            f"step {m['step']}{total} | epoch {m['epoch']:.2f} | loss "
            f"{m['train_loss']:.4f}{val} | {_fmt_rate(m['chars_per_sec'])} | "
            f"{m['elapsed']:.0f}s{eta}"
        )

    def sample(self, step: int, text: str) -> None:
        self._print(f"--- sample at step {step} ---\n{text}\n---")

    def end(self) -> None:
        pass


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
            f"{_verb(info)} [bold]{info['run_dir']}[/]{_ranks(info)}: {info['vocab_size']} "
            f"characters, {info['train_chars']:,} training chars; {info['stops']}"
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
            "rate": _fmt_rate(m["chars_per_sec"]),
            "eta": "" if left is None else f"eta {_fmt_time(left[0])} ({left[1]})",
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


class Eta:
    """Seconds left until whichever limit stops the run first: the step limit (max_steps, or
    max_epochs as a step count) at this invocation's speed so far, or max_time, which counts
    this invocation's seconds."""

    def __init__(self, info: dict):
        self.stop_step = info["max_steps"]  # None when only max_time (or nothing) limits it
        self.max_time = info.get("max_time") or None
        by_epochs = self.stop_step is not None and self.stop_step == info.get("epoch_steps")
        self.step_limit = "max_epochs" if by_epochs else "max_steps"
        self.start_step = info["start_step"]
        self.start_elapsed = info.get("start_elapsed", 0.0)  # metrics' elapsed at the start

    @property
    def limited(self) -> bool:
        return bool(self.stop_step or self.max_time)

    def seconds(self, m: dict) -> float:
        """This invocation's seconds so far: metrics' elapsed continues across resumes."""
        return max(0.0, m["elapsed"] - self.start_elapsed)

    def left(self, m: dict) -> tuple[float, str] | None:
        """(seconds left, the limit that stops the run) or None when nothing limits it."""
        now, done = self.seconds(m), m["step"] - self.start_step
        options = []
        if self.stop_step and done > 0:
            options.append((max(0, self.stop_step - m["step"]) * now / done, self.step_limit))
        if self.max_time:
            options.append((max(0.0, self.max_time - now), "max_time"))
        return min(options) if options else None

    def done(self, step: int, seconds: float) -> float:
        """The fraction of the run done, toward the limit that is nearer."""
        fractions = [0.0]
        if self.stop_step:
            fractions.append(step / self.stop_step)
        if self.max_time:
            fractions.append(seconds / self.max_time)
        return min(1.0, max(fractions))


def _verb(info: dict) -> str:
    start = info["start_step"]
    return f"resuming from step {start} into" if info.get("resumed") else "training into"


def _ranks(info: dict) -> str:
    ranks = info.get("ranks", 1)
    return f" with {ranks} MPI processes" if ranks > 1 else ""


def limit_reached(info: dict) -> str:
    """What to say when a resumed run has already reached its step or epoch limit."""
    step, which = info["start_step"], info["reached"]
    if which == "max_epochs":
        epochs = info["max_epochs"]
        limit, more = f"max_epochs {epochs:g}", f"--max-epochs {2 * epochs:g}"
    else:
        limit, more = f"max_steps {info['max_steps']}", f"--max-steps {2 * step}"
    return (
        f"step {step} already reached {limit}: nothing to train; to continue, resume with a "
        f"higher limit, e.g. {more}"
    )


def _fmt_time(seconds: float) -> str:
    """1:05 for 65 seconds, 1:01:05 past an hour."""
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


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
