"""The one rule for every file a command is asked to write (`show -o`, `plot -o`, `gradflow -o`,
`eval --per-char`): it never replaces a file it was not asked to create, and a failed write
leaves the old file whole.

Refused, before any work: a path that is one of the command's own inputs (the model it reads,
the text, a run's metrics), a file named like a run's own (config.yaml, metrics.jsonl,
last.npz, best.npz: writing one would pass for, or destroy, a run), an existing charrnn
checkpoint under any name, a folder, a block device, a socket, a path whose folder does not
exist. A FIFO or a character device (/dev/null, /dev/stdout, the pipe of `>(gzip > x.gz)`) is
written to as a stream, in order, for there is no file to replace; a FIFO that nobody reads is
refused rather than waited on. Anything else is written atomically (atomic.py: a temporary file
beside it, renamed over it once complete), so a full disk or a file-size limit leaves the old
file as it was; a symbolic link is followed, so its target is replaced and the link kept.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from charrnn.atomic import atomic_file
from charrnn.errors import DataError
from charrnn.runs import RUN_FILES


@dataclass(frozen=True)
class Output:
    """Where a checked output goes: `target`, the file to replace (symbolic links followed),
    or the stream `path` names (`stream` True: a FIFO or a character device)."""

    path: Path  # as the caller named it
    target: Path
    stream: bool


def check_output(
    path: str | os.PathLike, what: str, reads: Iterable[str | os.PathLike | None] = ()
) -> Output:
    """The Output for writing `what` ("the page", "the image") to path, or a DataError saying
    why that would destroy something: see the module docstring. `reads`: the files the command
    reads ("-" and None stand for stdin and nothing, and are passed over)."""
    path = Path(path)
    refuse = f"refusing to write {what} to '{path}'"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:  # a name too long, a loop of links, a folder that is a file
        raise DataError(f"cannot write {what} to '{path}': {e.strerror or e}") from None
    if st is not None and (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
        return Output(path, path, stream=True)
    if st is not None and not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a device or socket"
        raise DataError(f"{refuse}: it is {kind}; name a file")
    target = Path(os.path.realpath(path))
    if target.name in RUN_FILES:
        raise DataError(
            f"{refuse}: {target.name} is the name of a run's own file "
            f"({', '.join(RUN_FILES)}); name another file"
        )
    for source in reads:
        if source is not None and str(source) != "-" and _same_file(target, source):
            raise DataError(
                f"{refuse}: it is '{source}', which this command reads; name another file"
            )
    if st is not None and _is_checkpoint(target):
        raise DataError(f"{refuse}: it is a charrnn checkpoint; name another file")
    if not target.parent.is_dir():
        raise DataError(
            f"cannot write {what} to '{path}': the folder '{path.parent}' does not exist; "
            "create it first"
        )
    return Output(path, target, stream=False)


def write_output(
    path: str | os.PathLike | Output,
    write: Callable[[BinaryIO], None],
    what: str = "the output",
    reads: Iterable[str | os.PathLike | None] = (),
) -> Output:
    """Check path (check_output, unless it is one already) and write(f) into it: atomically
    into a file, in order into a stream. An OSError becomes a DataError; the old file stays."""
    out = path if isinstance(path, Output) else check_output(path, what, reads)
    with writing(out, what) as f:
        write(f)
    return out


@contextmanager
def writing(
    path: str | os.PathLike | Output,
    what: str = "the output",
    reads: Iterable[str | os.PathLike | None] = (),
) -> Iterator[BinaryIO]:
    """write_output as a `with` block: the binary file to write is the block's; a file is
    renamed into place when the block ends without an error, and removed otherwise."""
    out = path if isinstance(path, Output) else check_output(path, what, reads)
    try:
        with _open_stream(out.path) if out.stream else atomic_file(out.target) as f:
            yield f
    except OSError as e:
        kept = f"; '{out.path}' is as it was" if not out.stream and out.target.exists() else ""
        raise DataError(
            f"cannot write {what} to '{out.path}': {e.strerror or e}{kept}; free disk space "
            "or name another file"
        ) from None


# what matplotlib writes by a file's suffix (pgf, which needs LaTeX, left out); no suffix: PNG
IMAGE_FORMATS = ("png", "svg", "svgz", "pdf", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def image_format(path: str | Path) -> str:
    """The image format a file's name asks for: its suffix, PNG for a name without one; a
    DataError for a suffix that names no image format."""
    suffix = Path(path).suffix.lower().removeprefix(".")
    if not suffix:
        return "png"
    if suffix not in IMAGE_FORMATS:
        raise DataError(
            f"cannot write '{path}': .{suffix} is not an image format; name a .png, .svg or "
            ".pdf file"
        )
    return suffix


def _open_stream(path: Path) -> BinaryIO:
    """A FIFO or character device opened for writing; a FIFO without a reader is refused (it
    would wait for one forever) by opening it without blocking first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENXIO:
            raise DataError(
                f"'{path}' is a FIFO (named pipe) that nothing reads; start its reader first"
            ) from None
        raise
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    return os.fdopen(fd, "wb")


def _same_file(a: Path, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # either is missing (a new file): not the same
        return False


def _is_checkpoint(path: Path) -> bool:
    """Whether path is an .npz that charrnn wrote (it holds format_version): read from the
    zip's directory at its end, never the arrays."""
    try:
        with zipfile.ZipFile(path) as z:
            return "format_version.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
