"""Scoring a text with a trained model: the one left-to-right pass (`score`) and its exact loss.

The model reads the text from a zero hidden state, carrying its state through every character
with no resets, and is scored on every character before it reads it:

    h_0 = 0;   loss = -(1/N) sum_{t=1..N} log softmax(Why h_{t-1} + by)[x_t]

so the first character is scored by softmax(by), as `charrnn sample` draws it from an empty
seed, and N * loss is -log of the probability the model gives the whole text. Characters not in
the vocabulary are skipped (not fed, not scored) and counted, or are an error.

`score` is the one pass that reads a text: it yields the text in blocks of BLOCK characters,
each with its characters' losses and the model's distributions (and, for `show`, every layer's
state), and `evaluate`, `eval --per-char` (`char_records`), `Model.char_scores` and `show` all
consume it. Only the recurrent product and the cell's nonlinearities run per character (in
`model.run`); the input lookup and the output layer run over a block as large matrix products.
`chunked_loss`, its faster twin for validation during training, scores many streams side by
side. Reading the text and the checkpoint is left to the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from charrnn.data import encode, record_ids, unknown_chars
from charrnn.errors import DataError, option
from charrnn.model import Workspace, bpc, log_softmax_loss, run, top_output, zero_state
from charrnn.model import trace as model_trace
from charrnn.parallel import blas_threads
from charrnn.sample import show_chars

BLOCK = 4096  # characters per recurrence call and per output-layer product


NO_SCORE = "the model's outputs overflow on this text (its weights are too large)"
HUGE_PERPLEXITY = "perplexity, exp(loss), is larger than the largest float"


@dataclass
class EvalResult:
    loss: float  # mean nats per scored character (nan or inf: see `reason`)
    bpc: float  # bits per character: loss / ln 2
    perplexity: float  # exp(loss); inf beyond the largest float
    chars: int  # characters scored
    unknown_chars: int  # characters skipped because they are not in the vocabulary
    record_ends: int = 0  # a model of records: the ends of records scored (in the mean too)

    @property
    def reason(self) -> str | None:
        """Why a value is not a finite number, or None when all are."""
        if not math.isfinite(self.loss):
            return NO_SCORE
        return None if math.isfinite(self.perplexity) else HUGE_PERPLEXITY

    def to_dict(self) -> dict:
        """The result as JSON can hold it (it has no NaN or Infinity): a value that is not a
        finite number is null, and then, only then, `reason` says why."""
        d = asdict(self)
        if not self.record_ends:  # only a model of records has them
            del d["record_ends"]
        if self.reason is not None:
            d.update({k: None for k in ("loss", "bpc", "perplexity") if not math.isfinite(d[k])})
            d["reason"] = self.reason
        return d

    def summary(self) -> str:
        n = self.unknown_chars
        skipped = f"; {n:,} unknown character{'s' * (n != 1)} skipped" if n else ""
        if self.record_ends:  # a model of records scores each record's end as a character
            skipped = f" and {self.record_ends:,} record ends (scored too){skipped}"
        if not math.isfinite(self.loss):
            return f"no finite loss over {self.chars:,} characters{skipped}: {NO_SCORE}"
        perplexity = (
            f"perplexity {self.perplexity:.3f}"
            if math.isfinite(self.perplexity)
            else "perplexity larger than the largest float"
        )
        return (
            f"loss {self.loss:.4f} nats/char, {self.bpc:.4f} bpc, {perplexity} "
            f"over {self.chars:,} characters{skipped}"
        )


def known_ids(
    text: str, vocab: list[str], name: str, unknown: str, what="score", product="the score"
) -> tuple[np.ndarray, int]:
    """The ids of the characters of text that are in the vocabulary and how many were not; a
    DataError for an empty text, nothing known, or unknown="error" and some unknown. The
    messages say what the text is for (`what`: "score") and what would leave unknown
    characters out (`product`: "the score")."""
    if not text:
        raise DataError(f"'{name}' is empty; give a text to {what}")
    ids, n_unknown = encode(text, vocab)
    if n_unknown and unknown == "error":
        raise DataError(
            f"'{name}' has {n_unknown} character{'s' * (n_unknown != 1)} not in the model's "
            f"vocabulary ({show_chars(unknown_chars(text, vocab))}); "
            f"pass {option('unknown', 'skip')} to leave them out of {product}"
        )
    if len(ids) == 0:
        raise DataError(
            f"none of the characters of '{name}' are in the model's vocabulary; "
            f"nothing to {what} (was the model trained on another alphabet?)"
        )
    return ids, n_unknown


def evaluate(
    params: dict,
    vocab: list[str],
    text: str,
    *,
    unknown: str = "skip",
    name: str = "text",
    each: Callable[[Block], None] | None = None,
    records: str | None = None,
) -> EvalResult:
    """Score text (see the module docstring); unknown="error" refuses unknown characters.
    `each`, when given, sees every block of the pass as it is scored (`eval --per-char` writes
    its lines from them), so the score and the per-character lines come from one pass.
    `records` ("line" or "paragraph"): the model's config `documents`, for a model of records."""
    if records is not None:
        return _evaluate_records(params, vocab, text, unknown, name, each, records)
    ids, n_unknown = known_ids(text, vocab, name, unknown)
    total = 0.0
    for block in score(params, ids):
        total += block.total
        if each is not None:
            each(block)
    return result(total, len(ids), n_unknown)


def _evaluate_records(params, vocab, text, unknown, name, each, mode) -> EvalResult:
    """A model of records scores a text as records (data.record_ids): E r_1 E r_2 ... E, the
    state zeroed before each E is read, and every character and every E after the first scored
    (the first E is read, not predicted). Its mean is over both: `chars` counts the characters,
    `record_ends` the Es."""
    if not text:
        raise DataError(f"'{name}' is empty; give a text to score")
    ids, n_unknown, n_records = record_ids(text, vocab, mode)
    if n_unknown and unknown == "error":
        known_ids(text, vocab, name, unknown)  # its message names the characters
    if n_records == 0:
        raise DataError(f"'{name}' holds no {mode} records; nothing to score")
    total = 0.0
    for block in score(params, ids, resets=ids == len(vocab)):
        if block.start == 0:  # the first E starts the first record: read, not scored
            block = Block(1, block.ids[1:], block.losses[1:], block.probs[1:])
        total += block.total
        if each is not None:
            each(block)
    scored = len(ids) - 1
    return replace(
        result(total, scored, n_unknown), chars=scored - n_records, record_ends=n_records
    )


def result(total: float, chars: int, unknown_chars: int = 0) -> EvalResult:
    """The EvalResult of `total` nats over `chars` characters."""
    loss = total / chars
    try:
        perplexity = math.exp(loss)
    except OverflowError:  # exp(710) is beyond a float
        perplexity = math.inf
    return EvalResult(loss, bpc(loss), perplexity, chars, unknown_chars)


def total_loss(params: dict, ids: np.ndarray, block: int | None = None) -> float:
    """Sum over t of -log p(x_t | x_1..x_{t-1}) in nats, from a zero state, in one pass."""
    return sum(b.total for b in score(params, ids, block=block))


# ---- the scoring pass ----


@dataclass
class Block:
    """T consecutive characters of a scoring pass and what the model made of each, from the
    state before it. `probs` is a buffer of the pass: valid until the next block is scored."""

    start: int  # where the block starts in the ids scored
    ids: np.ndarray  # (T,) the characters
    losses: np.ndarray  # (T,) -ln p of each character, in nats
    probs: np.ndarray  # (T, V) the model's distribution before each character
    states: np.ndarray | None = None  # (T, W) the carried state after each (trace=True only)

    @property
    def total(self) -> float:
        """The block's losses summed in float64."""
        return float(self.losses.sum(dtype=np.float64))


def score(
    params: dict,
    ids: np.ndarray,
    *,
    state: np.ndarray | None = None,
    block: int | None = None,
    trace: bool = False,
    resets: np.ndarray | None = None,
) -> Iterator[Block]:
    """The one scoring pass: ids (N,) read left to right from `state` (1, W), the carried state
    (default: the zero state), in blocks of `block` (default BLOCK) characters, each yielded as
    it is scored. `eval`, `eval --per-char`, `Model.char_scores` and `show` all read a text
    through it.

    A float32 model whose outputs overflow on a block (its weights passed every check of
    `load`: finite, yet large enough) has that block scored again in float64 from the same
    state, and the blocks after it too; losses are nan or inf only where float64 overflows as
    well. NumPy's warnings about the overflow are not shown: the scores say it. trace=True also
    gives every layer's state after each character (`model.trace`, for `show`).
    """
    ids = np.asarray(ids, dtype=np.intp)
    block = block or BLOCK
    state = zero_state(params, 1) if state is None else state
    ws = Workspace()  # the block's states and logits are reused block to block
    for start in range(0, len(ids), block):
        x, r = ids[start : start + block], None if resets is None else resets[start : start + block]
        scored, state = score_block(params, x, state, ws, trace, r)
        if state.dtype != params["Whh"].dtype:  # scored again in float64: so are the rest
            params = _wide(params)
        scored.start = start
        yield scored


def score_block(
    params: dict,
    x: np.ndarray,
    state: np.ndarray,
    ws=None,
    trace: bool = False,
    resets: np.ndarray | None = None,
) -> tuple[Block, np.ndarray]:
    """One block of the pass: x (T,) scored from the carried state (1, W); returns the Block
    and the carried state after it. Where a float32 model's outputs overflow, the block is
    scored again in float64 and the state after it is float64. A caller that changes the params
    between blocks (dynamic evaluation) scores each block through this with the params of its
    choice."""
    ws = Workspace() if ws is None else ws
    scored, after = _score_block(params, x, state, ws, trace, resets)
    if not np.isfinite(scored.losses).all() and params["Whh"].dtype != np.float64:
        wide = state.astype(np.float64)
        scored, after = _score_block(_wide(params), x, wide, ws, trace, resets)
    return scored, after


def _score_block(params: dict, x: np.ndarray, state: np.ndarray, ws, trace: bool, resets=None):
    T = len(x)
    # a (1, H) x (H, G H) product is too small to share between threads; an overflow is said
    # by the scores, not by NumPy's warnings
    with blas_threads(1), np.errstate(over="ignore", invalid="ignore"):
        if trace:
            states = model_trace(params, x, state)  # (T, W)
            before = np.concatenate([state, states[:-1]])  # (T, W)
            top = np.ascontiguousarray(top_output(params, before))  # (T, H): what Why reads
            after = states[-1:]  # (1, W)
        else:
            # hs[j] is the top layer's output before x[j] (hs[0] from state), so it predicts
            # x[j]; the state after the block carries on
            states = None
            # resets (T,): a record's state is zeroed before its E is read
            r = None if resets is None else resets[:, None]
            hs, after = run(params, x[:, None], state, ws, resets=r)  # (T + 1, 1, H)
            top = hs[:T].reshape(T, -1)  # (T, H)
        _, probs, losses = log_softmax_loss(params, top, x, ws)  # (T, V), (T,)
    return Block(0, x, losses, probs, states), after


def char_records(block: Block, vocab: list[str], top: int = 3) -> list[dict[str, Any]]:
    """Each character of a block as `eval --per-char` writes it: {"char", "p": the probability
    the model gave it, "bits": -log2 p, "top": the `top` likeliest characters there as
    [char, p] pairs, likeliest first}, numbers to 6 significant digits."""
    k = min(top, len(vocab))
    probs = block.probs
    best = np.argpartition(-probs, k - 1, axis=1)[:, :k]  # (T, k), unordered
    best_p = np.take_along_axis(probs, best, axis=1)  # (T, k)
    order = np.argsort(-best_p, axis=1, kind="stable")
    best = np.take_along_axis(best, order, axis=1).tolist()
    best_p = np.take_along_axis(best_p, order, axis=1).tolist()
    rows = zip(block.ids.tolist(), block.losses.tolist(), best, best_p, strict=True)
    return [
        {
            "char": vocab[c],
            "p": _short(math.exp(-loss)),
            "bits": _short(bpc(loss)),
            "top": [[vocab[b], _short(p)] for b, p in zip(cs, ps, strict=True)],
        }
        for c, loss, cs, ps in rows
    ]


def _short(x: float) -> float:
    """x to 6 significant digits: per-character lines stay short and still exact enough."""
    return float(f"{x:.6g}")


def _wide(params: dict) -> dict:
    return {k: v.astype(np.float64) for k, v in params.items()}


def chunked_loss(
    params: dict,
    ids: np.ndarray,
    n_streams: int = 64,
    chunk: int = 256,
    burn_in: int = 512,
    part: tuple[int, int] = (0, 1),
    corpus=None,
) -> tuple[float, int]:
    """Mean loss (nats/char) of a long id sequence scored as n_streams parallel streams: the
    validation score of training, a fraction of `total_loss`'s time.

    Stream s scores positions [s L, (s + 1) L), each character from the state after the ones
    before it. Stream 0 starts from a zero state, like `charrnn eval`; every other stream first
    reads the `burn_in` characters before its part, unscored, so that it starts with the state
    the text before it gives, and the sum is close to the exact single-stream pass.
    part (i, k): score only the i-th of k contiguous shares of the streams and return its part
    of the mean (the k parts sum to it), for the ranks of an MPI run to share the validation.
    corpus: the data.Corpus whose ids these are, for where documents begin: a stream's state
    is zeroed there (None: one document).
    Returns (loss, chars_scored).
    """
    resets = (lambda idx: None) if corpus is None else corpus.resets
    n = len(ids) - 1
    S = max(1, min(n_streams, n // chunk))
    L = n // S
    if L < 1:
        raise ValueError("need at least two characters to score")
    i, k = part
    first, last = (int(b) for b in np.linspace(0, S, k + 1).round()[i : i + 2])
    if first == last:  # more shares than streams: nothing to score here
        return 0.0, 0
    starts = np.arange(first, last) * L  # (S_i,) first scored position of each stream
    state = zero_state(params, last - first)  # (S_i, W)
    warm = min(burn_in, L)  # streams 1.. read [start - warm, start) first
    burn = slice(1 if first == 0 else 0, None)  # stream 0 starts from a zero state
    for p in range(0, warm, chunk):
        T = min(chunk, warm - p)
        idx = starts[None, burn] - warm + p + np.arange(T)[:, None]  # (T, S_i - 1)
        x = np.asarray(ids[idx], dtype=np.intp)
        state[burn] = run(params, x, state[burn], resets=resets(idx))[1]
    total = 0.0
    for p in range(0, L, chunk):
        T = min(chunk, L - p)
        idx = starts[None, :] + p + np.arange(T)[:, None]  # (T, S_i)
        x = np.asarray(ids[idx], dtype=np.intp)
        hs, state = run(params, x, state, resets=resets(idx))  # (T + 1, S_i, H)
        targets = np.asarray(ids[idx + 1], dtype=np.intp).reshape(-1)  # (T S_i,)
        _, _, losses = log_softmax_loss(params, hs[1:].reshape(-1, hs.shape[-1]), targets)
        total += float(losses.sum(dtype=np.float64))
    return total / (S * L), (last - first) * L
