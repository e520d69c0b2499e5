"""parallel.py's one promise: a batch's streams shared among worker threads give the loss, the
gradients and the carried state of the whole batch computed at once."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.model import backward, forward, init_params, zero_state
from charrnn.parallel import GradientWorkers, auto_workers, blas_threads

V, H, T, B = 7, 5, 6, 5


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("workers", [2, 3, 5])
@pytest.mark.parametrize("dropout", [False, True])
def test_split_batch_equals_whole_batch(cell, workers, dropout):
    rng = np.random.default_rng(0)
    params = init_params(V, H, rng, np.float64, init_scale=0.5, cell=cell, num_layers=2)
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state0 = rng.standard_normal(zero_state(params, B).shape) * 0.5  # (B, W), nonzero
    keep = (rng.random((2, T, B, H)) > 0.3) / 0.7 if dropout else None

    loss, cache, state = forward(params, X, Y, state0, keep=keep)
    grads = backward(params, cache)
    pool = GradientWorkers(B, workers)  # shares of 3 and 2, 2 2 1, 1 each
    try:
        loss_w, grads_w, state_w = pool(params, X, Y, state0, keep)
    finally:
        pool.close()

    assert loss_w == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(state_w, state, rtol=1e-12, atol=1e-14)
    assert grads_w.keys() == grads.keys()
    for k in grads:
        np.testing.assert_allclose(grads_w[k], grads[k], rtol=1e-10, atol=1e-13, err_msg=k)


def test_one_worker_is_the_plain_step():
    rng = np.random.default_rng(1)
    params = init_params(V, H, rng, np.float64, init_scale=0.5)
    X, Y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    state0 = np.zeros((B, H))
    loss, cache, _ = forward(params, X, Y, state0)
    grads = backward(params, cache)
    loss_1, grads_1, _ = GradientWorkers(B, 1)(params, X, Y, state0)
    assert loss_1 == loss
    for k in grads:
        assert grads_1[k].tobytes() == grads[k].tobytes(), k


def test_workers_never_exceed_streams():
    assert auto_workers(3, 8) == 3
    assert auto_workers(1) == 1
    assert 1 <= auto_workers(64) <= 64


def test_blas_threads_are_restored():
    from threadpoolctl import threadpool_info

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    with blas_threads(1):
        inside = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert all(n == 1 for n in inside)
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before
