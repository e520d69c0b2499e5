"""The GRU cell: reset gate r, update gate z, candidate n.

    ah_t = Whh h_{t-1}                       (B, 3H): blocks r, z, n in this order
    r_t = sigmoid(ax_r + ah_r);  z_t = sigmoid(ax_z + ah_z)
    n_t = tanh(ax_n + r_t ⊙ ah_n)            the reset gate applied after the product
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}    computed as n_t + z_t ⊙ (h_{t-1} - n_t)

This is the variant of cuDNN and PyTorch's nn.GRU, not Cho et al. (2014)'s original, which
resets the state before the product: n_t = tanh(ax_n + Whh_n (r_t ⊙ h_{t-1})). There r_t must
be known before that product, so a step needs two dependent products, (B, H) x (H, 2H) and
then (B, H) x (H, H); here one (B, H) x (H, 3H) product gives all three blocks. Unlike PyTorch,
there is no separate recurrent bias b_hn inside the reset: bh is the only bias, as in the other
cells.

Backward, with dh_t = (dh_t from above) + dh_next:

    da_n = dh_t ⊙ (1 - z_t) ⊙ (1 - n_t^2)            dax_n = da_n;  dah_n = da_n ⊙ r_t
    da_z = dh_t ⊙ (h_{t-1} - n_t) ⊙ z(1 - z)         dax_z = dah_z = da_z
    da_r = da_n ⊙ ah_n ⊙ r(1 - r)                    dax_r = dah_r = da_r
    dh_next = Whh^T dah_t + z_t ⊙ dh_t               (dh_{t-1}: through the product and directly)

Where a stream's state is reset before step t (m_t = 0, a document's start), h_{t-1} is read as
m_t h_{t-1} = 0, and no gradient flows back through it: dh_next is multiplied by m_t.

The factors right of dh_t and da_n are computed in bulk, a block of steps at a time, outside
the per-step work. The sigmoid is computed as (1 + tanh(a / 2)) / 2: no exp(-a) can overflow.
The interface is the one all cells share (charrnn/cells/__init__.py).
"""

from __future__ import annotations

import numpy as np

from charrnn.cells.weights import init_weights, prev

GATES = 3  # r, z, n
STATES = 1  # h
_BLOCK_BYTES = 1 << 20  # backward's factors for this many bytes of steps at a time


def init_layer(n_in: int, H: int, rng: np.random.Generator, dtype=np.float32, init_scale=0.01):
    return init_weights(GATES, n_in, H, rng, dtype, init_scale)


def forward(Whh: np.ndarray, ax: np.ndarray, state0: tuple, ws, m=None):
    """hs (T + 1, B, H) from ax (T, B, 3H) and state0 = (h_0,); the gate values r, z, n are
    written over ax. m: None, or the (T, B, 1) keep mask of the state (0 where it is reset)."""
    T, B, G = ax.shape
    H = G // GATES
    dtype = ax.dtype
    hs = ws.get("hs", (T + 1, B, H), dtype)  # (T + 1, B, H)
    ahs = ws.get("ahs", (T, B, G), dtype)  # (T, B, 3H): Whh h_{t-1}, kept for backward
    rah = ws.get("rah", (B, H), dtype)  # (B, H) scratch for r_t ⊙ ah_n
    Whh_T = ws.get("Whh_T", (H, G), dtype)  # (H, 3H)
    np.copyto(Whh_T, Whh.T)  # a contiguous copy: BLAS multiplies by it faster than by a view
    hs[0] = state0[0]
    gates = ax  # (T, B, 3H): a_t, then r_t, z_t, n_t, in place
    for t in range(T):
        ah = ahs[t]  # (B, 3H)
        h_prev = prev(hs, m, t)  # (B, H)
        np.matmul(h_prev, Whh_T, out=ah)  # ah_t = Whh h_{t-1}
        rz = gates[t, :, : 2 * H]
        rz += ah[:, : 2 * H]
        rz *= 0.5
        np.tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5  # r_t = sigmoid(ax_r + ah_r), z_t = sigmoid(ax_z + ah_z)
        r, z, n = rz[:, :H], rz[:, H:], gates[t, :, 2 * H :]
        np.multiply(r, ah[:, 2 * H :], out=rah)
        n += rah
        np.tanh(n, out=n)  # n_t = tanh(ax_n + r_t ⊙ ah_n)
        h = hs[t + 1]
        np.subtract(h_prev, n, out=h)
        h *= z
        h += n  # h_t = n_t + z_t ⊙ (h_{t-1} - n_t)
    return hs, (hs[T].copy(),), (hs, gates, ahs, m)


def _factors(gates: np.ndarray, h_prev: np.ndarray, ahs: np.ndarray, fac: np.ndarray) -> None:
    """For a block of steps, the factors (k, B, 3H) that multiply da_n and dh_t in backward:
    ah_n ⊙ r(1 - r), (h_{t-1} - n_t) ⊙ z(1 - z), (1 - z_t) ⊙ (1 - n_t^2)."""
    H = h_prev.shape[-1]
    z, n = gates[:, :, H : 2 * H], gates[:, :, 2 * H :]
    f_r, f_z, f_n = (fac[:, :, k * H : (k + 1) * H] for k in range(GATES))
    np.subtract(1.0, gates[:, :, : 2 * H], out=fac[:, :, : 2 * H])
    fac[:, :, : 2 * H] *= gates[:, :, : 2 * H]  # s(1 - s) for r, z
    f_r *= ahs[:, :, 2 * H :]
    np.subtract(h_prev, n, out=f_n)
    f_z *= f_n
    np.multiply(n, n, out=f_n)
    np.subtract(1.0, f_n, out=f_n)
    f_n -= z * f_n


def backward(Whh: np.ndarray, cache: tuple, dhs: np.ndarray, ws):
    """(dax, dah), each (T, B, 3H), from dhs (T, B, H), which is overwritten."""
    hs, gates, ahs, m = cache
    T, B, H = dhs.shape
    dtype = dhs.dtype
    r, z = gates[:, :, :H], gates[:, :, H : 2 * H]  # (T, B, H) views
    dax = ws.get("dax", gates.shape, dtype)  # (T, B, 3H)
    dah = ws.get("dah", gates.shape, dtype)  # (T, B, 3H)
    dh_next = ws.get("dh_next", (B, H), dtype)  # (B, H)
    dh_z = ws.get("dh_z", (B, H), dtype)  # (B, H) scratch for z_t ⊙ dh_t
    # the factors are computed a block of steps at a time, sized to stay in cache until the
    # steps read them (a pass over all T B positions at once runs at memory speed, 2x slower)
    k = max(1, _BLOCK_BYTES // (B * GATES * H * dhs.itemsize))
    fac = ws.get("fac", (min(k, T), B, GATES * H), dtype)
    for end in range(T, 0, -k):
        start = max(0, end - k)
        h_prev = hs[start:end] if m is None else hs[start:end] * m[start:end]  # h_{t-1} read
        _factors(gates[start:end], h_prev, ahs[start:end], fac[: end - start])
        for t in range(end - 1, start - 1, -1):
            f_r, f_z, f_n = (fac[t - start, :, j * H : (j + 1) * H] for j in range(GATES))
            dh = dhs[t]  # dh_t: step t + 1 has added its dh_next
            da_n = dax[t, :, 2 * H :]
            np.multiply(dh, f_n, out=da_n)  # da_n = dh_t ⊙ (1 - z_t) ⊙ (1 - n_t^2)
            np.multiply(dh, f_z, out=dah[t, :, H : 2 * H])  # da_z
            np.multiply(da_n, f_r, out=dah[t, :, :H])  # da_r = da_n ⊙ ah_n ⊙ r(1 - r)
            np.multiply(da_n, r[t], out=dah[t, :, 2 * H :])  # dah_n = da_n ⊙ r_t
            if t > 0:
                np.matmul(dah[t], Whh, out=dh_next)  # Whh^T dah_t, as rows
                np.multiply(dh, z[t], out=dh_z)
                dh_next += dh_z  # dh_next = Whh^T dah_t + z_t ⊙ dh_t
                if m is not None:
                    dh_next *= m[t]  # nothing flows back through a reset
                dhs[t - 1] += dh_next
    dax[:, :, : 2 * H] = dah[:, :, : 2 * H]  # da_r, da_z: the same for ax and Whh h
    return dax, dah


def dstate(Whh: np.ndarray, cache: tuple, above: np.ndarray, dah: np.ndarray) -> tuple:
    """(d loss / d h entering step t,) (T, B, H) from `backward`'s dah and `above` (T, B, H),
    the gradient that came into each h_t from outside the recurrence: for gradient flow."""
    _, gates, _, _ = cache
    T, B, H = above.shape
    z = gates[:, :, H : 2 * H]  # (T, B, H)
    dh = dah @ Whh  # (T, B, H): through ah_t = Whh h_{t-1} ...
    for t in range(T - 1, -1, -1):
        dh_t = above[t] + dh[t + 1] if t + 1 < T else above[t]
        dh[t] += z[t] * dh_t  # ... and directly: h_t = n_t + z_t ⊙ (h_{t-1} - n_t)
    return (dh,)


def step(Whh: np.ndarray, ax_t: np.ndarray, state: tuple) -> tuple:
    """(h_t,) from ax_t (M, 3H) (overwritten) and state = (h_{t-1},)."""
    H = Whh.shape[1]
    (h,) = state
    ah = h @ Whh.T  # (M, 3H)
    rz = ax_t[:, : 2 * H]
    rz += ah[:, : 2 * H]
    rz *= 0.5
    np.tanh(rz, out=rz)
    rz *= 0.5
    rz += 0.5  # r_t, z_t
    r, z = rz[:, :H], rz[:, H:]
    n = np.tanh(ax_t[:, 2 * H :] + r * ah[:, 2 * H :])  # n_t
    return (n + z * (h - n),)
