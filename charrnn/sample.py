"""Generating text: warm the hidden state on a prime text, then draw one character per step.

Several samples are drawn together as one batch: their hidden states are the rows of one
(M, H) matrix, so M samples cost one (M, H) x (H, H) product per character, not M loops.
All uniforms are drawn from the Generator up front, so there is no per-step RNG call.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from charrnn.model import run_recurrence


def warm_state(params: dict, prime_ids: np.ndarray, num_samples: int = 1) -> np.ndarray:
    """Hidden state (M, H) after reading prime_ids from a zero state (zeros if prime is empty)."""
    H = params["Whh"].shape[0]
    h = np.zeros((1, H), dtype=params["Whh"].dtype)
    if len(prime_ids):
        h = run_recurrence(params, np.asarray(prime_ids, dtype=np.intp)[:, None], h)[-1]
    return np.repeat(h, num_samples, axis=0)


def generate(params: dict, prime_ids: np.ndarray, length: int, rng: np.random.Generator, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             argmax: bool = False, num_samples: int = 1) -> Iterator[np.ndarray]:
    """Yield `length` arrays of M = num_samples ids, one per generated character.

    The first character is drawn from p = softmax(Why h + by) where h is the state after the
    prime; with an empty prime h = 0, so it comes from softmax(by), the model's learned
    character frequencies.
    """
    Wxh_T = np.ascontiguousarray(params["Wxh"].T)  # (V, H): row c = Wxh x for character c
    Whh_T, Why_T = params["Whh"].T, params["Why"].T
    bh, by = params["bh"], params["by"]
    M, V = num_samples, by.shape[0]
    h = warm_state(params, prime_ids, M)  # (M, H)
    logits = np.empty((M, V), dtype=h.dtype)  # (M, V)
    rec = np.empty_like(h)  # (M, H) scratch for Whh h
    rows = np.arange(M)
    uniforms = None if argmax else rng.random((length, M))  # (length, M)
    for i in range(length):
        np.matmul(h, Why_T, out=logits)  # y = Why h + by
        logits += by
        if argmax:
            ids = logits.argmax(axis=1)
        else:
            ids = _draw(logits, uniforms[i], temperature, top_k, top_p, rows)
        yield ids
        np.matmul(h, Whh_T, out=rec)
        rec += Wxh_T[ids]
        rec += bh
        np.tanh(rec, out=h)


def _draw(logits: np.ndarray, u: np.ndarray, temperature: float, top_k: int | None,
          top_p: float | None, rows: np.ndarray) -> np.ndarray:
    """One id per row of logits by inverse-CDF sampling with the given uniforms u (M,)."""
    logits *= 1.0 / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = np.partition(logits, -top_k, axis=1)[:, -top_k][:, None]  # (M, 1)
        logits[logits < kth] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits, out=logits)  # (M, V), unnormalised
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=1)  # (M, V), most likely first
        sorted_p = np.take_along_axis(p, order, axis=1)
        cum = np.cumsum(sorted_p, axis=1)
        total = cum[:, -1:]
        # keep the smallest prefix whose mass reaches top_p (always at least the top character)
        drop_sorted = (cum - sorted_p) >= top_p * total
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=1)
        p[drop] = 0.0
    cdf = np.cumsum(p, axis=1)  # (M, V)
    ids = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    return np.minimum(ids, p.shape[1] - 1)
