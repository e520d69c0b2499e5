"""charrnn.checkpoint: one self-contained .npz, saved atomically and loaded without pickle.

What it promises: `load` gives back every field `save` wrote; a save that fails leaves the
previous file as it was and says so; `remove_temp_files` clears what a killed save left; and
`load` refuses every file that is not a sound charrnn checkpoint with a CheckpointError of one
line that names the file and says what is wrong, never unpickling anything. Every command that
reads a checkpoint (train --resume, sample, eval) reports that line as its one `Error:` line.

Checkpoints that load but cannot be resumed are test_train.py's; a save cut short by a kill or a
full disk in the middle of training is test_faults.py's.
"""

from __future__ import annotations

import errno
import io
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    arrays,
    bad_file,
    checkpoint_commands,
    cli,
    edit,
    elsewhere,
    f32,
    temp_files,
    user_error,
)

from charrnn import checkpoint as ckpt_io
from charrnn.errors import CheckpointError


def tiny_checkpoint(**fields) -> ckpt_io.Checkpoint:
    """A checkpoint of H=3 over the characters NUL, 'a', 'b', with every field set."""
    rng = np.random.default_rng(0)
    H, V = 3, 3
    shapes = {"Wxh": (H, V), "Whh": (H, H), "bh": (H,), "Why": (V, H), "by": (V,)}
    params = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    values = dict(
        params=params,
        vocab=["\0", "a", "b"],
        config={"hidden_size": H, "optimizer": "adam"},
        step=7,
        h_carry=rng.standard_normal((2, H)).astype(np.float32),
        opt_state={f"{slot}.{k}": np.ones_like(v) for k, v in params.items() for slot in "mv"},
        train_state={"best_val_loss": 1.5, "bad_evals": 1},
    )
    return ckpt_io.Checkpoint(**{**values, **fields})


# ---- save and load ----


def test_load_gives_back_every_field_save_wrote(tmp_path):
    saved = tiny_checkpoint()
    ckpt_io.save(saved, tmp_path / "c.npz")
    loaded = ckpt_io.load(tmp_path / "c.npz")
    assert loaded.vocab == ["\0", "a", "b"]  # NUL survives, though numpy stores it as ""
    assert (loaded.config, loaded.step, loaded.train_state) == (
        saved.config,
        saved.step,
        saved.train_state,
    )
    for got, want in [
        (loaded.params, saved.params),
        (loaded.opt_state, saved.opt_state),
        ({"h": loaded.h_carry}, {"h": saved.h_carry}),
    ]:
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_a_failed_save_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    ckpt_io.save(tiny_checkpoint(step=1), path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_io.np, "savez", disk_full)
    with pytest.raises(CheckpointError) as e:
        ckpt_io.save(tiny_checkpoint(step=2), path)
    assert str(e.value) == (
        f"could not write checkpoint '{path}': No space left on device; the previous "
        "checkpoint is unchanged (free disk space or check the folder's permissions, "
        "then --resume)"
    )
    assert path.read_bytes() == before and temp_files(tmp_path) == []
    with pytest.raises(CheckpointError, match="; nothing was written "):
        ckpt_io.save(tiny_checkpoint(), tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_remove_temp_files_removes_only_what_a_killed_save_left(tmp_path):
    names = [".last.npz.k3j2h1.tmp", ".best.npz.zz9.tmp", "last.npz", "notes.tmp", ".keep"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    ckpt_io.remove_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep", "last.npz", "notes.tmp"]


# ---- files load refuses ----


def _truncated(raw: bytes) -> bytes:
    return raw[: len(raw) * 2 // 3]


def _foreign_zip(_raw: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("hello.txt", "not a model")
    return buf.getvalue()


def _npy(_raw: bytes) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros(3))
    return buf.getvalue()


def _past_unicode(a: np.ndarray) -> np.ndarray:
    """A copy of unicode array a whose first code unit is past U+10FFFF (no str can hold it)."""
    a = np.ascontiguousarray(a).copy()
    a.reshape(-1).view(np.uint32)[0] = 0x110000
    return a


# name: (a function of the valid file's bytes, of its arrays or of its path; what load says)
BAD_CHECKPOINTS = {
    "missing": (elsewhere(lambda dest: dest.with_name("nope.npz")), "not found"),
    "name too long": (
        elsewhere(lambda dest: dest.with_name("x" * 300 + ".npz")),  # over 255 bytes
        "File name too long",
    ),
    "truncated": (_truncated, "is truncated or corrupt"),
    "empty file": (lambda raw: b"", "it is empty"),
    "not a zip": (lambda raw: b"Wxh Whh bh Why by\n" * 20, "not an .npz file"),
    "a .npy": (_npy, "single .npy array"),
    "a zip not ours": (_foreign_zip, "its 'hello.txt' is not a NumPy array"),
    "a zip of other arrays": (
        edit(**{k: None for k in ("Wxh", "Whh", "bh", "Why", "by")}),
        "it has no Wxh, Whh, bh, Why, by",
    ),
    "missing arrays": (edit(Whh=None, vocab=None), "it has no Whh, vocab"),
    "shapes disagree": (edit(Why=lambda a: f32((a["Why"].shape[0], 5))), "'Why' has shape"),
    "Whh not square": (edit(Whh=lambda a: f32((8, 9))), "'Whh' has shape (8, 9)"),
    "vocab disagrees": (edit(vocab=lambda a: a["vocab"][:-3]), "'Wxh' has shape"),
    "vocab unsorted": (edit(vocab=lambda a: a["vocab"][::-1].copy()), "not sorted distinct"),
    "vocab past Unicode": (
        edit(vocab=lambda a: _past_unicode(a["vocab"])),
        "'vocab' must be a 1-D array of single characters",
    ),
    "config past Unicode": (
        edit(config=lambda a: _past_unicode(a["config"])),
        "array 'config' has the wrong type",
    ),
    "NaN weights": (edit(Whh=lambda a: a["Whh"] * np.float32("nan")), "NaN or infinite"),
    "inf optimizer state": (
        edit(**{"opt.v.by": lambda a: a["opt.v.by"] + np.inf}),
        "optimizer state 'opt.v.by' contains NaN",
    ),
    "optimizer state misshapen": (
        edit(**{"opt.m.Whh": f32((2, 2))}),
        "optimizer state 'opt.m.Whh' does not match",
    ),
    "h_carry misshapen": (edit(h_carry=f32((2, 3))), "'h_carry' is float32 (2, 3)"),
    "newer format_version": (
        edit(format_version=np.array(99)),
        "format_version 99, newer than this charrnn reads (2); upgrade",
    ),
    "negative step": (edit(step=np.array(-1)), "invalid step -1"),
    "config not JSON": (edit(config=np.array("{hidden_size: 8")), "not valid JSON"),
    "config a list": (edit(config=np.array("[1, 2]")), "must be JSON objects"),
    "weights float16": (edit(Wxh=lambda a: a["Wxh"].astype(np.float16)), "float32 or all"),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_in_one_line(case, good_run, tmp_path):
    corpus, run = good_run
    how, says = BAD_CHECKPOINTS[case]
    path = bad_file(run / "last.npz", tmp_path / "bad.npz", how)
    with pytest.raises(CheckpointError, match=re.escape(says)) as e:
        ckpt_io.load(path)
    assert "\n" not in str(e.value) and f"'{path}'" in str(e.value)
    for command in checkpoint_commands(path, corpus, "--max-steps", 99):
        message = user_error(cli(*command))
        assert says in message and str(path)[:80] in message  # a long name is cut short


class _Evil:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["vocab", "extra array"])
def test_pickled_object_array_is_refused_never_unpickled(where, good_run, tmp_path):
    corpus, run = good_run
    marker = tmp_path / "unpickled.marker"
    name = "vocab" if where == "vocab" else "notes"
    contents = arrays(run / "last.npz")
    contents[name] = np.array([_Evil(marker)] * 3, dtype=object)
    path = tmp_path / "evil.npz"
    np.savez(path, **contents)  # np.savez pickles object arrays
    # the control: numpy with allow_pickle=True would run the payload
    with np.load(path, allow_pickle=True) as z:
        z[name]
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="pickled Python objects, which are refused"):
        ckpt_io.load(path)
    for command in checkpoint_commands(path, corpus, "--max-steps", 99):
        assert "refused because loading them can run code" in user_error(cli(*command))
    assert not marker.exists()
