"""Fine-tuning (train --init-from, docs/texts.md): the architecture from the checkpoint (a flag
that would change it refused), the vocabulary the union (old rows kept, new ones as in a fresh
model), optimizer and step fresh, info and config say where it started, bitwise resume."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from helpers import TEXT, arrays, cli, user_error

from charrnn import checkpoint as ckpt_io
from charrnn.model import init_params

BASE = ["--cell", "gru", "--hidden-size", 12, "--seq-length", 8, "--batch-size", 2]
NEW_TEXT = "Zebra quux! Über alles, ça va.\n" * 60  # Z, Ü, ç... are not in TEXT[:3000]


@pytest.fixture
def base(tmp_path):
    corpus = tmp_path / "base.txt"
    corpus.write_text(TEXT[:3000])
    result = cli("train", corpus, *BASE, "--max-steps", 6, "--rng-seed", 1, "--out", "base", "-q")
    assert result.exit_code == 0, result.stderr
    new = tmp_path / "new.txt"
    new.write_text(NEW_TEXT)
    return new


def same(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-20)  # an update of 1e-30 at most


def tune(new, *args):
    return cli("train", new, "--init-from", "base", "--seq-length", 8, "--batch-size", 2,
               "--rng-seed", 5, *args)  # fmt: skip


def test_old_characters_keep_their_rows_new_ones_start_fresh(base):
    # one step of a learning rate too small to move a float32 weight: the weights it started with
    result = tune(base, "--max-steps", 1, "--learning-rate", 1e-30, "--out", "ft", "-q")
    assert result.exit_code == 0, result.stderr
    old, new = ckpt_io.load("base/best.npz"), ckpt_io.load("ft/last.npz")
    assert new.vocab == sorted(set(old.vocab) | set(NEW_TEXT))
    assert {"Z", "Ü", "ç"} <= set(new.vocab) - set(old.vocab)
    for c in old.vocab:  # the same row under the character's new id
        i, j = old.vocab.index(c), new.vocab.index(c)
        same(new.params["Wxh"][:, j], old.params["Wxh"][:, i])
        same(new.params["Why"][j], old.params["Why"][i])
        same(new.params["by"][j], old.params["by"][i])
    for k in ("Whh", "bh"):
        same(new.params[k], old.params[k])
    # a new character's rows are a fresh model's of the union, from the run's seed
    fresh = init_params(len(new.vocab), 12, np.random.default_rng(5), np.float32, 0.08, "gru")
    z = new.vocab.index("Z")
    same(new.params["Why"][z], fresh["Why"][z])
    assert new.step == 1  # a new run: its own step count and optimizer
    cfg = yaml.safe_load(open("ft/config.yaml"))
    assert cfg["init_from"].endswith("base/best.npz") and cfg["cell"] == "gru"
    info = cli("info", "ft/last.npz").stdout
    assert "started     from " in info and "base/best.npz (fine-tuned)" in info


def test_a_flag_that_would_change_the_architecture_is_refused(base):
    message = user_error(tune(base, "--hidden-size", 32, "-q"))
    assert message == (
        "--init-from takes the architecture from its checkpoint (a 1-layer gru of hidden_size "
        "12 in float32), so hidden_size 32 cannot apply; leave it out, or train a new model "
        "without --init-from"
    )
    assert "cell 'lstm'" in user_error(tune(base, "--set", "cell=lstm", "-q"))
    assert tune(base, "--hidden-size", 12, "--max-steps", 1, "--out", "same", "-q").exit_code == 0
    missing = user_error(cli("train", base, "--init-from", "nowhere", "-q"))
    assert "nowhere" in missing


def test_a_fine_tuned_run_resumes_bitwise(base):
    args = ["--eval-every", 2, "--checkpoint-every", 2]
    assert tune(base, *args, "--max-steps", 6, "--out", "a", "-q").exit_code == 0
    assert tune(base, *args, "--max-steps", 3, "--out", "b", "-q").exit_code == 0
    again = cli("train", base, "--resume", "b", "--max-steps", 6, "-q")
    assert again.exit_code == 0, again.stderr
    a, b = arrays("a/last.npz"), arrays("b/last.npz")
    assert sorted(a) == sorted(b)
    assert all(np.array_equal(a[k], b[k]) for k in a if k not in ("config", "train_state"))
