"""The standard streams and the error boundary of every command.

stdout carries the product (sampled text, --json results); progress and notices go to stderr.
A product that cannot be written to stdout is an error, except for a reader that stopped
reading (`| head`), a quiet exit 0; a notice that cannot be written to stderr is dropped; `-`
with stdin closed is an error. `user_errors` turns library errors (CharRNNError) into one
`Error: ...` line on stderr and exit code 1, an interrupt into 130. What the commands do with
their options is options.py's.
"""

from __future__ import annotations

import codecs
import errno
import os
import sys
from contextlib import contextmanager
from typing import Any

import typer

from charrnn import jsonout
from charrnn.distributed import PeerFailed
from charrnn.errors import CharRNNError, as_command


class OutputError(Exception):
    """stdout could not be written: the reader left (EPIPE), the disk is full, it is closed.
    Not an OSError, so that neither click (which turns a broken pipe into a silent exit 1) nor
    user_errors (which words an OSError as a problem with the user's files) takes it."""

    def __init__(self, e: OSError):
        super().__init__(e.strerror or str(e))
        self.errno = e.errno


class Product:
    """stdout as the commands write their product to it: a write that fails is an OutputError.
    Looked up at each call (`stdout()`), since the test runner swaps sys.stdout per command."""

    def __init__(self, stream):
        self.stream = stream  # None: closed when the program started (`>&-`)

    def _do(self, method: str, *args):
        if self.stream is None:
            raise OutputError(OSError(errno.EBADF, "closed"))
        try:
            return getattr(self.stream, method)(*args)
        except OSError as e:
            raise OutputError(e) from None

    def write(self, text: str) -> int:
        return self._do("write", text)

    def flush(self) -> None:
        self._do("flush")

    def isatty(self) -> bool:
        return self.stream is not None and self.stream.isatty()

    @property
    def encoding(self) -> str:
        return getattr(self.stream, "encoding", None) or "utf-8"


def stdout() -> Product:
    return Product(sys.stdout)


def emit(text: str) -> None:
    """One line of the product on stdout (an OutputError ends the command: `output_failed`)."""
    out = stdout()
    try:
        out.write(text + "\n")
        out.flush()
    except OutputError as e:
        raise output_failed(e) from None


def note(text: str) -> None:
    """One line for the user on stderr. A line that cannot be written is dropped: stderr is
    the user's to close, and a notice lost must never cost the product or its exit code."""
    if sys.stderr is None:
        return
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # ValueError: a stream closed under us
        pass


def output_failed(e: OutputError) -> typer.Exit:
    """How a command ends when stdout fails: a reader that stopped reading (`| head`) is a
    quiet exit 0, the Unix convention; anything else is an error, said on stderr if it works."""
    discard(sys.stdout)
    if e.errno == errno.EPIPE:
        return typer.Exit(0)
    why = "it is closed; redirect it to /dev/null to discard it" if e.errno == errno.EBADF else e
    return error(f"cannot write to standard output: {why}")


def discard(stream) -> None:
    """Point the file descriptor of a stream that failed at /dev/null, so that what is still
    buffered goes nowhere when the interpreter flushes it at exit, instead of failing again
    (which would print a traceback and turn the exit status into 120)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # None, or the test runner's in-memory stream
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


def need_stdout() -> None:
    """Refuse before any work when stdout was closed (`>&-`) and the command must print."""
    if sys.stdout is None:
        raise output_failed(OutputError(OSError(errno.EBADF, "closed")))


def need_stdin(source) -> None:
    """Refuse "-" (read standard input) when stdin was closed (`<&-`)."""
    if str(source) == "-" and sys.stdin is None:
        raise error("standard input is closed; pipe the text in or give a file")


def to_json(obj: Any, readable: bool = False) -> str:
    """Always valid JSON (charrnn.jsonout: a number that is not finite becomes null), with
    characters beyond ASCII written as \\u escapes unless `readable` asks for them as they are
    and stdout is UTF-8."""
    plain = not readable or codecs.lookup(stdout().encoding).name != "utf-8"
    return jsonout.dumps(obj, ascii=plain)


def prepare_streams() -> None:
    """Before any command: a standard stream that the shell closed (`<&-`, `>&-`, `2>&-`) gets
    /dev/null in its place, so that no file the command opens takes its number (where a stray
    write to fd 1 or 2 would land in a checkpoint); Python has set sys.stdin/stdout/stderr to
    None for it, which need_stdin and need_stdout read as closed and note() as nowhere to
    write. Characters that stdout's encoding cannot write (PYTHONIOENCODING=ascii and a
    model's vocabulary beyond it) are written as backslash escapes instead of crashing."""
    for fd, mode in ((0, os.O_RDONLY), (1, os.O_WRONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, mode)  # the lowest free number: fd itself, in order
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")


def error(message: str, code: int = 1) -> typer.Exit:
    note(f"Error: {message}")
    return typer.Exit(code)


@contextmanager
def user_errors():
    """Library errors to one stderr line and exit 1; Ctrl-C outside training to exit 130; a
    product that cannot be written to stdout as `output_failed` says. Within it the library's
    messages name settings as flags (`--overwrite`, not `overwrite=True`: errors.option)."""
    try:
        with as_command():
            yield
    except PeerFailed:  # another MPI rank failed and says why
        raise typer.Exit(1) from None
    except CharRNNError as e:
        raise error(str(e)) from None
    except OutputError as e:
        raise output_failed(e) from None
    except OSError as e:  # a backstop: the library words the failures it expects itself
        name = str(e.filename or "")
        name = f" '{name[:80]}...'" if len(name) > 80 else f" '{name}'" if name else ""
        raise error(
            f"cannot access{name}: {e.strerror or e}; check the path and its permissions"
        ) from None
    except KeyboardInterrupt:
        note("Interrupted.")
        raise typer.Exit(130) from None
    except (MemoryError, ValueError) as e:  # numpy: "array is too big", "maximum ... dimension"
        if isinstance(e, ValueError) and not any(m in str(e) for m in _TOO_BIG):
            raise
        raise error(
            "not enough memory for what this command was asked to do; ask for less (its "
            "sizes and counts are listed by --help)"
        ) from None


_TOO_BIG = ("array is too big", "Maximum allowed dimension exceeded")
