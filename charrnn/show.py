"""`charrnn show`: one self-contained HTML page of what a model sees in a text.

The model reads the text from a zero state, as `charrnn eval` does. The page colours each
character by the model's surprise at it (-log2 p, its cost in bits, from the state before it)
and lists the model's top guesses there; or it colours the text by one hidden unit's activation
after reading each character: any unit of any layer's h, and of the LSTM's cell state c
(`model.trace` gives the whole carried state at every step).

Units are ranked by how well they track simple features of the text (FEATURES, computed by
`text_features` from the characters read so far): for each unit and feature, the Pearson
correlation r of the unit's activation with the feature over the text. A unit's score is its
largest |r|, and that feature is the one it matches; the page lists the best units first, at most
two per feature (`top_units`).

The page carries its data as compact JSON arrays and one base64 string: bits in hundredths,
probabilities in thousandths, activations quantised to int8 (h lies in [-1, 1]; c is divided by
the 99th percentile of its |c| over the text, so that a few large values do not leave the rest
pale: those are drawn at full colour), about 1.4 bytes per character and unit. The HTML, CSS and
script are the template show.html beside this module. Reading the text and choosing the
checkpoint are the CLI's; the file is replaced atomically (atomic.py).
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from charrnn import jsonout
from charrnn.errors import DataError
from charrnn.evaluate import NO_SCORE, known_ids, score
from charrnn.model import architecture, bpc, state_blocks
from charrnn.outputs import write_output

TOP_GUESSES = 5  # the model's likeliest characters listed for each position
TOP_UNITS = 12  # units in the page's short list
PER_FEATURE = 2  # at most this many of them matching one feature
C_PERCENTILE = 99  # c's colour scale: this percentile of |c|; beyond it, full colour
MAX_VALUES = 40_000_000  # characters x units in one page: about 55 MB of activations
FEATURES = {
    "line position": "characters since the line began",
    "inside brackets": "between [ and ], or ( and )",
    "inside quotes": 'between an opening and a closing "',
    "line in capitals": "the line so far has letters, all capitals (a speaker's name)",
    "first line of a speech": "the line after a line in capitals",
    "indent": "only spaces so far on this line",
    "word start": "the first letter of a word",
    "position in word": "letters since the word began",
    "space": "a space",
    "newline": "a newline",
    "vowel": "a, e, i, o, u (either case)",
    "capital": "a capital letter",
    "punctuation": "one of . , ; : ! ? - '",
}


@dataclass
class Reading:
    """What the model made of a text: per character, its cost and the top guesses there (from
    the state before it), and every unit's activation after it."""

    bits: np.ndarray  # (T,) -log2 p of each character
    top_ids: np.ndarray  # (T, k) the k likeliest characters at each position, likeliest first
    top_p: np.ndarray  # (T, k) their probabilities
    acts: np.ndarray  # (T, W) the carried state after each character: every unit


@dataclass
class Page:
    """The page and what the command line says about it."""

    html: str
    chars: int  # characters shown
    unknown_chars: int  # characters left out: not in the vocabulary
    bpc: float  # mean bits per character shown; nan when the model's outputs overflow
    top: list[dict]  # the short list of units: unit (its label), feature, r

    def summary(self) -> str:
        """One line: characters, score, the three best units."""
        score = f"{_number(self.bpc)} bpc" if math.isfinite(self.bpc) else "no finite score"
        best = ", ".join(f"{u['unit']} ({u['feature']}, r = {u['r']:+.2f})" for u in self.top[:3])
        return f"{self.chars:,} characters, {score}" + (f"; best units: {best}" if best else "")


def read(params: dict, ids: np.ndarray, k: int = TOP_GUESSES, adapter=None) -> Reading:
    """One pass over ids (T,) from a zero state: the scoring pass of `charrnn eval`
    (evaluate.score, float64 retry of an overflowing float32 model included), with every
    layer's state after each character kept. Position t is scored from the state after the ids
    before it (the first from the zero state); bits are nan only when float64 overflows too.
    With an adapter (charrnn.dynamic.Adapter over the same weights), the bits and guesses are
    those of dynamic evaluation's pass, each character's from the weights adapted to the text
    before it; the activations stay the trained weights'."""
    k = min(k, len(params["by"]))
    bits, top_ids, top_p, acts = [], [], [], []
    for block in score(params, ids, trace=True):
        acts.append(block.states)
        if adapter is None:
            _guesses(block, k, bits, top_ids, top_p)
    for block in () if adapter is None else adapter.read(ids):
        _guesses(block, k, bits, top_ids, top_p)
    return Reading(*(np.concatenate(parts) for parts in (bits, top_ids, top_p, acts)))


def _guesses(block, k: int, bits: list, top_ids: list, top_p: list) -> None:
    """A block's bits and its k likeliest characters at each position, appended."""
    order = np.argsort(-block.probs, axis=1, kind="stable")[:, :k]  # (T, k)
    bits.append(bpc(block.losses))
    top_ids.append(order)
    top_p.append(np.take_along_axis(block.probs, order, axis=1))


# ---- ranking units ----


def text_features(chars: str) -> dict[str, np.ndarray]:
    """Each of FEATURES at each character (T,), as known after reading it: after a newline the
    line position is 0 and its line is the next one."""
    names = list(FEATURES)
    values = np.zeros((len(chars), len(names)))  # (T, K)
    column, depth, quoted, word = 0, 0, False, 0
    line_caps = line_lower = False  # the line so far has capitals / has lowercase letters
    blank = True  # the line so far has nothing but spaces
    speech = False  # on the line after a line in capitals
    for t, c in enumerate(chars):
        if c == "\n":
            speech = line_caps and not line_lower
            column, line_caps, line_lower, blank = 0, False, False, True
        else:
            column += 1
            line_caps |= c.isupper()
            line_lower |= c.islower()
            blank &= c == " "
        depth = max(0, depth + (c in "[(") - (c in "])"))
        quoted ^= c == '"'
        word = word + 1 if c.isalpha() else 0
        row = {
            "line position": column,
            "inside brackets": depth > 0,
            "inside quotes": quoted,
            "line in capitals": line_caps and not line_lower,
            "first line of a speech": speech,
            "indent": column > 0 and blank,
            "word start": word == 1,
            "position in word": word,
            "space": c == " ",
            "newline": c == "\n",
            "vowel": c in "aeiouAEIOU",
            "capital": c.isupper(),
            "punctuation": c in ".,;:!?-'",
        }
        values[t] = [row[name] for name in names]
    return {name: values[:, j] for j, name in enumerate(names)}


def correlations(acts: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Pearson r (U, K) of every unit's activation acts (T, U) with every feature (T, K); 0 where
    either is constant over the text."""
    a = acts - acts.mean(axis=0)  # (T, U)
    f = features - features.mean(axis=0)  # (T, K)
    a_norm, f_norm = np.sqrt((a * a).sum(axis=0)), np.sqrt((f * f).sum(axis=0))  # (U,), (K,)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a.T @ f) / np.outer(a_norm, f_norm)  # (U, K)
    return np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)


def best_features(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit, the feature it matches best and that r: (U,) indices, (U,) r."""
    best = np.abs(r).argmax(axis=1)  # (U,)
    return best, r[np.arange(len(r)), best]


def top_units(r: np.ndarray, n: int = TOP_UNITS, per_feature: int = PER_FEATURE) -> list[int]:
    """The n units of highest score max_k |r[u, k]|, best first, at most per_feature of them
    matching any one feature, so that one feature does not fill the list."""
    best, r_best = best_features(r)
    score = np.abs(r_best)  # (U,)
    chosen, taken = [], {}
    for u in np.argsort(-score, kind="stable"):
        if score[u] == 0 or len(chosen) == n:
            break
        if taken.get(best[u], 0) < per_feature:
            chosen.append(int(u))
            taken[best[u]] = taken.get(best[u], 0) + 1
    return chosen


# ---- the page ----


def unit_labels(arch) -> list[str]:
    """A label for every column of the carried state: "layer 1 h 17" is h[17] of the layer that
    reads the characters."""
    labels = [""] * arch.state_width
    for layer, state, cols in state_blocks(arch):
        for i in range(arch.hidden_size):
            labels[cols.start + i] = f"layer {layer + 1} {state} {i}"
    return labels


def quantise(acts: np.ndarray, arch) -> tuple[bytes, np.ndarray]:
    """acts (T, W) as int8 bytes in unit-major order (W, T), each unit's run contiguous, and the
    scale of each unit (W,): value = q / 127 * scale, clipped to +-scale; 1 for h, which lies in
    [-1, 1], the C_PERCENTILE-th percentile of |c| for c, which is unbounded."""
    scale = np.ones(arch.state_width)  # (W,)
    for _, state, cols in state_blocks(arch):
        if state == "c":
            scale[cols] = np.percentile(np.abs(acts[:, cols]), C_PERCENTILE, axis=0)
    scale[~(scale > 0) | ~np.isfinite(scale)] = 1.0
    q = np.rint(np.clip(np.nan_to_num(acts / scale), -1.0, 1.0) * 127).astype(np.int8)  # (T, W)
    return np.ascontiguousarray(q.T).tobytes(), scale


def page_data(reading: Reading, vocab: list[str], r: np.ndarray, scale: np.ndarray, q: bytes):
    """The numbers the page's script reads, as compact JSON-ready values."""
    bits = np.where(np.isfinite(reading.bits), np.minimum(reading.bits, 99.99), -0.01)
    best, r_best = best_features(r)
    return {
        "vocab": vocab,
        "bits": np.rint(bits * 100).astype(int).tolist(),  # hundredths of a bit; -1: no score
        "k": reading.top_ids.shape[1],
        "top": reading.top_ids.reshape(-1).tolist(),  # (T k,)
        "topP": np.rint(np.nan_to_num(reading.top_p) * 1000).astype(int).reshape(-1).tolist(),
        "features": list(FEATURES),
        "feature": best.tolist(),  # (W,) each unit's best feature
        "r": np.round(r_best, 2).tolist(),  # (W,) and its r
        "scale": [float(f"{s:.4g}") for s in scale],
        "acts": base64.b64encode(q).decode("ascii"),
    }


def _picker(labels: list[str], arch, top: list[int], r: np.ndarray) -> str:
    """The <option>s of the view picker: surprise, the short list, then every unit by layer."""
    names = list(FEATURES)
    best, r_best = best_features(r)
    rows = ['<option value="surprise">surprise (bits per character)</option>']
    rows.append('<optgroup label="Units that track the text best">')
    for u in top:
        rows.append(
            f'<option value="{u}">{labels[u]}: {names[best[u]]} ({_signed(r_best[u])})</option>'
        )
    rows.append("</optgroup>")
    what = {"h": "hidden state h", "c": "cell state c"}
    for layer, state, cols in state_blocks(arch):
        rows.append(f'<optgroup label="layer {layer + 1}, {what[state]}">')
        rows.extend(
            f'<option value="{u}">{labels[u]}</option>' for u in range(cols.start, cols.stop)
        )
        rows.append("</optgroup>")
    return "\n".join(rows)


def _unit_list(labels: list[str], top: list[int], r: np.ndarray) -> str:
    """The short list as buttons that pick the unit, with each one's feature and r."""
    names = list(FEATURES)
    best, r_best = best_features(r)
    rows = []
    for u in top:
        rows.append(
            f'<li><button type="button" data-unit="{u}">{labels[u]}</button> '
            f"<span>{html.escape(names[best[u]])}</span> "
            f'<span class="r">r = {_signed(r_best[u])}</span></li>'
        )
    return "\n".join(rows) or "<li>No unit varies with these features on this text.</li>"


def _signed(x: float) -> str:
    """+0.88, −0.75: with a true minus sign, as the page's script writes them."""
    return f"{x:+.2f}".replace("-", "\u2212")


def _features_list(present: dict[str, bool]) -> str:
    return "\n".join(
        f"<li><b>{html.escape(name)}</b>: {html.escape(what)}"
        + ("" if present[name] else " <i>(constant in this text: not used)</i>")
        + "</li>"
        for name, what in FEATURES.items()
    )


# a newline's span holds the line break (its mark is CSS's); a carriage return is written as a
# reference, which HTML does not turn into a newline
_SPANS = {"\n": '<span class="nl">\n</span>', "\r": "<span>&#13;</span>"}


def _text_spans(chars: str) -> str:
    """One <span> per character."""
    return "".join(_SPANS.get(c) or f"<span>{html.escape(c)}</span>" for c in chars)


def _script_json(data: dict) -> str:
    """JSON safe inside a <script> element: no "</" or "<!--" can end or confuse it."""
    return jsonout.dumps(data, compact=True).replace("<", "\\u003c")


def _fill(template: str, fields: dict[str, str]) -> str:
    """Put each field at its __NAME__ in one pass, so that no field's text is read as a slot."""
    return re.sub(r"__([A-Z]+)__", lambda m: fields[m.group(1)], template)


def _number(x: float) -> str:
    """1.832, or 3.08e+39 for the score of a model whose outputs overflow float32."""
    return f"{x:.3f}" if abs(x) < 1e6 else f"{x:.3g}"


def model_name(path: Path, step: int) -> str:
    """How the page names a model: its checkpoint's folder and file, and its step."""
    return f"{path.parent.name}/{path.name} (step {step:,})".lstrip("/")


def check_size(chars: int, arch) -> None:
    """A DataError when the page would carry more than MAX_VALUES activations."""
    if chars * arch.state_width > MAX_VALUES:
        raise DataError(
            f"{chars:,} characters of {arch.state_width:,} units each would make a page of "
            f"about {chars * arch.state_width * 1.4 / 1e6:,.0f} MB; show at most "
            f"{MAX_VALUES // arch.state_width:,} characters with --length"
        )


def make_page(
    params: dict,
    vocab: list[str],
    text: str,
    *,
    model_name: str = "model",
    name: str = "text",
    unknown: str = "skip",
    adapter=None,
) -> Page:
    """The page for text (all of it: the caller cuts it to length). Characters not in the
    vocabulary are left out and counted, or with unknown="error" a DataError. With an adapter
    (charrnn.dynamic.Adapter), surprise is dynamic evaluation's (`read`)."""
    ids, n_unknown = known_ids(text, vocab, name, unknown, "show", "the page")
    arch = architecture(params)
    check_size(len(ids), arch)
    chars = "".join(vocab[i] for i in ids)
    reading = read(params, ids, adapter=adapter)
    features = text_features(chars)
    r = correlations(reading.acts.astype(np.float64), np.stack(list(features.values()), axis=1))
    top, labels = top_units(r), unit_labels(arch)
    q, scale = quantise(reading.acts, arch)
    bpc = float(reading.bits.mean(dtype=np.float64))  # nan or inf when some is
    score = f"{_number(bpc)} bits per character" if math.isfinite(bpc) else f"no score, {NO_SCORE}"
    s = "s" * (n_unknown != 1)
    left_out = f"; {n_unknown:,} character{s} not in the vocabulary left out" if n_unknown else ""
    fields = {
        "TITLE": html.escape(f"{name}: what {model_name} sees"),
        "MODEL": html.escape(model_name),
        "ABOUT": html.escape(
            f"{arch.num_layers}-layer {arch.cell}, hidden size {arch.hidden_size}; "
            f"{len(ids):,} characters of {name} read from a zero state"
            + (", adapting to them as it reads (dynamic evaluation)" if adapter else "")
            + f": {score}{left_out}"
        ),
        "PICKER": _picker(labels, arch, top, r),
        "UNITS": _unit_list(labels, top, r),
        "FEATURES": _features_list({k: bool(np.ptp(v) > 0) for k, v in features.items()}),
        "TEXT": _text_spans(chars),
        "DATA": _script_json(page_data(reading, vocab, r, scale, q)),
    }
    template = resources.files("charrnn").joinpath("show.html").read_text(encoding="utf-8")
    best, r_best = best_features(r)
    names = list(FEATURES)
    summary = [{"unit": labels[u], "feature": names[best[u]], "r": float(r_best[u])} for u in top]
    return Page(_fill(template, fields), len(ids), n_unknown, bpc, summary)


def save_page(page: Page, path, reads=()) -> None:
    """Write the page to path (a path or an outputs.Output) by the rule of outputs.py: never
    over a file it was not asked to create, atomically: a reader, or a crash, never sees half
    a page. `reads`: the files the page was made from, refused as the output."""
    write_output(path, lambda f: f.write(page.html.encode("utf-8")), "the page", reads)
