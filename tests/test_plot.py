"""`charrnn plot`: train and validation bpc of one or several runs, against steps, training
characters or time; a PNG through matplotlib (its size, and pixels drawn in each run's colour),
a clear error without matplotlib, and a text chart without -o."""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXT, cli, metrics, usage_error, user_error, write_corpus

from charrnn.plot import read_curves

SMALL = ["--hidden-size", 8, "--seq-length", 8, "--batch-size", 2, "-q"]
C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two colours


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of 40 steps, validated every 5 steps, with different learning rates."""
    folder = tmp_path_factory.mktemp("plot")
    corpus = write_corpus(folder, TEXT[:3000])
    made = []
    for name, lr in (("a", 0.01), ("b", 0.002)):
        out = folder / name
        args = ["--max-steps", 40, "--eval-every", 5, "--learning-rate", lr, "--rng-seed", 1]
        result = cli("train", corpus, *SMALL, *args, "--out", out)
        assert result.exit_code == 0, result.output
        made.append(out)
    return made[0], made[1]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pixels_near(image: np.ndarray, rgb: tuple[int, int, int], tol: float = 0.08) -> int:
    return int((np.abs(image[..., :3] - np.array(rgb) / 255).max(axis=-1) < tol).sum())


def test_png_of_two_runs(runs):
    from matplotlib.image import imread

    result = cli("plot", *runs, "-o", "curves.png")
    assert result.exit_code == 0, result.output
    assert (result.stdout, result.stderr) == ("", "wrote curves.png\n")
    assert png_size(Path("curves.png")) == (990, 550)  # 9 x 5 inches at 110 dpi
    image = imread("curves.png")  # (550, 990, 4) floats
    drawn = (image[..., :3] < 0.9).any(axis=-1).mean()
    assert 0.02 < drawn < 0.5  # axes, labels and curves on a white ground
    assert pixels_near(image, C0) > 300 and pixels_near(image, C1) > 300  # one colour per run


def test_png_against_chars_and_time(runs):
    for x in ("chars", "time"):
        result = cli("plot", runs[0], "--x", x, "-o", f"{x}.png", "-q")
        assert (result.exit_code, result.stderr) == (0, ""), result.output
        assert png_size(Path(f"{x}.png")) == (990, 550)


def test_without_matplotlib_the_error_says_what_to_install(runs, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    assert user_error(cli("plot", runs[0], "-o", "curves.png")) == (
        "drawing an image needs matplotlib, which is not installed: pip install "
        "'charrnn[plot]' (or leave out -o for a text chart)"
    )
    assert not Path("curves.png").exists()
    assert cli("plot", runs[0]).exit_code == 0  # the text chart needs no matplotlib


def test_text_chart(runs):
    result = cli("plot", *runs)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 14 + 2 + 2  # plot rows, axis, x labels, one legend line per run
    assert lines[-2:] == [f"  ● {runs[0]} val   · train", f"  ◆ {runs[1]} val   · train"]
    rows = lines[:14]
    assert all(len(row) == 8 + 1 + 64 for row in rows)
    assert rows[0].startswith(" ") and rows[0][8] == "┤" and rows[1][8] == "│"
    assert lines[14] == " " * 8 + "└" + "─" * 64
    assert lines[15].split() == ["0", "step", "(y:", "bits", "per", "character)", "40"]
    chart = "".join(row[9:] for row in rows)
    val_points = sum(1 for r in metrics(runs[0]) if r.get("val_bpc") is not None)
    assert 1 <= chart.count("●") <= val_points and 1 <= chart.count("◆")
    assert chart.count("·") > 20
    # the y labels span the curves: top is the highest bpc drawn, bottom the lowest
    top, bottom = float(rows[0][:7]), float(rows[-1][:7])
    curves = [read_curves(r) for r in runs]
    drawn = np.concatenate([a for c in curves for a in (c.train_bpc, c.val_bpc)])
    assert (top, bottom) == (
        pytest.approx(drawn.max(), abs=1e-3),
        pytest.approx(drawn.min(), abs=1e-3),
    )


def test_curves_against_steps_chars_and_time(runs):
    records = metrics(runs[0])
    train = [r for r in records if "train_loss" in r]
    val = [r for r in records if r.get("val_bpc") is not None]
    steps = read_curves(runs[0])
    assert steps.train_x.tolist() == [r["step"] for r in train]
    assert steps.val_x.tolist() == [r["step"] for r in val]
    assert steps.val_bpc.tolist() == [r["val_bpc"] for r in val]
    assert steps.train_bpc[0] == pytest.approx(train[0]["train_loss"] / math.log(2))
    chars = read_curves(runs[0], "chars")
    assert chars.train_x.tolist() == [r["step"] * 2 * 8 for r in train]
    time = read_curves(runs[0] / "metrics.jsonl", "time")  # a metrics file works too
    assert time.train_x.tolist() == [r["elapsed"] for r in train]
    assert time.val_x[-1] == train[-1]["elapsed"]  # the closing line has no elapsed of its own


def test_a_noisy_train_loss_is_smoothed(tmp_path):
    lines = [{"step": s, "train_loss": 2.0 + (0.5 if s % 2 else -0.5)} for s in range(1, 401)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    curves = read_curves(tmp_path)
    assert len(curves.train_bpc) == 400
    # a window of 4 steps averages the alternation away after the first few
    assert np.allclose(curves.train_bpc[4:], 2.0 / math.log(2))


def test_errors(tmp_path, runs):
    (tmp_path / "empty").mkdir()
    assert user_error(cli("plot", tmp_path / "empty")) == (
        f"'{tmp_path / 'empty'}' has no metrics.jsonl; give a run folder that 'charrnn train' wrote"
    )
    result = cli("plot", runs[0], "-o", "curves.xyz")
    assert user_error(result) == (
        "cannot write 'curves.xyz': .xyz is not an image format; name a .png, .svg or .pdf file"
    )
    usage_error(cli("plot"), "RUN...")
