"""charrnn export and the .safetensors checkpoint (charrnn/export.py, checkpoint.py).

What it promises: a .safetensors export holds the model's arrays alone, under the checkpoint's
names, with what sampling needs in its metadata; every command that reads a checkpoint (sample,
eval, info, show, charrnn.load) reads it and gives exactly what it gives from the .npz; loading
one checks it as strictly as an .npz (a crafted or damaged file is one `Error:` line); and
`charrnn export` refuses, in one line, an unknown format, an output that exists (unless
--overwrite), the checkpoint as its own output and a missing package. The ONNX graph gives
charrnn's logits and state (checked with onnxruntime) and a loop over it draws charrnn's
samples; the model-hub folder holds the same file, a config and a card that says what the
checkpoint knows and what it does not.
"""

from __future__ import annotations

import errno
import json
import os
import re
import runpy
import sys

import numpy as np
import pytest
import yaml
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
    assert meta["cell"] == cell and meta["num_layers"] == "2" and meta["format_version"] == "3"
    assert json.loads(meta["vocab"]) == charrnn.load(npz).vocab
    assert json.loads(meta["config"]) == json.loads(str(saved["config"]))
    assert set(json.loads(meta["train_state"])) == {"best_val_loss", "chars_seen", "corpus"}
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
    assert b.train_state == {k: a.train_state[k] for k in ("best_val_loss", "chars_seen", "corpus")}
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
    says = user_error(cli("export", npz, "-f", "onnx", "-o", "-"))
    assert says == "-o - would write to standard output, which export does not; give a path"


@pytest.mark.parametrize(
    "package, fmt", [("safetensors", "safetensors"), ("safetensors", "hf"), ("onnx", "onnx")]
)
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
        meta(format_version="4"),
        "format_version 4, newer than this charrnn reads (3); upgrade charrnn",
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


# ---- ONNX: the graph computes what charrnn computes ----


def onnx_session(path):
    onnxruntime = pytest.importorskip("onnxruntime")  # in the dev extra; wheels for most platforms
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def strong(tmp_path_factory) -> dict:
    """{cell: checkpoint} of a 2-layer model of each cell over the characters of TEXT[:500],
    with weights large enough (init_scale 0.5) that every unit and gate moves, exported to
    ONNX beside it."""
    folder = tmp_path_factory.mktemp("onnx")
    vocab = sorted(set(TEXT[:500]))
    made = {}
    for cell in CELLS:
        rng = np.random.default_rng(len(cell))
        params = charrnn.model.init_params(
            len(vocab), 16, rng, cell=cell, num_layers=2, init_scale=0.5
        )
        path = folder / f"{cell}.npz"
        ckpt_io.save(ckpt_io.Checkpoint(params, vocab, {"cell": cell}), path)
        result = cli("export", path, "-f", "onnx", "-o", path.with_suffix(".onnx"))
        assert result.exit_code == 0, result.output
        made[cell] = path
    return made


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_logits_over_500_characters_equal_charrnns(cell, strong):
    model = charrnn.load(strong[cell])
    ids, _ = charrnn.data.encode(TEXT[:500], model.vocab)  # (500,)
    hs, state = charrnn.model.run(
        model.params, ids[:, None], charrnn.model.zero_state(model.params, 1)
    )
    want = hs[1:] @ model.params["Why"].T + model.params["by"]  # (T, 1, V)
    logits, new_state = onnx_session(strong[cell].with_suffix(".onnx")).run(
        None,
        {"ids": ids[:, None].astype(np.int64), "state": charrnn.model.zero_state(model.params, 1)},
    )
    assert logits.shape == want.shape == (500, 1, len(model.vocab))
    assert np.abs(logits - want).max() < 1e-4 and np.abs(new_state - state).max() < 1e-4
    assert want.std() > 0.2  # the logits move: a test that could fail


@pytest.mark.parametrize("cell", CELLS)
def test_onnx_reads_batches_and_carries_the_state_in_charrnns_layout(cell, strong):
    model = charrnn.load(strong[cell])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, len(model.vocab), (40, 3))  # (T, B)
    state0 = rng.standard_normal((3, model.arch.state_width)).astype(np.float32)  # (B, W)
    hs, state = charrnn.model.run(model.params, ids, state0)
    session = onnx_session(strong[cell].with_suffix(".onnx"))
    first, mid = session.run(None, {"ids": ids[:25].astype(np.int64), "state": state0})
    second, last = session.run(None, {"ids": ids[25:].astype(np.int64), "state": mid})  # fed back
    want = hs[1:] @ model.params["Why"].T + model.params["by"]
    assert np.abs(np.concatenate([first, second]) - want).max() < 1e-4
    assert np.abs(last - state).max() < 1e-4


def test_the_onnx_graph_says_what_it_takes_and_what_model_it_is(strong):
    import onnx

    graph = onnx.load(strong["lstm"].with_suffix(".onnx"))
    onnx.checker.check_model(graph)
    assert [(o.domain, o.version) for o in graph.opset_import] == [("", 17)]
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*graph.graph.input, *graph.graph.output)
    }
    V, W = len(charrnn.load(strong["lstm"]).vocab), 2 * 2 * 16
    assert shapes == {
        "ids": ["T", "B"],
        "state": ["B", W],
        "logits": ["T", "B", V],
        "new_state": ["B", W],
    }
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["vocab"]) == charrnn.load(strong["lstm"]).vocab
    assert (props["cell"], props["num_layers"], props["hidden_size"]) == ("lstm", "2", "16")
    assert {n.op_type for n in graph.graph.node} >= {"OneHot", "LSTM", "MatMul"}


@pytest.mark.parametrize("cell", CELLS)
def test_the_onnx_sampler_of_the_docs_draws_what_charrnn_sample_draws(cell, strong):
    """docs/export.md's ONNX loop over the graph alone, with charrnn's random numbers."""
    space: dict = {}
    pytest.importorskip("onnxruntime")
    exec(doc_block("export.md", "## ONNX"), space)  # our own docs, under test
    for temperature, m, seed in ((1.0, 1, 5), (0.7, 3, 6), (1.5, 2, 7)):
        result = cli(
            "sample", "--checkpoint", strong[cell], "--seed", "The", "--length", 200, "--json",
            "--rng-seed", seed, "--temperature", temperature, "--num-samples", m,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        texts = [s["text"] for s in json.loads(result.stdout)]
        onnx_path = str(strong[cell].with_suffix(".onnx"))
        assert space["sample_onnx"](onnx_path, "The", 200, seed, temperature, m) == texts
        assert len(set(texts)) == m and all(len(t) == 203 for t in texts)


def test_float64_models_export_to_float32_onnx(tmp_path):
    rng = np.random.default_rng(2)
    params = charrnn.model.init_params(5, 6, rng, dtype=np.float64, cell="lstm", init_scale=0.5)
    ckpt_io.save(ckpt_io.Checkpoint(params, list("abcde"), {}), tmp_path / "m.npz")
    assert cli("export", tmp_path / "m.npz", "-f", "onnx", "-o", tmp_path / "m.onnx").exit_code == 0
    ids = rng.integers(0, 5, (30, 2))
    logits, _ = onnx_session(tmp_path / "m.onnx").run(
        None, {"ids": ids, "state": np.zeros((2, 12), np.float32)}
    )
    hs, _ = charrnn.model.run(params, ids, charrnn.model.zero_state(params, 2))
    assert logits.dtype == np.float32
    assert np.abs(logits - (hs[1:] @ params["Why"].T + params["by"])).max() < 1e-5


# ---- hf: a folder ready for a model hub ----


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4 : card.index("\n---\n", 4)])


def test_the_hub_folder_holds_the_model_a_config_and_a_card(runs, tmp_path):
    _, npz, st = both(runs, "gru")
    folder = tmp_path / "gru-model"
    result = cli("export", npz, "-f", "hf", "-o", folder, "--json")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    sizes = sum(p.stat().st_size for p in folder.iterdir())
    assert json.loads(result.stdout) == {"path": str(folder), "format": "hf", "bytes": sizes}
    assert (folder / "model.safetensors").read_bytes() == st.read_bytes()
    info = json.loads(cli("info", npz, "--json").stdout)
    config = json.loads((folder / "config.json").read_text())
    assert config["library_name"] == "charrnn" and config["vocab"] == info["vocab"]
    assert (config["cell"], config["num_layers"], config["hidden_size"]) == ("gru", 2, 8)
    assert config["training"] == info["config"] and config["best_val_bpc"] == info["best_val_bpc"]

    card = (folder / "README.md").read_text()
    front = front_matter(card)
    assert front["library_name"] == "charrnn" and "gru" in front["tags"]
    assert front["license"] is None and "license: null  # fill in before uploading" in card
    assert front["corpus"] == {
        "name": None,
        "characters": None,
        "distinct_characters": len(info["vocab"]),
        "vocabulary": "".join(info["vocab"]),
    }
    training = front["training"]
    assert training["settings"] == info["config"] and training["steps"] == info["step"]
    assert training["validation_bpc"]["best"] == round(info["best_val_bpc"], 4)
    metric = front["model-index"][0]["results"][0]["metrics"][0]
    assert metric == {
        "type": "bpc",
        "name": "validation bits per character",
        "value": round(info["best_val_bpc"], 4),
    }
    assert "does not record which corpus it was trained on, nor its size" in card
    assert f"{round(info['best_val_bpc'], 4):.4f} bpc (best)" in card
    assert f"charrnn sample --checkpoint {folder.name} " in card
    texts = [
        cli("sample", "--checkpoint", p, "--rng-seed", 4, "--length", 50).stdout
        for p in (npz, folder)
    ]
    assert texts[0] == texts[1]


def test_a_card_without_validation_says_so(tmp_path):
    params = charrnn.model.init_params(3, 4, np.random.default_rng(0), cell="rnn")
    ckpt_io.save(ckpt_io.Checkpoint(params, ["\n", "a", "b"], {}), tmp_path / "m.npz")
    assert cli("export", tmp_path / "m.npz", "-f", "hf", "-o", tmp_path / "hub").exit_code == 0
    card = (tmp_path / "hub" / "README.md").read_text()
    front = front_matter(card)
    assert "model-index" not in front and front["training"]["validation_bpc"] == {
        "best": None,
        "last": None,
    }
    assert "validation\noff: not measured." in card and front["corpus"]["vocabulary"] == "\nab"


def test_a_hub_folder_is_replaced_whole_and_only_when_it_holds_an_export(runs, tmp_path):
    _, npz, _ = both(runs, "rnn")
    _, other, _ = both(runs, "lstm")
    folder = tmp_path / "hub"
    assert cli("export", npz, "-f", "hf", "-o", folder).exit_code == 0
    says = user_error(cli("export", other, "-f", "hf", "-o", folder))
    assert says == f"-o '{folder}' exists; pass --overwrite to replace it, or give a new name"
    assert cli("export", other, "-f", "hf", "-o", folder, "--overwrite").exit_code == 0
    assert charrnn.load(folder).arch.cell == "lstm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]  # no temporary folder left
    (folder / ".git").mkdir()
    says = user_error(cli("export", npz, "-f", "hf", "-o", folder, "--overwrite"))
    assert says == (
        f"-o '{folder}' holds other files than a model-hub export (.git), which --overwrite "
        "would delete; give a new folder and copy what you need"
    )
    says = user_error(cli("export", npz, "-f", "hf", "-o", npz.parent, "--overwrite"))
    assert says.startswith(f"-o '{npz.parent}' is where the checkpoint")
    says = user_error(cli("export", npz, "-f", "hf", "-o", folder / "config.json", "--overwrite"))
    assert (
        says
        == f"-o '{folder / 'config.json'}' is a file; --format hf writes a folder, give a new name"
    )


def test_one_checkpoint_always_gives_the_same_bytes(runs, tmp_path):
    _, npz, _ = both(runs, "lstm")
    for fmt in ("safetensors", "onnx"):
        for name in ("a", "b"):
            assert cli("export", npz, "-f", fmt, "-o", tmp_path / f"{name}.{fmt}").exit_code == 0
        assert (tmp_path / f"a.{fmt}").read_bytes() == (tmp_path / f"b.{fmt}").read_bytes()


@pytest.mark.parametrize("fmt", ["safetensors", "hf"])
def test_a_full_disk_leaves_the_previous_export_and_no_temporary_file(
    fmt, runs, tmp_path, monkeypatch
):
    _, npz, _ = both(runs, "rnn")
    out = tmp_path / "out"
    assert cli("export", npz, "-f", fmt, "-o", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()} if fmt == "hf" else out.read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    _, other, _ = both(runs, "gru")
    says = user_error(cli("export", other, "-f", fmt, "-o", out, "--overwrite"))
    what = "folder '" if fmt == "hf" else "'"
    assert says == (
        f"could not write {what}{out}': No space left on device; the previous one is unchanged "
        "(free disk space or check the folder's permissions)"
    )
    after = {p.name: p.read_bytes() for p in out.iterdir()} if fmt == "hf" else out.read_bytes()
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    says = user_error(cli("export", other, "-f", fmt, "-o", tmp_path / "new"))
    assert "; nothing was written (" in says and not (tmp_path / "new").exists()
