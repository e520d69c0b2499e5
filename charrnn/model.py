"""The vanilla tanh RNN: parameters, forward pass, backward pass (BPTT) and one-step inference.

Everything here is plain functions over a dict of named arrays, in the column-vector convention
of the equations in the README:

    h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)        Wxh (H, V), Whh (H, H), bh (H,)
    y_t = Why h_t + by                            Why (V, H), by (V,)
    p_t = softmax(y_t)
    loss = -(1/N) sum_t log p_t[target_t]         mean over all N = T * B characters

A batch holds B streams side by side, so hidden states are rows: `h` has shape (B, H) and the
products above are computed as `h @ Whh.T`. Inputs are character ids, never one-hot matrices:
`Wxh x_t` for a one-hot `x_t` is column `x_t` of `Wxh`, a lookup.

Optimisers, clipping, data and checkpoints live in other modules.
"""

from __future__ import annotations

import numpy as np

PARAM_NAMES = ("Wxh", "Whh", "bh", "Why", "by")


def init_params(vocab_size: int, hidden_size: int, rng: np.random.Generator,
                dtype=np.float32, init_scale: float = 0.01) -> dict[str, np.ndarray]:
    """Small random input/output weights, an orthogonal recurrent matrix, zero biases.

    An orthogonal Whh keeps every singular value at 1, so at the start a hidden state neither
    explodes nor vanishes as it is multiplied by Whh step after step; gradients flowing back
    through time start out well scaled too.
    """
    V, H = vocab_size, hidden_size
    q, r = np.linalg.qr(rng.standard_normal((H, H)))
    q *= np.sign(np.diag(r))  # makes the draw uniform over orthogonal matrices
    params = {
        "Wxh": rng.standard_normal((H, V)) * init_scale,  # (H, V)
        "Whh": q,  # (H, H)
        "bh": np.zeros(H),  # (H,)
        "Why": rng.standard_normal((V, H)) * init_scale,  # (V, H)
        "by": np.zeros(V),  # (V,)
    }
    return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in params.items()}


def run_recurrence(params: dict, X: np.ndarray, h0: np.ndarray, hs: np.ndarray | None = None):
    """Hidden states for inputs X (T, B) of ids from h0 (B, H): returns hs (T + 1, B, H), hs[0] = h0.

    The input term `Wxh x_t + bh` does not depend on the recurrence, so it is gathered for all
    T * B positions at once; the loop does only the (B, H) x (H, H) product and the tanh.
    """
    T, B = X.shape
    Whh_T = params["Whh"].T  # a view: BLAS reads it transposed, nothing is copied
    if hs is None:
        hs = np.empty((T + 1, B, Whh_T.shape[0]), dtype=Whh_T.dtype)  # (T + 1, B, H)
    hs[0] = h0
    hs[1:] = params["Wxh"].T[X]  # (T, B, H): column x_t of Wxh for every position
    hs[1:] += params["bh"]
    for t in range(T):
        h = hs[t + 1]
        h += hs[t] @ Whh_T  # Whh h_{t-1}
        np.tanh(h, out=h)  # h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)
    return hs


def log_softmax_loss(params: dict, H_flat: np.ndarray, y: np.ndarray):
    """Output layer over N positions at once: returns (mean loss, probs (N, V), per-char losses).

    H_flat (N, H) are hidden states, y (N,) target ids. Uses log-sum-exp, so a confident wrong
    guess gives a large finite loss rather than log(0).
    """
    logits = H_flat @ params["Why"].T  # (N, V): y_t = Why h_t + by
    logits += params["by"]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)  # (N, V), unnormalised
    sums = probs.sum(axis=1, keepdims=True)  # (N, 1)
    losses = np.log(sums[:, 0]) - logits[np.arange(len(y)), y]  # (N,): -log p_t[target]
    probs /= sums  # p_t = softmax(y_t)
    return float(losses.mean(dtype=np.float64)), probs, losses


def forward(params: dict, X: np.ndarray, Y: np.ndarray, h0: np.ndarray):
    """Loss of one chunk: X, Y (T, B) input and target ids, h0 (B, H) the carried state.

    Returns (loss, cache, h_last); `cache` holds what `backward` needs.
    """
    T, B = X.shape
    hs = run_recurrence(params, X, h0)  # (T + 1, B, H)
    H_flat = hs[1:].reshape(T * B, -1)  # (N, H)
    loss, probs, _ = log_softmax_loss(params, H_flat, Y.reshape(-1))
    cache = {"X": X, "Y": Y, "hs": hs, "probs": probs}
    return loss, cache, hs[T].copy()


def backward(params: dict, cache: dict) -> dict[str, np.ndarray]:
    """Backpropagation through time over the chunk; returns grads with the keys of params.

    Consumes the cache (its `probs` buffer is reused for dlogits). The two per-position products
    (output layer and its gradients) and dWhh, dbh, dWxh are computed over all T * B positions
    at once; only `dh_{t-1} = Whh^T dpre_t` stays inside the time loop.
    """
    X, Y, hs, dlogits = cache["X"], cache["Y"], cache["hs"], cache["probs"]
    T, B = X.shape
    N = T * B
    Whh, Why = params["Whh"], params["Why"]
    H_flat = hs[1:].reshape(N, -1)  # (N, H)

    # loss = -(1/N) sum log p[target]  =>  dloss/dy_t = (p_t - onehot(target_t)) / N
    dlogits[np.arange(N), Y.reshape(-1)] -= 1.0  # (N, V)
    dlogits *= 1.0 / N
    dWhy = dlogits.T @ H_flat  # (V, H)
    dby = dlogits.sum(axis=0)  # (V,)

    # dh_t = Why^T dy_t + dh_next;  dpre_t = (1 - h_t^2) * dh_t;  dh_next = Whh^T dpre_t
    dpre = (dlogits @ Why).reshape(T, B, -1)  # (T, B, H): starts as Why^T dy_t
    dtanh = np.square(hs[1:])  # (T, B, H)
    np.subtract(1.0, dtanh, out=dtanh)  # tanh'(pre_t) = 1 - h_t^2
    for t in range(T - 1, -1, -1):
        d = dpre[t]  # (B, H): holds dh_t once the step after it has added dh_next
        d *= dtanh[t]  # dpre_t
        if t > 0:
            dpre[t - 1] += d @ Whh  # dh_next for step t - 1: Whh^T dpre_t, as rows

    dpre_flat = dpre.reshape(N, -1)  # (N, H)
    H_prev = hs[:-1].reshape(N, -1)  # (N, H): h_{t-1} for every position
    dWhh = dpre_flat.T @ H_prev  # (H, H): sum_t dpre_t h_{t-1}^T
    dbh = dpre_flat.sum(axis=0)  # (H,)
    dWxh = input_grad(dpre_flat, X.reshape(-1), params["Wxh"].shape[1])  # (H, V)
    return {"Wxh": dWxh, "Whh": dWhh, "bh": dbh, "Why": dWhy, "by": dby}


def input_grad(dpre_flat: np.ndarray, x: np.ndarray, vocab_size: int) -> np.ndarray:
    """dWxh (H, V) = sum over positions of dpre_t x_t^T: add each row of dpre into column x_t.

    A sorted reduce: group positions by character, sum each group with one reduceat.
    (np.add.at does the same scatter-add many times slower.)
    """
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate(([True], xs[1:] != xs[:-1])))
    sums = np.add.reduceat(dpre_flat[order], starts, axis=0)  # (U, H), U distinct ids
    dWxh = np.zeros((dpre_flat.shape[1], vocab_size), dtype=dpre_flat.dtype)  # (H, V)
    dWxh[:, xs[starts]] = sums.T
    return dWxh


def chunked_loss(params: dict, ids: np.ndarray, n_streams: int = 64, chunk: int = 256):
    """Mean loss (nats/char) of a long id sequence scored as n_streams parallel streams.

    Each stream starts from a zero state and carries it through its whole length, so only the
    first characters of each stream are scored without context. Used for validation during
    training; `charrnn eval` does the exact single-stream pass. Returns (loss, chars_scored).
    """
    n = len(ids) - 1
    S = max(1, min(n_streams, n // chunk))
    L = n // S
    if L < 1:
        raise ValueError("need at least two characters to score")
    H = params["Whh"].shape[0]
    starts = np.arange(S) * L  # (S,)
    h = np.zeros((S, H), dtype=params["Whh"].dtype)
    total = 0.0
    for p in range(0, L, chunk):
        T = min(chunk, L - p)
        idx = starts[None, :] + p + np.arange(T)[:, None]  # (T, S)
        hs = run_recurrence(params, np.asarray(ids[idx], dtype=np.intp), h)
        _, _, losses = log_softmax_loss(params, hs[1:].reshape(T * S, H),
                                        np.asarray(ids[idx + 1], dtype=np.intp).reshape(-1))
        total += float(losses.sum(dtype=np.float64))
        h = hs[T]
    return total / (S * L), S * L
