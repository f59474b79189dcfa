"""The library's sizes: no module over 450 lines, no function over 80.

A long module does several jobs and a long function hides its steps; both are split
into named parts instead (a module per job, a helper per step). Lines are counted as
``ast`` sees them: a function from its ``def`` to its last line, docstring included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fasb_lens"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
MODULES = sorted(PACKAGE.rglob("*.py"))


def _where(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """Every function and method under ``tree``, nested ones too, as ``(qualified name,
    lines)``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield prefix + node.name, node.end_lineno - node.lineno + 1  # type: ignore[operator]
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def test_the_package_has_modules() -> None:
    assert len(MODULES) > 50  # the walk found the library, not an empty folder


def test_no_module_is_over_450_lines() -> None:
    long = [
        f"{_where(path)}:{lines}"
        for path in MODULES
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {long}"


def test_no_function_is_over_80_lines() -> None:
    long = [
        f"{_where(path)}:{name}:{lines}"
        for path in MODULES
        for name, lines in functions(ast.parse(path.read_text(), filename=str(path)))
        if lines > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (name their steps): {long}"
