"""The LSTM cell: gates i, f, o, g and a cell state c beside the hidden state h.

    a_t = ax_t + Whh h_{t-1}                 (B, 4H): blocks i, f, o, g in this order
    i_t, f_t, o_t = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o)     input, forget, output gates
    g_t = tanh(a_g)                          the candidate
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    h_t = o_t ⊙ tanh(c_t)

Backward, with dh_t = (dh_t from above) + Whh^T da_{t+1} and dc_{T+1} = 0:

    da_o = dh_t ⊙ tanh(c_t) ⊙ o(1 - o)                       sigmoid' = s(1 - s)
    dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o_t ⊙ (1 - tanh^2(c_t))
    da_i = dc_t ⊙ g_t ⊙ i(1 - i);  da_f = dc_t ⊙ c_{t-1} ⊙ f(1 - f);  da_g = dc_t ⊙ i_t ⊙ (1 - g^2)

Where a stream's state is reset before step t (m_t = 0, a document's start), h_{t-1} and c_{t-1}
are read as m_t h_{t-1} = 0 and m_t c_{t-1} = 0, and no gradient flows back through them.

Everything right of dh_t and dc_t is known once the forward is done, so those factors are
computed in bulk, a block of steps at a time, outside the per-step work; a step is then one
product and a few multiplies. The sigmoid is computed as (1 + tanh(a / 2)) / 2, so that one
tanh per step covers all four gates and no exp(-a) can overflow. The interface is the one all
cells share (charrnn/cells/__init__.py).
"""

from __future__ import annotations

import numpy as np

from charrnn.cells.weights import init_weights, prev

GATES = 4  # i, f, o, g
STATES = 2  # h, c
_BLOCK_BYTES = 1 << 20  # backward's factors for this many bytes of steps at a time


def init_layer(n_in: int, H: int, rng: np.random.Generator, dtype=np.float32, init_scale=0.01):
    layer = init_weights(GATES, n_in, H, rng, dtype, init_scale)
    # forget bias 1: at the start f = sigmoid(1) = 0.73, so the cell state is kept by default and
    # gradients flow back through c over long distances from the first step (Jozefowicz et al.
    # 2015, "An Empirical Exploration of Recurrent Network Architectures")
    layer["bh"][H : 2 * H] = 1.0
    return layer


def forward(Whh: np.ndarray, ax: np.ndarray, state0: tuple, ws, m=None):
    """hs (T + 1, B, H) from ax (T, B, 4H) and state0 = (h_0, c_0); the gate values are written
    over ax. m: None, or the (T, B, 1) keep mask of the state (0 where it is reset)."""
    T, B, G = ax.shape
    H = G // GATES
    dtype = ax.dtype
    hs = ws.get("hs", (T + 1, B, H), dtype)  # (T + 1, B, H)
    cs = ws.get("cs", (T + 1, B, H), dtype)  # (T + 1, B, H)
    tanh_c = ws.get("tanh_c", (T, B, H), dtype)  # (T, B, H)
    ig = ws.get("ig", (B, H), dtype)  # (B, H) scratch for i ⊙ g
    ah = ws.get("ah", (B, G), dtype)  # (B, 4H) scratch for Whh h_{t-1}
    Whh_T = ws.get("Whh_T", (H, G), dtype)  # (H, 4H)
    np.copyto(Whh_T, Whh.T)  # a contiguous copy: BLAS multiplies by it faster than by a view
    hs[0], cs[0] = state0
    gates = ax  # (T, B, 4H): a_t, then the gate values, in place
    for t in range(T):
        z = gates[t]  # (B, 4H)
        np.matmul(prev(hs, m, t), Whh_T, out=ah)  # Whh h_{t-1}
        z += ah  # a_t = ax_t + Whh h_{t-1}
        ifo = z[:, : 3 * H]
        ifo *= 0.5
        np.tanh(z, out=z)  # g_t = tanh(a_g), and tanh(a / 2) for i, f, o
        ifo *= 0.5
        ifo += 0.5  # i_t, f_t, o_t = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o)
        i, f, o, g = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
        np.multiply(f, prev(cs, m, t), out=cs[t + 1])  # f_t ⊙ c_{t-1}
        np.multiply(i, g, out=ig)
        cs[t + 1] += ig  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        np.tanh(cs[t + 1], out=tanh_c[t])
        np.multiply(o, tanh_c[t], out=hs[t + 1])  # h_t = o_t ⊙ tanh(c_t)
    return hs, (hs[T].copy(), cs[T].copy()), (hs, cs, tanh_c, gates, m)


def _factors(gates: np.ndarray, c_prev: np.ndarray, tanh_c: np.ndarray, fac: np.ndarray) -> None:
    """For a block of steps, the factors (k, B, 5H) that multiply dh_t and dc_t in backward:
    g ⊙ i(1 - i), c_{t-1} ⊙ f(1 - f), tanh(c_t) ⊙ o(1 - o), i ⊙ (1 - g^2), o ⊙ (1 - tanh^2(c_t))."""
    H = c_prev.shape[-1]
    i, o, g = gates[:, :, :H], gates[:, :, 2 * H : 3 * H], gates[:, :, 3 * H :]
    f_i, f_f, f_o, f_g, f_c = (fac[:, :, k * H : (k + 1) * H] for k in range(5))
    np.subtract(1.0, gates[:, :, : 3 * H], out=fac[:, :, : 3 * H])
    fac[:, :, : 3 * H] *= gates[:, :, : 3 * H]  # s(1 - s) for i, f, o
    f_i *= g
    f_f *= c_prev
    f_o *= tanh_c
    np.multiply(g, g, out=f_g)
    np.subtract(1.0, f_g, out=f_g)
    f_g *= i
    np.multiply(tanh_c, tanh_c, out=f_c)
    np.subtract(1.0, f_c, out=f_c)
    f_c *= o


def backward(Whh: np.ndarray, cache: tuple, dhs: np.ndarray, ws):
    """da (T, B, 4H) = dax = dah from dhs (T, B, H), which is overwritten."""
    hs, cs, tanh_c, gates, m = cache
    T, B, H = dhs.shape
    dtype = dhs.dtype
    f = gates[:, :, H : 2 * H]  # (T, B, H)
    da = ws.get("da", gates.shape, dtype)  # (T, B, 4H)
    dc = ws.get("dc", (B, H), dtype)  # (B, H): dc_{t+1} ⊙ f_{t+1}, then dc_t
    dc.fill(0.0)
    dc_h = ws.get("dc_h", (B, H), dtype)  # (B, H) scratch for the part of dc_t through h_t
    dh_next = ws.get("dh_next", (B, H), dtype)  # (B, H)
    # the factors are computed a block of steps at a time, sized to stay in cache until the
    # steps read them (a pass over all T B positions at once runs at memory speed, 2x slower)
    k = max(1, _BLOCK_BYTES // (B * 5 * H * dhs.itemsize))
    fac = ws.get("fac", (min(k, T), B, 5 * H), dtype)
    for end in range(T, 0, -k):
        start = max(0, end - k)
        c_prev = cs[start:end] if m is None else cs[start:end] * m[start:end]  # c_{t-1} read
        _factors(gates[start:end], c_prev, tanh_c[start:end], fac[: end - start])
        for t in range(end - 1, start - 1, -1):
            f_i, f_f, f_o, f_g, f_c = (fac[t - start, :, j * H : (j + 1) * H] for j in range(5))
            dh = dhs[t]  # dh_t: step t + 1 has added its dh_next
            np.multiply(dh, f_o, out=da[t, :, 2 * H : 3 * H])  # da_o
            np.multiply(dh, f_c, out=dc_h)
            dc += dc_h  # dc_t = dc_{t+1} ⊙ f_{t+1} + dh_t ⊙ o_t ⊙ (1 - tanh^2(c_t))
            np.multiply(dc, f_i, out=da[t, :, :H])  # da_i
            np.multiply(dc, f_f, out=da[t, :, H : 2 * H])  # da_f
            np.multiply(dc, f_g, out=da[t, :, 3 * H :])  # da_g
            if t > 0:
                dc *= f[t]  # the part of dc_{t-1} that flows through c_t = f_t ⊙ c_{t-1} + ...
                np.matmul(da[t], Whh, out=dh_next)  # dh_next = Whh^T da_t, as rows
                if m is not None:  # nothing flows back through a reset
                    dc *= m[t]
                    dh_next *= m[t]
                dhs[t - 1] += dh_next
    return da, da


def dstate(Whh: np.ndarray, cache: tuple, above: np.ndarray, da: np.ndarray) -> tuple:
    """(dh, dc) (T, B, H), row t d loss / d(h, c) entering step t, from `backward`'s da and
    `above` (T, B, H), the gradient that came into each h_t from outside the recurrence: for
    gradient flow."""
    _, _, tanh_c, gates, _ = cache
    T, B, H = above.shape
    f, o = gates[:, :, H : 2 * H], gates[:, :, 2 * H : 3 * H]  # (T, B, H)
    dh = da @ Whh  # (T, B, H): dh_{t-1} = Whh^T da_t, as for the vanilla cell
    dc = np.empty_like(dh)  # (T, B, H): dc_{t-1} = f_t ⊙ dc_t
    for t in range(T - 1, -1, -1):
        dh_t = above[t] + dh[t + 1] if t + 1 < T else above[t]  # all of dh_t
        dc_t = dh_t * o[t] * (1.0 - tanh_c[t] ** 2)  # through h_t = o_t ⊙ tanh(c_t) ...
        if t + 1 < T:
            dc_t += dc[t + 1]  # ... and through c_{t+1} = f_{t+1} ⊙ c_t + ...
        dc[t] = f[t] * dc_t  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    return dh, dc


def step(Whh: np.ndarray, ax_t: np.ndarray, state: tuple) -> tuple:
    """(h_t, c_t) from ax_t (M, 4H) (overwritten) and state = (h_{t-1}, c_{t-1})."""
    H = Whh.shape[1]
    h, c = state
    z = np.add(ax_t, h @ Whh.T, out=ax_t)  # a_t
    z[:, : 3 * H] *= 0.5
    np.tanh(z, out=z)
    z[:, : 3 * H] *= 0.5
    z[:, : 3 * H] += 0.5  # i, f, o
    i, f, o, g = z[:, :H], z[:, H : 2 * H], z[:, 2 * H : 3 * H], z[:, 3 * H :]
    c = f * c + i * g  # c_t
    return o * np.tanh(c), c  # h_t, c_t
