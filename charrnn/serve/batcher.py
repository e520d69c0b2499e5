"""The batching engine: every sequence in flight advances together, one batched step per
character, in one thread of its own.

A request brings one Group per prompt: its n rows (the `n` choices), their state after the
prompt, one Draw (charrnn.sample: temperature, top-k, top-p) and one Generator. The engine's
batch is the rows of every group side by side, one (R, W) state; each step it computes the
output layer for the R rows (one product per distinct temperature above 1), draws each group's
characters with `Draw.choose` on the rows that share its Draw, and advances all R states with
one `model.step`. A group draws its noise exactly as `sample.generate` draws it for the same
prompt, n, seed and settings, so a request that runs alone gives `charrnn sample --rng-seed`'s
text bit for bit. In a batch with other rows BLAS may round a row's products differently in
the last bit (its kernels depend on the number of rows), which changes a character only where
two of them score within about 1e-6 of each other: the same text almost always, not always.

New groups join at the next step; a finished, cancelled or aborted row leaves before the
step that would advance it. The engine knows no HTTP: it reads the flags a request sets
(`cancelled`) and hands text out through each Choice (`pieces`, then `finish`) and one
wake-up callback per step (`notify`), which the server turns into its own events.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from charrnn.model import step, top_output
from charrnn.parallel import blas_threads
from charrnn.sample import Cut, Draw

NOISE_BLOCK = 1 << 14  # Gumbel values a group draws per RNG call: 64 KB in float32 at most


@dataclass
class Choice:
    """One row's text as it grows: the pieces its Cut (charrnn.sample) released, none of them
    part of a stop string. The engine only appends to `pieces`, then sets `finish`, so that a
    reader in another thread never sees a half-made state: once it reads `finish`, every
    piece is there."""

    index: int
    pieces: list[str] = field(default_factory=list)
    chars: int = 0  # characters in pieces
    finish: str | None = None  # "length", "stop" or "abort" once the row is done

    def add(self, piece: str) -> None:
        if piece:
            self.pieces.append(piece)
            self.chars += len(piece)


@dataclass
class Job:
    """One request's groups as the engine sees them. `cancelled` is set by the server (the
    client hung up); `notify(job)` is called in the engine's thread when its choices moved."""

    groups: list[Group]
    notify: Callable[[Job], None]
    cancelled: bool = False

    @property
    def choices(self) -> list[Choice]:
        return [c for g in self.groups for c in g.choices]

    @property
    def done(self) -> bool:
        return all(c.finish is not None for c in self.choices)


class Group:
    """The n rows of one prompt: their state after it, one Draw and one Generator."""

    def __init__(
        self,
        state: np.ndarray,
        draw: Draw,
        rng: np.random.Generator,
        max_tokens: int,
        stop: tuple[str, ...] = (),
        first_index: int = 0,
    ):
        n = len(state)
        self.state = state  # (n, W), only until the group joins the batch
        self.draw, self.rng, self.max_tokens, self.stop = draw, rng, max_tokens, stop
        self.choices = [Choice(first_index + j) for j in range(n)]
        self.cuts = [Cut(stop) for _ in range(n)]  # where each row's text ends
        self.cuts_needed = bool(stop)
        self.rows = list(range(n))  # the rows still drawing, as indices of choices
        self.i = 0  # characters drawn so far
        self.noise = None  # (steps, n, V): T g + by for the current block of steps
        self.block = 1
        self.by: np.ndarray | None = None  # by / max(T, 1), set when the group joins

    def offsets(self, by: np.ndarray) -> np.ndarray:
        """(rows, V): what `Draw.choose` adds to this step's logits for the rows drawing."""
        if self.draw.greedy:
            return np.broadcast_to(by, (len(self.rows), len(by)))
        n, V = len(self.choices), len(by)
        if self.i % self.block == 0:  # the next block of steps, as generate draws it
            self.block = max(1, NOISE_BLOCK // (n * V))
            steps = min(self.block, self.max_tokens - self.i)
            self.noise = self.draw.noise(self.rng, (steps, n, V), by)
        noise = self.noise[self.i % self.block]  # (n, V)
        return noise if len(self.rows) == n else noise[self.rows]

    def take(self, ids: list[int], vocab: list[str]) -> None:
        """Add this step's characters to the rows drawing; a row is done when it reaches
        max_tokens, completes a stop string (cut off, as OpenAI does) or, for a model trained
        on records, draws the end of one (an id past the vocabulary): OpenAI's "stop" too."""
        self.i += 1
        last = self.i >= self.max_tokens
        V = len(vocab)
        for j, k in zip(self.rows, ids, strict=True):
            choice, cut = self.choices[j], self.cuts[j]
            if not self.cuts_needed and k < V:  # the common case, kept lean: every row, every step
                choice.pieces.append(vocab[k])
                choice.chars += 1
            else:
                choice.add(cut.add(vocab[k] if k < V else None))
            if cut.ended is None and last:
                choice.add(cut.finish())
            if cut.ended is not None:
                choice.finish = "length" if cut.ended == "length" else "stop"

    def end(self) -> None:
        """Abort the rows still drawing: what they hold back is part of their text."""
        for j in self.rows:
            self.choices[j].add(self.cuts[j].finish())
            self.choices[j].finish = "abort"


class Engine:
    """The thread that steps every row in flight. `submit` a Job, `cancel` it when its client
    hangs up, `drain` at shutdown, `close` to stop the thread."""

    def __init__(self, params: dict, vocab: list[str], log: Callable[[str], None] | None = None):
        self.params, self.vocab, self.log = params, vocab, log
        self._jobs: list[Job] = []  # in the batch's row order, group by group
        self._state = None  # (R, W)
        self._pending: list[Job] = []
        self._outputs: dict[float, tuple[np.ndarray, np.ndarray]] = {}  # logit_scale -> (Why_T, by)
        self._draw_in_use: dict[Draw, Draw] = {}
        self._groups: list[Group] | None = None  # the batch's layout (_arrange), None: changed
        self._draws: list = []
        self._wake = threading.Condition()
        self._closing = False
        self._deadline: float | None = None  # when rows still drawing are aborted (drain)
        self._thread: threading.Thread | None = None
        self.rows = 0  # rows in the batch, for /health
        self.steps = 0  # batched steps so far
        self.characters = 0  # characters drawn so far

    # ---- the server's side ----

    def submit(self, job: Job) -> None:
        with self._wake:
            if self._thread is None:  # started on first use: a mounted app has no lifespan
                self._thread = threading.Thread(target=self._loop, name="charrnn-engine")
                self._thread.daemon = True
                self._thread.start()
            self._pending.append(job)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Free the job's rows before the next step."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    def drain(self, grace: float) -> None:
        """Shutting down: rows still drawing `grace` seconds from now end with "abort"."""
        with self._wake:
            self._deadline = time.monotonic() + max(grace, 0.0)
            self._wake.notify()

    @property
    def draining(self) -> bool:
        return self._deadline is not None

    def close(self) -> None:
        """Abort every row and stop the thread."""
        self.drain(0.0)
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    # ---- the engine's thread ----

    def _loop(self) -> None:
        with blas_threads(1):  # small products: a second BLAS thread costs more than it gives
            self._run()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._pending or self._jobs or self._closing):
                    self._wake.wait()
                if self._closing and not (self._pending or self._jobs):
                    return
                joining, self._pending = self._pending, []
            self._join(joining)
            aborting = self._deadline is not None and time.monotonic() >= self._deadline
            self._end(everything=aborting)
            try:
                if self._jobs:
                    self._step()
            except Exception as e:  # a bug: end the requests in flight, not the server
                for job in self._jobs:
                    for c in job.choices:
                        c.finish = c.finish or "abort"
                    job.notify(job)
                self._jobs, self._state, self._groups, self.rows = [], None, None, 0
                if self.log is not None:
                    self.log(f"internal error in the engine, the requests in flight ended: {e!r}")

    def _join(self, jobs: list[Job]) -> None:
        """Add the rows of new jobs at the end of the batch (none while draining)."""
        for job in jobs:
            for g in job.groups:
                if g.max_tokens == 0 or self._deadline is not None:
                    for c in g.choices:
                        c.finish = "length" if g.max_tokens == 0 else "abort"
                    g.rows = []
            states = [g.state for g in job.groups if g.rows]
            for g in job.groups:
                g.state = None
                g.draw = self._draw_in_use.setdefault(g.draw, g.draw)  # one object per Draw
                g.by = self._output(g.draw)[1]
            if not states:
                job.notify(job)
                continue
            before = [self._state] if self._jobs else []
            self._state = np.concatenate(before + states) if len(before + states) > 1 else states[0]
            self._jobs.append(job)
            self._groups = None
        self.rows = 0 if self._state is None or not self._jobs else len(self._state)

    def _end(self, everything: bool) -> None:
        """End the rows of cancelled jobs (of every job when the drain's grace is over)."""
        if not everything and not any(job.cancelled for job in self._jobs):
            return
        for job in self._jobs:
            if everything or job.cancelled:
                for g in job.groups:
                    g.end()
                job.notify(job)
        self._remove_finished()

    def _remove_finished(self) -> np.ndarray:
        """Drop the rows that are done from the batch: the mask (R,) of the rows kept."""
        keep = np.array(
            [g.choices[j].finish is None for job in self._jobs for g in job.groups for j in g.rows],
            dtype=bool,
        )
        if keep.all():
            return keep
        self._state = self._state[keep]
        for job in self._jobs:
            for g in job.groups:
                g.rows = [j for j in g.rows if g.choices[j].finish is None]
        self._jobs = [job for job in self._jobs if any(g.rows for g in job.groups)]
        self._groups = None
        self.rows = len(self._state)
        draws = {g.draw for job in self._jobs for g in job.groups}
        self._draw_in_use = {d: d for d in draws}
        used = {d.logit_scale for d in draws}
        for scale in [s for s in self._outputs if s not in used]:
            del self._outputs[scale]  # a temperature no row in flight uses any more
        return keep

    def _output(self, draw: Draw) -> tuple[np.ndarray, np.ndarray]:
        """(Why_T, by) scaled for draw's temperature, made once per distinct scale in flight."""
        out = self._outputs.get(draw.logit_scale)
        if out is None:
            out = self._outputs[draw.logit_scale] = draw.output_layer(self.params)
        return out

    def _arrange(self) -> None:
        """What every step needs to know about the batch and that changes only when rows join
        or leave: the groups drawing, in row order, and the rows of each Draw in flight."""
        self._groups = [g for job in self._jobs for g in job.groups if g.rows]
        rows_of: dict[int, tuple[Draw, list[int]]] = {}  # keyed by id: hashing a Draw is slow
        start = 0
        for g in self._groups:
            rows_of.setdefault(id(g.draw), (g.draw, []))[1].extend(
                range(start, start + len(g.rows))
            )
            start += len(g.rows)
        self._draws = [
            (draw, *self._output(draw), np.asarray(rows)) for draw, rows in rows_of.values()
        ]

    def _step(self) -> None:
        """Draw one character for every row in the batch, hand them out, advance the rest."""
        if self._groups is None:
            self._arrange()
        groups = self._groups
        h = top_output(self.params, self._state)  # (R, H): what the output layer reads
        R = len(h)
        offsets = [g.offsets(g.by) for g in groups]  # (rows, V) each
        noise = offsets[0] if len(offsets) == 1 else np.concatenate(offsets)  # (R, V)
        if len(self._draws) == 1:  # one Draw for every row: generate's own products
            draw, Why_T, by, _ = self._draws[0]
            ids = draw.choose(h @ Why_T, noise, by)  # (R,)
        else:
            ids = np.empty(R, dtype=np.intp)  # (R,)
            for draw, Why_T, by, rows in self._draws:
                ids[rows] = draw.choose(h[rows] @ Why_T, noise[rows], by)
        drawn = ids.tolist()
        start = 0
        for g in groups:
            end = start + len(g.rows)
            g.take(drawn[start:end], self.vocab)
            start = end
        for job in self._jobs:
            job.notify(job)
        self.steps += 1
        self.characters += R
        keep = self._remove_finished()
        if self._jobs:  # x_t = the characters just drawn, for the rows that go on
            _, self._state = step(self.params, ids if keep.all() else ids[keep], self._state)
