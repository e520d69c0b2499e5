"""Which files a corpus is: the PATH... of `charrnn train` expanded into its documents, in order.

A path is a file (one document), a folder (every file under it, recursively, one document each)
or "-" (standard input, one document). Within a folder, files are taken in sorted order (by
name, folder by folder, so `a/`, `a/x`, `b`), and skipped when

- their name or a folder above them (below the given folder) starts with "." (hidden: `.git/`),
- they do not match any of the `--glob` patterns, when patterns are given (fnmatch on the path
  relative to the folder, where `*` also matches "/": `*.txt` is every .txt file at any depth),
- they are not regular files (a socket, a FIFO: reading one could wait forever), or
- they look binary: their first block of text holds a NUL character (U+0000); the cache
  (charrnn.cache) checks that as it reads them, and counts the files it skipped.

Symbolic links to files are followed; links to folders are not (a link back up would loop).
A file named on the command line is always read: a binary one is an error, not skipped.

Nothing here holds more than one folder's listing at a time, so the number of files does not
bound memory; the cache walks the set again for each of its passes rather than keeping a list.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from charrnn.data import open_error
from charrnn.errors import DataError

STDIN = "-"


@dataclass(frozen=True)
class Document:
    path: Path  # the file to read
    name: str  # how messages name it: the path as given, or inside its folder
    named: bool  # given on the command line (a binary one is an error), not found in a folder


@dataclass(frozen=True)
class Sources:
    """The paths a corpus was given as, and the patterns that choose the files of its folders."""

    paths: tuple[str, ...]
    globs: tuple[str, ...] = ()

    @classmethod
    def of(cls, source: str | os.PathLike | Sequence, globs: Sequence[str] = ()) -> Sources:
        paths = (source,) if isinstance(source, (str, os.PathLike)) else tuple(source)
        if not paths:
            raise DataError("no corpus given; name a text file, a folder of them, or -")
        return cls(tuple(os.fspath(p) for p in paths), tuple(globs))

    @property
    def name(self) -> str:
        """'corpus.txt', '<stdin>', or 'texts/ and 2 more'."""
        first = "<stdin>" if self.paths[0] == STDIN else self.paths[0]
        more = len(self.paths) - 1
        return first if not more else f"{first} and {more} more"

    def key(self, settings: dict) -> str:
        """A hex digest of the absolute paths, the patterns and the reading settings: the name
        of the set's cache entry, so two different corpora never share one."""
        absolute = [p if p == STDIN else os.path.abspath(p) for p in self.paths]
        text = json.dumps([absolute, list(self.globs), settings], sort_keys=True)
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def walk(self, replaced: dict[str, Path] | None = None) -> Iterator[Document]:
        """The documents, in order. `replaced`: a file to read instead of a path (stdin and
        pipes, copied to a file by the cache)."""
        for given in self.paths:
            if replaced and given in replaced:
                yield Document(replaced[given], "<stdin>" if given == STDIN else given, True)
                continue
            path = Path(given)
            try:
                st = path.stat()
            except OSError as e:
                raise open_error(path, e) from None
            if stat.S_ISDIR(st.st_mode):
                yield from self._folder(path, path)
            else:
                yield Document(path, given, True)

    def _folder(self, top: Path, folder: Path) -> Iterator[Document]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as e:
            raise DataError(f"cannot list folder '{folder}': {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from self._folder(top, Path(entry.path))
                    continue
                regular = entry.is_file(follow_symlinks=True)
            except OSError:  # vanished, or a link to nowhere
                continue
            relative = os.path.relpath(entry.path, top)
            if regular and self._chosen(relative):
                yield Document(Path(entry.path), entry.path, False)

    def _chosen(self, relative: str) -> bool:
        return not self.globs or any(fnmatch.fnmatchcase(relative, g) for g in self.globs)
