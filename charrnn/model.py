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


def init_params(
    vocab_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    dtype=np.float32,
    init_scale: float = 0.01,
) -> dict[str, np.ndarray]:
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


class Workspace:
    """Buffers reused from one training step to the next, so the hot path allocates nothing.

    Pass the same Workspace to `forward` and `backward` of one step; the next step's `forward`
    overwrites the buffers, so a cache is valid only until then.
    """

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple, dtype) -> np.ndarray:
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._bufs[name] = np.empty(shape, dtype)
        return buf


class _Fresh:
    """A workspace that hands out new arrays: the default, safe for any caller."""

    @staticmethod
    def get(name: str, shape: tuple, dtype) -> np.ndarray:
        return np.empty(shape, dtype)


def run_recurrence(params: dict, X: np.ndarray, h0: np.ndarray, ws=_Fresh):
    """Hidden states for inputs X (T, B) of ids from h0 (B, H): hs (T + 1, B, H) with hs[0] = h0.

    The input term `Wxh x_t + bh` does not depend on the recurrence, so it is gathered for all
    T * B positions at once; the loop does only the (B, H) x (H, H) product, an add and the tanh.
    """
    T, B = X.shape
    Whh = params["Whh"]
    H, dtype = Whh.shape[0], Whh.dtype
    Whh_T = Whh.T  # a view: BLAS reads it transposed, nothing is copied
    hs = ws.get("hs", (T + 1, B, H), dtype)  # (T + 1, B, H)
    rec = ws.get("rec", (B, H), dtype)  # (B, H) scratch for Whh h_{t-1}
    hs[0] = h0
    # row c of the table is Wxh x + bh for character c: the input term is a lookup
    table = params["Wxh"].T + params["bh"]  # (V, H)
    np.take(table, X, axis=0, out=hs[1:], mode="clip")  # (T, B, H): Wxh x_t + bh
    for t in range(T):
        h = hs[t + 1]
        np.matmul(hs[t], Whh_T, out=rec)  # Whh h_{t-1}, for the B rows at once
        h += rec
        np.tanh(h, out=h)  # h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)
    return hs


def log_softmax_loss(params: dict, H_flat: np.ndarray, y: np.ndarray, ws=_Fresh):
    """Output layer over N positions at once: returns (mean loss, probs (N, V), per-char losses).

    H_flat (N, H) are hidden states, y (N,) target ids. Uses log-sum-exp, so a confident wrong
    guess gives a large finite loss rather than log(0).
    """
    N, V = len(y), params["by"].shape[0]
    logits = ws.get("logits", (N, V), H_flat.dtype)  # (N, V)
    np.matmul(H_flat, params["Why"].T, out=logits)  # y_t = Why h_t + by
    logits += params["by"]
    logits -= logits.max(axis=1, keepdims=True)
    target = logits[np.arange(N), y]  # (N,) shifted logit of each target
    probs = np.exp(logits, out=logits)  # (N, V), unnormalised
    sums = probs.sum(axis=1)  # (N,)
    losses = np.log(sums) - target  # (N,): -log p_t[target]
    probs /= sums[:, None]  # p_t = softmax(y_t)
    return float(losses.mean(dtype=np.float64)), probs, losses


def forward(params: dict, X: np.ndarray, Y: np.ndarray, h0: np.ndarray, ws=_Fresh):
    """Loss of one chunk: X, Y (T, B) input and target ids, h0 (B, H) the carried state.

    Returns (loss, cache, h_last); `cache` holds what `backward` needs.
    """
    T, B = X.shape
    hs = run_recurrence(params, X, h0, ws)  # (T + 1, B, H)
    H_flat = hs[1:].reshape(T * B, -1)  # (N, H)
    loss, probs, _ = log_softmax_loss(params, H_flat, Y.reshape(-1), ws)
    cache = {"X": X, "Y": Y, "hs": hs, "probs": probs, "ws": ws}
    return loss, cache, hs[T].copy()


def backward(params: dict, cache: dict) -> dict[str, np.ndarray]:
    """Backpropagation through time over the chunk; returns grads with the keys of params.

    Consumes the cache (its `probs` buffer is reused for dlogits). The output layer's gradients
    and dWhh, dbh, dWxh are computed over all T * B positions at once; only
    `dh_{t-1} = Whh^T dpre_t` stays inside the time loop.
    """
    X, Y, hs, dlogits, ws = cache["X"], cache["Y"], cache["hs"], cache["probs"], cache["ws"]
    T, B = X.shape
    N = T * B
    Whh, Why = params["Whh"], params["Why"]
    H, dtype = Whh.shape[0], Whh.dtype
    H_flat = hs[1:].reshape(N, H)  # (N, H)

    # loss = -(1/N) sum log p[target]  =>  dloss/dy_t = (p_t - onehot(target_t)) / N
    dlogits[np.arange(N), Y.reshape(-1)] -= 1.0  # (N, V)
    dlogits *= 1.0 / N
    dWhy = dlogits.T @ H_flat  # (V, H)
    dby = dlogits.sum(axis=0)  # (V,)

    # dh_t = Why^T dy_t + dh_next;  dpre_t = (1 - h_t^2) * dh_t;  dh_next = Whh^T dpre_t
    dpre = ws.get("dpre", (T, B, H), dtype)  # (T, B, H)
    np.matmul(dlogits, Why, out=dpre.reshape(N, H))  # starts as Why^T dy_t
    dtanh = ws.get("dtanh", (T, B, H), dtype)  # (T, B, H)
    np.multiply(hs[1:], hs[1:], out=dtanh)
    np.subtract(1.0, dtanh, out=dtanh)  # tanh'(pre_t) = 1 - h_t^2
    rec = ws.get("rec", (B, H), dtype)  # (B, H) scratch for Whh^T dpre_t
    for t in range(T - 1, -1, -1):
        d = dpre[t]  # (B, H): holds dh_t once the step after it has added dh_next
        d *= dtanh[t]  # dpre_t
        if t > 0:
            np.matmul(d, Whh, out=rec)  # Whh^T dpre_t, as rows
            dpre[t - 1] += rec  # dh_next for step t - 1

    dpre_flat = dpre.reshape(N, H)  # (N, H)
    H_prev = hs[:-1].reshape(N, H)  # (N, H): h_{t-1} for every position
    dWhh = dpre_flat.T @ H_prev  # (H, H): sum_t dpre_t h_{t-1}^T
    dbh = dpre_flat.sum(axis=0)  # (H,)
    dWxh = input_grad(dpre_flat, X.reshape(-1), params["Wxh"].shape[1], ws)  # (H, V)
    return {"Wxh": dWxh, "Whh": dWhh, "bh": dbh, "Why": dWhy, "by": dby}


def input_grad(dpre_flat: np.ndarray, x: np.ndarray, vocab_size: int, ws=_Fresh) -> np.ndarray:
    """dWxh (H, V) = sum over positions of dpre_t x_t^T: add each row of dpre into column x_t.

    Written as one product with the (N, V) one-hot matrix of the inputs: a GEMM is many times
    faster than a scatter-add (np.add.at) or a sort and reduceat.
    """
    N = len(x)
    onehot = ws.get("onehot", (N, vocab_size), dpre_flat.dtype)  # (N, V)
    onehot.fill(0)
    onehot[np.arange(N), x] = 1.0
    return dpre_flat.T @ onehot  # (H, V)


def chunked_loss(
    params: dict, ids: np.ndarray, n_streams: int = 64, chunk: int = 256, burn_in: int = 512
):
    """Mean loss (nats/char) of a long id sequence scored as n_streams parallel streams.

    Stream s scores positions [s L, (s + 1) L). Stream 0 starts from a zero state, like
    `charrnn eval`; every other stream first reads the `burn_in` characters before its part,
    unscored, so that it starts with the state the text before it gives. Without that, each
    stream would begin from a zero state the model never sees in training (training carries its
    states), and the first characters after such a start are scored badly. The result is then
    close to the exact single-stream pass of `charrnn eval` at a fraction of its time: used for
    validation during training. Returns (loss, chars_scored).

    A model trained with carried states can also, from a zero state at an unlucky place, fall
    into a regime it never leaves (seen on one stream in 64 of a 10-minute Shakespeare model);
    fewer zero starts make that rarer, none of them rules it out, and `eval` shares the risk.
    """
    n = len(ids) - 1
    S = max(1, min(n_streams, n // chunk))
    L = n // S
    if L < 1:
        raise ValueError("need at least two characters to score")
    H = params["Whh"].shape[0]
    starts = np.arange(S) * L  # (S,) first scored position of each stream
    h = np.zeros((S, H), dtype=params["Whh"].dtype)  # (S, H)
    warm = min(burn_in, L)  # streams 1.. read [start - warm, start) first
    for p in range(0, warm, chunk):
        T = min(chunk, warm - p)
        idx = starts[None, 1:] - warm + p + np.arange(T)[:, None]  # (T, S - 1)
        h[1:] = run_recurrence(params, np.asarray(ids[idx], dtype=np.intp), h[1:])[T]
    total = 0.0
    for p in range(0, L, chunk):
        T = min(chunk, L - p)
        idx = starts[None, :] + p + np.arange(T)[:, None]  # (T, S)
        hs = run_recurrence(params, np.asarray(ids[idx], dtype=np.intp), h)
        _, _, losses = log_softmax_loss(
            params, hs[1:].reshape(T * S, H), np.asarray(ids[idx + 1], dtype=np.intp).reshape(-1)
        )
        total += float(losses.sum(dtype=np.float64))
        h = hs[T]
    return total / (S * L), S * L
