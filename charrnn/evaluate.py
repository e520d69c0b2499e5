"""Scoring a text with a trained model: the exact mean loss of one left-to-right pass.

The model reads the text from a zero hidden state, carrying its state through every character
with no resets, and is scored on every character before it reads it:

    h_0 = 0;   loss = -(1/N) sum_{t=1..N} log softmax(Why h_{t-1} + by)[x_t]

so the first character is scored by softmax(by), as `charrnn sample` draws it from an empty
seed, and N * loss is -log of the probability the model gives the whole text. Characters not in
the vocabulary are skipped (not fed, not scored) and counted, or are an error.

Only the recurrent product and the cell's nonlinearities run per character (in `model.run`);
the input lookup and the output layer run over blocks of BLOCK characters as large matrix
products. `chunked_loss`, its faster twin for validation during training, scores many streams
side by side. Reading the text and the checkpoint is left to the CLI.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from charrnn.data import encode, unknown_chars
from charrnn.errors import DataError
from charrnn.model import Workspace, log_softmax_loss, run, zero_state
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

    @classmethod
    def of(cls, loss: float, chars: int, unknown_chars: int) -> EvalResult:
        """The result of a mean loss over chars characters."""
        try:
            perplexity = math.exp(loss)
        except OverflowError:  # exp(710) is beyond a float
            perplexity = math.inf
        return cls(loss, loss / math.log(2), perplexity, chars, unknown_chars)

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
        if self.reason is not None:
            d.update({k: None for k in ("loss", "bpc", "perplexity") if not math.isfinite(d[k])})
            d["reason"] = self.reason
        return d

    def summary(self) -> str:
        n = self.unknown_chars
        skipped = f"; {n:,} unknown character{'s' * (n != 1)} skipped" if n else ""
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
            f"pass --unknown skip to leave them out of {product}"
        )
    if len(ids) == 0:
        raise DataError(
            f"none of the characters of '{name}' are in the model's vocabulary; "
            f"nothing to {what} (was the model trained on another alphabet?)"
        )
    return ids, n_unknown


def evaluate(
    params: dict, vocab: list[str], text: str, *, unknown: str = "skip", name: str = "text"
) -> EvalResult:
    """Score text (see the module docstring); unknown="error" refuses unknown characters."""
    ids, n_unknown = known_ids(text, vocab, name, unknown)
    return EvalResult.of(_mean_loss(params, ids), len(ids), n_unknown)


def _mean_loss(params: dict, ids: np.ndarray) -> float:
    """total_loss / N, computed again in float64 when a float32 model's outputs overflow (its
    weights passed every check of `load`: finite, yet large enough); nan or inf only when
    float64 overflows too. NumPy's warnings about the overflow are not shown: the score says it."""
    with np.errstate(over="ignore", invalid="ignore"):
        loss = total_loss(params, ids) / len(ids)
        if not math.isfinite(loss) and any(v.dtype != np.float64 for v in params.values()):
            loss = total_loss({k: v.astype(np.float64) for k, v in params.items()}, ids) / len(ids)
    return loss


def total_loss(params: dict, ids: np.ndarray, block: int = BLOCK) -> float:
    """Sum over t of -log p(x_t | x_1..x_{t-1}) in nats, from a zero state, in one pass."""
    ids = np.asarray(ids, dtype=np.intp)
    ws = Workspace()  # the block's states and logits are reused block to block
    state = zero_state(params, 1)  # (1, W): the state before the block
    total = 0.0
    with blas_threads(1):  # a (1, H) x (H, G H) product is too small to share between threads
        for start in range(0, len(ids), block):
            x = ids[start : start + block]  # (T,)
            T = len(x)
            # hs[j] is the top layer's output before x[j] (hs[0] from `state`), so it predicts
            # x[j]; the state after the block carries on
            hs, state = run(params, x[:, None], state, ws)  # (T + 1, 1, H)
            _, _, losses = log_softmax_loss(params, hs[:T].reshape(T, -1), x, ws)  # (T,)
            total += float(losses.sum(dtype=np.float64))
    return total


def chunked_loss(
    params: dict,
    ids: np.ndarray,
    n_streams: int = 64,
    chunk: int = 256,
    burn_in: int = 512,
    part: tuple[int, int] = (0, 1),
) -> tuple[float, int]:
    """Mean loss (nats/char) of a long id sequence scored as n_streams parallel streams: the
    validation score of training, a fraction of `total_loss`'s time.

    Stream s scores positions [s L, (s + 1) L), each character from the state after the ones
    before it. Stream 0 starts from a zero state, like `charrnn eval`; every other stream first
    reads the `burn_in` characters before its part, unscored, so that it starts with the state
    the text before it gives, and the sum is close to the exact single-stream pass.
    part (i, k): score only the i-th of k contiguous shares of the streams and return its part
    of the mean (the k parts sum to it), for the ranks of an MPI run to share the validation.
    Returns (loss, chars_scored).
    """
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
        state[burn] = run(params, np.asarray(ids[idx], dtype=np.intp), state[burn])[1]
    total = 0.0
    for p in range(0, L, chunk):
        T = min(chunk, L - p)
        idx = starts[None, :] + p + np.arange(T)[:, None]  # (T, S_i)
        hs, state = run(params, np.asarray(ids[idx], dtype=np.intp), state)  # (T + 1, S_i, H)
        targets = np.asarray(ids[idx + 1], dtype=np.intp).reshape(-1)  # (T S_i,)
        _, _, losses = log_softmax_loss(params, hs[1:].reshape(-1, hs.shape[-1]), targets)
        total += float(losses.sum(dtype=np.float64))
    return total / (S * L), (last - first) * L
