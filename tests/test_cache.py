"""Tests of charrnn.cache: the streaming encoder gives what the in-memory path gives (ids,
vocabulary, errors, training results), the cache is a standard .npy plus a JSON that is reused
and rebuilt when it should be, concurrent prepares wait for each other, and the `prepare`
command."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, cli, usage_error, user_error
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from charrnn import cache
from charrnn.cli import app
from charrnn.config import Config
from charrnn.data import Batches, build_corpus, read_text, split
from charrnn.errors import DataError
from charrnn.train import train


@pytest.fixture(autouse=True)
def no_cache_dir(monkeypatch):
    """Caches go to the test's user cache folder (conftest.py) unless a test sets
    CHARRNN_CACHE_DIR itself."""
    monkeypatch.delenv("CHARRNN_CACHE_DIR", raising=False)


# multi-byte characters of every UTF-8 length (2, 3 and 4 bytes), so that tiny blocks cut
# them at every possible byte
MIXED = "Ünïcödé façade — テキスト 😀 x\n" * 7 + "plain ASCII tail\n"


def write(path, data: bytes | str, age: float = 10.0):
    """Write a corpus and date it `age` seconds back (a just-written file is not trusted)."""
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def in_memory(path, encoding="utf-8", errors="strict"):
    return build_corpus(read_text(path, encoding, errors), str(path))


def assert_same(a, b):
    assert a.vocab == b.vocab
    assert a.ids.dtype == b.ids.dtype
    np.testing.assert_array_equal(np.asarray(a.ids), np.asarray(b.ids))


def cache_folder(tmp_path, name="c.txt"):
    """The entry of the corpus tmp_path/name: in the user cache folder, not beside it."""
    return cache.entry_folders(tmp_path / name)[0]


# ---- the streaming path gives the in-memory path's ids and vocabulary ----


@pytest.mark.parametrize("block_size", [1, 2, 3, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize(
    "text",
    [
        "hello world! " * 40,
        MIXED,
        "é" * 50,  # Latin-1 only: the 1-byte code point path
        "😀a" * 30,  # astral characters
    ],
    ids=["ascii", "mixed", "latin1", "astral"],
)
def test_same_ids_and_vocab_as_in_memory(tmp_path, text, block_size):
    path = write(tmp_path / "c.txt", text)
    got = cache.prepare(path, block_size=block_size).corpus
    assert isinstance(got.ids, np.memmap)
    assert_same(got, in_memory(path))


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(min_size=1, max_size=60)
    | st.text(min_size=1, max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    block_size=st.integers(1, 9),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_any_bytes_any_blocks_same_as_in_memory(tmp_path, raw, block_size, errors):
    assume(b"\0" not in raw)  # a file whose first block holds a NUL is refused as binary
    path = write(tmp_path / "c.txt", raw)
    try:
        expected = in_memory(path, errors=errors)
    except DataError as e:
        with pytest.raises(DataError) as got:
            cache.prepare(path, errors=errors, block_size=block_size, force=True)
        assert str(got.value) == str(e)
        return
    got = cache.prepare(path, errors=errors, block_size=block_size, force=True).corpus
    assert_same(got, expected)


@pytest.mark.parametrize("block_size", [16, 1 << 20])
def test_more_than_256_characters_get_uint16_ids(tmp_path, block_size):
    # the 256th character turns up late: with small blocks, ASCII blocks come before and after
    text = "abc" * 50 + "".join(chr(0x100 + i) for i in range(300)) + "xyz" * 20
    path = write(tmp_path / "c.txt", text)
    got = cache.prepare(path, block_size=block_size).corpus
    assert got.ids.dtype == np.uint16 and len(got.vocab) == 306
    assert_same(got, in_memory(path))


def test_more_than_65536_characters_get_uint32_ids(tmp_path):
    chars = [chr(c) for c in range(0x20, 0x20 + 70_000) if not 0xD800 <= c < 0xE000]
    path = write(tmp_path / "c.txt", "ab" * 100 + "".join(chars))
    got = cache.prepare(path, block_size=1 << 16).corpus
    assert got.ids.dtype == np.uint32
    assert_same(got, in_memory(path))


def test_exactly_256_characters_fit_uint8(tmp_path):
    path = write(tmp_path / "c.txt", "".join(chr(0x100 + i) for i in range(256)) * 2)
    got = cache.prepare(path, block_size=100).corpus
    assert got.ids.dtype == np.uint8
    assert_same(got, in_memory(path))


@pytest.mark.parametrize("encoding", ["utf-16", "latin-1", "shift_jis"])
def test_other_encodings(tmp_path, encoding):
    text = "テキスト abc\n" * 20 if encoding != "latin-1" else "façade\n" * 20
    path = write(tmp_path / "c.txt", text.encode(encoding))
    got = cache.prepare(path, encoding, block_size=3).corpus
    assert_same(got, in_memory(path, encoding))


# ---- errors ----


@pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5, 6, 7, 1000])
@pytest.mark.parametrize(
    "raw",
    [
        "aé€".encode() + b"\xff" + b"tail",  # a bad byte after multi-byte characters
        "ab€".encode()[:-1] + b"zz",  # a 3-byte character cut short mid-file
        "ab€".encode()[:-1],  # ... and at the very end
        b"\xc3" + "é".encode() * 3,  # a lone lead byte at offset 0
    ],
    ids=["bad-byte", "cut-mid", "cut-end", "lead-at-0"],
)
def test_invalid_utf8_names_the_absolute_byte_offset(tmp_path, raw, block_size):
    path = write(tmp_path / "bad.txt", raw)
    with pytest.raises(DataError) as expected:
        in_memory(path)
    with pytest.raises(DataError) as got:
        cache.prepare(path, block_size=block_size)
    assert str(got.value) == str(expected.value)
    assert "byte offset" in str(got.value) and "decode_errors='replace'" in str(got.value)
    assert not list(tmp_path.glob("*charrnn-cache*"))  # found in pass 1: nothing written yet


def test_decode_errors_replace_matches_in_memory(tmp_path):
    path = write(tmp_path / "bad.txt", b"ab\xffcd\xe2\x82" + "é".encode() + b"\xc3")
    assert_same(
        cache.prepare(path, errors="replace", block_size=2).corpus,
        in_memory(path, errors="replace"),
    )


def test_empty_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="'.*e.txt' is empty; give a text"):
        cache.prepare(write(tmp_path / "e.txt", b""))
    with pytest.raises(DataError, match="not found; check the path"):
        cache.prepare(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="holds no text files"):
        (tmp_path / "d" / "e").mkdir(parents=True)
        (tmp_path / "d" / ".hidden").write_text("hidden text")
        cache.prepare(tmp_path / "d")  # a folder of folders and no text
    with pytest.raises(DataError, match="looks like a binary file"):
        cache.prepare(write(tmp_path / "b.bin", b"\x00\x01abc"))
    with pytest.raises(DataError, match="unknown text encoding 'base64'"):
        cache.prepare(write(tmp_path / "c.txt", "abc"), "base64")
    with pytest.raises(DataError, match="decode_errors must be strict or replace, not 'ignore'"):
        cache.prepare(tmp_path / "c.txt", errors="ignore")


def test_a_corpus_that_changes_while_it_is_encoded_is_an_error(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)

    def append_after_pass_1(phase, done, total):
        if phase == "read" and done == total:
            with open(path, "a") as f:
                f.write("more text, with new characters")

    with pytest.raises(DataError, match="changed while it was being read; run again"):
        cache.prepare(path, block_size=64, progress=append_after_pass_1)
    assert not (cache_folder(tmp_path) / "ids.npy").exists()
    assert cache.prepare(path).corpus.vocab == in_memory(path).vocab


# ---- the cache folder ----


def test_the_ids_are_a_standard_npy_and_the_metadata_json(tmp_path):
    path = write(tmp_path / "c.txt", MIXED)
    prepared = cache.prepare(path)
    folder = cache_folder(tmp_path)
    assert prepared.cache_path == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "ids.npy",
        "lock",
        "meta.json",
        "starts.npy",
    ]
    assert folder.parent == tmp_path / "cache-home" / "charrnn"  # the user's cache folder
    ids = np.load(folder / "ids.npy", mmap_mode="r")
    assert isinstance(ids, np.memmap) and ids.dtype == np.uint8
    np.testing.assert_array_equal(ids, in_memory(path).ids)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["vocab"] == [ord(c) for c in in_memory(path).vocab]
    assert meta["n_chars"] == len(MIXED) and meta["encoding"] == "utf-8"
    assert meta["files"]["bytes"] == path.stat().st_size and meta["files"]["trusted"] is True
    assert meta["sources"]["paths"] == [str(path)] and meta["n_documents"] == 1
    np.testing.assert_array_equal(np.load(folder / "starts.npy"), [0])
    assert prepared.to_dict()["cache_bytes"] == sum(
        (folder / f).stat().st_size for f in ("ids.npy", "meta.json", "starts.npy")
    )


def test_progress_counts_corpus_bytes_in_both_passes(tmp_path):
    path = write(tmp_path / "c.txt", MIXED)
    calls = []
    cache.prepare(path, block_size=50, progress=lambda *call: calls.append(call))
    size = path.stat().st_size
    assert [c for c in calls if c[1] == size] == [("read", size, size), ("write", size, size)]
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)  # all of pass 1 first


# ---- reuse and rebuild ----


def test_cache_is_reused_while_the_corpus_is_unchanged(tmp_path):
    path = write(tmp_path / "c.txt", MIXED)
    first = cache.prepare(path)
    assert not first.reused and first.cache_path == cache_folder(tmp_path)
    again = cache.prepare(path)
    assert again.reused and again.cache_path == first.cache_path
    assert_same(again.corpus, first.corpus)
    assert not cache.prepare(path, force=True).reused


def test_cache_is_rebuilt_when_the_corpus_changes(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)
    cache.prepare(path)
    write(path, "abd" * 100)  # same size, different text and mtime
    rebuilt = cache.prepare(path)
    assert not rebuilt.reused and rebuilt.corpus.vocab == ["a", "b", "d"]

    st = path.stat()
    path.write_bytes(b"abe" * 100)  # same size, and the old mtime put back: ctime still moves
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    rebuilt = cache.prepare(path)
    assert not rebuilt.reused and rebuilt.corpus.vocab == ["a", "b", "e"]


def test_cache_is_rebuilt_for_another_encoding_or_error_mode(tmp_path):
    path = write(tmp_path / "c.txt", "façade" * 20)
    cache.prepare(path)
    assert not cache.prepare(path, "latin-1").reused
    assert cache.prepare(path, "LATIN1").reused  # the same codec spelled differently
    assert not cache.prepare(path, "latin-1", "replace").reused


def test_a_just_written_corpus_is_not_trusted_next_time(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("abc" * 100)  # written now: the same clock tick could hold another write
    assert not cache.prepare(path).reused
    assert not cache.prepare(path).reused


def test_broken_cache_is_rebuilt_not_an_error(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)
    folder = cache.prepare(path).cache_path
    ids, meta = (folder / "ids.npy").read_bytes(), (folder / "meta.json").read_bytes()
    other_dtype = io.BytesIO()
    np.save(other_dtype, np.zeros(300, dtype=np.uint16))
    changed_meta = json.dumps({**json.loads(meta), "n_chars": 299}).encode()
    for name, broken in [
        *(("ids.npy", b) for b in (ids[:-5], ids[:100], b"", b"junk" * 50)),
        ("ids.npy", other_dtype.getvalue()),
        *(("meta.json", b) for b in (meta[:-5], b"", b"[]", b'{"vocab": 3}', changed_meta)),
    ]:
        (folder / name).write_bytes(broken)
        got = cache.prepare(path)
        assert not got.reused, (name, broken[:20])
        assert_same(got.corpus, in_memory(path))
        assert cache.prepare(path).reused


def test_a_folder_without_its_json_is_rebuilt(tmp_path):
    # what a prepare killed while writing ids.npy leaves
    path = write(tmp_path / "c.txt", "abc" * 100)
    folder = cache.prepare(path).cache_path
    (folder / "meta.json").unlink()
    (folder / "ids.npy").write_bytes(b"half written")
    got = cache.prepare(path)
    assert not got.reused and (folder / "meta.json").exists()
    assert_same(got.corpus, in_memory(path))


def test_an_interrupted_prepare_leaves_no_ids_behind(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)

    def interrupt(phase, done, total):
        if phase == "write":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.prepare(path, block_size=16, progress=interrupt)
    assert sorted(p.name for p in cache_folder(tmp_path).iterdir()) == ["lock"]
    assert not cache.prepare(path).reused


def test_a_file_where_the_entry_should_be_is_replaced_by_the_folder(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)
    cache_folder(tmp_path).parent.mkdir(parents=True)
    cache_folder(tmp_path).write_bytes(b"\x93CHARRNN-IDS" + bytes(600))
    got = cache.prepare(path)
    assert not got.reused and got.cache_path.is_dir()
    assert_same(got.corpus, in_memory(path))


def test_a_rebuild_leaves_the_old_ids_to_whoever_maps_them(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)
    old = cache.prepare(path).corpus.ids
    write(path, "xyz" * 100)
    assert cache.prepare(path).corpus.vocab == ["x", "y", "z"]
    np.testing.assert_array_equal(old[:3], [0, 1, 2])  # still mapped: a new ids.npy was written


def not_writable(monkeypatch, folders):
    """Make creating any of these folders fail as in a read-only place (root ignores chmod)."""
    mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self in folders:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)


def test_an_unwritable_user_cache_folder_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", "abc" * 100)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    not_writable(monkeypatch, {cache_folder(tmp_path)})
    built = cache.prepare(path)
    assert built.cache_path.parent == tmp_path / "tmp" / "charrnn-cache"
    assert built.cache_path.name.startswith("c.txt-")
    assert not cache_folder(tmp_path).exists()
    assert cache.prepare(path).reused


def test_a_corpus_in_a_read_only_folder_or_in_proc_trains(tmp_path):
    """Nothing is written beside a corpus: a read-only folder, or /proc (issue 22 class 8),
    is no obstacle. A file of /proc reads as size 0: it is read once, like a pipe."""
    (tmp_path / "ro").mkdir()
    path = write(tmp_path / "ro" / "c.txt", "abc" * 100)
    os.chmod(tmp_path / "ro", 0o555)
    try:
        assert cache.prepare(path).cache_path.parent == tmp_path / "cache-home" / "charrnn"
    finally:
        os.chmod(tmp_path / "ro", 0o755)
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["c.txt"]
    proc = cache.prepare("/proc/self/status")
    assert proc.cache_path is None and proc.corpus.documents == 1 and "N" in proc.corpus.vocab
    trained = cli("train", "/proc/self/status", *TINY, "--max-steps", 2, "--out", "r", "-q")
    assert trained.exit_code == 0, trained.stderr


def test_no_writable_folder_at_all_is_a_clean_error(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", "abc" * 100)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    not_writable(monkeypatch, set(cache.entry_folders(path)))
    with pytest.raises(DataError, match="no writable folder for the cache of .*CHARRNN_CACHE_DIR"):
        cache.prepare(path)


def test_a_cache_in_a_read_only_folder_is_still_reused(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", "abc" * 100)
    cache.prepare(path)
    not_writable(monkeypatch, set(cache.entry_folders(path)))
    assert cache.prepare(path).reused


# ---- concurrent prepares ----


def test_concurrent_prepares_encode_once_and_agree(tmp_path):
    path = write(tmp_path / "c.txt", MIXED * 50)
    results = [None] * 4

    def run(i):
        results[i] = cache.prepare(path, block_size=64)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.reused for r in results) == [False, True, True, True]
    for r in results:
        assert_same(r.corpus, in_memory(path))


def test_a_prepare_waits_while_another_builds(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)
    cache.prepare(path)
    results = []
    with cache._locked(cache_folder(tmp_path), exclusive=True):  # as a build holds it
        waiting = threading.Thread(target=lambda: results.append(cache.prepare(path)))
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive() and not results
    waiting.join()
    assert results[0].reused


def test_stdin_goes_through_a_temporary_cache(tmp_path, monkeypatch):
    raw = MIXED.encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    got = cache.prepare("-", block_size=3)
    assert got.cache_path is None and got.name == "<stdin>" and got.source_bytes == len(raw)
    assert isinstance(got.corpus.ids, np.memmap)
    assert_same(got.corpus, build_corpus(MIXED))
    assert not list((tmp_path / "tmp").iterdir())  # the spool and the ids are already unlinked


def test_a_pipe_is_read_once(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(MIXED.encode()))
    writer.start()
    got = cache.prepare(fifo, block_size=5)
    writer.join()
    assert got.cache_path is None
    assert_same(got.corpus, build_corpus(MIXED))


def test_split_of_a_memmap_stays_a_memmap(tmp_path):
    train_ids, val_ids = split(cache.prepare(write(tmp_path / "c.txt", MIXED)).corpus.ids, 0.1)
    assert isinstance(train_ids, np.memmap) and isinstance(val_ids, np.memmap)


# ---- training reads the same batches ----


def test_batches_from_the_cache_equal_batches_in_memory(tmp_path):
    path = write(tmp_path / "c.txt", MIXED * 10)
    mapped, held = cache.prepare(path).corpus.ids, in_memory(path).ids
    for B in (1, 5, 9):  # fewer, a partial group and more than data.STREAMS_PER_READ streams
        a, b = Batches(mapped, B, 7), Batches(held, B, 7)
        assert a._mapping is not None and b._mapping is None
        for step in range(0, 3 * a.steps_per_epoch, 5):
            for x, y in zip(a.get(step), b.get(step), strict=True):
                assert x.dtype == np.intp
                np.testing.assert_array_equal(x, y)


def test_training_on_the_cache_equals_training_in_memory(tmp_path):
    path = write(tmp_path / "c.txt", (MIXED + "hello world! ") * 20)
    cfg = Config.from_dict(
        {
            "hidden_size": 8,
            "seq_length": 8,
            "batch_size": 6,
            "max_steps": 12,
            "eval_every": 4,
            "checkpoint_every": 4,
            "val_fraction": 0.1,
            "rng_seed": 3,
        }
    )
    train(cfg, in_memory(path), tmp_path / "mem")
    train(cfg, cache.prepare(path, block_size=5).corpus, tmp_path / "cached")
    for name in ("last.npz", "best.npz"):
        with np.load(tmp_path / "mem" / name) as a, np.load(tmp_path / "cached" / name) as b:
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")


# ---- the prepare command ----


def test_prepare_command(tmp_path, runner):
    path = write(tmp_path / "c.txt", MIXED)
    result = runner.invoke(app, ["prepare", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"encoded {path}: {len(MIXED)} characters, 28 distinct (uint8 ids) in "
    )
    assert (cache_folder(tmp_path) / "meta.json").exists()

    result = runner.invoke(app, ["prepare", str(path), "--json"])
    assert result.exit_code == 0
    summary = json.loads(result.stdout)
    assert summary["reused"] is True and summary["chars"] == len(MIXED)
    assert summary["vocab_size"] == 28 and summary["id_dtype"] == "uint8"
    assert summary["cache"] == str(cache_folder(tmp_path))

    result = runner.invoke(app, ["prepare", str(path), "--quiet"])
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_prepare_command_errors(tmp_path, runner):
    bad = write(tmp_path / "bad.txt", "aé".encode() + b"\xff")
    result = runner.invoke(app, ["prepare", str(bad)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: '{bad}' is not valid utf-8 at byte offset 3; pass "
        "--encoding latin-1 (or the text's own encoding) or --decode-errors replace\n"
    )
    result = runner.invoke(app, ["prepare", str(bad), "--encoding", "latin-1"])
    assert result.exit_code == 0

    result = runner.invoke(app, ["prepare", "missing.txt"])
    assert result.exit_code == 1
    assert result.stderr == "Error: file 'missing.txt' not found; check the path\n"
    result = runner.invoke(app, ["prepare", str(bad), "--decode-errors", "ignore"])
    assert "got 'ignore', expected one of strict, replace" in usage_error(result, "--decode-errors")
    result = runner.invoke(app, ["prepare", "-"])
    assert result.exit_code == 2 and "stdin" in result.stderr


def test_train_command_builds_and_then_reuses_the_cache(tmp_path, runner, tiny_config):
    path = write(tmp_path / "c.txt", "hello world! " * 100)
    args = ["train", str(path), "--config", str(tiny_config), "--max-steps", "4", "--quiet"]
    assert runner.invoke(app, [*args, "--out", "r1"]).exit_code == 0
    ids_file = cache_folder(tmp_path) / "ids.npy"
    built = ids_file.stat().st_ino, ids_file.stat().st_mtime_ns
    assert runner.invoke(app, [*args, "--out", "r2"]).exit_code == 0
    assert (ids_file.stat().st_ino, ids_file.stat().st_mtime_ns) == built  # reused, not rewritten
    result = runner.invoke(
        app,
        ["train", "-", "--config", str(tiny_config), "--max-steps", "4", "--quiet", "--out", "r3"],
        input="hello world! " * 100,
    )
    assert result.exit_code == 0, result.stderr


def test_codec_complaint_is_a_clean_error(tmp_path, runner):
    # utf-16 with no byte-order mark raises UnicodeError (not UnicodeDecodeError); found by fuzzing
    path = tmp_path / "c.txt"
    path.write_text("hello world " * 50)
    result = runner.invoke(app, ["prepare", str(path), "--encoding", "utf-16"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: '{path}' cannot be read as utf-16: UTF-16 stream does not start with BOM; "
        "pass another --encoding"
    ]


# ---- a cache's own contents are checked before use ----


def _edit_meta(folder, change, checksum: bool):
    """Rewrite meta.json with change(meta) applied; with its checksum made to match, or not."""
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    if checksum:
        meta["checksum"] = cache._checksum(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def _swap_first_two(meta):
    meta["vocab"][0], meta["vocab"][1] = meta["vocab"][1], meta["vocab"][0]


@pytest.mark.parametrize("where", ["first", "middle", "last", "every 7th"])
def test_ids_past_the_vocabulary_rebuild_the_cache_and_training_works(tmp_path, where):
    """Ids overwritten on disk with values past the vocabulary (training read them as an
    IndexError mid-run) are found before use; the cache is rebuilt, training runs."""
    path = write(tmp_path / "c.txt", "hello world! " * 100)
    assert cli("prepare", path).exit_code == 0
    ids_file = cache_folder(tmp_path) / "ids.npy"
    ids = np.load(ids_file, mmap_mode="r+")
    n = len(ids)
    at = {"first": [0], "middle": [n // 2], "last": [n - 1], "every 7th": slice(0, n, 7)}[where]
    ids[at] = 200  # the vocabulary has 9 characters
    ids.flush()
    del ids

    result = cli("train", path, *TINY, "--max-steps", 3, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    assert_same(cache.prepare(path).corpus, in_memory(path))
    assert (
        cli("sample", "--checkpoint", tmp_path / "run" / "last.npz", "--length", 5).exit_code == 0
    )


def test_uint16_ids_past_the_vocabulary_are_found(tmp_path):
    text = "".join(chr(c) for c in range(0x100, 0x100 + 300)) * 3
    path = write(tmp_path / "c.txt", text)
    cache.prepare(path, block_size=64)
    ids = np.load(cache_folder(tmp_path) / "ids.npy", mmap_mode="r+")
    assert ids.dtype == np.uint16
    ids[-1] = 300  # == vocabulary size
    ids.flush()
    del ids
    got = cache.prepare(path, block_size=64)
    assert not got.reused
    assert_same(got.corpus, in_memory(path))


def test_ids_are_checked_a_block_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CHECK_BLOCK", 7)
    path = write(tmp_path / "c.txt", "abc" * 100)
    cache.prepare(path)
    assert cache.prepare(path).reused
    ids = np.load(cache_folder(tmp_path) / "ids.npy", mmap_mode="r+")
    ids[299] = 3
    ids.flush()
    del ids
    assert not cache.prepare(path).reused


@pytest.mark.parametrize("checksum", [False, True], ids=["checksum stale", "checksum redone"])
def test_swapped_vocabulary_rebuilds_and_checkpoints_load(tmp_path, checksum):
    """Vocabulary entries swapped in meta.json made training write checkpoints that `load`
    refuses (an unsorted vocabulary). A stale checksum finds the edit; a recomputed one still
    leaves an unsorted vocabulary, which is found too."""
    path = write(tmp_path / "c.txt", "hello world! " * 100)
    assert cli("prepare", path).exit_code == 0
    _edit_meta(cache_folder(tmp_path), _swap_first_two, checksum)

    result = cli("train", path, *TINY, "--max-steps", 3, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    for name in ("last.npz", "best.npz"):
        assert cli("sample", "--checkpoint", tmp_path / "run" / name, "--length", 5).exit_code == 0
    assert json.loads(cli("prepare", path, "--json").stdout)["reused"] is True


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(vocab=m["vocab"] + m["vocab"][-1:]),  # a repeated character
        lambda m: m.update(vocab=[-1, *m["vocab"][1:]]),
        lambda m: m.update(vocab=[*m["vocab"][:-1], 0x110000]),  # past Unicode
        lambda m: m.update(vocab=[float(c) for c in m["vocab"]]),
        lambda m: m.update(vocab=[]),
        lambda m: m.update(n_chars=m["n_chars"] + 1),
        lambda m: m.update(format_version=2),
    ],
    ids=["repeated", "negative", "past Unicode", "floats", "empty", "n_chars", "format 2"],
)
def test_meta_that_does_not_describe_the_ids_rebuilds(tmp_path, change):
    path = write(tmp_path / "c.txt", "hello world! " * 100)
    cache.prepare(path)
    for checksum in (False, True):
        _edit_meta(cache_folder(tmp_path), change, checksum)
        got = cache.prepare(path)
        assert not got.reused
        assert_same(got.corpus, in_memory(path))


def test_a_huge_or_deep_meta_json_is_rebuilt_unread(tmp_path, monkeypatch):
    """A meta.json past MAX_META_BYTES is not parsed, nor read past the limit: rebuilding the
    cache allocates far less than the junk's size (bounded work, counted in bytes)."""
    monkeypatch.setattr(cache, "MAX_META_BYTES", 1000)
    path = write(tmp_path / "c.txt", "abc" * 100)
    folder = cache.prepare(path).cache_path
    for junk in (b" " * (16 << 20) + b"{}", b"[" * (8 << 20) + b"]" * (8 << 20)):
        (folder / "meta.json").write_bytes(junk)
        tracemalloc.start()
        try:
            assert not cache.prepare(path).reused
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 << 20, peak  # half the junk: it was not read (the rebuild takes ~3 MB)


# ---- what a killed prepare leaves behind ----


def test_leftovers_of_a_killed_build_go_with_the_next_prepare(tmp_path):
    """A build killed by a signal leaves ids.npy without meta.json, and maybe a temporary
    meta.json; the next prepare that takes the folder's lock removes them."""
    path = write(tmp_path / "c.txt", "abc" * 100)
    folder = cache.prepare(path).cache_path
    (folder / "meta.json").unlink()
    (folder / ".meta.json.k3j2h1.tmp").write_text("{")
    assert cli("prepare", path).exit_code == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "ids.npy",
        "lock",
        "meta.json",
        "starts.npy",
    ]


def test_a_read_of_a_cache_whose_build_was_killed_clears_it(tmp_path):
    path = write(tmp_path / "c.txt", "abc" * 100)
    folder = cache.prepare(path).cache_path
    (folder / "meta.json").unlink()
    (folder / ".meta.json.zz9.tmp").write_text("{")
    assert cache._open_cache(folder, {}, "") is None
    assert sorted(p.name for p in folder.iterdir()) == ["lock", "starts.npy"]


def _stream_folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("charrnn-stream-*"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_temp_files_of_a_killed_stdin_prepare_go_with_the_next_run(tmp_path, sig, monkeypatch):
    """`train -` killed while it reads stdin leaves its temporary folder (no handler runs);
    the next run that reads a stream, finding that folder's lock free, deletes it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "charrnn", "train", "-", *map(str, TINY), "--out", "run", "-q"]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        # the signal's default action, even where the suite runs under nohup (SIGHUP ignored)
        preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL),
    )
    try:
        proc.stdin.write(b"hello world! " * 100)
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while not _stream_folders(tmp):  # pass 1 is waiting for the rest of stdin
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == -sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(_stream_folders(tmp)) == 1  # what the kill left

    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again

    result = cli("train", "-", *TINY, "--max-steps", 2, "--out", tmp_path / "r2", "-q",
                 input="hello world! " * 100)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert _stream_folders(tmp) == [] and list(tmp.iterdir()) == []


def test_a_stream_folder_in_use_is_left_alone(tmp_path, monkeypatch):
    tmp = tmp_path / "tmp"
    (tmp / "charrnn-stream-live").mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"abc" * 100)))
    with cache._locked(tmp / "charrnn-stream-live", exclusive=True):  # as a live stream holds it
        assert cache.prepare("-").corpus.vocab == ["a", "b", "c"]
        assert _stream_folders(tmp) == [tmp / "charrnn-stream-live"]


# ---- CHARRNN_CACHE_DIR ----


def test_charrnn_cache_dir_is_where_caches_go(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", "abc" * 100)
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "caches"))
    summary = json.loads(cli("prepare", path, "--json").stdout)
    assert Path(summary["cache"]).parent == tmp_path / "caches"
    assert not (tmp_path / "cache-home").exists()  # not the user cache folder
    assert json.loads(cli("prepare", path, "--json").stdout)["reused"] is True


def test_a_corpus_name_too_long_for_a_cache_beside_it(tmp_path, monkeypatch):
    """A 250-byte name plus the cache suffix is past the 255-byte limit: the cache goes to the
    user cache folder, or to CHARRNN_CACHE_DIR, under a shortened name, never an error."""
    path = write(tmp_path / ("é" * 125 + ".txt"), "abc" * 100)  # 254 bytes
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.prepare(path).cache_path.parent == tmp_path / "xdg" / "charrnn"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(tmp_path / "caches"))
    built = cache.prepare(path)
    assert built.cache_path.parent == tmp_path / "caches" and cache.prepare(path).reused
    assert len(built.cache_path.name.encode()) < 255


def test_cache_dir_errors_name_it_and_never_say_to_set_it(tmp_path, monkeypatch):
    path = write(tmp_path / "c.txt", "abc" * 100)
    chosen = tmp_path / "caches"
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(chosen))
    not_writable(monkeypatch, set(cache.entry_folders(path)))
    message = user_error(cli("prepare", path))
    assert message == (
        f"cannot write the cache of '{path}' in CHARRNN_CACHE_DIR '{chosen}'; "
        "point it at a writable folder"
    )
    monkeypatch.undo()
    monkeypatch.setenv("CHARRNN_CACHE_DIR", str(chosen))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache, "_write_ids", disk_full)
    assert user_error(cli("prepare", path)).endswith(
        "No space left on device; free disk space there or point CHARRNN_CACHE_DIR at another "
        "folder"
    )
