"""`charrnn sample` and the sampler behind it: greedy decoding of an overfit model, seeds,
top-k/top-p, the first character of an empty seed, unknown seed characters. (A checkpoint that
does not load is refused the same way by every command: test_checkpoint.py.)"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import PERIOD, cli, usage_error, user_error

from charrnn import checkpoint as ckpt_io
from charrnn import sample as sampling
from charrnn.model import init_params, run_recurrence

VOCAB = list("abcdefgh")


def random_checkpoint(path: Path, hidden: int = 12, scale: float = 1.0, seed: int = 0) -> Path:
    """A checkpoint of an untrained model whose outputs are far from deterministic."""
    rng = np.random.default_rng(seed)
    params = init_params(len(VOCAB), hidden, rng, dtype=np.float64, init_scale=scale)
    params["by"] = rng.standard_normal(len(VOCAB))
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=VOCAB, config={}), path)
    return path


@pytest.fixture
def rand_ckpt(tmp_path) -> Path:
    return random_checkpoint(tmp_path / "random.npz")


def run(*args: str, input: str | None = None):
    return cli("sample", *args, input=input)


# ---- the command ----


def test_greedy_sampling_reproduces_the_periodic_text(overfit):
    result = run("--checkpoint", str(overfit), "--argmax", "--seed", "abc", "--length", "61", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == (PERIOD * 8)[:64] + "\n"
    assert result.stderr == ""


def test_no_seed_echo_prints_only_the_continuation(overfit):
    result = run(
        "--checkpoint",
        str(overfit),
        "--argmax",
        "--seed",
        "abc",
        "--length",
        "5",
        "--no-seed-echo",
        "-q",
    )
    assert result.stdout == "defgh\n"


def test_seed_file_primes_like_seed(overfit, tmp_path):
    long_prime = (PERIOD * 700)[:-3]  # 5,597 characters: more than one warm-up block
    (tmp_path / "prompt.txt").write_text(long_prime, encoding="utf-8")
    result = run(
        "--checkpoint",
        str(overfit),
        "--argmax",
        "--seed-file",
        "prompt.txt",
        "--length",
        "6",
        "--no-seed-echo",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "fghabc\n"


def test_same_rng_seed_same_text_another_seed_another_text(rand_ckpt):
    args = ["--checkpoint", str(rand_ckpt), "--length", "200", "-q"]
    first, again = run(*args, "--rng-seed", "7"), run(*args, "--rng-seed", "7")
    other = run(*args, "--rng-seed", "8")
    assert first.exit_code == again.exit_code == other.exit_code == 0
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout
    assert len(first.stdout) == 201


def test_top_k_1_equals_argmax(rand_ckpt):
    args = ["--checkpoint", str(rand_ckpt), "--seed", "bad", "--length", "100", "-q"]
    greedy = run(*args, "--argmax")
    top1 = run(*args, "--top-k", "1", "--rng-seed", "3", "--temperature", "2")
    sampled = run(*args, "--rng-seed", "3", "--temperature", "2")
    assert greedy.exit_code == top1.exit_code == 0
    assert top1.stdout == greedy.stdout
    assert sampled.stdout != greedy.stdout  # the seed and temperature matter without top-k 1


def test_empty_seed_starts_from_zero_state_first_char_from_by(tmp_path):
    path = random_checkpoint(tmp_path / "r.npz")
    ckpt = ckpt_io.load(path)
    ckpt.params["by"][:] = 0.0
    ckpt.params["by"][5] = 3.0  # h = 0, so the logits are by: 'f' is the most likely
    ckpt_io.save(ckpt, path)
    result = run("--checkpoint", str(path), "--argmax", "--length", "1", "-q")
    assert result.stdout == "f\n"


def test_num_samples_are_separated_and_json_is_a_list(rand_ckpt):
    args = [
        "--checkpoint",
        str(rand_ckpt),
        "--seed",
        "ab",
        "--length",
        "40",
        "--rng-seed",
        "1",
        "--num-samples",
        "3",
        "-q",
    ]
    text = run(*args)
    listed = run(*args, "--json")
    assert text.exit_code == listed.exit_code == 0
    listed = json.loads(listed.stdout)
    assert all(s["ended"] == "length" for s in listed)
    samples = [s["text"] for s in listed]
    assert len(samples) == 3 and all(s.startswith("ab") and len(s) == 42 for s in samples)
    assert len(set(samples)) == 3  # independent draws
    expected = "\n".join(f"==> sample {i} of 3 <==\n{s}\n" for i, s in enumerate(samples, 1))
    assert text.stdout == expected


def test_unknown_seed_characters_are_an_error_listing_them(rand_ckpt):
    result = run("--checkpoint", str(rand_ckpt), "--seed", "abXcY!")
    assert user_error(result) == (
        "the seed has 3 characters not in the model's vocabulary: '!', 'X', 'Y'; "
        "remove them or pass --unknown skip to drop them"
    )


def test_unknown_skip_drops_them_with_a_warning(overfit):
    result = run(
        "--checkpoint",
        str(overfit),
        "--seed",
        "abXc",
        "--unknown",
        "skip",
        "--argmax",
        "--length",
        "3",
        "--no-seed-echo",
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "def\n"  # the model read "abc"
    assert (
        "Warning: the seed's characters not in the model's vocabulary were skipped: 'X'"
        in result.stderr
    )


def test_default_checkpoint_is_the_latest_runs_best(overfit, tmp_path):
    old, new = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    old.mkdir(parents=True)
    new.mkdir()
    random_checkpoint(old / "best.npz")
    (new / "best.npz").write_bytes(overfit.read_bytes())
    os.utime(old / "best.npz", ns=(10**18, 10**18))
    os.utime(new / "best.npz", ns=(2 * 10**18, 2 * 10**18))  # written last: the latest
    result = run("--argmax", "--seed", "a", "--length", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "abcd\n"
    assert result.stderr == (
        f"Using checkpoint {Path('runs', 'b', 'best.npz')} (step {ckpt_io.load(overfit).step}; "
        "the most recently written runs/*/best.npz; pin one with --checkpoint or "
        "CHARRNN_CHECKPOINT)\n"
    )
    assert run("--argmax", "--length", "3", "--quiet").stderr == ""


def test_checkpoint_may_be_a_run_folder(overfit):
    result = run("--checkpoint", str(overfit.parent), "--argmax", "--seed", "e", "--length", "4")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "efgha\n", "")


def test_no_trained_model_is_a_clean_error():
    message = user_error(run("--length", "3"))
    assert message.startswith("no trained model found under 'runs/'")


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["--temperature", "0"], "--temperature", "must be a number > 0"),
        (["--temperature", "-1"], "--temperature", "must be a number > 0"),
        (["--temperature", "nan"], "--temperature", "must be a number > 0"),
        (["--top-k", "0"], "--top-k", "1"),
        (["--top-p", "0"], "--top-p", "must be > 0 and <= 1"),
        (["--top-p", "1.5"], "--top-p", "must be > 0 and <= 1"),
        (["--num-samples", "0"], "--num-samples", "1"),
        (["--length", "0"], "--length", "1"),
        (["--rng-seed", "-1"], "--rng-seed", "0"),
        (["--unknown", "maybe"], "--unknown", "'maybe'"),
        (["--seed", "a", "--seed-file", "f.txt"], "--seed-file", "give --seed or --seed-file"),
    ],
)  # fmt: skip
def test_out_of_range_options_are_usage_errors(args, flag, says, rand_ckpt):
    assert says in usage_error(run("--checkpoint", str(rand_ckpt), *args), flag)


# ---- the library ----


def test_draws_follow_softmax_with_temperature_top_k_and_top_p():
    """With Why = 0 every step draws from softmax(by / T), so frequencies can be checked."""
    rng = np.random.default_rng(0)
    params = init_params(7, 5, rng, dtype=np.float64)
    params["Why"][:] = 0.0
    params["by"] = np.log([0.30, 0.05, 0.25, 0.02, 0.08, 0.20, 0.10])
    for kw in [{}, {"temperature": 0.5}, {"top_k": 3}, {"top_p": 0.6}, {"top_k": 4, "top_p": 0.8}]:
        steps = sampling.generate(params, [], 500, 1, num_samples=40, **kw)
        ids = np.concatenate(list(steps))
        freq = np.bincount(ids, minlength=7) / len(ids)
        p = np.exp(params["by"] / kw.get("temperature", 1.0))
        p /= p.sum()
        order = np.argsort(-p)
        keep = np.zeros(7, dtype=bool)
        keep[order[: kw.get("top_k", 7)]] = True
        if "top_p" in kw:
            q = np.where(keep, p, 0) / p[keep].sum()
            keep[order[(np.cumsum(q[order]) - q[order]) >= kw["top_p"]]] = False
        expected = np.where(keep, p, 0) / p[keep].sum()
        assert np.abs(freq - expected).max() < 0.015, (kw, freq, expected)
        assert (freq[~keep] == 0).all()


def test_shorter_run_is_a_prefix_of_a_longer_one():
    params = init_params(8, 6, np.random.default_rng(1), dtype=np.float64, init_scale=1.0)
    short = np.array(list(sampling.generate(params, [1, 2], 30, 5, num_samples=2)))
    long = np.array(list(sampling.generate(params, [1, 2], 3000, 5, num_samples=2)))
    assert (short == long[:30]).all()


def test_warm_state_in_blocks_equals_one_pass(monkeypatch):
    params = init_params(8, 6, np.random.default_rng(2), dtype=np.float64, init_scale=1.0)
    prime = np.random.default_rng(3).integers(0, 8, 50)
    whole = run_recurrence(params, prime[:, None], np.zeros((1, 6)))[-1]
    monkeypatch.setattr(sampling, "WARM_BLOCK", 7)
    h = sampling.warm_state(params, prime, num_samples=3)
    assert h.shape == (3, 6)
    np.testing.assert_allclose(h, np.repeat(whole, 3, axis=0), rtol=0, atol=1e-12)


def test_generate_batches_the_samples_one_product_per_step(monkeypatch):
    """M samples cost one (M, H) x (H, H + V) product per character, not M."""
    params = init_params(8, 6, np.random.default_rng(4), dtype=np.float64)
    shapes = []
    real = np.matmul

    def counting(a, b, *args, **kw):
        shapes.append(a.shape)
        return real(a, b, *args, **kw)

    monkeypatch.setattr(sampling.np, "matmul", counting)
    list(sampling.generate(params, [], 10, 0, num_samples=5))
    assert shapes == [(5, 6)] * 10


class Recorder(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushed_at: list[int] = []

    def flush(self):
        self.flushed_at.append(len(self.getvalue()))


def test_write_samples_streams_and_flushes_often():
    ids = [np.array([i % 3]) for i in range(1000)]  # 'a', 'b', 'c' with no newline
    out = Recorder()
    sampling.write_samples(iter(ids), ["a", "b", "c"], out, prefix="ab")
    assert out.getvalue() == "ab" + "abc" * 333 + "a\n"
    gaps = np.diff([0, *out.flushed_at])
    assert gaps.max() <= sampling.FLUSH_EVERY + 2 and len(out.flushed_at) >= 1000 // 64


def test_a_tiny_temperature_is_greedy_without_overflow():
    params = init_params(8, 6, np.random.default_rng(5), dtype=np.float32, init_scale=3.0)
    cold = np.array(list(sampling.generate(params, [0], 50, 0, temperature=1e-4)))
    greedy = np.array(list(sampling.generate(params, [0], 50, argmax=True)))
    assert (cold == greedy).all()


@pytest.mark.parametrize("top", [{}, {"top_k": 3}, {"top_p": 0.9}, {"top_k": 3, "top_p": 0.5}])
@pytest.mark.parametrize("temperature", [1e-40, 1e-300, 5e-324])
def test_a_temperature_far_below_float32s_range_is_greedy_without_overflow(temperature, top):
    """1 / T overflows float32 (and for 5e-324, float64): the draw must still be the greedy one,
    with no overflow or invalid-value warning from NumPy."""
    params = init_params(8, 6, np.random.default_rng(5), dtype=np.float32, init_scale=3.0)
    greedy = np.array(list(sampling.generate(params, [0], 50, argmax=True)))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # an error here, not a warning
        cold = np.array(list(sampling.generate(params, [0], 50, 0, temperature=temperature, **top)))
    assert (cold == greedy).all()


@pytest.mark.parametrize("temperature", [1e30, 1e300])
def test_a_huge_temperature_draws_uniformly_without_overflow(temperature):
    params = init_params(8, 6, np.random.default_rng(5), dtype=np.float32, init_scale=3.0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        ids = np.array(list(sampling.generate(params, [0], 4000, 0, temperature=temperature)))
    counts = np.bincount(ids.ravel(), minlength=8)
    assert counts.min() > 350  # 500 expected for each of 8 characters


def test_tiny_temperature_through_the_command_prints_no_warnings(tmp_path):
    """As a user runs it, without -q: the greedy text on stdout and nothing on stderr."""
    params = init_params(len(VOCAB), 6, np.random.default_rng(5), dtype=np.float32, init_scale=3)
    path = tmp_path / "f32.npz"
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=VOCAB, config={}), path)
    greedy = run("--checkpoint", path, "--argmax", "--seed", "a", "--length", 40)
    assert greedy.exit_code == 0 and greedy.stderr == ""
    for extra in ([], ["--top-p", "0.9"], ["--top-k", "2"]):
        proc = subprocess.run(
            [sys.executable, "-m", "charrnn", "sample", "--checkpoint", str(path), "--seed", "a",
             "--length", "40", "--temperature", "1e-40", "--rng-seed", "1", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (proc.returncode, proc.stderr) == (0, "")
        assert proc.stdout == greedy.stdout


# ---- --stop ----


def greedy(overfit, *args):
    return run("--checkpoint", str(overfit), "--argmax", "--seed", "a", "-q", *args)


def test_stop_ends_the_sample_before_the_stop_string(overfit):
    full = greedy(overfit, "--length", "20")
    assert full.stdout == "abcdefghabcdefghabcde\n"
    stopped = greedy(overfit, "--length", "20", "--stop", "fg")
    assert stopped.exit_code == 0 and stopped.stdout == "abcde\n"
    listed = greedy(overfit, "--length", "20", "--stop", "fg", "--json")
    assert json.loads(listed.stdout) == [{"text": "abcde", "ended": "stop"}]


def test_the_first_stop_drawn_ends_it_and_the_seed_does_not_count(overfit):
    # "cd" is drawn before "h"; the seed's own "a" is not a stop of the continuation
    two = greedy(overfit, "--length", "20", "--stop", "h", "--stop", "cd", "--stop", "a")
    assert two.stdout == "ab\n"
    # a stop that spans the hold-back: 'hab' starts before 'b' completes it
    assert greedy(overfit, "--length", "20", "--stop", "hab").stdout == "abcdefg\n"
    never = greedy(overfit, "--length", "10", "--stop", "xyz", "--json")
    assert json.loads(never.stdout) == [{"text": "abcdefghabc", "ended": "length"}]


def test_stop_with_several_samples_prints_each_to_its_end(rand_ckpt):
    args = ["--checkpoint", str(rand_ckpt), "--length", "300", "--rng-seed", "2", "-q"]
    args += ["--num-samples", "4", "--stop", "cd"]
    listed = json.loads(run(*args, "--json").stdout)
    assert [s["ended"] for s in listed] == ["stop"] * 4  # this model draws 'cd' often
    assert all("cd" not in s["text"] for s in listed)
    assert len({len(s["text"]) for s in listed}) > 1  # each sample ends where it draws it
    printed = run(*args).stdout
    expected = "\n".join(f"==> sample {i} of 4 <==\n{s['text']}\n" for i, s in enumerate(listed, 1))
    assert printed == expected
    # each is the prefix of the same draw without --stop
    free = json.loads(run(*args[:-2], "--json").stdout)
    assert all(f["text"].startswith(s["text"]) for f, s in zip(free, listed, strict=True))


def test_an_empty_stop_or_stop_with_beam_is_a_usage_error(overfit):
    assert "must not be empty" in greedy(overfit, "--stop", "").stderr
    assert greedy(overfit, "--stop", "").exit_code == 2
    beam = run("--checkpoint", str(overfit), "--beam", "2", "--stop", "a")
    assert beam.exit_code == 2 and "cannot end at a stop string" in beam.stderr


def test_model_sample_stop_in_the_library(overfit):
    import charrnn
    from charrnn.errors import CharRNNError

    model = charrnn.load(overfit)
    assert model.sample("a", 20, argmax=True, stop=["fg"]) == "abcde"
    assert model.samples("a", 20, argmax=True, stop="fg")[0].ended == "stop"
    with pytest.raises(CharRNNError, match="non-empty"):
        model.sample("a", 5, stop=[""])
