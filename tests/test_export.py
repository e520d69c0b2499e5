"""charrnn export and the .safetensors checkpoint (charrnn/export.py, checkpoint.py).

What it promises: a .safetensors export holds the model's arrays alone, under the checkpoint's
names, with what sampling needs in its metadata; every command that reads a checkpoint (sample,
eval, info, show, charrnn.load) reads it and gives exactly what it gives from the .npz; loading
one checks it as strictly as an .npz (a crafted or damaged file is one `Error:` line); and
`charrnn export` refuses, in one line, an unknown format, an output that exists (unless
--overwrite), the checkpoint as its own output and a missing package. The ONNX graph and the
model-hub folder are test_onnx.py's and test_hub.py's.
"""

from __future__ import annotations

import json
import re
import runpy
import sys

import numpy as np
import pytest
from helpers import REPO, TEXT, arrays, cli, user_error, write_corpus
from hypothesis import HealthCheck, given, settings, strategies

import charrnn
from charrnn import checkpoint as ckpt_io
from charrnn.errors import CheckpointError
from charrnn.model import param_names

CELLS = ("rnn", "lstm", "gru")


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict:
    """{cell: (corpus, run folder)} of a 4-step 2-layer run of each cell, with validation, and
    its best.npz exported beside it as best.safetensors."""
    folder = tmp_path_factory.mktemp("export")
    corpus = write_corpus(folder, TEXT[:3000])
    made = {}
    for cell in CELLS:
        run = folder / cell
        result = cli(
            "train", corpus, "--cell", cell, "--num-layers", 2, "--hidden-size", 8,
            "--seq-length", 8, "--batch-size", 2, "--max-steps", 4, "--eval-every", 2,
            "--rng-seed", 5, "--out", run, "-q",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        result = cli("export", run, "--format", "safetensors", "-o", run / "best.safetensors")
        assert result.exit_code == 0, result.output
        made[cell] = corpus, run
    corpus.with_name("short.txt").write_text(TEXT[:400], encoding="utf-8")
    return made


def both(runs, cell) -> tuple:
    """(a 400-character text to score, the run's best.npz, its best.safetensors)."""
    corpus, run = runs[cell]
    return corpus.with_name("short.txt"), run / "best.npz", run / "best.safetensors"


# ---- what the file holds ----


@pytest.mark.parametrize("cell", CELLS)
def test_the_file_holds_the_weights_alone_and_the_metadata_to_sample(runs, cell):
    from safetensors import safe_open

    _, npz, st = both(runs, cell)
    with safe_open(st, framework="np") as f:
        names, meta = set(f.keys()), f.metadata()
        tensors = {k: f.get_tensor(k) for k in names}
    saved = arrays(npz)
    assert names == set(param_names(charrnn.load(npz).arch))  # no opt.*, no h_carry
    for k in names:
        assert tensors[k].dtype == saved[k].dtype and tensors[k].tobytes() == saved[k].tobytes()
    assert meta["cell"] == cell and meta["num_layers"] == "2" and meta["format_version"] == "2"
    assert json.loads(meta["vocab"]) == charrnn.load(npz).vocab
    assert json.loads(meta["config"]) == json.loads(str(saved["config"]))
    assert set(json.loads(meta["train_state"])) == {"best_val_loss", "chars_seen"}  # no rng
    assert st.stat().st_size < npz.stat().st_size / 2  # Adam's two slots stay behind


def test_export_prints_json_for_scripts_and_a_line_otherwise(runs, tmp_path):
    _, npz, _ = both(runs, "gru")
    result = cli("export", npz, "--format", "safetensors", "-o", tmp_path / "m.st", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done == {"path": str(tmp_path / "m.st"), "format": "safetensors", "bytes": done["bytes"]}
    assert done["bytes"] == (tmp_path / "m.st").stat().st_size and result.stderr == ""
    result = cli("export", npz, "-f", "safetensors", "-o", tmp_path / "n.st")
    assert result.stdout == "" and re.fullmatch(
        r"wrote \S+ \(safetensors, [\d,]+ bytes\)\n", result.stderr
    )


# ---- every command reads it and says the same ----


@pytest.mark.parametrize("cell", CELLS)
def test_sample_is_the_same_from_either_file(runs, cell):
    _, npz, st = both(runs, cell)
    for flags in (["--rng-seed", 3], ["--num-samples", 3, "--temperature", 0.7, "--rng-seed", 9]):
        texts = [
            cli("sample", "--checkpoint", p, "--seed", "Th", "--length", 80, *flags)
            for p in (npz, st)
        ]
        assert texts[0].exit_code == 0 and texts[0].stdout == texts[1].stdout, texts[1].output
    beams = [cli("sample", "--checkpoint", p, "--beam", 3, "--length", 20) for p in (npz, st)]
    assert beams[0].exit_code == 0 and beams[0].output == beams[1].output


@pytest.mark.parametrize("cell", CELLS)
def test_eval_is_the_same_from_either_file(runs, cell, tmp_path):
    corpus, npz, st = both(runs, cell)
    scored = [cli("eval", "--checkpoint", p, corpus, "--json") for p in (npz, st)]
    assert scored[0].exit_code == 0 and scored[0].stdout == scored[1].stdout
    per_char = [cli("eval", "--checkpoint", p, corpus, "--per-char", "-") for p in (npz, st)]
    assert per_char[0].stdout == per_char[1].stdout


@pytest.mark.parametrize("cell", CELLS)
def test_info_is_the_same_from_either_file(runs, cell):
    _, npz, st = both(runs, cell)
    described = [json.loads(cli("info", p, "--json").stdout) for p in (npz, st)]
    assert described[0].pop("checkpoint") == str(npz) and described[1].pop("checkpoint") == str(st)
    assert described[0] == described[1] and described[0]["best_val_bpc"] is not None
    text = [cli("info", p).stdout.replace(str(p), "FILE") for p in (npz, st)]
    assert text[0] == text[1]


@pytest.mark.parametrize("cell", CELLS)
def test_show_is_the_same_from_either_file(runs, cell, tmp_path):
    corpus, npz, st = both(runs, cell)
    pages = []
    for p in (npz, st):
        result = cli("show", corpus, "--checkpoint", p, "-o", tmp_path / "page.html", "-q")
        assert result.exit_code == 0, result.output
        pages.append((tmp_path / "page.html").read_text().replace(p.name, "FILE"))
    assert pages[0] == pages[1]


@pytest.mark.parametrize("cell", CELLS)
def test_charrnn_load_gives_the_same_model(runs, cell):
    _, npz, st = both(runs, cell)
    a, b = charrnn.load(npz), charrnn.load(st)
    assert a.arch == b.arch and a.vocab == b.vocab and a.config == b.config and a.step == b.step
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype
        assert a.params[k].tobytes() == b.params[k].tobytes()
    assert b.train_state == {k: a.train_state[k] for k in ("best_val_loss", "chars_seen")}
    assert a.sample("T", 50, rng_seed=1) == b.sample("T", 50, rng_seed=1)


def test_a_hub_folder_stands_for_its_model(runs, tmp_path):
    _, npz, st = both(runs, "lstm")
    folder = tmp_path / "hub"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(st.read_bytes())
    assert charrnn.load(folder).path == folder / "model.safetensors"
    texts = [
        cli("sample", "--checkpoint", p, "--rng-seed", 2, "--length", 30) for p in (npz, folder)
    ]
    assert texts[0].stdout == texts[1].stdout


def test_resuming_from_a_safetensors_is_refused_in_one_line(runs):
    corpus, _, st = both(runs, "rnn")
    says = user_error(cli("train", corpus, "--resume", st, "-q"))
    assert says == f"'{st}' has no training state to resume from"


def test_float64_weights_stay_float64(tmp_path):
    rng = np.random.default_rng(0)
    params = charrnn.model.init_params(3, 4, rng, dtype=np.float64, cell="gru")
    ckpt_io.save(ckpt_io.Checkpoint(params, ["\0", "a", "b"], {}), tmp_path / "m.npz")
    assert (
        cli("export", tmp_path / "m.npz", "-f", "safetensors", "-o", tmp_path / "m.st").exit_code
        == 0
    )
    back = ckpt_io.load(tmp_path / "m.st")
    assert back.vocab == ["\0", "a", "b"] and back.config == {} and back.train_state == {}
    assert all(
        back.params[k].dtype == np.float64 and (back.params[k] == v).all()
        for k, v in params.items()
    )


# ---- refusals of export, in one line ----


def test_an_unknown_format_is_a_usage_error(runs, tmp_path):
    _, npz, _ = both(runs, "rnn")
    result = cli("export", npz, "--format", "tflite", "-o", tmp_path / "m")
    assert result.exit_code == 2 and "Invalid value for '--format'" in result.stderr
    assert not (tmp_path / "m").exists()


def test_an_existing_output_is_kept_unless_overwrite(runs, tmp_path):
    _, npz, _ = both(runs, "rnn")
    out = tmp_path / "m.safetensors"
    out.write_text("mine")
    says = user_error(cli("export", npz, "-f", "safetensors", "-o", out))
    assert says == f"-o '{out}' exists; pass --overwrite to replace it, or give a new name"
    assert out.read_text() == "mine"
    assert cli("export", npz, "-f", "safetensors", "-o", out, "--overwrite").exit_code == 0
    assert charrnn.load(out).step == charrnn.load(npz).step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left


def test_the_checkpoint_itself_is_never_the_output(runs, tmp_path):
    _, npz, st = both(runs, "rnn")
    before = st.read_bytes()
    for source, out in (
        (st, st),
        (npz.parent, npz.parent / "best.npz"),
        (st, st.parent / "." / st.name),
    ):
        says = user_error(cli("export", source, "-f", "safetensors", "-o", out, "--overwrite"))
        assert says.startswith(f"-o '{out}' is where the checkpoint") and says.endswith(
            "give another output path"
        )
    assert st.read_bytes() == before


def test_outputs_that_cannot_be_written_are_refused(runs, tmp_path):
    _, npz, _ = both(runs, "rnn")
    out = tmp_path / "no" / "m.st"
    says = user_error(cli("export", npz, "-f", "safetensors", "-o", out))
    assert says == f"-o '{out}': folder '{out.parent}' does not exist; create it first"
    says = user_error(cli("export", npz, "-f", "safetensors", "-o", tmp_path, "--overwrite"))
    assert says == f"-o '{tmp_path}' is not a file; give a file name"


@pytest.mark.parametrize("package, fmt", [("safetensors", "safetensors")])
def test_a_missing_package_says_how_to_install_it(package, fmt, runs, tmp_path, monkeypatch):
    _, npz, _ = both(runs, "rnn")
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, package, None)  # `import safetensors` raises ImportError
    says = user_error(cli("export", npz, "-f", fmt, "-o", tmp_path / "out"))
    assert says == (
        f"--format {fmt} needs the '{package}' package, which is not installed; "
        "install it with pip install 'charrnn[export]'"
    )
    assert list(tmp_path.iterdir()) == []


# ---- loading checks a .safetensors as strictly as an .npz ----


def handmade(tensors: dict, metadata: dict | None, header_edit=None, tail: bytes = b"") -> bytes:
    """The bytes of a .safetensors file written by hand (as another program might), so that
    it can be made wrong in ways the safetensors package would never write."""
    codes = {"<f4": "F32", "<f8": "F64", "<f2": "F16", "<i8": "I64"}
    header, data = {}, b""
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {
            "dtype": codes[a.dtype.str],
            "shape": list(a.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    if header_edit is not None:
        header_edit(header)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data + tail


def good_content(runs):
    from charrnn.export import safetensors_content

    _, npz, _ = both(runs, "lstm")
    return safetensors_content(ckpt_io.load(npz))


def meta(**changes):
    return lambda t, m: handmade(t, {**m, **changes})


def tensors(**changes):
    def make(t, m):
        t = dict(t)
        for k, v in changes.items():
            if v is None:
                del t[k]
            else:
                t[k] = v(t) if callable(v) else v
        return handmade(t, m)

    return make


def entry(name, **changes):
    return lambda t, m: handmade(t, m, lambda h: h[name].update(changes))


def raw(make_bytes):
    return lambda t, m: make_bytes(handmade(t, m))


def _spans_overlap(h):
    h["by"]["data_offsets"] = [0, h["by"]["data_offsets"][1] - h["by"]["data_offsets"][0]]


BAD_SAFETENSORS = {
    "a header longer than the file": (
        raw(lambda b: (10**12).to_bytes(8, "little") + b[8:]),
        "its header declares 1,000,000,000,000 bytes",
    ),
    "a header that is not JSON": (
        raw(lambda b: b[:9] + b"\xff" + b[10:]),
        "its safetensors header is not valid JSON",
    ),
    "a header that is a list": (raw(lambda b: (2).to_bytes(8, "little") + b"{]"), "not valid JSON"),
    "no metadata": (lambda t, m: handmade(t, None), "it has no vocab, config, format_version"),
    "metadata not strings": (meta(step=4), "its metadata must map names to strings"),
    "a bfloat16 tensor": (
        entry("Whh", dtype="BF16"),
        "tensor 'Whh' has a dtype charrnn does not read",
    ),
    "an entry with more keys": (
        entry("by", extra=1),
        "tensor 'by' is not a valid safetensors entry",
    ),
    "a negative dimension": (
        entry("by", shape=[-3]),
        "tensor 'by' is not a valid safetensors entry",
    ),
    "a shape its span cannot hold": (
        entry("Whh", shape=[10**6, 10**6]),
        "tensor 'Whh' declares <f4 (1000000, 1000000), which is not the ",
    ),
    "spans that overlap": (
        lambda t, m: handmade(t, m, _spans_overlap),
        "its tensors' spans overlap or leave gaps",
    ),
    "bytes after the last tensor": (
        lambda t, m: handmade(t, m, tail=b"x" * 8),
        "its tensors declare",
    ),
    "a missing weight": (tensors(Why=None), "it has no Why"),
    "a tensor not of the model": (
        tensors(**{"opt.m.Whh": lambda t: t["Whh"]}),
        "holds 'opt.m.Whh', not a model array",
    ),
    "a third layer's weights": (
        tensors(Wxh_2=lambda t: t["Wxh_1"]),
        "holds 'Wxh_2', not a model array",
    ),
    "Whh misshapen": (
        tensors(Whh_1=np.zeros((32, 7), np.float32)),
        "'Whh_1' has shape (32, 7), expected (32, 8)",
    ),
    "mixed dtypes": (
        tensors(by=lambda t: t["by"].astype(np.float64)),
        "weights must all be float32 or all float64",
    ),
    "float16 weights": (
        tensors(
            **{
                k: (lambda t, k=k: t[k].astype(np.float16))
                for k in ("Wxh", "Whh", "bh", "Wxh_1", "Whh_1", "bh_1", "Why", "by")
            }
        ),
        "float32 or all float64",
    ),
    "NaN weights": (
        tensors(Whh=lambda t: t["Whh"] * np.float32("nan")),
        "'Whh' contains NaN or infinite values",
    ),
    "vocab not JSON": (meta(vocab="[a, b]"), "'vocab' must be a JSON list of single characters"),
    "vocab of strings longer than one character": (
        meta(vocab='["ab", "c"]'),
        "'vocab' must be a JSON list of single characters",
    ),
    "vocab unsorted": (
        lambda t, m: handmade(t, {**m, "vocab": json.dumps(json.loads(m["vocab"])[::-1])}),
        "'vocab' is empty or not sorted distinct",
    ),
    "vocab shorter than the weights": (
        lambda t, m: handmade(t, {**m, "vocab": json.dumps(json.loads(m["vocab"])[:-2])}),
        "'Wxh' has shape",
    ),
    "a newer format_version": (
        meta(format_version="3"),
        "format_version 3, newer than this charrnn reads (2); upgrade charrnn",
    ),
    "format_version not a number": (
        meta(format_version="two"),
        "metadata 'format_version' is not a whole number",
    ),
    "a step of 40 digits": (meta(step="9" * 40), "metadata 'step' is not a whole number"),
    "an unknown cell": (meta(cell="transformer"), "array 'cell' has the wrong type or shape"),
    "a cell unlike its weights": (
        meta(cell="gru"),
        "'Whh' has shape (32, 8), expected (3 H, H) for a gru",
    ),
    "num_layers 0": (meta(num_layers="0"), "unknown cell 'lstm' or bad num_layers 0"),
    "config not JSON": (
        meta(config="{hidden_size: 8"),
        "'config' or 'train_state' is not valid JSON",
    ),
    "config a list": (meta(config="[1]"), "'config' and 'train_state' must be JSON objects"),
    "a config of 100,000 characters": (
        meta(config=json.dumps({"x": "y" * 100_000})),
        "'config' is longer than 65,536 characters",
    ),
}


@pytest.mark.parametrize("case", BAD_SAFETENSORS)
def test_a_bad_safetensors_is_refused_in_one_line(case, runs, tmp_path):
    make, says = BAD_SAFETENSORS[case]
    path = tmp_path / "bad.safetensors"
    path.write_bytes(make(*good_content(runs)))
    with pytest.raises(CheckpointError, match=re.escape(says)) as e:
        ckpt_io.load(path)
    assert "\n" not in str(e.value) and f"'{path}'" in str(e.value)
    assert says in user_error(cli("sample", "--checkpoint", path, "--length", 5))


def test_a_file_written_by_hand_with_the_right_names_loads(runs, tmp_path):
    t, m = good_content(runs)
    path = tmp_path / "by-hand.safetensors"
    path.write_bytes(
        handmade(t, {k: m[k] for k in ("format_version", "cell", "num_layers", "vocab", "config")})
    )
    model, exported = charrnn.load(path), charrnn.load(both(runs, "lstm")[2])
    assert model.step == 0 and model.train_state == {}
    assert model.sample("Th", 40, rng_seed=4) == exported.sample("Th", 40, rng_seed=4)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=strategies.data())
def test_any_damage_to_a_safetensors_is_loaded_or_refused(data, runs, tmp_path):
    """A byte changed, or the file cut short, anywhere: it loads (a weight's value changed) or
    it is one CheckpointError; never another exception."""
    good = bytearray(runs["gru"][1].joinpath("best.safetensors").read_bytes())
    header_end = 8 + int.from_bytes(good[:8], "little")
    at = data.draw(strategies.integers(0, header_end + 64))  # the header, and the first weights
    if data.draw(strategies.booleans()):
        good[at] = data.draw(strategies.integers(0, 255))
    else:
        del good[at:]
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(good))
    try:
        ckpt_io.load(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and str(path) in str(e)


# ---- the NumPy sampler of docs/export.md ----


def doc_block(page: str, heading: str) -> str:
    """The first ```python block after `heading` in docs/page."""
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    after = text[text.index(f"\n{heading}\n") :]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.parametrize("cell", CELLS)
def test_the_numpy_sampler_of_the_docs_draws_what_charrnn_sample_draws(
    cell, runs, tmp_path, monkeypatch, capsys
):
    _, npz, st = both(runs, cell)
    script = tmp_path / "sampler.py"
    script.write_text(doc_block("export.md", "## A sampler in NumPy"), encoding="utf-8")
    for prime, seed in (("Th", 7), ("", 11)):
        monkeypatch.setattr(sys, "argv", ["sampler.py", str(st), prime, "120", str(seed)])
        runpy.run_path(str(script), run_name="__main__")
        drawn = capsys.readouterr().out
        args = ["--seed", prime] if prime else []
        charrnn_text = cli(
            "sample", "--checkpoint", npz, *args, "--length", 120, "--rng-seed", seed
        )
        assert charrnn_text.exit_code == 0 and drawn == charrnn_text.stdout
        assert len(drawn) == len(prime) + 121
