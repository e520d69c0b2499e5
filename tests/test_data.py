"""Tests of charrnn.data through its public functions: reading text, the vocabulary, the
train/validation split and the batches of truncated BPTT."""

import io
import sys

import numpy as np
import pytest

from charrnn.data import (
    Batches,
    build_corpus,
    check_decode_errors,
    check_encoding,
    read_text,
    split,
    text_codec,
)
from charrnn.errors import DataError

# ---- reading ----


def test_read_text_utf8(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("café 中文 😀\n".encode())
    assert read_text(path) == "café 中文 😀\n"


def test_read_text_invalid_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xc3(def")  # \xc3 starts a 2-byte sequence; "(" cannot continue it
    with pytest.raises(DataError) as e:
        read_text(path)
    assert "byte offset 3" in str(e.value)
    assert "decode_errors='replace'" in str(e.value)  # Python's terms, called from Python


def test_read_text_replace_and_other_encodings(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xe9def")
    assert read_text(path, errors="replace") == "abc\ufffddef"
    assert read_text(path, encoding="latin-1") == "abcédef"


def test_read_text_missing_and_directory(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


def test_read_text_dash_reads_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("from stdin é".encode())))
    assert read_text("-") == "from stdin é"


@pytest.mark.parametrize(
    "name, codec",
    [
        ("utf-8", "utf-8"),
        ("UTF8", "utf-8"),  # one canonical name: the cache of "UTF8" serves "utf-8"
        ("latin1", "iso8859-1"),
        ("utf-16", "utf-16"),  # one byte is not enough to decode: a text codec all the same
        ("base64", None),  # codecs.lookup knows it, but it decodes bytes to bytes
        ("rot13", None),
        ("utf-99", None),
        ("", None),
        ("utf\x008", None),
    ],
)
def test_text_codec_is_the_one_test_of_an_encoding(name, codec):
    assert text_codec(name) == codec


def test_unknown_encodings_and_decode_errors_are_data_errors(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"abc")
    with pytest.raises(DataError, match="unknown text encoding 'base64'"):
        read_text(path, encoding="base64")
    with pytest.raises(DataError, match="decode_errors must be strict or replace, not 'ignore'"):
        read_text(path, errors="ignore")  # even where no byte is invalid
    assert check_encoding("Latin-1") == "iso8859-1"
    check_decode_errors("replace")


# ---- the vocabulary ----


def test_vocab_is_sorted_distinct_characters():
    corpus = build_corpus("banana bread")
    assert corpus.vocab == sorted(set("banana bread"))
    assert "".join(corpus.vocab[i] for i in corpus.ids) == "banana bread"


def test_vocab_is_stable_across_texts_with_the_same_characters():
    assert build_corpus("abcabc").vocab == build_corpus("cba").vocab


def test_multibyte_characters_are_one_token_each():
    text = "é中😀" * 3 + "e"
    corpus = build_corpus(text)
    assert corpus.vocab == ["e", "é", "中", "😀"]
    assert len(corpus.ids) == len(text) == 10
    assert "".join(corpus.vocab[i] for i in corpus.ids) == text
    assert np.issubdtype(corpus.ids.dtype, np.unsignedinteger)


def test_large_vocabulary_gets_wider_ids():
    text = "".join(chr(0x4E00 + i) for i in range(300))  # 300 distinct CJK characters
    corpus = build_corpus(text)
    assert len(corpus.vocab) == 300
    assert corpus.ids.max() == 299  # would wrap around in uint8
    assert list(corpus.ids) == list(range(300))


def test_empty_corpus_is_an_error():
    with pytest.raises(DataError, match="'notes.txt' is empty"):
        build_corpus("", "notes.txt")


# ---- the split ----


def test_split_takes_a_contiguous_tail():
    ids = np.arange(100)
    train, val = split(ids, 0.1)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))


def test_split_zero_or_tiny_fraction_keeps_everything_for_training():
    ids = np.arange(100)
    for frac in (0.0, 0.01):  # 0.01 of 100 is one character: too few to score
        train, val = split(ids, frac)
        assert len(train) == 100 and len(val) == 0


# ---- batches ----


def test_batches_positions():
    ids = np.arange(1000)
    B, T = 4, 10
    batches = Batches(ids, B, T)
    L = (1000 - 1) // B  # 249 characters per stream
    assert batches.steps_per_epoch == L // T == 24
    for k in (0, 1, 23):
        X, Y = batches.get(k)
        assert X.shape == Y.shape == (T, B)
        for s in range(B):
            start = s * L + k * T  # stream s, step k
            np.testing.assert_array_equal(X[:, s], ids[start : start + T])
            np.testing.assert_array_equal(Y[:, s], ids[start + 1 : start + T + 1])


def test_batches_consecutive_steps_continue_each_stream():
    batches = Batches(np.arange(500), 3, 7)
    X0, Y0 = batches.get(0)
    X1, _ = batches.get(1)
    np.testing.assert_array_equal(X1[0], Y0[-1])  # the next chunk starts where the last ended


def test_batches_wrap_to_a_new_epoch():
    batches = Batches(np.arange(1000), 4, 10)
    n = batches.steps_per_epoch
    assert batches.starts_epoch(0) and batches.starts_epoch(n) and batches.starts_epoch(2 * n)
    assert not batches.starts_epoch(1) and not batches.starts_epoch(n - 1)
    for a, b in zip(batches.get(3), batches.get(n + 3), strict=True):
        np.testing.assert_array_equal(a, b)


def test_batches_never_read_past_the_end():
    ids = np.arange(41)  # B * T + 1: exactly one chunk
    batches = Batches(ids, 4, 10)
    assert batches.steps_per_epoch == 1
    X, Y = batches.get(0)
    assert Y.max() == 40


def test_corpus_too_short_for_one_chunk():
    with pytest.raises(DataError) as e:
        Batches(np.arange(40), 4, 10)
    msg = str(e.value)
    assert "has 40 characters" in msg and "needs 41" in msg
    assert "batch_size" in msg and "seq_length" in msg  # from Python: the arguments


def test_batches_ids_are_intp():
    corpus = build_corpus("abcdefghij" * 10)
    X, Y = Batches(corpus.ids, 2, 5).get(0)
    assert X.dtype == Y.dtype == np.intp


# ---- reading the first characters only ----


@pytest.mark.parametrize("block", [1, 2, 3, 1 << 16])
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "latin-1", "utf-8-sig"])
def test_read_prefix_is_the_start_of_read_text(tmp_path, monkeypatch, block, encoding):
    """Blocks that cut a character's bytes (or a BOM) in two give the same text."""
    from charrnn import data

    monkeypatch.setattr(data, "PREFIX_BLOCK", block)
    text = "héllo wörld, ÿes\n" * 3
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode(encoding))
    for n in (1, 7, len(text), len(text) + 10):
        assert data.read_prefix(path, n, encoding) == read_text(path, encoding)[:n]


@pytest.mark.parametrize("block", [1, 4, 1 << 16])
def test_read_prefix_stops_before_bytes_it_does_not_need(tmp_path, monkeypatch, block):
    from charrnn import data

    monkeypatch.setattr(data, "PREFIX_BLOCK", block)
    path = tmp_path / "t.txt"
    path.write_bytes("aé b".encode() + b"\xff rest")  # 5 bytes, then one that is not UTF-8
    assert data.read_prefix(path, 4) == "aé b"
    with pytest.raises(DataError, match="not valid utf-8 at byte offset 5;"):
        data.read_prefix(path, 5)
    assert data.read_prefix(path, 6, errors="replace") == "aé b\ufffd "
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"ab" + "é".encode()[:1])  # ends inside a character
    with pytest.raises(DataError, match="at byte offset 2;"):
        data.read_prefix(cut, 3)
    assert data.read_prefix(cut, 2) == "ab"


def test_read_prefix_of_stdin_and_a_missing_file(monkeypatch, tmp_path):
    from charrnn import data

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"xyz")))
    assert data.read_prefix("-", 2) == "xy"
    with pytest.raises(DataError, match="not found"):
        data.read_prefix(tmp_path / "nope.txt", 3)
