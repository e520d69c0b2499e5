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
import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
import zlib
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ---- crafted files: zips that say what np.savez never writes ----


def members(raw: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return {name: z.read(name) for name in z.namelist()}


def npy_header(shape, descr: str) -> bytes:
    """An .npy header (format 1.0) declaring shape and dtype, without any data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    )
    return buf.getvalue()


def split_npy(npy: bytes) -> tuple[np.dtype, bytes]:
    """(dtype, data) of an .npy file's bytes."""
    f = io.BytesIO(npy)
    np.lib.format.read_magic(f)
    _, _, dtype = np.lib.format.read_array_header_1_0(f)
    return dtype, npy[f.tell() :]


def handmade_zip(entries) -> bytes:
    """A zip written byte by byte, so that it can say what zipfile never writes. Entries are
    (name, method, payload, file_size, crc) with payload the bytes as stored (deflated for
    method 8); compress_size is len(payload) unless an entry has a sixth item."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, payload, size, crc, *csize in entries:
        csize = csize[0] if csize else len(payload)
        offset, n = out.tell(), name.encode()
        out.write(
            struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, csize, size, len(n), 0
            )
        )
        out.write(n + payload)
        central.write(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                method,
                0,
                0,
                crc,
                csize,
                size,
                len(n),
                0,
                0,
                0,
                0,
                0,
                offset,
            )  # fmt: skip
            + n
        )
    cd, start, count = central.getvalue(), out.tell(), len(entries)
    out.write(cd + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, len(cd), start, 0))
    return out.getvalue()


def stored(parts: dict[str, bytes]) -> list[tuple]:
    return [(name, 0, data, len(data), zlib.crc32(data)) for name, data in parts.items()]


def declaring(name: str, shape, descr: str | None = None):
    """The file with array `name`'s header declaring another shape (and dtype), its data kept:
    a few bytes' edit that makes numpy allocate whatever the header says."""

    def make(raw: bytes) -> bytes:
        parts = members(raw)
        dtype, data = split_npy(parts[name + ".npy"])
        parts[name + ".npy"] = npy_header(shape, descr or dtype.str) + data
        return handmade_zip(stored(parts))

    return make


def deflated_zeros(header: bytes, mib: int) -> bytes:
    """Raw deflate of header + mib MiB of zeros, made without ever holding them: one
    independent (fully flushed) block of a MiB of zeros, repeated. About 1 kB a MiB."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(bytes(1 << 20)) + c.flush(zlib.Z_FULL_FLUSH)
    return head + zeros * mib + c.flush()


def bomb(name: str, mib: int, descr: str, shape_of=None):
    """The file with array `name` replaced by a deflated one that holds what its header
    declares, mib MiB of zeros: a few MB on disk, gigabytes once read."""

    def make(raw: bytes) -> bytes:
        parts = members(raw)
        itemsize = np.dtype(descr).itemsize
        count = (mib << 20) // itemsize
        shape = shape_of(count) if shape_of else (count,)
        header = npy_header(shape, descr)
        payload = deflated_zeros(header, mib)
        size = len(header) + int(np.prod(shape, dtype=object)) * itemsize  # what it declares
        entries = stored({k: v for k, v in parts.items() if k != name + ".npy"})
        entries.append((name + ".npy", 8, payload, size, 0))  # the CRC: never read that far
        return handmade_zip(entries)

    return make


def lying_sizes(name: str, size: int, csize: int | None = None, method: int = 0):
    """The file with member `name` declaring sizes (uncompressed, compressed) it does not have."""

    def make(raw: bytes) -> bytes:
        parts = members(raw)
        entries = []
        for k, v in parts.items():
            if k != name + ".npy":
                entries += stored({k: v})
            elif method == 8:
                payload = zlib.compress(v)[2:-4]  # raw deflate
                entries.append((k, 8, payload, size, zlib.crc32(v)))
            else:
                entries.append((k, 0, v, size, zlib.crc32(v), csize))
        return handmade_zip(entries)

    return make


def train_state_edit(**changes):
    """An edit of the checkpoint's train_state JSON (rng_state.x: a key of the RNG state)."""

    def make(a):
        ts = json.loads(str(a["train_state"]))
        for key, value in changes.items():
            if key.startswith("rng_"):
                rng = ts["rng_state"]
                (rng["state"] if key in ("rng_state_word", "rng_inc") else rng)[
                    {"rng_state_word": "state", "rng_inc": "inc"}.get(key, key[4:])
                ] = value
            else:
                ts[key] = value
        return np.array(json.dumps(ts))

    return edit(train_state=make)


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
        "format_version 99, newer than this charrnn reads (3); upgrade",
    ),
    "negative step": (edit(step=np.array(-1)), "invalid step -1"),
    "config not JSON": (edit(config=np.array("{hidden_size: 8")), "not valid JSON"),
    "config a list": (edit(config=np.array("[1, 2]")), "must be JSON objects"),
    "weights float16": (edit(Wxh=lambda a: a["Wxh"].astype(np.float16)), "float32 or all"),
    # crafted: checked against the file and each other before any data is read (issue 11)
    "vocab declares 10^12 characters": (
        declaring("vocab", (10**12,)),
        "array 'vocab' declares <U1 (1000000000000,), which is not the ",
    ),
    "Whh declares 10^12 entries": (
        declaring("Whh", (10**6, 10**6)),
        "array 'Whh' declares <f4 (1000000, 1000000), which is not the ",
    ),
    "a negative dimension": (declaring("by", (-5,)), "array 'by' declares <f4 (-5,)"),
    "a vocabulary that decompresses to 256 MB": (
        bomb("vocab", 256, "<U1"),
        "'vocab' declares 67,108,864 characters, more than Unicode has",
    ),
    "weights that decompress to 256 MB": (
        bomb("Whh", 256, "<f4", lambda n: (int(n**0.5), int(n**0.5))),
        "'Wxh' has shape (8, 59), expected (8192, 59)",
    ),
    "a member larger than deflate can make it": (
        lying_sizes("vocab", 10**9, method=8),
        "member 'vocab.npy' declares a size its data cannot have",
    ),
    "members larger than the file": (
        lying_sizes("Why", 4 * 10**9, csize=4 * 10**9),
        "its members declare more bytes than the file holds",
    ),
    "a config of 100,000 characters": (
        edit(config=np.array(json.dumps({"x": "y" * 100_000}))),
        "'config' is longer than 65,536 characters",
    ),
    "format_version an array": (
        edit(format_version=np.zeros(3, dtype=np.int64)),
        "array 'format_version' has the wrong type or shape",
    ),
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


# ---- crafted files are refused before their data is read ----


@pytest.mark.parametrize(
    "case", [c for c in BAD_CHECKPOINTS if "declare" in c or "decompress" in c]
)
def test_crafted_sizes_are_refused_in_bounded_time_and_memory(case, good_run, tmp_path):
    _, run = good_run
    path = bad_file(run / "last.npz", tmp_path / "bad.npz", BAD_CHECKPOINTS[case][0])
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        with pytest.raises(CheckpointError):
            ckpt_io.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # the work is bounded: nothing of the claimed size is read


def test_more_members_than_a_checkpoint_has_are_refused_unread(good_run, tmp_path, monkeypatch):
    _, run = good_run
    monkeypatch.setattr(ckpt_io, "MAX_MEMBERS", 10)
    with pytest.raises(CheckpointError, match=r"has 2\d members, more than a checkpoint holds"):
        ckpt_io.load(run / "last.npz")


def _bounded_cli(args, memory: int, cwd: Path, timeout: float = 60):
    """`python -m charrnn ARGS` in a process limited to `memory` bytes of address space."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "charrnn", *map(str, args)]
    return subprocess.run(
        cmd, cwd=cwd, env=env, preexec_fn=limit, capture_output=True, text=True, timeout=timeout
    )


def test_a_model_bigger_than_memory_is_refused_with_what_it_needs(good_run, tmp_path):
    """A file whose arrays agree with each other but need more memory than the process may use
    (here weights of hidden size 16,384: 1 GiB of deflated zeros in 1 MB) is refused, saying how
    much it needs, not with a MemoryError after minutes."""
    _, run = good_run
    parts = members((run / "last.npz").read_bytes())
    H = 16384
    V = split_npy(parts["vocab.npy"])[1].__len__() // 4
    shapes = {"Wxh": (H, V), "Whh": (H, H), "bh": (H,), "Why": (V, H), "by": (V,)}
    entries = stored({k: v for k, v in parts.items() if k[:-4] not in (*shapes, "h_carry")})
    entries = [e for e in entries if not e[0].startswith("opt.")]
    for name, shape in shapes.items():
        header = npy_header(shape, "<f4")
        size = len(header) + 4 * int(np.prod(shape))
        if name == "Whh":  # 1 GiB: made without holding it, its CRC never reached
            entries.append((f"{name}.npy", 8, deflated_zeros(header, 1024), size, 0))
        else:
            data = header + bytes(size - len(header))
            entries.append((f"{name}.npy", 8, zlib.compress(data)[2:-4], size, zlib.crc32(data)))
    path = tmp_path / "big.npz"
    path.write_bytes(handmade_zip(entries))
    assert path.stat().st_size < 4 << 20

    result = _bounded_cli(["sample", "--checkpoint", path, "--length", 5], 1 << 30, tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"Error: checkpoint '{path}' needs 1.1 GB of memory to load")
    assert "this process can use; load it on a machine with more memory" in result.stderr


def test_a_two_gigabyte_member_through_the_cli_in_bounded_memory(good_run, tmp_path):
    corpus, run = good_run
    path = bad_file(run / "last.npz", tmp_path / "bomb.npz", bomb("vocab", 2048, "<U1"))
    for command in checkpoint_commands(path, corpus, "--out", tmp_path / "r"):
        result = _bounded_cli(command, 1 << 30, tmp_path)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "'vocab' declares 536,870,912 characters, more than Unicode has" in result.stderr


DESCRS = ["<f4", "<f8", ">f4", "<U1", "<U4", "<U100000", "<i8", "|b1", "<c8", "|S5", "|O"]
DIMS = st.one_of(st.integers(0, 16), st.integers(10**5, 10**13), st.just(-1))


@settings(
    max_examples=max(1, round(60 * float(os.environ.get("CHARRNN_FUZZ_SCALE", "1")))),
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_declared_shape_is_loaded_or_refused_in_bounded_memory(data, good_run, tmp_path):
    """A member of a valid checkpoint (or a new one) with a header declaring any shape and type,
    its data kept, cut or made to agree with the header, stored or deflated: load returns a
    checkpoint or refuses in one line, never holding more than the file could honestly need."""
    _, run = good_run
    parts = members((run / "last.npz").read_bytes())
    name = data.draw(st.sampled_from([*sorted(parts), "extra.npy"]), label="member")
    shape = data.draw(st.lists(DIMS, max_size=3), label="shape")
    descr = data.draw(st.sampled_from(DESCRS), label="dtype")
    header = npy_header(shape, descr)
    nbytes = int(np.prod(shape, dtype=object)) * np.dtype(descr).itemsize
    old = split_npy(parts[name])[1] if name in parts else b""
    how = data.draw(st.sampled_from(["data kept", "data cut", "as declared"]), label="data")
    if how == "as declared" and 0 <= nbytes <= 1 << 20:
        body = bytes(nbytes)
    else:
        body = old[: len(old) // 2] if how == "data cut" else old
    parts[name] = header + body
    entries = []
    deflate = data.draw(st.booleans(), label="deflated")
    for k, v in parts.items():
        payload = zlib.compress(v)[2:-4] if deflate else v
        entries.append((k, 8 if deflate else 0, payload, len(v), zlib.crc32(v)))
    path = tmp_path / "crafted.npz"
    path.write_bytes(handmade_zip(entries))

    tracemalloc.start()
    try:
        try:
            ckpt_io.load(path)
        except CheckpointError as e:
            assert "\n" not in str(e)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # bounded work: no member is inflated to its claimed size


# ---- hand-edited train_state: a sound model, but nothing a resume can use ----

# name: (the edit, the key train_state_problem names)
TRAIN_STATE_EDITS = {
    "a best loss of 10^400": (train_state_edit(best_val_loss=10**400), "best_val_loss"),
    "a best loss as text": (train_state_edit(best_val_loss="1.5"), "best_val_loss"),
    "a negative RNG state word": (train_state_edit(rng_state_word=-1), "rng_state"),
    "an RNG state word past 128 bits": (train_state_edit(rng_inc=2**128), "rng_state"),
    "an RNG state word of 10^400": (train_state_edit(rng_state_word=10**400), "rng_state"),
    "another bit generator": (train_state_edit(rng_bit_generator="MT19937"), "rng_state"),
    "has_uint32 2": (train_state_edit(rng_has_uint32=2), "rng_state"),
    "a negative uinteger": (train_state_edit(rng_uinteger=-1), "rng_state"),
    "negative bad_evals": (train_state_edit(bad_evals=-1), "bad_evals"),
    "chars_seen past 2^63": (train_state_edit(chars_seen=2**64), "chars_seen"),
}


@pytest.mark.parametrize("case", TRAIN_STATE_EDITS)
def test_hand_edited_train_state_is_named_and_the_model_still_samples(case, good_run, tmp_path):
    corpus, run = good_run
    assert ckpt_io.train_state_problem(ckpt_io.load(run / "last.npz").train_state) is None
    how, key = TRAIN_STATE_EDITS[case]
    path = bad_file(run / "last.npz", tmp_path / "edited.npz", how)
    assert ckpt_io.train_state_problem(ckpt_io.load(path).train_state) == key
    for command in checkpoint_commands(path, corpus)[1:]:  # sample, eval
        assert cli(*command).exit_code == 0
    result = cli("train", corpus, "--resume", path, "--out", tmp_path / "r", "-q")
    user_error(result)
