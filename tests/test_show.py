"""`charrnn show`: the page for every cell and several layers through the real CLI (written
whole, self-contained, the text and the picker in it, the same score as `charrnn eval`), the
ranking of units on planted data, clean errors, and the page as Chromium renders it (when
Chromium is installed)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import TEXT, cli, temp_files, user_error, write_corpus

from charrnn import api
from charrnn import checkpoint as ckpt_io
from charrnn.model import Arch, init_params, run, state_blocks, trace, zero_state
from charrnn.show import FEATURES, correlations, make_page, quantise, text_features, top_units

# characters a page must escape (HTML would read a bare \r as a newline), and quotes and
# brackets for the features
ODD = ' <b>"quoted" & </script> [aside] (and this)\r\n'
SHOWN = TEXT[:300] + ODD  # the text the pages show
CELLS = {"rnn": 2, "lstm": 2, "gru": 1}  # cell: layers
H = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{cell: best.npz} of a few steps of training on a text with markup characters in it."""
    folder = tmp_path_factory.mktemp("show")
    corpus = write_corpus(folder, (TEXT[:1500] + ODD) * 2)
    made = {}
    for cell, layers in CELLS.items():
        out = folder / cell
        args = ["--cell", cell, "--num-layers", layers, "--hidden-size", H, "--seq-length", 8]
        args += ["--batch-size", 2, "--max-steps", 6, "--eval-every", 3, "--rng-seed", 1, "-q"]
        result = cli("train", corpus, *args, "--out", out)
        assert result.exit_code == 0, result.output
        made[cell] = out / "best.npz"
    return made


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text(SHOWN, encoding="utf-8")
    return path


def data_of(page: str) -> dict:
    """The JSON the page's script reads."""
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def page_text(page: str) -> str:
    """The text in the page's character spans."""
    spans = re.search(r'<pre id="text"[^>]*>(.*?)</pre>', page, re.S).group(1)
    return html.unescape(re.sub(r"</?span[^>]*>", "", spans))


def options(page: str) -> list[str]:
    return re.findall(r'<option value="([^"]+)"', page)


@pytest.mark.parametrize("cell", CELLS)
def test_page_for_every_cell(cell, models, text_file):
    result = cli("show", text_file, "--checkpoint", models[cell], "-o", "page.html")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(f"wrote page.html: {len(SHOWN)} characters, ")
    page = Path("page.html").read_text(encoding="utf-8")
    # self-contained: nothing to fetch, and the slots of the template all filled
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert not re.search(r"__[A-Z]+__", page)
    # the text, one span a character, escaped; "</script>" only where the two scripts end
    assert page_text(page) == SHOWN
    assert re.search(r'<pre id="text"[^>]*>(.*?)</pre>', page, re.S).group(1).count("<span") == (
        len(SHOWN)
    )
    assert page.count("</script>") == 2
    # the picker: surprise, the short list, then every unit of every layer (and the LSTM's c)
    arch = api.load(models[cell]).arch
    units = [o for o in options(page) if o != "surprise"]
    assert (
        arch.num_layers == CELLS[cell]
        and arch.state_width == CELLS[cell] * (2 if cell == "lstm" else 1) * H
    )
    assert units[-arch.state_width :] == [str(u) for u in range(arch.state_width)]
    assert 1 <= len(units) - arch.state_width <= 12
    assert f"layer {CELLS[cell]} h {H - 1}" in page
    assert ("layer 2 c 0" in page) == (cell == "lstm")
    data = data_of(page)
    assert len(data["bits"]) == len(SHOWN) and len(data["top"]) == 5 * len(SHOWN)
    assert len(data["scale"]) == arch.state_width
    assert len(data["acts"]) == 4 * -(-arch.state_width * len(SHOWN) // 3)  # base64 of int8


def test_page_scores_as_eval_does(models, text_file):
    """The page's bits are the per-character costs `charrnn eval` sums; its top guesses are
    the model's likeliest characters there."""
    model = api.load(models["lstm"])
    text = text_file.read_text(encoding="utf-8")
    page = make_page(model.params, model.vocab, text)
    data = data_of(page.html)
    scores = list(model.char_scores(text, top=5))
    assert page.bpc == pytest.approx(model.evaluate(text).bpc, abs=1e-4)
    assert np.allclose(np.array(data["bits"]) / 100, [s["bits"] for s in scores], atol=0.006)
    first = [model.vocab.index(c) for c, _ in scores[10]["top"]]
    assert data["top"][50:55] == first


def test_trace_holds_every_layer_and_the_top_is_runs(models):
    """trace's state after each character, sliced to the top layer's h, is `run`'s output; its
    last row is the state `run` carries on with."""
    model = api.load(models["lstm"])
    ids = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    states = trace(model.params, ids, zero_state(model.params, 1))  # (T, W)
    hs, last = run(model.params, ids[:, None], zero_state(model.params, 1))
    top = state_blocks(model.arch)[-2][2]  # the top layer's h (an LSTM has h, c per layer)
    assert np.allclose(states[:, top], hs[1:, 0], atol=1e-6)
    assert np.allclose(states[-1], last[0], atol=1e-6)


def test_page_on_stdout(models, text_file):
    for args in (["-o", "-"], []):
        result = cli("show", text_file, "--checkpoint", models["gru"], "--length", 40, *args)
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("<!DOCTYPE html>") and result.stdout.endswith("</html>\n")
        assert result.stderr.startswith("40 characters, ")
        assert page_text(result.stdout) == TEXT[:40]


def test_a_terminal_gets_no_html(models, text_file, monkeypatch):
    monkeypatch.setattr("charrnn.cli.Product.isatty", lambda self: True)
    message = user_error(cli("show", text_file, "--checkpoint", models["gru"]))
    assert message == "the page is HTML, not for a terminal; give -o page.html"


def test_length_and_unknown_characters(models, tmp_path):
    path = tmp_path / "odd.txt"
    path.write_text("ab\u00e9cd" * 20, encoding="utf-8")  # é is not in the vocabulary
    result = cli("show", path, "--checkpoint", models["rnn"], "--length", 10, "-o", "p.html")
    assert result.exit_code == 0, result.output
    page = Path("p.html").read_text(encoding="utf-8")
    assert len(data_of(page)["bits"]) == 8  # the first 10 characters, less the two é
    assert "2 characters not in the vocabulary left out" in page
    message = user_error(cli("show", path, "--checkpoint", models["rnn"], "--unknown", "error"))
    assert "not in the model's vocabulary ('é')" in message


@pytest.mark.parametrize(
    "dtype, value, said",
    [(np.float32, 3e38, "2.97e+39 bpc"), (np.float64, 1e308, "no finite score")],
)
def test_a_model_whose_outputs_overflow(dtype, value, said, tmp_path, recwarn):
    """Scored again in float64 as `charrnn eval` scores it; no score, said so, when float64
    overflows too; never NumPy's warnings."""
    vocab = list(" abcde")
    params = init_params(len(vocab), 8, np.random.default_rng(0), dtype=dtype)
    params["Why"] = np.full_like(params["Why"], value)
    params["Why"][::2] *= -1
    params["Wxh"] = np.full_like(params["Wxh"], value)
    ckpt_io.save(ckpt_io.Checkpoint(params=params, vocab=vocab, config={}), tmp_path / "huge.npz")
    result = cli(
        "show", "-", "--checkpoint", tmp_path / "huge.npz", "-o", "p.html", input="abcde a"
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"wrote p.html: 7 characters, {said}")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_bad_inputs_are_clean_errors(models, text_file, tmp_path):
    ckpt = models["rnn"]
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert "is empty" in user_error(cli("show", empty, "--checkpoint", ckpt, "-o", "p.html"))
    assert "no-such.txt" in user_error(cli("show", "no-such.txt", "--checkpoint", ckpt))
    message = user_error(cli("show", text_file, "--checkpoint", "nope.npz", "-o", "p.html"))
    assert "nope.npz" in message
    message = user_error(cli("show", text_file, "--checkpoint", ckpt, "-o", "no/dir/p.html"))
    assert message.startswith("cannot write the page to 'no/dir/p.html': ")
    assert not Path("p.html").exists()
    usage = cli("show", text_file, "--checkpoint", ckpt, "--length", 0)
    assert usage.exit_code == 2 and "'--length'" in usage.stderr
    usage = cli("show", text_file, "--checkpoint", ckpt, "--decode-errors", "ignore")
    assert usage.exit_code == 2 and "'--decode-errors'" in usage.stderr
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("\u4e00\u4e8c", encoding="utf-8")
    assert "none of the characters" in user_error(cli("show", foreign, "--checkpoint", ckpt))


def test_a_failed_page_leaves_the_old_file_whole(models, text_file, tmp_path):
    Path("page.html").write_text("old page", encoding="utf-8")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(models["gru"].read_bytes()[:500])
    user_error(cli("show", text_file, "--checkpoint", bad, "-o", "page.html"))
    assert Path("page.html").read_text(encoding="utf-8") == "old page"
    assert temp_files(Path.cwd()) == []


def test_help_reads_well():
    result = cli("show", "--help")
    assert result.exit_code == 0
    assert " show [OPTIONS] TEXT" in result.stdout
    for words in ("HTML page", "surprised", "--length N", "-o, --output FILE", "no network"):
        assert words in " ".join(result.stdout.split()), words


# ---- features and ranking ----


def test_text_features_as_known_after_each_character():
    f = text_features('AB.\n  x [y] "z"')
    assert f["line position"].tolist() == [1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert f["line in capitals"][:4].tolist() == [1, 1, 1, 0]
    assert f["first line of a speech"].tolist() == [0, 0, 0] + [1] * 12
    assert f["indent"][3:7].tolist() == [0, 1, 1, 0]
    assert f["inside brackets"][7:11].tolist() == [0, 1, 1, 0]
    assert f["inside quotes"][11:].tolist() == [0, 1, 1, 0]
    assert f["word start"][5:9].tolist() == [0, 1, 0, 0]


def test_ranking_finds_planted_units():
    """Units made from a feature plus noise are found, named by their feature and sign; at most
    two per feature make the short list."""
    rng = np.random.default_rng(0)
    text = TEXT[:3000]
    features = text_features(text)
    F = np.stack(list(features.values()), axis=1)  # (T, K)
    acts = rng.standard_normal((len(text), 20)) * 0.1  # (T, U): noise
    names = list(FEATURES)
    k_line, k_vowel = names.index("line position"), names.index("vowel")
    acts[:, 3] += F[:, k_line] / F[:, k_line].max()
    acts[:, 7] -= F[:, k_vowel]
    acts[:, 8] -= F[:, k_vowel]
    acts[:, 9] -= F[:, k_vowel] * 0.8
    r = correlations(acts, F)
    assert abs(r).max() <= 1 + 1e-9
    assert r[3, k_line] > 0.9 and r[7, k_vowel] < -0.9
    top = top_units(r)
    assert set(top[:3]) <= {3, 7, 8, 9} and 9 not in top  # the third vowel unit is left out
    assert np.all(r[:, names.index("inside quotes")] == 0)  # a feature constant in the text


def test_quantise_h_by_its_range_and_c_by_a_percentile():
    """h (in [-1, 1]) to q / 127; c by the 99th percentile of its |c|, one outlier clipped
    rather than leaving every other value pale; unit-major bytes."""
    arch = Arch("lstm", 1, 2, 5)  # columns: h0 h1 c0 c1
    t = np.linspace(-1, 1, 201)  # (T,)
    acts = np.stack([t, -t, 3 * t, t], axis=1)  # (T, W)
    acts[100, 3] = 1000.0  # an outlier in c1
    q, scale = quantise(acts, arch)
    q = np.frombuffer(q, dtype=np.int8).reshape(4, 201)  # (W, T)
    assert scale[:2].tolist() == [1.0, 1.0] and scale[2] == pytest.approx(2.97)
    assert scale[3] == pytest.approx(np.percentile(np.abs(acts[:, 3]), 99))
    assert q[0].tolist() == np.rint(t * 127).astype(int).tolist() and q[1, 0] == 127
    assert q[3, 100] == 127 and abs(q[3, 0]) > 100  # the outlier clipped, the rest not pale


# ---- in a real browser ----

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (make browser)")
# keys pressed in the text, and where each leaves the focus in "abc\nde\nfghij\n": down from
# column 2 of "abc" to the end of the shorter "de", down again to column 2 of "fghij", ...
KEYS = ["ArrowRight", "ArrowRight", "ArrowDown", "ArrowDown", "End", "ArrowUp", "Home", "ArrowLeft"]
FOCUS = [1, 2, 6, 9, 12, 6, 4, 3]
PROBE = """
var spans = Array.prototype.slice.call(document.getElementById("text").children), seen = [];
spans[0].focus();
KEYS.forEach(function (k) {
  document.activeElement.dispatchEvent(new KeyboardEvent("keydown", {key: k, bubbles: true}));
  seen.push(spans.indexOf(document.activeElement));
});
document.querySelector("#units button").click();
document.body.dataset.probe = JSON.stringify({focus: seen, where: document.getElementById(
  "where").textContent, tabbable: spans.filter(function (s) { return s.tabIndex === 0; }).length,
  view: document.getElementById("view").value, hash: location.hash});
"""


def rendered(page: Path, fragment: str = "", probe: str = "") -> str:
    """The DOM after headless Chromium ran the page's script, and then `probe` (JavaScript)."""
    if probe:
        html_text = page.read_text(encoding="utf-8")
        page = page.with_name("probe.html")
        page.write_text(html_text.replace("</body>", f"<script>{probe}</script></body>"))
    # Chromium puts its singleton socket under $TMPDIR, and a socket's path has at most 107
    # bytes: the test's own TMPDIR (conftest, deep under pytest's folder) is too long for it
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"]
            + [f"--user-data-dir={short}", page.resolve().as_uri() + fragment],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "TMPDIR": short},
        ).stdout


@needs_chromium
@pytest.mark.parametrize("view", ["surprise", "1"])
def test_chromium_runs_the_page(view, models, text_file):
    """Headless Chromium runs the page's script: every character's span is coloured, the
    legend is the one of the view the address asks for, the guesses are listed."""
    assert cli("show", text_file, "--checkpoint", models["lstm"], "-o", "page.html").exit_code == 0
    dom = rendered(Path("page.html"), f"#{view}")
    text = re.search(r'<pre id="text"[^>]*>(.*?)</pre>', dom, re.S).group(1)
    spans = re.findall(r"<span[^>]*>", text)
    assert len(spans) == len(SHOWN)
    assert all("background-color: rgb(" in s for s in spans)
    assert len(re.findall(r'tabindex="0"', text)) == 1  # the roving focus: one character
    assert len(options(dom)) > 32 and re.search(r'<select id="view"', dom)
    assert len(re.findall(r'<li[^>]*><span class="ch"', dom)) == 5
    legend = re.search(r'<span id="hi">([^<]*)</span>', dom).group(1)
    assert legend == ("8+ bits" if view == "surprise" else "+1.00")


@needs_chromium
def test_chromium_keyboard_and_unit_buttons(models, tmp_path):
    """The arrow keys, Home and End move the focus through the characters (one of them
    tabbable at a time); a button of the short list picks its unit."""
    path = tmp_path / "short.txt"
    path.write_text("abc\nde\nfghij\n", encoding="utf-8")
    assert cli("show", path, "--checkpoint", models["gru"], "-o", "page.html").exit_code == 0
    dom = rendered(Path("page.html"), probe=f"var KEYS = {json.dumps(KEYS)};" + PROBE)
    probe = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    assert probe["focus"] == FOCUS
    assert probe["where"].startswith("\u201c\u21b5 newline\u201d, character 4 of 13: ")
    assert probe["tabbable"] == 1
    first = re.search(r'<button type="button" data-unit="(\d+)"', dom).group(1)
    assert probe["view"] == first and probe["hash"] == f"#{first}"


def test_only_the_characters_shown_are_read(models, tmp_path):
    """--length N reads N characters: bytes past them that do not decode are never seen."""
    path = tmp_path / "long.txt"
    path.write_bytes(SHOWN.encode("utf-8") + b"\xff\xfe not UTF-8")
    ckpt = models["rnn"]
    page = cli("show", path, "--checkpoint", ckpt, "--length", len(SHOWN), "-o", "p.html")
    assert page.exit_code == 0, page.output
    assert f"{len(SHOWN):,} characters" in page.stderr
    offset = len(SHOWN.encode("utf-8"))
    whole = cli("show", path, "--checkpoint", ckpt, "--length", len(SHOWN) + 5, "-o", "q.html")
    assert f"byte offset {offset}" in user_error(whole)
