"""Beam search (`charrnn sample --beam K`, sample.beam_search): against exhaustive search over
every continuation on tiny models of every cell, one batched step per character, and the
command's output, JSON and refusals."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from helpers import PERIOD, cli, usage_error

from charrnn import checkpoint as ckpt_io
from charrnn import sample as sampling
from charrnn.model import CELLS, init_params, log_softmax_loss, run, zero_state

VOCAB = list("abcdefgh")


def log_prob(params, prime: list[int], continuation: tuple[int, ...]) -> float:
    """log p(continuation | prime) from a zero state, scored character by character."""
    ids = np.array([*prime, *continuation], dtype=np.intp)
    hs, _ = run(params, ids[:, None], zero_state(params, 1))  # (n + 1, 1, H): hs[j] reads ids[j]
    j = np.arange(len(prime), len(ids))
    return -float(log_softmax_loss(params, hs[j, 0], ids[j])[2].sum())


def tiny(cell: str, num_layers: int = 1, V: int = 3, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = init_params(V, 5, rng, np.float64, init_scale=1.5, cell=cell, num_layers=num_layers)
    params["by"] = rng.standard_normal(V)
    return params


@pytest.mark.parametrize("prime", [[], [2, 0]])
@pytest.mark.parametrize(("cell", "num_layers"), [*((c, 1) for c in CELLS), ("lstm", 2)])
def test_a_wide_enough_beam_is_exhaustive_search(cell, num_layers, prime):
    """Beam V^(L-1) never prunes: its N best are the N best of all V^L continuations, with the
    same log-probabilities; narrower beams find continuations scored exactly, never better."""
    V, L = 3, 4
    params = tiny(cell, num_layers, V)
    everything = sorted(
        ((log_prob(params, prime, c), c) for c in itertools.product(range(V), repeat=L)),
        key=lambda pair: -pair[0],
    )  # all 81, best first
    ids, scores = sampling.beam_search(params, prime, L, beam=V ** (L - 1), num_results=5)
    assert [tuple(row) for row in ids.tolist()] == [c for _, c in everything[:5]]
    np.testing.assert_allclose(scores, [s for s, _ in everything[:5]], rtol=0, atol=1e-12)
    for beam in (1, 2, 4):
        ids, scores = sampling.beam_search(params, prime, L, beam=beam, num_results=beam)
        assert scores[0] <= everything[0][0] + 1e-12
        assert (np.diff(scores) <= 0).all() and len({tuple(r) for r in ids.tolist()}) == beam
        exact = [log_prob(params, prime, tuple(row)) for row in ids.tolist()]
        np.testing.assert_allclose(scores, exact, rtol=0, atol=1e-12)


def test_the_beam_finds_what_greedy_misses():
    """A model where the likeliest first character leads nowhere likely: greedy (beam 1) takes
    it, a beam of 2 does not. The search, not luck, is what is tested above."""
    found = 0
    for seed in range(20):
        params = tiny("rnn", V=4, seed=seed)
        greedy = sampling.beam_search(params, [], 4, beam=1)[1][0]
        wide = sampling.beam_search(params, [], 4, beam=16)[1][0]
        assert wide >= greedy - 1e-12
        found += wide > greedy + 1e-9
    assert found >= 3


def test_k_beams_take_one_batched_step_per_character(monkeypatch):
    params = tiny("gru", V=4)
    rows = []
    real = sampling.step

    def counting(params, ids, state):
        rows.append((len(ids), len(state)))
        return real(params, ids, state)

    monkeypatch.setattr(sampling, "step", counting)
    sampling.beam_search(params, [1], 6, beam=5)
    assert rows == [(4, 4)] + [(5, 5)] * 4  # one beam grows into 4, then 5; none after the last


def test_fewer_continuations_than_asked_for():
    ids, scores = sampling.beam_search(tiny("rnn"), [], 1, beam=5, num_results=5)
    assert sorted(ids[:, 0].tolist()) == [0, 1, 2] and len(scores) == 3


# ---- the command ----


def checkpoint(path, cell: str = "rnn"):
    rng = np.random.default_rng(1)
    params = init_params(len(VOCAB), 12, rng, np.float64, init_scale=1.0, cell=cell)
    params["by"] = rng.standard_normal(len(VOCAB))
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=VOCAB, config={}), path)
    return path


@pytest.mark.parametrize("cell", CELLS)
def test_beam_1_is_argmax(cell, tmp_path):
    ckpt = checkpoint(tmp_path / "m.npz", cell)
    args = ["sample", "--checkpoint", ckpt, "--seed", "bad", "--length", 60, "-q"]
    beam, greedy = cli(*args, "--beam", 1), cli(*args, "--argmax")
    assert beam.exit_code == greedy.exit_code == 0, beam.output
    assert beam.stdout == greedy.stdout and beam.stderr == ""


def test_the_overfit_model_continues_its_text(overfit):
    result = cli("sample", "--checkpoint", overfit, "--seed", "abc", "--length", 13, "--beam", 4)
    assert result.exit_code == 0, result.output
    assert result.stdout == (PERIOD * 3)[:16] + "\n"
    assert result.stderr.startswith("beam search, width 4: log p = -0.0")


def test_several_beams_best_first_with_their_log_probabilities(tmp_path):
    ckpt = checkpoint(tmp_path / "m.npz")
    args = ["sample", "--checkpoint", ckpt, "--seed", "ab", "--length", 5, "--beam", 6]
    result = cli(*args, "--num-samples", 3, "--no-seed-echo")
    listed = cli(*args, "--num-samples", 3, "--json")
    assert result.exit_code == listed.exit_code == 0, result.output
    texts = json.loads(listed.stdout)
    params = ckpt_io.load(ckpt).params
    ids, scores = sampling.beam_search(params, [0, 1], 5, beam=6, num_results=3)
    assert texts == ["ab" + sampling.decode(row, VOCAB) for row in ids]
    assert result.stdout == "\n".join(
        f"==> beam {i} of 3, log p = {s:.4f} <==\n{t[2:]}\n"
        for i, (t, s) in enumerate(zip(texts, scores, strict=True), 1)
    )
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--temperature", "0.5"), ("--temperature", "1"), ("--top-k", "3"), ("--top-p", "0.9"),
     ("--argmax", None), ("--rng-seed", "1")],
)  # fmt: skip
def test_drawing_flags_are_usage_errors_with_beam(flag, value, tmp_path):
    ckpt = checkpoint(tmp_path / "m.npz")
    given = [flag] if value is None else [flag, value]
    result = cli("sample", "--checkpoint", ckpt, "--beam", 3, *given)
    assert result.exit_code == 2 and result.stdout == ""
    assert (
        f"Error: Invalid value for '{flag}': beam search draws nothing at random, so {flag} "
        f"would change nothing; leave out {flag} or --beam"
    ) in " ".join(result.stderr.split())


def test_more_samples_than_beams_is_a_usage_error(tmp_path):
    ckpt = checkpoint(tmp_path / "m.npz")
    result = cli("sample", "--checkpoint", ckpt, "--beam", 2, "--num-samples", 3)
    assert result.exit_code == 2
    assert "--beam 2 keeps 2 continuations; print at most that many, or widen the beam" in (
        " ".join(result.stderr.split())
    )
    assert "1" in usage_error(cli("sample", "--checkpoint", ckpt, "--beam", 0), "--beam")
