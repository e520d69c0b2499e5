"""Corpora of any size: the character ids in a cache beside the corpus, memory-mapped for training.

`prepare(source)` returns a `Corpus` whose `ids` are a read-only `np.memmap`, so neither the
text nor its ids are ever held in memory. Its ids and vocabulary are the ones
`data.build_corpus(data.read_text(source))` gives (a test checks it).

How a cache is built: two passes over the corpus, each decoding it in blocks of BLOCK_SIZE bytes
with an incremental decoder (a character split across two blocks is handled; invalid bytes
raise DataError with their offset in the whole file, in pass 1, before anything is written).
  1. Note which characters occur and count them. The vocabulary is their sorted code points.
  2. Write each character's id, searchsorted(vocab, code point), in the smallest type that holds
     it (data.id_dtype), through `np.lib.format.open_memmap`. A corpus that changed since pass 1
     (its signature, below) is a DataError.
stdin and pipes can be read only once: pass 1 copies them to a temporary file for pass 2.

The cache folder `corpus.txt.charrnn-cache/` (nothing in it is pickled):
    ids.npy    the ids, a standard .npy file: `np.load(path, mmap_mode="r")` reads it
    meta.json  format_version, source {path, size, mtime_ns, ctime_ns, inode, trusted},
               encoding, decode_errors, n_chars, vocab (code points), and checksum: the SHA-256
               of the rest (json.dumps with sorted keys). Written last, atomically: a folder
               without it holds no cache (a killed build), and is rebuilt.
    lock       flock'ed: exclusively while a cache is built, shared while one is opened, so a
               second `train` on the same corpus waits for the build instead of reading half.
A rebuild deletes meta.json first and writes ids.npy as a new file, so a process still training
on the old ids keeps reading them.

When a cache is reused: its format_version, encoding and decode_errors match, the corpus's size,
mtime_ns, ctime_ns and inode are the ones recorded, and the cache passes a check of its own
contents that costs far less than a build: meta.json's checksum, a vocabulary of sorted distinct
code points, an ids.npy of the recorded length and type, every id below the vocabulary's size
(a max over the memory map, a block at a time). Anything else rebuilds it: a cache edited or
damaged on disk is never trained on. ctime cannot be set by `touch`, so even an edit that
restores the old mtime is noticed. A cache built less than a second after the corpus was last
written (the older of its mtime and ctime: an mtime in the future does not count) serves that
run but is not trusted by the next: a second write within the same clock tick could leave those
four numbers unchanged.

Where it lives: in $CHARRNN_CACHE_DIR when it is set; otherwise beside the corpus, or when that
folder is not writable (or the name would be too long) in $XDG_CACHE_HOME/charrnn
(~/.cache/charrnn), else <tmp>/charrnn-cache. Away from the corpus its name is the start of the
corpus's name and a hash of its absolute path. The ids of stdin ("-") and pipes go to a folder
<tmp>/charrnn-stream-* that is deleted once they are mapped; the memory map keeps them until the
process ends.

Leftovers of a build killed by a signal (SIGTERM, SIGHUP, SIGKILL: no handler runs) are removed
by the next prepare that takes their lock: an ids.npy without meta.json and temporary files in a
cache folder, and a whole charrnn-stream-* folder, which is locked for as long as its build runs.

Progress goes to an optional callback `progress(phase, done, total)`, in corpus bytes: phase
"read" for pass 1 (total None for a pipe), "write" for pass 2. Drawing it is left to the CLI.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn import jsonout
from charrnn.atomic import remove_quietly, replace_atomically
from charrnn.data import (
    N_CODE_POINTS,
    Corpus,
    check_decode_errors,
    check_encoding,
    decode_error,
    empty_error,
    id_dtype,
    open_error,
)
from charrnn.errors import DataError, TooLargeError
from charrnn.memory import show_bytes
from charrnn.runs import special_file

FORMAT_VERSION = 3  # 1: a single file of our own format; 2: this folder without a checksum
SUFFIX = ".charrnn-cache"
IDS, META, LOCK = "ids.npy", "meta.json", "lock"
BLOCK_SIZE = 2 << 20  # corpus bytes decoded at a time; the encoder's working memory is at most
# ~25x this (text beyond Latin-1: the str, its UTF-32 copy, the ids), ~4x for ASCII
TRUST_AFTER_NS = 1_000_000_000  # a corpus written less than this before its scan: not trusted
MAX_META_BYTES = 32 << 20  # meta.json of the largest vocabulary is about 8 MB
CHECK_BLOCK = 16 << 20  # ids checked at a time, then unmapped: at most 64 MB resident
NAME_BYTES = 100  # of the corpus's name kept in a cache's name away from it (255 is the limit)
STREAM_PREFIX = "charrnn-stream-"
STALE_AFTER_S = 60  # a stream folder that never got its lock this long after it was made

Progress = Callable[[str, int, "int | None"], None]  # (phase "read" | "write", done, total)


@dataclass
class PreparedCorpus:
    corpus: Corpus  # ids: a read-only np.memmap of the cache
    name: str  # the corpus as the user named it
    cache_path: Path | None  # the cache folder; None for a temporary cache (stdin, pipes)
    reused: bool  # True when an up-to-date cache was found and nothing was encoded
    source_bytes: int
    seconds: float

    def summary(self) -> str:
        """One line for the user: what was encoded (or found) and where the cache is."""
        ids = self.corpus.ids
        what = (
            f"{len(ids):,} characters, {len(self.corpus.vocab):,} distinct ({ids.dtype.name} ids)"
        )
        where = f"cache {self.cache_path}" if self.cache_path else "temporary cache"
        if self.reused:
            return f"{self.name}: {where} is up to date; {what}"
        rate = self.source_bytes / 1e6 / max(self.seconds, 1e-9)
        return f"encoded {self.name}: {what} in {self.seconds:.1f}s ({rate:.1f} MB/s); {where}"

    def to_dict(self) -> dict:
        ids, folder = self.corpus.ids, self.cache_path
        size = sum((folder / f).stat().st_size for f in (IDS, META)) if folder else None
        return {
            "corpus": self.name,
            "cache": str(folder) if folder else None,
            "reused": self.reused,
            "bytes": self.source_bytes,
            "chars": len(ids),
            "vocab_size": len(self.corpus.vocab),
            "id_dtype": ids.dtype.name,
            "cache_bytes": size,
            "seconds": round(self.seconds, 3),
            "mb_per_sec": None
            if self.reused or self.seconds <= 0
            else round(self.source_bytes / 1e6 / self.seconds, 1),
        }


def prepare(
    source: str | Path,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    force: bool = False,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
) -> PreparedCorpus:
    """The corpus at `source` ("-" = stdin) as a memory-mapped Corpus, from its cache when the
    cache is up to date, otherwise by encoding it (and saving the cache, for a regular file)."""
    start = time.perf_counter()
    codec = check_encoding(encoding)  # recorded in meta.json; messages keep the user's spelling
    check_decode_errors(errors)
    name = "<stdin>" if str(source) == "-" else str(source)
    reader = _Reader(name, encoding, errors, block_size, progress or _no_progress)
    if str(source) == "-":
        if _device_stdin():  # `< /dev/zero` would fill the disk
            raise DataError("standard input is a character device, not text; pipe text in")
        return _prepare_stream(reader, sys.stdin.buffer, start)
    path = Path(source)
    try:
        f = open(path, "rb")  # a directory raises IsADirectoryError: open_error words it
    except OSError as e:
        raise open_error(path, e) from None
    with f:
        st = os.fstat(f.fileno())
        if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            kind = special_file(path) or "a device"  # /dev/zero would fill the disk
            raise DataError(
                f"'{path}' is {kind}, not a text file; give a file, or pipe text in with -"
            )
        if not stat.S_ISREG(st.st_mode):  # a pipe such as <(zcat corpus.gz): read it once
            return _prepare_stream(reader, f, start)
        folder, corpus, reused = _prepare_file(reader, f, path, st, codec, force)
    return PreparedCorpus(corpus, name, folder, reused, st.st_size, time.perf_counter() - start)


def _prepare_file(
    reader: _Reader, f: BinaryIO, path: Path, st: os.stat_result, codec: str, force: bool
) -> tuple[Path, Corpus, bool]:
    """(cache folder, corpus, reused): the corpus file f from an up-to-date cache, or encoded
    into the first writable cache folder."""
    signature, folders = _signature(st), _cache_folders(path)
    for folder in [] if force else folders:
        found = _open_cache(folder, signature, codec, reader.errors)
        if found is not None:
            return folder, found, True

    vocab, n_chars = _scan(reader, f, st.st_size)
    meta = {
        "format_version": FORMAT_VERSION,
        "source": {
            **signature,
            "path": str(path.resolve()),
            # by the older of mtime and ctime: a corpus whose mtime is in the future (`touch -d
            # tomorrow`, an archive from a clock ahead) is trusted once its ctime, which the
            # kernel sets, is old enough
            "trusted": time.time_ns() - min(st.st_mtime_ns, st.st_ctime_ns) >= TRUST_AFTER_NS,
        },
        "encoding": codec,
        "decode_errors": reader.errors,
        "n_chars": n_chars,
        "vocab": vocab.tolist(),
    }
    meta["checksum"] = _checksum(meta)
    for folder in folders:
        try:
            with _locked(folder, exclusive=True):
                # another prepare may have built it while this one was scanning
                found = None if force else _read_cache(folder, signature, codec, reader.errors)
                if found is not None:
                    return folder, found, True
                ids = _build(reader, f, folder, meta, vocab, signature)
                return folder, Corpus(ids=ids, vocab=_chars(vocab)), False
        except _FolderNotWritable:
            continue
    chosen = os.environ.get("CHARRNN_CACHE_DIR")
    if chosen:
        raise DataError(
            f"cannot write the cache of '{path}' in CHARRNN_CACHE_DIR '{chosen}'; "
            "point it at a writable folder"
        )
    raise DataError(
        f"no writable folder for the cache of '{path}'; set CHARRNN_CACHE_DIR to a writable folder"
    )


# --- where caches live and when they are up to date -------------------------------------------


def _cache_folders(path: Path) -> list[Path]:
    """$CHARRNN_CACHE_DIR alone when it is set; else beside the corpus first, then the user
    cache folder, then the temp folder."""
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    name = path.name.encode("utf-8", "surrogateescape")[:NAME_BYTES]
    name = name.decode("utf-8", "ignore")  # a character cut in two is dropped
    elsewhere = f"{name}-{digest[:16]}{SUFFIX}"
    chosen = os.environ.get("CHARRNN_CACHE_DIR")
    if chosen:
        return [Path(chosen) / elsewhere]
    user = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "charrnn",
    )
    return [
        path.with_name(path.name + SUFFIX),
        Path(user) / elsewhere,
        Path(tempfile.gettempdir()) / "charrnn-cache" / elsewhere,
    ]


def _signature(st: os.stat_result) -> dict:
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


class _FolderNotWritable(Exception):
    pass


@contextmanager
def _locked(folder: Path, exclusive: bool) -> Iterator[None]:
    """Hold the cache folder's lock: exclusive to build (making the folder and the lock file),
    shared to read (OSError when there is no lock file, so no cache)."""
    if exclusive:
        try:
            if folder.is_file():  # a cache of format 1, which was one file
                folder.unlink()
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise _write_error(e, folder) from None
    else:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _write_error(e: OSError, folder: Path) -> Exception:
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG):
        return _FolderNotWritable()  # try the next folder
    if os.environ.get("CHARRNN_CACHE_DIR"):
        what = "free disk space there or point CHARRNN_CACHE_DIR at another folder"
    else:
        what = "free disk space or set CHARRNN_CACHE_DIR to a folder with more"
    return DataError(f"could not write the cache in '{folder}': {e.strerror or e}; {what}")


def _open_cache(folder: Path, signature: dict, codec: str, errors: str) -> Corpus | None:
    try:
        with _locked(folder, exclusive=False):
            if not (folder / META).exists():  # a build was killed: nothing here is of use
                _remove_leftovers(folder)
            return _read_cache(folder, signature, codec, errors)
    except OSError:  # no folder or no lock file: no cache
        return None


def _remove_leftovers(folder: Path) -> None:
    """Delete what a killed build left: ids.npy without meta.json, and atomic's temporary
    files. Only under the folder's lock, shared or exclusive: no build is running then."""
    if not (folder / META).exists():
        remove_quietly(folder / IDS)
    for tmp in folder.glob(".*.tmp"):  # atomic.replace_atomically's names
        remove_quietly(tmp)


def _read_cache(folder: Path, signature: dict, codec: str, errors: str) -> Corpus | None:
    """The cache in folder as a Corpus if it is complete, intact and matches the corpus; else
    None. The caller holds the folder's lock."""
    try:
        meta = _read_meta(folder / META)
        if meta is None:
            return None
        source, code_points = meta["source"], meta["vocab"]
        same = (
            meta["format_version"] == FORMAT_VERSION
            and source["trusted"] is True
            and all(source[k] == v for k, v in signature.items())
            and (meta["encoding"], meta["decode_errors"]) == (codec, errors)
            and _sorted_code_points(code_points)
        )
        if not same:
            return None
        ids = np.load(folder / IDS, mmap_mode="r")  # never a pickle: allow_pickle is off
        intact = (
            ids.shape == (meta["n_chars"],)
            and ids.dtype == id_dtype(len(code_points))
            and len(ids) > 0
            and _ids_below(ids, len(code_points))
        )
    except (OSError, EOFError, ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None  # missing, half written, damaged or not ours: rebuild
    return Corpus(ids=ids, vocab=_chars(code_points)) if intact else None


def _checksum(meta: dict) -> str:
    """SHA-256 of meta without its checksum, as JSON with sorted keys."""
    rest = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def _read_meta(path: Path) -> dict | None:
    """meta.json if it is a JSON object whose checksum matches; else None."""
    with open(path, "rb") as f:
        raw = f.read(MAX_META_BYTES + 1)
    meta = json.loads(raw) if len(raw) <= MAX_META_BYTES else None
    if not isinstance(meta, dict) or meta.get("checksum") != _checksum(meta):
        return None
    return meta


def _sorted_code_points(vocab) -> bool:
    """A non-empty list of distinct code points in increasing order, as pass 1 writes it."""
    return (
        isinstance(vocab, list)
        and len(vocab) > 0
        and all(type(c) is int for c in vocab)
        and 0 <= vocab[0]
        and vocab[-1] < N_CODE_POINTS
        and all(a < b for a, b in itertools.pairwise(vocab))
    )


def _ids_below(ids: np.ndarray, vocab_size: int) -> bool:
    """Every id is below vocab_size: the max of the memory-mapped ids, a block at a time, each
    block unmapped after it is read (it stays in the page cache for training)."""
    if vocab_size > np.iinfo(ids.dtype).max:  # every value of the type is an id
        return True
    release = isinstance(ids.base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED")
    for start in range(0, len(ids), CHECK_BLOCK):
        if int(ids[start : start + CHECK_BLOCK].max()) >= vocab_size:
            return False
        if release:
            ids.base.madvise(mmap.MADV_DONTNEED)
    return True


def _chars(code_points: Iterable[int]) -> list[str]:
    return [chr(c) for c in code_points]


# --- building a cache -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Reader:
    """How to read the corpus: its name in messages, the codec, the decode_errors mode, the
    block size, and where progress goes."""

    name: str
    encoding: str
    errors: str
    block_size: int
    progress: Progress

    def texts(
        self, f: BinaryIO, phase: str, total: int | None, copy: BinaryIO | None = None
    ) -> Iterator[str]:
        """The text of f, decoded block by block (the decoder's last flush included), with
        progress reported as `phase`; each raw block is also written to `copy` if given. Invalid
        bytes raise DataError with their offset in the whole corpus, even across two blocks."""
        decoder = codecs.getincrementaldecoder(self.encoding)(self.errors)
        offset = 0  # corpus bytes passed to the decoder so far

        def decode(raw: bytes, final: bool) -> str:
            pending = decoder.getstate()[0]  # bytes of a character cut by the last block
            pending = len(pending) if isinstance(pending, (bytes, bytearray)) else 0
            try:
                return decoder.decode(raw, final)
            except UnicodeError as e:  # a UnicodeDecodeError's start counts from pending bytes
                raise decode_error(self.name, self.encoding, e, offset - pending) from None

        while raw := f.read(self.block_size):
            if copy is not None:
                copy.write(raw)
            text = decode(raw, False)
            offset += len(raw)
            self.progress(phase, offset, total)
            yield text
        yield decode(b"", True)

    def changed(self) -> DataError:
        return DataError(
            f"'{self.name}' changed while it was being read; run again once it is finished"
        )


def _build(
    reader: _Reader, f: BinaryIO, folder: Path, meta: dict, vocab: np.ndarray, signature: dict
) -> np.memmap:
    """Pass 2 of the corpus f into folder (whose lock the caller holds), then meta.json.
    `signature`: the corpus's when pass 1 began; any change since then is an error."""
    remove_quietly(folder / META)  # from here until it is written again, the folder holds no cache
    _remove_leftovers(folder)  # ids.npy: a new file, a process still reading the old keeps it
    try:
        f.seek(0)
        ids = _write_ids(reader, f, signature["size"], folder / IDS, vocab, meta["n_chars"])
        if _signature(os.fstat(f.fileno())) != signature:
            raise reader.changed()
        with open(folder / IDS, "rb") as written:
            os.fsync(written.fileno())  # on disk before meta.json says the cache is complete
        replace_atomically(folder / META, lambda out: out.write(jsonout.dumps(meta).encode()))
        return ids
    except BaseException as e:
        remove_quietly(folder / IDS)  # no use without meta.json: give the disk space back
        if isinstance(e, OSError):
            raise _write_error(e, folder) from None
        raise


def _prepare_stream(reader: _Reader, f: BinaryIO, start: float) -> PreparedCorpus:
    """stdin or a pipe: pass 1 copies it to a temporary file, pass 2 reads that; the ids go to a
    temporary folder that is deleted on return (the memory map keeps the file until exit)."""
    tmp = tempfile.gettempdir()
    try:
        with tempfile.TemporaryFile(dir=tmp) as spool, _stream_folder(tmp) as out:
            vocab, n_chars = _scan(reader, f, None, copy=_Spool(spool, reader.name, tmp))
            n_bytes = spool.tell()
            spool.seek(0)
            ids = _write_ids(reader, spool, n_bytes, out / IDS, vocab, n_chars)
    except OSError as e:
        raise DataError(
            f"could not write a temporary cache for '{reader.name}' in '{tmp}': "
            f"{e.strerror or e}; set TMPDIR to a folder with free space"
        ) from None
    corpus = Corpus(ids=ids, vocab=_chars(vocab))
    return PreparedCorpus(corpus, reader.name, None, False, n_bytes, time.perf_counter() - start)


def _device_stdin() -> bool:
    """Whether stdin is a character device other than a terminal (/dev/zero, /dev/urandom)."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):  # the test runner's stdin has no descriptor
        return False
    return stat.S_ISCHR(mode) and not sys.stdin.isatty()


class _Spool:
    """The copy of a stream in the temporary folder, refused past half the folder's free space
    when it began (the other half: its ids), so `train - < /dev/zero` ends with an error, not
    a full disk."""

    def __init__(self, f: BinaryIO, name: str, folder: str):
        self.f, self.name, self.folder, self.written = f, name, folder, 0
        self.room = max(0, shutil.disk_usage(folder).free // 2 - (64 << 20))

    def write(self, raw: bytes) -> None:
        self.written += len(raw)
        if self.written > self.room:
            raise TooLargeError(
                f"input too large: '{self.name}' is more than the {show_bytes(self.room)} the "
                f"temporary folder '{self.folder}' has room for (half its free space, the other "
                "half for its ids); set TMPDIR to a folder with more free space"
            )
        self.f.write(raw)


@contextmanager
def _stream_folder(tmp: str) -> Iterator[Path]:
    """A new folder <tmp>/charrnn-stream-*, locked from before it has that name until it is
    deleted after the block. First deletes the folders of earlier streams whose lock is free:
    their process was killed before it could delete them."""
    _remove_dead_streams(Path(tmp))
    made = Path(tempfile.mkdtemp(prefix=".charrnn-new-", dir=tmp))
    folder = made
    try:
        fd = os.open(made / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # renamed only once locked, so no other process can find it unlocked
            folder = made.with_name(STREAM_PREFIX + made.name.removeprefix(".charrnn-new-"))
            os.rename(made, folder)
            yield folder
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_dead_streams(tmp: Path) -> None:
    for folder in tmp.glob(STREAM_PREFIX + "*"):
        try:
            fd = os.open(folder / LOCK, os.O_RDONLY)
        except OSError:  # gone already, or another user's
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # in use
            continue
        else:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(fd)
    for made in tmp.glob(".charrnn-new-*"):  # killed between mkdtemp and rename: microseconds
        try:
            stale = time.time() - made.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(made, ignore_errors=True)


def _scan(
    reader: _Reader, f: BinaryIO, total: int | None, copy: BinaryIO | None = None
) -> tuple[np.ndarray, int]:
    """Pass 1: the sorted code points that occur (the vocabulary) and the number of characters."""
    # a set of code points as a mask over all of them (1.1 MB): np.unique per block, or set(),
    # would be 5-8x slower than setting its entries
    seen = np.zeros(N_CODE_POINTS, dtype=bool)
    n_chars = 0
    for text in reader.texts(f, "read", total, copy):
        width, raw = _code_point_bytes(text)
        if width == 1:  # keep only the bytes not seen yet, usually none: 8x faster than indexing
            raw = raw.translate(None, np.flatnonzero(seen[:256]).astype(np.uint8).tobytes())
        seen[np.frombuffer(raw, dtype=f"<u{width}").astype(np.intp)] = True  # intp: 25% faster
        n_chars += len(text)
    if n_chars == 0:
        raise empty_error(reader.name)
    return np.flatnonzero(seen), n_chars


def _write_ids(
    reader: _Reader, f: BinaryIO, total: int, path: Path, vocab: np.ndarray, n_chars: int
) -> np.memmap:
    """Pass 2: searchsorted(vocab, code points) into a new .npy at path; returns it mapped
    read-only. Raises DataError if the text no longer matches pass 1 (the file changed)."""
    dtype = np.dtype(id_dtype(len(vocab)))
    # searchsorted runs at ~30 MB/s on the corpus; evaluated once for every code point up to the
    # largest in the vocabulary, it is a table that the ids are looked up in (bytes.translate's
    # 256-byte table for 1-byte code points and ids, 3x faster again)
    table = np.searchsorted(vocab, np.arange(vocab[-1] + 1)).astype(dtype)  # (max + 1,)
    byte_table = table[:256].tobytes().ljust(256, b"\0") if dtype.itemsize == 1 else None
    ids = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_chars,))
    done = 0
    for text in reader.texts(f, "write", total):
        width, raw = _code_point_bytes(text)
        try:
            if width == 1 and byte_table is not None:
                block = np.frombuffer(raw.translate(byte_table), dtype=dtype)
            else:
                block = np.take(table, np.frombuffer(raw, dtype=f"<u{width}"))
            ids[done : done + len(block)] = block
        except (IndexError, ValueError):  # a character pass 1 did not see, or more of them
            raise reader.changed() from None
        done += len(block)
        # the pages written stay in the page cache, not in this process's memory: resident
        # memory does not grow with the corpus
        if hasattr(mmap, "MADV_DONTNEED"):
            ids.base.madvise(mmap.MADV_DONTNEED)
    if done != n_chars:
        raise reader.changed()
    ids.flush()
    return np.load(path, mmap_mode="r")


def _code_point_bytes(text: str) -> tuple[int, bytes]:
    """(width, bytes): the text's code points as 1- or 4-byte little-endian integers (one
    C-level encode; for ASCII and Latin-1 text a copy)."""
    if text.isascii():  # O(1) in CPython
        return 1, text.encode("ascii")
    try:
        return 1, text.encode("latin-1")
    except UnicodeEncodeError:  # raised at the first character above U+00FF
        return 4, text.encode("utf-32-le", "surrogatepass")


def _no_progress(phase: str, done: int, total: int | None) -> None:
    pass
