"""parallel.py's one promise: a batch's streams shared among workers (threads, or processes of
gradproc.py) give the loss, the gradients and the carried state of the whole batch computed at
once; worker processes give the same bits as threads, end with the run, and fail clearly."""

from __future__ import annotations

import numpy as np
import pytest

from charrnn.errors import TrainingError
from charrnn.model import backward, forward, init_params, zero_state
from charrnn.parallel import PROCESS_WORK, GradientWorkers, auto_workers, blas_threads, share_work

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


# ---- worker processes (charrnn/gradproc.py) ----


def _step_inputs(rng, params, dtype, batch):
    X, Y = rng.integers(0, V, (T, batch)), rng.integers(0, V, (T, batch))
    state0 = (rng.standard_normal(zero_state(params, batch).shape) * 0.5).astype(dtype)
    keep = ((rng.random((2, T, batch, H)) > 0.3) / 0.7).astype(dtype)
    resets = rng.random((T, batch)) < 0.2
    return X, Y, state0, keep, resets


def _run(pool, params, inputs, steps=2):
    """The last of a few steps (the weights change between them, as in training)."""
    try:
        for _ in range(steps):
            loss, grads, state = pool(params, *inputs)
            grads = {k: g.copy() for k, g in grads.items()}
            for k in params:
                params[k] -= 0.01 * grads[k]
        return loss, grads, state
    finally:
        pool.close()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_worker_processes_give_the_bits_of_threads(cell, dtype):
    """A share computed in a worker process is the same bits as in a thread: resets, dropout,
    carried state and changing weights included, so a run's results do not depend on which
    one parallel.py chose."""
    rng = np.random.default_rng(3)
    params = init_params(V, H, rng, dtype, init_scale=0.5, cell=cell, num_layers=2)
    inputs = _step_inputs(rng, params, dtype, 6)
    runs = {}
    for processes in (False, True):
        pool = GradientWorkers(6, 3, processes=processes)
        runs[processes] = _run(pool, {k: p.copy() for k, p in params.items()}, inputs)
        assert pool.processes is processes
    (loss_t, grads_t, state_t), (loss_p, grads_p, state_p) = runs[False], runs[True]
    assert loss_p == loss_t
    assert state_p.tobytes() == state_t.tobytes()
    for k in grads_t:
        assert grads_p[k].dtype == grads_t[k].dtype, k
        assert grads_p[k].tobytes() == grads_t[k].tobytes(), k


def test_a_big_step_goes_to_processes_and_a_small_one_to_threads():
    rng = np.random.default_rng(4)
    small = init_params(V, H, rng, np.float32, cell="gru")
    big = init_params(60, 256, rng, np.float32, cell="gru")
    assert share_work(big, 100, 16) >= PROCESS_WORK > share_work(small, T, B)
    for params, batch, length, expected in ((small, B, T, False), (big, 4, 100, True)):
        pool = GradientWorkers(batch, 2)
        X = rng.integers(0, 7, (length, batch))
        try:
            pool(params, X, X, zero_state(params, batch))
            assert pool.processes is expected
            assert len(pool.procs) == (1 if expected else 0)
        finally:
            pool.close()


def test_worker_processes_end_with_close():
    rng = np.random.default_rng(5)
    params = init_params(V, H, rng, np.float64, cell="gru")
    pool = GradientWorkers(B, 3, processes=True)
    pool(params, *_step_inputs(rng, params, np.float64, B)[:3])
    procs = [w.proc for w in pool.procs]
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    pool.close()
    assert all(p.poll() is not None for p in procs)


def test_a_worker_process_that_dies_is_a_clear_error_and_threads_go_on():
    """A worker killed mid-run (say by the kernel, out of memory) ends the step with a
    TrainingError that says what happened; the next call works, in threads."""
    rng = np.random.default_rng(6)
    params = init_params(V, H, rng, np.float64, cell="lstm")
    inputs = _step_inputs(rng, params, np.float64, B)
    pool = GradientWorkers(B, 2, processes=True)
    try:
        expected = pool(params, *inputs)[0]
        pool.procs[0].proc.kill()
        pool.procs[0].proc.wait()
        with pytest.raises(TrainingError, match="worker process ended unexpectedly.*workers=1"):
            pool(params, *inputs)
        assert pool.procs == [] and pool(params, *inputs)[0] == expected
    finally:
        pool.close()


def test_an_error_in_a_worker_process_is_raised_in_the_caller():
    """An error inside a worker's share comes back as that error (a character id out of range
    is an IndexError there as it is in a thread), and leaves no answer unread: the next call
    gives the right result."""
    rng = np.random.default_rng(7)
    params = init_params(V, H, rng, np.float64, cell="rnn")
    X, Y, state0, _, _ = _step_inputs(rng, params, np.float64, B)
    bad = X.copy()
    bad[:, -1] = V + 3  # only in the worker's share
    pool = GradientWorkers(B, 2, processes=True)
    try:
        expected = pool(params, X, Y, state0)[0]
        with pytest.raises(IndexError):
            pool(params, bad, Y, state0)
        assert pool(params, X, Y, state0)[0] == expected
    finally:
        pool.close()
