"""Tests of charrnn.model: gradients by float64 central differences, the one-hot lookup, the
scatter-add of dWxh, the initialisation, chunked validation loss, and overfitting a short text."""

import numpy as np
import pytest

from charrnn import checkpoint as ckpt_io
from charrnn.config import Config
from charrnn.data import build_corpus
from charrnn.model import (
    PARAM_NAMES,
    backward,
    chunked_loss,
    forward,
    init_params,
    input_grad,
    log_softmax_loss,
    run_recurrence,
)
from charrnn.sample import generate
from charrnn.train import train

V, H, T, B = 5, 4, 6, 3


def onehot(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.eye(vocab_size)[ids]  # (..., V)


@pytest.fixture
def tiny():
    """A float64 model with weights large enough that every gradient is well away from zero,
    nonzero biases, random ids (T, B) and a nonzero carried state h0 (B, H)."""
    rng = np.random.default_rng(0)
    params = init_params(V, H, rng, np.float64, init_scale=0.5)
    params["bh"] = rng.standard_normal(H) * 0.3
    params["by"] = rng.standard_normal(V) * 0.3
    X = rng.integers(0, V, (T, B))
    Y = rng.integers(0, V, (T, B))
    h0 = np.tanh(rng.standard_normal((B, H)))
    return params, X, Y, h0


# ---- gradients ----


def numerical_grad(params, X, Y, h0, name, eps=1e-5):
    p = params[name]
    num = np.zeros_like(p)
    for i in np.ndindex(p.shape):
        old = p[i]
        p[i] = old + eps
        plus = forward(params, X, Y, h0)[0]
        p[i] = old - eps
        minus = forward(params, X, Y, h0)[0]
        p[i] = old
        num[i] = (plus - minus) / (2 * eps)
    return num


def test_gradient_check_all_parameters(tiny):
    params, X, Y, h0 = tiny
    loss, cache, _ = forward(params, X, Y, h0)
    grads = backward(params, cache)
    assert set(grads) == set(PARAM_NAMES)
    for name in PARAM_NAMES:
        num = numerical_grad(params, X, Y, h0, name)
        ana = grads[name]
        assert ana.shape == params[name].shape and ana.dtype == np.float64
        rel = np.abs(ana - num) / np.maximum(np.abs(ana) + np.abs(num), 1e-12)
        assert rel.max() < 1e-6, f"{name}: max relative error {rel.max():.2e}"


def test_carried_state_changes_loss_and_gradients(tiny):
    # the gradient check above is only meaningful for h0 if h0 enters the computation
    params, X, Y, h0 = tiny
    loss, cache, _ = forward(params, X, Y, h0)
    loss0, cache0, _ = forward(params, X, Y, np.zeros_like(h0))
    assert loss != loss0
    assert not np.allclose(backward(params, cache)["Whh"], backward(params, cache0)["Whh"])


def test_forward_returns_last_state_and_mean_loss(tiny):
    params, X, Y, h0 = tiny
    loss, cache, h_last = forward(params, X, Y, h0)
    hs = run_recurrence(params, X, h0)
    np.testing.assert_array_equal(h_last, hs[T])
    # the mean over T * B characters of -log softmax(Why h + by)[target]
    logits = hs[1:] @ params["Why"].T + params["by"]  # (T, B, V)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    expected = -np.take_along_axis(logp, Y[..., None], axis=-1).mean()
    assert loss == pytest.approx(expected, rel=1e-12)


def test_input_grad_equals_onehot_product():
    rng = np.random.default_rng(1)
    N, Hd, Vd = 40, 6, 9
    dpre = rng.standard_normal((N, Hd))
    x = rng.integers(0, Vd - 2, N)  # the last two characters never occur: their columns are 0
    x[:5] = 3  # and some id repeats many times
    expected = dpre.T @ onehot(x, Vd)  # (H, V): sum_t dpre_t x_t^T
    got = input_grad(dpre, x, Vd)
    assert got.shape == (Hd, Vd)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert not got[:, -2:].any()


def test_input_grad_single_position():
    dpre = np.array([[1.0, -2.0]])
    np.testing.assert_array_equal(
        input_grad(dpre, np.array([2]), 3), [[0.0, 0.0, 1.0], [0.0, 0.0, -2.0]]
    )


# ---- the one-hot lookup ----


def test_recurrence_lookup_equals_onehot_product(tiny):
    params, X, _, h0 = tiny
    hs = run_recurrence(params, X, h0)
    assert hs.shape == (T + 1, B, H)
    h = h0
    np.testing.assert_array_equal(hs[0], h0)
    for t in range(T):
        x_t = onehot(X[t], V)  # (B, V)
        # h_t = tanh(Wxh x_t + Whh h_{t-1} + bh), rows of a batch
        h = np.tanh(x_t @ params["Wxh"].T + h @ params["Whh"].T + params["bh"])
        np.testing.assert_allclose(hs[t + 1], h, rtol=1e-12, atol=1e-14)


def test_recurrence_float32_stays_float32():
    rng = np.random.default_rng(2)
    params = init_params(7, 5, rng, np.float32)
    hs = run_recurrence(params, rng.integers(0, 7, (4, 2)), np.zeros((2, 5), np.float32))
    assert hs.dtype == np.float32
    loss, cache, h_last = forward(
        params, rng.integers(0, 7, (4, 2)), rng.integers(0, 7, (4, 2)), np.zeros((2, 5), np.float32)
    )
    assert all(g.dtype == np.float32 for g in backward(params, cache).values())
    assert h_last.dtype == np.float32


# ---- initialisation ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_params_shapes_and_orthogonal_recurrence(dtype):
    params = init_params(11, 8, np.random.default_rng(3), dtype)
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {"Wxh": (8, 11), "Whh": (8, 8), "bh": (8,), "Why": (11, 8), "by": (11,)}
    assert all(v.dtype == dtype for v in params.values())
    Whh = params["Whh"].astype(np.float64)
    np.testing.assert_allclose(Whh @ Whh.T, np.eye(8), atol=1e-5)
    assert not params["bh"].any() and not params["by"].any()
    assert np.abs(params["Wxh"]).max() < 0.1  # small: std init_scale = 0.01


def test_init_params_depends_only_on_the_generator():
    a = init_params(6, 4, np.random.default_rng(9))
    b = init_params(6, 4, np.random.default_rng(9))
    c = init_params(6, 4, np.random.default_rng(10))
    assert all(np.array_equal(a[k], b[k]) for k in PARAM_NAMES)
    assert not np.array_equal(a["Whh"], c["Whh"])


# ---- validation loss ----


def test_chunked_loss_single_stream_equals_forward():
    rng = np.random.default_rng(4)
    params = init_params(V, H, rng, np.float64, init_scale=0.5)
    ids = rng.integers(0, V, 50)
    loss, n = chunked_loss(params, ids, n_streams=1, chunk=7)  # chunks carry the state
    expected, _, _ = forward(params, ids[:-1, None], ids[1:, None], np.zeros((1, H)))
    assert n == 49
    assert loss == pytest.approx(expected, rel=1e-12)


def test_chunked_loss_streams_read_their_burn_in_first():
    # stream s > 0 reads the burn_in characters before its part unscored, from a zero state
    rng = np.random.default_rng(5)
    params = init_params(V, H, rng, np.float64, init_scale=0.5)
    ids = rng.integers(0, V, 61)
    S, burn = 3, 6
    loss, n = chunked_loss(params, ids, n_streams=S, chunk=5, burn_in=burn)
    L = 60 // S
    total = 0.0
    for s in range(S):
        begin = s * L - (burn if s else 0)
        x = ids[begin : s * L + L + 1]
        hs = run_recurrence(params, x[:-1, None], np.zeros((1, H)))
        _, _, losses = log_softmax_loss(params, hs[1:, 0], x[1:])
        total += losses[s * L - begin :].sum()
    assert n == S * L
    assert loss == pytest.approx(total / (S * L), rel=1e-12)
    assert loss != pytest.approx(chunked_loss(params, ids, S, 5, burn_in=0)[0], rel=1e-6)


def test_chunked_loss_too_short():
    params = init_params(V, H, np.random.default_rng(0))
    with pytest.raises(ValueError):
        chunked_loss(params, np.array([1]))


# ---- learning ----


def test_overfits_periodic_text_until_greedy_decoding_reproduces_it(tmp_path, periodic_text):
    corpus = build_corpus(periodic_text)
    cfg = Config(
        hidden_size=32,
        seq_length=13,
        batch_size=4,
        learning_rate=0.02,
        max_steps=150,
        eval_every=0,
        checkpoint_every=1000,
        val_fraction=0.0,
        rng_seed=0,
    )
    result = train(cfg, corpus, tmp_path / "run")
    params = ckpt_io.load(result.last_checkpoint).params
    prime = "hel"
    prime_ids = np.array([corpus.vocab.index(c) for c in prime])
    n = 60
    ids = [int(i[0]) for i in generate(params, prime_ids, n, np.random.default_rng(0), argmax=True)]
    assert prime + "".join(corpus.vocab[i] for i in ids) == periodic_text[: len(prime) + n]
