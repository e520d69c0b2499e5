"""Replacing a file atomically: write a temporary file beside it, fsync, rename over it.

A reader, or a crash at any moment, sees the old complete file or the new complete one. Used for
checkpoints, the run folder's text files and the id cache's meta.json (cache.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def replace_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(f) on a temporary file in path's folder, then rename it to path.

    An OSError (disk full, no permission) propagates with the old file untouched and the
    temporary file removed. A kill leaves at most a `.NAME.*.tmp` file beside it.
    """
    with atomic_file(path) as f:
        write(f)


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """replace_atomically as a `with` block: the file to write is the block's; when the block
    ends without an error it is renamed to path, otherwise removed (the old file untouched)."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    finally:
        if tmp is not None:
            remove_quietly(tmp)


def default_file_mode() -> int:
    """The mode open() would give a new file: 0o666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def remove_quietly(path: str | Path) -> None:
    """Delete a leftover file; one that is already gone or cannot be removed is left be."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
