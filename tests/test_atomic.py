"""charrnn.atomic: replacing a file so that a reader, or a crash at any moment, sees the old
complete file or the new complete one.

What it promises: `replace_atomically` writes through a `.NAME.*.tmp` file beside the target and
renames it over the target, with the mode a plain open() would give; while it writes, the old
file is whole; when writing, syncing or renaming fails, the OSError propagates with the old file
untouched and the temporary file gone. `remove_quietly` never raises.

What a SIGKILL in the middle of a save leaves, and that the next run clears it, is
test_faults.py's.
"""

from __future__ import annotations

import errno
import os

import pytest
from helpers import temp_files

from charrnn import atomic

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def write_bytes(data: bytes):
    return lambda f: f.write(data)


def test_the_new_content_replaces_the_old_with_the_default_mode(tmp_path):
    path = tmp_path / "f.txt"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    old_mask = os.umask(0o027)
    try:
        assert atomic.default_file_mode() == 0o640
        atomic.replace_atomically(path, write_bytes(b"new"))
    finally:
        os.umask(old_mask)
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600, nor the old file's
    assert temp_files(tmp_path) == []


def test_while_it_writes_the_old_file_is_whole_and_the_new_one_is_beside_it(tmp_path):
    path = tmp_path / "last.npz"
    path.write_bytes(b"old")
    seen = {}

    def write(f):
        f.write(b"half of the new")
        seen["target"] = path.read_bytes()
        seen["temps"] = [p.name for p in temp_files(tmp_path)]

    atomic.replace_atomically(path, write)
    assert seen["target"] == b"old"
    [temp] = seen["temps"]
    assert temp.startswith(".last.npz.") and temp.endswith(".tmp")
    assert path.read_bytes() == b"half of the new" and temp_files(tmp_path) == []


def _fail_in_write(monkeypatch):
    def write(f):
        f.write(b"partial")
        raise ENOSPC

    return write


def _fail_in_fsync(monkeypatch):
    def fsync(fd):
        raise ENOSPC

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    return write_bytes(b"new")


def _fail_in_rename(monkeypatch):
    def replace(src, dst):
        raise ENOSPC

    monkeypatch.setattr(atomic.os, "replace", replace)
    return write_bytes(b"new")


def _fail_to_create(monkeypatch):
    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(atomic.tempfile, "mkstemp", mkstemp)
    return write_bytes(b"new")


@pytest.mark.parametrize(
    "fail",
    [_fail_in_write, _fail_in_fsync, _fail_in_rename, _fail_to_create],
    ids=lambda f: f.__name__.strip("_"),
)
@pytest.mark.parametrize("existed", [True, False], ids=["old file", "no old file"])
def test_a_failure_leaves_the_old_file_and_no_temp_file(fail, existed, tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    if existed:
        path.write_bytes(b"old")
    write = fail(monkeypatch)
    with pytest.raises(OSError) as e:
        atomic.replace_atomically(path, write)
    assert e.value.errno in (errno.ENOSPC, errno.EACCES)
    if existed:
        assert path.read_bytes() == b"old"
    else:
        assert not path.exists()
    assert temp_files(tmp_path) == []


def test_remove_quietly_never_raises(tmp_path):
    (tmp_path / "f").write_text("x")
    atomic.remove_quietly(tmp_path / "f")
    assert not (tmp_path / "f").exists()
    atomic.remove_quietly(tmp_path / "f")  # already gone
    (tmp_path / "d").mkdir()
    atomic.remove_quietly(tmp_path / "d")  # cannot be unlinked: left be
    assert (tmp_path / "d").is_dir()
