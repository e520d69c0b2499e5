"""Tests of charrnn.optim: clipping, learning-rate schedules and the four optimisers."""

import math

import numpy as np
import pytest

from charrnn import optim
from charrnn.config import Config
from charrnn.model import backward, forward, init_params


def grads_with_norm_10():
    # sqrt(6^2 + 8^2) = 10
    return {"a": np.array([6.0, 0.0]), "b": np.array([[0.0], [-8.0]])}


# ---- clipping ----


def test_global_norm():
    assert optim.global_norm(grads_with_norm_10()) == pytest.approx(10.0)
    assert optim.global_norm({"a": np.zeros(3)}) == 0.0


def test_clip_norm_scales_to_threshold_and_returns_pre_clip_norm():
    grads = grads_with_norm_10()
    norm = optim.clip_gradients(grads, "norm", 5.0)
    assert norm == pytest.approx(10.0)
    assert optim.global_norm(grads) == pytest.approx(5.0)
    np.testing.assert_allclose(grads["a"], [3.0, 0.0])  # same direction, half the length
    np.testing.assert_allclose(grads["b"], [[0.0], [-4.0]])


def test_clip_norm_below_threshold_leaves_gradients():
    grads = grads_with_norm_10()
    assert optim.clip_gradients(grads, "norm", 20.0) == pytest.approx(10.0)
    np.testing.assert_array_equal(grads["a"], [6.0, 0.0])
    np.testing.assert_array_equal(grads["b"], [[0.0], [-8.0]])


def test_clip_value_clamps_each_entry():
    grads = {"a": np.array([0.5, -3.0, 7.0]), "b": np.array([[-0.1, 2.0]])}
    before = optim.global_norm(grads)
    assert optim.clip_gradients(grads, "value", 1.0) == pytest.approx(before)
    np.testing.assert_array_equal(grads["a"], [0.5, -1.0, 1.0])
    np.testing.assert_array_equal(grads["b"], [[-0.1, 1.0]])


@pytest.mark.parametrize("mode", ["norm", "value"])
def test_clip_threshold_zero_is_off(mode):
    grads = grads_with_norm_10()
    assert optim.clip_gradients(grads, mode, 0.0) == pytest.approx(10.0)
    np.testing.assert_array_equal(grads["b"], [[0.0], [-8.0]])


def test_clip_reports_non_finite_norm():
    grads = {"a": np.array([np.inf, 1.0])}
    assert not math.isfinite(optim.clip_gradients(grads, "norm", 5.0))


# ---- learning-rate schedules ----


@pytest.mark.parametrize(
    "step, expected", [(0, 0.1), (9, 0.1), (10, 0.05), (19, 0.05), (25, 0.025)]
)
def test_step_decay(step, expected):
    cfg = Config(learning_rate=0.1, lr_decay="step", lr_decay_rate=0.5, lr_decay_steps=10)
    assert optim.learning_rate(cfg, step) == pytest.approx(expected)


@pytest.mark.parametrize(
    "step, expected", [(0, 0.1), (5, 0.1 * 0.5**0.5), (10, 0.05), (30, 0.0125)]
)
def test_exponential_decay(step, expected):
    cfg = Config(learning_rate=0.1, lr_decay="exponential", lr_decay_rate=0.5, lr_decay_steps=10)
    assert optim.learning_rate(cfg, step) == pytest.approx(expected)


def test_no_decay():
    cfg = Config(learning_rate=0.1, lr_decay="none", lr_decay_rate=0.5, lr_decay_steps=10)
    assert {optim.learning_rate(cfg, s) for s in (0, 10, 10_000)} == {0.1}


@pytest.mark.parametrize(
    "decay, progress, expected",
    [
        ("cosine", 0.0, 0.1),
        ("cosine", 0.5, 0.01 + 0.09 * 0.5),
        ("cosine", 1.0, 0.01),
        ("cosine", 7.0, 0.01),  # past the end: stays at the floor
        ("linear", 0.25, 0.01 + 0.09 * 0.75),
        ("linear", 1.0, 0.01),
    ],
)
def test_annealed_decay_runs_from_lr_to_lr_final_over_the_run(decay, progress, expected):
    cfg = Config(learning_rate=0.1, lr_decay=decay, lr_final=0.1, max_steps=100)
    assert optim.learning_rate(cfg, 50, progress) == pytest.approx(expected)


def test_cosine_falls_slowly_then_fast_then_slowly():
    cfg = Config(learning_rate=1.0, lr_decay="cosine", lr_final=0.0, max_steps=100)
    lrs = [optim.learning_rate(cfg, 0, p / 10) for p in range(11)]
    drops = np.diff(lrs)
    assert (drops < 0).all() and abs(drops[0]) < abs(drops[5]) > abs(drops[-1])


@pytest.mark.parametrize("decay", ["none", "exponential", "cosine"])
def test_warmup_rises_linearly_then_hands_over_to_the_schedule(decay):
    cfg = Config(learning_rate=0.1, lr_decay=decay, warmup_steps=4, max_steps=100)
    lrs = [optim.learning_rate(cfg, s, s / 100) for s in range(6)]
    after = [
        optim.learning_rate(Config(**{**cfg.to_dict(), "warmup_steps": 0}), s, s / 100)
        for s in range(6)
    ]
    assert lrs[:4] == pytest.approx([after[s] * (s + 1) / 4 for s in range(4)])
    assert lrs[4:] == pytest.approx(after[4:])


# ---- one update by hand ----


def one_update(name, g, steps=1, **cfg):
    cfg = Config(optimizer=name, **cfg)
    params = {"w": np.array([1.0, -2.0, 0.5])}
    state = optim.init_state(name, params)
    for step in range(steps):
        optim.update(cfg, params, {"w": np.array(g, dtype=float)}, state, step, cfg.learning_rate)
    return params["w"], state


def test_init_state_keys_follow_the_parameters():
    params = init_params(5, 3, np.random.default_rng(0))
    assert set(optim.init_state("adam", params)) == {f"{s}.{k}" for s in "mv" for k in params}
    assert set(optim.init_state("sgd", params)) == {f"m.{k}" for k in params}
    assert set(optim.init_state("rmsprop", params)) == {f"v.{k}" for k in params}
    state = optim.init_state("adagrad", params)
    assert all(
        state[f"v.{k}"].shape == p.shape and not state[f"v.{k}"].any() for k, p in params.items()
    )


def test_adam_first_step_is_lr_times_sign():
    g = [0.3, -4.0, 0.0]
    w, state = one_update("adam", g, learning_rate=0.1)
    # bias-corrected m / sqrt(v) = g / |g| on the first step
    np.testing.assert_allclose(w, [1.0 - 0.1, -2.0 + 0.1, 0.5], rtol=1e-6)
    np.testing.assert_allclose(state["m.w"], 0.1 * np.array(g))
    np.testing.assert_allclose(state["v.w"], 0.001 * np.square(g))


def test_sgd_momentum_two_steps():
    w, state = one_update("sgd", [1.0, 2.0, -1.0], steps=2, learning_rate=0.1, momentum=0.9)
    # m1 = g, m2 = 0.9 g + g = 1.9 g; w = w0 - 0.1 (g + 1.9 g)
    np.testing.assert_allclose(w, np.array([1.0, -2.0, 0.5]) - 0.29 * np.array([1.0, 2.0, -1.0]))
    np.testing.assert_allclose(state["m.w"], [1.9, 3.8, -1.9])


def test_rmsprop_first_step():
    g = np.array([0.5, -2.0, 1.0])
    w, _ = one_update("rmsprop", g, learning_rate=0.01, rmsprop_decay=0.99)
    step = 0.01 * g / (np.sqrt(0.01 * g**2) + 1e-8)  # = 0.1 * sign(g)
    np.testing.assert_allclose(w, np.array([1.0, -2.0, 0.5]) - step)


def test_adagrad_accumulates_squares():
    g = np.array([0.5, -2.0, 1.0])
    w, state = one_update("adagrad", g, steps=2, learning_rate=0.1)
    np.testing.assert_allclose(state["v.w"], 2 * g**2)
    expected = np.array([1.0, -2.0, 0.5]) - 0.1 * np.sign(g) * (1 + 1 / np.sqrt(2))
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_weight_decay_shrinks_matrices_apart_from_the_gradient_and_spares_biases():
    cfg = Config(optimizer="adam", learning_rate=0.1, weight_decay=0.5)
    W0, b0 = np.array([[1.0, -2.0], [0.5, 4.0]]), np.array([1.0, -2.0])
    params = {"W": W0.copy(), "b": b0.copy()}
    g = {"W": np.array([[0.3, -4.0], [1.0, 0.0]]), "b": np.array([0.3, -4.0])}
    state = optim.init_state("adam", params)
    optim.update(cfg, params, g, state, 0, cfg.learning_rate)
    # AdamW: W (1 - lr w) - lr sign(g) on the first step; the bias gets the Adam step alone
    expected_W = W0 * (1 - 0.1 * 0.5) - 0.1 * np.sign([[0.3, -4.0], [1.0, 0.0]])
    np.testing.assert_allclose(params["W"], expected_W, rtol=1e-6)
    np.testing.assert_allclose(params["b"], b0 - 0.1 * np.sign([0.3, -4.0]), rtol=1e-6)


@pytest.mark.parametrize("name", ["adam", "rmsprop", "adagrad", "sgd"])
def test_weight_decay_with_a_zero_gradient_decays_geometrically_at_the_given_lr(name):
    cfg = Config(optimizer=name, learning_rate=0.2, weight_decay=0.25)
    params = {"W": np.array([[2.0, -1.0]])}
    state = optim.init_state(name, params)
    for step, lr in enumerate([0.2, 0.1, 0.0]):  # the scheduled lr, not learning_rate, decays
        optim.update(cfg, params, {"W": np.zeros((1, 2))}, state, step, lr)
    np.testing.assert_allclose(params["W"], np.array([[2.0, -1.0]]) * 0.95 * 0.975)


# ---- each optimiser learns ----


@pytest.mark.parametrize(
    "name, lr", [("adam", 0.02), ("rmsprop", 0.01), ("adagrad", 0.1), ("sgd", 0.5)]
)
def test_each_optimizer_reduces_the_loss(name, lr):
    rng = np.random.default_rng(0)
    V, H, T, B = 6, 12, 8, 3
    cfg = Config(optimizer=name, learning_rate=lr, dtype="float64")
    params = init_params(V, H, rng, np.float64, init_scale=0.1)
    X = rng.integers(0, V, (T, B))
    Y = (X + 1) % V  # the next character is a function of this one
    h0 = np.zeros((B, H))
    state = optim.init_state(name, params)
    first = forward(params, X, Y, h0)[0]
    for step in range(40):
        loss, cache, _ = forward(params, X, Y, h0)
        grads = backward(params, cache)
        optim.clip_gradients(grads, "norm", 5.0)
        optim.update(cfg, params, grads, state, step, cfg.learning_rate)
    last = forward(params, X, Y, h0)[0]
    assert last < 0.5 * first, f"{name}: loss {first:.3f} -> {last:.3f}"
