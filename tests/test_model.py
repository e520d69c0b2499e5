"""Tests of charrnn.model: gradients by float64 central differences for every cell, 1 and 2
layers, a carried state and dropout; the one-hot lookup and the scatter-add of dWxh; the
architecture read from the arrays; the initialisation; inference (`run`, `step`); chunked
validation loss; and overfitting a short text."""

import numpy as np
import pytest
from test_cells import numerical_grad

from charrnn import checkpoint as ckpt_io
from charrnn.config import Config
from charrnn.data import build_corpus
from charrnn.evaluate import chunked_loss
from charrnn.model import (
    CELLS,
    Arch,
    architecture,
    backward,
    forward,
    init_params,
    input_grad,
    log_softmax_loss,
    param_names,
    param_shapes,
    run,
    run_recurrence,
    step,
    top_output,
    zero_state,
)
from charrnn.sample import generate
from charrnn.train import train

V, H, T, B = 5, 4, 6, 3
STATES = {"rnn": 1, "lstm": 2, "gru": 1}
ARCHS = [(cell, layers) for cell in CELLS for layers in (1, 2)]


def onehot(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.eye(vocab_size)[ids]  # (..., V)


def make_tiny(cell="rnn", num_layers=1, seed=0):
    """A float64 model with weights large enough that every gradient is well away from zero,
    nonzero biases, random ids (T, B) and a nonzero carried state (B, W): every layer's h, and
    c for the LSTM."""
    rng = np.random.default_rng(seed)
    params = init_params(V, H, rng, np.float64, 0.5, cell=cell, num_layers=num_layers)
    for name in params:
        if name.startswith("b"):
            params[name] = params[name] + rng.standard_normal(params[name].shape) * 0.3
    X = rng.integers(0, V, (T, B))
    Y = rng.integers(0, V, (T, B))
    state0 = np.tanh(rng.standard_normal((B, num_layers * STATES[cell] * H))) * 1.5
    return params, X, Y, state0


def dropout_masks(num_layers, p=0.4, seed=1):
    """Inverted-dropout keep masks (L, T, B, H): 0 or 1 / (1 - p)."""
    kept = np.random.default_rng(seed).random((num_layers, T, B, H)) >= p
    return kept / (1 - p)


@pytest.fixture
def tiny():
    return make_tiny()


# ---- gradients ----


def max_relative_errors(params, X, Y, state0, keep=None) -> dict[str, float]:
    _, cache, _ = forward(params, X, Y, state0, keep=keep)
    grads = backward(params, cache)
    assert set(grads) == set(params)
    errors = {}
    for name in params:
        num = numerical_grad(lambda: forward(params, X, Y, state0, keep=keep)[0], params[name])
        ana = grads[name]
        assert ana.shape == params[name].shape and ana.dtype == np.float64
        rel = np.abs(ana - num) / np.maximum(np.abs(ana) + np.abs(num), 1e-12)
        errors[name] = float(rel.max())
    return errors


@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_gradient_check_all_parameters(cell, num_layers, dropout):
    params, X, Y, state0 = make_tiny(cell, num_layers)
    keep = dropout_masks(num_layers) if dropout else None
    errors = max_relative_errors(params, X, Y, state0, keep)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, f"{worst}: max relative error {errors[worst]:.2e}"


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_carried_state_changes_loss_and_gradients(cell, num_layers):
    # the gradient check above is only meaningful for the state if every part of it (each
    # layer's h, and c) enters the computation
    params, X, Y, state0 = make_tiny(cell, num_layers)
    _, cache, _ = forward(params, X, Y, state0)
    reference = backward(params, cache)
    for k in range(num_layers * STATES[cell]):
        part = state0.copy()
        part[:, k * H : (k + 1) * H] = 0.0
        _, cache_k, _ = forward(params, X, Y, part)
        changed = backward(params, cache_k)
        assert not np.allclose(reference["Whh"], changed["Whh"]), f"state block {k}"
        assert not np.allclose(reference["Why"], changed["Why"]), f"state block {k}"


def test_dropout_masks_enter_the_computation():
    params, X, Y, state0 = make_tiny("lstm", 2)
    loss, _, _ = forward(params, X, Y, state0)
    ones = np.ones((2, T, B, H))
    assert forward(params, X, Y, state0, keep=ones)[0] == pytest.approx(loss, rel=1e-14)
    # everything the output layer reads dropped: p_t = softmax(by) at every position
    top_dropped = ones.copy()
    top_dropped[1] = 0.0
    logp = params["by"] - np.log(np.exp(params["by"]).sum())
    expected = -logp[Y].mean()
    assert forward(params, X, Y, state0, keep=top_dropped)[0] == pytest.approx(expected)
    # a mask on the lower layer changes the loss
    low = ones.copy()
    low[0, 2] = 0.0
    assert forward(params, X, Y, state0, keep=low)[0] != pytest.approx(loss, rel=1e-9)


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_forward_returns_last_state_and_mean_loss(cell, num_layers):
    params, X, Y, state0 = make_tiny(cell, num_layers)
    loss, _, state_last = forward(params, X, Y, state0)
    hs, run_last = run(params, X, state0)
    np.testing.assert_array_equal(state_last, run_last)
    assert state_last.shape == state0.shape
    np.testing.assert_array_equal(top_output(params, state_last), hs[T])
    np.testing.assert_array_equal(top_output(params, state0), hs[0])
    # the mean over T * B characters of -log softmax(Why h + by)[target]
    logits = hs[1:] @ params["Why"].T + params["by"]  # (T, B, V)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    expected = -np.take_along_axis(logp, Y[..., None], axis=-1).mean()
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_step_repeated_equals_run(cell, num_layers):
    params, X, _, state0 = make_tiny(cell, num_layers)
    hs, state_last = run(params, X, state0)
    state = state0
    for t in range(T):
        h, state = step(params, X[t], state)
        np.testing.assert_allclose(h, hs[t + 1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state, state_last, rtol=1e-12, atol=1e-14)


def test_input_grad_equals_onehot_product():
    rng = np.random.default_rng(1)
    N, Hd, Vd = 40, 6, 9
    dax = rng.standard_normal((N, Hd))
    x = rng.integers(0, Vd - 2, N)  # the last two characters never occur: their columns are 0
    x[:5] = 3  # and some id repeats many times
    expected = dax.T @ onehot(x, Vd)  # (H, V): sum_t dax_t x_t^T
    got = input_grad(dax, x, Vd)
    assert got.shape == (Hd, Vd)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert not got[:, -2:].any()


def test_input_grad_single_position():
    dax = np.array([[1.0, -2.0]])
    np.testing.assert_array_equal(
        input_grad(dax, np.array([2]), 3), [[0.0, 0.0, 1.0], [0.0, 0.0, -2.0]]
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


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_float32_stays_float32(cell, num_layers):
    rng = np.random.default_rng(2)
    params = init_params(7, 5, rng, np.float32, cell=cell, num_layers=num_layers)
    state0 = zero_state(params, 2)
    assert state0.dtype == np.float32
    X, Y = rng.integers(0, 7, (4, 2)), rng.integers(0, 7, (4, 2))
    hs, state = run(params, X, state0)
    assert hs.dtype == state.dtype == np.float32
    keep = np.ones((num_layers, 4, 2, 5), np.float32)
    loss, cache, state_last = forward(params, X, Y, state0, keep=keep)
    assert all(g.dtype == np.float32 for g in backward(params, cache).values())
    assert state_last.dtype == np.float32
    h, state = step(params, X[0], state0)
    assert h.dtype == state.dtype == np.float32


# ---- architecture ----


@pytest.mark.parametrize("cell,num_layers", ARCHS + [("lstm", 3)])
def test_architecture_round_trip(cell, num_layers):
    params = init_params(11, 8, np.random.default_rng(3), cell=cell, num_layers=num_layers)
    arch = architecture(params)
    assert arch == Arch(cell, num_layers, 8, 11)
    assert arch.state_width == num_layers * STATES[cell] * 8
    assert tuple(params) == param_names(arch)
    assert {k: v.shape for k, v in params.items()} == param_shapes(arch)
    assert zero_state(arch, 3).shape == (3, arch.state_width)


def test_names_of_a_stacked_lstm():
    params = init_params(11, 8, np.random.default_rng(3), cell="lstm", num_layers=2)
    assert {k: v.shape for k, v in params.items()} == {
        "Wxh": (32, 11),
        "Whh": (32, 8),
        "bh": (32,),
        "Wxh_1": (32, 8),
        "Whh_1": (32, 8),
        "bh_1": (32,),
        "Why": (11, 8),
        "by": (11,),
    }


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: p.pop("bh_1"), "missing bh_1"),
        (lambda p: p.update(Wxh_2=p["Wxh_1"]), "unexpected Wxh_2"),
        (lambda p: p.update(Whh=np.zeros((16, 8))), "'Whh' has shape (16, 8)"),
        (lambda p: p.update(Whh=np.zeros((24, 7))), "'Whh' has shape (24, 7)"),
        (lambda p: p.update(Wxh_1=np.zeros((24, 9))), "'Wxh_1' has shape (24, 9)"),
        (lambda p: p.update(by=np.zeros(10)), "'by' has shape (10,)"),
        (lambda p: p.pop("Why"), "no 'Why'"),
    ],
)
def test_architecture_refuses_inconsistent_arrays(change, message):
    params = init_params(11, 8, np.random.default_rng(3), cell="gru", num_layers=2)
    change(params)
    with pytest.raises(ValueError) as info:
        architecture(params)
    assert message in str(info.value)


# ---- initialisation ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_init_params_shapes_and_orthogonal_recurrence(dtype):
    params = init_params(11, 8, np.random.default_rng(3), dtype)
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {"Wxh": (8, 11), "Whh": (8, 8), "bh": (8,), "Why": (11, 8), "by": (11,)}
    assert tuple(params) == ("Wxh", "Whh", "bh", "Why", "by")
    assert all(v.dtype == dtype for v in params.values())
    Whh = params["Whh"].astype(np.float64)
    np.testing.assert_allclose(Whh @ Whh.T, np.eye(8), atol=1e-5)
    assert not params["bh"].any() and not params["by"].any()
    assert np.abs(params["Wxh"]).max() < 0.1  # small: std init_scale = 0.01


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_layer_rnn_draws_what_it_always_drew(dtype):
    # the draws of init_params before cells existed, in their order: Whh, Wxh, Why
    rng = np.random.default_rng(12)
    q, r = np.linalg.qr(rng.standard_normal((8, 8)))
    q *= np.sign(np.diag(r))
    old = {
        "Wxh": rng.standard_normal((8, 11)) * 0.03,
        "Whh": q,
        "bh": np.zeros(8),
        "Why": rng.standard_normal((11, 8)) * 0.03,
        "by": np.zeros(11),
    }
    new = init_params(11, 8, np.random.default_rng(12), dtype, init_scale=0.03)
    assert list(new) == list(old)
    for k, v in old.items():
        assert new[k].tobytes() == np.ascontiguousarray(v, dtype=dtype).tobytes(), k


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_init_params_depends_only_on_the_generator(cell, num_layers):
    kw = {"cell": cell, "num_layers": num_layers}
    a = init_params(6, 4, np.random.default_rng(9), **kw)
    b = init_params(6, 4, np.random.default_rng(9), **kw)
    c = init_params(6, 4, np.random.default_rng(10), **kw)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["Whh"], c["Whh"])


def test_init_params_refuses_unknown_cell():
    with pytest.raises(ValueError):
        init_params(6, 4, np.random.default_rng(0), cell="transformer")
    with pytest.raises(ValueError):
        init_params(6, 4, np.random.default_rng(0), num_layers=0)


# ---- validation loss (evaluate.chunked_loss: the model's run over many streams) ----


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_chunked_loss_single_stream_equals_forward(cell, num_layers):
    rng = np.random.default_rng(4)
    params = init_params(V, H, rng, np.float64, 0.5, cell=cell, num_layers=num_layers)
    ids = rng.integers(0, V, 50)
    loss, n = chunked_loss(params, ids, n_streams=1, chunk=7)  # chunks carry the state
    expected, _, _ = forward(params, ids[:-1, None], ids[1:, None], zero_state(params, 1))
    assert n == 49
    assert loss == pytest.approx(expected, rel=1e-12)


def test_chunked_loss_streams_read_their_burn_in_first():
    # stream s > 0 reads the burn_in characters before its part unscored, from a zero state
    rng = np.random.default_rng(5)
    params = init_params(V, H, rng, np.float64, init_scale=0.5, cell="lstm", num_layers=2)
    ids = rng.integers(0, V, 61)
    S, burn = 3, 6
    loss, n = chunked_loss(params, ids, n_streams=S, chunk=5, burn_in=burn)
    L = 60 // S
    total = 0.0
    for s in range(S):
        begin = s * L - (burn if s else 0)
        x = ids[begin : s * L + L + 1]
        hs, _ = run(params, x[:-1, None], zero_state(params, 1))
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
