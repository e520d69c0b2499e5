"""Training progress as plain text: the reporter the training loop reports to (`NullReporter`
is its interface: start, step, sample, end), and `PlainReporter`, log lines on a stream with the
ETA of whichever limit stops the run (`Eta`). `charrnn.train(quiet=False)` reports with it; the
command line draws a rich bar on a terminal instead (charrnn/cli/progress.py).

Progress is written through `Dropping`: a line that cannot be written (the reader of a pipe
left, a full disk, a closed terminal) is dropped with everything after it, so that training
never stops, and never loses a checkpoint, because its progress could not be shown.
"""

from __future__ import annotations

import sys
import time


class NullReporter:
    """Receives progress from the loop and shows none of it: the interface of every reporter."""

    def start(self, info: dict) -> None: ...
    def step(self, metrics: dict) -> None: ...
    def sample(self, step: int, text: str) -> None: ...
    def end(self) -> None: ...


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


def fmt_rate(chars_per_sec: float) -> str:
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
            f"{start_verb(info)} {info['run_dir']}{ranks_text(info)}: "
            f"{info['vocab_size']} characters, {info['train_chars']:,} training / "
            f"{info['val_chars']:,} validation chars; {info['stops']}"
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
        eta = "" if left is None else f" | eta {fmt_time(left[0])} ({left[1]})"
        self._print(
            f"step {m['step']}{total} | epoch {m['epoch']:.2f} | loss "
            f"{m['train_loss']:.4f}{val} | {fmt_rate(m['chars_per_sec'])} | "
            f"{m['elapsed']:.0f}s{eta}"
        )

    def sample(self, step: int, text: str) -> None:
        self._print(f"--- sample at step {step} ---\n{text}\n---")

    def end(self) -> None:
        pass


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


def start_verb(info: dict) -> str:
    start = info["start_step"]
    return f"resuming from step {start} into" if info.get("resumed") else "training into"


def ranks_text(info: dict) -> str:
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


def fmt_time(seconds: float) -> str:
    """1:05 for 65 seconds, 1:01:05 past an hour."""
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"
