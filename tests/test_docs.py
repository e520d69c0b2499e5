"""The documentation holds together: README.md stays short, and every relative link and #anchor
in README.md and docs/*.md points at a file that exists and a heading that it has.

Anchors follow GitHub's rules for headings: the heading's text as rendered (code, emphasis and
link markup removed), lowercased, every character that is not a letter, digit, space, hyphen or
underscore dropped, spaces turned into hyphens; a repeated heading gets -1, -2, ... after it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import tables  # noqa: E402  (benchmarks/tables.py: make docs-tables)

README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at whitespace or ")"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before the -1, -2 of repeats)."""
    text = INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    text = text.strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor the headings of a Markdown text define, repeats numbered as GitHub does."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str):
    """(line number, target) of each link outside code: fenced blocks and `inline code`."""
    for number, line in prose_lines(text):
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def broken_links(path: Path) -> list[str]:
    """What is wrong with each relative link of a Markdown file, as 'file:line: message'."""
    problems = []
    text = path.read_text(encoding="utf-8")
    for number, target in links(text):
        if EXTERNAL.match(target):
            continue
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}:{number}: {target}: no such file {file_part}")
            continue
        if anchor:
            if dest.suffix != ".md" or dest.is_dir():
                problems.append(f"{where}:{number}: {target}: an anchor into a non-Markdown file")
            elif anchor not in anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{where}:{number}: {target}: no heading #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, more than {README_MAX_LINES}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {t.partition("#")[0] for _, t in links((ROOT / "README.md").read_text("utf-8"))}
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages - linked == set()


def test_every_docs_page_starts_by_saying_what_it_covers():
    for page in (ROOT / "docs").glob("*.md"):
        lines = [ln for ln in page.read_text("utf-8").splitlines() if ln.strip()]
        assert lines[0].startswith("# "), f"{page.name} does not open with a title"
        assert lines[1].startswith("This page"), f"{page.name}: no sentence on what it covers"


def test_slugs_follow_githubs_rules():
    assert slug("`charrnn train CORPUS`") == "charrnn-train-corpus"
    assert slug("Which checkpoint `sample`, `eval` and `info` use") == (
        "which-checkpoint-sample-eval-and-info-use"
    )
    assert slug("`charrnn gradflow CHECKPOINT... TEXT`") == "charrnn-gradflow-checkpoint-text"
    assert slug("What a step costs, measured") == "what-a-step-costs-measured"
    assert slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"
    text = "# Notes\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n"
    assert anchors(text) == {"notes", "notes-1", "notes-2"}


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    page.write_text(
        "# Page\n\n## Here\n\n"
        "[fine](other.md#a-section) [fine too](#here) [web](https://example.org/x#y)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [self](#elsewhere)\n"
        "`[in code](missing2.md)`\n\n```\n[in a fence](missing3.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "no such file" in problems[0]
    assert "#nowhere" in problems[1] and "#elsewhere" in problems[2]


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_measured_tables_are_those_of_their_results_files(path):
    """A table between <!-- BEGIN kind file --> and <!-- END kind --> is what `make docs-tables`
    writes from that committed results file: no figure edited by hand, none left stale."""
    text = path.read_text(encoding="utf-8")
    assert tables.rewrite(text) == text, f"run make docs-tables: {path.name} is stale"


def test_a_table_edited_by_hand_is_found(tmp_path):
    result = {
        "command": "python benchmarks/bench_speed.py --quick --note 'a busy machine'",
        "when_utc": "2026-12-02 06:00:00",
        "note": "a busy machine",
        "machine": {"cpu": "AMD EPYC", "cores": 2, "blas": "openblas", "numpy": "2.4"},
        "inference_hidden_512": {"rnn": {"sample_1": 1000.4, "sample_64": 5000, "eval": 3000}},
    }
    (tmp_path / "r.json").write_text(json.dumps(result), encoding="utf-8")
    page = "<!-- BEGIN speed-inference r.json -->\n| rnn | 1,001 |\n<!-- END speed-inference -->\n"
    written = tables.rewrite(page, tmp_path)
    assert written != page and tables.rewrite(written, tmp_path) == written
    assert "| rnn | 1,000 | 5,000 | 3,000 |" in written
    assert "`python benchmarks/bench_speed.py --quick`, finished 2026-12-02 06:00:00 UTC" in written
    assert "AMD EPYC, 2 cores, openblas" in written and "A busy machine." in written
