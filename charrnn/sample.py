"""Generating text: warm the hidden state on a prime text, then draw one character per step
(or search for the most likely continuation with a beam).

Several samples are drawn together as one batch: their states are the rows of one (M, W)
matrix, so M samples cost one (M, H) x (H, G H) product per layer and one (M, H) x (H, V) output
product per character, not M loops.

Drawing uses the Gumbel-max trick: argmax(logits + g) with g = -log(-log(u)) for uniform u is
an exact draw from softmax(logits). The noise is drawn from the Generator in large blocks,
before the steps that use it, so a step makes no RNG call and needs no exp, no normalisation
and no cumulative sum: one add and one argmax. Temperature is folded in once, where it cannot
overflow: argmax(z / T + g) = argmax(z + T g), so a temperature above 1 scales a copy of Why and
by down, and one below 1 scales the noise down (1 / T of T = 1e-40 is beyond float32); top-k and
top-p set the logits they exclude to -inf before the argmax.
The recurrence itself is `model.run` (the prime) and `model.step` (each drawn character), the
same for every cell.

Beam search (`beam_search`) draws nothing: it keeps the K continuations with the highest total
log-probability, as K rows of one batch, the same way.

Reading checkpoints and printing are left to the CLI; encoding text to ids to `data`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from charrnn.data import encode, id_dtype, unknown_chars
from charrnn.errors import ArgumentError, DataError, option
from charrnn.memory import check_fits
from charrnn.model import Workspace, architecture, run, step, top_output, zero_state
from charrnn.parallel import blas_threads

WARM_BLOCK = 4096  # prime characters per model.run call: bounds memory for long primes
NOISE_BLOCK = 1 << 18  # Gumbel values drawn per RNG call (steps * M * V): 1 MB in float32
FLUSH_EVERY = 64  # streamed output is flushed at each newline and at least every 64 chars


def encode_prime(
    text: str, vocab: list[str], unknown: str = "error"
) -> tuple[np.ndarray, list[str]]:
    """Ids of the prime text and the distinct characters of it that are not in vocab.

    unknown="error" raises DataError listing those characters; "skip" drops them.
    """
    ids, n_unknown = encode(text, vocab)
    missing = unknown_chars(text, vocab) if n_unknown else []
    if missing and unknown == "error":
        raise DataError(
            f"the seed has {n_unknown} character{'s' * (n_unknown != 1)} not in the model's "
            f"vocabulary: {show_chars(missing)}; remove them or pass {option('unknown', 'skip')} "
            "to drop them"
        )
    return ids, missing


def show_chars(chars: list[str], limit: int = 20) -> str:
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


def warm_state(params: dict, prime_ids: np.ndarray, num_samples: int = 1) -> np.ndarray:
    """The state (M, W) after reading prime_ids from a zero state (zeros if prime is empty)."""
    state = zero_state(params, 1)  # (1, W)
    prime = np.asarray(prime_ids, dtype=np.intp)
    ws = Workspace()  # one set of buffers for every block of a long prime
    for start in range(0, len(prime), WARM_BLOCK):
        state = run(params, prime[start : start + WARM_BLOCK, None], state, ws)[1]
    return np.repeat(state, num_samples, axis=0)


def generate(
    params: dict,
    prime_ids: np.ndarray,
    length: int,
    rng: np.random.Generator | int | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    argmax: bool = False,
    num_samples: int = 1,
) -> Iterator[np.ndarray]:
    """Yield `length` arrays of M = num_samples ids, one per generated character.

    The first character is drawn from p = softmax(Why h + by) where h is the state after the
    prime; with an empty prime h = 0, so it comes from softmax(by), the model's output bias.
    `argmax` (or top_k=1) takes the most likely character at every step and uses no randomness.
    The noise for steps [0, n) does not depend on `length`, so with the same rng seed a shorter
    run's text is a prefix of a longer one's. rng: a Generator, or a seed for one (None: random).
    """
    if length < 0 or num_samples < 1:  # Model.sample words each
        raise ArgumentError("need length >= 0 and num_samples >= 1")
    rng = np.random.default_rng(rng)
    draw = Draw.settle(len(params["by"]), temperature, top_k, top_p, argmax)
    Why_T, by = draw.output_layer(params)  # (H, V), (V,)
    V, M, dtype = len(by), num_samples, Why_T.dtype
    state = warm_state(params, prime_ids, M)  # (M, W)
    h = top_output(params, state)  # (M, H): the top layer's h_t, read by the output layer
    logits = np.empty((M, V), dtype=dtype)  # (M, V): Why h_t / max(T, 1)
    scores = np.empty((M, V), dtype=dtype)  # (M, V)
    block = max(1, NOISE_BLOCK // (M * V))  # steps of noise per RNG call
    noise = by[None, None]  # (steps, M, V); for greedy drawing always by, else replaced below

    with blas_threads(1):  # small products: a second BLAS thread costs more than it gives
        for i in range(length):
            np.matmul(h, Why_T, out=logits)
            if not draw.greedy and i % block == 0:
                noise = draw.noise(rng, (min(block, length - i), M, V), by)  # (steps, M, V)
            ids = draw.choose(logits, noise[0 if draw.greedy else i % block], by, scores)
            yield ids
            if i + 1 < length:
                h, state = step(params, ids, state)  # h_{t+1} from x_t = ids and the state


@dataclass(frozen=True)
class Draw:
    """How characters are drawn, settled once from the sampling settings: the scales that
    fold the temperature in, and the top-k and top-p that exclude something (None if not).

    `generate` draws a batch with one Draw; the server (charrnn/serve) draws rows of one batch
    with different Draws by calling `choose` on each group of rows that share one, so both
    draw the same characters from the same noise.
    """

    greedy: bool
    logit_scale: float  # 1 / max(T, 1), folded into Why and by
    noise_scale: float  # min(T, 1), folded into the noise
    top_k: int | None
    top_p: float | None

    @classmethod
    def settle(
        cls,
        V: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        argmax: bool = False,
    ) -> Draw:
        """The Draw for a vocabulary of V characters. `argmax` (or top_k=1) takes the most
        likely character at every step and uses no randomness."""
        if temperature <= 0:
            raise ArgumentError("need temperature > 0")
        if (top_k is not None and top_k < 1) or (top_p is not None and not 0 < top_p <= 1):
            raise ArgumentError("need top_k >= 1 and 0 < top_p <= 1")
        greedy = argmax or top_k == 1
        # argmax(z / T + g) = argmax(z + T g): both scales are at most 1, so nothing can overflow
        return cls(
            greedy=greedy,
            logit_scale=1.0 if greedy else 1.0 / max(temperature, 1.0),
            noise_scale=1.0 if greedy else min(temperature, 1.0),
            top_k=None if greedy or top_k is None or top_k >= V else top_k,
            top_p=None if greedy or top_p is None or top_p >= 1.0 else top_p,
        )

    def output_layer(self, params: dict) -> tuple[np.ndarray, np.ndarray]:
        """(Why / max(T, 1) transposed (H, V), by / max(T, 1) (V,)), in the params' dtype."""
        Why, dtype = params["Why"], params["Why"].dtype
        Why_T = (Why * self.logit_scale).astype(dtype, copy=False).T  # (H, V)
        return Why_T, (params["by"] * self.logit_scale).astype(dtype, copy=False)

    def noise(self, rng: np.random.Generator, shape: tuple[int, ...], by: np.ndarray):
        """T g + by for the next shape[0] steps, shape (steps, M, V): by is folded into the
        noise, so a step makes one add, not two. Drawn in order, so the values for a step do
        not depend on how many steps one call draws."""
        noise = gumbel(rng, shape, by.dtype)
        if self.noise_scale < 1.0:
            noise *= self.noise_scale  # T g; underflows harmlessly to 0 for a tiny T
        noise += by
        return noise

    def choose(
        self, logits: np.ndarray, noise: np.ndarray, by: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The ids (M,) drawn from logits (M, V) = Why h_t / max(T, 1): the argmax of
        (Why h + by) / T + g, times min(T, 1), with noise (M, V) from `noise` (greedy: by
        alone) and the characters top-k and top-p exclude set to -inf. `out`: scratch (M, V)."""
        scores = np.add(logits, noise, out=out)
        if self.top_k is not None or self.top_p is not None:
            scores[_excluded(logits + by, self.top_k, self.top_p, self.noise_scale)] = -np.inf
        return scores.argmax(axis=1)  # (M,)


def beam_search(
    params: dict, prime_ids: np.ndarray, length: int, beam: int, num_results: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The most likely continuations of `length` characters that a beam of width `beam` finds:
    (ids (N, length), log-probabilities (N,)), best first, N = num_results (fewer only when
    there are fewer distinct continuations: V^length < N).

    Each step extends each of the n kept beams by every character, scores the n V candidates
    by their total log-probability log p(continuation | prime) = sum_i log p_i[c_i], keeps the
    best `beam` of them (ties: the earlier beam, then the lower id) and reorders the states by
    the parents chosen, so the n beams cost one (n, H) x (H, G H) product per layer and one
    (n, H) x (H, V) output product per character. There is no length normalisation: every
    beam has exactly `length` characters, so dividing the scores by the length (or length^a)
    would not change their order. With beam = 1 this is greedy decoding (--argmax); with beam
    >= V^(length - 1) nothing is ever pruned and the result is exact.
    """
    if length < 1 or beam < 1 or not 1 <= num_results <= beam:  # Model.beam_search words each
        raise ArgumentError("need length >= 1, beam >= 1 and 1 <= num_results <= beam")
    Why_T, by = params["Why"].T, params["by"]  # (H, V), (V,)
    V = len(by)
    state = warm_state(params, prime_ids, 1)  # (1, W): one beam to start from
    h = top_output(params, state)  # (n, H)
    scores = np.zeros(1)  # (n,) total log-probability of each beam, in float64
    parents, chars = [], []  # per step: the beam each new beam extends, and its character
    with blas_threads(1), np.errstate(over="ignore", invalid="ignore"):
        for i in range(length):
            logits = (h @ Why_T + by).astype(np.float64)  # (n, V): Why h_t + by
            logits -= logits.max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # log p_t
            total = (scores[:, None] + logp).ravel()  # (n V,): every beam + every character
            keep = np.argsort(-total, kind="stable")[:beam]  # best first
            parent, ids = np.divmod(keep, V)  # (n,) each
            scores = total[keep]
            parents.append(parent)
            chars.append(ids)
            if i + 1 < length:
                h, state = step(params, ids, state[parent])  # reorder, then read c_i
    # follow the back-pointers from each of the best beams to the first character
    best = np.arange(min(num_results, len(scores)))  # (N,)
    out = np.empty((len(best), length), dtype=np.intp)  # (N, length)
    for i in range(length - 1, -1, -1):
        out[:, i] = chars[i][best]
        best = parents[i][best]
    return out, scores[: len(out)]


def gumbel(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Standard Gumbel noise -log(-log(u)), u uniform in (0, 1), in dtype (float32 or float64).

    u is kept at least the smallest normal number, so every value is finite: at most about
    16.6 (float32) or 36.7 (float64), at least -4.5 or -6.6.
    """
    g = rng.random(shape, dtype=dtype)
    np.maximum(g, np.finfo(dtype).tiny, out=g)
    np.log(g, out=g)
    np.negative(g, out=g)
    np.log(g, out=g)
    return np.negative(g, out=g)


def _excluded(
    z: np.ndarray, top_k: int | None, top_p: float | None, temperature: float = 1.0
) -> np.ndarray:
    """Mask (M, V) of the characters that top-k, then top-p (nucleus), leave out of the
    distribution softmax(z / temperature)."""
    if top_p is None:  # top-k alone: a partition, no sort
        kth = np.partition(z, -top_k, axis=1)[:, -top_k, None]  # (M, 1): the k-th largest
        return z < kth  # ties with the k-th largest are kept
    order = np.argsort(-z, axis=1)  # (M, V), most likely first
    p = np.take_along_axis(z, order, axis=1)  # (M, V): sorted logits
    p -= p[:, :1]
    if temperature != 1.0:  # in float64; a value beyond even its range is -inf: probability 0
        with np.errstate(over="ignore"):
            p = p.astype(np.float64) / temperature
    np.exp(p, out=p)  # sorted probabilities, unnormalised
    if top_k is not None:
        p[:, top_k:] = 0.0
    cum = np.cumsum(p, axis=1)  # (M, V)
    # keep the smallest prefix whose mass reaches top_p (always at least the top character)
    drop = cum - p >= top_p * cum[:, -1:]  # (M, V), in sorted order
    out = np.empty_like(drop)
    np.put_along_axis(out, order, drop, axis=1)
    return out


def write_samples(
    steps: Iterator[np.ndarray],
    vocab: list[str],
    out: TextIO,
    *,
    num_samples: int = 1,
    prefix: str = "",
    length: int | None = None,
    keep: bool = False,
) -> list[str] | None:
    """Print the samples that `steps` (from generate) yields, the first streamed as it is drawn.

    One sample: prefix + text + newline. Several: each under a header line
    `==> sample i of M <==`, separated by a blank line; sample 1 is streamed, the others are
    printed when the batch is done (all M are computed together). Memory: samples 2..M are held
    as ids, one to four bytes a character (`length` of them each, when given, else as drawn),
    sample 1 only with `keep`, which returns every sample as `collect` does (else None).
    """
    M = num_samples
    header = (lambda i: f"==> sample {i} of {M} <==\n") if M > 1 else (lambda i: "")
    out.write(header(1) + prefix)
    out.flush()
    held = _Held(vocab, length, M if keep else M - 1)
    buf: list[str] = []
    for ids in steps:
        c = vocab[ids[0]]
        buf.append(c)
        if c == "\n" or len(buf) >= FLUSH_EVERY:
            out.write("".join(buf))
            out.flush()
            buf.clear()
        held.add(ids if keep else ids[1:])
    out.write("".join(buf) + "\n")
    rows = held.rows()
    for i, row in enumerate(rows[1:] if keep else rows, start=2):
        out.write(f"\n{header(i)}{prefix}{decode(row, vocab)}\n")
    out.flush()
    return [prefix + decode(row, vocab) for row in rows] if keep else None


ENDINGS = ("length", "stop", "end")  # why a sample ended: see `Sample.ended`


@dataclass(frozen=True)
class Sample:
    text: str  # the prefix (the seed, unless not echoed) and the generated text
    ended: str  # "length": all its characters were drawn; "stop": at a stop string (not
    # included); "end": the model drew the end of a record (a model trained on records)


class Cut:
    """One sample's text as it is drawn, ended at the first stop string or at the end of a
    record. The last characters that could still begin a stop string are held back, so that
    what `add` releases is never a part of one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1  # chars that may start a stop
        self.pending = ""  # drawn, not released yet: at most `hold` characters
        self.ended: str | None = None

    def add(self, c: str | None) -> str:
        """Take the next drawn character (None: the end of a record); return the text that is
        now certain to be part of the sample."""
        if c is None:
            self.ended = "end"
            out, self.pending = self.pending, ""
            return out
        pending = self.pending + c
        # the stops that end here, the longest first: it began earliest
        for stop in sorted((s for s in self.stops if pending.endswith(s)), key=len, reverse=True):
            self.ended = "stop"
            self.pending = ""
            return pending[: len(pending) - len(stop)]
        cut = max(0, len(pending) - self.hold)
        self.pending = pending[cut:]
        return pending[:cut]

    def finish(self) -> str:
        """At the end of `length` characters: what is held back is part of the sample."""
        self.ended = self.ended or "length"
        out, self.pending = self.pending, ""
        return out


def check_stops(stops: Iterable[str]) -> tuple[str, ...]:
    """The stop strings as a tuple; DataError for one that is not a non-empty string (an empty
    one would end every sample before its first character)."""
    stops = (stops,) if isinstance(stops, str) else tuple(stops)
    if any(not isinstance(s, str) or not s for s in stops):
        raise DataError("a stop string must be a non-empty string")
    return stops


def finish_samples(
    steps: Iterator[np.ndarray],
    vocab: list[str],
    *,
    num_samples: int = 1,
    prefix: str = "",
    stops: Iterable[str] = (),
    out: TextIO | None = None,
    records: str | None = None,
) -> list[Sample]:
    """The samples that `steps` (from generate) yields, each ended at its first stop string, at
    an id beyond the characters of vocab (a records model's end of a record: len(vocab)) or
    after all its characters, whichever comes first. Drawing stops once every sample has ended.
    With `out`, they are printed as `write_samples` prints them: the first streamed as it is
    drawn (less what could still be the start of a stop string), the others at the end; the
    samples of a model of `records` ("line", "paragraph") are printed as records are written,
    one per line (or with a blank line between them), under no headers."""
    M, stops = num_samples, check_stops(stops)
    cuts = [Cut(stops) for _ in range(M)]
    texts: list[list[str]] = [[] for _ in range(M)]
    header = (lambda i: f"==> sample {i} of {M} <==\n") if M > 1 else (lambda i: "")
    between = "\n"  # after a sample's newline: a blank line between samples
    if records is not None:
        header, between = (lambda i: ""), ("\n" if records == "paragraph" else "")
    if out is not None:
        out.write(header(1) + prefix)
        out.flush()
    live, V, unflushed = M, len(vocab), 0
    for ids in steps:
        for m, i in enumerate(ids.tolist()):
            cut = cuts[m]
            if cut.ended is not None:
                continue
            piece = cut.add(vocab[i] if i < V else None)
            texts[m].append(piece)
            if m == 0 and out is not None and piece:
                out.write(piece)
                unflushed += len(piece)
                if "\n" in piece or unflushed >= FLUSH_EVERY:
                    out.flush()
                    unflushed = 0
            live -= cut.ended is not None
        if live == 0:
            break
    for m, cut in enumerate(cuts):
        if cut.ended is None:
            piece = cut.finish()
            texts[m].append(piece)
            if m == 0 and out is not None:
                out.write(piece)
    samples = [Sample(prefix + "".join(t), cut.ended) for t, cut in zip(texts, cuts, strict=True)]
    if out is not None:
        out.write("\n")
        for i, s in enumerate(samples[1:], start=2):
            out.write(f"{between}{header(i)}{s.text}\n")
        out.flush()
    return samples


def collect(
    steps: Iterator[np.ndarray],
    vocab: list[str],
    num_samples: int = 1,
    prefix: str = "",
    length: int | None = None,
) -> list[str]:
    """All samples as strings, each prefix + its generated text."""
    held = _Held(vocab, length, num_samples)
    for ids in steps:
        held.add(ids)
    return [prefix + decode(row, vocab) for row in held.rows()]


class _Held:
    """The ids of `width` samples as they are drawn, in the smallest type that holds them: one
    (length, width) array when the length is known, else blocks of BLOCK_STEPS steps."""

    BLOCK_STEPS = 4096

    def __init__(self, vocab: list[str], length: int | None, width: int):
        self.dtype, self.width, self.n = id_dtype(len(vocab) + 1), width, 0  # + 1: an end id
        self.full: list[np.ndarray] = []
        self.block = np.empty((length or self.BLOCK_STEPS, width), self.dtype)

    def add(self, ids: np.ndarray) -> None:
        if not self.width:
            return
        if self.n == len(self.block):
            self.full.append(self.block)
            self.block = np.empty((self.BLOCK_STEPS, self.width), self.dtype)
            self.n = 0
        self.block[self.n] = ids
        self.n += 1

    def rows(self) -> np.ndarray:
        """(width, steps) of ids."""
        last = self.block[: self.n]
        return (np.concatenate([*self.full, last]) if self.full else last).T


def decode(ids: np.ndarray, vocab: list[str]) -> str:
    return "".join(vocab[i] for i in ids.tolist())


def check_sample_memory(params: dict, length: int, num_samples: int, keep: bool) -> None:
    """TooLargeError, before anything is drawn or printed, when drawing num_samples samples of
    `length` characters needs more memory than this process may use. Drawing holds a few
    (M, V) and (M, W) arrays and a block of noise; the samples kept are one to four bytes a
    character (all M with `keep`, else the M - 1 printed after the first)."""
    arch = architecture(params)
    size = params["Why"].dtype.itemsize
    M, V, W = num_samples, arch.vocab_size, arch.state_width
    need = size * (4 * M * V + 6 * M * W + max(NOISE_BLOCK, M * V))
    need += np.dtype(id_dtype(V)).itemsize * length * (M if keep else M - 1)
    need += 16 * length * keep  # the kept texts as str, and their join
    lower = option("length") if length * M > 4 * M * (V + W) else option("num_samples")
    check_fits(need, f"drawing {M:,} samples of {length:,} characters", lower)


def check_beam_memory(params: dict, length: int, beam: int) -> None:
    """TooLargeError, before the search, when a beam of width `beam` over `length` characters
    needs more memory than this process may use: per step the (beam, V) log-probabilities and
    their sort in float64, the beams' states, and every step's back-pointers."""
    arch = architecture(params)
    V, W = arch.vocab_size, arch.state_width
    need = beam * (48 * V + 32 * W + 16 * length) + 8 * length * beam
    check_fits(need, f"a beam search of width {beam:,} over {length:,} characters", option("beam"))
