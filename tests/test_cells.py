"""Tests of charrnn.cells: each cell's forward against its equations written out plainly, its
backward by float64 central differences of the cell alone (the contract the model relies on:
dax and dah), its one-step form, and its initialisation."""

import numpy as np
import pytest

from charrnn.cells import CELLS, gru, lstm, rnn
from charrnn.model import Workspace, _Fresh

T, B, H, N_IN = 5, 3, 4, 6


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference(cell, Whh, ax, state0):
    """The cell's equations, one step at a time, no tricks: (hs (T + 1, B, H), state_last)."""
    h, c = state0[0], state0[-1]
    hs = [h]
    for a_x in ax:
        ah = h @ Whh.T  # Whh h_{t-1}
        if cell is rnn:
            h = np.tanh(a_x + ah)
        elif cell is lstm:
            a = a_x + ah
            i, f, o = (sigmoid(a[:, k * H : (k + 1) * H]) for k in range(3))
            g = np.tanh(a[:, 3 * H :])
            c = f * c + i * g
            h = o * np.tanh(c)
        else:
            r = sigmoid(a_x[:, :H] + ah[:, :H])
            z = sigmoid(a_x[:, H : 2 * H] + ah[:, H : 2 * H])
            n = np.tanh(a_x[:, 2 * H :] + r * ah[:, 2 * H :])
            h = (1 - z) * n + z * h
        hs.append(h)
    return np.array(hs), ((h, c) if cell is lstm else (h,))


def example(cell, seed=0, dtype=np.float64):
    """Whh (G H, H) large enough to saturate nothing, ax (T, B, G H), a nonzero state0."""
    rng = np.random.default_rng(seed)
    G = cell.GATES
    Whh = (rng.standard_normal((G * H, H)) * 0.6).astype(dtype)
    ax = rng.standard_normal((T, B, G * H)).astype(dtype)
    state0 = tuple(
        (np.tanh(rng.standard_normal((B, H))) * (1 + k)).astype(dtype) for k in range(cell.STATES)
    )
    return Whh, ax, state0


def numerical_grad(loss, x: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """d loss() / dx by fourth-order central differences in float64, x changed in place and
    restored. The error is O(eps^4), so eps can be 1e-3, where the float64 roundoff of the loss
    costs about 1e-16 / eps = 1e-13; plain (f(x + e) - f(x - e)) / 2e bottoms out near 1e-11,
    more than 1e-6 of the smallest gradients of a two-layer LSTM."""
    num = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        f = []
        for delta in (2 * eps, eps, -eps, -2 * eps):
            x[i] = old + delta
            f.append(loss())
        x[i] = old
        # differences first: a parameter the loss does not read gets exactly 0
        num[i] = (8 * (f[1] - f[2]) - (f[0] - f[3])) / (12 * eps)
    return num


CELL_PARAMS = pytest.mark.parametrize("cell", [rnn, lstm, gru], ids=["rnn", "lstm", "gru"])


def test_registry():
    assert CELLS == {"rnn": rnn, "lstm": lstm, "gru": gru}
    assert [(c.GATES, c.STATES) for c in (rnn, lstm, gru)] == [(1, 1), (4, 2), (3, 1)]


@CELL_PARAMS
def test_forward_follows_the_equations(cell):
    Whh, ax, state0 = example(cell)
    hs, state_last, _ = cell.forward(Whh, ax.copy(), state0, _Fresh)
    want_hs, want_last = reference(cell, Whh, ax, state0)
    assert hs.shape == (T + 1, B, H)
    np.testing.assert_allclose(hs, want_hs, rtol=1e-12, atol=1e-14)
    assert len(state_last) == cell.STATES
    for got, want in zip(state_last, want_last, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@CELL_PARAMS
def test_state_last_is_a_fresh_copy(cell):
    Whh, ax, state0 = example(cell)
    ws = Workspace()
    hs, state_last, _ = cell.forward(Whh, ax, state0, ws)
    before = [s.copy() for s in state_last]
    cell.forward(Whh, example(cell, seed=1)[1], state0, ws)  # overwrites the workspace
    assert all(np.array_equal(a, b) for a, b in zip(state_last, before, strict=True))


@CELL_PARAMS
def test_step_repeated_equals_forward(cell):
    Whh, ax, state0 = example(cell)
    hs, state_last, _ = cell.forward(Whh, ax.copy(), state0, _Fresh)
    state = state0
    for t in range(T):
        state = cell.step(Whh, ax[t].copy(), state)
        np.testing.assert_allclose(state[0], hs[t + 1], rtol=1e-12, atol=1e-14)
    for got, want in zip(state, state_last, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@CELL_PARAMS
def test_backward_gives_dax_and_dah_by_central_differences(cell):
    # loss = sum_t <R_t, h_t>: dloss/dh_t = R_t arrives from above; the cell returns dloss/d(ax_t)
    # and dloss/d(Whh h_{t-1}), from which dWhh = sum_t dah_t h_{t-1}^T
    Whh, ax, state0 = example(cell)
    R = np.random.default_rng(7).standard_normal((T, B, H))

    def loss(Whh, ax):
        return float((cell.forward(Whh, ax.copy(), state0, _Fresh)[0][1:] * R).sum())

    hs, _, cache = cell.forward(Whh, ax.copy(), state0, _Fresh)
    dax, dah = cell.backward(Whh, cache, R.copy(), _Fresh)
    assert dax.shape == dah.shape == ax.shape
    dWhh = dah.reshape(T * B, -1).T @ hs[:-1].reshape(T * B, H)
    for name, x, ana in (("ax", ax, dax), ("Whh", Whh, dWhh)):
        num = numerical_grad(lambda: loss(Whh, ax), x)
        rel = np.abs(ana - num) / np.maximum(np.abs(ana) + np.abs(num), 1e-12)
        assert rel.max() < 1e-6, f"{name}: max relative error {rel.max():.2e}"


@pytest.mark.parametrize("cell", [lstm, gru], ids=["lstm", "gru"])
def test_backward_is_the_same_whatever_its_block_of_steps(cell, monkeypatch):
    # the gated cells compute their backward factors a block of steps at a time
    Whh, ax, state0 = example(cell)
    _, _, cache = cell.forward(Whh, ax.copy(), state0, _Fresh)
    R = np.random.default_rng(7).standard_normal((T, B, H))
    whole = cell.backward(Whh, cache, R.copy(), _Fresh)
    row = B * {lstm: 5, gru: 3}[cell] * H * 8  # bytes of one step's factors (B, 5H or 3H)
    for steps in (1, 2, 3):  # blocks of 1; 2, 2, 1; 3, 2
        monkeypatch.setattr(cell, "_BLOCK_BYTES", steps * row + 1)
        for got, want in zip(cell.backward(Whh, cache, R.copy(), _Fresh), whole, strict=True):
            np.testing.assert_array_equal(got, want)


@CELL_PARAMS
def test_float32_stays_float32(cell):
    Whh, ax, state0 = example(cell, dtype=np.float32)
    hs, state_last, cache = cell.forward(Whh, ax, state0, Workspace())
    dax, dah = cell.backward(Whh, cache, np.ones((T, B, H), np.float32), Workspace())
    arrays = [hs, *state_last, dax, dah, *cell.step(Whh, ax[0].copy(), state0)]
    assert all(a.dtype == np.float32 for a in arrays)


# ---- initialisation ----


@CELL_PARAMS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_layer_shapes_and_orthogonal_gate_blocks(cell, dtype):
    G, n_in, Hd = cell.GATES, 7, 6
    layer = cell.init_layer(n_in, Hd, np.random.default_rng(3), dtype, 0.01)
    assert {k: v.shape for k, v in layer.items()} == {
        "Wxh": (G * Hd, n_in),
        "Whh": (G * Hd, Hd),
        "bh": (G * Hd,),
    }
    assert all(v.dtype == dtype and v.flags.c_contiguous for v in layer.values())
    blocks = layer["Whh"].astype(np.float64).reshape(G, Hd, Hd)
    for block in blocks:
        np.testing.assert_allclose(block @ block.T, np.eye(Hd), atol=1e-5)
    if G > 1:  # each block its own draw
        assert not np.allclose(blocks[0], blocks[1])
    assert np.abs(layer["Wxh"]).max() < 0.1  # small: std init_scale = 0.01


def test_lstm_forget_bias_is_one_other_biases_zero():
    bh = lstm.init_layer(5, 4, np.random.default_rng(0))["bh"].reshape(4, 4)  # blocks i f o g
    np.testing.assert_array_equal(bh[1], 1.0)
    assert not bh[[0, 2, 3]].any()
    for cell in (rnn, gru):
        assert not cell.init_layer(5, 4, np.random.default_rng(0))["bh"].any()
