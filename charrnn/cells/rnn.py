"""The vanilla tanh cell: one layer's recurrence and its backpropagation through time.

    a_t = ax_t + Whh h_{t-1}            ax_t = Wxh x_t + bh, from the caller     Whh (H, H)
    h_t = tanh(a_t)

    dh_t = (dh_t from above) + dh_next  dh_next = Whh^T da_{t+1}, 0 at t = T
    da_t = (1 - h_t^2) ⊙ dh_t           tanh' = 1 - tanh^2

Where a stream's state is reset before step t (m_t = 0, a document's start), h_{t-1} is read as
m_t h_{t-1} = 0, and no gradient flows back through it: dh_next is multiplied by m_t.

Hidden states are rows of (B, H) matrices, so `Whh h` is computed as `h @ Whh.T`. The interface
is the one all cells share (charrnn/cells/__init__.py).
"""

from __future__ import annotations

import numpy as np

from charrnn.cells.weights import init_weights, prev

GATES = 1
STATES = 1  # h


def init_layer(n_in: int, H: int, rng: np.random.Generator, dtype=np.float32, init_scale=0.01):
    return init_weights(GATES, n_in, H, rng, dtype, init_scale)


def forward(Whh: np.ndarray, ax: np.ndarray, state0: tuple, ws, m=None):
    """hs (T + 1, B, H) from ax (T, B, H) and state0 = (h_0,); per step one (B, H) x (H, H)
    product, an add and the tanh, each written into h_t's own row of hs. m: None, or the
    (T, B, 1) keep mask of the state (0 where it is reset before step t)."""
    T, B, H = ax.shape
    Whh_T = ws.get("Whh_T", (H, H), ax.dtype)  # (H, H)
    np.copyto(Whh_T, Whh.T)  # a contiguous copy: BLAS multiplies by it faster than by a view
    hs = ws.get("hs", (T + 1, B, H), ax.dtype)  # (T + 1, B, H)
    hs[0] = state0[0]
    for t in range(T):
        a_t = hs[t + 1]  # (B, H)
        np.matmul(prev(hs, m, t), Whh_T, out=a_t)  # Whh h_{t-1}, for the B rows at once
        a_t += ax[t]  # a_t = Wxh x_t + bh + Whh h_{t-1}
        np.tanh(a_t, out=a_t)  # h_t = tanh(a_t)
    return hs, (hs[T].copy(),), (hs, m)


def backward(Whh: np.ndarray, cache: tuple, dhs: np.ndarray, ws):
    """da (T, B, H) from dhs (T, B, H), computed in place in dhs: the cell's dax and dah."""
    hs, m = cache
    T, B, H = dhs.shape
    dtanh = ws.get("dtanh", (T, B, H), dhs.dtype)  # (T, B, H)
    np.multiply(hs[1:], hs[1:], out=dtanh)
    np.subtract(1.0, dtanh, out=dtanh)  # tanh'(a_t) = 1 - h_t^2, for all positions at once
    dh_next = ws.get("dh_next", (B, H), dhs.dtype)  # (B, H)
    da = dhs  # row t holds dh_t once step t + 1 has added its dh_next, then da_t
    for t in range(T - 1, -1, -1):
        da[t] *= dtanh[t]  # da_t = (1 - h_t^2) ⊙ dh_t
        if t > 0:
            np.matmul(da[t], Whh, out=dh_next)  # dh_next = Whh^T da_t, as rows
            if m is not None:
                dh_next *= m[t]  # nothing flows back through a reset
            da[t - 1] += dh_next  # dh_{t-1} = (dh_{t-1} from above) + dh_next
    return da, da


def dstate(Whh: np.ndarray, hs: np.ndarray, above: np.ndarray, da: np.ndarray) -> tuple:
    """(d loss / d h entering step t,) (T, B, H) from `backward`'s da and `above` (T, B, H),
    the gradient that came into each h_t from outside the recurrence: for gradient flow."""
    # h_{t-1} enters step t only through a_t = ax_t + Whh h_{t-1}:  dh_{t-1} = Whh^T da_t
    return (da @ Whh,)


def step(Whh: np.ndarray, ax_t: np.ndarray, state: tuple) -> tuple:
    """(h_t,) from ax_t (M, H) (overwritten) and state = (h_{t-1},)."""
    a_t = np.add(ax_t, state[0] @ Whh.T, out=ax_t)  # a_t = Wxh x_t + bh + Whh h_{t-1}
    return (np.tanh(a_t, out=a_t),)  # h_t = tanh(a_t)
