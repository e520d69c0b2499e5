"""Many files and records (docs/texts.md): where a document begins the carried state is zero,
checked against the model's own forward pass, with float64 gradients; train PATH... with files,
folders, globs and -; binary, empty and changed files; --val-file; resume refuses a changed set."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXT, TINY, cli, user_error
from test_cells import numerical_grad
from test_model import ARCHS, B, T, make_tiny

from charrnn import cache
from charrnn.data import Batches, Corpus, split_corpus
from charrnn.model import backward, forward, run, zero_state

RESETS = [(2, 0), (4, 2), (0, 1), (5, 0)]  # (t, b): stream b's state is zero before step t


def reset_mask() -> np.ndarray:
    resets = np.zeros((T, B), dtype=bool)
    for t, b in RESETS:
        resets[t, b] = True
    return resets


# ---- the math: a reset is a zero state, and nothing flows back through it ----


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_a_reset_is_the_forward_pass_from_a_zero_state(cell, num_layers):
    """Each stream's outputs with resets equal the model's own forward pass over the stream's
    pieces between resets, each from a zero state (the first from the carried state)."""
    params, X, _, state0 = make_tiny(cell, num_layers)
    resets = reset_mask()
    hs, last = run(params, X, state0, resets=resets)  # (T + 1, B, H), (B, W)
    for b in range(B):
        cuts = [0, *sorted(t for t, s in RESETS if s == b and t > 0), T]
        state = zero_state(params, 1) if resets[0, b] else state0[b : b + 1]
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            piece, end_state = run(params, X[start:end, b : b + 1], state)
            np.testing.assert_allclose(hs[start + 1 : end + 1, b], piece[1:, 0], atol=1e-12)
            state = zero_state(params, 1)
        np.testing.assert_allclose(last[b], end_state[0], atol=1e-12)
    assert not np.allclose(hs, run(params, X, state0)[0])  # the resets changed something


@pytest.mark.parametrize("cell,num_layers", ARCHS)
def test_gradient_check_with_resets(cell, num_layers):
    params, X, Y, state0 = make_tiny(cell, num_layers)
    resets = reset_mask()
    _, cache_, _ = forward(params, X, Y, state0, resets=resets)
    grads = backward(params, cache_)
    for name in params:
        num = numerical_grad(lambda: forward(params, X, Y, state0, resets=resets)[0], params[name])
        rel = np.abs(grads[name] - num) / np.maximum(np.abs(grads[name]) + np.abs(num), 1e-12)
        assert rel.max() < 1e-6, f"{name}: {rel.max():.2e}"


def test_no_resets_is_bitwise_the_old_pass():
    params, X, Y, state0 = make_tiny("lstm", 2)
    a = forward(params, X, Y, state0)[0]
    b = forward(params, X, Y, state0, resets=np.zeros((T, B), dtype=bool))[0]
    assert a == b


# ---- the data: where documents begin ----


def test_batches_say_where_documents_begin():
    ids = np.arange(40) % 7
    corpus = Corpus(ids, list("abcdefg"), starts=np.array([0, 5, 23], np.int64), documents=3)
    batches = Batches(ids, 2, 4, corpus)  # streams of 19 characters: [0, 19), [19, 38)
    first = batches.resets(0)  # positions 0..3 and 19..22
    assert first is not None and first[:, 0].tolist() == [True, False, False, False]
    assert not first[:, 1].any()
    second = batches.resets(1)  # 4..7 and 23..26
    assert second[:, 0].tolist() == [False, True, False, False]
    assert second[:, 1].tolist() == [True, False, False, False]
    one_file = Batches(ids, 2, 4, Corpus(ids, list("abcdefg"), starts=np.array([0])))
    assert one_file.resets(0) is None  # a single file trains exactly as before


def test_the_validation_tail_of_one_file_is_the_old_split():
    ids = np.arange(1000) % 9
    train, val = split_corpus(Corpus(ids, list("abcdefghi")), 0.1)
    assert len(train.ids) == 900 and np.array_equal(val.ids, ids[900:])
    assert val.resets(np.arange(10)) is None


# ---- through the command line ----


def texts(folder: Path) -> Path:
    """A folder of three documents, a hidden file, an empty one and a binary one."""
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(TEXT[:1500])
    (folder / "sub" / "b.txt").write_text(TEXT[1500:3000])
    (folder / "sub" / "c.md").write_text(TEXT[3000:4200])
    (folder / ".hidden.txt").write_text("\x01 never read")
    (folder / "empty.txt").write_text("")
    (folder / "image.png").write_bytes(b"\x89PNG\x00\x00binary")
    past = time.time() - 10
    for p in folder.rglob("*"):
        os.utime(p, (past, past))
    return folder


def prepared(*args):
    result = cli("prepare", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_folder_is_its_text_files_each_a_document(tmp_path):
    folder = texts(tmp_path / "t")
    got = prepared(folder)
    assert (got["documents"], got["chars"], got["skipped_files"]) == (3, 4200, 1)
    assert got["files"] == 5  # the hidden file is not one of them
    only_txt = prepared(folder, "--glob", "*.txt")
    assert (only_txt["documents"], only_txt["chars"]) == (2, 3000)
    assert prepared(folder)["reused"] is True


def test_files_folders_and_stdin_together(tmp_path):
    folder = texts(tmp_path / "t")
    (tmp_path / "x.txt").write_text(TEXT[5000:6000])
    result = cli("train", tmp_path / "x.txt", folder, "-", *TINY, "--max-steps", 3,
                 "--out", "r", "--json", "-q", input=TEXT[6000:7000])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["documents"], summary["chars"]) == (5, 1000 + 4200 + 1000)
    info = json.loads(cli("info", "r/last.npz", "--json").stdout)
    assert info["corpus"] == {"documents": 5, "chars": 6200}


def test_a_binary_file_named_on_its_own_is_refused_by_name(tmp_path):
    folder = texts(tmp_path / "t")
    message = user_error(cli("train", folder / "image.png", *TINY, "-q"))
    assert message == (
        f"'{folder / 'image.png'}' looks like a binary file (a NUL at byte 4), not text; "
        "give text files"
    )


def test_a_changed_added_or_removed_file_rebuilds_and_resume_refuses_it(tmp_path):
    folder = texts(tmp_path / "t")
    first = cli("train", folder, *TINY, "--max-steps", 2, "--out", "r", "-q")
    assert first.exit_code == 0, first.stderr
    assert prepared(folder)["reused"] is True
    (folder / "sub" / "d.txt").write_text(TEXT[4200:4300])  # the same characters, more of them
    assert prepared(folder)["reused"] is False
    message = user_error(cli("train", folder, "--resume", "r", "--max-steps", 4, "-q"))
    assert message.startswith("the corpus changed since the run was trained on it (then 3 ")
    (folder / "sub" / "d.txt").unlink()
    again = cli("train", folder, "--resume", "r", "--max-steps", 4, "-q")
    assert again.exit_code == 0, again.stderr  # the set it trained on, once more


def test_val_file_validates_on_a_separate_text(tmp_path):
    folder = texts(tmp_path / "t")
    held = tmp_path / "held.txt"
    held.write_text(TEXT[6000:6500] + "\u2603")  # a snowman the corpus lacks: left out
    result = cli("train", folder, *TINY, "--val-file", held, "--max-steps", 2, "--out", "r")
    assert result.exit_code == 0, result.stderr
    assert "4,200 training / 500 validation chars" in result.stderr
    import yaml

    assert yaml.safe_load(Path("r/config.yaml").read_text())["val_file"] == str(held)


def test_the_cache_command_lists_and_clears(tmp_path):
    folder = texts(tmp_path / "t")
    prepared(folder)
    prepared(tmp_path / "t" / "a.txt")
    listed = json.loads(cli("cache", "list", "--json").stdout)
    assert sorted(e["sources"][0] for e in listed) == sorted([str(folder / "a.txt"), str(folder)])
    assert all(Path(e["path"]).parent == tmp_path / "cache-home" / "charrnn" for e in listed)
    cleared = cli("prepare", folder, "--clear")
    assert cleared.exit_code == 0 and "deleted 1 cache entry" in cleared.stderr
    assert len(json.loads(cli("cache", "list", "--json").stdout)) == 1
    assert cli("cache", "clear").exit_code == 0
    assert json.loads(cli("cache", "list", "--json").stdout) == []


# ---- records: documents line and paragraph ----

WORDS = ["cat", "cow", "dog", "doe"]


@pytest.fixture(scope="module")
def records_run(tmp_path_factory):
    """A model trained on one word per line until it knows the words and where they end."""
    folder = tmp_path_factory.mktemp("records")
    corpus = folder / "words.txt"
    corpus.write_text("\n".join(WORDS * 150) + "\n\n\n")  # blank lines are no records
    result = cli("train", corpus, "--documents", "line", "--hidden-size", 24, "--seq-length", 12,
                 "--batch-size", 8, "--learning-rate", 0.02, "--max-steps", 300,
                 "--eval-every", 100, "--rng-seed", 1, "--out", folder / "run", "-q")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return corpus, folder / "run"


def test_the_ids_of_records_end_each_one(tmp_path):
    (tmp_path / "r.txt").write_bytes(b"ab\r\n\ncd\n\n\nef")
    lines = cache.prepare(tmp_path / "r.txt", documents="line").corpus
    assert lines.vocab == list("abcdef") and lines.end_id == 6 and lines.documents == 3
    assert np.asarray(lines.ids).tolist() == [6, 0, 1, 6, 2, 3, 6, 4, 5, 6]
    (tmp_path / "p.txt").write_text("a\nb\n\n\nc\n")
    paragraphs = cache.prepare(tmp_path / "p.txt", documents="paragraph").corpus
    assert paragraphs.vocab == ["\n", "a", "b", "c"] and paragraphs.documents == 2
    assert np.asarray(paragraphs.ids).tolist() == [4, 1, 0, 2, 4, 3, 4]
    small = cache.prepare(tmp_path / "p.txt", documents="paragraph", block_size=1).corpus
    assert np.asarray(small.ids).tolist() == np.asarray(paragraphs.ids).tolist()


def test_a_records_model_learns_to_end_them(records_run):
    corpus, run = records_run
    a = dict(np.load(run / "best.npz", allow_pickle=False))
    assert str(a["documents"]) == "line" and a["Why"].shape[0] == len(set("".join(WORDS))) + 1
    drawn = cli("sample", "--checkpoint", run, "--num-samples", 20, "--rng-seed", 3,
                "--temperature", 0.5, "--json", "-q")  # fmt: skip
    samples = json.loads(drawn.stdout)
    assert [s["ended"] for s in samples] == ["end"] * 20
    assert {s["text"] for s in samples} <= set(WORDS)
    printed = cli("sample", "--checkpoint", run, "--num-samples", 20, "--rng-seed", 3,
                  "--temperature", 0.5, "-q")  # fmt: skip
    assert printed.stdout == "".join(s["text"] + "\n" for s in samples)  # one per line
    primed = json.loads(cli("sample", "--checkpoint", run, "--seed", "d", "--argmax",
                            "--json", "-q").stdout)  # fmt: skip
    assert primed[0]["text"] in ("dog", "doe") and primed[0]["ended"] == "end"


def test_eval_of_records_scores_their_ends_and_says_so(records_run):
    corpus, run = records_run
    result = json.loads(cli("eval", corpus, "--checkpoint", run, "--json").stdout)
    assert result["record_ends"] == 600 and result["chars"] == 1800
    assert result["bpc"] < 0.6  # the second letter is a coin flip: 1 bit in 4 positions
    said = cli("eval", corpus, "--checkpoint", run).stdout
    assert "over 1,800 characters and 600 record ends (scored too)" in said
    import charrnn

    model = charrnn.load(run)
    scores = list(model.char_scores("cat\ndog\n"))
    assert [s["char"] for s in scores] == list("cat") + ["<end>"] + list("dog") + ["<end>"]
    assert scores[3]["p"] > 0.9  # after "cat" the record ends


def test_a_records_run_resumes_bitwise(records_run, tmp_path):
    corpus, _ = records_run
    args = [corpus, "--documents", "line", *TINY, "--eval-every", 3, "--checkpoint-every", 3]
    assert cli("train", *args, "--max-steps", 6, "--out", "a", "-q").exit_code == 0
    assert cli("train", *args, "--max-steps", 3, "--out", "b", "-q").exit_code == 0
    assert cli("train", corpus, "--resume", "b", "--max-steps", 6, "-q").exit_code == 0
    a, b = (dict(np.load(f"{r}/last.npz", allow_pickle=False)) for r in "ab")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a if k != "config")
