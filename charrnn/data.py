"""Text in, character ids out: reading a corpus, the vocabulary, the train/validation split and
the batches of truncated BPTT.

The vocabulary is the sorted set of distinct characters (Unicode code points), so ids are stable
across runs of the same text. Ids are stored in the smallest unsigned type that holds them.

This module works in memory, for texts that fit in it (and for `sample` and `eval`); training
reads a corpus of any size through charrnn.cache, which streams it into a memory-mapped file of
the same ids.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import mmap
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from charrnn.errors import DataError, TooLargeError, option
from charrnn.memory import show_bytes

MAX_TEXT_BYTES = 256 * 10**6  # a text read whole (eval, gradflow, sample --seed-file): 256 MB
STREAMS_PER_READ = 8  # memory-mapped ids: streams read between two releases (<= 16 MB mapped)
PREFIX_BLOCK = 1 << 16  # bytes read at a time by read_prefix
DECODE_ERRORS = ("strict", "replace")  # invalid input: a DataError naming its offset, or U+FFFD
N_CODE_POINTS = 0x110000  # Unicode's code points: a vocabulary has at most this many characters
# what a document is: a whole file, or a record (every line; every blank-line-separated block)
DOCUMENTS = ("file", "line", "paragraph")
END = N_CODE_POINTS  # a record's end among code points: beyond every character


def id_dtype(vocab_size: int) -> type:
    """uint8 up to 256 characters, uint16 up to 65,536, uint32 beyond."""
    if vocab_size <= 1 << 8:
        return np.uint8
    if vocab_size <= 1 << 16:
        return np.uint16
    return np.uint32


def open_error(path: Path, e: OSError) -> DataError:
    """The message for a corpus file that cannot be opened or read."""
    if isinstance(e, FileNotFoundError):
        return DataError(f"file '{path}' not found; check the path")
    if isinstance(e, IsADirectoryError):
        return DataError(f"'{path}' is a directory; give a text file")
    if isinstance(e, PermissionError):
        return DataError(f"cannot read '{path}': permission denied")
    return DataError(f"cannot read '{path}': {e.strerror or e}")


def text_codec(encoding: str) -> str | None:
    """The canonical name of the text codec called `encoding` ("UTF8" -> "utf-8"), or None when
    Python has none by that name. codecs.lookup alone also finds base64, zlib..., which decode
    bytes to bytes; bytes.decode refuses those."""
    if not encoding.isascii() or len(encoding) > 100:  # no codec has such a name
        return None
    try:
        b"x".decode(encoding)  # b"" would skip the codec lookup
    except UnicodeError:  # e.g. utf-16 needs two bytes: a text codec all the same
        pass
    except (LookupError, ValueError):  # ValueError: a name with a NUL in it
        return None
    return codecs.lookup(encoding).name


def check_encoding(encoding: str) -> str:
    """The canonical name of a text codec, or DataError."""
    codec = text_codec(encoding)
    if codec is None:
        raise DataError(f"unknown text encoding '{encoding}'")
    return codec


def check_documents(documents: str) -> None:
    if documents not in DOCUMENTS:
        raise DataError(f"documents must be {', '.join(DOCUMENTS)}, not '{documents}'")


def check_decode_errors(errors: str) -> None:
    if errors not in DECODE_ERRORS:
        raise DataError(f"decode_errors must be {' or '.join(DECODE_ERRORS)}, not '{errors}'")


def decode_error(name: str, encoding: str, e: UnicodeError, offset: int = 0) -> DataError:
    """The message for text that `encoding` cannot decode: invalid input at byte offset +
    e.start, with the flags that get past it, or the codec's own complaint (utf-16 without a
    BOM). `offset`: where the bytes given to the decoder start in the whole text."""
    if isinstance(e, UnicodeDecodeError):
        return DataError(
            f"'{name}' is not valid {encoding} at byte offset {offset + e.start}; "
            f"pass {option('encoding', 'latin-1')} (or the text's own encoding) or "
            f"{option('decode_errors', 'replace')}"
        )
    return DataError(
        f"'{name}' cannot be read as {encoding}: {e}; pass another {option('encoding')}"
    )


def empty_error(name: str) -> DataError:
    return DataError(f"'{name}' is empty; give a text with at least a few hundred characters")


def read_bytes(source: str | Path, limit: int | None = None) -> bytes:
    """The raw bytes of a file, or of standard input for "-": at most `limit` bytes
    (MAX_TEXT_BYTES by default), else TooLargeError before more is read, so /dev/zero or an
    endless pipe ends with "input too large" instead of taking all memory."""
    limit = MAX_TEXT_BYTES if limit is None else limit
    name = "<stdin>" if str(source) == "-" else str(source)
    try:
        with _open_bytes(source) as f:
            if _size(f) > limit:  # a regular file says its size
                raise _too_large(name, limit)
            raw = f.read(limit + 1)
    except OSError as e:
        raise open_error(Path(source), e) from None
    if len(raw) > limit:
        raise _too_large(name, limit)
    return raw


def _size(f: BinaryIO) -> int:
    """The size of a regular file; 0 for a pipe, a device, or a stream with no descriptor."""
    try:
        return os.fstat(f.fileno()).st_size
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation: the test runner's
        return 0


def _too_large(name: str, limit: int) -> TooLargeError:
    return TooLargeError(
        f"input too large: '{name}' holds more than {show_bytes(limit)}, the most a text read "
        "whole may have; give a part of it (e.g. head -c 100M FILE | charrnn ... -)"
    )


def read_prefix(
    source: str | Path, chars: int, encoding: str = "utf-8", errors: str = "strict"
) -> str:
    """The first `chars` characters of a file, or of standard input for "-": read and decoded
    a block at a time, so that no more of it is read than those characters need (a byte the
    codec cannot decode past them is never seen). Errors as `read_text` words them; at most
    MAX_TEXT_BYTES are read."""
    check_encoding(encoding)
    check_decode_errors(errors)
    name = "<stdin>" if str(source) == "-" else str(source)
    decoder = codecs.getincrementaldecoder(encoding)(errors)
    parts, have, offset = [], 0, 0  # offset: bytes given to the decoder so far
    try:
        with _open_bytes(source) as f:
            while have < chars:
                raw = f.read(PREFIX_BLOCK)
                if offset + len(raw) > MAX_TEXT_BYTES:  # /dev/zero in a codec that yields nothing
                    raise _too_large(name, MAX_TEXT_BYTES)
                held = len(decoder.getstate()[0])  # bytes of a character cut by the last block
                try:
                    text = decoder.decode(raw, final=not raw)
                except UnicodeError as e:
                    # the bytes before the bad one may hold every character still needed
                    good = isinstance(e, UnicodeDecodeError) and e.start >= held
                    text = decoder.decode(raw[: e.start - held]) if good else ""
                    if have + len(text) < chars:
                        raise decode_error(name, encoding, e, offset - held) from None
                    raw = b""  # the characters asked for are all there: stop
                offset += len(raw)
                parts.append(text)
                have += len(text)
                if not raw:
                    break
    except OSError as e:
        raise open_error(Path(source), e) from None
    return "".join(parts)[:chars]


def _open_bytes(source: str | Path):
    """The file as a binary stream, or standard input's for "-" (left open when done)."""
    if str(source) == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    return open(source, "rb")


def decode(raw: bytes, name: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Bytes to text; invalid input names the byte offset and the flags that get past it."""
    check_encoding(encoding)
    check_decode_errors(errors)
    try:
        return raw.decode(encoding, errors)
    except UnicodeError as e:
        raise decode_error(name, encoding, e) from None


def read_text(source: str | Path, encoding: str = "utf-8", errors: str = "strict") -> str:
    """A whole text file (or stdin for "-") decoded; at most MAX_TEXT_BYTES (read_bytes)."""
    name = "<stdin>" if str(source) == "-" else str(source)
    return decode(read_bytes(source), name, encoding, errors)


def code_points(text: str) -> np.ndarray:
    """The text as an array of Unicode code points (uint32), without a Python-level loop."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@dataclass
class Corpus:
    """The ids of a set of documents, one after another.

    A document's first character is read from a zero state: training zeroes a stream's carried
    state where one begins (`resets`). With records (config `documents` line or paragraph) the
    ids are E r_1 E r_2 ... E, where E = end_id = len(vocab) is the end-of-record symbol, not a
    character: the state is zeroed before each E is read, so every record is read from E in a
    zero state and its last character predicts E."""

    ids: np.ndarray  # (n,) character ids (and end_id)
    vocab: list[str]  # the characters, in id order
    starts: np.ndarray | None = None  # (D,) where each file's document begins; None: one, at 0
    end_id: int | None = None  # records: the end-of-record id, len(vocab); None: no records
    documents: int = 1  # files with text, or records

    @property
    def model_vocab_size(self) -> int:
        """The model's outputs: every character, and the end of a record when there are any."""
        return len(self.vocab) + (self.end_id is not None)

    def resets(self, positions: np.ndarray) -> np.ndarray | None:
        """Mask (the shape of positions) of the positions before which the state is zeroed:
        a document's first character, or a record's E. None when there are none, and for a
        single plain document (its one start is where every stream's state is zero anyway),
        so that one file trains and validates exactly as it always has."""
        if self.end_id is not None:
            mask = np.asarray(self.ids[positions]) == self.end_id
        elif self.starts is None or len(self.starts) <= 1:
            return None
        else:
            starts = np.asarray(self.starts)
            where = np.searchsorted(starts, positions).clip(0, len(starts) - 1)
            mask = starts[where] == positions
        return mask if mask.any() else None


def build_corpus(text: str, name: str = "corpus") -> Corpus:
    if not text:
        raise empty_error(name)
    cps = code_points(text)
    uniq = np.unique(cps)  # sorted distinct code points = the vocabulary
    ids = np.searchsorted(uniq, cps).astype(id_dtype(len(uniq)))
    vocab = [chr(c) for c in uniq.tolist()]
    return Corpus(ids=ids, vocab=vocab)


def encode(text: str, vocab: list[str]) -> tuple[np.ndarray, int]:
    """Ids of the characters of text that are in vocab; returns (ids, number of unknown chars)."""
    cps = code_points(text)
    known = np.array([ord(c) for c in vocab], dtype=np.uint32)  # sorted: vocab is sorted
    pos = np.searchsorted(known, cps).clip(0, len(known) - 1)
    hit = known[pos] == cps
    return pos[hit].astype(np.intp), int((~hit).sum())


def unknown_chars(text: str, vocab: list[str]) -> list[str]:
    """The distinct characters of text that are not in vocab, sorted."""
    return sorted(set(text) - set(vocab))


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """A contiguous tail of the text is the validation text, so it is never trained on."""
    n_val = int(len(ids) * val_fraction)
    if val_fraction > 0 and n_val < 2:
        n_val = 0
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def split_corpus(corpus: Corpus, val_fraction: float) -> tuple[Corpus, Corpus]:
    """(training, validation): the contiguous tail of the ids, as `split` cuts one text, so a
    single file is split as it always was. With several documents the tail is the last ones
    (and the end of the one before); with records it begins at a record's E, so that no record
    is cut in two and the training part still ends with one's E."""
    ids = corpus.ids
    cut = len(split(ids, val_fraction)[0])
    if corpus.end_id is not None and cut < len(ids):
        # the first E at or after the cut: both parts then hold whole records
        for start in range(cut, len(ids), 1 << 20):
            found = np.flatnonzero(np.asarray(ids[start : start + (1 << 20)]) == corpus.end_id)
            if len(found):
                cut = start + int(found[0])
                break
        else:
            cut = len(ids)
    starts = corpus.starts if corpus.starts is not None else np.zeros(1, np.int64)
    starts = np.asarray(starts)
    first = int(np.searchsorted(starts, cut))
    train = Corpus(
        ids[: cut + (corpus.end_id is not None)], corpus.vocab, starts[:first], corpus.end_id
    )
    val_starts = np.concatenate([[0], starts[first:] - cut]).astype(np.int64)
    val_starts = np.unique(val_starts)  # the tail starts a document where it begins
    val = Corpus(ids[cut:], corpus.vocab, val_starts, corpus.end_id)
    return train, val


class Batches:
    """B parallel streams over the training ids, read T characters at a time.

    Stream s covers ids[s*L : (s+1)*L + 1]. Step k of an epoch takes positions [k*T, (k+1)*T) of
    every stream as inputs and the next characters as targets. The position is a pure function of
    the global step (epoch = step // steps_per_epoch), so resuming needs only the step.
    """

    def __init__(
        self, ids: np.ndarray, batch_size: int, seq_length: int, corpus: Corpus | None = None
    ):
        self.ids = ids
        self.corpus = corpus  # where documents begin: `resets`; None: one document
        self.B, self.T = batch_size, seq_length
        self.L = (len(ids) - 1) // batch_size  # characters per stream
        self.steps_per_epoch = self.L // seq_length
        if self.steps_per_epoch < 1:
            need = batch_size * seq_length + 1
            raise DataError(
                f"the training text has {len(ids)} characters, too short for one chunk of "
                f"batch_size x seq_length = {batch_size} x {seq_length} (needs {need}); "
                f"use a longer corpus or lower {option('batch_size')} / {option('seq_length')}"
            )
        self._offsets = np.arange(seq_length)[:, None] + (np.arange(batch_size) * self.L)[None, :]
        self._mapping = _mapping(ids)

    def starts_epoch(self, step: int) -> bool:
        """True when `step` is the first of an epoch: carried hidden states are reset there."""
        return step % self.steps_per_epoch == 0

    def resets(self, step: int) -> np.ndarray | None:
        """(T, B) bool: where a document begins, so the state is zeroed before reading X[t];
        None when none does (Corpus.resets)."""
        if self.corpus is None:
            return None
        return self.corpus.resets(self._offsets + (step % self.steps_per_epoch) * self.T)

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y), each (T, B) of intp ids, for global step `step`."""
        idx = self._offsets + (step % self.steps_per_epoch) * self.T  # (T, B)
        if self._mapping is None:
            return (
                np.asarray(self.ids[idx], dtype=np.intp),
                np.asarray(self.ids[idx + 1], dtype=np.intp),
            )
        # Memory-mapped ids (charrnn.cache): a read can map a whole page-cache folio (up to 2 MB
        # on recent kernels) that then stays mapped, so resident memory would grow with B and,
        # over an epoch, with the corpus. Read a few streams at a time and unmap the pages after
        # each group; they stay in the page cache, so the next read is not a disk read.
        X = np.empty(idx.shape, dtype=np.intp)  # (T, B)
        Y = np.empty(idx.shape, dtype=np.intp)  # (T, B)
        for b in range(0, self.B, STREAMS_PER_READ):
            cols = slice(b, b + STREAMS_PER_READ)
            X[:, cols] = self.ids[idx[:, cols]]
            Y[:, cols] = self.ids[idx[:, cols] + 1]
            self._mapping.madvise(mmap.MADV_DONTNEED)
        return X, Y


def _mapping(ids: np.ndarray) -> mmap.mmap | None:
    """The mmap under a memory-mapped array (np.memmap or a view of one), if it can be released."""
    base = ids
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base if base is not None and hasattr(mmap, "MADV_DONTNEED") else None


def held_out_in(held_out: Corpus, corpus: Corpus, n: int, name: str) -> Corpus:
    """The first n ids of a separate validation set (`--val-file`) in the training corpus's
    ids: each character becomes its id in corpus.vocab, and characters the corpus lacks are
    left out (the model has no id for them), as `eval --unknown skip` leaves them out.
    DataError when none is left."""
    ids = np.asarray(held_out.ids[:n], dtype=np.intp)  # (n,): at most val_max_chars + 1
    mapped, _ = encode("".join(held_out.vocab), corpus.vocab)  # what each character becomes
    known = np.isin(np.asarray(held_out.vocab), np.asarray(corpus.vocab))
    table = np.full(held_out.model_vocab_size, -1, dtype=np.intp)
    table[: len(held_out.vocab)][known] = mapped
    if held_out.end_id is not None:
        table[held_out.end_id] = corpus.end_id if corpus.end_id is not None else -1
    new = table[ids]
    keep = new >= 0
    if keep.sum() < 2:
        raise DataError(
            f"the validation text '{name}' has no characters of the training corpus; "
            "give --val-file a text like the corpus"
        )
    starts = np.asarray(held_out.starts if held_out.starts is not None else [0])
    before = np.concatenate([[0], np.cumsum(keep)])  # kept ids before each position
    new_starts = np.unique(before[np.minimum(starts[starts < len(ids)], len(ids))])
    return Corpus(new[keep], corpus.vocab, new_starts.astype(np.int64), corpus.end_id)


# ---- records: documents line and paragraph ----


def record_code_points(texts: Iterable[str], mode: str) -> Iterator[np.ndarray]:
    """The records of a file's text ("line": every non-empty line; "paragraph": every block of
    lines between blank lines, its inner newlines kept), each as its code points followed by
    END. A record is yielded once its end is seen, so one cut by a block is not cut here."""
    pending = ""
    for text in itertools.chain(texts, [None]):
        final = text is None
        text = (pending + ("" if final else text)).replace("\r\n", "\n")
        if final:
            done, pending = text + ("\n" if mode == "line" else "\n\n"), ""
        elif mode == "line":
            cut = text.rfind("\n") + 1
            done, pending = text[:cut], text[cut:]
        else:
            cut = text.rfind("\n\n")
            done, pending = (text[: cut + 2], text[cut + 2 :]) if cut >= 0 else ("", text)
        if mode == "line":
            records = [r for r in done.split("\n") if r]
        else:
            records = [r for r in (p.strip("\n") for p in re.split(r"\n{2,}", done)) if r]
        if records:
            yield _ended(records, mode)


def _ended(records: list[str], mode: str) -> np.ndarray:
    """Code points (uint32) of the records, each followed by END."""
    if mode == "line":  # no record holds a newline: each one joining them is an END
        cps = np.frombuffer(("\n".join(records) + "\n").encode("utf-32-le", "surrogatepass"), "<u4")
        cps = cps.copy()
        cps[cps == 10] = END
        return cps
    # no record holds two newlines in a row, or starts or ends with one: each pair is an END
    text = "\n\n".join(records) + "\n\n"
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4").copy()
    pair = np.flatnonzero((cps[:-1] == 10) & (cps[1:] == 10))
    cps[pair] = END
    return np.delete(cps, pair + 1)


def record_ids(text: str, vocab: list[str], mode: str) -> tuple[np.ndarray, int, int]:
    """A text read as records for a model of vocab: (ids E r_1 E r_2 ... E with E =
    len(vocab), the number of characters not in vocab (left out), the number of records)."""
    pieces = list(record_code_points([text], mode))
    cps = np.concatenate(pieces) if pieces else np.zeros(0, np.uint32)
    ended = cps == END
    known = np.array([ord(c) for c in vocab], dtype=np.uint32)
    pos = np.searchsorted(known, cps).clip(0, len(known) - 1)
    hit = (known[pos] == cps) | ended
    ids = np.where(ended, len(vocab), pos)[hit].astype(np.intp)
    return np.concatenate([[len(vocab)], ids]).astype(np.intp), int((~hit).sum()), int(ended.sum())


REMAP_BLOCK = 1 << 24  # ids remapped at a time by in_vocab: 16M, at most 200 MB in flight


def in_vocab(corpus: Corpus, vocab: list[str]) -> Corpus:
    """The corpus with its ids in `vocab`, a superset of its own (fine-tuning's union), in a
    memory-mapped temporary file, a block at a time: memory does not grow with the corpus.
    Its end of a record, if it has one, becomes len(vocab)."""
    if vocab == corpus.vocab:
        return corpus
    table = np.searchsorted(code_points("".join(vocab)), code_points("".join(corpus.vocab)))
    if corpus.end_id is not None:
        table = np.append(table, len(vocab))  # the end of a record stays past the characters
    dtype = np.dtype(id_dtype(len(vocab) + (corpus.end_id is not None)))
    table = table.astype(dtype)
    with tempfile.TemporaryFile() as f:  # unlinked: the map keeps it until it is dropped
        ids = np.memmap(f, dtype=dtype, mode="w+", shape=(len(corpus.ids),))
    for start in range(0, len(ids), REMAP_BLOCK):
        ids[start : start + REMAP_BLOCK] = table[
            np.asarray(corpus.ids[start : start + REMAP_BLOCK])
        ]
    end_id = len(vocab) if corpus.end_id is not None else None
    return Corpus(ids, vocab, corpus.starts, end_id, corpus.documents)
