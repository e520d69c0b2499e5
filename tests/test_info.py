"""`charrnn info`: architecture, parameter count, vocabulary preview with escapes, dtype, step,
characters seen, best and last validation bpc, config and format version, as text and --json;
for a run folder, a lone checkpoint file, a format-1 file and the default checkpoint."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from helpers import REPO, TEXT, cli, metrics, user_error, write_corpus

from charrnn import checkpoint as ckpt_io
from charrnn.info import show_vocab

SMALL = ["--hidden-size", 8, "--seq-length", 8, "--batch-size", 2, "--rng-seed", 1, "-q"]


@pytest.fixture
def run(tmp_path) -> Path:
    """A 2-layer GRU run whose best.npz is older than its last step: a tab and a newline in the
    text, so the vocabulary preview has escapes."""
    corpus = write_corpus(tmp_path, TEXT[:2000].replace("  ", "\t"))
    args = ["--cell", "gru", "--num-layers", 2, "--max-steps", 12, "--eval-every", 4]
    result = cli("train", corpus, *SMALL, *args, "--out", "run")
    assert result.exit_code == 0, result.output
    return Path("run")


def expected_parameters(V: int, H: int, G: int, L: int) -> int:
    first = G * H * V + G * H * H + G * H  # Wxh (G H, V), Whh (G H, H), bh (G H,)
    above = G * H * H + G * H * H + G * H
    return first + (L - 1) * above + V * H + V  # Why (V, H), by (V,)


def test_info_json(run):
    result = cli("info", run, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    best = ckpt_io.load(run / "best.npz")
    vals = [r for r in metrics(run) if r.get("val_bpc") is not None]
    V = len(best.vocab)
    assert info == {
        "checkpoint": str(run / "best.npz"),
        "format_version": 3,
        "cell": "gru",
        "num_layers": 2,
        "hidden_size": 8,
        "parameters": expected_parameters(V, 8, 3, 2),
        "dtype": "float32",
        "vocab_size": V,
        "documents_mode": "file",
        "vocab_preview": show_vocab(best.vocab),
        "vocab": best.vocab,
        "step": best.step,
        "chars_seen": best.step * 2 * 8,
        "best_val_bpc": pytest.approx(min(r["val_bpc"] for r in vals)),
        "corpus": {"documents": 1, "chars": best.train_state["corpus"]["chars"]},
        "init_from": None,
        "run_steps": 12,
        "last_val_bpc": vals[-1]["val_bpc"],
        "last_val_step": 12,
        "config": best.config,
    }
    assert info["parameters"] == sum(a.size for a in best.params.values())
    assert info["vocab_preview"].startswith("\\t\\n !")


def test_info_text(run):
    result = cli("info", run)
    assert result.exit_code == 0, result.output
    info = json.loads(cli("info", run, "--json").stdout)
    lines = result.stdout.splitlines()
    assert lines[:6] == [
        f"checkpoint  {run / 'best.npz'} (format 3)",
        f"model       2-layer gru, hidden size 8, {info['parameters']:,} parameters, float32",
        f'vocabulary  {info["vocab_size"]} characters: "{info["vocab_preview"]}"',
        f"corpus      1 document, {info['corpus']['chars']:,} characters",
        f"trained     {info['step']:,} steps, {info['chars_seen']:,} characters seen"
        + ("" if info["step"] == 12 else " (the run went on to step 12)"),
        f"validation  best {info['best_val_bpc']:.4f} bpc; last {info['last_val_bpc']:.4f} bpc "
        "at step 12",
    ]
    assert lines[6].startswith("config      cell=gru num_layers=2 hidden_size=8 dropout=0.0 ")
    assert all(len(line) <= 100 for line in lines[6:]), lines
    assert " ".join(result.stdout.split("config", 1)[1].split()).endswith(
        "encoding=utf-8 decode_errors=strict documents=file val_file=None init_from=None"
    )


def test_last_checkpoint_and_a_file_outside_its_run(run, tmp_path):
    last = json.loads(cli("info", run / "last.npz", "--json").stdout)
    assert (last["step"], last["chars_seen"], last["run_steps"]) == (12, 192, 12)
    shutil.copy(run / "last.npz", tmp_path / "alone.npz")
    alone = cli("info", tmp_path / "alone.npz")
    assert alone.exit_code == 0, alone.output
    assert alone.stdout.splitlines()[4:6] == [
        "trained     12 steps, 192 characters seen",
        f"validation  best {last['best_val_bpc']:.4f} bpc",  # no metrics.jsonl beside it
    ]


def test_vocabulary_preview_escapes():
    vocab = ["\x00", "\t", "\n", "\r", " ", '"', "\\", "a", "é", "\u200b", "\u2028", "😀"]
    assert show_vocab(vocab) == '\\x00\\t\\n\\r \\"\\\\aé\\u200b\\u2028😀'
    assert show_vocab([chr(c) for c in range(65, 65 + 26)], limit=5) == "ABCDE"


def test_long_vocabulary_is_cut(tmp_path):
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 120)) * 20  # 120 CJK characters
    corpus = write_corpus(tmp_path, text)
    assert cli("train", corpus, *SMALL, "--max-steps", 2, "--out", "cjk").exit_code == 0
    line = cli("info", "cjk").stdout.splitlines()[2]
    assert line == f'vocabulary  120 characters: "{text[:80]}" and 40 more'


def test_format_1_checkpoint():
    info = json.loads(cli("info", REPO / "tests" / "data" / "format1.npz", "--json").stdout)
    assert (info["format_version"], info["cell"], info["num_layers"]) == (1, "rnn", 1)
    assert info["last_val_bpc"] is None and info["run_steps"] is None


def test_default_is_the_checkpoint_sample_would_use(run, monkeypatch):
    Path("runs").mkdir()
    shutil.copytree(run, "runs/a")
    assert json.loads(cli("info", "--json").stdout)["checkpoint"] == str(Path("runs/a/best.npz"))
    monkeypatch.setenv("CHARRNN_CHECKPOINT", str(run / "last.npz"))
    assert json.loads(cli("info", "--json").stdout)["checkpoint"] == str(run / "last.npz")


def test_missing_checkpoint_is_a_clean_error():
    assert user_error(cli("info", "nothing.npz")) == (
        "checkpoint 'nothing.npz' not found; check the path"
    )
    assert user_error(cli("info")).startswith("no trained model found under 'runs/'")


def test_bpc_is_loss_over_ln2(run):
    info = json.loads(cli("info", run, "--json").stdout)
    best = ckpt_io.load(run / "best.npz").train_state["best_val_loss"]
    assert info["best_val_bpc"] == best / math.log(2)
