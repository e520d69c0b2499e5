"""`charrnn gradflow` and charrnn/gradflow.py: the measured d loss_t / d S_{t-k} against float64
central differences of the carried state, for every cell and two layers; the vanishing of a
contracting vanilla RNN at the rate its Whh says; the table, --json, the plot and the errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXT, cli, usage_error, user_error

from charrnn import checkpoint as ckpt_io
from charrnn import gradflow
from charrnn.data import build_corpus
from charrnn.model import CELLS, architecture, init_params, log_softmax_loss, run, top_output

VOCAB = build_corpus(TEXT).vocab


def loss_at_end(params, ids, state) -> float:
    """loss_t after reading ids from state: -log p[target] of the character after the last."""
    *read, target = ids
    _, state = run(params, np.array(read)[:, None], state)
    return log_softmax_loss(params, top_output(params, state), np.array([target]))[0]


def state_after(params, ids):
    """The carried state (1, W) after reading ids from a zero state."""
    return run(params, np.array(ids, dtype=np.intp)[:, None], np.zeros((1, width(params))))[1]


def width(params) -> int:
    return architecture(params).state_width


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_state_gradients_match_central_differences(cell, num_layers):
    """Perturb the state carried into step t-k+1 (h, and c for the LSTM, of every layer),
    read the rest of the window from it and score x_{t+1}: the change is g_k."""
    rng = np.random.default_rng(3)
    V, burn_in, K, B = 5, 3, 6, 3
    params = init_params(V, 4, rng, np.float64, init_scale=1.0, cell=cell, num_layers=num_layers)
    for k in params:
        params[k] += 0.3 * rng.standard_normal(params[k].shape)  # biases too, gates off 0.5
    X = rng.integers(0, V, (burn_in + K, B))  # (burn_in + K, B)
    y = rng.integers(0, V, B)
    g = gradflow.state_gradients(params, X, y, burn_in)  # (K, B, W)
    assert g.shape == (K, B, width(params))
    eps = 1e-6
    for b in range(B):
        for k in range(1, K + 1):
            start = burn_in + K - k  # S_{t-k}: the state after reading X[:start]
            S = state_after(params, X[:start, b])  # (1, W)
            rest = [*X[start:, b], y[b]]
            numeric = np.empty(S.shape[1])
            for w in range(S.shape[1]):
                up, down = S.copy(), S.copy()
                up[0, w] += eps
                down[0, w] -= eps
                diff = loss_at_end(params, rest, up) - loss_at_end(params, rest, down)
                numeric[w] = diff / (2 * eps)
            err = np.abs(g[k - 1, b] - numeric).max() / max(np.abs(numeric).max(), 1e-12)
            assert err < 1e-6, (b, k, err)
            assert np.abs(numeric).max() > 1e-6  # a real gradient, not two zeros agreeing


def test_the_check_reaches_every_part_of_the_state():
    """The LSTM's c and a lower layer's h get gradients of their own, so the check above
    tests them, and a zero burn-in starts the window from the zero state."""
    rng = np.random.default_rng(4)
    params = init_params(5, 4, rng, np.float64, init_scale=1.0, cell="lstm", num_layers=2)
    g = gradflow.state_gradients(params, rng.integers(0, 5, (4, 2)), np.array([1, 2]), 0)
    parts = np.abs(g).reshape(4, 2, 2, 2, 4).max(axis=(1, 4))  # (K, L, S)
    assert (parts > 1e-8).all()


def test_a_contracting_vanilla_rnn_loses_half_its_gradient_per_step():
    """Tiny inputs keep h near 0, where tanh' = 1: dh_{t-1} = Whh^T dh_t exactly, and with Whh
    half an orthogonal matrix the norm halves at every step back."""
    params = init_params(6, 8, np.random.default_rng(5), np.float64, init_scale=1e-6)
    params["Whh"] *= 0.5
    flow = gradflow.measure(params, list("abcdef"), "abcdef" * 40, max_distance=12, burn_in=10)
    ratio = np.array([row["h_ratio"] for row in flow.rows()])
    np.testing.assert_allclose(ratio, 0.5 ** np.arange(12), rtol=1e-6)


def test_batched_positions_equal_one_at_a_time(monkeypatch):
    params = init_params(len(VOCAB), 6, np.random.default_rng(6), np.float64, cell="gru")
    whole = gradflow.measure(params, VOCAB, TEXT, max_distance=15, positions=9, burn_in=5)
    monkeypatch.setattr(gradflow, "BATCH", 2)
    parts = gradflow.measure(params, VOCAB, TEXT, max_distance=15, positions=9, burn_in=5)
    assert (whole.positions == parts.positions).all() and len(set(whole.positions)) == 9
    np.testing.assert_allclose(whole.norms, parts.norms, rtol=1e-12)


def test_a_short_text_gives_every_position_it_has():
    params = init_params(len(VOCAB), 6, np.random.default_rng(7), np.float64)
    text = TEXT[: 10 + 20 + 5]  # burn-in, window, and 5 more: t can be any of 5 places
    flow = gradflow.measure(params, VOCAB, text, max_distance=20, positions=100, burn_in=10)
    assert flow.positions.tolist() == [29, 30, 31, 32, 33]
    assert flow.to_dict()["positions"] == 5


# ---- the command ----


def save_model(path: Path, cell: str, num_layers: int = 1, seed: int = 0) -> Path:
    params = init_params(
        len(VOCAB), 8, np.random.default_rng(seed), cell=cell, num_layers=num_layers
    )
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=VOCAB, config={}), path)
    return path


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(TEXT[:3000], encoding="utf-8")
    return path


FAST = ["--max-distance", 30, "--positions", 12, "--burn-in", 10]


@pytest.mark.parametrize("cell", CELLS)
def test_table_of_every_cell(cell, tmp_path, text_file):
    ckpt = save_model(tmp_path / f"{cell}.npz", cell, num_layers=2)
    result = cli("gradflow", ckpt, text_file, *FAST)
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{ckpt}: {cell}, 2 layers of 8; ‖d loss_t / d h_(t-k)‖ (every layer's h together) "
        "over 12 positions"
    )
    assert lines[1].split() == ["k", "mean", "|dh|", "median", "/", "k=1"] + (
        ["mean", "|dc|", "median", "/", "k=1"] if cell == "lstm" else []
    )
    assert [int(line.split()[0]) for line in lines[2:]] == [1, 2, 5, 10, 20, 30]
    assert lines[2].split()[3] == "1.00e+00"  # the ratio to k = 1


def test_json_has_every_distance_and_matches_the_library(tmp_path, text_file):
    ckpt = save_model(tmp_path / "lstm.npz", "lstm", num_layers=2)
    result = cli("gradflow", ckpt, text_file, *FAST, "--rng-seed", 4, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {k: out[k] for k in ("max_distance", "positions", "burn_in", "rng_seed")} == {
        "max_distance": 30,
        "positions": 12,
        "burn_in": 10,
        "rng_seed": 4,
    }
    (model,) = out["models"]
    assert (model["checkpoint"], model["cell"], model["num_layers"]) == (str(ckpt), "lstm", 2)
    assert model["positions"] == 12
    rows = model["distances"]
    assert [r["k"] for r in rows] == list(range(1, 31))
    assert set(rows[0]) == {
        "k", "h_mean", "h_median", "h_ratio", "c_mean", "c_median", "c_ratio", "h_layers"
    }  # fmt: skip
    loaded = ckpt_io.load(ckpt)
    read = TEXT[: 12 * (10 + 30 + 1)]  # what the command reads: room for 12 windows
    flow = gradflow.measure(
        loaded.params, VOCAB, read, max_distance=30, positions=12, burn_in=10, rng_seed=4
    )
    assert rows == json.loads(json.dumps(flow.rows()))


def test_several_checkpoints_share_the_positions(tmp_path, text_file):
    a, b = save_model(tmp_path / "a.npz", "rnn"), save_model(tmp_path / "b.npz", "gru")
    result = cli("gradflow", a, b, text_file, *FAST, "--json")
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)["models"]
    assert [m["cell"] for m in models] == ["rnn", "gru"]
    table = cli("gradflow", a, b, text_file, *FAST).stdout
    assert table.count("over 12 positions") == 2 and "\n\n" in table


def test_the_seed_draws_the_positions(tmp_path, text_file):
    ckpt = save_model(tmp_path / "m.npz", "rnn")
    runs = [cli("gradflow", ckpt, text_file, *FAST, "--rng-seed", s, "--json") for s in (1, 1, 2)]
    assert runs[0].stdout == runs[1].stdout != runs[2].stdout


def test_png_and_its_notice(tmp_path, text_file):
    ckpt = save_model(tmp_path / "m.npz", "lstm")
    result = cli("gradflow", ckpt, text_file, *FAST, "-o", "flow.png")
    assert result.exit_code == 0, result.output
    assert result.stderr == "wrote flow.png\n"
    assert Path("flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli("gradflow", ckpt, text_file, *FAST, "-o", "q.png", "-q").stderr == ""


def test_without_matplotlib_the_error_says_what_to_install(tmp_path, text_file, monkeypatch):
    import sys

    ckpt = save_model(tmp_path / "m.npz", "rnn")
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert user_error(cli("gradflow", ckpt, text_file, *FAST, "-o", "flow.png")) == (
        "drawing an image needs matplotlib, which is not installed: pip install "
        "'charrnn[plot]' (or leave out -o for the table)"
    )
    assert cli("gradflow", ckpt, text_file, *FAST).exit_code == 0


def test_a_text_too_short_is_a_clean_error(tmp_path):
    ckpt = save_model(tmp_path / "m.npz", "rnn")
    (tmp_path / "short.txt").write_text("To be, or not to be", encoding="utf-8")
    assert user_error(cli("gradflow", ckpt, "short.txt")) == (
        "'short.txt' has 19 characters in the model's vocabulary; measuring 200 steps back "
        "after a burn-in of 100 needs at least 301: give a longer text or lower "
        "--max-distance or --burn-in"
    )


def test_missing_files_are_clean_errors(tmp_path, text_file):
    ckpt = save_model(tmp_path / "m.npz", "rnn")
    assert "missing.txt" in user_error(cli("gradflow", ckpt, "missing.txt", *FAST))
    assert "nothing.npz" in user_error(cli("gradflow", "nothing.npz", text_file, *FAST))


@pytest.mark.parametrize(
    ("args", "what", "says"),
    [
        (["--max-distance", "0"], "--max-distance", "1"),
        (["--positions", "0"], "--positions", "1"),
        (["--burn-in", "-1"], "--burn-in", "0"),
        ([], "CHECKPOINT...", ""),
    ],
)
def test_bad_values_are_usage_errors(args, what, says, tmp_path, text_file):
    ckpt = save_model(tmp_path / "m.npz", "rnn")
    given = [ckpt, text_file] if args else [text_file]  # []: the text but no checkpoint
    assert says in usage_error(cli("gradflow", *given, *args), what)


def test_encoding_and_only_the_text_it_needs(tmp_path):
    """--encoding reads the text as eval does; the positions need the first P x (burn-in + K
    + 1) characters, so bytes past them (here: not valid UTF-8) are never read."""
    ckpt = save_model(tmp_path / "m.npz", "rnn")
    P, K, burn = 12, 30, 10
    need = P * (burn + K + 1)
    text = tmp_path / "t.txt"
    text.write_bytes(TEXT[:need].encode("latin-1") + b"\xff\xfe bad")
    args = ["--max-distance", K, "--positions", P, "--burn-in", burn, "--json"]
    result = cli("gradflow", ckpt, text, *args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"][0]["positions"] == P
    latin = tmp_path / "latin.txt"
    latin.write_bytes(TEXT[:200].encode("latin-1") + b"\xe9" + TEXT[200:2000].encode("latin-1"))
    assert "byte offset 200" in user_error(cli("gradflow", ckpt, latin, *FAST))
    assert cli("gradflow", ckpt, latin, *FAST, "--encoding", "latin-1").exit_code == 0
    replaced = cli("gradflow", ckpt, latin, *FAST, "--decode-errors", "replace")
    assert replaced.exit_code == 0, replaced.output
