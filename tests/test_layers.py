"""The arrows between the parts (docs/layout.md): the library never imports the command line.
Read from the source by walking each module's syntax tree, so that an import inside a
function, which no import-time check would see, counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import charrnn

PACKAGE = Path(charrnn.__file__).parent
COMMAND_LINE_ONLY = ("charrnn.cli", "rich", "typer", "click")


def imported(path: Path) -> set[str]:
    """Every module that the file imports, anywhere in it, by its full name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:  # relative: inside charrnn
            names.add(f"relative:{node.module}")
    return names


def library_modules() -> list[Path]:
    """Every module but charrnn/cli/ and __main__.py (`python -m charrnn`, the program)."""
    return sorted(
        p
        for p in PACKAGE.rglob("*.py")
        if "cli" not in p.relative_to(PACKAGE).parts and p.name != "__main__.py"
    )


def command_line(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in COMMAND_LINE_ONLY)


def test_the_library_never_imports_the_command_line():
    modules = library_modules()
    assert {"api.py", "train.py", "report.py", "plot.py"} <= {p.name for p in modules}
    bad = {str(p.relative_to(PACKAGE)): sorted(filter(command_line, imported(p))) for p in modules}
    assert {name: found for name, found in bad.items() if found} == {}
    assert not any(n.startswith("relative:") for p in modules for n in imported(p))


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The check above could pass by seeing nothing: it finds a lazy import of the CLI."""
    source = tmp_path / "m.py"
    source.write_text(
        "def f():\n    from charrnn.cli.progress import make_reporter\n    import rich\n"
    )
    assert {"charrnn.cli.progress", "rich"} <= imported(source)
