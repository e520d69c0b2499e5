"""Corpora of any size and any number of files: the character ids of a set of documents in one
cache entry under the user's cache folder, memory-mapped for training.

`prepare(sources)` returns a `Corpus` whose `ids` (and document `starts`) are read-only
`np.memmap`s, so neither the text nor its ids are ever held in memory. For one file its ids and
vocabulary are the ones `data.build_corpus(data.read_text(source))` gives (a test checks it).
`sources`: a path or a list of them, each a file, a folder (charrnn.documents: which of its
files are read) or "-" for stdin.

How an entry is built: two passes over the documents, one file open at a time, each decoding
its file in blocks of BLOCK_SIZE bytes with an incremental decoder (a character split across
two blocks is handled; invalid bytes raise DataError with their offset in that file, in pass 1,
before anything is written).
  1. Note which characters occur and count them. The vocabulary is their sorted code points.
     A file of a folder whose first block holds a NUL character is skipped as binary (a file
     named on its own is an error); an empty file is no document.
  2. Write each character's id, searchsorted(vocab, code point), in the smallest type that holds
     it (data.id_dtype), through `np.lib.format.open_memmap`, and each document's first
     position. A set that changed since pass 1 (a file's signature, below; a file added or
     removed) is a DataError.
With `documents` "line" or "paragraph" every line (every blank-line-separated block) of every
file is a record, and the ids are E r_1 E r_2 E ... r_n E, E = len(vocab) the end-of-record id
(data.py): a record ends with E, and E is what the model reads from a zero state before a
record's first character. Blank lines are no records; "\\r\\n" ends a line as "\\n" does.
stdin and pipes can be read only once: they are copied to a temporary file first.

An entry, <cache folder>/<name>-<key>/ (nothing in it is pickled):
    ids.npy     the ids, a standard .npy file: `np.load(path, mmap_mode="r")` reads it
    starts.npy  int64, the position in ids.npy where each file's document begins
    meta.json   format_version, sources (the paths as given, the globs), files {count, bytes,
                digest, trusted}, encoding, decode_errors, documents, n_chars (ids, E counted),
                n_documents, vocab (code points), and checksum: the SHA-256 of the rest
                (json.dumps with sorted keys). Written last, atomically: a folder without it
                holds no cache (a killed build), and is rebuilt.
    lock        flock'ed: exclusively while an entry is built, shared while one is opened, so
                a second `train` on the same corpus waits for the build instead of reading half.
A rebuild deletes meta.json first and writes ids.npy as a new file, so a process still training
on the old ids keeps reading them.

The key: the SHA-256 of the absolute paths as given, the globs, encoding, decode_errors and
documents; so two corpora (or one read two ways) never share an entry, and the entry of a
corpus is found again without reading it. The files' digest: the SHA-256 of each file's path,
size, mtime_ns, ctime_ns and inode, in order. An entry is reused when its format_version and
settings match, its digest is the set's now (every file stat'ed: a file changed, added or
removed is noticed), it is trusted, and it passes a check of its own contents that costs far
less than a build: meta.json's checksum, a vocabulary of sorted distinct code points, an ids.npy
of the recorded length and type, every id below the vocabulary's size (a max over the memory
map, a block at a time). Anything else rebuilds it: an entry edited or damaged on disk is never
trained on. ctime cannot be set by `touch`, so even an edit that restores the old mtime is
noticed. An entry built less than a second after one of its files was last written (the older
of its mtime and ctime: an mtime in the future does not count) serves that run but is not
trusted by the next: a second write within the same clock tick could leave those four numbers
unchanged.

Where entries live (one rule): in $CHARRNN_CACHE_DIR when it is set (only there: an error if it
cannot be written); otherwise in the user's cache folder, $XDG_CACHE_HOME/charrnn or
~/.cache/charrnn, and when that cannot be written (read-only, missing and not creatable, not a
folder) in <tmp>/charrnn-cache. Never beside the corpus: a corpus in a read-only folder, or a
file such as /proc/self/status, trains like any other. A regular file whose size reads as 0
(the files of /proc and /sys) is read once, like a pipe. The ids of a set that holds stdin or a
pipe go to a folder <tmp>/charrnn-stream-* that is deleted once they are mapped; the memory map
keeps them until the process ends. `entries()` lists the entries of the cache folders and
`clear()` deletes them (`charrnn cache list`, `charrnn cache clear`).

Leftovers of a build killed by a signal (SIGTERM, SIGHUP, SIGKILL: no handler runs) are removed
by the next prepare that takes their lock: an ids.npy without meta.json and temporary files in an
entry, and a whole charrnn-stream-* folder, which is locked for as long as its build runs.

Progress goes to an optional callback `progress(phase, done, total)`, in corpus bytes: phase
"read" for pass 1, "write" for pass 2. Drawing it is left to the CLI.
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
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn import jsonout
from charrnn.atomic import remove_quietly, replace_atomically
from charrnn.data import (
    END,
    N_CODE_POINTS,
    Corpus,
    check_decode_errors,
    check_documents,
    check_encoding,
    decode_error,
    empty_error,
    id_dtype,
    open_error,
    record_code_points,
)
from charrnn.documents import STDIN, Document, Sources
from charrnn.errors import DataError, TooLargeError
from charrnn.memory import show_bytes
from charrnn.runs import special_file

FORMAT_VERSION = 4  # 1: one file of our own; 2: a folder without a checksum; 3: beside one file
IDS, STARTS, META, LOCK = "ids.npy", "starts.npy", "meta.json", "lock"
BLOCK_SIZE = 2 << 20  # corpus bytes decoded at a time; the encoder's working memory is at most
# ~25x this (text beyond Latin-1: the str, its UTF-32 copy, the ids), ~4x for ASCII
TRUST_AFTER_NS = 1_000_000_000  # a corpus written less than this before its scan: not trusted
MAX_META_BYTES = 32 << 20  # meta.json of the largest vocabulary is about 8 MB
CHECK_BLOCK = 16 << 20  # ids checked at a time, then unmapped: at most 64 MB resident
NAME_BYTES = 100  # of the corpus's name kept in an entry's name (255 is the limit)
STREAM_PREFIX = "charrnn-stream-"
STALE_AFTER_S = 60  # a stream folder that never got its lock this long after it was made
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG, errno.ENOENT)
NOT_WRITABLE += (errno.ENOTDIR, errno.EINVAL, errno.EEXIST)  # a file where a folder should be

Progress = Callable[[str, int, "int | None"], None]  # (phase "read" | "write", done, total)


@dataclass
class PreparedCorpus:
    corpus: Corpus  # ids: a read-only np.memmap of the cache
    name: str  # the corpus as the user named it
    cache_path: Path | None  # the entry's folder; None for a temporary one (stdin, pipes)
    reused: bool  # True when an up-to-date entry was found and nothing was encoded
    source_bytes: int
    seconds: float
    files: int = 1  # files read
    skipped: int = 0  # files of folders skipped because they look binary
    crc32: int = 0  # of the ids' bytes: what a run records of its corpus, for resume

    def summary(self) -> str:
        """One line for the user: what was encoded (or found) and where the cache is."""
        ids, corpus = self.corpus.ids, self.corpus
        docs = "" if corpus.documents == 1 else f"{corpus.documents:,} documents, "
        skipped = f" ({self.skipped:,} binary files skipped)" if self.skipped else ""
        what = (
            f"{docs}{len(ids):,} characters, {len(corpus.vocab):,} distinct "
            f"({ids.dtype.name} ids){skipped}"
        )
        where = f"cache {self.cache_path}" if self.cache_path else "temporary cache"
        if self.reused:
            return f"{self.name}: {where} is up to date; {what}"
        rate = self.source_bytes / 1e6 / max(self.seconds, 1e-9)
        return f"encoded {self.name}: {what} in {self.seconds:.1f}s ({rate:.1f} MB/s); {where}"

    def to_dict(self) -> dict:
        ids, folder = self.corpus.ids, self.cache_path
        parts = (IDS, STARTS, META)
        size = sum((folder / f).stat().st_size for f in parts) if folder else None
        return {
            "corpus": self.name,
            "cache": str(folder) if folder else None,
            "reused": self.reused,
            "bytes": self.source_bytes,
            "files": self.files,
            "skipped_files": self.skipped,
            "documents": self.corpus.documents,
            "records": self.corpus.end_id is not None,
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
    source: str | os.PathLike | Sequence,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    documents: str = "file",
    globs: Sequence[str] = (),
    force: bool = False,
    block_size: int = BLOCK_SIZE,
    progress: Progress | None = None,
) -> PreparedCorpus:
    """The corpus at `source` (a path, "-" = stdin, or a list of them; folders are read
    recursively, their files chosen by `globs`) as a memory-mapped Corpus, from its cache entry
    when it is up to date, otherwise by encoding it (and saving the entry unless it holds a
    stream). `documents`: "file" (each file is a document), "line" or "paragraph" (records)."""
    start = time.perf_counter()
    sources, folders, settings = _reading(
        source, encoding, errors, documents=documents, globs=globs
    )
    reader = _Reader(
        sources.name, encoding, errors, block_size, progress or _no_progress, documents
    )
    streams = [p for p in sources.paths if _is_stream(p)]
    if streams:
        return _prepare_streams(reader, sources, streams, start)
    meta = {"format_version": FORMAT_VERSION, "sources": _sources_meta(sources), **settings}
    return _prepare_set(reader, sources, folders, meta, force, start)


def _is_stream(given: str) -> bool:
    """stdin, a pipe or another file that can be read only once (a regular file of size 0, as
    in /proc, is read once too: its size says nothing of its text)."""
    if given == STDIN:
        return True
    try:
        st = os.stat(given)
    except OSError:
        return False  # the walk says what is wrong with it
    if stat.S_ISDIR(st.st_mode):
        return False
    return not stat.S_ISREG(st.st_mode) or st.st_size == 0


def _sources_meta(sources: Sources) -> dict:
    return {"paths": [_absolute(p) for p in sources.paths], "globs": list(sources.globs)}


def _absolute(given: str) -> str:
    return given if given == STDIN else os.path.abspath(given)


def _prepare_set(
    reader: _Reader,
    sources: Sources,
    folders: list[Path],
    meta: dict,
    force: bool,
    start: float,
    replaced: dict[str, Path] | None = None,
) -> PreparedCorpus:
    """The set from the first folder that holds its up-to-date entry, or encoded into the first
    writable one (a temporary folder for a set with streams: `replaced`, never reused)."""
    digest = _Digest.of(sources.walk(replaced)).hexdigest()
    reuse = not force and not replaced
    for folder in folders if reuse else []:
        found = _open_cache(folder, meta, digest)
        if found is not None:
            return _prepared(reader, found, folder, True, start)
    for folder in folders:
        try:
            with _locked(folder, exclusive=True):
                # another prepare may have built it while this one was reading the folders
                found = _read_cache(folder, meta, digest) if reuse else None
                if found is not None:
                    return _prepared(reader, found, folder, True, start)
                built = _build(reader, sources, replaced, folder, meta)
                return _prepared(reader, built, None if replaced else folder, False, start)
        except _FolderNotWritable:
            continue
    chosen = os.environ.get("CHARRNN_CACHE_DIR")
    if chosen:
        raise DataError(
            f"cannot write the cache of '{reader.name}' in CHARRNN_CACHE_DIR '{chosen}'; "
            "point it at a writable folder"
        )
    tried = ", ".join(f"'{f.parent}'" for f in folders)
    raise DataError(
        f"no writable folder for the cache of '{reader.name}' (tried {tried}); "
        "set CHARRNN_CACHE_DIR to a writable folder"
    )


def _prepared(
    reader: _Reader, found: tuple[Corpus, dict], folder: Path | None, reused: bool, start: float
) -> PreparedCorpus:
    corpus, meta = found
    files = meta["files"]
    return PreparedCorpus(
        corpus,
        reader.name,
        folder,
        reused,
        files["bytes"],
        time.perf_counter() - start,
        files=files["count"],
        skipped=files["skipped"],
        crc32=meta["ids_crc32"],
    )


# --- where entries live -----------------------------------------------------------------------


def cache_folders() -> list[Path]:
    """The folders entries go to, in the order they are tried: $CHARRNN_CACHE_DIR alone when it
    is set; else the user's cache folder, then <tmp>/charrnn-cache."""
    chosen = os.environ.get("CHARRNN_CACHE_DIR")
    if chosen:
        return [Path(chosen)]
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(home) / "charrnn", Path(tempfile.gettempdir()) / "charrnn-cache"]


def entry_folders(source: str | os.PathLike | Sequence, **reading) -> list[Path]:
    """Where the entry of a corpus is looked for and built, in order: `reading` are prepare's
    encoding, errors, documents and globs."""
    return _reading(source, **reading)[1]


def _reading(
    source: str | os.PathLike | Sequence,
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    documents: str = "file",
    globs: Sequence[str] = (),
) -> tuple[Sources, list[Path], dict]:
    """(the sources, the folders of their entry, the settings meta.json records), each setting
    checked."""
    codec = check_encoding(encoding)  # recorded in meta.json; messages keep the user's spelling
    check_decode_errors(errors)
    check_documents(documents)
    sources = Sources.of(source, globs)
    settings = {"encoding": codec, "decode_errors": errors, "documents": documents}
    return sources, _cache_folders(sources, sources.key(settings)), settings


def _cache_folders(sources: Sources, key: str) -> list[Path]:
    """The entry of this set in each cache folder: the start of its first path's name, then
    the key."""
    first = sources.paths[0]
    name = "stdin" if first == STDIN else Path(first).resolve().name or "root"
    name = name.encode("utf-8", "surrogateescape")[:NAME_BYTES]
    name = name.decode("utf-8", "ignore")  # a character cut in two is dropped
    return [root / f"{name}-{key[:24]}" for root in cache_folders()]


@dataclass
class Entry:
    """An entry of a cache folder, as `charrnn cache list` shows it."""

    path: Path
    sources: list[str]  # the paths as they were given (absolute)
    bytes: int  # on disk
    chars: int | None  # None: an entry without a readable meta.json (a killed build)
    documents: int | None
    mode: str | None
    last_used: float  # seconds since the epoch: when it was last built or opened

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "sources": self.sources,
            "bytes": self.bytes,
            "chars": self.chars,
            "documents": self.documents,
            "documents_mode": self.mode,
            "last_used": round(self.last_used, 3),
        }


def entries() -> list[Entry]:
    """Every entry of the cache folders, most recently used first."""
    found = []
    for root in cache_folders():
        try:
            folders = [p for p in root.iterdir() if (p / LOCK).is_file()]
        except OSError:
            continue
        for folder in folders:
            try:
                meta = _read_meta(folder / META)
            except (OSError, ValueError, RecursionError):
                meta = None
            meta = meta if isinstance(meta, dict) and "files" in meta else None
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            found.append(
                Entry(
                    folder,
                    list(meta["sources"]["paths"]) if meta else [],
                    size,
                    meta["n_chars"] if meta else None,
                    meta["n_documents"] if meta else None,
                    meta["documents"] if meta else None,
                    (folder / LOCK).stat().st_mtime,
                )
            )
    return sorted(found, key=lambda e: -e.last_used)


def clear(source: str | os.PathLike | Sequence | None = None) -> list[Path]:
    """Delete the entries of the cache folders, or only those of `source` (the paths as a
    corpus was given, whatever its settings); an entry that another process is building or
    reading is left alone. Returns the folders deleted."""
    wanted = None if source is None else [_absolute(p) for p in Sources.of(source).paths]
    deleted = []
    for entry in entries():
        if wanted is not None and entry.sources != wanted:
            continue
        if _remove_unless_locked(entry.path):
            deleted.append(entry.path)
    return deleted


def _remove_unless_locked(folder: Path) -> bool:
    """Remove the entry or stream folder unless another process holds its lock (or its lock file
    cannot be opened: gone already, or another user's); True when it was removed."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # in use
        return False
    else:
        shutil.rmtree(folder, ignore_errors=True)
        return True
    finally:
        os.close(fd)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _Digest:
    """The files' digest: each file's path and signature, in order; and what else the meta
    says of them."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.count = self.bytes = self.skipped = 0
        self.newest_ns = 0  # the older of mtime and ctime, of the newest file

    @classmethod
    def of(cls, documents: Iterable[Document]) -> _Digest:
        digest = cls()
        for doc in documents:
            try:
                digest.add(doc.path, os.stat(doc.path))
            except OSError as e:
                raise open_error(doc.path, e) from None
        return digest

    def add(self, path: Path, st: os.stat_result) -> None:
        record = [os.fsdecode(os.path.abspath(path)), *_signature(st)]
        self.sha.update(json.dumps(record).encode("utf-8", "surrogateescape") + b"\n")
        self.count += 1
        self.bytes += st.st_size
        self.newest_ns = max(self.newest_ns, min(st.st_mtime_ns, st.st_ctime_ns))

    def hexdigest(self) -> str:
        return self.sha.hexdigest()

    def meta(self) -> dict:
        return {
            "count": self.count,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "digest": self.hexdigest(),
            # by the older of mtime and ctime: a corpus whose mtime is in the future (`touch -d
            # tomorrow`, an archive from a clock ahead) is trusted once its ctime, which the
            # kernel sets, is old enough
            "trusted": time.time_ns() - self.newest_ns >= TRUST_AFTER_NS,
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
    if e.errno in NOT_WRITABLE:
        return _FolderNotWritable()  # try the next folder
    if os.environ.get("CHARRNN_CACHE_DIR"):
        what = "free disk space there or point CHARRNN_CACHE_DIR at another folder"
    else:
        what = "free disk space or set CHARRNN_CACHE_DIR to a folder with more"
    return DataError(f"could not write the cache in '{folder}': {e.strerror or e}; {what}")


def _open_cache(folder: Path, meta: dict, digest: str) -> tuple[Corpus, dict] | None:
    try:
        with _locked(folder, exclusive=False):
            if not (folder / META).exists():  # a build was killed: nothing here is of use
                _remove_leftovers(folder)
            found = _read_cache(folder, meta, digest)
    except OSError:  # no folder or no lock file: no cache
        return None
    if found is not None:
        try:
            os.utime(folder / LOCK)  # when it was last used, for `charrnn cache list`
        except OSError:
            pass
    return found


def _read_cache(folder: Path, wanted: dict, digest: str) -> tuple[Corpus, dict] | None:
    """The entry in folder as (Corpus, its meta) if it is complete, intact and matches the
    set's settings and digest; else None. The caller holds the folder's lock."""
    try:
        meta = _read_meta(folder / META)
        if meta is None:
            return None
        files, code_points = meta["files"], meta["vocab"]
        same = (
            all(meta[k] == v for k, v in wanted.items())
            and files["trusted"] is True
            and files["digest"] == digest
            and _sorted_code_points(code_points)
        )
        if not same:
            return None
        records = meta["documents"] != "file"
        ids = np.load(folder / IDS, mmap_mode="r")  # never a pickle: allow_pickle is off
        starts = np.load(folder / STARTS, mmap_mode="r")
        n_ids = len(code_points) + records  # the end-of-record id is one more
        intact = (
            ids.shape == (meta["n_chars"],)
            and ids.dtype == id_dtype(n_ids)
            and len(ids) > 0
            and starts.dtype == np.int64
            and starts.ndim == 1
            and _ids_below(ids, n_ids)
        )
    except (OSError, EOFError, ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None  # missing, half written, damaged or not ours: rebuild
    return (_corpus(ids, code_points, starts, meta), meta) if intact else None


def _corpus(ids: np.ndarray, code_points, starts: np.ndarray, meta: dict) -> Corpus:
    vocab = _chars(code_points)
    end_id = len(vocab) if meta["documents"] != "file" else None
    return Corpus(ids, vocab, starts=starts, end_id=end_id, documents=meta["n_documents"])


def _remove_leftovers(folder: Path) -> None:
    """Delete what a killed build left: ids.npy without meta.json, and atomic's temporary
    files. Only under the folder's lock, shared or exclusive: no build is running then."""
    if not (folder / META).exists():
        remove_quietly(folder / IDS)
    for tmp in folder.glob(".*.tmp"):  # atomic.replace_atomically's names
        remove_quietly(tmp)


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


# --- building an entry ------------------------------------------------------------------------


class _Binary(Exception):
    """A file's first block holds a NUL character: not text."""

    def __init__(self, offset: int):
        self.offset = offset


@dataclass(frozen=True)
class _Reader:
    """How to read the corpus: its name in messages, the codec, the decode_errors mode, the
    block size, where progress goes, and what a document is."""

    name: str
    encoding: str
    errors: str
    block_size: int
    progress: Progress
    documents: str = "file"

    @property
    def records(self) -> bool:
        return self.documents != "file"

    def texts(self, f: BinaryIO, phase: str, done: int, total: int | None) -> Iterator[str]:
        """The text of f, decoded block by block (the decoder's last flush included), with
        progress reported as `phase` (`done`: bytes of the set before this file); _Binary when
        the first block holds a NUL character. Invalid bytes raise DataError with their offset
        in the file, even across two blocks."""
        decoder = codecs.getincrementaldecoder(self.encoding)(self.errors)
        offset = 0  # bytes of this file passed to the decoder so far

        def decode(raw: bytes, final: bool) -> str:
            pending = decoder.getstate()[0]  # bytes of a character cut by the last block
            pending = len(pending) if isinstance(pending, (bytes, bytearray)) else 0
            try:
                return decoder.decode(raw, final)
            except UnicodeError as e:  # a UnicodeDecodeError's start counts from pending bytes
                raise decode_error(self.name, self.encoding, e, offset - pending) from None

        while raw := f.read(self.block_size):
            if offset == 0 and (nul := self._nul(raw)) >= 0:
                raise _Binary(nul)
            text = decode(raw, False)
            offset += len(raw)
            self.progress(phase, done + offset, total)
            yield text
        yield decode(b"", True)

    def _nul(self, raw: bytes) -> int:
        """Where the first block of a file has a NUL: a byte 0 for codecs that write ASCII as
        itself (utf-8, latin-1...), where text never holds one; a decoded U+0000 for others
        (utf-16, whose text is full of zero bytes). -1 when there is none."""
        if "\0a".encode(self.encoding) == b"\0a":
            return raw.find(b"\0")
        try:
            return raw.decode(self.encoding, "ignore").find("\0")
        except UnicodeError:
            return -1

    def pieces(self, texts: Iterator[str]) -> Iterator[str | np.ndarray]:
        """The texts as they are (documents "file"), or as arrays of code points (uint32) in
        which each record is followed by END."""
        return record_code_points(texts, self.documents) if self.records else texts

    def changed(self) -> DataError:
        return DataError(
            f"'{self.name}' changed while it was being read; run again once it is finished"
        )


@contextmanager
def _opened(doc: Document) -> Iterator[tuple[BinaryIO, os.stat_result]]:
    try:
        f = open(doc.path, "rb")  # a directory raises IsADirectoryError: open_error words it
    except OSError as e:
        raise open_error(doc.path, e) from None
    with f:
        yield f, os.fstat(f.fileno())


def _binary_error(doc: Document, offset: int) -> DataError:
    return DataError(
        f"'{doc.name}' looks like a binary file (a NUL at byte {offset:,}), not text; "
        "give text files"
    )


@dataclass
class _Scan:
    """What pass 1 found: the vocabulary, the ids to write, the documents and their starts."""

    vocab: np.ndarray
    n_ids: int
    n_documents: int
    starts: array  # int64: where each file's document begins in the ids
    digest: _Digest = field(default_factory=_Digest)


def _each_document(
    reader: _Reader, sources: Sources, replaced, phase: str, total: int, digest: _Digest
) -> Iterator[tuple[_Reader, Iterator[str | np.ndarray]]]:
    """(a reader named for the file, its pieces) for each document of the set, in order, its
    signature added to digest; files of folders that look binary are skipped and counted."""
    done = 0
    for doc in sources.walk(replaced):
        with _opened(doc) as (f, st):
            digest.add(doc.path, st)
            named = replace(reader, name=doc.name)
            texts = named.texts(f, phase, done, total)
            try:
                first = next(texts)  # there is always one: the decoder's last flush
            except _Binary as e:
                if doc.named:
                    raise _binary_error(doc, e.offset) from None
                digest.skipped += 1
            else:
                yield named, named.pieces(itertools.chain([first], texts))
            done += st.st_size


def _scan(reader: _Reader, sources: Sources, replaced, total: int) -> _Scan:
    """Pass 1: the sorted code points that occur (the vocabulary), the number of ids (records:
    with every END and the first one), the documents and where each file's begins."""
    # a set of code points as a mask over all of them (1.1 MB): np.unique per block, or set(),
    # would be 5-8x slower than setting its entries
    seen = np.zeros(N_CODE_POINTS + 1, dtype=bool)  # [END]: a record ended
    n_ids = int(reader.records)  # records: the END read before the first one
    n_documents = 0
    starts = array("q")
    digest = _Digest()
    for _, pieces in _each_document(reader, sources, replaced, "read", total, digest):
        first = n_ids
        for piece in pieces:
            if isinstance(piece, np.ndarray):  # records: code points and ENDs
                seen[piece] = True
                n_documents += int(np.count_nonzero(piece == END))
                n_ids += len(piece)
                continue
            width, raw = _code_point_bytes(piece)
            if width == 1:  # keep only the bytes not seen yet, usually none: 8x faster
                raw = raw.translate(None, np.flatnonzero(seen[:256]).astype(np.uint8).tobytes())
            seen[np.frombuffer(raw, dtype=f"<u{width}").astype(np.intp)] = True  # intp: 25% faster
            n_ids += len(piece)
        if n_ids > first:
            starts.append(first)
            n_documents += not reader.records
    if n_documents == 0 and digest.count == digest.skipped:
        skipped = f" ({digest.skipped:,} look binary)" if digest.skipped else ""
        raise DataError(
            f"'{reader.name}' holds no text files{skipped}; give text files or a folder of "
            "them (hidden files are skipped; --glob chooses which files)"
        )
    if n_documents == 0:
        raise empty_error(reader.name)
    return _Scan(np.flatnonzero(seen[:N_CODE_POINTS]), n_ids, n_documents, starts, digest)


def _write_ids(
    reader: _Reader, sources: Sources, replaced, total: int, path: Path, scan: _Scan
) -> tuple[np.memmap, int]:
    """Pass 2: searchsorted(vocab, code points) (and records' ENDs) into a new .npy at path;
    returns it mapped read-only, and the CRC-32 of its bytes. Raises DataError if the set no
    longer matches pass 1."""
    vocab = scan.vocab
    end_id = len(vocab)  # records only
    dtype = np.dtype(id_dtype(len(vocab) + reader.records))
    # searchsorted runs at ~30 MB/s on the corpus; evaluated once for every code point up to the
    # largest in the vocabulary, it is a table that the ids are looked up in (bytes.translate's
    # 256-byte table for 1-byte code points and ids, 3x faster again)
    table = np.searchsorted(vocab, np.arange(vocab[-1] + 1)).astype(dtype)  # (max + 1,)
    byte_table = table[:256].tobytes().ljust(256, b"\0") if dtype.itemsize == 1 else None
    ids = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(scan.n_ids,))
    done = crc = 0
    if reader.records:
        ids[0] = end_id
        done, crc = 1, zlib.crc32(ids[:1].tobytes())
    digest = _Digest()
    for named, pieces in _each_document(reader, sources, replaced, "write", total, digest):
        for piece in pieces:
            try:
                if isinstance(piece, np.ndarray):  # records
                    ended = piece == END
                    block = np.take(table, np.where(ended, 0, piece))
                    block[ended] = end_id
                else:
                    width, raw = _code_point_bytes(piece)
                    if width == 1 and byte_table is not None:
                        block = np.frombuffer(raw.translate(byte_table), dtype=dtype)
                    else:
                        block = np.take(table, np.frombuffer(raw, dtype=f"<u{width}"))
                ids[done : done + len(block)] = block
                crc = zlib.crc32(np.ascontiguousarray(block, dtype).data, crc)
            except (IndexError, ValueError):  # a character pass 1 did not see, or more of them
                raise named.changed() from None
            done += len(block)
            # the pages written stay in the page cache, not in this process's memory: resident
            # memory does not grow with the corpus
            if hasattr(mmap, "MADV_DONTNEED"):
                ids.base.madvise(mmap.MADV_DONTNEED)
    if done != scan.n_ids or digest.hexdigest() != scan.digest.hexdigest():
        raise reader.changed()
    ids.flush()
    return np.load(path, mmap_mode="r"), crc


def _build(
    reader: _Reader, sources: Sources, replaced, folder: Path, meta: dict
) -> tuple[Corpus, dict]:
    """Both passes over the set into folder (whose lock the caller holds), then meta.json."""
    total = _Digest.of(sources.walk(replaced)).bytes
    scan = _scan(reader, sources, replaced, total)
    meta = {
        **meta,
        "files": scan.digest.meta(),
        "n_chars": scan.n_ids,
        "n_documents": scan.n_documents,
        "vocab": scan.vocab.tolist(),
    }
    remove_quietly(folder / META)  # from here until it is written again, the folder holds no cache
    _remove_leftovers(folder)  # ids.npy: a new file, a process still reading the old keeps it
    try:
        ids, meta["ids_crc32"] = _write_ids(reader, sources, replaced, total, folder / IDS, scan)
        meta["checksum"] = _checksum(meta)
        starts = (
            np.frombuffer(scan.starts, dtype=np.int64) if scan.starts else np.zeros(0, np.int64)
        )
        replace_atomically(folder / STARTS, lambda out: np.save(out, starts))
        with open(folder / IDS, "rb") as written:
            os.fsync(written.fileno())  # on disk before meta.json says the entry is complete
        replace_atomically(folder / META, lambda out: out.write(jsonout.dumps(meta).encode()))
        starts = np.load(folder / STARTS, mmap_mode="r")
        return _corpus(ids, meta["vocab"], starts, meta), meta
    except BaseException as e:
        remove_quietly(folder / IDS)  # no use without meta.json: give the disk space back
        if isinstance(e, OSError):
            raise _write_error(e, folder) from None
        raise


def _prepare_streams(
    reader: _Reader, sources: Sources, streams: list[str], start: float
) -> PreparedCorpus:
    """A set with stdin or pipes: each is copied to a temporary file first, then the set is
    encoded into a temporary folder that is deleted on return (the memory maps keep the files
    until exit)."""
    tmp = tempfile.gettempdir()
    try:
        with _stream_folder(tmp) as out:
            replaced = {}
            for i, given in enumerate(dict.fromkeys(streams)):
                replaced[given] = out / f"stream-{i}"
                _spool(given, replaced[given])
            meta = {"format_version": FORMAT_VERSION, "sources": _sources_meta(sources)}
            meta.update(encoding=reader.encoding, decode_errors=reader.errors)
            meta["documents"] = reader.documents
            return _prepare_set(reader, sources, [out / "ids"], meta, True, start, replaced)
    except (OSError, _FolderNotWritable) as e:
        why = e.strerror if isinstance(e, OSError) else "not writable"
        raise DataError(
            f"could not write a temporary cache for '{reader.name}' in '{tmp}': "
            f"{why}; set TMPDIR to a folder with free space"
        ) from None


def _spool(given: str, dest: Path) -> None:
    """Copy stdin or the pipe `given` into the file dest, a block at a time, and no more than
    _Spool allows; a device (/dev/zero would fill the disk) is refused."""
    if given == STDIN:
        if _device_stdin():  # `< /dev/zero`
            raise DataError("standard input is a character device, not text; pipe text in")
        src, name = sys.stdin.buffer, "<stdin>"
    else:
        try:
            src, name = open(given, "rb"), given
        except OSError as e:
            raise open_error(Path(given), e) from None
        mode = os.fstat(src.fileno()).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
            src.close()
            kind = special_file(given) or "a device"
            raise DataError(
                f"'{given}' is {kind}, not a text file; give a file, or pipe text in with -"
            )
    try:
        with open(dest, "wb") as out:
            room = _Spool(out, name, str(dest.parent))
            while raw := src.read(BLOCK_SIZE):
                room.write(raw)
    finally:
        if src is not sys.stdin.buffer:
            src.close()


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
        _remove_unless_locked(folder)
    for made in tmp.glob(".charrnn-new-*"):  # killed between mkdtemp and rename: microseconds
        try:
            stale = time.time() - made.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(made, ignore_errors=True)


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
