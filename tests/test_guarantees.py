"""docs/guarantees.md's two tables (outputs per command, limits), read from the page and checked
row by row against the code and the real commands: a promise the page makes and the code does
not keep, or a limit changed in one place only, fails here."""

from __future__ import annotations

import importlib
import re
import shutil
import socket
from pathlib import Path

import pytest
from helpers import REPO, TEXT, cli, temp_files, user_error

PAGE = REPO / "docs" / "guarantees.md"


def table(first_header: str) -> list[list[str]]:
    """The rows of the page's table whose first column is headed `first_header`."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


# ---- the limits ----

UNITS = {"MB": 10**6, "GiB": 1 << 30, "KiB": 1 << 10}


def _value(code: str):
    """The value a `charrnn.module.NAME` or `charrnn.module.NAME["key"]` cell names."""
    path = code.strip("`")
    m = re.fullmatch(r'([\w.]+)\.(\w+)(?:\["(\w+)"\])?', path)
    module, name, key = m.groups()
    value = getattr(importlib.import_module(module), name)
    return value if key is None else value[key][1]  # a count: its largest value


@pytest.mark.parametrize("row", table("limit"), ids=lambda r: r[0][:40])
def test_each_limit_is_the_codes(row, tmp_path):
    what, stated, code = row
    if stated == "half its free space":
        from charrnn.cache import _Spool

        room = _Spool(None, "x", str(tmp_path)).room
        free = shutil.disk_usage(tmp_path).free
        assert abs(room - (free // 2 - (64 << 20))) < 1 << 24 or room == 0
        return
    number, _, unit = stated.partition(" ")
    expected = int(number.replace(",", "")) * UNITS.get(unit, 1)
    assert _value(code) == expected, (what, stated, code)


def test_the_limits_table_names_every_count_limit():
    from charrnn.checks import LIMITS

    named = {m for row in table("limit") for m in re.findall(r'LIMITS\["(\w+)"\]', row[2])}
    flags_only = {"num_results", "top"}  # Python arguments without a flag of their own
    assert named == set(LIMITS) - flags_only


# ---- the outputs ----


@pytest.fixture
def setting(good_run, tmp_path) -> dict[str, Path]:
    """A run, a copy of its model and metrics outside it, a text, and paths of each kind."""
    run = Path(shutil.copytree(good_run[1], tmp_path / "run"))
    (tmp_path / "text.txt").write_text(TEXT[:1200], encoding="utf-8")
    shutil.copy(run / "best.npz", tmp_path / "model.npz")
    shutil.copy(run / "metrics.jsonl", tmp_path / "m.jsonl")
    shutil.copy(run / "last.npz", tmp_path / "other.png")  # a checkpoint under another name
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    yield {"run": run, "dir": tmp_path, "sock": tmp_path / "sock"}
    sock.close()


def _args(command: str, flag: str, out, s: dict) -> list:
    d = s["dir"]
    model, text = d / "model.npz", d / "text.txt"
    return {
        "eval": ["eval", text, "--checkpoint", model, flag, out, "-q"],
        "show": ["show", text, "--checkpoint", model, "--length", 200, flag, out, "-q"],
        "plot": ["plot", d / "m.jsonl", flag, out, "-q"],
        "gradflow": ["gradflow", model, text, "--max-distance", 4, "--positions", 2, flag, out],
    }[command]


def _refused(s: dict, command: str) -> dict[str, Path]:
    d = s["dir"]
    return {
        "the model": d / "model.npz",
        "the models": d / "model.npz",
        "the text": d / "text.txt",
        "the runs' metrics.jsonl": d / "m.jsonl",
        "a run's own file": d / "config.yaml",  # not there: the name alone is refused
        "a checkpoint": d / "other.png",
    }


@pytest.mark.parametrize("row", table("command"), ids=lambda r: r[0])
def test_each_output_refuses_what_the_page_says_and_writes_as_it_says(row, setting):
    command, output, refused, written = (cell.strip("`") for cell in row)
    flag = output.split()[0]
    paths = _refused(setting, command)
    before = {p: p.read_bytes() for p in setting["dir"].iterdir() if p.is_file()}
    for what in [w.strip() for w in refused.split(",")]:
        said = user_error(cli(*_args(command, flag, paths[what], setting)))
        assert said.startswith("refusing to write"), (command, what, said)
    for what, path in (("a folder", setting["dir"]), ("a socket", setting["sock"])):
        said = user_error(cli(*_args(command, flag, path, setting)))
        assert "name a file" in said, (command, what, said)
    assert {p: p.read_bytes() for p in before} == before
    assert written == "atomically, or as a stream"
    target = setting["dir"] / ("out.svg" if command in ("plot", "gradflow") else "out.txt")
    target.write_bytes(b"old")
    for out in (target, "/dev/null"):
        result = cli(*_args(command, flag, out, setting))
        assert result.exit_code == 0, (command, out, result.output)
    assert target.read_bytes() != b"old" and temp_files(setting["dir"]) == []
