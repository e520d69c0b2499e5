"""Corpora of any size: a streaming encoder that writes the character ids to a cache file, and
the memory map that training reads its batches from.

`prepare(source)` returns a `Corpus` whose `ids` are a read-only `np.memmap`, so neither the
text nor its ids are ever held in memory. Its ids and vocabulary are the ones
`data.build_corpus(data.read_text(source))` gives (a test checks it).

How a cache is built: one pass over the corpus, in memory bounded by BLOCK_SIZE.
  1. Read the corpus in blocks and decode each with an incremental decoder (a character split
     across two blocks is handled; invalid bytes raise DataError with their offset in the whole
     file). Map each character to a provisional id, numbered in order of first appearance, with
     a lookup table over all code points, and append the ids to a temporary file. They start as
     uint8 and are widened in place if a 256th distinct character turns up.
  2. The vocabulary is the sorted set of characters seen. Rewrite the ids in place as ranks in
     it, in the smallest type that holds them (data.id_dtype), append the header, fsync, and
     rename the file into place: a killed prepare never leaves a broken cache, and the next
     prepare deletes the temporary file it left.

The cache file (nothing in it is pickled):
    bytes 0-63    MAGIC, zero padded
    bytes 64-     the ids: n_chars little-endian unsigned integers of `dtype`
    then          the header, JSON: format_version, source {path, size, mtime_ns, ctime_ns,
                  inode, trusted}, encoding, decode_errors, n_chars, dtype, vocab (sorted code
                  points); it comes last because the vocabulary is known only at the end
    last 8 bytes  the header's length in bytes, uint64 little-endian

When a cache is reused: its format_version, encoding and decode_errors match, and the corpus's
size, mtime_ns, ctime_ns and inode are the ones recorded. Anything else rebuilds it. ctime
cannot be set by `touch`, so even an edit that restores the old mtime is noticed. A cache built
less than a second after the corpus was last written serves that run but is not trusted by the
next: a second write within the same clock tick could leave those four numbers unchanged.

Where it lives: beside the corpus (`corpus.txt.charrnn-cache`); when that folder is not
writable, in $CHARRNN_CACHE_DIR, else $XDG_CACHE_HOME/charrnn (~/.cache/charrnn), else
<tmp>/charrnn-cache, under a name that adds a hash of the corpus's absolute path. stdin ("-")
and other non-regular files (pipes) are encoded into an anonymous temporary file in $TMPDIR that
disappears when the process ends.

Progress goes to an optional callback `progress(phase, done, total)`: phase "read" counts corpus
bytes (total None for a pipe), phase "sort" the bytes of final ids written. Drawing it is left
to the CLI.
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.atomic import default_file_mode, remove_quietly
from charrnn.data import Corpus, decode_error, empty_error, id_dtype, open_error
from charrnn.errors import DataError

MAGIC = b"\x93CHARRNN-IDS"
FORMAT_VERSION = 1
SUFFIX = ".charrnn-cache"
DATA_OFFSET = 64  # the ids start here
BLOCK_SIZE = 2 << 20  # corpus bytes decoded at a time; the encoder's working memory is at most
# ~25x this (text beyond Latin-1: the str, its UTF-32 copy, numpy's int64 index), ~4x for ASCII
CHUNK = 1 << 21  # ids rewritten at a time when widening or sorting
N_CODE_POINTS = 0x110000
TRUST_AFTER_NS = 1_000_000_000  # a corpus written less than this before its scan: not trusted
STALE_TEMP_S = 60  # an unlocked temporary cache file older than this is a killed prepare's

Progress = Callable[[str, int, "int | None"], None]  # (phase "read" | "sort", done, total)


@dataclass
class PreparedCorpus:
    corpus: Corpus  # ids: a read-only np.memmap of the cache
    name: str  # the corpus as the user named it
    cache_path: Path | None  # None for a temporary cache (stdin, pipes)
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
        ids = self.corpus.ids
        return {
            "corpus": self.name,
            "cache": str(self.cache_path) if self.cache_path else None,
            "reused": self.reused,
            "bytes": self.source_bytes,
            "chars": len(ids),
            "vocab_size": len(self.corpus.vocab),
            "id_dtype": ids.dtype.name,
            "cache_bytes": self.cache_path.stat().st_size if self.cache_path else None,
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
    codec = _codec_name(encoding)  # in the header; messages keep the user's spelling
    if errors not in ("strict", "replace"):
        raise DataError(f"decode_errors must be strict or replace, not '{errors}'")
    name = "<stdin>" if str(source) == "-" else str(source)
    progress = progress or _no_progress

    if str(source) == "-":
        return _prepare_stream(
            sys.stdin.buffer, name, encoding, errors, None, block_size, progress, start
        )
    path = Path(source)
    try:
        st = os.stat(path)
    except OSError as e:
        raise open_error(path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise DataError(f"'{path}' is a directory; give a text file")
    try:
        f = open(path, "rb")
    except OSError as e:
        raise open_error(path, e) from None
    with f:
        if not stat.S_ISREG(st.st_mode):  # a pipe such as <(zcat corpus.gz): read it once
            return _prepare_stream(f, name, encoding, errors, None, block_size, progress, start)

        signature = _signature(st)
        candidates = _cache_paths(path)
        if not force:
            for cache_path in candidates:
                found = _open_cache(cache_path, signature, codec, errors)
                if found is not None:
                    return PreparedCorpus(
                        found, name, cache_path, True, st.st_size, time.perf_counter() - start
                    )

        trusted = time.time_ns() - st.st_mtime_ns >= TRUST_AFTER_NS
        source_info = {**signature, "path": str(path.resolve()), "trusted": trusted}
        for cache_path in candidates:
            try:
                _remove_stale_temps(cache_path)
                return _build(
                    f,
                    name,
                    encoding,
                    errors,
                    source_info,
                    cache_path,
                    block_size,
                    progress,
                    start,
                    st,
                )
            except _FolderNotWritable:
                f.seek(0)
        raise DataError(
            f"no writable folder for the cache of '{path}'; set CHARRNN_CACHE_DIR "
            "to a writable folder"
        )


# --- where caches live ----------------------------------------------------------------------


def _cache_paths(path: Path) -> list[Path]:
    """Beside the corpus first, then the user cache folder, then the temp folder."""
    digest = hashlib.sha256(str(path.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    elsewhere = f"{path.name}-{digest[:16]}{SUFFIX}"
    user = os.environ.get("CHARRNN_CACHE_DIR") or os.path.join(
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


def _codec_name(encoding: str) -> str:
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):  # base64, zlib, ...
        raise DataError(f"unknown text encoding '{encoding}'")
    return info.name  # "UTF8" and "utf-8" share a cache


# --- reading a cache ------------------------------------------------------------------------


def _open_cache(path: Path, signature: dict, codec: str, errors: str) -> Corpus | None:
    """The cache at path as a Corpus if it exists, is whole and matches the corpus; else None."""
    try:
        f = open(path, "rb")
    except OSError:
        return None
    with f:
        found = _map_ids(f)
    if found is None:
        return None
    header, corpus = found
    src = header.get("source") or {}
    same = (
        src.get("trusted") is True
        and all(src.get(k) == v for k, v in signature.items())
        and header.get("encoding") == codec
        and header.get("decode_errors") == errors
    )
    return corpus if same else None


def _map_ids(f: BinaryIO) -> tuple[dict, Corpus] | None:
    """Header and memory-mapped ids of an open cache file; None if it is not a whole one."""
    try:
        f.seek(0)
        if f.read(len(MAGIC)) != MAGIC:
            return None
        size = f.seek(0, os.SEEK_END)
        f.seek(size - 8)
        (header_len,) = struct.unpack("<Q", f.read(8))
        if not 0 < header_len <= size - 8 - DATA_OFFSET:
            return None
        f.seek(size - 8 - header_len)
        header = json.loads(f.read(header_len).decode("utf-8"))
        if not isinstance(header, dict) or header.get("format_version") != FORMAT_VERSION:
            return None
        n, vocab = header["n_chars"], header["vocab"]
        dtype = np.dtype(id_dtype(len(vocab))).newbyteorder("<")
        if (
            header["dtype"] != dtype.name
            or n < 1
            or not vocab
            or DATA_OFFSET + n * dtype.itemsize != size - 8 - header_len
        ):
            return None
        ids = np.memmap(f, dtype=dtype, mode="r", offset=DATA_OFFSET, shape=(n,))
        return header, Corpus(ids=ids, vocab=[chr(c) for c in vocab])
    except (OSError, ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
        return None  # unreadable or not ours: rebuild


# --- building a cache -----------------------------------------------------------------------


class _FolderNotWritable(Exception):
    pass


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _create_temp(folder: Path, stem: str) -> tuple[int, str]:
    """A new locked temporary file in folder; raises _FolderNotWritable when it can't be made."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}.tmp-", suffix=SUFFIX, dir=folder)
    except OSError as e:
        if e.errno in _NOT_WRITABLE:
            raise _FolderNotWritable from None
        raise DataError(
            f"could not create a cache file in '{folder}': {e.strerror or e}; "
            "free disk space or set CHARRNN_CACHE_DIR"
        ) from None
    fcntl.flock(fd, fcntl.LOCK_EX)  # tells _remove_stale_temps this one is alive
    return fd, tmp


def _remove_stale_temps(cache_path: Path) -> None:
    """Delete temporary files that killed prepares left (unlocked and over a minute old)."""
    stem = cache_path.name[: -len(SUFFIX)]
    try:
        leftovers = list(cache_path.parent.glob(f".{stem}.tmp-*{SUFFIX}"))
    except OSError:
        return
    for tmp in leftovers:
        try:
            if time.time() - tmp.stat().st_mtime < STALE_TEMP_S:
                continue
            with open(tmp, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: still running
                tmp.unlink()
        except OSError:
            continue


def _build(
    f: BinaryIO,
    name: str,
    encoding: str,
    errors: str,
    source_info: dict,
    cache_path: Path,
    block_size: int,
    progress: Progress,
    start: float,
    st: os.stat_result,
) -> PreparedCorpus:
    """Encode the open corpus f into cache_path (temp file + rename) and map it."""
    fd, tmp = _create_temp(cache_path.parent, cache_path.name[: -len(SUFFIX)])
    try:
        with os.fdopen(fd, "w+b") as out:
            try:
                _encode(
                    f, name, encoding, errors, source_info, out, block_size, progress, st.st_size
                )
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise DataError(
                    f"could not write the cache '{cache_path}': {e.strerror or e}; "
                    "free disk space or set CHARRNN_CACHE_DIR"
                ) from None
            if _signature(os.fstat(f.fileno())) != {
                k: source_info[k] for k in ("size", "mtime_ns", "ctime_ns", "inode")
            }:
                raise DataError(
                    f"'{name}' changed while it was being read; run again once it is finished"
                )
            os.chmod(tmp, default_file_mode())  # mkstemp makes 0600
            os.replace(tmp, cache_path)
            tmp = None
            found = _map_ids(out)
    finally:
        if tmp is not None:
            remove_quietly(tmp)
    if found is None:
        raise DataError(f"the cache '{cache_path}' could not be read back after writing it")
    return PreparedCorpus(
        found[1], name, cache_path, False, st.st_size, time.perf_counter() - start
    )


def _prepare_stream(
    f: BinaryIO,
    name: str,
    encoding: str,
    errors: str,
    total: int | None,
    block_size: int,
    progress: Progress,
    start: float,
) -> PreparedCorpus:
    """stdin or a pipe: encode into an anonymous temporary file (gone when the process ends)."""
    folder = Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryFile(dir=folder) as out:
            n_bytes = _encode(f, name, encoding, errors, None, out, block_size, progress, total)
            out.flush()
            found = _map_ids(out)  # the map keeps the (unlinked) file alive
    except OSError as e:
        raise DataError(
            f"could not write a temporary cache for '{name}' in '{folder}': "
            f"{e.strerror or e}; set TMPDIR to a folder with free space"
        ) from None
    if found is None:
        raise DataError(f"the temporary cache for '{name}' could not be read back")
    return PreparedCorpus(found[1], name, None, False, n_bytes, time.perf_counter() - start)


def _encode(
    f: BinaryIO,
    name: str,
    encoding: str,
    errors: str,
    source_info: dict | None,
    out: BinaryIO,
    block_size: int,
    progress: Progress,
    total: int | None,
) -> int:
    """Corpus bytes from f to a whole cache file in out (at its start). Returns bytes read."""
    out.write(MAGIC + bytes(DATA_OFFSET - len(MAGIC)))

    # pass 1: provisional ids, numbered in order of first appearance
    lut = np.full(N_CODE_POINTS, 0xFF, dtype="<u1")  # code point -> provisional id
    order: list[int] = []  # code points in order of first appearance (index = provisional id)
    n_chars = n_bytes = 0
    for text, size in _decoded_blocks(_read_blocks(f, block_size), name, encoding, errors):
        width, cps_bytes = _code_point_bytes(text)
        cps = np.frombuffer(cps_bytes, dtype=f"<u{width}")  # (n,) code points
        ids = _lookup(lut, width, cps_bytes)  # (n,) provisional ids; unknown = max of dtype
        unknown = ids == np.iinfo(lut.dtype).max
        if unknown.any():  # new characters: number them, widening the ids if need be
            new = np.unique(cps[unknown])  # sorted, so the numbering is deterministic
            if len(order) + len(new) > np.iinfo(lut.dtype).max:  # the max marks "unknown"
                lut = _widen(out, n_chars, lut, len(order) + len(new))
            lut[new] = np.arange(len(order), len(order) + len(new))
            order.extend(new.tolist())
            ids = _lookup(lut, width, cps_bytes)
        out.write(ids)
        n_chars += len(ids)
        n_bytes += size
        progress("read", n_bytes, total)
    if n_chars == 0:
        raise empty_error(name)

    # pass 2: provisional ids -> ranks in the sorted vocabulary, in the smallest type
    vocab = np.array(sorted(order), dtype=np.int64)  # (V,) code points
    dtype = np.dtype(id_dtype(len(vocab))).newbyteorder("<")
    rank = np.searchsorted(vocab, order).astype(dtype)  # (V,) provisional id -> id
    if lut.dtype != dtype or not np.array_equal(rank, np.arange(len(rank))):
        _rewrite(out, n_chars, lut.dtype, dtype, rank, progress)
    header = {
        "format": "charrnn-cache",
        "format_version": FORMAT_VERSION,
        "source": source_info,
        "encoding": _codec_name(encoding),
        "decode_errors": errors,
        "n_chars": n_chars,
        "dtype": dtype.name,
        "vocab": vocab.tolist(),
    }
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    out.write(text + struct.pack("<Q", len(text)))
    return n_bytes


def _lookup(lut: np.ndarray, width: int, cps_bytes: bytes) -> np.ndarray:
    """lut[code points]; for 1-byte code points and ids, bytes.translate does it fastest."""
    if width == 1 and lut.dtype.itemsize == 1:
        return np.frombuffer(cps_bytes.translate(lut[:256].tobytes()), dtype=np.uint8)
    return np.take(lut, np.frombuffer(cps_bytes, dtype=f"<u{width}"))


def _widen(out: BinaryIO, n: int, lut: np.ndarray, need: int) -> np.ndarray:
    """The n ids written so far rewritten in place in a type that numbers `need` characters
    plus the "unknown" mark; returns the lookup table in that type. Back to front, so no id
    is overwritten before it is read."""
    old, new = lut.dtype, np.dtype("<u2" if need <= 0xFFFF else "<u4")
    out.flush()
    fd = out.fileno()
    for start in reversed(range(0, n, CHUNK)):
        m = min(CHUNK, n - start)
        ids = np.frombuffer(
            _pread(fd, m * old.itemsize, DATA_OFFSET + start * old.itemsize), dtype=old
        )
        _pwrite(fd, ids.astype(new).tobytes(), DATA_OFFSET + start * new.itemsize)
    out.seek(DATA_OFFSET + n * new.itemsize)
    wide = lut.astype(new)
    wide[lut == np.iinfo(old).max] = np.iinfo(new).max
    return wide


def _rewrite(
    out: BinaryIO, n: int, old: np.dtype, new: np.dtype, rank: np.ndarray, progress: Progress
) -> None:
    """ids = rank[ids] in place, narrowing them from `old` to `new`. Front to back: an id is
    never wider after than before, so none is overwritten before it is read."""
    out.flush()
    fd = out.fileno()
    table = rank.tobytes() + bytes(256 - len(rank)) if old.itemsize == 1 else None
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        raw = _pread(fd, m * old.itemsize, DATA_OFFSET + start * old.itemsize)
        ids = (
            raw.translate(table)
            if table is not None
            else np.take(rank, np.frombuffer(raw, dtype=old)).tobytes()
        )
        _pwrite(fd, ids, DATA_OFFSET + start * new.itemsize)
        progress("sort", (start + m) * new.itemsize, n * new.itemsize)  # bytes of ids written
    end = DATA_OFFSET + n * new.itemsize
    os.ftruncate(fd, end)
    out.seek(end)


def _pread(fd: int, n: int, offset: int) -> bytes:
    data = os.pread(fd, n, offset)
    while len(data) < n:
        more = os.pread(fd, n - len(data), offset + len(data))
        if not more:
            raise OSError(errno.EIO, "the temporary cache file is shorter than written")
        data += more
    return data


def _pwrite(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_blocks(f: BinaryIO, block_size: int) -> Iterator[bytes]:
    while block := f.read(block_size):
        yield block


def _decoded_blocks(
    blocks: Iterable[bytes], name: str, encoding: str, errors: str
) -> Iterator[tuple[str, int]]:
    """(text, bytes consumed) per block, the decoder's last flush included. Invalid bytes raise
    DataError with their offset in the whole corpus, even when they straddle two blocks."""
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    offset = 0  # corpus bytes passed to the decoder so far

    def decode(raw: bytes, final: bool) -> str:
        pending = decoder.getstate()[0]  # bytes of a character cut by the last block
        pending = len(pending) if isinstance(pending, (bytes, bytearray)) else 0
        try:
            return decoder.decode(raw, final)
        except UnicodeDecodeError as e:  # e.start counts from the pending bytes
            raise decode_error(name, encoding, offset - pending + e.start) from None
        except UnicodeError as e:  # a codec's own complaint, e.g. utf-16 without a BOM
            raise DataError(
                f"'{name}' cannot be read as {encoding}: {e}; pass another --encoding"
            ) from None

    for raw in blocks:
        text = decode(raw, False)
        offset += len(raw)
        yield text, len(raw)
    yield decode(b"", True), 0


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
